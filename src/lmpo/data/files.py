"""Read users' prompt/answer data from JSONL or Parquet.

Each row is an object with a prompt (a string, or a list of chat messages
``{"role": "system"|"user"|"assistant", "content": str}`` ending with a user turn) and a
gold answer (string or number). An optional ``id`` column names the row; any other
columns are kept in ``Example.meta``. Every problem is reported as a ``DataError`` that
names the file and line (JSONL: the line number; Parquet: row index + 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmpo.data.examples import ROLES, Example

PARQUET_SUFFIXES = (".parquet", ".pq")


class DataError(ValueError):
    """A user data file is unreadable or a row is invalid; the message names file and line."""


def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """All rows of a JSONL or Parquet file as (line number, object) pairs.

    Blank JSONL lines are skipped (line numbers still count them). Raises DataError for a
    missing file, malformed JSON, a row that is not an object, or an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = _read_parquet(path) if path.suffix.lower() in PARQUET_SUFFIXES else _read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: empty file (no rows)")
    return rows


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows: list[tuple[int, dict]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path} line {lineno}: malformed JSON ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}"
            )
        rows.append((lineno, obj))
    return rows


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow, which is not installed; "
            f"pip install pyarrow (or convert the file to JSONL)"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read Parquet ({e})") from None
    return [(i + 1, row) for i, row in enumerate(table.to_pylist())]


def _check_prompt(where: str, prompt: Any, key: str) -> str | list[dict]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"{where}: {key!r} is an empty string")
        return prompt
    if not isinstance(prompt, list) or not prompt:
        raise DataError(
            f"{where}: {key!r} must be a string or a non-empty list of chat messages, "
            f"got {type(prompt).__name__}"
        )
    messages = []
    for j, msg in enumerate(prompt):
        if not isinstance(msg, dict):
            raise DataError(f"{where}: message {j} is not an object with 'role' and 'content'")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise DataError(
                f"{where}: message {j} has role {role!r}; expected one of {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise DataError(
                f"{where}: message {j} content must be a string, got {type(content).__name__}"
            )
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise DataError(
            f"{where}: the last message must be a user turn, got {messages[-1]['role']!r}"
        )
    return messages


def _check_answer(where: str, answer: Any, key: str) -> str:
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(f"{where}: {key!r} must be a string or number, got {type(answer).__name__}")
    text = str(answer).strip()
    if not text:
        raise DataError(f"{where}: {key!r} is empty")
    return text


def load_examples(
    path: str | Path, *, prompt_key: str = "prompt", answer_key: str = "answer"
) -> list[Example]:
    """Validated examples (task ``"file"``, graded by math-verify) from a JSONL/Parquet file."""
    path = Path(path)
    examples = []
    for lineno, row in read_rows(path):
        where = f"{path} line {lineno}"
        for key in (prompt_key, answer_key):
            if key not in row:
                raise DataError(
                    f"{where}: missing key {key!r} (keys: {', '.join(map(repr, row)) or 'none'})"
                )
        prompt = _check_prompt(where, row[prompt_key], prompt_key)
        answer = _check_answer(where, row[answer_key], answer_key)
        rid = row.get("id")
        meta = {k: v for k, v in row.items() if k not in (prompt_key, answer_key, "id")}
        examples.append(
            Example(
                id=str(rid) if rid is not None else f"{path.stem}:{lineno}",
                prompt=prompt,
                answer=answer,
                task="file",
                meta=meta,
            )
        )
    return examples
