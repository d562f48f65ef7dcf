"""Loss aggregation modes and policy-gradient losses.

Aggregations: ``fn(per_token [B, T], mask [B, T], *, num_tokens=None, num_seqs=None,
l_const=None) -> scalar``. ``num_tokens`` / ``num_seqs`` (the totals of the whole optimizer
step) replace the local denominators, so summing the losses of all micro-batches gives the
loss of the full batch (global normalisation under gradient accumulation / data parallel).
Sequences whose mask is all zero are excluded from sequence counts.

Policy losses: ``fn(inp: PolicyLossInputs, *, **params) -> (loss, metrics)``. Each one first
replaces logp, old_logp and advantages by 0 at masked positions, so padded garbage (even
-inf/nan) can neither leak into the loss nor into the gradient: masked tokens get exactly 0.
Sign convention: loss = -objective (minimise).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmpo.core.registries import AGGREGATIONS, POLICY_LOSSES
from lmpo.core.types import Metrics, PolicyLossInputs

_LOG_RATIO_CLAMP = 20.0

# ---------------------------------------------------------------------------------------
# aggregation modes (see online-rl.md §0.4)


def _masked(per_token: Tensor, mask: Tensor) -> Tensor:
    if per_token.shape != mask.shape:
        raise ValueError(
            f"per-token loss shape {tuple(per_token.shape)} != mask shape {tuple(mask.shape)}"
        )
    # where (not multiply): the gradient at masked positions is exactly 0 even if the
    # per-token value there is inf/nan.
    return torch.where(mask != 0, per_token, per_token.new_zeros(()))


def _nonempty_seqs(mask: Tensor) -> Tensor:
    return ((mask != 0).sum(dim=-1) > 0).sum()


def _denominator(local: Tensor, override: float | None, dtype: torch.dtype) -> Tensor:
    """Local count (clamped to >= 1, so an empty batch gives loss 0) or the global override."""
    if override is None:
        return local.to(dtype).clamp(min=1.0)
    if override <= 0:
        raise ValueError(f"global normaliser (num_tokens / num_seqs) must be > 0, got {override}")
    return torch.as_tensor(float(override), dtype=dtype, device=local.device)


@AGGREGATIONS.register("token-mean")
def token_mean(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    l_const: float | None = None,
) -> Tensor:
    """sum_{i,t} m*l / sum_{i,t} m (DAPO token-level loss, arXiv 2503.14476; verl default).

    ``num_tokens`` replaces the local mask sum (global token count of the optimizer step,
    as verl's ``batch_num_tokens`` / TRL ``dapo``). num_seqs, l_const are ignored.
    """
    x = _masked(per_token, mask)
    return x.sum() / _denominator((mask != 0).sum(), num_tokens, x.dtype)


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    l_const: float | None = None,
) -> Tensor:
    """(1/B) sum_i [sum_t m*l / sum_t m] (GRPO paper, arXiv 2402.03300; TRL ``grpo``).

    B counts sequences with at least one valid token, or ``num_seqs`` when given.
    num_tokens, l_const are ignored.
    """
    x = _masked(per_token, mask)
    lens = (mask != 0).sum(dim=-1).to(x.dtype)
    per_seq = x.sum(dim=-1) / lens.clamp(min=1.0)  # empty rows contribute 0
    return per_seq.sum() / _denominator(_nonempty_seqs(mask), num_seqs, x.dtype)


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    l_const: float | None = None,
) -> Tensor:
    """(1/B) sum_i sum_t m*l (REINFORCE sequence loss: sequence log-prob = token sum).

    B counts sequences with at least one valid token, or ``num_seqs`` when given.
    num_tokens, l_const are ignored.
    """
    x = _masked(per_token, mask)
    return x.sum() / _denominator(_nonempty_seqs(mask), num_seqs, x.dtype)


@AGGREGATIONS.register("constant")
def constant(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    l_const: float | None = None,
) -> Tensor:
    """sum_{i,t} m*l / (B * L_const) (Dr. GRPO, arXiv 2503.20783; TRL ``dr_grpo``).

    L_const is a fixed length, e.g. the max completion length (required). B counts sequences
    with at least one valid token, or ``num_seqs`` when given (TRL counts every row; verl's
    ``seq-mean-token-sum-norm`` does not divide by B at all).
    """
    if l_const is None:
        raise ValueError(
            "aggregation 'constant' needs l_const (a fixed length such as max_completion_length)"
        )
    if l_const <= 0:
        raise ValueError(f"l_const must be > 0, got {l_const}")
    x = _masked(per_token, mask)
    b = _denominator(_nonempty_seqs(mask), num_seqs, x.dtype)
    return x.sum() / (b * float(l_const))


def aggregate(per_token: Tensor, mask: Tensor, mode: str, **kw) -> Tensor:
    """Reduce a [B, T] per-token loss to a scalar with the aggregation mode ``mode``."""
    return AGGREGATIONS.get(mode)(per_token, mask, **kw)


# ---------------------------------------------------------------------------------------
# policy losses


def _prepare(inp: PolicyLossInputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mask-sanitised (logp, old_logp, advantages, valid) with shape checks."""
    shape = inp.logp.shape
    for name in ("old_logp", "advantages", "mask"):
        if getattr(inp, name).shape != shape:
            raise ValueError(
                f"{name} shape {tuple(getattr(inp, name).shape)} != logp shape {tuple(shape)}"
            )
    valid = inp.mask != 0
    zero = torch.zeros((), dtype=inp.logp.dtype, device=inp.logp.device)
    logp = torch.where(valid, inp.logp, zero)
    old = torch.where(valid, inp.old_logp.detach().to(logp.dtype), zero)
    adv = torch.where(valid, inp.advantages.detach().to(logp.dtype), zero)
    return logp, old, adv, valid


def _agg(per_token: Tensor, inp: PolicyLossInputs, agg: str, l_const: float | None) -> Tensor:
    return aggregate(
        per_token, inp.mask, agg, num_tokens=inp.num_tokens, num_seqs=inp.num_seqs, l_const=l_const
    )


def _vmean(x: Tensor, valid: Tensor) -> float:
    n = valid.sum()
    return float((torch.where(valid, x, 0.0)).sum() / n) if n > 0 else 0.0


def _check_eps(eps_low: float, eps_high: float) -> None:
    if not (0.0 <= eps_low < 1.0):
        raise ValueError(f"eps_low must be in [0, 1), got {eps_low}")
    if eps_high < 0.0:
        raise ValueError(f"eps_high must be >= 0, got {eps_high}")


def _clipped_surrogate(
    ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """Per-token max(-A*rho, -A*clip(rho)) and the 'clipped branch active' flag."""
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    inp: PolicyLossInputs,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    l_const: float | None = None,
) -> tuple[Tensor, Metrics]:
    """PPO clipped surrogate at token level, with optional clip-higher and dual-clip.

    "Proximal Policy Optimization Algorithms", arXiv 1707.06347 (clip); DAPO clip-higher,
    arXiv 2503.14476 (eps_high=0.28); dual-clip from "Mastering Complex Control in MOBA Games
    with Deep Reinforcement Learning", arXiv 1912.09729.

        l_t = -min(rho_t A_t, clip(rho_t, 1-eps_low, 1+eps_high) A_t);  if A_t<0: l_t = min(l_t, -c A_t)

    rho_t = exp(clamp(logp - old_logp, -20, 20)) (verl's clamp). Shapes: logp, old_logp,
    advantages, mask [B, T] -> scalar loss reduced with ``agg`` (see AGGREGATIONS; l_const for
    ``constant``). Used by GRPO (with agg="seq-mean-token-mean" for the paper), DAPO, PPO.
    Metrics: clip_frac (valid tokens where the clipped branch is strictly active), ppo_kl
    (mean old_logp - logp), ratio_mean, and dual_clip_frac when dual-clip is on.
    Differences: verl enables dual-clip by default (c=3); here it is off unless given.
    """
    _check_eps(eps_low, eps_high)
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    logp, old, adv, valid = _prepare(inp)
    log_ratio = (logp - old).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    per_token, clipped_active = _clipped_surrogate(ratio, adv, eps_low, eps_high)
    if dual_clip is not None:
        cap = -adv * dual_clip
        dual_active = (adv < 0) & (per_token > cap)
        per_token = torch.where(adv < 0, torch.minimum(per_token, cap), per_token)
    loss = _agg(per_token, inp, agg, l_const)
    with torch.no_grad():
        metrics: Metrics = {
            "clip_frac": _vmean(clipped_active.to(ratio.dtype), valid),
            "ppo_kl": _vmean(-log_ratio, valid),
            "ratio_mean": _vmean(ratio, valid),
        }
        if dual_clip is not None:
            metrics["dual_clip_frac"] = _vmean(dual_active.to(ratio.dtype), valid)
    return loss, metrics


@POLICY_LOSSES.register("gspo")
def gspo(
    inp: PolicyLossInputs,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    agg: str = "seq-mean-token-mean",
    l_const: float | None = None,
) -> tuple[Tensor, Metrics]:
    """GSPO: PPO-style clipping of a length-normalised sequence-level importance ratio.

    "Group Sequence Policy Optimization" (Zheng et al. 2025), arXiv 2507.18071.

        s_i = exp(mean_{t in o_i}(logp_t - old_logp_t));  s_it = sg[s_i] * exp(logp_t - sg[logp_t]);
        l_it = -min(s_it A_it, clip(s_it, 1-eps_low, 1+eps_high) A_it)

    s_it equals s_i in value; its gradient is s_i * grad logp_t, i.e. the gradient of the
    sequence-level objective (GSPO-token form; with A_it = A_i it is exactly GSPO).
    Shapes: logp, old_logp, advantages, mask [B, T] -> scalar, reduced with ``agg``
    (seq-mean-token-mean by default, as the paper and verl).
    Differences: the log of s_it is clamped to [-20, 20] like ppo_clip (verl clamps at max 10
    only), so a one-token sequence gives exactly ppo_clip. Metrics: clip_frac, ppo_kl,
    ratio_mean (token-level, like ppo_clip), seq_ratio_mean (mean s_i over non-empty sequences).
    """
    _check_eps(eps_low, eps_high)
    logp, old, adv, valid = _prepare(inp)
    m = valid.to(logp.dtype)
    lens = m.sum(dim=-1)
    seq_log_ratio = ((logp - old) * m).sum(dim=-1) / lens.clamp(min=1.0)  # [B]
    log_s = seq_log_ratio.detach()[:, None] + logp - logp.detach()
    log_s = log_s.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    s = torch.exp(log_s)
    per_token, clipped_active = _clipped_surrogate(s, adv, eps_low, eps_high)
    loss = _agg(per_token, inp, agg, l_const)
    with torch.no_grad():
        log_ratio = (logp - old).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        nonempty = lens > 0
        seq_s = torch.exp(seq_log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
        metrics: Metrics = {
            "clip_frac": _vmean(clipped_active.to(s.dtype), valid),
            "ppo_kl": _vmean(-log_ratio, valid),
            "ratio_mean": _vmean(torch.exp(log_ratio), valid),
            "seq_ratio_mean": float(seq_s[nonempty].mean()) if nonempty.any() else 0.0,
        }
    return loss, metrics


@POLICY_LOSSES.register("reinforce")
def reinforce(
    inp: PolicyLossInputs,
    *,
    agg: str = "seq-mean-token-sum",
    l_const: float | None = None,
) -> tuple[Tensor, Metrics]:
    """Vanilla policy gradient (score function), strictly on-policy: no ratio, no clip.

    Williams (1992), "Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning" (no arXiv id); as used by RLOO (arXiv 2402.14740) and ReMax
    (arXiv 2310.10505).

        l_t = -A_t * logp_t;  default agg seq-mean-token-sum: loss = -(1/B) sum_i A_i sum_t logp_it

    Shapes: logp, advantages, mask [B, T] -> scalar. old_logp is only used for the ppo_kl
    metric (it should be ~0: take one gradient step per batch). ReMax's authors use token-mean.
    """
    logp, old, adv, valid = _prepare(inp)
    per_token = -adv * logp
    loss = _agg(per_token, inp, agg, l_const)
    with torch.no_grad():
        metrics: Metrics = {
            "ppo_kl": _vmean(old - logp, valid),
            "logp_mean": _vmean(logp, valid),
        }
    return loss, metrics
