"""Preference losses: worked values of algorithms/preference.md §18, properties, registry.

Worked inputs (preference.md §1.2-§1.3):
  E1: logp_w=-10 (T_w=5), logp_l=-12 (T_l=8), ref_w=-11, ref_l=-11.5 -> u_w=1, u_l=-0.5, Delta=1.5.
  E2: E1 plus pair (logp_w=-20, logp_l=-17.6, ref_w=-15, ref_l=-18).
  K1: four unpaired examples (§4 table).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmpo.core import PAIRED_LOSSES, UNPAIRED_LOSSES
from lmpo.core.preference import RunningMean, udm_weight
from lmpo.core.types import PairedInputs, UnpairedInputs

F64 = torch.float64
HYP = settings(max_examples=50, deadline=None)
PAIRED_NAMES = ["dpo", "cdpo", "robust_dpo", "ipo", "hinge", "simpo", "orpo"]
UNPAIRED_NAMES = ["kto", "bco"]


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=F64)


def paired(w, rej, rw=None, rl=None, tw=None, tl=None, grad=False) -> PairedInputs:
    cw, cl = t(*w), t(*rej)
    if grad:
        cw.requires_grad_(True)
        cl.requires_grad_(True)
    return PairedInputs(
        chosen_logp=cw,
        rejected_logp=cl,
        ref_chosen_logp=None if rw is None else t(*rw),
        ref_rejected_logp=None if rl is None else t(*rl),
        chosen_len=None if tw is None else t(*tw),
        rejected_len=None if tl is None else t(*tl),
    )


def e1(grad: bool = False) -> PairedInputs:
    return paired([-10.0], [-12.0], [-11.0], [-11.5], [5], [8], grad=grad)


def e2() -> PairedInputs:
    return paired([-10.0, -20.0], [-12.0, -17.6], [-11.0, -15.0], [-11.5, -18.0], [5, 5], [8, 8])


def k1(**kw) -> UnpairedInputs:
    # §4 table: labels D, D, U, U; u = 1.0, 0.5, -0.5, 0.6; KL log-ratios 0.4, 0.1, 0.3, -0.2.
    return UnpairedInputs(
        logp=t(-10.0, -8.0, -12.0, -9.0),
        ref_logp=t(-11.0, -8.5, -11.5, -9.6),
        desirable=torch.tensor([True, True, False, False]),
        kl_logp=t(-15.0, -14.0, -13.0, -16.0),
        kl_ref_logp=t(-15.4, -14.1, -13.3, -15.8),
        **kw,
    )


def loss_of(name: str, inp, **params) -> float:
    reg = PAIRED_LOSSES if name in PAIRED_LOSSES else UNPAIRED_LOSSES
    return float(reg.get(name)(inp, **params)[0])


# ------------------------------------------------------------------------------------------
# (a) worked values, float64, 1e-6


@pytest.mark.parametrize(
    "name, params, inp, expected",
    [
        ("dpo", {}, e1, 0.620957),
        ("dpo", {}, e2, 0.810060),
        ("cdpo", {"label_smoothing": 0.1}, e1, 0.635957),
        ("cdpo", {"label_smoothing": 0.2}, e1, 0.650957),
        ("robust_dpo", {"flip_rate": 0.1}, e1, 0.602207),
        ("ipo", {}, e1, 22.443906),  # MEAN form: (1/5 + 0.5/8 - 5)^2 = (0.2625 - 5)^2
        ("ipo", {"form": "sum"}, e1, 12.25),  # (1.5 - 5)^2
        ("hinge", {}, e1, 0.85),  # 1 - 0.15
    ],
)
def test_worked_paired(name, params, inp, expected):
    assert loss_of(name, inp(), **params) == pytest.approx(expected, abs=1e-6)


def test_dpo_gradient_sanity():
    # dL/dlogp_w = -beta * sigma(-beta * Delta) = -0.1 * sigma(-0.15) = -0.046257
    inp = e1(grad=True)
    loss, _ = PAIRED_LOSSES.get("dpo")(inp)
    loss.backward()
    assert float(inp.chosen_logp.grad) == pytest.approx(-0.046257, abs=1e-6)
    assert float(inp.rejected_logp.grad) == pytest.approx(0.046257, abs=1e-6)


def test_dpo_metrics_e1():
    _, m = PAIRED_LOSSES.get("dpo")(e1())
    assert m["rewards/chosen"] == pytest.approx(0.1)
    assert m["rewards/rejected"] == pytest.approx(-0.05)
    assert m["rewards/margin"] == pytest.approx(0.15)
    assert m["rewards/accuracy"] == 1.0
    assert m["logps/chosen"] == -10.0 and m["logps/rejected"] == -12.0
    _, m2 = PAIRED_LOSSES.get("dpo")(e2())  # pair 2: u_w=-5, u_l=0.4 -> wrong order
    assert m2["rewards/accuracy"] == 0.5


# SimPO §6.1: A = E1 (avg_w=-2, avg_l=-1.5); B: avg_w=-4/5=-0.8, avg_l=-14/10=-1.4.
SIMPO_A = paired([-10.0], [-12.0], tw=[5], tl=[8])
SIMPO_B = paired([-4.0], [-14.0], tw=[5], tl=[10])


@pytest.mark.parametrize(
    "inp, params, expected",
    [
        (SIMPO_A, {}, 2.126928),  # -logsigma(2*(-0.5) - 1) = softplus(2)
        (SIMPO_B, {}, 0.598139),  # -logsigma(2*0.6 - 1) = softplus(-0.2)
        (SIMPO_A, {"beta": 2.5, "gamma_beta_ratio": 0.55}, 2.694936),
        (SIMPO_B, {"beta": 2.5, "gamma_beta_ratio": 0.55}, 0.632599),
    ],
)
def test_worked_simpo(inp, params, expected):
    assert loss_of("simpo", inp, **params) == pytest.approx(expected, abs=1e-6)


def test_simpo_label_smoothing_is_cdpo_mixture():
    # z = 2*0.6 - 1 = 0.2: 0.9*softplus(-0.2) + 0.1*softplus(0.2)
    expected = 0.9 * math.log1p(math.exp(-0.2)) + 0.1 * math.log1p(math.exp(0.2))
    assert loss_of("simpo", SIMPO_B, label_smoothing=0.1) == pytest.approx(expected, abs=1e-12)


def test_worked_orpo_e1():
    # Hand computation on E1 (ref ignored): avg_w = -10/5 = -2, avg_l = -12/8 = -1.5.
    #   log odds_w = -2 - log(1 - e^-2)     = -2 - log(0.864665)   = -1.854587
    #   log odds_l = -1.5 - log(1 - e^-1.5) = -1.5 - log(0.776870) = -1.247518
    #   difference = -0.607069;  -logsigma(-0.607069) = log(1 + e^0.607069) = 1.042058
    #   NLL = 10 / 5 = 2.0;  L = 2.0 + 0.1 * 1.042058 = 2.104206
    loss, m = PAIRED_LOSSES.get("orpo")(e1())
    assert float(loss) == pytest.approx(2.104206, abs=1e-6)
    assert m["nll"] == pytest.approx(2.0)
    assert m["log_odds_chosen"] == pytest.approx(-0.607069, abs=1e-6)
    assert m["log_odds_ratio"] == pytest.approx(-1.042058, abs=1e-6)
    assert m["rewards/chosen"] == pytest.approx(-0.2) and m["rewards/rejected"] == pytest.approx(
        -0.15
    )
    assert m["rewards/accuracy"] == 0.0


def test_orpo_nll_is_token_mean_over_batch():
    # NLL = -(sum of chosen logp) / (sum of chosen tokens) = 30 / 15 = 2, not mean(10/5, 20/10).
    inp = paired([-10.0, -20.0], [-12.0, -12.0], tw=[5, 10], tl=[8, 8])
    _, m = PAIRED_LOSSES.get("orpo")(inp)
    assert m["nll"] == pytest.approx(30.0 / 15.0)


def test_orpo_zero_logp_is_finite():
    inp = paired([0.0], [-3.0], tw=[4], tl=[3], grad=True)
    loss, _ = PAIRED_LOSSES.get("orpo")(inp)
    loss.backward()
    assert torch.isfinite(loss)
    assert (
        torch.isfinite(inp.chosen_logp.grad).all() and torch.isfinite(inp.rejected_logp.grad).all()
    )


def test_worked_kto():
    # z0 = max(0, mean(0.4, 0.1, 0.3, -0.2)) = 0.15
    loss, m = UNPAIRED_LOSSES.get("kto")(k1())
    assert m["kl"] == pytest.approx(0.15, abs=1e-6)
    assert float(loss) == pytest.approx(0.491254, abs=1e-6)
    assert loss_of("kto", k1(), lambda_u=1.5) == pytest.approx(0.615630, abs=1e-6)


def test_kto_z0_clamped_after_averaging():
    inp = k1()
    inp.kl_logp = inp.kl_ref_logp - t(1.0, -0.1, -0.1, -0.1)  # mean log-ratio -0.175 < 0
    _, m = UNPAIRED_LOSSES.get("kto")(inp)
    assert m["kl"] == 0.0


def test_worked_bco_running_mean_and_udm():
    beta = 0.1
    inp = k1()
    running = RunningMean()
    rewards = beta * (inp.logp - inp.ref_logp)  # [0.1, 0.05, -0.05, 0.06]
    running.update(rewards)
    assert running.mean == pytest.approx(0.04, abs=1e-6)
    inp.shift = running.mean
    loss, m = UNPAIRED_LOSSES.get("bco")(inp, beta=beta)
    assert float(loss) == pytest.approx(0.676028, abs=1e-6)
    assert m["rewards/mean_batch"] == pytest.approx(0.04, abs=1e-12)
    assert m["delta"] == pytest.approx(0.04, abs=1e-12)

    # UDM: p=(0.8, 0.05) on the undesirable examples 3, 4 -> w = 4.0, 0.5 (clamped); same delta.
    w = udm_weight(t(0.8, 0.8, 0.8, 0.05))
    w = torch.where(inp.desirable, torch.ones_like(w), w)
    inp_udm = k1(weights=w, shift=running.mean)
    assert loss_of("bco", inp_udm) == pytest.approx(1.074998, abs=1e-6)

    # A later batch with rewards [0.3, -0.1] -> (4 * 0.04 + 0.2) / 6 = 0.06.
    running.update(t(0.3, -0.1))
    assert running.mean == pytest.approx(0.06, abs=1e-6)


def test_udm_weight_values():
    w = udm_weight(t(0.8, 0.05, 0.95))
    assert w.tolist() == pytest.approx([4.0, 0.5, 10.0], abs=1e-6)


def test_bco_weights_only_apply_to_undesirable():
    a = loss_of("bco", k1(shift=0.04))
    b = loss_of("bco", k1(shift=0.04, weights=t(7.0, 9.0, 1.0, 1.0)))
    assert a == pytest.approx(b, abs=1e-12)


def test_running_mean_state_roundtrip():
    r = RunningMean()
    r.update(t(1.0, 2.0, 3.0))
    r.update(torch.empty(0, dtype=F64))  # no-op
    s = r.state_dict()
    r2 = RunningMean()
    r2.load_state_dict(s)
    r.update(t(4.0))
    r2.update(t(4.0))
    assert r2.state_dict() == r.state_dict()
    assert r.mean == pytest.approx(2.5)


# ------------------------------------------------------------------------------------------
# validation errors


@pytest.mark.parametrize("name", ["dpo", "cdpo", "robust_dpo", "ipo", "hinge"])
def test_missing_reference_raises(name):
    with pytest.raises(ValueError, match="reference"):
        PAIRED_LOSSES.get(name)(paired([-1.0], [-2.0], tw=[1], tl=[1]))


@pytest.mark.parametrize("name, params", [("ipo", {}), ("simpo", {}), ("orpo", {})])
def test_missing_lengths_raises(name, params):
    with pytest.raises(ValueError, match="chosen_len"):
        PAIRED_LOSSES.get(name)(paired([-1.0], [-2.0], [-1.0], [-2.0]), **params)


def test_ipo_sum_form_needs_no_lengths_and_bad_form_raises():
    inp = paired([-10.0], [-12.0], [-11.0], [-11.5])
    assert loss_of("ipo", inp, form="sum") == pytest.approx(12.25)
    with pytest.raises(ValueError, match="form"):
        PAIRED_LOSSES.get("ipo")(e1(), form="SUM")


@pytest.mark.parametrize("flip_rate", [-0.1, 0.5, 0.7])
def test_robust_dpo_flip_rate_range(flip_rate):
    with pytest.raises(ValueError, match="flip_rate"):
        PAIRED_LOSSES.get("robust_dpo")(e1(), flip_rate=flip_rate)


def test_nonpositive_length_raises():
    with pytest.raises(ValueError, match="> 0"):
        PAIRED_LOSSES.get("simpo")(paired([-1.0], [-2.0], tw=[0], tl=[3]))


def test_kto_requires_kl_inputs():
    inp = k1()
    inp.kl_logp = None
    with pytest.raises(ValueError, match="kl_logp"):
        UNPAIRED_LOSSES.get("kto")(inp)


# ------------------------------------------------------------------------------------------
# (b) properties

logp_st = st.floats(-60.0, 0.0, allow_nan=False)
beta_st = st.floats(0.01, 5.0)
shift_st = st.floats(-30.0, 30.0)
len_st = st.integers(1, 50)


@st.composite
def paired_batches(draw, n_max: int = 4):
    n = draw(st.integers(1, n_max))
    vals = [draw(st.lists(logp_st, min_size=n, max_size=n)) for _ in range(4)]
    lens = [draw(st.lists(len_st, min_size=n, max_size=n)) for _ in range(2)]
    return paired(*vals, *lens)


def _shift(inp: PairedInputs, c_w, c_l) -> PairedInputs:
    return PairedInputs(
        inp.chosen_logp + c_w,
        inp.rejected_logp + c_l,
        inp.ref_chosen_logp,
        inp.ref_rejected_logp,
        inp.chosen_len,
        inp.rejected_len,
    )


@HYP
@given(inp=paired_batches(), beta=beta_st)
def test_dpo_is_log2_when_policy_equals_reference(inp, beta):
    inp.ref_chosen_logp, inp.ref_rejected_logp = inp.chosen_logp, inp.rejected_logp
    assert loss_of("dpo", inp, beta=beta) == pytest.approx(math.log(2.0), abs=1e-12)


@HYP
@given(
    inp=paired_batches(),
    c=shift_st,
    case=st.sampled_from(
        [
            ("dpo", {}),
            ("cdpo", {}),
            ("robust_dpo", {}),
            ("hinge", {}),
            ("ipo", {"form": "sum"}),
        ]
    ),
)
def test_invariant_to_common_log_ratio_shift(inp, c, case):
    # These losses depend on u_w - u_l only (SUM form).
    name, params = case
    assert loss_of(name, _shift(inp, c, c), **params) == pytest.approx(
        loss_of(name, inp, **params), abs=1e-9
    )


@HYP
@given(inp=paired_batches(), c=st.floats(-2.0, 2.0), name=st.sampled_from(["ipo", "simpo"]))
def test_mean_forms_invariant_to_common_per_token_shift(inp, c, name):
    # MEAN forms depend on u_w/T_w - u_l/T_l: adding c per token (c*T to each SUM) cancels;
    # adding the same constant to both SUMs would not (unless T_w = T_l).
    shifted = _shift(inp, c * inp.chosen_len, c * inp.rejected_len)
    assert loss_of(name, shifted) == pytest.approx(loss_of(name, inp), abs=1e-9)


@HYP
@given(inp=paired_batches(n_max=1), beta=beta_st)
def test_dpo_swap(inp, beta):
    swapped = PairedInputs(
        inp.rejected_logp, inp.chosen_logp, inp.ref_rejected_logp, inp.ref_chosen_logp
    )
    delta = float(
        (inp.chosen_logp - inp.ref_chosen_logp) - (inp.rejected_logp - inp.ref_rejected_logp)
    )
    fwd, bwd = loss_of("dpo", inp, beta=beta), loss_of("dpo", swapped, beta=beta)
    assert bwd == pytest.approx(math.log1p(math.exp(beta * delta)), rel=1e-9, abs=1e-9)
    assert fwd - bwd == pytest.approx(-beta * delta, rel=1e-9, abs=1e-9)


@HYP
@given(inp=paired_batches(), beta=beta_st)
def test_zero_noise_variants_equal_dpo(inp, beta):
    ref = loss_of("dpo", inp, beta=beta)
    assert loss_of("robust_dpo", inp, beta=beta, flip_rate=0.0) == pytest.approx(ref, abs=1e-12)
    assert loss_of("cdpo", inp, beta=beta, label_smoothing=0.0) == pytest.approx(ref, abs=1e-12)


@HYP
@given(inp=paired_batches(), eps=st.floats(0.0, 0.5))
def test_cdpo_is_dpo_plus_eps_beta_delta(inp, eps):
    delta = (inp.chosen_logp - inp.ref_chosen_logp) - (inp.rejected_logp - inp.ref_rejected_logp)
    expected = loss_of("dpo", inp) + eps * 0.1 * float(delta.mean())
    assert loss_of("cdpo", inp, label_smoothing=eps) == pytest.approx(expected, abs=1e-9)


EXTREME = st.sampled_from([-1e4, 1e4, -1e-9, 0.0, -3.0])


@HYP
@given(
    vals=st.lists(EXTREME, min_size=8, max_size=8),
    name=st.sampled_from(PAIRED_NAMES),
)
def test_paired_gradients_finite_for_extreme_logps(vals, name):
    inp = paired(vals[0:2], vals[2:4], vals[4:6], vals[6:8], [3, 7], [1, 9], grad=True)
    loss, metrics = PAIRED_LOSSES.get(name)(inp)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(inp.chosen_logp.grad).all()
    assert torch.isfinite(inp.rejected_logp.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


@HYP
@given(
    vals=st.lists(EXTREME, min_size=12, max_size=12),
    labels=st.lists(st.booleans(), min_size=3, max_size=3),
    name=st.sampled_from(UNPAIRED_NAMES),
)
def test_unpaired_gradients_finite_for_extreme_logps(vals, labels, name):
    logp = t(*vals[0:3]).requires_grad_(True)
    inp = UnpairedInputs(
        logp=logp,
        ref_logp=t(*vals[3:6]),
        desirable=torch.tensor(labels),
        kl_logp=t(*vals[6:9]),
        kl_ref_logp=t(*vals[9:12]),
        shift=0.5,
    )
    loss, metrics = UNPAIRED_LOSSES.get(name)(inp)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


def test_kto_no_gradient_through_z0():
    inp = k1()
    inp.logp.requires_grad_(True)
    inp.kl_logp.requires_grad_(True)
    loss, _ = UNPAIRED_LOSSES.get("kto")(inp)
    loss.backward()
    assert inp.kl_logp.grad is None or torch.all(inp.kl_logp.grad == 0)
    assert inp.logp.grad is not None and torch.any(inp.logp.grad != 0)


@HYP
@given(
    logp=st.lists(logp_st, min_size=1, max_size=5),
    desirable=st.booleans(),
    name=st.sampled_from(UNPAIRED_NAMES),
)
def test_one_sided_batches_are_finite(logp, desirable, name):
    n = len(logp)
    inp = UnpairedInputs(
        logp=t(*logp),
        ref_logp=t(*logp) - 1.0,
        desirable=torch.full((n,), desirable),
        kl_logp=t(*logp),
        kl_ref_logp=t(*logp) + 0.5,
        shift=0.1,
    )
    loss, metrics = UNPAIRED_LOSSES.get(name)(inp)
    assert torch.isfinite(loss)
    side = "chosen" if desirable else "rejected"
    other = "rejected" if desirable else "chosen"
    assert f"rewards/{side}" in metrics and f"rewards/{other}" not in metrics


@HYP
@given(chunks=st.lists(st.lists(st.floats(-5, 5), min_size=0, max_size=6), min_size=1, max_size=5))
def test_running_mean_is_cumulative_mean(chunks):
    r = RunningMean()
    for c in chunks:
        r.update(t(*c) if c else torch.empty(0, dtype=F64))
    flat = [x for c in chunks for x in c]
    expected = sum(flat) / len(flat) if flat else 0.0
    assert r.mean == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------------------------------------
# (c) registry


def test_registered_names():
    assert set(PAIRED_NAMES) <= set(PAIRED_LOSSES.names())
    assert set(UNPAIRED_NAMES) <= set(UNPAIRED_LOSSES.names())


@pytest.mark.parametrize("registry", [PAIRED_LOSSES, UNPAIRED_LOSSES])
def test_unknown_name_lists_valid_names(registry):
    with pytest.raises(KeyError) as exc:
        registry.get("no_such_loss")
    for name in registry.names():
        assert name in str(exc.value)


def test_defaults_exposed_and_typo_rejected():
    assert PAIRED_LOSSES.params("dpo") == {"beta": 0.1}
    assert PAIRED_LOSSES.params("simpo") == {
        "beta": 2.0,
        "gamma_beta_ratio": 0.5,
        "label_smoothing": 0.0,
    }
    assert PAIRED_LOSSES.params("ipo") == {"beta": 0.1, "form": "mean"}
    assert UNPAIRED_LOSSES.params("kto") == {"beta": 0.1, "lambda_d": 1.0, "lambda_u": 1.0}
    with pytest.raises(ValueError, match="betta"):
        PAIRED_LOSSES.check_params("dpo", {"betta": 0.2})


def test_registry_copy_isolated():
    local = PAIRED_LOSSES.copy()
    local.register("my_loss")(lambda inp: None)
    assert "my_loss" in local and "my_loss" not in PAIRED_LOSSES
