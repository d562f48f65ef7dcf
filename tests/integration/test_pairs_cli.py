"""`lmpo pairs` end to end on the tiny random model with a deterministic reward (seconds)."""

import json

import pytest

from lmpo import cli
from lmpo.data.preference import load_preferences

pytestmark = pytest.mark.integration

ARGS = [
    "pairs",
    "--tiny-model",
    "--task",
    "arithmetic",
    "--param",
    "style=bare",
    "--n",
    "8",
    "--k",
    "4",
    "--max-new-tokens",
    "6",
    "--batch-size",
    "8",
    "--reward",
    "pair_rewards:even_length",
    "--threshold",
    "0.5",
    "--pairs-per-prompt",
    "2",
    "--no-progress",
]


def run(tmp_path, name, *extra):
    out = tmp_path / name
    argv = [
        *ARGS,
        "--pairs-out",
        str(out / "pairs.jsonl"),
        "--binary-out",
        str(out / "binary.jsonl"),
        *extra,
    ]
    assert cli.main(argv) == 0
    read = lambda f: [json.loads(x) for x in (out / f).read_text().splitlines()]  # noqa: E731
    return read("pairs.jsonl"), read("binary.jsonl")


def is_even(msgs):
    return len(msgs[-1]["content"]) % 2 == 0


def test_pairs_and_binary_rows_are_valid_and_deterministic(tmp_path, capsys):
    pairs, binary = run(tmp_path, "a")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["prompts"] == 8 and summary["samples"] == 32
    assert summary["pairs"] == len(pairs) > 0 and summary["binary_rows"] == len(binary)
    assert 0 < summary["mixed_groups"] <= 8 and summary["flipped_pairs"] == 0
    for row in pairs:
        assert row["prompt"][-1]["role"] == "user" and row["flipped"] is False
        assert (
            row["chosen"][0]["role"] == "assistant"
            and is_even(row["chosen"])
            and not is_even(row["rejected"])
        )
        assert row["chosen_reward"] == 1.0 and row["rejected_reward"] == 0.0
    per_prompt = {}
    for row in pairs:
        per_prompt[row["id"]] = per_prompt.get(row["id"], 0) + 1
    assert max(per_prompt.values()) <= 2
    for row in binary:
        assert set(row) >= {"prompt", "completion", "label", "flipped"} and row["label"] == is_even(
            row["completion"]
        )
    # the preference and reward-model trainers read both files back
    assert load_preferences(tmp_path / "a" / "pairs.jsonl")[1][0].extra["flipped"] is False
    assert len(load_preferences(tmp_path / "a" / "pairs.jsonl")[1]) == len(pairs)
    assert len(load_preferences(tmp_path / "a" / "binary.jsonl")[1]) == len(binary)
    assert run(tmp_path, "b") == (pairs, binary)  # same seed, same files


def test_label_flips_are_recorded(tmp_path):
    clean, clean_bin = run(tmp_path, "clean")
    noisy, noisy_bin = run(tmp_path, "noisy", "--flip", "0.5")
    flipped = [i for i, r in enumerate(noisy) if r["flipped"]]
    assert len(flipped) == round(0.5 * len(clean)) > 0
    for i, (a, b) in enumerate(zip(clean, noisy, strict=True)):
        swapped = (b["chosen"], b["rejected"]) == (a["rejected"], a["chosen"])
        assert swapped == (i in flipped) and (b["chosen"] == a["chosen"]) == (i not in flipped)
    nb = [r for r in noisy_bin if r["flipped"]]
    assert len(nb) == round(0.5 * len(clean_bin))
    assert all(r["label"] != is_even(r["completion"]) for r in nb)


def test_bad_data_file_names_file_and_line(tmp_path, capsys):
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?"}\n')
    assert (
        cli.main(
            ["pairs", "--tiny-model", "--file", str(f), "--pairs-out", str(tmp_path / "p.jsonl")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert str(f) in err and "line 2" in err and "answer" in err
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--k", "1"], "--k >= 2"),
        (["--flip", "2"], "--flip"),
        (["--reward", "nope"], "valid names"),
        (["--split", "test", "--file", "x.jsonl"], "--split"),
    ],
)
def test_bad_options_fail_before_sampling(tmp_path, capsys, extra, needle):
    assert (
        cli.main(["pairs", "--tiny-model", "--pairs-out", str(tmp_path / "p.jsonl"), *extra]) == 2
    )
    assert needle in capsys.readouterr().err


def test_all_pairing_gives_every_good_bad_combination_of_the_same_samples(tmp_path):
    ranked, binary = run(tmp_path, "ranked")
    crossed, binary_again = run(tmp_path, "all", "--pairing", "all", "--pairs-per-prompt", "99")
    assert binary_again == binary  # same samples; only the pairing differs
    expected = {}
    for row in binary:
        g, b = expected.setdefault(row["id"], [0, 0]), row["label"]
        g[0 if b else 1] += 1
    per_prompt = {}
    for row in crossed:
        per_prompt[row["id"]] = per_prompt.get(row["id"], 0) + 1
        assert is_even(row["chosen"]) and not is_even(row["rejected"])
    assert per_prompt == {i: g * b for i, (g, b) in expected.items() if g and b}
    assert len(crossed) > len(ranked)
