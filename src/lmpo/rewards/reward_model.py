"""Learned reward models, alone or as an ensemble, as a reward: ``reward_model``."""

from __future__ import annotations

from pathlib import Path

import torch

from lmpo.core import ENSEMBLES
from lmpo.models.reward_model import (
    META_FILE,
    ImplicitRewardModel,
    RewardModel,
    load_reward_model,
    read_meta,
)
from lmpo.rewards.base import REWARDS, ScoreBatch

_CACHE: dict[tuple[str, int], RewardModel | ImplicitRewardModel] = {}


def load_cached(path: str | Path) -> RewardModel | ImplicitRewardModel:
    """Load a reward-model directory once per process (reloaded if it is rewritten)."""
    p = Path(path).resolve()
    key = (str(p), (p / META_FILE).stat().st_mtime_ns)
    if key not in _CACHE:
        for old in [k for k in _CACHE if k[0] == key[0]]:
            del _CACHE[old]
        _CACHE[key] = load_reward_model(p)
    return _CACHE[key]


@REWARDS.register("reward_model")
def reward_model(
    batch: ScoreBatch,
    *,
    paths: list[str] | tuple[str, ...] = (),
    ensemble: str = "mean",
    ensemble_params: dict | None = None,
    normalize: bool = True,
    batch_size: int = 16,
) -> list[float]:
    """Score each completion with K saved reward models and aggregate them per completion.

    ``R = ensemble([R_1(x, y), ..., R_K(x, y)])`` with ``ensemble`` one of ``ENSEMBLES``
    (``mean``, ``worst_case``, ``uncertainty_weighted``; Coste et al. 2024, "Reward Model
    Ensembles Help Mitigate Overoptimization", arXiv 2310.02743) and ``ensemble_params``
    its keywords (e.g. ``{lam: 0.5}``). ``paths``: directories written by
    ``train_reward_model`` (scalar head) or by a preference run with a reference-based loss
    (``final/``: the policy's implicit reward ``beta * log pi/pi_ref``), each loaded once per
    process.
    x is the example's prompt rendered with each member's own chat template.

    Departure from the authors' code: ``normalize`` (default True) standardises every member
    with the mean/std of its rewards on its held-out pairs before aggregating, because
    Bradley-Terry rewards have an arbitrary offset per member, which would otherwise decide
    ``worst_case`` and inflate the variance of ``uncertainty_weighted``. ``batch_size``:
    sequences per forward pass.
    """
    check_params(
        paths=paths, ensemble=ensemble, ensemble_params=ensemble_params, batch_size=batch_size
    )
    prompts = [e.prompt for e in batch.examples]
    members = torch.stack(
        [
            load_cached(p).score(
                prompts, batch.completions, batch_size=batch_size, normalize=normalize
            )
            for p in paths
        ]
    )
    return ENSEMBLES.get(ensemble)(members, **(ensemble_params or {})).tolist()


def check_params(
    *,
    paths: list[str] | tuple[str, ...] = (),
    ensemble: str = "mean",
    ensemble_params: dict | None = None,
    normalize: bool = True,
    batch_size: int = 16,
) -> None:
    """Values check, run by config validation before any model loads (see Registry.check_params)."""
    if isinstance(paths, str) or not isinstance(paths, list | tuple) or not paths:
        raise ValueError(
            f"reward 'reward_model': paths must be a list of reward-model directories, got {paths!r}"
        )
    for p in paths:
        if not isinstance(p, str | Path):
            raise ValueError(f"reward 'reward_model': paths entries must be strings, got {p!r}")
        try:
            read_meta(p)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"reward 'reward_model': {e.args[0]}") from None
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"reward 'reward_model': batch_size must be a positive integer, got {batch_size!r}"
        )
    if not isinstance(normalize, bool):
        raise ValueError(
            f"reward 'reward_model': normalize must be true or false, got {normalize!r}"
        )
    if ensemble_params is not None and not isinstance(ensemble_params, dict):
        raise ValueError(
            f"reward 'reward_model': ensemble_params must be a mapping, got {ensemble_params!r}"
        )
    try:
        ENSEMBLES.check_params(ensemble, ensemble_params or {})
        # a dry run on zeros catches value errors such as K < 2 for unbiased variance
        ENSEMBLES.get(ensemble)(torch.zeros(len(paths), 1), **(ensemble_params or {}))
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"reward 'reward_model': ensemble {ensemble!r}: {e.args[0]}") from None


reward_model.check_params = check_params  # type: ignore[attr-defined]
