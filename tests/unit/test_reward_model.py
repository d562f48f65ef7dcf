"""Reward-model loss and ensemble aggregations: worked values (preference.md §14, online-rl.md
§28.3), properties, registry."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmpo.core import ENSEMBLES, REWARD_MODEL_LOSSES
from lmpo.core.types import RewardModelInputs

F64 = torch.float64
HYP = settings(max_examples=50, deadline=None)


def t(*xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=F64)


def bt(inp: RewardModelInputs, **params) -> float:
    return float(REWARD_MODEL_LOSSES.get("bradley_terry")(inp, **params)[0])


# ------------------------------------------------------------------------------------------
# Bradley-Terry, §14.1: r_w = 1.2, r_l = 0.4


def test_bt_worked_values():
    assert bt(RewardModelInputs(t(1.2), t(0.4))) == pytest.approx(0.371101, abs=1e-6)  # sp(-0.8)
    with_margin = RewardModelInputs(t(1.2), t(0.4), margin=t(0.5))
    assert bt(with_margin) == pytest.approx(0.554355, abs=1e-6)  # softplus(-0.3)
    # + 0.01 * (1.2 + 0.4)^2 = + 0.0256
    assert bt(with_margin, center_coef=0.01) == pytest.approx(0.579955, abs=1e-6)


def test_bt_temperature_and_metrics():
    inp = RewardModelInputs(t(1.2, 0.0), t(0.4, 1.0))
    loss, m = REWARD_MODEL_LOSSES.get("bradley_terry")(inp, temperature=0.5)
    expected = 0.5 * (math.log1p(math.exp(-1.6)) + math.log1p(math.exp(2.0)))
    assert float(loss) == pytest.approx(expected, abs=1e-12)
    assert m["accuracy"] == 0.5
    assert m["margin"] == pytest.approx((0.8 - 1.0) / 2)
    with pytest.raises(ValueError, match="temperature"):
        REWARD_MODEL_LOSSES.get("bradley_terry")(inp, temperature=0.0)


def test_bt_gradient_sanity():
    # dL/dr_w = -sigma(-(r_w - r_l)) = -sigma(-0.8) = -0.310026
    rw = t(1.2).requires_grad_(True)
    loss, _ = REWARD_MODEL_LOSSES.get("bradley_terry")(RewardModelInputs(rw, t(0.4)))
    loss.backward()
    assert float(rw.grad) == pytest.approx(-1.0 / (1.0 + math.exp(0.8)), abs=1e-12)


@HYP
@given(
    rw=st.lists(st.sampled_from([-1e4, 1e4, 0.0, 2.5]), min_size=3, max_size=3),
    rl=st.lists(st.sampled_from([-1e4, 1e4, 0.0, -2.5]), min_size=3, max_size=3),
    c=st.sampled_from([0.0, 0.01]),
)
def test_bt_gradients_finite_for_extreme_rewards(rw, rl, c):
    a, b = t(*rw).requires_grad_(True), t(*rl).requires_grad_(True)
    loss, _ = REWARD_MODEL_LOSSES.get("bradley_terry")(RewardModelInputs(a, b), center_coef=c)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@HYP
@given(rw=st.floats(-20, 20), rl=st.floats(-20, 20), tau=st.floats(0.05, 5.0))
def test_bt_swap_identity(rw, rl, tau):
    # softplus(-x) - softplus(x) = -x with x = (r_w - r_l) / tau
    fwd = bt(RewardModelInputs(t(rw), t(rl)), temperature=tau)
    bwd = bt(RewardModelInputs(t(rl), t(rw)), temperature=tau)
    assert fwd - bwd == pytest.approx(-(rw - rl) / tau, abs=1e-9)


# ------------------------------------------------------------------------------------------
# ensembles


def agg(name: str, rewards: torch.Tensor, **params) -> list[float]:
    return ENSEMBLES.get(name)(rewards, **params).tolist()


def test_ensemble_worked_preference_md():
    # §14.2: R = (1.0, 0.5, -0.2) from K = 3 members for one sample -> shape [3, 1].
    # mean 0.433333; deviations (0.566667, 0.066667, -0.633333), sum of squares 0.726667:
    # unbiased var 0.363333, population var 0.242222.
    r = t(1.0, 0.5, -0.2).unsqueeze(1)
    assert agg("mean", r) == pytest.approx([0.433333], abs=1e-6)
    assert agg("worst_case", r) == pytest.approx([-0.2], abs=1e-6)
    assert agg("uncertainty_weighted", r) == pytest.approx([0.397], abs=1e-6)
    assert agg("uncertainty_weighted", r, lam=0.5, unbiased=False) == pytest.approx(
        [0.312222], abs=1e-6
    )


def test_ensemble_worked_online_rl_md():
    # online-rl.md §28.3: 3 RMs (rows) x 2 samples (columns).
    # sample 1: (1.0, 0.8, 1.2): mean 1.0, sum sq dev 0.08 -> var 0.04 / 0.026667
    # sample 2: (0.2, 0.9, -0.1): mean 1/3, sum sq dev 0.526667 -> var 0.263333 / 0.175556
    r = t([1.0, 0.2], [0.8, 0.9], [1.2, -0.1])
    assert agg("mean", r) == pytest.approx([1.0, 1.0 / 3.0], abs=1e-12)
    assert agg("worst_case", r) == pytest.approx([0.8, -0.1], abs=1e-12)
    uwo = agg("uncertainty_weighted", r, lam=0.1)
    assert uwo == pytest.approx([1.0 - 0.004, 1.0 / 3.0 - 0.1 * 0.79 / 3.0], abs=1e-9)
    assert uwo == pytest.approx([0.996, 0.307], abs=1e-3)  # the doc's rounded values
    pop = agg("uncertainty_weighted", r, lam=0.1, unbiased=False)
    assert pop == pytest.approx([1.0 - 0.008 / 3.0, 1.0 / 3.0 - 0.1 * 0.79 / 4.5], abs=1e-9)
    assert pop == pytest.approx([0.997, 0.316], abs=1e-3)


def test_uwo_unbiased_needs_two_members():
    with pytest.raises(ValueError, match="K >= 2"):
        ENSEMBLES.get("uncertainty_weighted")(t([1.0, 2.0]))
    assert agg("uncertainty_weighted", t([1.0, 2.0]), unbiased=False) == [1.0, 2.0]


members = st.integers(2, 6).flatmap(
    lambda k: st.integers(1, 5).flatmap(
        lambda n: st.lists(
            st.lists(st.floats(-100, 100), min_size=n, max_size=n), min_size=k, max_size=k
        )
    )
)


@HYP
@given(rows=members, lam=st.floats(0.0, 10.0), unbiased=st.booleans())
def test_ensemble_orderings(rows, lam, unbiased):
    r = t(*rows)
    m = ENSEMBLES.get("mean")(r)
    assert torch.all(m >= ENSEMBLES.get("worst_case")(r) - 1e-9)
    assert torch.all(
        ENSEMBLES.get("uncertainty_weighted")(r, lam=lam, unbiased=unbiased) <= m + 1e-9
    )
    assert m.shape == (r.shape[1],)


# ------------------------------------------------------------------------------------------
# registry


def test_registered_names():
    assert REWARD_MODEL_LOSSES.names() == ["bradley_terry"]
    assert set(ENSEMBLES.names()) >= {"mean", "worst_case", "uncertainty_weighted"}
    assert ENSEMBLES.params("uncertainty_weighted") == {"lam": 0.1, "unbiased": True}
    assert REWARD_MODEL_LOSSES.params("bradley_terry") == {"center_coef": 0.0, "temperature": 1.0}


@pytest.mark.parametrize("registry", [REWARD_MODEL_LOSSES, ENSEMBLES])
def test_unknown_name_lists_valid_names(registry):
    with pytest.raises(KeyError) as exc:
        registry.get("nope")
    for name in registry.names():
        assert name in str(exc.value)
