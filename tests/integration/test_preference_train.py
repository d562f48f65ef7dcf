"""End-to-end `lmpo train` of preference recipes on a tiny random model (seconds each)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmpo import cli
from lmpo.config import list_recipes, load_config
from lmpo.core import PAIRED_LOSSES, UNPAIRED_LOSSES
from lmpo.models.loading import tiny_model
from lmpo.train import preference
from lmpo.train.logging import read_metrics

pytestmark = pytest.mark.integration
VOLATILE = ("time/", "tokens_per_s")


def write_pairs(path: Path, n: int = 12) -> Path:
    rows = []
    for i in range(n):
        a, b = i % 7 + 1, i // 7 + 2
        rows.append({"prompt": f"{a}+{b}?", "chosen": f"{a + b}", "rejected": f"{a + b + 1}!"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_feedback(path: Path, n: int = 12) -> Path:
    """Desirable answers to additions, undesirable ones to subtractions (UDM has something to learn)."""
    rows = []
    for i in range(n):
        good = i % 2 == 0
        q = f"{i}+1?" if good else f"{i}-1?"
        rows.append(
            {
                "prompt": [{"role": "user", "content": q}],
                "completion": [{"role": "assistant", "content": str(i + 1 if good else i)}],
                "label": good,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe(tmp_path: Path, name: str = "recipe", **overrides) -> Path:
    data = {
        "kind": "preference",
        "tiny_model": True,
        "loss": {"name": "dpo", "params": {"beta": 0.1}},
        "data": {"train_file": str(write_pairs(tmp_path / "pairs.jsonl")), "test_size": 2},
        "batch": {"pairs_per_step": 4, "micro_batch_size": 2},
        "optim": {"lr": 1e-2},
        "steps": 2,
        "eval": {"batch_size": 4},
        "checkpoint_every": 1,
        "output_dir": str(tmp_path / "run"),
    }
    for k, v in overrides.items():
        node, keys = data, k.split(".")
        for kk in keys[:-1]:
            node = node.setdefault(kk, {})
        node[keys[-1]] = v
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def _moved(final: Path) -> list[str]:
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(final)
    init, _ = tiny_model(seed=0)
    return [
        n
        for (n, a), b in zip(init.state_dict().items(), trained.state_dict().values(), strict=True)
        if not torch.equal(a, b)
    ]


LOSSES = [*PAIRED_LOSSES.names(), *UNPAIRED_LOSSES.names()]


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_end_to_end(tmp_path, loss):
    r = recipe(tmp_path, **{"loss": {"name": loss}})
    assert cli.main(["train", str(r), "--no-progress"]) == 0
    run = tmp_path / "run"
    rows = read_metrics(run / "metrics.jsonl")
    steps = [x for x in rows if "loss" in x]
    assert [x["step"] for x in steps] == [1, 2]
    for key in (
        "loss",
        "grad_norm",
        "lr",
        "epoch",
        "time/step",
        "tokens_per_s",
        "rewards/chosen",
        "logps/chosen",
    ):
        assert key in steps[0], key
    if loss in PAIRED_LOSSES:
        for key in ("rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/rejected"):
            assert key in steps[0], key
    assert all(x["grad_norm"] > 0 for x in steps)
    evals = [x for x in rows if "eval/loss" in x]
    assert [x["step"] for x in evals] == [0, 2]
    assert "eval/pair_accuracy" in evals[-1]  # unpaired losses: pairs of the paired file
    assert _moved(run / "final"), "training must change the weights"
    assert (run / "loss.png").is_file() and (run / "tb").is_dir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pair_accuracy_after"] is not None and summary["steps"] == 2
    assert (run / "reference.safetensors").is_file() == (loss not in ("simpo", "orpo"))


@pytest.mark.parametrize("loss,udm", [("kto", False), ("bco", True)])
def test_unpaired_file_trains(tmp_path, loss, udm):
    data = str(write_feedback(tmp_path / "fb.jsonl"))
    r = recipe(tmp_path, **{"loss": {"name": loss}, "data.train_file": data, "udm.enabled": udm})
    assert cli.main(["train", str(r), "--no-progress"]) == 0
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [x for x in rows if "loss" in x]
    assert ("kl" in steps[0]) == (loss == "kto") and ("delta" in steps[0]) == (loss == "bco")
    if udm:
        start = rows[0]
        assert (
            start["step"] == 0
            and 0 <= start["udm/classifier_accuracy"] <= 1
            and start["udm/weight_mean"] > 0
        )
        cache = load_file(str(tmp_path / "run" / "reference.safetensors"))
        assert cache["train/prompt_embedding"].shape == (10, 64)
    assert "eval/pair_accuracy" not in rows[-1]  # genuinely unpaired: no pairs to compare
    assert _moved(tmp_path / "run" / "final")


def test_shipped_recipe_with_data_override_and_task_eval(tmp_path, capsys):
    data = write_pairs(tmp_path / "mine.jsonl")
    argv = [
        "train",
        "dpo",
        f"data.train_file={data}",
        "tiny_model=true",
        "steps=1",
        "data.test_size=2",
        "eval.task={name: arithmetic, params: {style: bare}, test_size: 2}",
        "eval.max_new_tokens=3",
        "lora.enabled=true",
        "lora.r=2",
        f"output_dir={tmp_path / 'run'}",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert {x["step"] for x in rows if "eval/accuracy" in x} == {0, 1}
    assert len((tmp_path / "run" / "eval" / "step-000001.jsonl").read_text().splitlines()) == 2
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert not any("lora" in n for n in merged.state_dict())
    assert "pair_accuracy_after" in capsys.readouterr().out


def test_shipped_preference_recipes_validate():
    kinds = {name: load_config(name).kind for name in list_recipes()}
    assert {"dpo", "ipo", "simpo", "orpo", "kto", "bco"} <= {
        n for n, k in kinds.items() if k == "preference"
    }
    assert kinds["default"] == "online"
    assert load_config("bco").udm.enabled


RESULTS = Path(__file__).parents[2] / "docs" / "results" / "preference"


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_reported_preference_configs_validate_and_name_shipped_data(path):
    """The configs docs/results/preference.md reports still validate, and their data files exist."""
    cfg = load_config(str(path))
    root = RESULTS.parents[2]
    files = [getattr(cfg, "train_file", None), getattr(cfg, "eval_file", None)]
    if hasattr(cfg, "data") and hasattr(cfg.data, "train_file"):
        files += [cfg.data.train_file, cfg.data.test_file]
    files = [f for f in files if f]
    assert files or cfg.kind == "iterative"
    for f in files:
        assert (root / f).is_file(), f


@pytest.mark.parametrize("loss", ["dpo", "bco", "kto"])
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, monkeypatch, loss):
    full = recipe(
        tmp_path,
        "full",
        **{"loss": {"name": loss}, "steps": 4, "output_dir": str(tmp_path / "full")},
    )
    assert cli.main(["train", str(full), "--no-progress"]) == 0

    split = recipe(
        tmp_path,
        "split",
        **{"loss": {"name": loss}, "steps": 4, "output_dir": str(tmp_path / "split")},
    )
    real_step = preference.preference_step

    def killed_at_3(step, ctx):
        if step == 3:
            raise KeyboardInterrupt  # the process dies before step 3 finishes
        return real_step(step, ctx)

    monkeypatch.setattr(preference, "preference_step", killed_at_3)
    assert cli.main(["train", str(split), "--no-progress"]) == 130
    assert (tmp_path / "split" / "step-000002").is_dir()
    cache = tmp_path / "split" / "reference.safetensors"
    before = cache.read_bytes()

    def no_recompute(*a, **k):
        raise AssertionError("the reference cache must be read back on resume, not recomputed")

    monkeypatch.setattr(preference, "preference_step", real_step)
    monkeypatch.setattr(preference, "compute_reference", no_recompute)
    assert cli.main(["train", str(split), "--resume", "--no-progress"]) == 0
    assert cache.read_bytes() == before

    a = _stable(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    b = _stable(read_metrics(tmp_path / "split" / "metrics.jsonl"))
    assert a == b
    wa = load_file(str(tmp_path / "full" / "step-000004" / "weights.safetensors"))
    wb = load_file(str(tmp_path / "split" / "step-000004" / "weights.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_stale_reference_cache_is_recomputed(tmp_path, monkeypatch):
    """A cache whose fingerprint does not match the data (or model) is never used."""
    r = recipe(tmp_path, **{"steps": 1})
    assert cli.main(["train", str(r), "--no-progress"]) == 0
    run = tmp_path / "run"
    for p in run.glob("step-*"):
        shutil.rmtree(p)
    calls = []
    real = preference.compute_reference
    monkeypatch.setattr(
        preference, "compute_reference", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    assert cli.main(["train", str(r), "--no-progress"]) == 0
    assert calls == []  # same data and model: the cache is reused
    r2 = recipe(tmp_path, "other", **{"steps": 1, "data.max_completion_tokens": 1})
    for p in run.glob("step-*"):
        shutil.rmtree(p)
    assert cli.main(["train", str(r2), "--no-progress"]) == 0
    assert calls == [1]


@pytest.mark.parametrize("loss", ["dpo", "kto", "bco"])
def test_micro_batch_size_changes_memory_not_maths(tmp_path, loss):
    """Whole-step statistics (KTO z0, BCO shift) and loss weighting make micro-batching exact."""
    out = {}
    for micro in (4, 1):
        r = recipe(
            tmp_path,
            f"m{micro}",
            **{
                "loss": {"name": loss},
                "steps": 2,
                "batch.micro_batch_size": micro,
                "eval.at_start": False,
                "output_dir": str(tmp_path / f"m{micro}"),
            },
        )
        assert cli.main(["train", str(r), "--no-progress"]) == 0
        out[micro] = [
            x
            for x in _stable(read_metrics(tmp_path / f"m{micro}" / "metrics.jsonl"))
            if "loss" in x
        ]
    for a, b in zip(out[4], out[1], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
