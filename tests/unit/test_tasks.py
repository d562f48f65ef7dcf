"""Procedural tasks: determinism, disjoint splits, answer checking, safe evaluation."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmpo.data.examples import Example, to_messages
from lmpo.data.tasks import (
    ARITH_LEVELS,
    COUNTDOWN_LEVELS,
    STYLES,
    TASKS,
    _generate,
    extract_answer,
    extract_number,
    load_task,
    safe_eval,
    split_of,
    task_params,
)

RENDER = {
    "line": lambda a: f"Let me work it out.\nAnswer: {a}",
    "tag": lambda a: f"Working...\n<answer>{a}</answer>",
    "bare": lambda a: f"{a}",
}


def configs():
    for d in ARITH_LEVELS:
        yield "arithmetic", {"difficulty": d}
    yield "word_problems", {}
    for d in COUNTDOWN_LEVELS:
        yield "countdown", {"difficulty": d}


CONFIGS = list(configs())
IDS = [f"{t}-{p.get('difficulty', '')}" for t, p in CONFIGS]


def test_registry_has_the_three_tasks():
    assert set(TASKS.names()) == {"arithmetic", "word_problems", "countdown"}


@pytest.mark.parametrize("task,params", CONFIGS, ids=IDS)
def test_same_seed_same_examples_and_prefix_property(task, params):
    a = load_task(task, "train", 30, seed=3, **params)
    b = load_task(task, "train", 30, seed=3, **params)
    assert a == b
    assert load_task(task, "train", 10, seed=3, **params) == a[:10]
    c = load_task(task, "train", 30, seed=4, **params)
    assert [e.meta["key"] for e in a] != [e.meta["key"] for e in c]
    assert len({e.meta["key"] for e in a}) == 30  # distinct within a call
    assert len({e.id for e in a}) == 30


@pytest.mark.parametrize("task,params", CONFIGS, ids=IDS)
def test_train_and_test_never_overlap(task, params):
    test = load_task(task, "test", 100, **params)
    train = [e for s in (0, 1) for e in load_task(task, "train", 500, seed=s, **params)]
    test_keys = {e.meta["key"] for e in test}
    assert test_keys.isdisjoint(e.meta["key"] for e in train)
    assert all(split_of(task, k) == "test" for k in test_keys)


def test_split_is_independent_of_difficulty_and_seed():
    # the same canonical problem text lands in the same split at every level
    keys = {
        e.meta["key"]
        for d in (1, 2)
        for e in load_task("arithmetic", "test", 200, seed=9, difficulty=d)
    }
    train = {
        e.meta["key"] for d in (1, 2) for e in load_task("arithmetic", "train", 2000, difficulty=d)
    }
    assert keys.isdisjoint(train)


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("task,params", CONFIGS, ids=IDS)
def test_check_accepts_gold_and_rejects_wrong(task, params, style):
    t = TASKS.get(task)
    for ex in load_task(task, "test", 15, style=style, **params):
        fmt = ex.meta["answer_format"]
        assert t.check(RENDER[fmt](ex.answer), ex) == 1.0, (ex, fmt)
        if task == "countdown":
            wrong = f"{ex.answer} + 1"
        else:
            wrong = str(int(ex.answer) + 1)
        assert t.check(RENDER[fmt](wrong), ex) == 0.0
        assert t.check("I don't know.", ex) == 0.0


@pytest.mark.parametrize("style", list(STYLES))
def test_prompts_render_as_chat_messages(style):
    ex = load_task("word_problems", "test", 1, style=style)[0]
    msgs = to_messages(ex.prompt)
    assert msgs[-1]["role"] == "user" and "?" in msgs[-1]["content"]
    assert all(m["role"] in ("system", "user", "assistant") for m in msgs)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    difficulty=st.sampled_from(sorted(ARITH_LEVELS)),
    delta=st.integers(-50, 50).filter(bool),
    fmt=st.sampled_from(sorted(RENDER)),
)
def test_arithmetic_check_property(seed, difficulty, delta, fmt):
    ex = load_task("arithmetic", "train", 1, seed=seed, difficulty=difficulty)[0]
    value, _ = safe_eval(ex.meta["key"])
    assert Fraction(int(ex.answer)) == value
    check = TASKS.get("arithmetic").check
    assert check(RENDER[fmt](ex.answer), ex) == 1.0
    assert check(RENDER[fmt](int(ex.answer) + delta), ex) == 0.0
    assert check(f"{ex.meta['key']} = {ex.answer}", ex) == 1.0  # no answer line: after '='


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), difficulty=st.sampled_from(sorted(COUNTDOWN_LEVELS)))
def test_countdown_generator_solutions_are_valid(seed, difficulty):
    ex = load_task("countdown", "train", 1, seed=seed, difficulty=difficulty)[0]
    k, (lo, hi), _, max_target = COUNTDOWN_LEVELS[difficulty]
    nums, target = ex.meta["numbers"], ex.meta["target"]
    assert len(nums) == k and all(lo <= x <= hi for x in nums)
    assert 1 <= target <= max_target and str(target) == ex.meta["key"].split("->")[1]
    value, used = safe_eval(ex.answer)
    assert value == target and sorted(used) == sorted(nums)
    check = TASKS.get("countdown").check
    assert check(f"<answer>{ex.answer}</answer>", ex) == 1.0
    assert check(f"Answer: {ex.answer} = {target}", ex) == 1.0
    assert (
        check(f"Answer: {target}", ex) == 0.0
    )  # the bare target is not an expression of the numbers


@settings(max_examples=80, deadline=None)
@given(
    nums=st.lists(st.integers(1, 30), min_size=2, max_size=4),
    ops=st.lists(st.sampled_from("+-*/"), min_size=3, max_size=3),
)
def test_countdown_check_accepts_any_valid_expression(nums, ops):
    expr = str(nums[0])
    for x, op in zip(nums[1:], ops[: len(nums) - 1], strict=True):
        expr = f"({expr} {op} {x})"
    value, _ = safe_eval(expr)
    ex = Example(
        id="h",
        prompt="p",
        answer=expr,
        task="countdown",
        meta={"numbers": nums + [99], "target": value},
    )
    check = TASKS.get("countdown").check
    assert check(f"Answer: {expr}", ex) == 1.0  # exact Fraction target, numbers within the given
    reused = f"{expr} + {nums[0]} - {nums[0]}"  # same value, but a number used too often
    if nums.count(nums[0]) == 1:
        assert check(f"Answer: {reused}", ex) == 0.0


def _cd_example(nums=(3, 5, 8), target=19):
    return Example(
        id="c",
        prompt="p",
        answer="3 * 8 - 5",
        task="countdown",
        meta={"numbers": list(nums), "target": target},
    )


@pytest.mark.parametrize(
    "completion",
    [
        "Answer: 8 + 8 + 3",  # 8 used twice
        "Answer: 3 * 8 - 5 + 0",  # 0 is not given
        "Answer: __import__('os').system('echo hi')",
        "<answer>exec('1')</answer>",
        "Answer: 3 ** 2 + 10",
        "Answer: -5 + 24",  # unary minus and a number not given
        "Answer: 19",
        "Answer: 3.0 * 8 - 5",  # float literal
        "Answer: (3 * 8 - 5",  # syntax error
        "Answer: 3 / (8 - 8)",  # division by zero
        "Answer: " + "(" * 500 + "3" + ")" * 500,
        "",
    ],
)
def test_countdown_rejects_invalid(completion):
    assert TASKS.get("countdown").check(completion, _cd_example()) == 0.0


@pytest.mark.parametrize(
    "completion",
    [
        "Answer: 3 * 8 - 5",
        "<answer>8 × 3 − 5</answer>",
        "3 x 8 - 5 = 19",
        "Answer: (8*3)-5.",
        "First 3 * 8 = 24.\nAnswer: 24 - 5",  # not all numbers used? 24 is not given -> reject below
    ],
)
def test_countdown_accepts_notations(completion):
    expected = 0.0 if "24 - 5" in completion else 1.0
    assert TASKS.get("countdown").check(completion, _cd_example()) == expected


def test_countdown_fraction_exact():
    ex = _cd_example(nums=(1, 3, 6), target=2)
    assert TASKS.get("countdown").check("Answer: 6 * (1 / 3)", ex) == 1.0
    assert TASKS.get("countdown").check("Answer: 6 / 3 / 1", ex) == 1.0


@pytest.mark.parametrize(
    "text,expected",
    [
        ("23 + 48 = 71\nAnswer: 71", 71),
        ("Answer: 1,234.", 1234),
        ("<answer> -5 </answer> and later 7", -5),
        ("The answer is: 42 apples", 42),
        ("12 + 7 = 19", 19),
        ("I think it is 3 or maybe 4", 4),
        ("**Answer:** 12 + 7 = 19", 19),
        ("Answer: 1/2", Fraction(1, 2)),
        ("no digits here", None),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == (None if expected is None else Fraction(expected))


def test_extract_answer_prefers_last_tag():
    assert extract_answer("<answer>1</answer> x <answer>2</answer>") == "2"
    assert extract_answer("Answer: 3\nAnswer: 4\nbye") == "4"
    assert extract_answer("nothing") is None


def test_load_task_errors():
    with pytest.raises(KeyError, match="valid names: arithmetic, countdown, word_problems"):
        load_task("nope", "train", 1)
    with pytest.raises(ValueError, match="does not accept 'difficulty'.*allowed: style"):
        load_task("word_problems", "train", 1, difficulty=2)
    with pytest.raises(ValueError, match="does not accept 'dificulty'"):
        load_task("arithmetic", "train", 1, dificulty=2)
    with pytest.raises(ValueError, match="unknown split"):
        load_task("arithmetic", "validation", 1)
    with pytest.raises(ValueError, match="difficulty must be one of"):
        load_task("arithmetic", "train", 1, difficulty=9)
    with pytest.raises(ValueError, match="unknown prompt style"):
        load_task("countdown", "train", 1, style="fancy")


def test_task_params_lists_make_keywords():
    assert task_params("arithmetic") == {
        "difficulty": 1,
        "style": task_params("countdown")["style"],
    }
    assert set(task_params("word_problems")) == {"style"}


def test_too_small_problem_space_fails_clearly():
    def draw(rng):
        k = str(rng.randint(0, 50))
        return k, int(k)

    found = _generate("toy", "test", 0, 0, {}, draw)
    assert found == []
    with pytest.raises(ValueError, match="found only .* distinct test problems"):
        _generate("toy", "test", 50, 0, {}, draw)
