"""Reward-model training on tiny pair files, and trained RMs as the reward of `lmpo train`."""

import json

import pytest
import torch
from pydantic import ValidationError

from lmpo import cli
from lmpo.data.files import DataError
from lmpo.data.pairs import write_jsonl
from lmpo.models.loading import tiny_model
from lmpo.models.reward_model import RewardModel
from lmpo.train import reward_model as rmtrain
from lmpo.train.logging import read_metrics

pytestmark = pytest.mark.integration


def pair_file(path, n=16):
    """Separable pairs: the chosen answer always says 'yes', the rejected one 'no'."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Is {i} a number?"}],
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": "no",
        }
        for i in range(n)
    ]
    return write_jsonl(path, rows)


def config(tmp_path, **kw):
    data = {
        "tiny_model": True,
        "train_file": str(pair_file(tmp_path / "pairs.jsonl")),
        "eval_fraction": 0.25,
        "batch_size": 4,
        "micro_batch_size": 2,
        "epochs": 2,
        "max_length": 256,
        "optim": {"lr": 1e-3},
        "output_dir": str(tmp_path / "rm"),
        **kw,
    }
    return rmtrain.RewardModelConfig.model_validate(data)


def test_training_moves_parameters_and_reports_pair_accuracy(tmp_path):
    summary = rmtrain.train_reward_model(config(tmp_path), show_progress=False)
    assert summary["train_pairs"] == 12 and summary["eval_pairs"] == 4 and summary["steps"] == 6
    rows = read_metrics(tmp_path / "rm" / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert all(0 <= r["accuracy"] <= 1 and r["grad_norm"] > 0 for r in steps)
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 6] and evals[0]["eval/pairs"] == 4
    assert (
        summary["accuracy_after"] == evals[-1]["eval/accuracy"] == 1.0
    )  # separable data is learned
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]

    trained = RewardModel.load(tmp_path / "rm" / "final")
    base, tok = tiny_model(seed=0)
    init = RewardModel.from_causal_lm(base, tok, max_length=256, seed=0)
    a, b = init.state_dict(), trained.state_dict()
    assert a.keys() == b.keys()
    assert not torch.equal(a["head.weight"], b["head.weight"])
    assert sum(not torch.equal(a[k], b[k]) for k in a) > len(a) // 2, "the backbone trains too"
    assert trained.meta["reward_std"] > 0 and trained.meta["stats_on"] == "held-out pairs"
    r = trained.score([[{"role": "user", "content": "Is 99 a number?"}]] * 2, ["yes", "no"])
    assert r[0] > r[1]


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, monkeypatch):
    full = rmtrain.train_reward_model(
        config(tmp_path, output_dir=str(tmp_path / "full"), checkpoint_every=2), show_progress=False
    )
    cfg = config(tmp_path, output_dir=str(tmp_path / "split"), checkpoint_every=2)
    real = rmtrain.train_step
    calls = []

    def dies_at_step_5(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(rmtrain, "train_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        rmtrain.train_reward_model(cfg, show_progress=False)
    monkeypatch.setattr(rmtrain, "train_step", real)
    with pytest.raises(RuntimeError, match="--resume"):
        rmtrain.train_reward_model(cfg, show_progress=False)
    split = rmtrain.train_reward_model(cfg, resume=True, show_progress=False)
    assert split["accuracy_after"] == full["accuracy_after"]
    rows = [read_metrics(tmp_path / run / "metrics.jsonl") for run in ("full", "split")]
    assert rows[0] == rows[1]  # no wall-clock fields are logged, so the files match exactly
    a = RewardModel.load(tmp_path / "full" / "final").state_dict()
    b = RewardModel.load(tmp_path / "split" / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_pair_file_names_file_and_line_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(
        rmtrain, "load_base", lambda *a, **k: pytest.fail("the model must not load")
    )
    f = tmp_path / "bad.jsonl"
    f.write_text(
        '{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"}\n'
    )
    with pytest.raises(DataError, match=f"{f} line 2: missing key 'rejected'"):
        rmtrain.train_reward_model(config(tmp_path, train_file=str(f)), show_progress=False)


def test_config_rejects_unknown_keys_and_loss_params(tmp_path):
    with pytest.raises(ValidationError, match="batchsize"):
        config(tmp_path, batchsize=3)
    with pytest.raises(ValidationError, match="allowed: center_coef, temperature"):
        config(tmp_path, loss={"name": "bradley_terry", "params": {"tau": 1}})


@pytest.fixture(scope="module")
def two_trained_rms(tmp_path_factory):
    d = tmp_path_factory.mktemp("ens")
    paths = []
    for seed in (0, 1):
        cfg = config(d, seed=seed, epochs=1, output_dir=str(d / f"rm{seed}"))
        paths.append(rmtrain.train_reward_model(cfg, show_progress=False)["final_model"])
    return paths


def test_rm_ensemble_is_the_reward_of_an_online_run(recipe, tmp_path, two_trained_rms):
    spec = {
        "name": "reward_model",
        "params": {
            "paths": two_trained_rms,
            "ensemble": "uncertainty_weighted",
            "ensemble_params": {"lam": 0.5},
        },
    }
    assert cli.main(["train", str(recipe(rewards=[spec])), "--no-progress"]) == 0
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all("rewards/reward_model" in r and r["reward_std"] > 0 for r in steps)
    assert any(r["grad_norm"] > 0 for r in steps)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_model"].endswith("final")


def test_missing_rm_directory_fails_in_config_validation(recipe, tmp_path, capsys):
    spec = {"name": "reward_model", "params": {"paths": [str(tmp_path / "nope")]}}
    assert cli.main(["train", str(recipe(rewards=[spec])), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "rewards[0]" in err and "not a reward model directory" in err
    assert not (tmp_path / "run").exists()


def test_lmpo_train_runs_a_reward_model_recipe(tmp_path, capsys):
    """`kind: reward_model` through `lmpo train`: the shipped recipe with overrides, end to end."""
    data = pair_file(tmp_path / "pairs.jsonl")
    argv = [
        "train",
        "reward_model",
        f"train_file={data}",
        "tiny_model=true",
        "eval_fraction=0.25",
        "batch_size=4",
        "max_length=64",
        "eval_every=0",
        "optim.lr=1e-3",
        f"output_dir={tmp_path / 'rm'}",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    summary = json.loads((tmp_path / "rm" / "summary.json").read_text())
    assert summary["train_pairs"] == 12 and summary["eval_pairs"] == 4 and summary["steps"] == 3
    assert "accuracy_after" in capsys.readouterr().out
    rm = RewardModel.load(tmp_path / "rm" / "final")
    base, tok = tiny_model(seed=0)
    init = RewardModel.from_causal_lm(base, tok, max_length=64, seed=0)
    assert not torch.equal(init.state_dict()["head.weight"], rm.state_dict()["head.weight"])


def test_reward_model_recipe_errors_fail_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        rmtrain, "load_base", lambda *a, **k: pytest.fail("the model must not load")
    )
    out = tmp_path / "rm"
    assert cli.main(["train", "reward_model", "batchsize=3", f"output_dir={out}"]) == 2
    assert "unknown key 'batchsize'" in capsys.readouterr().err
    assert cli.main(["train", "reward_model", "loss.name=nope", f"output_dir={out}"]) == 2
    assert "loss" in capsys.readouterr().err
    feedback = tmp_path / "fb.jsonl"
    feedback.write_text('{"prompt": "q", "completion": "a", "label": true}\n')
    assert cli.main(["train", "reward_model", f"train_file={feedback}", f"output_dir={out}"]) == 2
    assert "a reward model trains on pairs" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["train", "reward_model", "--dry-run"]) == 0  # the shipped recipe validates
    assert "kind: reward_model" in capsys.readouterr().out


def test_head_lr_and_zero_head_init(tmp_path):
    """head_init_std 0 starts every reward at 0 (a tie: accuracy 0, loss log 2); head_lr gives
    the head its own AdamW group, so after one step each head weight moved by ~head_lr while
    the backbone moved by ~lr (Adam's first step is lr * sign(grad))."""
    cfg = config(tmp_path, head_lr=0.5, head_init_std=0.0, epochs=1, eval_fraction=0.0)
    rm = rmtrain.build_reward_model(cfg)
    assert torch.count_nonzero(rm.head.weight) == 0
    pairs, _ = rmtrain.load_splits(cfg)
    metrics, scores = rmtrain.evaluate_pairs(rm, pairs, cfg)
    assert torch.all(scores == 0) and metrics["eval/accuracy"] == 0.0
    assert metrics["eval/loss"] == pytest.approx(float(torch.log(torch.tensor(2.0))))

    opt, _ = rmtrain.build_optimizer(
        rm, cfg.optim, 1, lr_overrides={p: cfg.head_lr for p in rm.head.parameters()}
    )
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.5]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in rm.head.parameters()}
    emb = rm.backbone.get_input_embeddings().weight
    before = emb.detach().clone()
    rmtrain.train_step(rm, pairs[:4], cfg, opt)
    moved = rm.head.weight.detach().abs()
    assert moved.max() == pytest.approx(0.5, rel=1e-3)  # the head's own lr
    assert (
        emb.detach() - before
    ).abs().max() == 0  # zero head: no gradient reaches the backbone yet
    rmtrain.train_step(rm, pairs[4:8], cfg, opt)
    step2 = (emb.detach() - before).abs().max()
    assert 0 < step2 <= 1.01e-3  # now it learns, at the backbone's lr


def test_head_options_are_validated(tmp_path):
    with pytest.raises(ValidationError, match="head_lr"):
        config(tmp_path, head_lr=0)
    with pytest.raises(ValidationError, match="head_init_std"):
        config(tmp_path, head_init_std=-1.0)
