"""Built-in rewards: correctness, format, DAPO soft overlong penalty.

All share the signature ``fn(batch: ScoreBatch, *, <params>) -> list[float]``.
"""

from __future__ import annotations

import re
import threading

from lmpo.data.examples import Example
from lmpo.data.tasks import TASKS, extract_answer, extract_number
from lmpo.rewards.base import REWARDS, ScoreBatch

MAX_PARSE_CHARS = 2000  # math-verify only sees the tail of very long completions


def _normalize(text: str) -> str:
    text = text.strip().strip("$").strip()
    text = re.sub(r"\\boxed\{(.*)\}", r"\1", text)
    return re.sub(r"\s+", " ", text).rstrip(".").strip().lower()


def check_file_answer(completion: str, gold: str) -> float:
    """Grade free-form data: math-verify ``parse``/``verify`` of gold vs the answer span.

    The answer span is the last <answer>..</answer> or 'Answer:' line if present, else the
    whole completion (math-verify then finds a \\boxed{} or the last expression). If gold or
    prediction cannot be parsed, fall back to exact numeric then normalized string equality.
    """
    from math_verify import parse, verify

    span = extract_answer(completion)
    candidate = (span if span is not None else completion)[-MAX_PARSE_CHARS:]
    # math-verify's timeouts use SIGALRM, which only works in the main thread.
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    gold_parsed = parse(gold, parsing_timeout=timeout)
    pred_parsed = parse(candidate, parsing_timeout=timeout)
    if gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=timeout):
        return 1.0
    got, want = extract_number(candidate), extract_number(gold)
    if got is not None and want is not None and _normalize(gold) == _normalize(str(want)):
        return 1.0 if got == want else 0.0
    return 1.0 if _normalize(candidate) == _normalize(gold) else 0.0


def grade(completion: str, example: Example) -> float:
    """1.0/0.0: the example's task ``check``; math-verify for task ``"file"``."""
    if example.task == "file":
        return check_file_answer(completion, example.answer)
    return float(TASKS.get(example.task).check(completion, example))


@REWARDS.register("correctness")
def correctness(batch: ScoreBatch) -> list[float]:
    """1.0 if the completion's final answer is right, else 0.0 (see ``grade``)."""
    return [grade(c, e) for c, e in zip(batch.completions, batch.examples, strict=True)]


_LINE_RE = re.compile(r"^\s*\**answer\**\s*:\**\s*\S.*$", re.IGNORECASE | re.MULTILINE)
_TAG_OPEN_RE = re.compile(r"<answer>", re.IGNORECASE)
_TAG_RE = re.compile(r"<answer>\s*\S.*?</answer>", re.IGNORECASE | re.DOTALL)


def follows_format(completion: str, fmt: str | None) -> bool:
    """Does a completion follow an answer format?

    'line': exactly one 'Answer: <x>' line, and it is the last non-empty line;
    'tag':  exactly one <answer>x</answer> with non-empty content;
    None:   either of the two (user data whose format is unknown);
    'bare': a single non-empty line (prompts that ask for just the answer).
    """
    text = completion.strip()
    if fmt == "line":
        lines = _LINE_RE.findall(text)
        return len(lines) == 1 and text.splitlines()[-1].strip() == lines[0].strip()
    if fmt == "tag":
        return len(_TAG_OPEN_RE.findall(text)) == 1 and len(_TAG_RE.findall(text)) == 1
    if fmt == "bare":
        return bool(text) and "\n" not in text
    if fmt is None:
        return follows_format(text, "line") or follows_format(text, "tag")
    raise ValueError(f"unknown answer format {fmt!r}; valid: line, tag, bare")


@REWARDS.register("format")
def format_reward(batch: ScoreBatch, *, pattern: str | None = None) -> list[float]:
    """1.0 if the completion follows the answer format its prompt asked for, else 0.0.

    The format is the example's ``meta["answer_format"]`` (set by the task's prompt
    style; see ``follows_format``). ``pattern``: a regex that replaces this check; the
    reward is 1.0 where ``re.search(pattern, completion, re.DOTALL)`` matches.
    """
    if pattern is not None:
        rx = re.compile(pattern, re.DOTALL)
        return [1.0 if rx.search(c) else 0.0 for c in batch.completions]
    return [
        1.0 if follows_format(c, e.meta.get("answer_format")) else 0.0
        for c, e in zip(batch.completions, batch.examples, strict=True)
    ]


def overlong_penalty(length: int, max_len: int, cache: int, factor: float = 1.0) -> float:
    """DAPO soft overlong punishment for one response of ``length`` tokens.

    0 if length <= L_max - cache; ((L_max - cache) - length) / cache * factor in between;
    -factor if length > L_max.
    """
    start = max_len - cache
    if length <= start:
        return 0.0
    if length > max_len:
        return -factor
    return (start - length) / cache * factor


@REWARDS.register("length")
def length(
    batch: ScoreBatch,
    *,
    cache: int | None = None,
    factor: float = 1.0,
    truncation_penalty: float | None = None,
) -> list[float]:
    """DAPO soft overlong punishment ("DAPO: An Open-Source LLM Reinforcement Learning
    System at Scale", arXiv 2503.14476, and verl's DAPO reward manager).

        R_len(y) = 0                                   if |y| <= L_max - L_cache
                 = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                 = -1                                  if |y| > L_max

    times ``factor`` (verl's ``overlong_penalty_factor``, default 1). L_max is
    ``batch.max_new_tokens`` and |y| is ``batch.lengths``. ``cache`` is L_cache in tokens;
    None uses L_max // 5 (DAPO's 4096 of 20480). Since generation stops at L_max, a
    truncated response has |y| = L_max and gets -factor, as in the paper.

    Departure (off by default): ``truncation_penalty`` = p gives every response that was
    cut at max_new_tokens the value -p, whatever its length (e.g. when lengths exclude
    tokens that counted toward the budget).
    """
    max_len = batch.max_new_tokens
    c = max_len // 5 if cache is None else cache
    if not 0 < c <= max_len:
        raise ValueError(f"length: cache must be in (0, max_new_tokens={max_len}], got {c}")
    out = []
    for n, cut in zip(batch.lengths, batch.truncated, strict=True):
        if cut and truncation_penalty is not None:
            out.append(-float(truncation_penalty))
        else:
            out.append(overlong_penalty(n, max_len, c, factor))
    return out
