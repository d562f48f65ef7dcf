"""Reward-model training losses and reward-model ensemble aggregations.

Reward-model losses take ``RewardModelInputs`` and return ``(loss, metrics)``; ensemble
aggregations map member rewards [K, N] to one reward per sample [N].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lmpo.core.registries import ENSEMBLES, REWARD_MODEL_LOSSES
from lmpo.core.types import Metrics, RewardModelInputs, as_float


@REWARD_MODEL_LOSSES.register("bradley_terry")
def bradley_terry(
    inp: RewardModelInputs, *, center_coef: float = 0.0, temperature: float = 1.0
) -> tuple[Tensor, Metrics]:
    """Bradley-Terry pairwise reward-model loss, with optional margin, centring and temperature.

    Ouyang et al. 2022, "Training language models to follow instructions with human feedback",
    arXiv 2203.02155 (pairwise loss); Touvron et al. 2023, "Llama 2", arXiv 2307.09288 (margin);
    Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles Mitigate but do not
    Eliminate Reward Hacking", arXiv 2312.09244 (centring).

    ``L = mean_B[ -logsigma((r_w - r_l - m) / tau) ] + c * mean_B[ (r_w + r_l)^2 ]``, with
    r_w, r_l = chosen/rejected rewards [B], m = ``inp.margin`` [B] (0 if None),
    tau = ``temperature`` (the GPM repo's form; TRL has no temperature), c = ``center_coef``
    (TRL ``center_rewards_coefficient``; recommended 0.01). Defaults c = 0 (off), tau = 1.
    Metrics: ``accuracy`` (fraction with r_w > r_l, margin ignored), ``margin`` (mean r_w - r_l).
    """
    if not temperature > 0:
        raise ValueError(f"bradley_terry: temperature must be > 0, got {temperature}")
    diff = inp.chosen_reward - inp.rejected_reward
    logits = diff if inp.margin is None else diff - inp.margin
    loss = -F.logsigmoid(logits / temperature).mean()
    if center_coef:
        loss = loss + center_coef * (inp.chosen_reward + inp.rejected_reward).pow(2).mean()
    d = diff.detach()
    metrics = {
        "accuracy": as_float((d > 0).to(d.dtype).mean()),
        "margin": as_float(d.mean()),
    }
    return loss, metrics


# --------------------------------------------------------------------------------------------
# ensembles: Coste, Anwar, Kirk, Krueger 2024, "Reward Model Ensembles Help Mitigate
# Overoptimization", arXiv 2310.02743. Members are combined raw (no per-member normalisation,
# as in the authors' code); standardise members first if their scales differ.


def _check_members(name: str, rewards: Tensor) -> None:
    if rewards.dim() < 1 or rewards.shape[0] < 1:
        raise ValueError(
            f"{name}: rewards must have shape [K, N] with K >= 1, got {tuple(rewards.shape)}"
        )


@ENSEMBLES.register("mean")
def ensemble_mean(rewards: Tensor) -> Tensor:
    """Ensemble mean (Coste et al. 2024, arXiv 2310.02743): ``R = (1/K) sum_k R_k``; [K, N] -> [N]."""
    _check_members("mean", rewards)
    return rewards.mean(dim=0)


@ENSEMBLES.register("worst_case")
def worst_case(rewards: Tensor) -> Tensor:
    """Worst-case optimisation, WCO (Coste et al. 2024, arXiv 2310.02743): ``R = min_k R_k``; [K, N] -> [N]."""
    _check_members("worst_case", rewards)
    return rewards.min(dim=0).values


@ENSEMBLES.register("uncertainty_weighted")
def uncertainty_weighted(rewards: Tensor, *, lam: float = 0.1, unbiased: bool = True) -> Tensor:
    """Uncertainty-weighted optimisation, UWO (Coste et al. 2024, arXiv 2310.02743).

    ``R = mean_k R_k - lam * Var_k R_k``; [K, N] -> [N]. Default lam = 0.1 (the authors' PPO
    config; their best-of-n default is 0.5). ``unbiased=True`` divides the variance by K-1 as
    the authors' PPO path (``torch.var``); ``False`` divides by K as their best-of-n path
    (``np.var``). With unbiased variance K must be >= 2 (ValueError otherwise).
    """
    _check_members("uncertainty_weighted", rewards)
    if unbiased and rewards.shape[0] < 2:
        raise ValueError("uncertainty_weighted: unbiased variance needs K >= 2 ensemble members")
    var = torch.var(rewards, dim=0, correction=1 if unbiased else 0)
    return rewards.mean(dim=0) - lam * var
