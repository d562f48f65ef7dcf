"""Advantage estimators: rewards (and critic values) -> per-token advantages.

Every estimator has the signature ``fn(inp: AdvantageInputs, *, **params) -> AdvantageOutput``
and returns advantages of shape ``[B, T]``, exactly zero where ``inp.mask == 0``. Outcome
estimators compute one scalar per sequence and broadcast it to that sequence's response
tokens. Advantages are detached: nothing here is differentiated.

Group estimators (grpo, dr_grpo, rloo) read ``inp.group_ids`` ([B], any integer ids, in any
order, not necessarily contiguous); sequences sharing an id were sampled for the same prompt.
A group whose rewards are all equal -- in particular a group of one -- gets advantage exactly 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmpo.core.registries import ADVANTAGES
from lmpo.core.types import AdvantageInputs, AdvantageOutput, Metrics

# ---------------------------------------------------------------------------------------
# helpers


def _float_rewards(rewards: Tensor) -> Tensor:
    rewards = rewards.detach()
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape [B], got {tuple(rewards.shape)}")
    return rewards


def _check_mask(mask: Tensor, batch: int) -> None:
    if mask.dim() != 2 or mask.shape[0] != batch:
        raise ValueError(f"mask must have shape [B={batch}, T], got {tuple(mask.shape)}")


def _broadcast(per_seq: Tensor, mask: Tensor) -> Tensor:
    """[B] -> [B, T], zero where mask is 0."""
    return torch.where(mask != 0, per_seq[:, None], per_seq.new_zeros(()))


def _group_stats(rewards: Tensor, group_ids: Tensor | None, unbiased: bool):
    """Per-sequence group mean, group std, group size and a 'no spread' flag.

    Vectorised with index_add / scatter_reduce over ``torch.unique`` inverse indices, so
    group ids may be arbitrary integers in any order. Returns tensors of shape [B] plus
    the number of groups and the per-group no-spread flag ([G], for metrics).
    """
    if group_ids is None:
        raise ValueError(
            "this advantage estimator needs inp.group_ids ([B] ids of the prompt each "
            "sequence was sampled for); pass torch.zeros(B, dtype=torch.long) for one group"
        )
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must have shape {tuple(rewards.shape)}, got {tuple(group_ids.shape)}"
        )
    _, inv = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inv.max()) + 1 if inv.numel() else 0
    zeros = rewards.new_zeros(n_groups)
    counts = zeros.index_add(0, inv, torch.ones_like(rewards))
    mean = zeros.index_add(0, inv, rewards) / counts
    centered = rewards - mean[inv]
    sq = zeros.index_add(0, inv, centered * centered)
    dof = (counts - 1.0) if unbiased else counts
    var = torch.where(dof > 0, sq / dof.clamp(min=1.0), torch.zeros_like(sq))
    gmax = zeros.scatter_reduce(0, inv, rewards, reduce="amax", include_self=False)
    gmin = zeros.scatter_reduce(0, inv, rewards, reduce="amin", include_self=False)
    no_spread = gmax == gmin  # all-equal group, including every singleton group
    return mean[inv], var.sqrt()[inv], counts[inv], no_spread[inv], no_spread


def _metrics(adv_seq: Tensor, rewards: Tensor, **extra: float) -> Metrics:
    m: Metrics = {
        "adv_mean": float(adv_seq.mean()) if adv_seq.numel() else 0.0,
        "adv_std": float(adv_seq.std(unbiased=False)) if adv_seq.numel() else 0.0,
        "adv_max": float(adv_seq.max()) if adv_seq.numel() else 0.0,
        "adv_min": float(adv_seq.min()) if adv_seq.numel() else 0.0,
        "reward_mean": float(rewards.mean()) if rewards.numel() else 0.0,
        "reward_std": float(rewards.std(unbiased=False)) if rewards.numel() else 0.0,
    }
    m.update(extra)
    return m


def _group_metrics(no_spread_groups: Tensor) -> dict[str, float]:
    n = no_spread_groups.numel()
    return {
        "num_groups": float(n),
        "zero_std_frac": float(no_spread_groups.float().mean()) if n else 0.0,
    }


# ---------------------------------------------------------------------------------------
# outcome estimators


@ADVANTAGES.register("grpo")
def grpo(
    inp: AdvantageInputs,
    *,
    eps: float = 1e-6,
    unbiased: bool = True,
    scale: str = "group",
) -> AdvantageOutput:
    """GRPO group-normalised outcome advantage.

    "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
    arXiv 2402.03300, §4.1.

        A_i = (r_i - mean_{j in g(i)} r_j) / (std_{j in g(i)} r_j + eps),  broadcast to o_i's tokens

    Shapes: rewards [B], group_ids [B], mask [B, T] -> advantages [B, T].

    Params:
      eps:      added to the std (verl 1e-6; TRL 1e-4).
      unbiased: Bessel-corrected std (verl and TRL default); False = population std (1/G).
      scale:    "group" (std of the group, paper/verl), "batch" (std of all rewards in the
                batch, TRL ``scale_rewards="batch"``) or "none" (no division = Dr. GRPO).

    Departures: a singleton group gets advantage 0 (verl gives it mean 0 / std 1, i.e. the raw
    reward); every all-equal group is set to exactly 0 rather than ~1e-11 float residue.
    Metric ``zero_std_frac`` = fraction of groups with no reward spread (singletons included).
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    rewards = _float_rewards(inp.rewards)
    _check_mask(inp.mask, rewards.shape[0])
    mean, std, _, no_spread, no_spread_g = _group_stats(rewards, inp.group_ids, unbiased)
    centered = rewards - mean
    if scale == "group":
        denom = std + eps
    elif scale == "batch":
        n = rewards.numel()
        batch_std = rewards.std(unbiased=unbiased) if n > int(unbiased) else rewards.new_zeros(())
        denom = (batch_std + eps).expand_as(rewards)
    else:
        denom = torch.ones_like(rewards)
    zero = no_spread | (denom == 0)
    adv = torch.where(zero, torch.zeros_like(rewards), centered / torch.where(zero, 1.0, denom))
    return AdvantageOutput(
        advantages=_broadcast(adv, inp.mask),
        returns=None,
        metrics=_metrics(adv, rewards, **_group_metrics(no_spread_g)),
    )


@ADVANTAGES.register("dr_grpo")
def dr_grpo(inp: AdvantageInputs) -> AdvantageOutput:
    """Dr. GRPO advantage: the group-mean baseline without std scaling.

    "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv 2503.20783.

        A_i = r_i - mean_{j in g(i)} r_j,  broadcast to o_i's tokens

    Shapes: rewards [B], group_ids [B], mask [B, T] -> advantages [B, T].
    Pair it with the ``constant`` aggregation (policy_losses) for the full method.
    Departure: all-equal groups (and singletons) are exactly 0 (the formula gives 0 anyway).
    """
    rewards = _float_rewards(inp.rewards)
    _check_mask(inp.mask, rewards.shape[0])
    mean, _, _, no_spread, no_spread_g = _group_stats(rewards, inp.group_ids, unbiased=True)
    adv = torch.where(no_spread, torch.zeros_like(rewards), rewards - mean)
    return AdvantageOutput(
        advantages=_broadcast(adv, inp.mask),
        returns=None,
        metrics=_metrics(adv, rewards, **_group_metrics(no_spread_g)),
    )


@ADVANTAGES.register("rloo")
def rloo(inp: AdvantageInputs) -> AdvantageOutput:
    """RLOO: REINFORCE with the leave-one-out mean of the other group members as baseline.

    "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback
    in LLMs", arXiv 2402.14740.

        A_i = r_i - (1/(k-1)) sum_{j != i} r_j = k/(k-1) * (r_i - mean_j r_j),  k = |g(i)|

    Shapes: rewards [B], group_ids [B], mask [B, T] -> advantages [B, T].
    Departure: a singleton group (no other sample) gets 0; verl returns the raw reward.
    Any KL-in-reward (paper/TRL) must be folded into ``rewards`` by the caller.
    """
    rewards = _float_rewards(inp.rewards)
    _check_mask(inp.mask, rewards.shape[0])
    mean, _, k, no_spread, no_spread_g = _group_stats(rewards, inp.group_ids, unbiased=True)
    factor = k / (k - 1.0).clamp(min=1.0)
    adv = torch.where(no_spread | (k < 2), torch.zeros_like(rewards), factor * (rewards - mean))
    return AdvantageOutput(
        advantages=_broadcast(adv, inp.mask),
        returns=None,
        metrics=_metrics(adv, rewards, **_group_metrics(no_spread_g)),
    )


@ADVANTAGES.register("reinforce")
def reinforce(inp: AdvantageInputs, *, baseline: str = "batch_mean") -> AdvantageOutput:
    """REINFORCE with a batch-mean baseline.

    Williams (1992), "Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning" (no arXiv id; Machine Learning 8:229-256).

        A_i = r_i - b,  b = mean_j r_j over the batch ("batch_mean") or 0 ("none")

    Shapes: rewards [B], mask [B, T] -> advantages [B, T]. group_ids are ignored.
    For a group-mean or leave-one-out baseline use ``dr_grpo`` / ``rloo``; for a greedy
    baseline ``remax``. No return-to-go / whitening (that is verl's REINFORCE++).
    """
    if baseline not in ("batch_mean", "none"):
        raise ValueError(f"baseline must be 'batch_mean' or 'none', got {baseline!r}")
    rewards = _float_rewards(inp.rewards)
    _check_mask(inp.mask, rewards.shape[0])
    b = rewards.mean() if (baseline == "batch_mean" and rewards.numel()) else 0.0
    adv = rewards - b
    return AdvantageOutput(
        advantages=_broadcast(adv, inp.mask), returns=None, metrics=_metrics(adv, rewards)
    )


@ADVANTAGES.register("remax")
def remax(inp: AdvantageInputs) -> AdvantageOutput:
    """ReMax: REINFORCE whose baseline is the reward of the policy's greedy answer.

    "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning
    Large Language Models", arXiv 2310.10505.

        A_i = r(x_i, o_i) - r(x_i, greedy(x_i)),  broadcast to o_i's tokens

    Shapes: rewards [B], baseline [B] (greedy reward per sequence, supplied by the caller),
    mask [B, T] -> advantages [B, T].
    Departures from the authors' code: no gamma^(T-t) discount of the centred reward, no
    clip to +-5, no per-token KL in the return (fold KL into rewards if wanted). This is the
    paper formula (and verl with gamma=1, no KL).
    """
    rewards = _float_rewards(inp.rewards)
    _check_mask(inp.mask, rewards.shape[0])
    if inp.baseline is None:
        raise ValueError(
            "remax needs inp.baseline: the reward of the greedy (do_sample=False) answer "
            "for each sequence's prompt, shape [B]"
        )
    base = inp.baseline.detach().to(rewards.dtype)
    if base.shape != rewards.shape:
        raise ValueError(
            f"baseline must have shape {tuple(rewards.shape)}, got {tuple(base.shape)}"
        )
    adv = rewards - base
    return AdvantageOutput(
        advantages=_broadcast(adv, inp.mask),
        returns=None,
        metrics=_metrics(adv, rewards, baseline_mean=float(base.mean()) if base.numel() else 0.0),
    )


# ---------------------------------------------------------------------------------------
# token-level estimator (critic)


def _masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over valid tokens, Bessel-corrected var (verl, TRL)."""
    m = mask.to(x.dtype)
    n = m.sum()
    if n < 1:
        return x * 0.0
    mean = (x * m).sum() / n
    var = (((x - mean) ** 2) * m).sum() / n
    if n > 1:
        var = var * n / (n - 1)
    return (x - mean) * torch.rsqrt(var + eps)


@ADVANTAGES.register("gae")
def gae(
    inp: AdvantageInputs,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
) -> AdvantageOutput:
    """Generalized Advantage Estimation over the valid tokens of each response (PPO critic).

    "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
    arXiv 1506.02438; used with "Proximal Policy Optimization Algorithms", arXiv 1707.06347.

        delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1};  R_t = A_t + V_t

    Shapes: values [B, T] (V(s_t) aligned with the token it predicts), token_rewards [B, T]
    or rewards [B] (placed on the last valid token), mask [B, T] -> advantages, returns [B, T].

    Mask-aware like verl's multi-turn GAE: the recursion runs backward over valid tokens only;
    masked tokens (padding, tool observations) are skipped, carrying A and V_next through them,
    and their rewards/values are ignored. V_{next} = 0 after the last valid token.
    ``returns`` are computed before whitening. With ``whiten`` the advantages are
    mean-shifted and scaled to unit variance over valid tokens (Bessel var, +1e-8, as verl
    and TRL). Both outputs are zero where mask == 0 (verl leaves carried values there).
    The time loop is over T (the recursion is sequential); every sequence runs in parallel.
    """
    if inp.values is None:
        raise ValueError("gae needs inp.values: critic values V(s_t) of shape [B, T]")
    values = inp.values.detach()
    if not values.is_floating_point():
        values = values.to(torch.get_default_dtype())
    mask = inp.mask
    if values.shape != mask.shape:
        raise ValueError(f"values shape {tuple(values.shape)} != mask shape {tuple(mask.shape)}")
    valid = mask != 0
    B, T = mask.shape
    if inp.token_rewards is not None:
        token_rewards = inp.token_rewards.detach().to(values.dtype)
        if token_rewards.shape != mask.shape:
            raise ValueError(
                f"token_rewards shape {tuple(token_rewards.shape)} != mask shape {tuple(mask.shape)}"
            )
    else:
        rewards = _float_rewards(inp.rewards).to(values.dtype)
        if rewards.shape[0] != B:
            raise ValueError(f"rewards must have shape [B={B}], got {tuple(rewards.shape)}")
        pos = torch.arange(T, device=mask.device).expand(B, T)
        last = torch.where(valid, pos, -1).amax(dim=1)  # -1 for an empty row
        token_rewards = torch.zeros_like(values)
        rows = torch.nonzero(last >= 0).squeeze(1)
        token_rewards[rows, last[rows]] = rewards[rows]
    m = valid.to(values.dtype)
    next_v = values.new_zeros(B)
    next_a = values.new_zeros(B)
    adv = torch.zeros_like(values)
    for t in range(T - 1, -1, -1):
        delta = token_rewards[:, t] + gamma * next_v - values[:, t]
        a_t = delta + gamma * lam * next_a
        mt = m[:, t]
        next_a = mt * a_t + (1 - mt) * next_a
        next_v = mt * values[:, t] + (1 - mt) * next_v
        adv[:, t] = mt * a_t
    returns = (adv + values) * m
    raw_mean = float((adv * m).sum() / m.sum().clamp(min=1.0))
    if whiten:
        adv = _masked_whiten(adv, mask) * m
    adv_valid = adv[valid]
    metrics: Metrics = {
        "adv_mean": float(adv_valid.mean()) if adv_valid.numel() else 0.0,
        "adv_std": float(adv_valid.std(unbiased=False)) if adv_valid.numel() else 0.0,
        "adv_raw_mean": raw_mean,
        "returns_mean": float(returns[valid].mean()) if adv_valid.numel() else 0.0,
        "values_mean": float(values[valid].mean()) if adv_valid.numel() else 0.0,
    }
    return AdvantageOutput(advantages=adv, returns=returns, metrics=metrics)
