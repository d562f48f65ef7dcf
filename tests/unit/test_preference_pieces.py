"""Pieces of the offline loop: shared-prompt answer log-probs and BCO's UDM density ratios."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lmpo.core.preference import udm_weight
from lmpo.data.preference import PreferenceSet
from lmpo.train.preference import answer_logprobs
from lmpo.train.udm import fit_logistic, prompt_embeddings, udm_weights


def _ctx(tok, shared: bool):
    return SimpleNamespace(
        pad_id=tok.pad_token_id, shared_prefix=shared, cfg=SimpleNamespace(logprob_chunk=3)
    )


def test_shared_prompt_forward_equals_concatenated_forward(tiny):
    """Values and gradients: the prompt encoded once for chosen and rejected == two plain rows."""
    model, tok = tiny
    data = PreferenceSet(
        ids=["a", "b", "c"],
        prompts=[[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]],
        branches={
            "chosen": [[20, 21, 22], [23], [24, 25, 26, 27]],
            "rejected": [[30, 31], [32, 33, 34], [36]],
        },
    )
    out, grads = {}, {}
    for shared in (True, False):
        model.zero_grad()
        lp = answer_logprobs(_ctx(tok, shared), model, data, [2, 0, 1], ["chosen", "rejected"])
        (lp["chosen"] - 0.5 * lp["rejected"]).sum().backward()
        out[shared] = lp
        grads[shared] = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for br in ("chosen", "rejected"):
        torch.testing.assert_close(out[True][br], out[False][br], rtol=1e-5, atol=1e-5)
    for n in grads[True]:
        torch.testing.assert_close(grads[True][n], grads[False][n], rtol=1e-4, atol=1e-5)
    # and each sum equals a hand-computed log-softmax over the full sequence
    ids = torch.tensor([[12, 13, 14, 24, 25, 26, 27]])
    with torch.no_grad():
        logits = model(ids).logits[0, 2:-1].log_softmax(-1)
    expected = logits.gather(-1, ids[0, 3:, None]).sum()
    torch.testing.assert_close(out[True]["chosen"][0].detach(), expected, rtol=1e-5, atol=1e-5)


def test_logistic_regression_separates_separable_prompts():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20, 3, generator=g) + 3, torch.randn(20, 3, generator=g) - 3])
    y = torch.tensor([True] * 20 + [False] * 20)
    w, b = fit_logistic(x, y, l2=1.0)
    assert bool(((x.double() @ w + b > 0) == y).all())


def test_udm_weights_are_clamped_density_ratios():
    g = torch.Generator().manual_seed(0)
    # desirable prompts cluster at +2; undesirable ones at -2, except rows 30..32 that look desirable
    emb = torch.cat(
        [
            torch.randn(20, 4, generator=g) + 2,
            torch.randn(10, 4, generator=g) - 2,
            torch.randn(3, 4, generator=g) + 2,
        ]
    )
    desirable = torch.tensor([True] * 20 + [False] * 13)
    w, m = udm_weights(emb, desirable, sample_size=1024, l2=1.0, min_ratio=0.5, max_ratio=10.0)
    assert w.shape == (33,) and bool((w >= 0.5).all()) and bool((w <= 10.0).all())
    # undesirable rows that look like desirable prompts weigh more
    assert float(w[20:30].mean()) < 1.0 < float(w[30:].mean())
    assert 0.5 <= m["udm/classifier_accuracy"] <= 1.0 and m["udm/weight_mean"] == pytest.approx(
        float(w[20:].mean())
    )
    # the weights are core.preference.udm_weight of the classifier's p: p = 0.5 gives 1
    assert float(udm_weight(torch.tensor([0.5]))) == pytest.approx(1.0, abs=1e-6)


def test_udm_needs_both_labels():
    with pytest.raises(ValueError, match="both desirable and undesirable"):
        udm_weights(
            torch.randn(4, 2),
            torch.ones(4, dtype=torch.bool),
            sample_size=8,
            l2=1.0,
            min_ratio=0.5,
            max_ratio=10.0,
        )


def test_prompt_embeddings_ignore_left_padding(tiny):
    model, _ = tiny
    alone = prompt_embeddings(model, torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long))
    padded = prompt_embeddings(
        model,
        torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]]),
        torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]),
    )
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-5)
