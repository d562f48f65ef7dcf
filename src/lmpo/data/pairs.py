"""Preference data from verifiable rewards: sample k answers per prompt, score, pair.

For each prompt, ``k`` answers are sampled (``rollout.sampler.generate``) and scored with
the configured rewards (``RewardSet``). An answer is *good* when the task's answer check
says it is correct, or, when a ``threshold`` is given, when its total reward is at least
the threshold (for scalar rewards such as a reward model). A prompt whose answers are all
good or all bad carries no preference and gets no pair ("mixed" groups only).

Pairing policy (deterministic; Iterative RPO, Pang et al. 2024, arXiv 2404.19733, §15.2 of
shared/algorithms/preference.md, with best-vs-worst instead of uniform draws): identical
answer texts are kept once per prompt and blank answers (an immediate EOS) are dropped, since
TRL-format readers reject empty answers; good answers are ordered best first (total reward
descending, then sample index), bad answers worst first (total reward ascending, then sample
index), and the i-th good is paired with the i-th bad, for up to ``pairs_per_prompt`` pairs.
No answer is used twice and ties never prefer a length, so the pairs add no length bias.
``pairing="all"`` instead pairs every good answer with every bad one (reward-model data).

Output rows are TRL's *conversational* formats (the prompt keeps the task's system message
and few-shot turns, which a plain string would flatten):

* paired:   ``{"prompt": [messages], "chosen": [{"role": "assistant", "content": str}],
  "rejected": [...], "id", "answer", "chosen_reward", "rejected_reward", "flipped"}``
* unpaired: ``{"prompt": [messages], "completion": [{"role": "assistant", ...}],
  "label": bool, "id", "answer", "reward", "flipped"}``, one row per distinct answer of
  every prompt (mixed or not).

Label noise (off by default): ``flip_fraction`` swaps chosen/rejected in exactly
round(fraction x pairs) pairs, picked with a seeded RNG, and inverts ``label`` in the same
fraction of unpaired rows (picked independently); ``flipped`` records which. The reward
columns stay aligned with the texts they describe.

The files are read back by ``data.preference.load_preferences`` (one reader for every
preference file; it keeps the extra columns above).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmpo.data.examples import Example
from lmpo.data.prompts import prompt_messages, render_prompt
from lmpo.rewards.rewardset import RewardSet
from lmpo.rollout.sampler import SamplingConfig, generate


@dataclass
class Sample:
    """One sampled answer: its text, total reward, verdict and generation facts."""

    text: str
    reward: float
    good: bool
    length: int
    truncated: bool


@dataclass
class PairsResult:
    pairs: list[dict]
    binary: list[dict]
    stats: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ policy


def distinct(samples: list[Sample]) -> list[int]:
    """Indices of the first occurrence of each non-blank answer text."""
    seen: set[str] = set()
    out = []
    for i, s in enumerate(samples):
        if s.text.strip() and s.text not in seen:
            seen.add(s.text)
            out.append(i)
    return out


PAIRINGS = ("ranked", "all")


def select_pairs(
    samples: list[Sample], max_pairs: int, pairing: str = "ranked"
) -> list[tuple[int, int]]:
    """(chosen, rejected) sample indices.

    ``ranked``: the i-th best good answer vs the i-th worst bad answer (no answer used twice;
    preference training). ``all``: every good answer against every bad one, best/worst first
    (a prompt with g good and b bad distinct answers gives g x b pairs): more comparisons for
    a reward model from the same samples, as reward-model data sets pair all K answers.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    idx = distinct(samples)
    good = sorted((i for i in idx if samples[i].good), key=lambda i: (-samples[i].reward, i))
    bad = sorted((i for i in idx if not samples[i].good), key=lambda i: (samples[i].reward, i))
    if pairing == "all":
        return [(g, b) for g in good for b in bad][:max_pairs]
    return list(zip(good, bad, strict=False))[:max_pairs]


def flip_mask(n: int, fraction: float, seed: int) -> list[bool]:
    """Exactly round(fraction * n) True entries at seeded random positions."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"flip fraction must be in [0, 1], got {fraction}")
    flipped = set(random.Random(seed).sample(range(n), round(fraction * n)))
    return [i in flipped for i in range(n)]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def build_rows(
    examples: list[Example],
    samples: list[list[Sample]],
    *,
    pairs_per_prompt: int = 1,
    flip_fraction: float = 0.0,
    seed: int = 0,
    system_prompt: str | None = None,
    pairing: str = "ranked",
) -> PairsResult:
    """Paired and unpaired rows (see the module docstring) plus counts for the summary."""
    if pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt must be >= 1, got {pairs_per_prompt}")
    pairs, binary = [], []
    mixed = all_good = 0
    for ex, group in zip(examples, samples, strict=True):
        prompt = prompt_messages(ex.prompt, system_prompt)
        n_good = sum(s.good for s in group)
        mixed += 0 < n_good < len(group)
        all_good += n_good == len(group)
        for c, r in select_pairs(group, pairs_per_prompt, pairing):
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": assistant(group[c].text),
                    "rejected": assistant(group[r].text),
                    "id": ex.id,
                    "answer": ex.answer,
                    "chosen_reward": group[c].reward,
                    "rejected_reward": group[r].reward,
                    "flipped": False,
                }
            )
        for i in distinct(group):
            binary.append(
                {
                    "prompt": prompt,
                    "completion": assistant(group[i].text),
                    "label": group[i].good,
                    "id": ex.id,
                    "answer": ex.answer,
                    "reward": group[i].reward,
                    "flipped": False,
                }
            )
    for row, flip in zip(pairs, flip_mask(len(pairs), flip_fraction, seed), strict=True):
        if flip:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            row["chosen_reward"], row["rejected_reward"] = (
                row["rejected_reward"],
                row["chosen_reward"],
            )
            row["flipped"] = True
    for row, flip in zip(binary, flip_mask(len(binary), flip_fraction, seed + 1), strict=True):
        if flip:
            row["label"], row["flipped"] = not row["label"], True
    n_samples = sum(len(g) for g in samples)
    stats = {
        "prompts": len(examples),
        "samples": n_samples,
        "good_frac": sum(s.good for g in samples for s in g) / max(1, n_samples),
        "mixed_groups": mixed,
        "all_good_groups": all_good,
        "all_bad_groups": len(examples) - mixed - all_good,
        "pairs": len(pairs),
        "flipped_pairs": sum(r["flipped"] for r in pairs),
        "binary_rows": len(binary),
        "desirable_rows": sum(r["label"] for r in binary),
    }
    return PairsResult(pairs, binary, stats)


# ------------------------------------------------------------------------------ sampling


def sample_and_score(
    model,
    tokenizer,
    examples: list[Example],
    rewards: RewardSet,
    sampling: SamplingConfig,
    *,
    k: int,
    batch_size: int = 64,
    seed: int = 0,
    system_prompt: str | None = None,
    threshold: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[list[Sample]]:
    """k scored samples per example, generated batch_size completions at a time (>= k)."""
    if k < 2:
        raise ValueError(f"k must be >= 2 to find a good and a bad answer, got {k}")
    gen = torch.Generator().manual_seed(seed)
    per_call = max(1, batch_size // k)
    out: list[list[Sample]] = []
    for s in range(0, len(examples), per_call):
        chunk = examples[s : s + per_call]
        prompts = [render_prompt(tokenizer, e, system_prompt) for e in chunk for _ in range(k)]
        r = generate(model, tokenizer, prompts, sampling, generator=gen)
        reps = [e for e in chunk for _ in range(k)]
        lengths, trunc = r.lengths.tolist(), r.truncated.tolist()
        total, _, correct = rewards.score(r.texts, reps, lengths, trunc, sampling.max_new_tokens)
        good = correct.tolist() if threshold is None else (total >= threshold).tolist()
        for j in range(len(chunk)):
            out.append(
                [
                    Sample(
                        r.texts[i], float(total[i]), bool(good[i]), int(lengths[i]), bool(trunc[i])
                    )
                    for i in range(j * k, (j + 1) * k)
                ]
            )
        if progress is not None:
            progress(len(out))
    return out


# ------------------------------------------------------------------------------ files


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write rows as JSONL atomically: a temporary file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
