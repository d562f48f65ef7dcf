"""`lmpo train` of `kind: iterative` (iterative DPO from self-verified samples) on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmpo import cli
from lmpo.config import ConfigError, PreferenceConfig, load_config
from lmpo.data.preference import load_preferences
from lmpo.models.loading import tiny_model
from lmpo.train import iterative, preference
from lmpo.train.logging import read_metrics

pytestmark = pytest.mark.integration


def recipe(tmp_path: Path, name: str = "it", **overrides) -> Path:
    """Two rounds of 4 prompts x 4 answers; the deterministic even-length reward splits them."""
    data = {
        "kind": "iterative",
        "tiny_model": True,
        "task": {
            "name": "arithmetic",
            "params": {"style": "bare"},
            "train_size": 12,
            "test_size": 4,
        },
        "rounds": 2,
        "pairs": {
            "prompts_per_round": 4,
            "k": 4,
            "max_new_tokens": 6,
            "batch_size": 8,
            "pairs_per_prompt": 2,
            "rewards": [{"name": "pair_rewards:even_length"}],
            "threshold": 0.5,
        },
        "preference": {
            "loss": {"name": "dpo", "params": {"beta": 0.1}},
            "batch": {"pairs_per_step": 2, "micro_batch_size": 2},
            "optim": {"lr": 1e-2},
            "steps": 3,
            "checkpoint_every": 1,
        },
        "eval": {"batch_size": 4, "max_new_tokens": 6},
        "output_dir": str(tmp_path / name),
    }
    for k, v in overrides.items():
        node, keys = data, k.split(".")
        for kk in keys[:-1]:
            node = node.setdefault(kk, {})
        node[keys[-1]] = v
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def weights(path) -> dict[str, torch.Tensor]:
    if path is None:
        return tiny_model(seed=0)[0].state_dict()
    return load_file(str(Path(path) / "model.safetensors"))


def differ(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in b if k in a)


def rounds(run: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k != "wall_time_s"}
        for r in read_metrics(run / "rounds.jsonl")
    ]


def test_two_rounds_end_to_end(tmp_path, capsys):
    assert cli.main(["train", str(recipe(tmp_path)), "--no-progress"]) == 0
    run = tmp_path / "it"
    rows = rounds(run)
    assert [r["round"] for r in rows] == [0, 1] and all(r["trained"] for r in rows)
    assert all(r["pairs"] > 0 and r["train_steps"] == 3 and r["prompts"] == 4 for r in rows)
    assert rows[1]["accuracy_before"] == rows[0]["accuracy"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pairs_per_round"] == [r["pairs"] for r in rows] and summary["steps"] == 6
    assert summary["accuracy_per_round"] == [r["accuracy"] for r in rows]
    assert summary["final_model"] == str(run / "round-1" / "train" / "final")
    assert (run / "task_accuracy.png").is_file() and "accuracy_after" in capsys.readouterr().out
    # fresh prompts every round: the rounds' binary rows (every prompt with an answer) are disjoint
    ids = [{r.id for r in load_preferences(run / f"round-{i}" / "binary.jsonl")[1]} for i in (0, 1)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    # the weights move in every round
    finals = [run / f"round-{i}" / "train" / "final" for i in (0, 1)]
    assert differ(weights(None), weights(finals[0])) and differ(
        weights(finals[0]), weights(finals[1])
    )
    # round 1 starts from round 0's final model, which is also its reference
    cfg1 = PreferenceConfig.model_validate(
        yaml.safe_load((run / "round-1" / "train" / "config.yaml").read_text())
    )
    assert cfg1.model == str(finals[0]) and not cfg1.tiny_model
    cached = load_file(str(run / "round-1" / "train" / preference.REFERENCE_FILE))
    fresh = preference.build_context(
        cfg1.model_copy(update={"output_dir": str(tmp_path / "ref")})
    ).reference
    base = cfg1.model_copy(
        update={
            "model": "embedded",
            "tiny_model": True,
            "seed": 0,
            "output_dir": str(tmp_path / "base"),
        }
    )
    base_ref = preference.build_context(base).reference
    assert torch.allclose(cached["train/chosen"], fresh["train/chosen"], atol=1e-5)
    assert not torch.allclose(cached["train/chosen"], base_ref["train/chosen"], atol=1e-3)


def test_resume_after_a_kill_mid_round_1_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    assert cli.main(["train", str(recipe(tmp_path, "full")), "--no-progress"]) == 0
    split = recipe(tmp_path, "split")
    real, calls = preference.preference_step, []

    def killed_in_round_1(step, ctx):
        calls.append(step)
        if len(calls) == 5:  # round 0 takes 3 steps; this is round 1's second
            raise KeyboardInterrupt
        return real(step, ctx)

    monkeypatch.setattr(preference, "preference_step", killed_in_round_1)
    assert cli.main(["train", str(split), "--no-progress"]) == 130
    monkeypatch.setattr(preference, "preference_step", real)
    assert len(rounds(tmp_path / "split")) == 1
    assert cli.main(["train", str(split), "--no-progress"]) == 2  # a used output_dir needs --resume
    # round 1's pairs are complete, so the resumed run samples nothing
    monkeypatch.setattr(iterative, "sample_and_score", lambda *a, **k: pytest.fail("resampled"))
    assert cli.main(["train", str(split), "--resume", "--no-progress"]) == 0
    assert rounds(tmp_path / "full") == [
        {**r, "model": r["model"] and r["model"].replace("split", "full")}
        for r in rounds(tmp_path / "split")
    ]
    a = weights(tmp_path / "full" / "round-1" / "train" / "final")
    b = weights(tmp_path / "split" / "round-1" / "train" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_round_without_pairs_trains_nothing_and_says_why(tmp_path, capsys):
    # no answer reaches the threshold: every group is all bad, so no pair can be built
    assert cli.main(["train", str(recipe(tmp_path, **{"pairs.threshold": 5.0}))]) == 0
    run = tmp_path / "it"
    rows = rounds(run)
    assert [r["trained"] for r in rows] == [False, False] and [r["pairs"] for r in rows] == [0, 0]
    assert all("0 training rows" in r["skipped"] and "4 all bad" in r["skipped"] for r in rows)
    assert "round 0: 0 training rows" in capsys.readouterr().err
    assert not (run / "round-0" / "train").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_model"] == "embedded" and summary["steps"] == 0
    assert summary["accuracy_per_round"] == [summary["accuracy_before"]] * 2


def test_an_unpaired_loss_trains_on_the_binary_rows(tmp_path):
    r = recipe(tmp_path, rounds=1, **{"preference.loss": {"name": "kto"}})
    assert cli.main(["train", str(r), "--no-progress"]) == 0
    cfg = yaml.safe_load((tmp_path / "it" / "round-0" / "train" / "config.yaml").read_text())
    assert cfg["data"]["train_file"].endswith("binary.jsonl")
    assert differ(weights(None), weights(tmp_path / "it" / "round-0" / "train" / "final"))


@pytest.mark.parametrize(
    "override,needle",
    [
        ("preference.lr=1", "unknown key 'preference.lr'"),
        ("preference.data.train_file=x.jsonl", "unknown key 'preference.data.train_file'"),
        ("preference.loss.name=nope", "preference: loss"),
        ("preference.loss={name: dpo, params: {beta: -1}}", "preference: loss"),
        ("preference.udm.enabled=true", "preference: udm.enabled: loss 'dpo'"),
        ("pairs.k=1", "pairs.k"),
        ("pairs.rewards=[{name: nope}]", "rewards[0]"),
        ("rounds=4", "rounds x pairs.prompts_per_round = 16"),
        ("task.params={difficulty: 9}", "task.params"),
    ],
)
def test_bad_iterative_configs_fail_before_anything_loads(tmp_path, override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(str(recipe(tmp_path)), [override])
    assert needle in str(e.value)


def test_the_shipped_recipe_validates(capsys):
    cfg = load_config("iterative_dpo")
    assert cfg.kind == "iterative" and cfg.model == "embedded"
    assert cfg.task.name == "arithmetic" and cfg.task.params == {"difficulty": 1}
    assert cfg.round_config(1, "p.jsonl", "m", False).output_dir.endswith("round-1/train")
    assert cli.main(["train", "iterative_dpo", "--dry-run"]) == 0
    assert "kind: iterative" in capsys.readouterr().out
