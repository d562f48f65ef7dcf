"""A preference run's policy as a reward model (DPO's implicit reward), end to end on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from test_preference_train import recipe as preference_recipe
from test_preference_train import write_pairs

from lmpo import cli
from lmpo.data.preference import answer_text, load_preferences
from lmpo.models.reward_model import (
    META_FILE,
    ImplicitRewardModel,
    load_reward_model,
    read_meta,
)
from lmpo.rewards.reward_model import reward_model
from lmpo.train.logging import read_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("implicit")
    test = write_pairs(d / "test.jsonl", n=6)
    r = preference_recipe(d, **{"data.test_file": str(test)})
    assert cli.main(["train", str(r), "--no-progress"]) == 0
    return d / "run", test


def test_implicit_reward_reproduces_the_runs_held_out_rewards(dpo_run):
    run, test = dpo_run
    rm = load_reward_model(run / "final")
    assert isinstance(rm, ImplicitRewardModel) and rm.beta == 0.1
    meta = read_meta(run / "final")
    assert meta["kind"] == "implicit" and meta["reference"]["tiny_model"] is True
    _, pairs = load_preferences(test)
    prompts = [p.prompt for p in pairs]
    chosen = rm.score(prompts, [answer_text(p.chosen) for p in pairs], batch_size=4)
    rejected = rm.score(prompts, [answer_text(p.rejected) for p in pairs], batch_size=4)
    last = [r for r in read_metrics(run / "metrics.jsonl") if "eval/loss" in r][-1]
    # the same numbers the run logged for its held-out rows (its last eval, trained policy)
    assert chosen.mean().item() == pytest.approx(last["eval/rewards/chosen"], abs=1e-5)
    assert rejected.mean().item() == pytest.approx(last["eval/rewards/rejected"], abs=1e-5)
    assert (chosen > rejected).float().mean().item() == pytest.approx(last["eval/pair_accuracy"])
    both = torch.cat([chosen, rejected])
    assert meta["reward_mean"] == pytest.approx(both.mean().item(), abs=1e-5)
    assert meta["reward_std"] == pytest.approx(both.std().item(), abs=1e-5)
    # the training moved the policy: rewards are not all 0 (policy == reference would give 0)
    assert both.abs().max() > 1e-4


def test_implicit_reward_is_zero_for_the_reference_itself(dpo_run):
    run, _ = dpo_run
    rm = load_reward_model(run / "final")
    same = ImplicitRewardModel(rm.reference, rm.reference, rm.tokenizer, beta=0.1, meta=rm.meta)
    r = same.score([[{"role": "user", "content": "3+4?"}]] * 2, ["7", "8!"])
    assert torch.equal(r, torch.zeros(2))


def test_implicit_reward_model_is_a_reward_of_the_online_loop(dpo_run, recipe):
    run, _ = dpo_run
    spec = {"name": "reward_model", "params": {"paths": [str(run / "final")]}}
    out = recipe(rewards=[spec])
    assert cli.main(["train", str(out), "--no-progress"]) == 0
    steps = [r for r in read_metrics(out.parent / "run" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all("rewards/reward_model" in r and r["reward_std"] > 0 for r in steps)


def test_reward_function_standardises_implicit_rewards(dpo_run):
    from lmpo.data.examples import Example
    from lmpo.rewards.base import ScoreBatch

    run, _ = dpo_run
    rm = load_reward_model(run / "final")
    ex = Example(id="a", prompt=[{"role": "user", "content": "2+3?"}], answer="5")
    batch = ScoreBatch(
        completions=["5", "6!"],
        examples=[ex, ex],
        lengths=[1, 2],
        truncated=[False] * 2,
        max_new_tokens=8,
    )
    raw = rm.score([ex.prompt] * 2, ["5", "6!"])
    got = reward_model(batch, paths=[str(run / "final")])
    want = (raw - rm.meta["reward_mean"]) / rm.meta["reward_std"]
    assert got == pytest.approx(want.tolist(), abs=1e-5)


def test_reference_free_losses_write_no_reward_model(tmp_path):
    r = preference_recipe(tmp_path, **{"loss": {"name": "simpo"}})
    assert cli.main(["train", str(r), "--no-progress"]) == 0
    assert not (tmp_path / "run" / "final" / META_FILE).exists()


def test_bad_reward_model_kinds_fail_naming_the_file(dpo_run, tmp_path):
    run, _ = dpo_run
    meta = json.loads((run / "final" / META_FILE).read_text())
    d = tmp_path / "rm"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / META_FILE).write_text(json.dumps({**meta, "kind": "telepathic"}))
    with pytest.raises(
        ValueError, match=rf"{d / META_FILE}: unknown reward-model kind 'telepathic'"
    ):
        load_reward_model(d)
    (d / META_FILE).write_text(json.dumps({k: v for k, v in meta.items() if k != "beta"}))
    with pytest.raises(ValueError, match=r"implicit reward model without \['beta'\]"):
        load_reward_model(d)


def test_eval_pairs_cli_scores_a_saved_reward_model(dpo_run, tmp_path, capsys):
    run, test = dpo_run
    out = tmp_path / "scores.json"
    assert cli.main(["eval-pairs", str(run / "final"), str(test), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    last = [r for r in read_metrics(run / "metrics.jsonl") if "eval/loss" in r][-1]
    assert printed["kind"] == "implicit" and printed["pairs"] == 6
    assert printed["pair_accuracy"] == pytest.approx(last["eval/pair_accuracy"])
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 6 and {"id", "chosen_reward", "rejected_reward"} <= set(rows[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q"}\n')
    assert cli.main(["eval-pairs", str(run / "final"), str(bad)]) == 2
    assert f"{bad} line 2" in capsys.readouterr().err
