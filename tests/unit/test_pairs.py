"""Pair builder policy, label flips, atomic JSONL, and reading its files back (no model)."""

from __future__ import annotations

import json

import pytest

from lmpo.data.examples import Example
from lmpo.data.files import DataError
from lmpo.data.pairs import (
    Sample,
    build_rows,
    flip_mask,
    select_pairs,
    write_jsonl,
)
from lmpo.data.preference import PAIRED, UNPAIRED, Pair, load_preferences, split_held_out


def group(verdicts, rewards=None, texts=None):
    rewards = rewards or [float(v) for v in verdicts]
    texts = texts or [f"answer {i}" for i in range(len(verdicts))]
    return [
        Sample(t, r, bool(v), 3, False) for t, r, v in zip(texts, rewards, verdicts, strict=True)
    ]


def test_worked_example_of_preference_md_15_2():
    # verdicts (1,0,1,0,0,1), K = 2: pairing by index order gives (0,1) and (2,3)
    assert select_pairs(group([1, 0, 1, 0, 0, 1]), 2) == [(0, 1), (2, 3)]
    assert select_pairs(group([1] * 6), 2) == []
    assert select_pairs(group([0] * 6), 2) == []


def test_best_versus_worst_without_reuse_or_duplicates():
    g = group([1, 1, 0, 0, 1], rewards=[1.0, 1.5, -0.5, 0.2, 1.5], texts=["a", "b", "c", "d", "b"])
    # good by reward desc then index: 1 (1.5), 0 (1.0); index 4 repeats text "b" and is dropped.
    # bad by reward asc: 2 (-0.5), 3 (0.2)
    assert select_pairs(g, 5) == [(1, 2), (0, 3)]
    assert select_pairs(g, 1) == [(1, 2)]
    blank = group([0, 1, 0], texts=[" ", "x", "y"])  # an immediate EOS is no answer
    assert select_pairs(blank, 2) == [(1, 2)]


def test_all_pairing_crosses_every_good_with_every_bad():
    g = group([1, 1, 0, 0, 1, 0], rewards=[1.0, 1.5, -0.5, 0.2, 1.5, 0.0], texts=list("abcdbe"))
    # distinct good, best first: 1, 0; distinct bad, worst first: 2 (-0.5), 5 (0.0), 3 (0.2)
    assert select_pairs(g, 99, "all") == [(1, 2), (1, 5), (1, 3), (0, 2), (0, 5), (0, 3)]
    assert select_pairs(g, 4, "all") == [(1, 2), (1, 5), (1, 3), (0, 2)]
    assert select_pairs(g, 99) == [(1, 2), (0, 5)]  # ranked: no answer reused
    assert select_pairs(group([1] * 3), 9, "all") == []
    with pytest.raises(ValueError, match="pairing"):
        select_pairs(g, 2, "every")


def test_flip_mask_is_exact_and_seeded():
    m = flip_mask(10, 0.3, seed=7)
    assert sum(m) == 3 and m == flip_mask(10, 0.3, seed=7)
    assert flip_mask(10, 0.0, 0) == [False] * 10 and flip_mask(4, 1.0, 0) == [True] * 4
    with pytest.raises(ValueError, match="flip"):
        flip_mask(3, 1.5, 0)


def test_build_rows_formats_and_flips():
    exs = [Example(id=f"e{i}", prompt=f"q{i}?", answer="1") for i in range(4)]
    groups = [group([1, 0, 0]), group([0, 1, 1]), group([1, 1, 1]), group([0, 0, 0])]
    clean = build_rows(exs, groups, pairs_per_prompt=1, system_prompt="Be brief.")
    assert clean.stats["mixed_groups"] == 2 and clean.stats["all_good_groups"] == 1
    assert clean.stats["pairs"] == 2 and clean.stats["binary_rows"] == 12
    row = clean.pairs[0]
    assert row["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q0?"},
    ]
    assert row["chosen"] == [{"role": "assistant", "content": "answer 0"}]
    assert (
        row["rejected"] == [{"role": "assistant", "content": "answer 1"}]
        and row["flipped"] is False
    )
    assert [r["label"] for r in clean.binary[:3]] == [True, False, False]

    noisy = build_rows(
        exs, groups, pairs_per_prompt=1, flip_fraction=0.5, seed=3, system_prompt="Be brief."
    )
    flipped = [r for r in noisy.pairs if r["flipped"]]
    assert len(flipped) == 1 and noisy.stats["flipped_pairs"] == 1
    (f,) = flipped
    orig = clean.pairs[noisy.pairs.index(f)]
    assert (f["chosen"], f["rejected"]) == (orig["rejected"], orig["chosen"])
    assert (f["chosen_reward"], f["rejected_reward"]) == (
        orig["rejected_reward"],
        orig["chosen_reward"],
    )
    nb = [r for r in noisy.binary if r["flipped"]]
    assert len(nb) == 6
    assert all(r["label"] != clean.binary[noisy.binary.index(r)]["label"] for r in nb)


def test_write_jsonl_round_trip_leaves_no_temporary(tmp_path):
    out = write_jsonl(
        tmp_path / "d" / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    )
    assert [p.name for p in out.parent.iterdir()] == ["pairs.jsonl"]
    fmt, (pair,) = load_preferences(out)
    assert fmt == PAIRED and pair.prompt == [{"role": "user", "content": "p"}]
    assert pair.chosen == [{"role": "assistant", "content": "a"}] and pair.margin is None


def test_the_builders_rows_read_back_with_their_extra_columns(tmp_path):
    exs = [Example(id="e", prompt=[{"role": "user", "content": "q?"}], answer="1")]
    res = build_rows(exs, [group([1, 0])])
    f = write_jsonl(tmp_path / "p.jsonl", [{**res.pairs[0], "margin": 0.5}])
    fmt, (pair,) = load_preferences(f)
    assert fmt == PAIRED and pair.id == "e" and pair.margin == 0.5
    assert pair.prompt == [{"role": "user", "content": "q?"}]
    assert (pair.chosen[0]["content"], pair.rejected[0]["content"]) == ("answer 0", "answer 1")
    assert pair.extra == {
        "answer": "1",
        "chosen_reward": 1.0,
        "rejected_reward": 0.0,
        "flipped": False,
    }
    fmt, rows = load_preferences(write_jsonl(tmp_path / "b.jsonl", res.binary))
    assert fmt == UNPAIRED and [r.desirable for r in rows] == [True, False]
    assert rows[0].id == "e" and rows[0].extra == {"answer": "1", "reward": 1.0, "flipped": False}


@pytest.mark.parametrize(
    "line,needle",
    [
        ('{"prompt": "q", "chosen": "a"}', "missing key 'rejected'"),
        ('{"prompt": "q", "chosen": "a", "rejected": 3}', "'rejected' must be a string"),
        (
            '{"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}',
            "'chosen'",
        ),
        ('{"prompt": "", "chosen": "a", "rejected": "b"}', "empty string"),
        (
            '{"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}',
            "'margin' must be a number",
        ),
        (
            '{"prompt": "q", "chosen": "a", "rejected": "b", "chosen_reward": true}',
            "'chosen_reward'",
        ),
        (
            '{"prompt": "q", "chosen": "a", "rejected": "b", "flipped": "no"}',
            "'flipped' must be true or false",
        ),
        ('{"prompt": "q", "chosen": "a", ', "malformed JSON"),
    ],
)
def test_bad_pair_rows_name_file_and_line(tmp_path, line, needle):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n\n" + line + "\n")
    with pytest.raises(DataError) as e:
        load_preferences(f)
    assert f"{f} line 3" in str(e.value) and needle in str(e.value)


def test_held_out_split_takes_whole_prompts_up_to_max_fraction():
    a = [{"role": "assistant", "content": "a"}]
    pairs = [Pair(str(i), [{"role": "user", "content": f"q{i % 5}"}], a, a) for i in range(20)]
    train, held = split_held_out(pairs, 4, seed=0)
    assert len(held) == 4 and len(train) == 16
    assert not {json.dumps(p.prompt) for p in train} & {json.dumps(p.prompt) for p in held}
    assert len(split_held_out(pairs, 10, seed=0)[1]) == 4  # at most a fifth by default
    assert len(split_held_out(pairs, 10, seed=0, max_fraction=0.5)[1]) == 12  # whole prompts
    assert split_held_out(pairs, 0, seed=0) == (pairs, [])
