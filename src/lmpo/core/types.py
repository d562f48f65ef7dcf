"""Typed inputs shared by every function of one kind.

One signature per kind (see CONTRIBUTING.md):

* advantage estimator: ``fn(inp: AdvantageInputs, *, **params) -> AdvantageOutput``
* policy loss:         ``fn(inp: PolicyLossInputs, *, **params) -> (loss, metrics)``
* KL estimator:        ``fn(logp, ref_logp) -> per-token KL [B, T]``
* paired preference:   ``fn(inp: PairedInputs, *, **params) -> (loss, metrics)``
* unpaired preference: ``fn(inp: UnpairedInputs, *, **params) -> (loss, metrics)``
* reward-model loss:   ``fn(inp: RewardModelInputs, *, **params) -> (loss, metrics)``
* ensemble aggregate:  ``fn(rewards [K, N], *, **params) -> [N]``

Shapes: B sequences, T response tokens (right-padded), K ensemble members.
``metrics`` is a ``dict[str, float]`` of detached diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Metrics = dict[str, float]


@dataclass
class AdvantageInputs:
    """Per-sequence outcome rewards plus what token-level estimators need.

    rewards:       [B] scalar reward of each sequence.
    mask:          [B, T] 1 for response tokens that count, 0 for padding.
    group_ids:     [B] long; sequences sharing an id were sampled for the same prompt.
    values:        [B, T] critic values V(s_t) aligned with the token they predict (gae).
    token_rewards: [B, T] per-token rewards (gae); default: outcome reward on the last token.
    baseline:      [B] externally supplied baseline, e.g. the greedy answer's reward (remax).
    """

    rewards: Tensor
    mask: Tensor
    group_ids: Tensor | None = None
    values: Tensor | None = None
    token_rewards: Tensor | None = None
    baseline: Tensor | None = None


@dataclass
class AdvantageOutput:
    """advantages: [B, T] (zero where mask is 0); returns: [B, T] value targets or None."""

    advantages: Tensor
    returns: Tensor | None
    metrics: Metrics


@dataclass
class PolicyLossInputs:
    """Token log-probs of the sampled responses under three policies.

    logp:       [B, T] log pi_theta(o_t | ...), requires grad.
    old_logp:   [B, T] behaviour policy log-probs (detached).
    advantages: [B, T] (detached).
    mask:       [B, T] response mask.
    num_tokens: total mask sum of the whole optimizer step (for token-mean across
                micro-batches); None = this batch's.
    num_seqs:   number of sequences in the optimizer step; None = this batch's.
    """

    logp: Tensor
    old_logp: Tensor
    advantages: Tensor
    mask: Tensor
    num_tokens: float | None = None
    num_seqs: float | None = None


@dataclass
class PairedInputs:
    """Summed (SUM) completion log-probs of chosen (w) and rejected (l) responses.

    chosen_logp, rejected_logp:         [B] policy log-probs (require grad).
    ref_chosen_logp, ref_rejected_logp: [B] reference log-probs, or None (reference-free).
    chosen_len, rejected_len:           [B] number of completion tokens (for MEAN forms).
    """

    chosen_logp: Tensor
    rejected_logp: Tensor
    ref_chosen_logp: Tensor | None = None
    ref_rejected_logp: Tensor | None = None
    chosen_len: Tensor | None = None
    rejected_len: Tensor | None = None


@dataclass
class UnpairedInputs:
    """Thumbs-up / thumbs-down examples (KTO, BCO).

    logp, ref_logp:       [B] summed completion log-probs.
    desirable:            [B] bool label.
    kl_logp, kl_ref_logp: [B] log-probs of mismatched (prompt, other completion) pairs (KTO z0).
    weights:              [B] density-ratio weights for undesirable examples (BCO UDM), or None.
    shift:                float, detached running reward mean delta (BCO).
    """

    logp: Tensor
    ref_logp: Tensor
    desirable: Tensor
    kl_logp: Tensor | None = None
    kl_ref_logp: Tensor | None = None
    weights: Tensor | None = None
    shift: float = 0.0


@dataclass
class RewardModelInputs:
    """Scalar rewards of chosen and rejected responses: [B] each; margin [B] or None."""

    chosen_reward: Tensor
    rejected_reward: Tensor
    margin: Tensor | None = None


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over positions where mask is 1 (0 if the mask is empty)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def as_float(t: Tensor | float) -> float:
    return float(t.detach()) if isinstance(t, torch.Tensor) else float(t)
