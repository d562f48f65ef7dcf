"""User data files: JSONL/Parquet reading and row validation with file+line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import lmpo.data
from lmpo.data.examples import to_messages
from lmpo.data.files import DataError, load_examples, read_rows

SHIPPED = Path(lmpo.data.__file__).parent / "files" / "example_math.jsonl"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_shipped_example_file_loads():
    exs = load_examples(SHIPPED)
    assert len(exs) == 20
    assert {type(e.prompt) for e in exs} == {str, list}
    assert all(e.task == "file" and e.answer.lstrip("-").isdigit() for e in exs)
    assert exs[0].id == "math-00"
    assert to_messages(exs[1].prompt)[-1]["role"] == "user"


def test_rows_keep_line_numbers_and_skip_blank_lines(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "a", "answer": 1}, "", {"prompt": "b", "answer": "2"}]
    )
    assert [n for n, _ in read_rows(p)] == [1, 3]
    exs = load_examples(p)
    assert [e.answer for e in exs] == ["1", "2"]
    assert [e.id for e in exs] == ["d:1", "d:3"]


def test_extra_columns_go_to_meta_and_custom_keys(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"question": "q?", "gold": "7", "source": "x", "id": 5}])
    (ex,) = load_examples(p, prompt_key="question", answer_key="gold")
    assert (ex.prompt, ex.answer, ex.id, ex.meta) == ("q?", "7", "5", {"source": "x"})


@pytest.mark.parametrize(
    "rows,match",
    [
        (
            [
                {"prompt": "a", "answer": 1},
                {"prompt": "b", "answer": 2},
                '{"prompt": "c", "answer": ',
            ],
            r"d\.jsonl line 3: malformed JSON",
        ),
        (
            [{"prompt": "a", "answer": 1}, "[1, 2]"],
            r"d\.jsonl line 2: expected a JSON object, got list",
        ),
        (
            [{"prompt": "a", "answer": 1}, {"prompt": "b", "answer": 2}, {"prompt": "c"}],
            r"d\.jsonl line 3: missing key 'answer'",
        ),
        ([{"answer": "1"}], r"line 1: missing key 'prompt'"),
        ([{"prompt": "", "answer": "1"}], r"line 1: 'prompt' is an empty string"),
        ([{"prompt": "a", "answer": None}], r"line 1: 'answer' must be a string or number"),
        (
            [{"prompt": "a", "answer": True}],
            r"line 1: 'answer' must be a string or number, got bool",
        ),
        ([{"prompt": "a", "answer": "  "}], r"line 1: 'answer' is empty"),
        ([{"prompt": [], "answer": "1"}], r"line 1: 'prompt' must be a string or a non-empty list"),
        (
            [{"prompt": 3, "answer": "1"}],
            r"line 1: 'prompt' must be a string or a non-empty list of chat messages, got int",
        ),
        (
            [{"prompt": [{"role": "robot", "content": "hi"}], "answer": "1"}],
            r"line 1: message 0 has role 'robot'; expected one of system, user, assistant",
        ),
        (
            [{"prompt": [{"role": "user", "content": 5}], "answer": "1"}],
            r"line 1: message 0 content must be a string, got int",
        ),
        (
            [{"prompt": [{"role": "user", "content": "q"}, "hi"], "answer": "1"}],
            r"line 1: message 1 is not an object",
        ),
        (
            [
                {
                    "prompt": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                    ],
                    "answer": "1",
                }
            ],
            r"line 1: the last message must be a user turn",
        ),
    ],
)
def test_row_errors_name_file_and_line(tmp_path, rows, match):
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=match):
        load_examples(p)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    p = tmp_path / "e.jsonl"
    p.write_text(content)
    with pytest.raises(DataError, match=r"e\.jsonl: empty file"):
        read_rows(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_examples(tmp_path / "nope.jsonl")


def test_parquet_round_trip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [
        {"prompt": "What is 1 + 1?", "answer": "2"},
        {"prompt": "What is 2 + 2?", "answer": "4"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    exs = load_examples(tmp_path / "d.parquet")
    assert [(e.prompt, e.answer, e.id) for e in exs] == [
        ("What is 1 + 1?", "2", "d:1"),
        ("What is 2 + 2?", "4", "d:2"),
    ]
    msgs = [
        {"prompt": [{"role": "user", "content": "hi"}], "answer": "1"},
        {"prompt": [{"role": "user", "content": "x"}]},
    ]
    pq.write_table(pa.Table.from_pylist(msgs), tmp_path / "m.parquet")
    with pytest.raises(DataError, match=r"m\.parquet line 2: .*'answer'"):
        load_examples(tmp_path / "m.parquet")


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    p = tmp_path / "d.parquet"
    p.write_bytes(b"PAR1")
    with pytest.raises(DataError, match="pip install pyarrow"):
        read_rows(p)
