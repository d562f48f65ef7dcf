"""Held-out evaluation: greedy accuracy, pass@k over k samples, completion length."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmpo.data.examples import Example
from lmpo.data.prompts import render_prompt
from lmpo.rewards.rewardset import is_correct
from lmpo.rollout.sampler import SamplingConfig, generate


@dataclass
class EvalResult:
    n: int
    accuracy: float
    mean_length: float
    truncated_frac: float
    pass_at_k: dict[int, float]
    samples: list[dict]

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        out = {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}mean_length": self.mean_length,
            f"{prefix}truncated_frac": self.truncated_frac,
        }
        out.update({f"{prefix}pass@{k}": v for k, v in self.pass_at_k.items()})
        return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k)/C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    examples: list[Example],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
    system_prompt: str | None = None,
    k: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
    progress=None,
) -> EvalResult:
    """Greedy accuracy on every example; with k > 0 also pass@k from k samples each."""
    prompts = [render_prompt(tokenizer, e, system_prompt) for e in examples]
    greedy = SamplingConfig(max_new_tokens=max_new_tokens, greedy=True)
    correct, lengths, trunc, samples = [], [], [], []
    for s in range(0, len(examples), batch_size):
        r = generate(model, tokenizer, prompts[s : s + batch_size], greedy)
        for j, ex in enumerate(examples[s : s + batch_size]):
            ok = is_correct(r.texts[j], ex)
            correct.append(ok)
            lengths.append(int(r.lengths[j]))
            trunc.append(bool(r.truncated[j]))
            samples.append(
                {"id": ex.id, "completion": r.texts[j], "answer": ex.answer, "correct": ok}
            )
        if progress is not None:
            progress(min(s + batch_size, len(examples)), len(examples))
    pak: dict[int, float] = {}
    if k > 0:
        gen = torch.Generator().manual_seed(seed)
        cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature)
        per_prompt = max(1, batch_size // k)
        scores = []
        for s in range(0, len(examples), per_prompt):
            chunk = examples[s : s + per_prompt]
            rep = [p for p in prompts[s : s + per_prompt] for _ in range(k)]
            r = generate(model, tokenizer, rep, cfg, generator=gen)
            for j, ex in enumerate(chunk):
                c = sum(is_correct(r.texts[j * k + i], ex) for i in range(k))
                scores.append(c)
        for kk in sorted({1, k}):
            pak[kk] = sum(pass_at_k(k, c, kk) for c in scores) / len(scores)
    n = len(examples)
    return EvalResult(
        n=n,
        accuracy=sum(correct) / n,
        mean_length=sum(lengths) / n,
        truncated_frac=sum(trunc) / n,
        pass_at_k=pak,
        samples=samples,
    )
