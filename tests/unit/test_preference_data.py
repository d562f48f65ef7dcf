"""Preference data files: every TRL format parses from JSONL and Parquet; bad rows name file, line, key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmpo.data.files import DataError
from lmpo.data.preference import (
    PAIRED,
    UNPAIRED,
    Feedback,
    Pair,
    encode,
    load_preferences,
    mismatched_partners,
    render_answers,
    shipped_files,
    split_held_out,
    unpair,
)

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is 2 + 2?"}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write(path: Path, rows: list) -> Path:
    """JSONL (a str row is written verbatim) or Parquet, by suffix."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


FORMATS = {
    "strings": (
        [{"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}],
        Pair("x", [USER], [assistant("4")], [assistant("5")]),
    ),
    "messages": (
        [{"prompt": [SYSTEM, USER], "chosen": [assistant("4")], "rejected": [assistant("5")]}],
        Pair("x", [SYSTEM, USER], [assistant("4")], [assistant("5")]),
    ),
    "implicit_prompt": (
        [{"chosen": [SYSTEM, USER, assistant("4")], "rejected": [SYSTEM, USER, assistant("5")]}],
        Pair("x", [SYSTEM, USER], [assistant("4")], [assistant("5")]),
    ),
    "unpaired": (
        [
            {"prompt": [USER], "completion": [assistant("4")], "label": True},
            {"prompt": [USER], "completion": [assistant("5")], "label": False},
        ],
        Feedback("x", [USER], [assistant("4")], True),
    ),
    "unpaired_strings": (
        [
            {"prompt": "What is 2 + 2?", "completion": "4", "label": True},
            {"prompt": "What is 2 + 2?", "completion": "5", "label": False},
        ],
        Feedback("x", [USER], [assistant("4")], True),
    ),
}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_format_parses_from_jsonl_and_parquet(tmp_path, name, suffix):
    rows, expected = FORMATS[name]
    fmt, parsed = load_preferences(write(tmp_path / f"d{suffix}", rows))
    assert fmt == (UNPAIRED if name.startswith("unpaired") else PAIRED)
    got = parsed[0]
    assert (got.prompt, type(got)) == (expected.prompt, type(expected))
    if isinstance(got, Pair):
        assert (got.chosen, got.rejected) == (expected.chosen, expected.rejected)
    else:
        assert (got.completion, got.desirable) == (expected.completion, expected.desirable)
        assert parsed[1].desirable is False and parsed[1].prompt == [USER]
    assert got.id == "d:1"


def test_implicit_prompt_keeps_multi_turn_history(tmp_path):
    history = [USER, assistant("4"), {"role": "user", "content": "And 3 + 3?"}]
    rows = [{"id": 7, "chosen": [*history, assistant("6")], "rejected": [*history, assistant("7")]}]
    _, (pair,) = load_preferences(write(tmp_path / "d.jsonl", rows))
    assert pair.prompt == history and pair.chosen == [assistant("6")] and pair.id == "7"


BAD = [
    ({"prompt": "q", "chosen": "a"}, "missing key 'rejected'"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "'chosen' is an empty string"),
    (
        {"prompt": "q", "chosen": 3, "rejected": "b"},
        "'chosen' must be a string or a non-empty list",
    ),
    (
        {"prompt": "q", "chosen": [USER], "rejected": "b"},
        "'chosen' must start with an assistant turn",
    ),
    (
        {"prompt": "q", "chosen": [{"role": "bot", "content": "a"}], "rejected": "b"},
        "'chosen' message 0",
    ),
    (
        {"prompt": [assistant("hi")], "chosen": "a", "rejected": "b"},
        "last message must be a user turn",
    ),
    ({"chosen": "a", "rejected": "b"}, "missing key 'prompt'"),
    (
        {"chosen": [USER, assistant("a")], "rejected": [SYSTEM, assistant("b")]},
        "share no leading message",
    ),
    ({"chosen": [USER, assistant("a")], "rejected": [USER]}, "no answer after their shared prefix"),
    ({"prompt": "q", "completion": "a", "label": 1}, "'label' must be true or false"),
]


@pytest.mark.parametrize("bad,needle", BAD)
def test_bad_row_names_file_line_and_key(tmp_path, bad, needle):
    first = (
        {"prompt": "q", "completion": "a", "label": True}
        if "label" in bad
        else {"prompt": "q", "chosen": "a", "rejected": "b"}
    )
    path = write(tmp_path / "d.jsonl", [first, "", bad])
    with pytest.raises(DataError) as e:
        load_preferences(path)
    msg = str(e.value)
    assert str(path) in msg and "line 3" in msg and needle in msg, msg


def test_bad_parquet_row_names_its_row(tmp_path):
    rows = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": ""},
    ]
    path = write(tmp_path / "d.parquet", rows)
    with pytest.raises(DataError, match=r"d\.parquet line 2: 'rejected' is an empty string"):
        load_preferences(path)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(
        DataError, match=r"line 1: cannot tell the format.*got keys 'prompt', 'answer'"
    ):
        load_preferences(write(tmp_path / "d.jsonl", [{"prompt": "q", "answer": "1"}]))
    with pytest.raises(DataError, match="no such file"):
        load_preferences(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="lmpo:example_pairs.jsonl"):
        load_preferences("lmpo:nope.jsonl")


def test_shipped_examples_load():
    assert {"lmpo:example_pairs.jsonl", "lmpo:example_feedback.jsonl"} <= set(shipped_files())
    fmt, pairs = load_preferences("lmpo:example_pairs.jsonl")
    assert fmt == PAIRED and len(pairs) == 200 and all(p.chosen != p.rejected for p in pairs)
    fmt, fb = load_preferences("lmpo:example_feedback.jsonl")
    assert fmt == UNPAIRED and {f.desirable for f in fb} == {True, False}


def test_rendering_uses_the_chat_template_and_ends_the_turn(tiny):
    _, tok = tiny
    prompt, (answer,) = render_answers(tok, [USER], [[assistant("4")]])
    assert prompt.endswith("<|im_start|>assistant\n") and answer == "4<|im_end|>\n"
    prompt, _ = render_answers(tok, [USER], [[assistant("4")]], system_prompt="Be brief.")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in prompt


def test_rendering_without_chat_template_appends_eos(tiny):
    _, tok = tiny
    saved = tok.chat_template
    tok.chat_template = None
    try:
        prompt, (answer,) = render_answers(tok, [USER], [[assistant("4")]])
    finally:
        tok.chat_template = saved
    assert prompt == "What is 2 + 2?\n" and answer == "4" + tok.eos_token


def test_encode_pairs_and_truncation(tiny):
    _, tok = tiny
    pairs = [Pair("a", [USER], [assistant("4")], [assistant("five")])]
    data = encode(tok, pairs)
    assert data.paired and set(data.branches) == {"chosen", "rejected"}
    full_prompt = tok(
        render_answers(tok, [USER], [[assistant("4")]])[0], add_special_tokens=False
    ).input_ids
    assert data.prompts[0] == full_prompt
    short = encode(tok, pairs, max_prompt_tokens=5, max_completion_tokens=2)
    assert short.prompts[0] == full_prompt[-5:] and [
        len(short.branches[b][0]) for b in ("chosen", "rejected")
    ] == [2, 2]
    assert short.truncated == 3 and short.fingerprint() != data.fingerprint()


def test_encode_unpaired_kl_branch_is_another_prompts_answer(tiny):
    _, tok = tiny
    pairs = [
        Pair(
            str(i),
            [{"role": "user", "content": f"q{i}"}],
            [assistant(f"good{i}")],
            [assistant(f"bad{i}")],
        )
        for i in range(3)
    ]
    rows = unpair(pairs)
    assert [(r.desirable, r.pair) for r in rows] == [
        (True, 0),
        (False, 0),
        (True, 1),
        (False, 1),
        (True, 2),
        (False, 2),
    ]
    data = encode(tok, rows)
    for i in range(len(rows)):
        j = data.branches["completion"].index(data.branches["kl"][i])
        assert data.prompts[j] != data.prompts[i]


@given(st.lists(st.integers(0, 3), min_size=2, max_size=30))
def test_mismatched_partner_has_another_prompt_whenever_one_exists(keys):
    prompts = [[k] for k in keys]
    partners = mismatched_partners(prompts)
    for i, j in enumerate(partners):
        if len(set(keys)) > 1:
            assert prompts[j] != prompts[i]
        else:
            assert j != i


def test_held_out_split_is_by_prompt_and_at_most_a_fifth():
    rows = [
        Pair(
            str(i), [{"role": "user", "content": f"q{i // 2}"}], [assistant("a")], [assistant("b")]
        )
        for i in range(40)
    ]
    train, test = split_held_out(rows, 6, seed=0)
    assert 6 <= len(test) <= 8 and len(train) + len(test) == 40
    assert not {json.dumps(r.prompt) for r in train} & {json.dumps(r.prompt) for r in test}
    assert split_held_out(rows, 6, seed=0) == (train, test)
    assert len(split_held_out(rows, 1000, seed=0)[1]) == 8
    assert split_held_out(rows, 0, seed=0) == (rows, [])
