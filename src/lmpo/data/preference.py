"""Preference data: paired and unpaired (binary feedback) rows, read, validated and tokenized.

Row formats (JSONL or Parquet, read by ``data.files.read_rows``; the TRL formats users have):

* paired, explicit prompt: ``{"prompt": P, "chosen": C, "rejected": R}`` where P is a string
  or a list of chat messages ending with a user turn, and C/R are strings or lists of
  messages (assistant turns).
* paired, implicit prompt: ``{"chosen": [messages], "rejected": [messages]}``: whole
  conversations; the prompt is their longest shared message prefix (it must end with a
  user turn), the answers are what follows it.
* unpaired: ``{"prompt": P, "completion": C, "label": true|false}`` (label true = desirable).

The format is read from the first row; every row must then have its keys. Other columns are
kept: ``id`` names the row, a paired row's ``margin`` (a number; reward-model losses use it)
is typed, and the rest, such as the pair builder's (``data.pairs``) ``answer``,
``chosen_reward``/``rejected_reward``/``reward`` (numbers) and ``flipped`` (true/false), go to
``extra``; those four are checked. Any bad row raises ``DataError`` naming the file, the line
(Parquet: row index + 1) and the key. A paired file can feed an unpaired loss (KTO, BCO):
each pair becomes a desirable and an undesirable example (``unpair``).

Tokenization (``encode``) renders the prompt exactly as the online loop and evaluation do
(``data.prompts.render_prompt``: the chat template for instruct models, plain text
otherwise) and the answer as the text the template puts after it (so an instruct model
learns to end its turn); without a chat template the answer is its text plus EOS. Prompt
and answer are tokenized separately, as generation does. Over-long prompts keep their last
``max_prompt_tokens`` tokens, answers their first ``max_completion_tokens``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmpo.data.examples import ROLES, Example, to_messages
from lmpo.data.files import DataError, _check_prompt, read_rows
from lmpo.data.prompts import render_prompt

SHIPPED_PREFIX = "lmpo:"
SHIPPED_DIR = Path(__file__).parent / "files"

PAIRED, UNPAIRED = "paired", "unpaired"
FORMAT_HELP = (
    "expected prompt/chosen/rejected (pairs), chosen/rejected message lists (pairs with an "
    "implicit prompt) or prompt/completion/label (binary feedback)"
)


@dataclass(frozen=True)
class Pair:
    """A prompt (chat messages) with a preferred and a dispreferred answer (assistant messages);
    ``margin``: how much better chosen is (optional); ``extra``: the row's other columns."""

    id: str
    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    margin: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Feedback:
    """A prompt and one answer labelled desirable or not; ``pair`` = index of its source pair."""

    id: str
    prompt: list[dict]
    completion: list[dict]
    desirable: bool
    pair: int = -1
    extra: dict = field(default_factory=dict)


def answer_text(answer: list[dict]) -> str:
    """An answer's plain text (its messages' contents, one per line), e.g. for a reward model."""
    return "\n".join(m["content"] for m in answer)


# ------------------------------------------------------------------------------- reading


def resolve_data_file(name: str | Path) -> Path:
    """A path, or ``lmpo:FILE`` for an example file shipped with lmpo (see ``shipped_files``)."""
    s = str(name)
    if not s.startswith(SHIPPED_PREFIX):
        return Path(s).expanduser()
    path = SHIPPED_DIR / s[len(SHIPPED_PREFIX) :]
    if not path.is_file():
        raise DataError(f"{s}: no such shipped file; shipped: {', '.join(shipped_files())}")
    return path


def shipped_files() -> list[str]:
    return sorted(SHIPPED_PREFIX + p.name for p in SHIPPED_DIR.iterdir() if p.is_file())


def row_format(row: dict) -> str | None:
    if "label" in row or "completion" in row:
        return UNPAIRED
    if "chosen" in row or "rejected" in row:
        return PAIRED
    return None


def load_preferences(path: str | Path) -> tuple[str, list[Pair] | list[Feedback]]:
    """(format, rows) of a preference file: ``"paired"`` -> Pairs, ``"unpaired"`` -> Feedback."""
    path = resolve_data_file(path)
    rows = read_rows(path)
    first_line, first = rows[0]
    fmt = row_format(first)
    if fmt is None:
        keys = ", ".join(map(repr, first)) or "none"
        raise DataError(
            f"{path} line {first_line}: cannot tell the format: {FORMAT_HELP}; got keys {keys}"
        )
    parse = _parse_pair if fmt == PAIRED else _parse_feedback
    return fmt, [parse(f"{path} line {n}", row, f"{path.stem}:{n}") for n, row in rows]


def _require(where: str, row: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in row:
            raise DataError(
                f"{where}: missing key {key!r} (keys: {', '.join(map(repr, row)) or 'none'}); {FORMAT_HELP}"
            )


def _answer(where: str, value: Any, key: str) -> list[dict]:
    """An answer: a non-empty string, or a non-empty list of messages starting with an assistant turn."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: {key!r} is an empty string")
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: {key!r} must be a string or a non-empty list of chat messages, got {type(value).__name__}"
        )
    out = []
    for j, msg in enumerate(value):
        if (
            not isinstance(msg, dict)
            or not isinstance(msg.get("content"), str)
            or msg.get("role") not in ROLES
        ):
            raise DataError(
                f"{where}: {key!r} message {j} must be an object with 'role' (one of {', '.join(ROLES)}) "
                f"and string 'content', got {msg!r}"
            )
        out.append({"role": msg["role"], "content": msg["content"]})
    if out[0]["role"] != "assistant":
        raise DataError(
            f"{where}: {key!r} must start with an assistant turn, got {out[0]['role']!r}"
        )
    if not any(m["content"].strip() for m in out):
        raise DataError(f"{where}: {key!r} has no text")
    return out


NUMBER_COLUMNS = ("margin", "chosen_reward", "rejected_reward", "reward")
ROW_KEYS = ("id", "prompt", "chosen", "rejected", "completion", "label", "margin")


def _extra(where: str, row: dict) -> dict:
    """The row's other columns; the pair builder's numbers and ``flipped`` are type-checked."""
    for key in NUMBER_COLUMNS:
        v = row.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise DataError(f"{where}: {key!r} must be a number, got {v!r}")
    if row.get("flipped") is not None and not isinstance(row["flipped"], bool):
        raise DataError(f"{where}: 'flipped' must be true or false, got {row['flipped']!r}")
    return {k: v for k, v in row.items() if k not in ROW_KEYS}


def _parse_pair(where: str, row: dict, default_id: str) -> Pair:
    rid = str(row["id"]) if row.get("id") is not None else default_id
    extra = _extra(where, row)
    margin = None if row.get("margin") is None else float(row["margin"])
    if "prompt" in row:
        _require(where, row, ("chosen", "rejected"))
        prompt = to_messages(_check_prompt(where, row["prompt"], "prompt"))
        return Pair(
            rid,
            prompt,
            _answer(where, row["chosen"], "chosen"),
            _answer(where, row["rejected"], "rejected"),
            margin,
            extra,
        )
    _require(where, row, ("chosen", "rejected"))
    chosen, rejected = row["chosen"], row["rejected"]
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise DataError(
            f"{where}: missing key 'prompt': without it, 'chosen' and 'rejected' must both be lists of "
            f"chat messages whose shared prefix is the prompt (got {type(chosen).__name__} and "
            f"{type(rejected).__name__})"
        )
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise DataError(
            f"{where}: 'chosen' and 'rejected' share no leading message, so there is no prompt"
        )
    if n == len(chosen) or n == len(rejected):
        raise DataError(
            f"{where}: 'chosen' and 'rejected' have no answer after their shared prefix"
        )
    prompt = to_messages(
        _check_prompt(where, chosen[:n], "prompt (the shared prefix of 'chosen' and 'rejected')")
    )
    return Pair(
        rid,
        prompt,
        _answer(where, chosen[n:], "chosen"),
        _answer(where, rejected[n:], "rejected"),
        margin,
        extra,
    )


def _parse_feedback(where: str, row: dict, default_id: str) -> Feedback:
    _require(where, row, ("prompt", "completion", "label"))
    label = row["label"]
    if not isinstance(label, bool):
        raise DataError(f"{where}: 'label' must be true or false, got {label!r}")
    rid = str(row["id"]) if row.get("id") is not None else default_id
    prompt = to_messages(_check_prompt(where, row["prompt"], "prompt"))
    completion = _answer(where, row["completion"], "completion")
    return Feedback(rid, prompt, completion, label, extra=_extra(where, row))


def unpair(pairs: list[Pair]) -> list[Feedback]:
    """Each pair -> its chosen answer (desirable) and its rejected answer (undesirable)."""
    out = []
    for i, p in enumerate(pairs):
        out.append(Feedback(f"{p.id}/chosen", p.prompt, p.chosen, True, i))
        out.append(Feedback(f"{p.id}/rejected", p.prompt, p.rejected, False, i))
    return out


def split_held_out(
    rows: list, n: int, seed: int, *, max_fraction: float = 0.2
) -> tuple[list, list]:
    """(train, test): all rows of a seeded choice of distinct prompts, about n rows, for testing.

    Splitting by prompt keeps rows sharing a prompt on one side, so held-out accuracy is
    measured on prompts the model never trained on. Whole prompts are taken until at least
    min(n, floor(max_fraction x rows)) rows are held out; at least one prompt stays for training.
    """
    if n <= 0:
        return list(rows), []
    key = [json.dumps(r.prompt, sort_keys=True) for r in rows]
    counts: dict[str, int] = {}
    for k in key:
        counts[k] = counts.get(k, 0) + 1
    prompts = sorted(counts)
    random.Random(seed).shuffle(prompts)
    target, held, count = min(n, math.floor(len(rows) * max_fraction + 1e-9)), set(), 0
    for k in prompts[:-1]:
        if count >= target:
            break
        held.add(k)
        count += counts[k]
    train = [r for r, k in zip(rows, key, strict=True) if k not in held]
    return train, [r for r, k in zip(rows, key, strict=True) if k in held]


# ---------------------------------------------------------------------------- tokenizing


@dataclass
class PreferenceSet:
    """Token ids of a preference data set, N rows.

    prompts:   N prompt token lists.
    branches:  completion token lists per name, each of length N. Paired data: ``chosen`` and
               ``rejected``. Unpaired data: ``completion`` and ``kl``, the completion of
               another row with a different prompt (KTO's mismatched pair for its KL
               reference point; fixed per data set, so its reference log-prob is cached).
    desirable: unpaired labels (None for pairs).
    pair:      unpaired rows made from pairs: index of the source pair, else -1.
    """

    ids: list[str]
    prompts: list[list[int]]
    branches: dict[str, list[list[int]]]
    desirable: list[bool] | None = None
    pair: list[int] | None = None
    truncated: int = 0
    _fp: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def paired(self) -> bool:
        return self.desirable is None

    def num_tokens(self, rows: list[int], branches: list[str]) -> int:
        return sum(
            len(self.prompts[i]) + sum(len(self.branches[b][i]) for b in branches) for i in rows
        )

    def fingerprint(self) -> str:
        """A hash of every token id and label (the reference cache is keyed on it)."""
        if self._fp is None:
            h = hashlib.sha256()
            h.update(json.dumps([self.prompts, self.branches, self.desirable]).encode())
            self._fp = h.hexdigest()
        return self._fp


def render_answers(
    tokenizer, prompt: list[dict], answers: list[list[dict]], system_prompt: str | None = None
) -> tuple[str, list[str]]:
    """(prompt text, answer texts): the prompt as the model sees it, then what each answer adds."""
    prompt_text = render_prompt(tokenizer, Example(id="", prompt=prompt, answer=""), system_prompt)
    messages = to_messages(prompt)
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    texts = []
    for answer in answers:
        text = None
        if getattr(tokenizer, "chat_template", None):
            full = tokenizer.apply_chat_template(messages + answer, tokenize=False)
            if full.startswith(prompt_text) and len(full) > len(prompt_text):
                text = full[len(prompt_text) :]
        if text is None:  # no chat template (or one that does not extend the prompt): text + EOS
            text = "\n".join(m["content"] for m in answer) + (tokenizer.eos_token or "")
        texts.append(text)
    return prompt_text, texts


class AnswerTokenizer:
    """Token ids of a prompt and its answers, as ``encode`` makes them (counts truncations).
    Also scores new answers the same way (``models.reward_model``); ``cache`` keeps every
    text's ids (a data set repeats prompts; a scorer of fresh samples should not keep them)."""

    def __init__(
        self,
        tokenizer,
        *,
        system_prompt: str | None = None,
        max_prompt_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        cache: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.cache = cache
        self.system_prompt = system_prompt
        self.max_prompt_tokens = max_prompt_tokens
        self.max_completion_tokens = max_completion_tokens
        self.truncated = 0
        self._cache: dict[str, list[int]] = {}

    def tok(self, text: str) -> list[int]:
        if text in self._cache:
            return self._cache[text]
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if self.cache:
            self._cache[text] = ids
        return ids

    def __call__(self, prompt, answers: list[list[dict]]) -> tuple[list[int], list[list[int]]]:
        p_text, texts = render_answers(self.tokenizer, prompt, answers, self.system_prompt)
        p = self.tok(p_text)
        if self.max_prompt_tokens and len(p) > self.max_prompt_tokens:
            p, self.truncated = p[-self.max_prompt_tokens :], self.truncated + 1
        out = []
        for t in texts:
            ids = self.tok(t)
            if self.max_completion_tokens and len(ids) > self.max_completion_tokens:
                ids, self.truncated = ids[: self.max_completion_tokens], self.truncated + 1
            out.append(ids)
        return p, out


def encode(
    tokenizer,
    rows: list[Pair] | list[Feedback],
    *,
    system_prompt: str | None = None,
    max_prompt_tokens: int | None = None,
    max_completion_tokens: int | None = None,
) -> PreferenceSet:
    """Tokenize Pairs (branches chosen/rejected) or Feedback (branches completion/kl)."""
    prompt_and_answers = AnswerTokenizer(
        tokenizer,
        system_prompt=system_prompt,
        max_prompt_tokens=max_prompt_tokens,
        max_completion_tokens=max_completion_tokens,
    )

    ids, prompts = [r.id for r in rows], []
    if rows and isinstance(rows[0], Pair):
        chosen, rejected = [], []
        for r in rows:
            p, (c, j) = prompt_and_answers(r.prompt, [r.chosen, r.rejected])
            prompts.append(p)
            chosen.append(c)
            rejected.append(j)
        return PreferenceSet(
            ids,
            prompts,
            {"chosen": chosen, "rejected": rejected},
            truncated=prompt_and_answers.truncated,
        )
    completions = []
    for r in rows:
        p, (c,) = prompt_and_answers(r.prompt, [r.completion])
        prompts.append(p)
        completions.append(c)
    kl = [completions[j] for j in mismatched_partners(prompts)]
    return PreferenceSet(
        ids,
        prompts,
        {"completion": completions, "kl": kl},
        desirable=[r.desirable for r in rows],
        pair=[r.pair for r in rows],
        truncated=prompt_and_answers.truncated,
    )


def mismatched_partners(prompts: list[list[int]]) -> list[int]:
    """For each row, the next row (cyclically) whose prompt differs: O(N).

    Rows sharing a prompt are usually adjacent (a pair made unpaired, several answers per
    prompt); a row's partner is the first row after its run of equal prompts. If every prompt
    is the same, the next row is used (a different answer to the same prompt).
    """
    N = len(prompts)
    if N < 2:
        return list(range(N))
    starts = [i for i in range(N) if i == 0 or prompts[i] != prompts[i - 1]]
    if len(starts) == 1:
        return [(i + 1) % N for i in range(N)]
    if prompts[-1] == prompts[0]:  # the last run wraps around into the first
        starts = starts[1:]
    partners = [0] * N
    for s, nxt in zip(starts, starts[1:] + [starts[0]], strict=True):
        i = s
        while i != nxt:
            partners[i] = nxt
            i = (i + 1) % N
    return partners
