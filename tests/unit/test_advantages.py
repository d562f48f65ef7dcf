"""Advantage estimators: hand-worked values (online-rl.md), properties, registry."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmpo.core.advantages import dr_grpo, gae, grpo, reinforce, remax, rloo
from lmpo.core.registries import ADVANTAGES
from lmpo.core.types import AdvantageInputs

F64 = torch.float64
SETTINGS = settings(max_examples=50, deadline=None)


def _inp(rewards, groups=None, T=3, mask=None, **kw) -> AdvantageInputs:
    r = torch.tensor(rewards, dtype=F64)
    if mask is None:
        mask = torch.ones(len(rewards), T, dtype=F64)
    g = torch.zeros(len(rewards), dtype=torch.long) if groups is None else torch.tensor(groups)
    return AdvantageInputs(rewards=r, mask=mask, group_ids=g, **kw)


def _seq(out) -> torch.Tensor:
    """Per-sequence advantage (first token) of an outcome estimator."""
    return out.advantages[:, 0]


def _close(x, expected, tol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(x, dtype=F64), torch.tensor(expected, dtype=F64), atol=tol, rtol=0
    )


# ---------------------------------------------------------------------------------------
# worked values (online-rl.md §0.5, §1, §2, §4, §6, §7)


def test_grpo_worked_unbiased():
    s3 = math.sqrt(3) / 2
    _close(_seq(grpo(_inp([1, 0, 0, 1]), eps=0.0)), [s3, -s3, -s3, s3])
    # default eps=1e-6 is inside the std denominator
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    _close(_seq(grpo(_inp([1, 0, 0, 1]))), [a, -a, -a, a])
    _close(_seq(grpo(_inp([1, 0, 0, 0]), eps=0.0)), [1.5, -0.5, -0.5, -0.5])


def test_grpo_worked_population():
    _close(_seq(grpo(_inp([1, 0, 0, 1]), eps=0.0, unbiased=False)), [1, -1, -1, 1])


def test_grpo_trl_eps():
    # TRL (eps 1e-4) -> +-0.8659
    out = _seq(grpo(_inp([1, 0, 0, 1]), eps=1e-4))
    assert abs(float(out[0]) - 0.8659) < 1e-4


def test_grpo_scale_none_and_batch():
    r = [1, 0, 0, 1, 3, 3]
    g = [0, 0, 0, 0, 1, 1]
    _close(_seq(grpo(_inp(r, g), scale="none")), [0.5, -0.5, -0.5, 0.5, 0, 0])
    batch_std = torch.tensor(r, dtype=F64).std().item()
    e = 0.5 / batch_std
    _close(_seq(grpo(_inp(r, g), scale="batch", eps=0.0)), [e, -e, -e, e, 0, 0])
    with pytest.raises(ValueError, match="scale"):
        grpo(_inp(r, g), scale="global")


def test_grpo_singleton_and_constant_group_are_zero():
    out = grpo(_inp([5.0, 0.3, 0.3, 0.3, 1.0, 0.0], [9, 2, 2, 2, 4, 4]))
    _close(_seq(out)[:4], [0, 0, 0, 0], tol=0)
    assert out.metrics["zero_std_frac"] == pytest.approx(2 / 3)
    assert out.metrics["num_groups"] == 3


def test_group_estimators_need_group_ids():
    inp = AdvantageInputs(rewards=torch.ones(2), mask=torch.ones(2, 2))
    for fn in (grpo, dr_grpo, rloo):
        with pytest.raises(ValueError, match="group_ids"):
            fn(inp)


def test_dr_grpo_worked():
    _close(_seq(dr_grpo(_inp([1, 0, 0, 1]))), [0.5, -0.5, -0.5, 0.5])
    _close(_seq(dr_grpo(_inp([1, 0, 0, 0]))), [0.75, -0.25, -0.25, -0.25])


def test_rloo_worked():
    _close(_seq(rloo(_inp([1, 0, 0, 1]))), [2 / 3, -2 / 3, -2 / 3, 2 / 3])
    _close(_seq(rloo(_inp([1, 0, 0, 0]))), [1, -1 / 3, -1 / 3, -1 / 3])
    _close(_seq(rloo(_inp([1.0, 2.0], [0, 1]))), [0, 0], tol=0)  # singletons


def test_reinforce_worked():
    _close(_seq(reinforce(_inp([1, 0, 0, 0]))), [0.75, -0.25, -0.25, -0.25])
    _close(_seq(reinforce(_inp([1, 0, 0, 0]), baseline="none")), [1, 0, 0, 0])
    with pytest.raises(ValueError, match="baseline"):
        reinforce(_inp([1.0]), baseline="ema")


def test_remax_worked():
    inp = _inp([0.7, 0.2], baseline=torch.tensor([0.5, 0.5], dtype=F64))
    _close(_seq(remax(inp)), [0.2, -0.3])
    with pytest.raises(ValueError, match="baseline"):
        remax(_inp([0.7, 0.2]))


def test_outcome_advantages_broadcast_and_zero_on_mask():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=F64)
    out = dr_grpo(_inp([1.0, 0.0], mask=mask))
    _close(out.advantages, [[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0]], tol=0)
    assert out.returns is None


def test_gae_worked():
    inp = AdvantageInputs(
        rewards=torch.tensor([1.0], dtype=F64),
        mask=torch.ones(1, 3, dtype=F64),
        values=torch.tensor([[0.5, 0.6, 0.8]], dtype=F64),
    )
    out = gae(inp, gamma=1.0, lam=0.95, whiten=False)
    _close(out.advantages, [[0.4705, 0.39, 0.2]])
    _close(out.returns, [[0.9705, 0.99, 1.0]])
    # explicit token rewards give the same
    inp.token_rewards = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)
    out2 = gae(inp, gamma=1.0, lam=0.95, whiten=False)
    _close(out2.advantages, [[0.4705, 0.39, 0.2]])


def test_gae_whiten_and_returns_unwhitened():
    inp = AdvantageInputs(
        rewards=torch.tensor([1.0], dtype=F64),
        mask=torch.ones(1, 3, dtype=F64),
        values=torch.tensor([[0.5, 0.6, 0.8]], dtype=F64),
    )
    out = gae(inp)
    raw = torch.tensor([0.4705, 0.39, 0.2], dtype=F64)
    expected = (raw - raw.mean()) / torch.sqrt(raw.var(unbiased=True) + 1e-8)
    _close(out.advantages[0], expected.tolist())
    _close(out.returns, [[0.9705, 0.99, 1.0]])


def test_gae_mask_aware_padding_and_holes():
    # padded row: the last valid token gets the reward, V after it is 0
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=F64)
    values = torch.tensor([[0.5, 0.6, 0.8, 9.0, 9.0]], dtype=F64)
    inp = AdvantageInputs(rewards=torch.tensor([1.0], dtype=F64), mask=mask, values=values)
    out = gae(inp, whiten=False)
    _close(out.advantages, [[0.4705, 0.39, 0.2, 0, 0]])
    _close(out.returns, [[0.9705, 0.99, 1.0, 0, 0]])
    # a hole (tool tokens) is skipped: same result as removing it
    mask_h = torch.tensor([[1, 0, 1, 1]], dtype=F64)
    values_h = torch.tensor([[0.5, 7.0, 0.6, 0.8]], dtype=F64)
    inp_h = AdvantageInputs(rewards=torch.tensor([1.0], dtype=F64), mask=mask_h, values=values_h)
    out_h = gae(inp_h, whiten=False)
    _close(out_h.advantages, [[0.4705, 0.0, 0.39, 0.2]])


def test_gae_needs_values():
    with pytest.raises(ValueError, match="values"):
        gae(AdvantageInputs(rewards=torch.ones(1), mask=torch.ones(1, 2)))


# ---------------------------------------------------------------------------------------
# properties

reward_value = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@st.composite
def grouped_rewards(draw, min_group=1):
    sizes = draw(st.lists(st.integers(min_group, 5), min_size=1, max_size=5))
    ids = [g for g, n in enumerate(sizes) for _ in range(n)]
    rewards = draw(st.lists(reward_value, min_size=len(ids), max_size=len(ids)))
    return rewards, ids


@SETTINGS
@given(grouped_rewards())
def test_grpo_groups_have_zero_mean(data):
    rewards, ids = data
    adv = _seq(grpo(_inp(rewards, ids)))
    g = torch.tensor(ids)
    for k in set(ids):
        assert abs(float(adv[g == k].mean())) < 1e-9


@SETTINGS
@given(grouped_rewards(), st.floats(-100, 100))
def test_shift_invariance(data, c):
    rewards, ids = data
    # a group that is constant up to float noise may flip between exactly-0 and noise
    assume(_spread_ok(rewards, ids))
    shifted = [r + c for r in rewards]
    for fn in (grpo, dr_grpo, rloo):
        a = _seq(fn(_inp(rewards, ids)))
        b = _seq(fn(_inp(shifted, ids)))
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def _spread_ok(rewards, ids, tol=1e-3):
    r = torch.tensor(rewards, dtype=F64)
    g = torch.tensor(ids)
    return all(
        (r[g == k].max() - r[g == k].min() > tol) or (r[g == k].max() == r[g == k].min())
        for k in set(ids)
    )


@SETTINGS
@given(grouped_rewards(), st.floats(1e-3, 1e3))
def test_grpo_scale_invariance(data, c):
    rewards, ids = data
    assume(_spread_ok(rewards, ids))
    scaled = [r * c for r in rewards]
    for scale in ("group", "batch"):
        a = _seq(grpo(_inp(rewards, ids), eps=0.0, scale=scale))
        b = _seq(grpo(_inp(scaled, ids), eps=0.0, scale=scale))
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@SETTINGS
@given(grouped_rewards(), st.randoms(use_true_random=False), st.data())
def test_group_permutation_equivariance(data, rnd, draw):
    rewards, ids = data
    assume(_spread_ok(rewards, ids))  # near-constant groups amplify summation-order noise
    n = len(rewards)
    perm = list(range(n))
    rnd.shuffle(perm)
    labels = draw.draw(
        st.lists(
            st.integers(-1000, 1000), min_size=len(set(ids)), max_size=len(set(ids)), unique=True
        )
    )
    new_ids = [labels[ids[p]] for p in perm]
    new_rewards = [rewards[p] for p in perm]
    for fn in (grpo, dr_grpo, rloo):
        ref = _seq(fn(_inp(rewards, ids)))[perm]
        got = _seq(fn(_inp(new_rewards, new_ids)))
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)


def test_group_vectorised_matches_loop():
    torch.manual_seed(0)
    ids = torch.tensor([3, 1, 3, 7, 1, 7, 7, 3, 0])
    r = torch.randn(9, dtype=F64)
    out = _seq(grpo(AdvantageInputs(rewards=r, mask=torch.ones(9, 2, dtype=F64), group_ids=ids)))
    for k in ids.unique():
        sel = ids == k
        x = r[sel]
        exp = (x - x.mean()) / (x.std() + 1e-6) if x.numel() > 1 else torch.zeros_like(x)
        torch.testing.assert_close(out[sel], exp)


# ---------------------------------------------------------------------------------------
# registry


def test_registry_names_and_unknown():
    for name in ("grpo", "dr_grpo", "rloo", "reinforce", "remax", "gae"):
        assert name in ADVANTAGES
    with pytest.raises(KeyError, match="valid names: .*grpo"):
        ADVANTAGES.get("grpo_typo")


def test_registry_params_and_copy():
    assert ADVANTAGES.params("grpo") == {"eps": 1e-6, "unbiased": True, "scale": "group"}
    assert ADVANTAGES.params("gae") == {"gamma": 1.0, "lam": 0.95, "whiten": True}
    with pytest.raises(ValueError, match="allowed"):
        ADVANTAGES.check_params("grpo", {"epsilon": 0.1})
    reg = ADVANTAGES.copy()
    reg.register("test_only")(lambda inp: None)
    assert "test_only" in reg and "test_only" not in ADVANTAGES
