"""The run config is a union on `kind`; preference configs check the loss and its params when built."""

from __future__ import annotations

import pytest

from lmpo.config import (
    ConfigError,
    Method,
    PreferenceConfig,
    RunConfig,
    inspect_loss,
    validate,
)
from lmpo.core import PAIRED_LOSSES, UNPAIRED_LOSSES

BASE = {"kind": "preference", "data": {"train_file": "pairs.jsonl"}}


def test_kind_selects_the_config_type_and_online_stays_the_default():
    assert type(validate({})) is RunConfig
    assert type(validate({"kind": "online"})) is RunConfig
    cfg = validate(BASE)
    assert type(cfg) is PreferenceConfig and cfg.loss.name == "dpo"
    with pytest.raises(
        ConfigError, match="kind: unknown run kind 'dpo'; valid: online, preference"
    ):
        validate({"kind": "dpo"})


def test_every_registered_loss_is_inspected_without_special_cases():
    specs = {
        n: inspect_loss(Method(name=n)) for n in [*PAIRED_LOSSES.names(), *UNPAIRED_LOSSES.names()]
    }
    assert {n for n, s in specs.items() if s.kind == "unpaired"} == set(UNPAIRED_LOSSES.names())
    assert {n for n, s in specs.items() if not s.needs_reference} == {"simpo", "orpo"}
    assert {n for n, s in specs.items() if s.needs_kl} == {"kto"}
    assert {n for n, s in specs.items() if s.uses_shift} == {"bco"}
    assert {n for n, s in specs.items() if s.uses_weights} == {"bco"}


@pytest.mark.parametrize(
    "extra,needle",
    [
        ({"loss": {"name": "dpoo"}}, "unknown preference loss 'dpoo'; paired: cdpo, dpo"),
        ({"loss": {"name": "dpo", "params": {"bta": 0.1}}}, "does not accept 'bta'; allowed: beta"),
        ({"loss": {"name": "dpo", "params": {"beta": -1}}}, "beta must be > 0"),
        ({"loss": {"name": "robust_dpo", "params": {"flip_rate": 0.5}}}, "flip_rate"),
        ({"loss": {"name": "ipo", "params": {"form": "avg"}}}, "form must be 'mean' or 'sum'"),
        ({"udm": {"enabled": True}}, "udm.enabled: loss 'dpo' takes no density-ratio weights"),
        (
            {"loss": {"name": "bco"}, "udm": {"enabled": True, "min_ratio": 3, "max_ratio": 2}},
            "udm.min_ratio",
        ),
        ({"batch": {"pair_per_step": 4}}, "unknown key 'batch.pair_per_step'"),
        (
            {"eval": {"task": {"name": "arithmetic", "params": {"difficulty": 9}}}},
            "eval.task.params",
        ),
        ({"eval": {"task": {"name": "sudoku"}}}, "eval.task.name"),
        ({"steps": 0}, "steps"),
        ({"data": {}}, "data.train_file"),
    ],
)
def test_bad_preference_config_names_the_key(extra, needle):
    with pytest.raises(ConfigError) as e:
        validate({**BASE, **extra})
    assert needle in str(e.value), str(e.value)


def test_steps_replace_epochs():
    cfg = validate({**BASE, "epochs": 2.5, "batch": {"pairs_per_step": 8}})
    assert cfg.total_steps(20) == 7  # ceil(2.5 * 20 / 8)
    assert validate({**BASE, "epochs": 2.5, "steps": 3}).total_steps(20) == 3
