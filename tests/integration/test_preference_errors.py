"""Bad preference recipes and data fail before any model loads, naming the key, file or line."""

from __future__ import annotations

import json

import pytest

from lmpo import cli
from lmpo.models import policy

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a recipe's output_dir must not be a real run

    def refuse(*a, **k):
        raise AssertionError("the model must not load when the input is bad")

    monkeypatch.setattr(policy, "load_base", refuse)
    monkeypatch.setattr("lmpo.train.preference.load_base", refuse)


@pytest.fixture
def pairs(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "1+1?", "chosen": "2", "rejected": "3"}) + "\n")
    return f


@pytest.mark.parametrize(
    "override,needle",
    [
        (
            "loss.name=dpoo",
            "unknown preference loss 'dpoo'; paired: cdpo, dpo, hinge, ipo, orpo, robust_dpo, simpo",
        ),
        ("loss.params={bta: 0.1}", "does not accept 'bta'; allowed: beta"),
        ("loss.params={beta: 0}", "beta must be > 0"),
        ("udm.enabled=true", "udm.enabled: loss 'dpo' takes no density-ratio weights"),
        ("batch.pair_per_step=4", "unknown key 'batch.pair_per_step'"),
        ("batch.micro_batch_size=0", "batch.micro_batch_size"),
        ("eval.task={name: arithmetic, params: {difficulty: 9}}", "eval.task.params"),
        ("kind=offline", "kind: unknown run kind 'offline'"),
    ],
)
def test_bad_config_names_the_key(override, needle, pairs, capsys):
    assert cli.main(["train", "dpo", f"data.train_file={pairs}", override, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err, err


@pytest.mark.parametrize(
    "rows,needle",
    [
        (
            [
                '{"prompt": "1+1?", "chosen": "2", "rejected": "3"}',
                '{"prompt": "2+2?", "chosen": "4"',
            ],
            "line 2: malformed JSON",
        ),
        (
            [
                '{"prompt": "1+1?", "chosen": "2", "rejected": "3"}',
                '{"prompt": "2+2?", "chosen": "4"}',
            ],
            "line 2: missing key 'rejected'",
        ),
        (['{"prompt": "1+1?", "completion": "2", "label": true}'], "needs paired rows"),
        (['{"prompt": "1+1?", "answer": "2"}'], "line 1: cannot tell the format"),
    ],
)
def test_bad_data_names_file_and_line(tmp_path, rows, needle, capsys):
    f = tmp_path / "train.jsonl"
    f.write_text("\n".join(rows) + "\n")
    argv = ["train", "dpo", f"data.train_file={f}", f"output_dir={tmp_path / 'r'}", "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(f) in err and needle in err, err
    assert not (tmp_path / "r").exists(), "nothing half-written is left behind"


def test_missing_data_file_and_unknown_shipped_file(tmp_path, capsys):
    assert cli.main(["train", "dpo", "data.train_file=nope.jsonl", "--no-progress"]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    assert cli.main(["train", "dpo", "data.train_file=lmpo:nope.jsonl", "--no-progress"]) == 2
    assert "shipped: lmpo:example_feedback.jsonl" in capsys.readouterr().err


def test_mismatched_test_file_format(tmp_path, pairs, capsys):
    fb = tmp_path / "fb.jsonl"
    fb.write_text(json.dumps({"prompt": "1+1?", "completion": "2", "label": True}) + "\n")
    argv = ["train", "dpo", f"data.train_file={pairs}", f"data.test_file={fb}", "--no-progress"]
    assert cli.main(argv) == 2
    assert "unpaired rows, but" in capsys.readouterr().err
