"""The examples a run trains and evaluates on, and the deterministic order it visits them in."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmpo.data.examples import Example


@dataclass
class TrainData:
    train: list[Example]
    test: list[Example]
    seed: int = 0

    def prompts_for_step(self, step: int, n: int) -> list[Example]:
        """Prompts of step `step` (1-based): a fresh seeded permutation per epoch.

        The data position is a pure function of the step, so a resumed run visits exactly
        the prompts the uninterrupted run would have.
        """
        N = len(self.train)
        out = []
        for i in range((step - 1) * n, step * n):
            epoch, j = divmod(i, N)
            out.append(self.train[int(self._perm(epoch)[j])])
        return out

    def _perm(self, epoch: int) -> torch.Tensor:
        cache = self.__dict__.setdefault("_perms", {})
        if epoch not in cache:
            cache.clear()
            cache[epoch] = torch.randperm(
                len(self.train), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)
            )
        return cache[epoch]


def load_data(cfg) -> TrainData:
    """Built-in task splits, or the user's JSONL/Parquet files (errors name file and line)."""
    from lmpo.data.files import load_examples
    from lmpo.data.tasks import load_task

    t = cfg.task
    if t.train_file:
        train = load_examples(t.train_file)
        if t.test_file:
            test = load_examples(t.test_file)
        else:  # hold out the tail of the file
            k = max(1, min(t.test_size, len(train) // 5))
            train, test = train[:-k], train[-k:]
    else:
        train = load_task(t.name, "train", t.train_size, seed=cfg.seed, **t.params)
        test = load_task(t.name, "test", t.test_size, seed=0, **t.params)
    if not train:
        raise ValueError("no training examples")
    return TrainData(train, test, seed=cfg.seed)
