"""BCO's underlying distribution matching (UDM): density-ratio weights from a prompt classifier.

Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
arXiv 2404.04656. Desirable and undesirable examples may come from different prompt
distributions; UDM reweights each undesirable example by the density ratio
``p_D(x) / p_U(x)``, estimated with a probabilistic classifier of desirable vs undesirable
prompts: ``w(x) = clamp(p / (1 - p), min_ratio, max_ratio)`` with ``p = P(desirable | emb(x))``
(``core.preference.udm_weight``). The weights are detached and fixed for the run.

Here the prompt embedding is the reference model's final hidden state mean-pooled over the
prompt tokens (computed once, with the reference log-probs), and the classifier is an
L2-regularised logistic regression with class-balanced sample weights, fitted by L-BFGS on
at most ``prompt_sample_size`` prompts per class. Departures from TRL's BCOTrainer: TRL
takes a user-supplied embedding function and scikit-learn's ``LogisticRegression``; we use
the model's own hidden states, standardise the features and solve the same objective
(``sum_i s_i * logloss_i + l2/2 * |w|^2``, ``s`` balanced, ``l2 = 1/C``) in torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmpo.core.preference import udm_weight
from lmpo.models.logprobs import decoder_and_head, position_ids_from_mask


@torch.no_grad()
def prompt_embeddings(model, prompt_ids: Tensor, prompt_mask: Tensor) -> Tensor:
    """Mean-pooled final hidden state over the prompt tokens: [B, P] left-padded -> [B, H] (float32)."""
    decoder, _ = decoder_and_head(model)
    hidden = decoder(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=position_ids_from_mask(prompt_mask),
        use_cache=False,
    ).last_hidden_state
    m = prompt_mask.unsqueeze(-1).to(hidden.dtype)
    return ((hidden * m).sum(1) / m.sum(1).clamp(min=1.0)).float()


def fit_logistic(
    x: Tensor, y: Tensor, *, l2: float = 1.0, max_iter: int = 200
) -> tuple[Tensor, Tensor]:
    """Class-balanced, L2-regularised logistic regression; x [N, H], y [N] bool -> (w [H], b [])."""
    x, yf = x.double(), y.double()
    n, n_pos = len(y), float(yf.sum())
    sample_w = torch.where(y, n / (2 * n_pos), n / (2 * (n - n_pos)))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure():
        opt.zero_grad()
        z = x @ w + b
        loss = (
            sample_w * torch.nn.functional.binary_cross_entropy_with_logits(z, yf, reduction="none")
        ).sum()
        loss = loss + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def udm_weights(
    emb: Tensor,
    desirable: Tensor,
    *,
    sample_size: int,
    l2: float,
    min_ratio: float,
    max_ratio: float,
    seed: int = 0,
) -> tuple[Tensor, dict[str, float]]:
    """Density-ratio weights [N] for every example (the loss applies them to undesirable ones).

    emb: [N, H] prompt embeddings; desirable: [N] bool. The classifier is fitted on a seeded
    sample of at most ``sample_size`` prompts per class.
    """
    desirable = desirable.bool()
    if bool(desirable.all()) or not bool(desirable.any()):
        raise ValueError("udm needs both desirable and undesirable examples in the training data")
    g = torch.Generator().manual_seed(seed)
    pick = []
    for cls in (True, False):
        idx = (desirable == cls).nonzero().squeeze(-1)
        pick.append(idx[torch.randperm(len(idx), generator=g)[:sample_size]])
    sample = torch.cat(pick)
    x = emb.double()
    mu, sd = x[sample].mean(0), x[sample].std(0).clamp(min=1e-6)
    x = (x - mu) / sd
    w, b = fit_logistic(x[sample], desirable[sample], l2=l2)
    p = torch.sigmoid(x @ w + b)
    weights = udm_weight(p, min_ratio=min_ratio, max_ratio=max_ratio).float()
    pred = p[sample] > 0.5
    hit = (pred == desirable[sample]).double()
    und = ~desirable
    metrics = {
        "udm/classifier_accuracy": float(
            0.5 * hit[desirable[sample]].mean() + 0.5 * hit[~desirable[sample]].mean()
        ),
        "udm/weight_mean": float(weights[und].mean()),
        "udm/weight_clamped_frac": float(
            ((weights[und] <= min_ratio) | (weights[und] >= max_ratio)).float().mean()
        ),
    }
    return weights, metrics
