"""KL estimators and KL controllers: worked values (online-rl.md §0.3, §7), properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmpo.core.kl import AdaptiveKLController, FixedKLController, k1, k2, k3
from lmpo.core.registries import KL_ESTIMATORS

F64 = torch.float64
SETTINGS = settings(max_examples=50, deadline=None)


def _t(x):
    return torch.tensor(x, dtype=F64)


def test_worked_example():
    # log pi_theta = -1.0, log pi_ref = -1.5
    logp, ref = _t([[-1.0]]), _t([[-1.5]])
    assert float(k1(logp, ref)) == pytest.approx(0.5, abs=1e-6)
    assert float(k2(logp, ref)) == pytest.approx(0.125, abs=1e-6)
    assert float(k3(logp, ref)) == pytest.approx(math.exp(-0.5) + 0.5 - 1, abs=1e-12)
    assert float(k3(logp, ref)) == pytest.approx(0.1065306597, abs=1e-6)


def test_shapes_and_zero_at_equal():
    logp = torch.randn(3, 5, dtype=F64)
    for fn in (k1, k2, k3):
        out = fn(logp, logp.clone())
        assert out.shape == (3, 5)
        assert torch.all(out == 0)
    with pytest.raises(ValueError, match="shape"):
        k1(torch.zeros(2, 3), torch.zeros(2, 4))


def test_clamps():
    logp = _t([[0.0, 0.0]])
    ref = _t([[-100.0, 100.0]])
    torch.testing.assert_close(k1(logp, ref), _t([[20.0, -20.0]]))
    torch.testing.assert_close(k2(logp, ref), _t([[200.0, 200.0]]))
    # k3: delta=-20 -> e^-20 + 19 -> clamped to 10; delta=20 -> huge -> 10
    torch.testing.assert_close(k3(logp, ref), _t([[10.0, 10.0]]))


def test_gradients_worked():
    # d k1/d logp = 1; d k2/d logp = -delta; d k3/d logp = 1 - exp(delta)
    for fn, expected in ((k1, 1.0), (k2, 0.5), (k3, 1 - math.exp(-0.5))):
        logp = _t([[-1.0]]).requires_grad_()
        fn(logp, _t([[-1.5]])).sum().backward()
        assert float(logp.grad) == pytest.approx(expected, abs=1e-9)


logps = st.floats(-1e4, 0.0, allow_nan=False)


@SETTINGS
@given(st.lists(st.tuples(logps, logps), min_size=1, max_size=8))
def test_k3_nonnegative_and_finite_grads(pairs):
    logp = _t([[a for a, _ in pairs]]).requires_grad_()
    ref = _t([[b for _, b in pairs]])
    assert torch.all(k3(logp, ref) >= 0)
    assert torch.all(k2(logp, ref) >= 0)
    for fn in (k1, k2, k3):
        logp.grad = None
        out = fn(logp, ref)
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert torch.isfinite(logp.grad).all()


def test_extreme_differences_finite():
    logp = _t([[-1e4, 0.0, -3.0]]).requires_grad_()
    ref = _t([[0.0, -1e4, -3.0]])
    for fn in (k1, k2, k3):
        logp.grad = None
        fn(logp, ref).sum().backward()
        assert torch.isfinite(logp.grad).all()


# ---------------------------------------------------------------------------------------
# controllers


def test_adaptive_controller_one_update_by_hand():
    c = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    # kl 9 -> e = clip(9/6 - 1 = 0.5) = 0.2; mult = 1 + 0.2 * 100 / 10000 = 1.002
    c.update(9.0, n_steps=100)
    assert c.value == pytest.approx(0.1002, abs=1e-12)
    # kl 5.4 -> e = -0.1; mult = 1 - 0.1 * 256 / 10000 = 0.99744
    c.update(5.4, n_steps=256)
    assert c.value == pytest.approx(0.1002 * 0.99744, abs=1e-12)
    # far below target -> e clipped to -0.2
    c2 = AdaptiveKLController(0.05, target=0.1, horizon=1000)
    c2.update(0.0, n_steps=10)
    assert c2.value == pytest.approx(0.05 * (1 - 0.2 * 10 / 1000), abs=1e-12)


def test_controller_state_dict_roundtrip():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(9.0, 100)
    state = c.state_dict()
    resumed = AdaptiveKLController(0.5, target=6.0, horizon=10000)
    resumed.load_state_dict(state)
    assert resumed.value == c.value
    c.update(7.0, 64)
    resumed.update(7.0, 64)
    assert resumed.value == c.value

    f = FixedKLController(0.04)
    f.update(123.0, 10)
    assert f.value == 0.04
    g = FixedKLController(0.0)
    g.load_state_dict(f.state_dict())
    assert g.value == 0.04


def test_controller_validation():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, target=1.0, horizon=0)
    with pytest.raises(ValueError, match="init_kl_coef"):
        FixedKLController(-1.0)


def test_registry():
    assert {"k1", "k2", "k3"} <= set(KL_ESTIMATORS.names())
    assert KL_ESTIMATORS.get("k3") is k3
    with pytest.raises(KeyError, match="valid names: .*k1, k2, k3"):
        KL_ESTIMATORS.get("low_var_kl")
