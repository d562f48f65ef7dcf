"""The configured rewards of a run, resolved once, scoring whole rollout batches."""

from __future__ import annotations

import torch

from lmpo.data.examples import Example


class RewardSet:
    """Weighted sum of named rewards (built-in or 'module:function').

    score() returns (total [B], {name: values [B]}, correct [B] bool); `correct` is the
    answer check used for the accuracy metric whether or not `correctness` is a reward.
    """

    def __init__(self, specs) -> None:
        from lmpo.rewards.base import resolve_specs

        self.specs = resolve_specs([(s.name, s.weight, dict(s.params)) for s in specs])
        self.names = [r.name for r in self.specs]

    def score(
        self,
        texts: list[str],
        examples: list[Example],
        lengths: list[int],
        truncated: list[bool],
        max_new_tokens: int,
    ):
        from lmpo.rewards.base import ScoreBatch, score

        batch = ScoreBatch(texts, examples, lengths, truncated, max_new_tokens)
        total, per = score(batch, self.specs)
        correct = (
            per["correctness"] > 0.5
            if "correctness" in per
            else torch.tensor(correctness(batch)) > 0.5
        )
        return total.float(), {k: v.float() for k, v in per.items()}, correct


def correctness(batch) -> list[float]:
    from lmpo.rewards.base import REWARDS

    return list(REWARDS.get("correctness")(batch))


def is_correct(completion: str, example: Example) -> bool:
    from lmpo.rewards.base import ScoreBatch

    return correctness(ScoreBatch([completion], [example], [0], [False], 1))[0] > 0.5
