"""Preference-optimization losses: paired (DPO family, IPO, SimPO, ORPO) and unpaired (KTO, BCO).

Every loss is a pure function registered by name. Paired losses take ``PairedInputs``, unpaired
losses take ``UnpairedInputs``; all return ``(loss, metrics)`` with ``loss`` a scalar mean.

Notation (shared with the reference ``algorithms/preference.md`` §1):

* Inputs are SUM log-probs over completion tokens, shape [B]. MEAN forms divide by the
  completion length T (``chosen_len`` / ``rejected_len``, [B]).
* ``u = logp_theta - logp_ref`` (log-ratio), ``r = beta * u`` (implicit reward),
  ``Delta = u_w - u_l`` (w = chosen, l = rejected).
* ``logsigma`` is ``F.logsigmoid`` (stable, exact), never ``log(sigmoid(x))`` nor ``softplus``
  (whose linear cut-off above 20 drops e^-20 ~ 2e-9 in float64).

Paired metrics (floats, detached): ``rewards/chosen`` and ``rewards/rejected`` (mean implicit
reward, i.e. beta times the log-ratio *the loss uses*, so MEAN for MEAN forms and the policy
log-prob itself for reference-free losses), ``rewards/margin``, ``rewards/accuracy`` (fraction
of pairs with implicit-reward margin > 0), ``logps/chosen`` and ``logps/rejected`` (mean of the
SUM log-probs given as input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lmpo.core.registries import PAIRED_LOSSES, UNPAIRED_LOSSES
from lmpo.core.types import Metrics, PairedInputs, UnpairedInputs, as_float

# --------------------------------------------------------------------------------------------
# shared helpers


def _check_beta(name: str, beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"{name}: beta must be > 0, got {beta}")


def _log_ratios(inp: PairedInputs, name: str) -> tuple[Tensor, Tensor]:
    """u_w, u_l [B]; ValueError if the reference log-probs are missing."""
    if inp.ref_chosen_logp is None or inp.ref_rejected_logp is None:
        raise ValueError(
            f"{name} needs a reference model: ref_chosen_logp and ref_rejected_logp must be "
            "set (use a reference-free loss such as 'simpo' or 'orpo' otherwise)"
        )
    return inp.chosen_logp - inp.ref_chosen_logp, inp.rejected_logp - inp.ref_rejected_logp


def _lengths(inp: PairedInputs, name: str) -> tuple[Tensor, Tensor]:
    """T_w, T_l [B] in the log-prob dtype; ValueError if missing or not positive."""
    if inp.chosen_len is None or inp.rejected_len is None:
        raise ValueError(
            f"{name} uses per-token MEAN log-probs and needs chosen_len and rejected_len "
            "(number of completion tokens of each response)"
        )
    t_w = inp.chosen_len.to(inp.chosen_logp.dtype)
    t_l = inp.rejected_len.to(inp.rejected_logp.dtype)
    if bool((t_w <= 0).any()) or bool((t_l <= 0).any()):
        raise ValueError(f"{name}: chosen_len and rejected_len must be > 0")
    return t_w, t_l


def _sigmoid_loss(z: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Per-pair (1 - eps) * (-logsigma(z)) + eps * (-logsigma(-z))."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss + label_smoothing * -F.logsigmoid(-z)
    return loss


def _paired_metrics(r_w: Tensor, r_l: Tensor, inp: PairedInputs) -> Metrics:
    r_w, r_l = r_w.detach(), r_l.detach()
    margin = r_w - r_l
    return {
        "rewards/chosen": as_float(r_w.mean()),
        "rewards/rejected": as_float(r_l.mean()),
        "rewards/margin": as_float(margin.mean()),
        "rewards/accuracy": as_float((margin > 0).to(r_w.dtype).mean()),
        "logps/chosen": as_float(inp.chosen_logp.detach().mean()),
        "logps/rejected": as_float(inp.rejected_logp.detach().mean()),
    }


# --------------------------------------------------------------------------------------------
# DPO family (SUM log-probs, reference model required)


@PAIRED_LOSSES.register("dpo")
def dpo(inp: PairedInputs, *, beta: float = 0.1) -> tuple[Tensor, Metrics]:
    """DPO, sigmoid loss.

    Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model", arXiv 2305.18290.

    ``L = mean_B[ -logsigma(beta * Delta) ]``, Delta = u_w - u_l from SUM log-probs [B].
    Default beta = 0.1 (TRL, HALOs). Needs ref_*. Same as TRL ``loss_type="sigmoid"``.
    """
    _check_beta("dpo", beta)
    u_w, u_l = _log_ratios(inp, "dpo")
    loss = -F.logsigmoid(beta * (u_w - u_l)).mean()
    return loss, _paired_metrics(beta * u_w, beta * u_l, inp)


@PAIRED_LOSSES.register("cdpo")
def cdpo(
    inp: PairedInputs, *, beta: float = 0.1, label_smoothing: float = 0.1
) -> tuple[Tensor, Metrics]:
    """Conservative DPO (label smoothing).

    Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO" (cDPO note; no
    arXiv id). The DPO paper is arXiv 2305.18290.

    ``L = mean_B[ (1-eps) * -logsigma(beta*Delta) + eps * -logsigma(-beta*Delta) ]``
    (= DPO + eps*beta*Delta per pair), SUM log-probs [B], eps = label_smoothing.
    Defaults beta = 0.1, eps = 0.1 (the DPO repo and TRL <= 0.28 default eps = 0, which is
    plain ``dpo``; HALOs uses 0.2). TRL >= 0.29 silently dropped label smoothing from
    ``sigmoid``; this function keeps the pre-0.29 behaviour.
    Departure: eps is checked to lie in [0, 0.5] (larger values would favour the rejected answer).
    """
    _check_beta("cdpo", beta)
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"cdpo: label_smoothing must be in [0, 0.5], got {label_smoothing}")
    u_w, u_l = _log_ratios(inp, "cdpo")
    loss = _sigmoid_loss(beta * (u_w - u_l), label_smoothing).mean()
    return loss, _paired_metrics(beta * u_w, beta * u_l, inp)


@PAIRED_LOSSES.register("robust_dpo")
def robust_dpo(
    inp: PairedInputs, *, beta: float = 0.1, flip_rate: float = 0.1
) -> tuple[Tensor, Metrics]:
    """Robust DPO (rDPO): DPO de-biased for labels flipped at a known rate eps.

    Chowdhury, Kini, Natarajan 2024, "Provably Robust DPO: Aligning Language Models with Noisy
    Feedback", arXiv 2403.00409.

    ``L = mean_B[ ((1-eps) * -logsigma(beta*Delta) - eps * -logsigma(-beta*Delta)) / (1-2eps) ]``
    with eps = flip_rate, SUM log-probs [B]. Note the minus on the flipped term (cDPO adds it);
    single-pair losses may be negative. Requires 0 <= eps < 0.5 (ValueError otherwise, as TRL).
    Defaults beta = 0.1, eps = 0.1 (TRL calls eps ``label_smoothing`` with default 0).
    Same as TRL ``loss_type="robust"``.
    """
    _check_beta("robust_dpo", beta)
    if not 0.0 <= flip_rate < 0.5:
        raise ValueError(
            f"robust_dpo: flip_rate must satisfy 0 <= flip_rate < 0.5, got {flip_rate}"
        )
    u_w, u_l = _log_ratios(inp, "robust_dpo")
    z = beta * (u_w - u_l)
    per_pair = (-(1.0 - flip_rate) * F.logsigmoid(z) + flip_rate * F.logsigmoid(-z)) / (
        1.0 - 2.0 * flip_rate
    )
    return per_pair.mean(), _paired_metrics(beta * u_w, beta * u_l, inp)


@PAIRED_LOSSES.register("ipo")
def ipo(inp: PairedInputs, *, beta: float = 0.1, form: str = "mean") -> tuple[Tensor, Metrics]:
    """IPO: regress the log-ratio margin onto 1/(2 tau).

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv 2310.12036, Eq. 17.

    ``L = mean_B[ (h - 1/(2*beta))^2 ]`` with beta playing tau, and
    ``form="mean"``: h = u_w/T_w - u_l/T_l (per-token MEAN log-ratios; TRL and HALOs, default;
    needs chosen_len/rejected_len), or ``form="sum"``: h = Delta (SUM; the paper and the original
    DPO repo). The two forms are different losses; a tau tuned for one does not transfer.
    Shapes [B]. Default beta = 0.1 (target margin 5). Implicit-reward metrics use the h of the
    chosen form (beta * u/T for "mean").
    """
    _check_beta("ipo", beta)
    u_w, u_l = _log_ratios(inp, "ipo")
    if form == "mean":
        t_w, t_l = _lengths(inp, "ipo (form='mean')")
        u_w, u_l = u_w / t_w, u_l / t_l
    elif form != "sum":
        raise ValueError(f"ipo: form must be 'mean' or 'sum', got {form!r}")
    loss = ((u_w - u_l) - 1.0 / (2.0 * beta)).pow(2).mean()
    return loss, _paired_metrics(beta * u_w, beta * u_l, inp)


@PAIRED_LOSSES.register("hinge")
def hinge(inp: PairedInputs, *, beta: float = 0.1) -> tuple[Tensor, Metrics]:
    """Hinge (SLiC / RSO style) preference loss, TRL form.

    Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    arXiv 2305.10425; Liu et al. 2023, "Statistical Rejection Sampling Improves Preference
    Optimization" (RSO), arXiv 2309.06657.

    ``L = mean_B[ max(0, 1 - beta*Delta) ]``, SUM log-probs [B]; the margin is 1/beta in
    log-ratio units. Default beta = 0.1. As TRL ``loss_type="hinge"`` (with a reference);
    the reference-free SLiC form of HALOs (with an NLL term) is a different parameterisation.
    """
    _check_beta("hinge", beta)
    u_w, u_l = _log_ratios(inp, "hinge")
    loss = torch.relu(1.0 - beta * (u_w - u_l)).mean()
    return loss, _paired_metrics(beta * u_w, beta * u_l, inp)


# --------------------------------------------------------------------------------------------
# reference-free paired losses (MEAN log-probs)


@PAIRED_LOSSES.register("simpo")
def simpo(
    inp: PairedInputs,
    *,
    beta: float = 2.0,
    gamma_beta_ratio: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """SimPO: reference-free, length-normalised reward with a target margin gamma.

    Meng, Xia, Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    arXiv 2405.14734.

    ``L = mean_B[ -logsigma(beta * (avg_w - avg_l - gamma/beta)) ]`` with avg = logp/T (MEAN,
    needs chosen_len/rejected_len), ``gamma/beta = gamma_beta_ratio``; with label_smoothing eps
    the cDPO mixture ``(1-eps)*(-logsigma(z)) + eps*(-logsigma(-z))`` as in the official repo.
    Shapes [B]; ref_* are ignored. Defaults beta = 2.0, gamma/beta = 0.5 (the README's starting
    point; the repo's config default is 0.25), eps = 0. No NLL term (repo ``sft_weight`` = 0).
    TRL's route (``CPOTrainer(loss_type="simpo")``) takes gamma itself and adds an NLL term
    unless ``cpo_alpha=0``; this function does neither. Implicit rewards: beta * avg.
    """
    _check_beta("simpo", beta)
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"simpo: label_smoothing must be in [0, 0.5], got {label_smoothing}")
    t_w, t_l = _lengths(inp, "simpo")
    r_w, r_l = beta * inp.chosen_logp / t_w, beta * inp.rejected_logp / t_l
    z = r_w - r_l - beta * gamma_beta_ratio
    loss = _sigmoid_loss(z, label_smoothing).mean()
    return loss, _paired_metrics(r_w, r_l, inp)


def _log_odds(avg_logp: Tensor) -> Tensor:
    """log(p / (1 - p)) for p = exp(avg_logp), computed stably: avg - log(-expm1(avg))."""
    return avg_logp - torch.log(-torch.expm1(avg_logp))


@PAIRED_LOSSES.register("orpo")
def orpo(inp: PairedInputs, *, beta: float = 0.1) -> tuple[Tensor, Metrics]:
    """ORPO: SFT on the chosen answer plus an odds-ratio preference penalty, no reference.

    Hong, Lee, Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
    arXiv 2403.07691.

    ``L = NLL(y_w) + lambda * mean_B[ -logsigma(logodds(avg_w) - logodds(avg_l)) ]``, where
    avg = logp/T (MEAN; needs chosen_len/rejected_len), ``logodds(a) = a - log(1 - e^a)``, and
    ``NLL = -sum_B logp_w / sum_B T_w`` (token mean over all chosen completion tokens of the
    batch, like TRL's cross-entropy). lambda = ``beta`` (TRL's name), default 0.1 (paper and TRL).
    Shapes [B]; ref_* are ignored. Implicit rewards (metrics): beta * avg, as TRL logs them.
    Extra metrics: ``nll``, ``log_odds_ratio`` (mean logsigma of the log-odds difference) and
    ``log_odds_chosen`` (mean log-odds difference), named as in TRL.

    Departures from TRL (``odds_ratio_loss`` / ``concatenated_forward``, checked in
    trl/trainer/orpo_trainer.py and trl/experimental/orpo/orpo_trainer.py):
    * TRL's NLL runs over prompt *and* completion tokens; ours over completion tokens only,
      because only completion SUM log-probs are given.
    * TRL computes ``log1p(-exp(avg))``; we use ``log(-expm1(avg))`` (same value, accurate when
      avg is near 0) and clamp avg at -1e-6 so an exactly-zero log-prob (a fully confident model)
      gives a finite loss and gradient instead of inf/NaN.
    """
    _check_beta("orpo", beta)
    t_w, t_l = _lengths(inp, "orpo")
    avg_w, avg_l = inp.chosen_logp / t_w, inp.rejected_logp / t_l
    log_odds = _log_odds(avg_w.clamp(max=-1e-6)) - _log_odds(avg_l.clamp(max=-1e-6))
    ratio = F.logsigmoid(log_odds)
    nll = -inp.chosen_logp.sum() / t_w.sum()
    loss = nll - beta * ratio.mean()
    metrics = _paired_metrics(beta * avg_w, beta * avg_l, inp)
    metrics["nll"] = as_float(nll)
    metrics["log_odds_ratio"] = as_float(ratio.mean())
    metrics["log_odds_chosen"] = as_float(log_odds.mean())
    return loss, metrics


# --------------------------------------------------------------------------------------------
# unpaired losses


def _unpaired_metrics(r: Tensor, inp: UnpairedInputs) -> Metrics:
    """Mean implicit reward / log-prob per side; a side's keys are omitted when it is empty."""
    r, logp, des = r.detach(), inp.logp.detach(), inp.desirable.bool()
    metrics: Metrics = {}
    for side, mask in (("chosen", des), ("rejected", ~des)):
        if bool(mask.any()):
            metrics[f"rewards/{side}"] = as_float(r[mask].mean())
            metrics[f"logps/{side}"] = as_float(logp[mask].mean())
    return metrics


@UNPAIRED_LOSSES.register("kto")
def kto(
    inp: UnpairedInputs,
    *,
    beta: float = 0.1,
    lambda_d: float = 1.0,
    lambda_u: float = 1.0,
) -> tuple[Tensor, Metrics]:
    """KTO: prospect-theoretic loss on unpaired desirable / undesirable examples.

    Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
    arXiv 2402.01306.

    ``z0 = max(0, mean_B(kl_logp - kl_ref_logp))`` (detached; clamp after averaging);
    desirable ``lambda_d * (1 - sigma(beta*(u - z0)))``, undesirable
    ``lambda_u * (1 - sigma(beta*(z0 - u)))``; L = mean over ALL B examples (divide by the
    count, not the weight sum). Shapes [B]; kl_* are the SUM log-probs of mismatched
    (prompt, other completion) pairs and are required. Defaults beta = 0.1, lambda_d =
    lambda_u = 1 (TRL, HALOs). An all-desirable or all-undesirable batch is fine (no NaN).
    Departure: z0 is the mean over the given kl_* only; TRL averages per-process means over the
    global batch, so a distributed caller should pass gathered kl_* tensors.
    Metrics: ``kl`` (= z0) and per-side ``rewards/*``, ``logps/*`` (omitted for an empty side).
    """
    _check_beta("kto", beta)
    if inp.kl_logp is None or inp.kl_ref_logp is None:
        raise ValueError(
            "kto needs kl_logp and kl_ref_logp (log-probs of mismatched prompt/completion pairs) "
            "to estimate the reference point z0"
        )
    z0 = (inp.kl_logp - inp.kl_ref_logp).detach().mean().clamp(min=0.0)
    u = inp.logp - inp.ref_logp
    des = inp.desirable.bool()
    losses = torch.where(
        des,
        lambda_d * (1.0 - torch.sigmoid(beta * (u - z0))),
        lambda_u * (1.0 - torch.sigmoid(beta * (z0 - u))),
    )
    metrics = _unpaired_metrics(beta * u, inp)
    metrics["kl"] = as_float(z0)
    return losses.mean(), metrics


@UNPAIRED_LOSSES.register("bco")
def bco(inp: UnpairedInputs, *, beta: float = 0.1) -> tuple[Tensor, Metrics]:
    """BCO: binary classification of desirable vs undesirable with the implicit reward as logit.

    Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
    arXiv 2404.04656.

    ``r = beta*u``; desirable ``-logsigma(r - delta)``, undesirable
    ``-logsigma(-(r - delta)) * w``; L = mean over all B examples. ``delta = inp.shift`` is the
    detached running mean of implicit rewards (see ``RunningMean``; as TRL, the caller updates
    it with the current batch's rewards *before* calling, so delta includes this batch).
    ``w = inp.weights`` [B] (UDM density ratios, see ``udm_weight``; detached and applied to
    undesirable examples only), or 1. Default beta = 0.1 (TRL BCOConfig).
    Metrics: ``rewards/mean_batch`` (mean r of this batch, to feed the running mean), ``delta``,
    and per-side ``rewards/*``, ``logps/*`` (omitted for an empty side).
    """
    _check_beta("bco", beta)
    r = beta * (inp.logp - inp.ref_logp)
    delta = as_float(inp.shift)
    des = inp.desirable.bool()
    w = torch.ones_like(r) if inp.weights is None else inp.weights.detach().to(r.dtype)
    losses = torch.where(des, -F.logsigmoid(r - delta), -F.logsigmoid(delta - r) * w)
    metrics = _unpaired_metrics(r, inp)
    metrics["rewards/mean_batch"] = as_float(r.detach().mean())
    metrics["delta"] = delta
    return losses.mean(), metrics


class RunningMean:
    """Cumulative, count-weighted mean of implicit rewards: BCO's reward shift delta.

    State starts at mean = 0, count = 1e-24 (as TRL's ``RunningMoments``). ``update(values)``
    does ``mean <- mean + (batch_mean - mean) * n / (count + n)``, ``count <- count + n``.
    Not an EMA. Call it only in training steps (TRL freezes it at eval) and checkpoint
    ``state_dict()``. A distributed caller should pass rewards gathered from all processes.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.count = 1e-24

    def update(self, values: Tensor) -> None:
        n = values.numel()
        if n == 0:
            return
        batch_mean = as_float(values.detach().mean())
        total = self.count + n
        self.mean += (batch_mean - self.mean) * n / total
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean = float(state["mean"])
        self.count = float(state["count"])


def udm_weight(p_desirable: Tensor, *, min_ratio: float = 0.5, max_ratio: float = 10.0) -> Tensor:
    """BCO underlying-distribution-matching weight for undesirable examples.

    ``w = clamp(p / (1 - p + 1e-8), min_ratio, max_ratio)`` with p = P(desirable | emb(prompt))
    from a prompt classifier, shape [B]. Defaults as TRL (``min_density_ratio=0.5``,
    ``max_density_ratio=10.0``). Returned detached.
    """
    p = p_desirable.detach()
    return (p / (1.0 - p + 1e-8)).clamp(min=min_ratio, max=max_ratio)
