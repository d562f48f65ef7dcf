"""Bad recipes and bad data fail before any model loads, naming the key, file or line."""

import pytest

from lmpo import cli
from lmpo.models import policy

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the default recipe's output_dir must not be a real run

    def refuse(*a, **k):
        raise AssertionError("the model must not load when the input is bad")

    monkeypatch.setattr(policy, "load_base", refuse)
    monkeypatch.setattr("lmpo.train.online.load_base", refuse)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("batch.prompt_per_step=4", "unknown key 'batch.prompt_per_step'"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.schedule=zigzag", "optim.schedule"),
        ("algorithm.advantage.name=grpoo", "valid names: dr_grpo, gae, grpo"),
        (
            "algorithm.policy_loss.params={eps: 0.2}",
            "allowed: agg, dual_clip, eps_high, eps_low, l_const",
        ),
        ("task.name=sudoku", "task.name"),
        ("task.params={difficulty: 9}", "difficulty"),
        ("rewards=[{name: correctnes}]", "valid names"),
        ("batch.minibatch_size=7", "must divide"),
        ("steps=zero", "steps"),
    ],
)
def test_bad_config_names_the_key(override, needle, capsys):
    assert cli.main(["train", "default", override, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err, err


def test_unknown_recipe_lists_shipped_ones(capsys):
    assert cli.main(["train", "nope"]) == 2
    assert "default" in capsys.readouterr().err


def test_malformed_data_row_names_file_and_line(tmp_path, capsys):
    f = tmp_path / "train.jsonl"
    f.write_text('{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?", "answer": \n')
    assert (
        cli.main(
            [
                "train",
                "default",
                f"task.train_file={f}",
                f"output_dir={tmp_path / 'r'}",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert str(f) in err and "line 2" in err
    assert not (tmp_path / "r").exists(), "nothing half-written is left behind"


def test_missing_answer_says_so(tmp_path, capsys):
    f = tmp_path / "train.jsonl"
    f.write_text('{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?"}\n')
    assert (
        cli.main(
            [
                "train",
                "default",
                f"task.train_file={f}",
                f"output_dir={tmp_path / 'r'}",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "line 2" in err and "answer" in err


def test_user_reward_import_error_is_clear(tmp_path, capsys):
    r = [
        "train",
        "default",
        "rewards=[{name: 'no_such_module:fn'}]",
        f"output_dir={tmp_path / 'r'}",
        "--no-progress",
    ]
    assert cli.main(r) == 2
    assert "no_such_module" in capsys.readouterr().err
