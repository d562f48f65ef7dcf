"""Per-token KL estimators and KL-coefficient controllers.

Estimators have the signature ``fn(logp, ref_logp) -> [B, T]`` (same shape as the inputs):
a per-sampled-token estimate of KL(pi_theta || pi_ref) from tokens sampled by the policy.
Masking and aggregation are the caller's job (use the policy loss's aggregation mode when
the KL goes into the loss, GRPO style; or subtract ``beta * k1`` from token rewards, PPO style).

Source for all three: J. Schulman, "Approximating KL Divergence" (blog, 2020; no arXiv id).
With delta_t = log pi_ref(o_t) - log pi_theta(o_t), clamped to [-20, 20] (verl):

* k1 = -delta                        unbiased, can be negative per token
* k2 = delta^2 / 2                   biased value; its gradient is the reverse-KL gradient
* k3 = exp(delta) - delta - 1        >= 0, unbiased; GRPO's KL term (verl "low_var_kl"),
                                     value clamped to [-10, 10] (verl)

Departure: verl does not clamp k1/k2; here every estimator clamps delta to [-20, 20] so that
extreme log-probs give finite values and gradients (zero gradient outside the clamp).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lmpo.core.registries import KL_ESTIMATORS

_DELTA_CLAMP = 20.0
_K3_CLAMP = 10.0


def _delta(logp: Tensor, ref_logp: Tensor) -> Tensor:
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp shape {tuple(logp.shape)} != ref_logp shape {tuple(ref_logp.shape)}"
        )
    return (ref_logp - logp).clamp(-_DELTA_CLAMP, _DELTA_CLAMP)


@KL_ESTIMATORS.register("k1")
def k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log pi_theta - log pi_ref (delta clamped to [-20, 20]); [B, T] -> [B, T].

    Schulman, "Approximating KL Divergence" (2020). verl "kl"; TRL PPO default ``kl_estimator="k1"``.
    """
    return -_delta(logp, ref_logp)


@KL_ESTIMATORS.register("k2")
def k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = 0.5 * (log pi_ref - log pi_theta)^2 (delta clamped to [-20, 20]); [B, T] -> [B, T].

    Schulman, "Approximating KL Divergence" (2020). verl "mse".
    """
    d = _delta(logp, ref_logp)
    return 0.5 * d * d


@KL_ESTIMATORS.register("k3")
def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(delta) - delta - 1, delta = log pi_ref - log pi_theta; [B, T] -> [B, T].

    Schulman, "Approximating KL Divergence" (2020); the KL term of GRPO ("DeepSeekMath",
    arXiv 2402.03300). verl "low_var_kl": delta clamped to [-20, 20], value to [-10, 10].
    """
    d = _delta(logp, ref_logp)
    return (torch.exp(d) - d - 1.0).clamp(-_K3_CLAMP, _K3_CLAMP)


# ---------------------------------------------------------------------------------------
# controllers


class FixedKLController:
    """Constant KL coefficient; same interface as AdaptiveKLController (update is a no-op)."""

    def __init__(self, init_kl_coef: float) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        self.value = float(init_kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op (kept so callers can treat both controllers alike)."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller of the KL coefficient beta toward a target KL.

    "Fine-Tuning Language Models from Human Preferences" (Ziegler et al. 2019), arXiv 1909.08593:

        e = clip(KL_obs / KL_target - 1, -0.2, 0.2);   beta <- beta * (1 + e * n_steps / horizon)

    ``current_kl`` is the observed (per-sequence summed, in the paper) KL of the last batch and
    ``n_steps`` the number of samples (or steps) it covers, as in verl/TRL. verl defaults:
    target 0.1, horizon 10000.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        err = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))
