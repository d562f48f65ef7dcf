"""Rewards: hand-worked values, the DAPO overlong example, weighted sums, user rewards."""

from __future__ import annotations

import textwrap
import uuid

import pytest
import torch

from lmpo.data.examples import Example
from lmpo.data.tasks import load_task
from lmpo.rewards import (
    REWARDS,
    ScoreBatch,
    follows_format,
    overlong_penalty,
    resolve_reward,
    resolve_specs,
    score,
)


def batch(completions, examples=None, lengths=None, truncated=None, max_new_tokens=48):
    n = len(completions)
    examples = examples or [Example(id=str(i), prompt="p", answer="7") for i in range(n)]
    return ScoreBatch(
        completions=list(completions),
        examples=list(examples),
        lengths=list(lengths or [5] * n),
        truncated=list(truncated or [False] * n),
        max_new_tokens=max_new_tokens,
    )


def test_builtin_names():
    assert REWARDS.names() == ["correctness", "format", "length", "reward_model"]


def test_dapo_overlong_worked_example():
    lengths = [10000, 16384, 17408, 18432, 20480]
    b = batch(["x"] * 5, lengths=lengths, max_new_tokens=20480)
    values = REWARDS.get("length")(b, cache=4096)
    assert values == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0])
    assert overlong_penalty(20481, 20480, 4096) == -1.0
    assert overlong_penalty(18432, 20480, 4096, factor=0.5) == pytest.approx(-0.25)


def test_length_default_cache_and_truncation_penalty():
    b = batch(
        ["x"] * 4,
        lengths=[30, 40, 44, 50],
        truncated=[False, False, False, True],
        max_new_tokens=50,
    )
    # default cache = 50 // 5 = 10: penalty starts after 40 tokens
    assert REWARDS.get("length")(b) == pytest.approx([0.0, 0.0, -0.4, -1.0])
    b2 = batch(["x"] * 2, lengths=[20, 20], truncated=[False, True], max_new_tokens=50)
    assert REWARDS.get("length")(b2) == [0.0, 0.0]  # paper: length only
    assert REWARDS.get("length")(b2, truncation_penalty=0.5) == [0.0, -0.5]
    with pytest.raises(ValueError, match="cache must be in"):
        REWARDS.get("length")(b, cache=0)
    with pytest.raises(ValueError, match="cache must be in"):
        REWARDS.get("length")(b, cache=51)


def test_correctness_dispatches_on_task():
    arith = load_task("arithmetic", "test", 1)[0]
    cd = Example(
        id="c",
        prompt="p",
        answer="3 * 8 - 5",
        task="countdown",
        meta={"numbers": [3, 5, 8], "target": 19},
    )
    file_ex = Example(id="f", prompt="p", answer="1/2")
    word = Example(id="w", prompt="p", answer="Paris")
    b = batch(
        [
            f"Answer: {arith.answer}",
            f"Answer: {int(arith.answer) + 1}",
            "<answer>8*3-5</answer>",
            "Answer: 8 + 8 + 3",
            "So the result is \\boxed{0.5}",
            "Answer: 0.25",
            "Answer: paris.",
            "Answer: London",
        ],
        [arith, arith, cd, cd, file_ex, file_ex, word, word],
    )
    assert REWARDS.get("correctness")(b) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_correctness_unknown_task_lists_tasks():
    b = batch(["Answer: 1"], [Example(id="x", prompt="p", answer="1", task="chess")])
    with pytest.raises(KeyError, match="valid names"):
        REWARDS.get("correctness")(b)


@pytest.mark.parametrize(
    "text,fmt,ok",
    [
        ("12 + 7 = 19\nAnswer: 19", "line", True),
        ("Answer: 19", "line", True),
        ("Answer: 19\nAnswer: 20", "line", False),
        ("Answer: 19\nbecause...", "line", False),
        ("19", "line", False),
        ("work\n<answer>19</answer>", "tag", True),
        ("<answer>19</answer><answer>2</answer>", "tag", False),
        ("<answer></answer>", "tag", False),
        ("<answer>19", "tag", False),
        ("19", "bare", True),
        ("19\n20", "bare", False),
        ("Answer: 4", None, True),
        ("<answer>4</answer>", None, True),
        ("4", None, False),
    ],
)
def test_follows_format(text, fmt, ok):
    assert follows_format(text, fmt) is ok


def test_format_reward_uses_prompt_style_and_pattern_override():
    line_ex = load_task("arithmetic", "test", 1, style="fewshot_line")[0]
    tag_ex = load_task("arithmetic", "test", 1, style="fewshot_tag")[0]
    b = batch(["Answer: 3", "<answer>3</answer>", "Answer: 3"], [line_ex, tag_ex, tag_ex])
    assert REWARDS.get("format")(b) == [1.0, 1.0, 0.0]
    assert REWARDS.get("format")(b, pattern=r"^Answer: \d+$") == [1.0, 0.0, 1.0]


def test_score_weighted_sum_by_hand():
    b = batch(
        ["Answer: 7", "Answer: 8", "7"],
        lengths=[10, 45, 48],
        truncated=[False, False, True],
        max_new_tokens=48,
    )
    total, per = score(
        b, [("correctness", 1.0, {}), ("format", 0.5, {}), ("length", 2.0, {"cache": 8})]
    )
    assert per["correctness"].tolist() == [1.0, 0.0, 1.0]
    assert per["format"].tolist() == [1.0, 1.0, 0.0]
    assert per["length"].tolist() == pytest.approx([0.0, -5 / 8, -1.0])
    # total = 1*c + 0.5*f + 2*l
    assert total.tolist() == pytest.approx([1.5, 0.5 - 1.25, 1.0 - 2.0])
    assert total.dtype == torch.float32 and total.shape == (3,)


def test_score_spec_forms_and_duplicate_names():
    b = batch(["Answer: 7"])
    total, per = score(b, ["correctness", ("correctness", 2.0)])
    assert list(per) == ["correctness", "correctness#2"]
    assert total.tolist() == [3.0]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a reward module with a unique name and put it on sys.path."""
    name = f"my_rewards_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent("""
        import math

        def exact(completions, answers, *, bonus=0.0):
            return [float(c.strip() == a) + bonus for c, a in zip(completions, answers)]

        def with_examples(completions, answers, examples):
            return [float(len(e.id)) for e in examples]

        def everything(completions, answers, **kw):
            return [float(len(kw)) for _ in completions]

        def too_few(completions, answers):
            return [1.0]

        def nan(completions, answers):
            return [math.nan for _ in completions]

        def one_arg(completions):
            return [0.0 for _ in completions]

        NOT_CALLABLE = 3
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_reward_by_import_path(user_module):
    b = batch(
        ["7", "8"],
        [Example(id="a", prompt="p", answer="7"), Example(id="abc", prompt="p", answer="8")],
    )
    total, per = score(b, [(f"{user_module}:exact", 2.0, {"bonus": 0.5})])
    assert per[f"{user_module}:exact"].tolist() == [1.5, 1.5]
    assert total.tolist() == [3.0, 3.0]
    _, per = score(b, [(f"{user_module}:with_examples", 1.0, {})])
    assert per[f"{user_module}:with_examples"].tolist() == [1.0, 3.0]
    _, per = score(b, [f"{user_module}:everything"])
    assert per[f"{user_module}:everything"].tolist() == [5.0, 5.0]  # all five extras
    assert resolve_reward(f"{user_module}:exact").user_fn.__name__ == "exact"


@pytest.mark.parametrize(
    "suffix,match",
    [
        (":too_few", r":too_few' returned 1 values for 2 completions"),
        (":nan", r":nan' returned non-finite values at positions \[0, 1\]"),
        (":missing", r":missing': module '\w+' has no attribute 'missing'"),
        (":NOT_CALLABLE", r":NOT_CALLABLE': 'NOT_CALLABLE' is not callable"),
        (":one_arg", r":one_arg': a user reward takes \(completions, answers, \*\*kw\)"),
    ],
)
def test_user_reward_errors_name_the_reward(user_module, suffix, match):
    with pytest.raises(ValueError, match=f"reward '{user_module}{match}"):
        score(batch(["7", "8"]), [(user_module + suffix, 1.0, {})])


def test_spec_validation_errors(user_module):
    with pytest.raises(
        KeyError, match="unknown reward 'corectness'; valid names: correctness, format, length"
    ):
        resolve_specs([("corectness", 1.0, {})])
    with pytest.raises(ValueError, match="reward 'length' does not accept 'cach'; allowed: cache"):
        resolve_specs([("length", 1.0, {"cach": 4})])
    with pytest.raises(ValueError, match="does not accept 'boost'; allowed: bonus"):
        resolve_specs([(f"{user_module}:exact", 1.0, {"boost": 1})])
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod_xyz'"):
        resolve_specs(["no_such_mod_xyz:fn"])
    with pytest.raises(ValueError, match="weight must be a finite number"):
        resolve_specs([("format", float("inf"), {})])
    with pytest.raises(ValueError, match="expected name"):
        resolve_specs([("format", 1.0, {}, "extra")])
    with pytest.raises(ValueError, match="no rewards"):
        resolve_specs([])


def test_score_batch_checks_alignment():
    with pytest.raises(ValueError, match="lengths has 1 entries, completions has 2"):
        ScoreBatch(["a", "b"], [Example("1", "p", "1")] * 2, [1], [False, False], 8)
