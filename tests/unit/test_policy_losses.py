"""Aggregation modes and policy losses: worked values (online-rl.md §0.2, §0.4), properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmpo.core.policy_losses import (
    aggregate,
    constant,
    gspo,
    ppo_clip,
    reinforce,
    seq_mean_token_mean,
    seq_mean_token_sum,
    token_mean,
)
from lmpo.core.registries import AGGREGATIONS, POLICY_LOSSES
from lmpo.core.types import PolicyLossInputs

F64 = torch.float64
SETTINGS = settings(max_examples=50, deadline=None)
AGG_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "constant"]
LOSSES = ["ppo_clip", "gspo", "reinforce"]


def _t(x):
    return torch.tensor(x, dtype=F64)


def _one_token(ratios, advs, **kw) -> PolicyLossInputs:
    """B one-token sequences with the given ratios pi/pi_old and advantages."""
    logp = _t([[math.log(r)] for r in ratios]).requires_grad_()
    return PolicyLossInputs(
        logp=logp,
        old_logp=torch.zeros_like(logp, requires_grad=False),
        advantages=_t([[a] for a in advs]),
        mask=torch.ones_like(logp),
        **kw,
    )


# ---------------------------------------------------------------------------------------
# aggregation: worked example of §0.4


def _agg_example():
    per_token = _t([[1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    mask = _t([[1, 1, 0, 0], [1, 1, 1, 1]])
    return per_token, mask


def test_aggregation_worked_example():
    x, m = _agg_example()
    assert float(aggregate(x, m, "token-mean")) == pytest.approx(10 / 6, abs=1e-12)
    assert float(aggregate(x, m, "token-mean")) == pytest.approx(1.667, abs=1e-3)
    assert float(aggregate(x, m, "seq-mean-token-mean")) == pytest.approx(1.5, abs=1e-12)
    assert float(aggregate(x, m, "seq-mean-token-sum")) == pytest.approx(5.0, abs=1e-12)
    assert float(aggregate(x, m, "constant", l_const=8)) == pytest.approx(0.625, abs=1e-12)
    assert AGGREGATIONS.get("token-mean") is token_mean
    assert AGGREGATIONS.get("seq-mean-token-mean") is seq_mean_token_mean
    assert AGGREGATIONS.get("seq-mean-token-sum") is seq_mean_token_sum
    assert AGGREGATIONS.get("constant") is constant


def test_aggregation_global_denominators_and_empty_rows():
    x, m = _agg_example()
    assert float(aggregate(x, m, "token-mean", num_tokens=12)) == pytest.approx(10 / 12)
    assert float(aggregate(x, m, "seq-mean-token-mean", num_seqs=4)) == pytest.approx(3 / 4)
    assert float(aggregate(x, m, "seq-mean-token-sum", num_seqs=4)) == pytest.approx(10 / 4)
    assert float(aggregate(x, m, "constant", num_seqs=4, l_const=8)) == pytest.approx(10 / 32)
    # an all-masked row does not count as a sequence
    x3 = torch.cat([x, _t([[5.0, 5.0, 5.0, 5.0]])])
    m3 = torch.cat([m, torch.zeros(1, 4, dtype=F64)])
    assert float(aggregate(x3, m3, "seq-mean-token-mean")) == pytest.approx(1.5)
    assert float(aggregate(x3, m3, "seq-mean-token-sum")) == pytest.approx(5.0)
    assert float(aggregate(x3, m3, "constant", l_const=8)) == pytest.approx(0.625)
    assert float(aggregate(x3, m3, "token-mean")) == pytest.approx(10 / 6)
    # empty batch -> 0, not nan
    for mode in AGG_MODES:
        out = aggregate(x, torch.zeros_like(m), mode, l_const=8)
        assert float(out) == 0.0


def test_aggregation_errors():
    x, m = _agg_example()
    with pytest.raises(ValueError, match="l_const"):
        aggregate(x, m, "constant")
    with pytest.raises(KeyError, match="valid names: .*token-mean"):
        aggregate(x, m, "sum")
    with pytest.raises(ValueError, match="> 0"):
        aggregate(x, m, "token-mean", num_tokens=0)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(1, 6), st.integers(1, 3))
def test_aggregation_micro_batches_sum_to_full_batch(seed, B, T, n_chunks):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, dtype=F64, generator=g)
    m = (torch.rand(B, T, generator=g) > 0.3).to(F64)
    n_tok = float(m.sum())
    n_seq = float((m.sum(-1) > 0).sum())
    for mode in AGG_MODES:
        kw = {"l_const": 7.0}
        full = aggregate(x, m, mode, **kw)
        if n_tok == 0:
            continue
        parts = sum(
            aggregate(xc, mc, mode, num_tokens=n_tok, num_seqs=n_seq, **kw)
            for xc, mc in zip(x.chunk(n_chunks), m.chunk(n_chunks), strict=True)
        )
        torch.testing.assert_close(parts, full)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 5))
def test_aggregation_masked_tokens_get_zero_grad(seed, B, T):
    g = torch.Generator().manual_seed(seed)
    x = (1e4 * torch.randn(B, T, dtype=F64, generator=g)).requires_grad_()
    m = (torch.rand(B, T, generator=g) > 0.4).to(F64)
    # per-token values that are nan/inf at masked positions must not leak into loss or grad
    garbage = torch.full((B, T), float("nan"), dtype=F64)
    garbage[:, ::2] = float("inf")
    leaf = torch.where(m != 0, torch.randn(B, T, dtype=F64, generator=g), garbage)
    leaf.requires_grad_()
    for mode in AGG_MODES:
        x.grad = None
        leaf.grad = None
        aggregate(x * x, m, mode, l_const=4.0).backward()
        assert torch.all(x.grad[m == 0] == 0)
        loss = aggregate(leaf, m, mode, l_const=4.0)
        assert torch.isfinite(loss)
        loss.backward()
        assert torch.all(leaf.grad[m == 0] == 0)
        assert torch.isfinite(leaf.grad).all()


# ---------------------------------------------------------------------------------------
# ppo_clip: worked examples of §0.2


@pytest.mark.parametrize(
    "ratio, adv, kw, expected",
    [
        (1.5, 1.0, {}, -1.2),
        (1.5, 1.0, {"eps_high": 0.28}, -1.28),
        (1.1, 1.0, {}, -1.1),
        (0.5, -1.0, {}, 0.8),
        # dual-clip by hand: A=-1, rho=5, eps .2, c=3 -> max(5, 1.2) = 5 -> min(5, 3) = 3
        (5.0, -1.0, {"dual_clip": 3.0}, 3.0),
        # dual-clip not binding: rho=2 -> max(2, 1.2) = 2 < 3
        (2.0, -1.0, {"dual_clip": 3.0}, 2.0),
        # dual-clip ignores A > 0: rho=5 -> -min(5, 1.2) = -1.2
        (5.0, 1.0, {"dual_clip": 3.0}, -1.2),
    ],
)
def test_ppo_clip_worked(ratio, adv, kw, expected):
    inp = _one_token([ratio], [adv])
    loss, _ = ppo_clip(inp, **kw)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_ppo_clip_gradients_and_metrics_by_hand():
    # tokens: (rho 5, A -1), (rho 2, A -1), (rho 5, A +1), (rho 0.5, A -1)
    inp = _one_token([5.0, 2.0, 5.0, 0.5], [-1.0, -1.0, 1.0, -1.0])
    loss, met = ppo_clip(inp, dual_clip=3.0)
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.2 + 0.8) / 4, abs=1e-12)
    loss.backward()
    # d/dlogp of -A*rho is -A*rho; the clipped and dual-clipped branches are constant
    torch.testing.assert_close(inp.logp.grad, _t([[0.0], [2.0 / 4], [0.0], [0.0]]))
    assert met["clip_frac"] == pytest.approx(2 / 4)  # tokens 3 and 4
    assert met["dual_clip_frac"] == pytest.approx(1 / 4)  # token 1
    assert met["ratio_mean"] == pytest.approx((5 + 2 + 5 + 0.5) / 4)
    ppo_kl = -(math.log(5) + math.log(2) + math.log(5) + math.log(0.5)) / 4
    assert met["ppo_kl"] == pytest.approx(ppo_kl)


def test_ppo_clip_validation():
    inp = _one_token([1.0], [1.0])
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip(inp, dual_clip=1.0)
    with pytest.raises(ValueError, match="eps_low"):
        ppo_clip(inp, eps_low=1.0)
    with pytest.raises(ValueError, match="l_const"):
        ppo_clip(inp, agg="constant")
    bad = PolicyLossInputs(
        logp=torch.zeros(2, 3),
        old_logp=torch.zeros(2, 3),
        advantages=torch.zeros(2),
        mask=torch.ones(2, 3),
    )
    with pytest.raises(ValueError, match="advantages shape"):
        ppo_clip(bad)


# ---------------------------------------------------------------------------------------
# gspo: worked examples


def test_gspo_worked_clipped():
    # one sequence, logp - old = [0.1, 0.3] -> s = exp(0.2) = 1.2214 > 1.2 -> loss -1.2
    logp = _t([[0.1, 0.3]]).requires_grad_()
    inp = PolicyLossInputs(
        logp=logp,
        old_logp=torch.zeros(1, 2, dtype=F64),
        advantages=_t([[1.0, 1.0]]),
        mask=torch.ones(1, 2, dtype=F64),
    )
    loss, met = gspo(inp, eps_low=0.2, eps_high=0.2)
    assert loss.item() == pytest.approx(-1.2, abs=1e-12)
    loss.backward()
    assert torch.all(logp.grad == 0)
    assert met["clip_frac"] == 1.0
    assert met["seq_ratio_mean"] == pytest.approx(math.exp(0.2))


def test_gspo_worked_unclipped_gradient():
    # s = exp(mean([0.0002, -0.0001, 0.0002])) = exp(1e-4) within (1-3e-4, 1+4e-4).
    # value = -A s; d/dlogp_t = -A s / |o| (seq-mean-token-mean, one sequence)
    d = [0.0002, -0.0001, 0.0002]
    logp = _t([[-1.0 + x for x in d]]).requires_grad_()
    inp = PolicyLossInputs(
        logp=logp,
        old_logp=_t([[-1.0, -1.0, -1.0]]),
        advantages=_t([[2.0, 2.0, 2.0]]),
        mask=torch.ones(1, 3, dtype=F64),
    )
    loss, met = gspo(inp)
    s = math.exp(1e-4)
    assert loss.item() == pytest.approx(-2.0 * s, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(logp.grad, _t([[-2.0 * s / 3] * 3]))
    assert met["clip_frac"] == 0.0


def test_gspo_matches_sequence_level_objective():
    """Token form with sg-trick == explicit sequence-level clipped objective (value and grad)."""
    g = torch.Generator().manual_seed(0)
    B, T = 4, 6
    logp0 = -torch.rand(B, T, dtype=F64, generator=g)
    old = logp0 + 0.05 * torch.randn(B, T, dtype=F64, generator=g)
    mask = _t([[1] * 6, [1] * 3 + [0] * 3, [1, 0, 1, 1, 0, 0], [1] + [0] * 5])
    adv_seq = torch.randn(B, dtype=F64, generator=g)
    adv = adv_seq[:, None].expand(B, T).clone()
    eps_low, eps_high = 0.03, 0.04

    a = logp0.clone().requires_grad_()
    loss, _ = gspo(PolicyLossInputs(a, old, adv, mask), eps_low=eps_low, eps_high=eps_high)
    loss.backward()

    b = logp0.clone().requires_grad_()
    s = torch.exp(((b - old) * mask).sum(-1) / mask.sum(-1))
    obj = torch.minimum(s * adv_seq, s.clamp(1 - eps_low, 1 + eps_high) * adv_seq)
    ref = -obj.mean()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(a.grad, b.grad)


# ---------------------------------------------------------------------------------------
# reinforce loss


def test_reinforce_loss_worked():
    # loss = -(1/B) sum_i A_i sum_t logp_it = -(1*(-1-2) + (-0.5)*(-3)) / 2 = 0.75
    logp = _t([[-1.0, -2.0], [-3.0, 9.0]]).requires_grad_()
    inp = PolicyLossInputs(
        logp=logp,
        old_logp=logp.detach(),
        advantages=_t([[1.0, 1.0], [-0.5, -0.5]]),
        mask=_t([[1, 1], [1, 0]]),
    )
    loss, _ = reinforce(inp)
    assert loss.item() == pytest.approx(0.75, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(logp.grad, _t([[-0.5, -0.5], [0.25, 0.0]]))


# ---------------------------------------------------------------------------------------
# properties


@st.composite
def batches(draw, scale=1.0):
    seed = draw(st.integers(0, 2**31 - 1))
    B = draw(st.integers(1, 5))
    T = draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(seed)
    logp = -scale * torch.rand(B, T, dtype=F64, generator=g)
    old = -scale * torch.rand(B, T, dtype=F64, generator=g)
    adv = torch.randn(B, T, dtype=F64, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).to(F64)
    return logp, old, adv, mask


def _params(name, agg):
    return {"agg": agg, "l_const": 5.0}


@SETTINGS
@given(batches())
def test_masked_tokens_get_zero_gradient(batch):
    logp, old, adv, mask = batch
    garbage = torch.full_like(logp, float("nan"))
    garbage[:, ::2] = -float("inf")
    logp_g = torch.where(mask != 0, logp, garbage).requires_grad_()
    old_g = torch.where(mask != 0, old, -1e4)
    adv_g = torch.where(mask != 0, adv, 1e6)
    for name in LOSSES:
        for agg in AGG_MODES:
            logp_g.grad = None
            loss, _ = POLICY_LOSSES.get(name)(
                PolicyLossInputs(logp_g, old_g, adv_g, mask), **_params(name, agg)
            )
            assert torch.isfinite(loss)
            loss.backward()
            assert torch.all(logp_g.grad[mask == 0] == 0), (name, agg)
            assert torch.isfinite(logp_g.grad).all()


@SETTINGS
@given(batches(scale=1e4))
def test_extreme_log_probs_have_finite_gradients(batch):
    logp, old, adv, mask = batch
    mask = torch.ones_like(mask)
    for name in ("ppo_clip", "gspo"):
        for kw in ({}, {"dual_clip": 3.0}) if name == "ppo_clip" else ({},):
            x = logp.clone().requires_grad_()
            loss, met = POLICY_LOSSES.get(name)(PolicyLossInputs(x, old, adv, mask), **kw)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
            assert all(math.isfinite(v) for v in met.values())


@SETTINGS
@given(batches(), st.sampled_from(AGG_MODES))
def test_ppo_clip_on_policy_equals_reinforce_gradient(batch, agg):
    logp, _, adv, mask = batch
    kw = {"agg": agg, "l_const": 5.0}
    x = logp.clone().requires_grad_()
    loss, met = ppo_clip(PolicyLossInputs(x, logp.clone(), adv, mask), **kw)
    loss.backward()
    y = logp.clone().requires_grad_()
    reinforce(PolicyLossInputs(y, logp.clone(), adv, mask), **kw)[0].backward()
    torch.testing.assert_close(x.grad, y.grad)
    assert met["clip_frac"] == 0.0
    if agg == "token-mean" and mask.sum() > 0:
        torch.testing.assert_close(x.grad, -adv * mask / mask.sum())


@SETTINGS
@given(
    batches(),
    st.sampled_from(AGG_MODES),
    st.floats(0.0, 0.5),
    st.floats(0.0, 0.5),
)
def test_gspo_single_token_equals_ppo_clip(batch, agg, eps_low, eps_high):
    logp, old, adv, _ = batch
    logp, old, adv = logp[:, :1] * 0.3, old[:, :1] * 0.3, adv[:, :1]
    mask = torch.ones_like(logp)
    kw = {"agg": agg, "l_const": 5.0, "eps_low": eps_low, "eps_high": eps_high}
    x = logp.clone().requires_grad_()
    lx, mx = gspo(PolicyLossInputs(x, old, adv, mask), **kw)
    lx.backward()
    y = logp.clone().requires_grad_()
    ly, my = ppo_clip(PolicyLossInputs(y, old, adv, mask), **kw)
    ly.backward()
    torch.testing.assert_close(lx, ly)
    torch.testing.assert_close(x.grad, y.grad)
    assert mx["clip_frac"] == my["clip_frac"]


def test_policy_losses_use_global_normalisers():
    inp = _one_token([1.5, 1.1], [1.0, 1.0])
    full, _ = ppo_clip(inp)
    inp.num_tokens = 4
    half, _ = ppo_clip(inp)
    assert half.item() == pytest.approx(full.item() / 2)
    inp.num_seqs = 8
    seq, _ = reinforce(inp)
    assert seq.item() == pytest.approx(-(math.log(1.5) + math.log(1.1)) / 8)


# ---------------------------------------------------------------------------------------
# registry


def test_registry():
    assert {"ppo_clip", "gspo", "reinforce"} <= set(POLICY_LOSSES.names())
    assert set(AGG_MODES) <= set(AGGREGATIONS.names())
    assert POLICY_LOSSES.params("ppo_clip") == {
        "eps_low": 0.2,
        "eps_high": 0.2,
        "dual_clip": None,
        "agg": "token-mean",
        "l_const": None,
    }
    assert POLICY_LOSSES.params("gspo")["eps_high"] == 4e-4
    with pytest.raises(KeyError, match="valid names: .*gspo, .*ppo_clip"):
        POLICY_LOSSES.get("grpo")


def test_registry_copy_does_not_touch_global():
    reg = POLICY_LOSSES.copy()
    reg.register("constant_zero")(lambda inp: (torch.zeros(()), {}))
    assert "constant_zero" in reg and "constant_zero" not in POLICY_LOSSES
    with pytest.raises(ValueError, match="already registered"):
        reg.register("ppo_clip")(ppo_clip)
