"""Procedurally generated tasks with verifiable answers and fixed, disjoint train/test splits.

Every task has ``name``, ``make(split, n, *, seed=0, **params) -> list[Example]`` and
``check(completion, example) -> float`` (1.0 if the completion's final answer is right,
else 0.0). Tasks live in the ``TASKS`` registry; ``load_task`` validates parameters with
``inspect`` before generating anything.

Splits. Each candidate problem is drawn from its own RNG seeded by a hash of
``(task, split, seed, params, draw index)``. Whether a problem belongs to ``train`` or
``test`` is decided by a hash of its *canonical key* alone (e.g. ``"12 + 7"``), so a test
problem can never appear in any train split, whatever the seeds, sizes or difficulties.
About ``TEST_PERCENT`` % of the problem space is test. Within one ``make`` call the
problems are distinct, and ``make(split, n)`` is a prefix of ``make(split, n + k)``.

Prompts. The prompt style is a parameter (``style``); the default was chosen by
measuring the embedded SmolLM2-135M-Instruct (see docs/results/task-calibration.md):
a short system instruction, one worked example as a previous chat turn, and the final
answer on an ``Answer: <x>`` line. Answers are extracted leniently (see
``extract_answer``) so that reward reflects arithmetic, not formatting; the ``format``
reward in ``lmpo.rewards`` grades the format separately.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import random
import re
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Protocol

from lmpo.data.examples import Example
from lmpo.registry import Registry

SPLITS = ("train", "test")
TEST_PERCENT = 10
DEFAULT_STYLE = "fewshot_line"
STALL_DRAWS = 20_000  # give up after this many draws in a row without a new problem


class Task(Protocol):
    name: str

    def make(self, split: str, n: int, *, seed: int = 0, **params: Any) -> list[Example]: ...

    def check(self, completion: str, example: Example) -> float: ...


TASKS: Registry = Registry("task")


# --------------------------------------------------------------------------- answers

_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_ANSWER_RE = re.compile(r"answer(?:\s+is)?\s*\**\s*[:：]", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\d.])-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def extract_answer(text: str) -> str | None:
    """The span holding the final answer: last <answer>..</answer>, else the rest of the
    line after the last 'Answer:' (or 'answer is:'), else None."""
    tags = _TAG_RE.findall(text)
    if tags:
        return tags[-1].strip()
    marks = list(_ANSWER_RE.finditer(text))
    if marks:
        rest = text[marks[-1].end() :]
        return rest.strip().split("\n", 1)[0].strip()
    return None


def _to_fraction(token: str) -> Fraction | None:
    token = token.replace(",", "")
    try:
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def extract_number(text: str) -> Fraction | None:
    """The model's final numeric answer, leniently.

    Take the answer span (``extract_answer``) if there is one, else the whole text; inside
    it, the first number after the last '=' if there is an '=', else (for a span) the first
    number, (for the whole text) the last number. Thousands commas are ignored.
    """
    span = extract_answer(text)
    whole = span is None
    seg = text if whole else span
    if "=" in seg:
        seg, whole = seg.rsplit("=", 1)[1], False
    nums = _NUMBER_RE.findall(seg)
    if not nums:
        return None
    return _to_fraction(nums[-1] if whole else nums[0])


def check_number(completion: str, gold: str | int | Fraction) -> float:
    """1.0 if the extracted number equals the gold number exactly, else 0.0."""
    got = extract_number(completion)
    want = Fraction(gold) if not isinstance(gold, Fraction) else gold
    return 1.0 if got is not None and got == want else 0.0


# --------------------------------------------------------------- safe expression eval

_BINOPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
MAX_EXPR_CHARS = 200


def normalize_expression(text: str) -> str:
    """Map the usual typographic operators to Python's and drop a trailing period."""
    text = text.strip().strip("$`").strip()
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-").replace("–", "-")
    text = text.replace("\\times", "*").replace("\\div", "/").replace("\\cdot", "*")
    text = re.sub(r"(?<=[\d)\s])[xX](?=[\s\d(])", "*", text)
    return text.rstrip(". ")


def safe_eval(expr: str) -> tuple[Fraction, list[int]]:
    """Evaluate an arithmetic expression exactly; return (value, integer literals used).

    Only integer literals, + - * / and parentheses are accepted (parsed with ``ast``,
    never executed). Raises ValueError for anything else, including division by zero.
    """
    expr = normalize_expression(expr)
    if not expr or len(expr) > MAX_EXPR_CHARS:
        raise ValueError("empty or too long expression")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ValueError(f"not an expression: {e}") from None
    used: list[int] = []

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError("division by zero")
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"disallowed syntax: {type(node).__name__}")

    return ev(tree.body), used


def is_submultiset(used: list[int], given: list[int]) -> bool:
    return not (Counter(used) - Counter(given))


# ------------------------------------------------------------------------ prompts

FORMATS: dict[str, tuple[str, Callable[[str], str]]] = {
    # name: (instruction, how a final answer is written)
    "line": ("End your reply with 'Answer: <{what}>'.", lambda a: f"Answer: {a}"),
    "tag": (
        "Put the final {what} inside <answer></answer> tags.",
        lambda a: f"<answer>{a}</answer>",
    ),
}

# style -> (answer format or None for bare, one solved example as a previous turn?,
#           does that example show its working?)
STYLES: dict[str, tuple[str | None, bool, bool]] = {
    "bare": (None, False, False),
    "line": ("line", False, False),
    "tag": ("tag", False, False),
    "fewshot_line": ("line", True, True),
    "fewshot_tag": ("tag", True, True),
    "fewshot_line_short": ("line", True, False),
}
SYSTEM_PROMPT = "Solve the problem."


def build_prompt(
    style: str, question: str, *, what: str, demo: tuple[str, str, str]
) -> str | list[dict]:
    """Render one question in a prompt style.

    demo = (question, short working, answer) of a solved example, used by few-shot styles.
    """
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; valid: {', '.join(STYLES)}")
    fmt, fewshot, working = STYLES[style]
    if fmt is None:
        return f"{question}\nAnswer with just the {what}."
    instruction, render = FORMATS[fmt]
    instruction = instruction.format(what=what)
    if not fewshot:
        return f"{question}\n{instruction}"
    dq, dwork, dans = demo
    reply = f"{dwork}\n{render(dans)}" if working else render(dans)
    return [
        {"role": "system", "content": f"{SYSTEM_PROMPT} {instruction}"},
        {"role": "user", "content": dq},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": question},
    ]


def answer_format(style: str) -> str:
    """The answer format a prompt style asks for: 'line', 'tag' or 'bare'."""
    return STYLES[style][0] or "bare"


# ------------------------------------------------------------------- generation core


def _hash_int(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def split_of(task: str, key: str) -> str:
    """'test' for about TEST_PERCENT % of canonical keys, else 'train' (seed-independent)."""
    return "test" if _hash_int("split", task, key) % 100 < TEST_PERCENT else "train"


def _generate(
    task: str,
    split: str,
    n: int,
    seed: int,
    params: dict[str, Any],
    draw: Callable[[random.Random], tuple[str, Any]],
) -> list[tuple[str, Any]]:
    """n distinct (key, problem) pairs of ``split``; draw i uses its own hash-seeded RNG."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pkey = ",".join(f"{k}={params[k]}" for k in sorted(params))
    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    i = last_new = 0
    while len(out) < n:
        if i - last_new > STALL_DRAWS:
            raise ValueError(
                f"{task}: found only {len(out)} distinct {split} problems with {pkey or 'defaults'} "
                f"(asked for {n}); the problem space is too small, raise the difficulty"
            )
        key, problem = draw(random.Random(_hash_int(task, split, seed, pkey, i)))
        i += 1
        if key in seen or split_of(task, key) != split:
            continue
        seen.add(key)
        out.append((key, problem))
        last_new = i
    return out


def _check_level(name: str, value: int, levels: dict) -> None:
    if value not in levels:
        raise ValueError(f"{name}: difficulty must be one of {sorted(levels)}, got {value!r}")


# ------------------------------------------------------------------------ arithmetic

# difficulty -> (operand counts, operand range, operators, allow parentheses)
ARITH_LEVELS: dict[int, tuple[tuple[int, int], tuple[int, int], str, bool]] = {
    1: ((2, 2), (1, 99), "+-", False),
    2: ((2, 2), (10, 999), "+-*", False),
    3: ((3, 3), (1, 99), "+-*", False),
    4: ((3, 4), (1, 999), "+-*", False),
    5: ((4, 5), (1, 999), "+-*", True),
}


ARITH_FACTOR_MAX = {1: 9, 2: 9, 3: 9, 4: 12, 5: 99}


class Arithmetic:
    """Integer arithmetic expressions; answers are exact integers.

    difficulty 1: a ± b with 1-2 digit operands (a >= b for subtraction);
    2: two 2-3 digit operands with + or -, or a 2-digit times a 1-digit number;
    3: three 1-2 digit operands with + - * (a * factor is 1 digit);
    4: three or four 1-3 digit operands with + - * (a * factor is at most 12);
    5: four or five operands with + - * and parentheses.
    """

    name = "arithmetic"

    def _draw(self, rng: random.Random, difficulty: int) -> tuple[str, Any]:
        (kmin, kmax), (lo, hi), ops, parens = ARITH_LEVELS[difficulty]
        k = rng.randint(kmin, kmax)
        if k == 2:
            op = rng.choice(ops)
            if op == "*":
                a, b = rng.randint(10, 99), rng.randint(2, 9)
            else:
                a, b = rng.randint(lo, hi), rng.randint(lo, hi)
                if op == "-" and a < b:
                    a, b = b, a
            expr = f"{a} {op} {b}"
        else:
            terms = [str(rng.randint(lo, hi))]
            for _ in range(k - 1):
                op = rng.choice(ops)
                if op == "*":  # a small factor keeps products doable in one's head
                    terms += [op, str(rng.randint(2, ARITH_FACTOR_MAX[difficulty]))]
                else:
                    terms += [op, str(rng.randint(lo, hi))]
            if parens and k >= 3:
                j = 2 * rng.randint(0, k - 2)  # wrap one adjacent pair of operands
                terms[j] = "(" + terms[j]
                terms[j + 2] = terms[j + 2] + ")"
            expr = " ".join(terms)
        value, _ = safe_eval(expr)
        return expr, int(value)

    def make(
        self, split: str, n: int, *, seed: int = 0, difficulty: int = 1, style: str = DEFAULT_STYLE
    ) -> list[Example]:
        _check_level(self.name, difficulty, ARITH_LEVELS)
        build_prompt(style, "", what="number", demo=("", "", ""))  # validate style early
        probs = _generate(
            self.name,
            split,
            n,
            seed,
            {"difficulty": difficulty},
            lambda rng: self._draw(rng, difficulty),
        )
        demo = ("What is 23 + 48?", "23 + 48 = 71", "71")
        return [
            Example(
                id=f"{self.name}-d{difficulty}-{split}-{seed}-{i}",
                prompt=build_prompt(style, f"What is {expr}?", what="number", demo=demo),
                answer=str(value),
                task=self.name,
                meta={"key": expr, "difficulty": difficulty, "answer_format": answer_format(style)},
            )
            for i, (expr, value) in enumerate(probs)
        ]

    def check(self, completion: str, example: Example) -> float:
        return check_number(completion, example.answer)


# --------------------------------------------------------------------- word problems

NAMES = [
    "Ana",
    "Ben",
    "Carla",
    "Dev",
    "Emma",
    "Finn",
    "Gia",
    "Hugo",
    "Ivy",
    "Jon",
    "Kira",
    "Leo",
    "Maya",
    "Noah",
    "Omar",
    "Pia",
    "Ravi",
    "Sara",
    "Tom",
    "Uma",
    "Vera",
    "Will",
    "Yara",
    "Zoe",
]


def _wp_shopping(r: random.Random) -> tuple[str, int, tuple[int, ...]]:
    a, b = r.randint(2, 6), r.randint(2, 10)
    c = r.randint(1, a * b - 1)
    return (
        "{n} buys {a} bags of apples with {b} apples in each bag, then eats {c} apples. "
        "How many apples does {n} have left?",
        a * b - c,
        (a, b, c),
    )


def _wp_money(r: random.Random) -> tuple[str, int, tuple[int, ...]]:
    a, b = r.randint(2, 5), r.randint(2, 9)
    m = a * b + r.randint(1, 30)
    return (
        "{n} has {d} dollars and buys {a} pens that cost {b} dollars each. "
        "How many dollars does {n} have left?",
        m - a * b,
        (m, a, b),
    )


def _wp_sharing(r: random.Random) -> tuple[str, int, tuple[int, ...]]:
    c, q = r.randint(2, 6), r.randint(2, 10)
    total = c * q
    a = r.randint(1, total - 1)
    return (
        "{n} has {a} cookies and bakes {b} more, then shares all of them equally among "
        "{c} friends. How many cookies does each friend get?",
        q,
        (a, total - a, c),
    )


def _wp_ages(r: random.Random) -> tuple[str, int, tuple[int, ...]]:
    a, b, c = r.randint(3, 15), r.randint(2, 30), r.randint(2, 20)
    return (
        "{n} is {a} years old. {m} is {b} years older than {n}. How old will {m} be in {c} years?",
        a + b + c,
        (a, b, c),
    )


def _wp_mother(r: random.Random) -> tuple[str, int, tuple[int, ...]]:
    a, k = r.randint(3, 12), r.randint(2, 4)
    c = r.randint(1, a * k - 1)
    return (
        "{n} is {a} years old and {n}'s mother is {k} times as old. "
        "How old was the mother {c} years ago?",
        a * k - c,
        (a, k, c),
    )


def _wp_garden(r: random.Random) -> tuple[str, int, tuple[int, ...]]:
    a, b, c = r.randint(2, 9), r.randint(2, 9), r.randint(1, 20)
    return (
        "A garden has {a} rows with {b} flowers in each row. {n} plants {c} more flowers. "
        "How many flowers are in the garden now?",
        a * b + c,
        (a, b, c),
    )


def _wp_savings(r: random.Random) -> tuple[str, int, tuple[int, ...]]:
    a, b = r.randint(2, 10), r.randint(2, 8)
    c = r.randint(1, a * b - 1)
    return (
        "{n} saves {a} dollars every week for {b} weeks, then spends {c} dollars on a game. "
        "How many dollars does {n} have left?",
        a * b - c,
        (a, b, c),
    )


def _wp_books(r: random.Random) -> tuple[str, int, tuple[int, ...]]:
    a, b = r.randint(5, 40), r.randint(1, 20)
    c = r.randint(1, a + b - 1)
    return (
        "A shelf holds {a} books. {n} adds {b} books and then takes away {c} books. "
        "How many books are on the shelf now?",
        a + b - c,
        (a, b, c),
    )


def _wp_marbles(r: random.Random) -> tuple[str, int, tuple[int, ...]]:
    a, b, c = r.randint(1, 20), r.randint(2, 5), r.randint(2, 6)
    d = r.randint(1, a + b * c - 1)
    return (
        "{n} has {a} marbles. {m} gives {n} {b} bags with {c} marbles in each bag. "
        "Then {n} loses {d} marbles. How many marbles does {n} have now?",
        a + b * c - d,
        (a, b, c, d),
    )


WORD_TEMPLATES: dict[str, Callable[[random.Random], tuple[str, int, tuple[int, ...]]]] = {
    "shopping": _wp_shopping,
    "money": _wp_money,
    "sharing": _wp_sharing,
    "ages": _wp_ages,
    "mother": _wp_mother,
    "garden": _wp_garden,
    "savings": _wp_savings,
    "books": _wp_books,
    "marbles": _wp_marbles,
}
_FIELDS = {
    "shopping": "abc",
    "money": "dab",
    "sharing": "abc",
    "ages": "abc",
    "mother": "akc",
    "garden": "abc",
    "savings": "abc",
    "books": "abc",
    "marbles": "abcd",
}


class WordProblems:
    """Two- and three-step word problems with small integers (shopping, sharing, ages, ...).

    The canonical key is the template plus its numbers (names are cosmetic), so a test
    problem never reappears in train under other names.
    """

    name = "word_problems"

    def _draw(self, rng: random.Random) -> tuple[str, Any]:
        tid = rng.choice(sorted(WORD_TEMPLATES))
        text, answer, nums = WORD_TEMPLATES[tid](rng)
        n, m = rng.sample(NAMES, 2)
        fields = dict(zip(_FIELDS[tid], nums, strict=True))
        return f"{tid}:{','.join(map(str, nums))}", (text.format(n=n, m=m, **fields), answer)

    def make(
        self, split: str, n: int, *, seed: int = 0, style: str = DEFAULT_STYLE
    ) -> list[Example]:
        build_prompt(style, "", what="number", demo=("", "", ""))
        probs = _generate(self.name, split, n, seed, {}, self._draw)
        demo = (
            "Mia has 12 stickers and buys 3 packs with 4 stickers in each pack. "
            "How many stickers does Mia have now?",
            "3 * 4 = 12, 12 + 12 = 24",
            "24",
        )
        return [
            Example(
                id=f"{self.name}-{split}-{seed}-{i}",
                prompt=build_prompt(style, text, what="number", demo=demo),
                answer=str(answer),
                task=self.name,
                meta={"key": key, "answer_format": answer_format(style)},
            )
            for i, (key, (text, answer)) in enumerate(probs)
        ]

    def check(self, completion: str, example: Example) -> float:
        return check_number(completion, example.answer)


# ------------------------------------------------------------------------- countdown

# difficulty -> (how many numbers, number range, operators, max target)
COUNTDOWN_LEVELS: dict[int, tuple[int, tuple[int, int], str, int]] = {
    1: (3, (1, 20), "+-", 60),
    2: (3, (1, 12), "+-*", 100),
    3: (4, (1, 15), "+-*", 200),
    4: (4, (1, 25), "+-*/", 500),
}


def countdown_candidate(text: str) -> list[str]:
    """Candidate expressions in a completion, most likely first.

    The answer span (tag / 'Answer:' line) if present, else the last non-empty line;
    when it contains '=', each side is a candidate (e.g. '3 + 4 * 5 = 23').
    """
    span = extract_answer(text)
    if span is None:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        span = lines[-1] if lines else ""
    return [p for p in (s.strip() for s in span.split("=")) if p]


class Countdown:
    """Reach a target with + - * / using each given number at most once.

    The target is the value of a random expression over all the numbers, so a solution
    exists (any valid expression is accepted; the gold ``answer`` is that expression).
    ``check`` parses the expression with an ``ast`` whitelist (no code is executed),
    requires the literals used to be a sub-multiset of the given numbers and the exact
    (Fraction) value to equal the target.
    """

    name = "countdown"

    def _draw(self, rng: random.Random, difficulty: int) -> tuple[str, Any]:
        k, (lo, hi), ops, max_target = COUNTDOWN_LEVELS[difficulty]
        while True:
            nums = [rng.randint(lo, hi) for _ in range(k)]
            parts = [(str(x), Fraction(x)) for x in nums]
            rng.shuffle(parts)
            ok = True
            while len(parts) > 1:
                i = rng.randrange(len(parts) - 1)
                (ea, va), (eb, vb) = parts[i], parts[i + 1]
                op = rng.choice(ops)
                if op == "/" and (vb == 0 or (va / vb).denominator != 1):
                    op = "+"
                if op == "-" and va < vb:
                    (ea, va), (eb, vb) = (eb, vb), (ea, va)
                val = _BINOPS[{"+": ast.Add, "-": ast.Sub, "*": ast.Mult, "/": ast.Div}[op]](va, vb)
                wrap = len(parts) > 2
                expr = f"({ea} {op} {eb})" if wrap else f"{ea} {op} {eb}"
                parts[i : i + 2] = [(expr, val)]
            expr, target = parts[0]
            if target.denominator != 1 or not (1 <= target <= max_target) or int(target) in nums:
                ok = False
            if ok:
                break
        key = f"{sorted(nums)}->{int(target)}"
        return key, (nums, int(target), expr)

    def make(
        self, split: str, n: int, *, seed: int = 0, difficulty: int = 1, style: str = DEFAULT_STYLE
    ) -> list[Example]:
        _check_level(self.name, difficulty, COUNTDOWN_LEVELS)
        build_prompt(style, "", what="expression", demo=("", "", ""))
        probs = _generate(
            self.name,
            split,
            n,
            seed,
            {"difficulty": difficulty},
            lambda rng: self._draw(rng, difficulty),
        )
        demo = (
            "Using the numbers 3, 5, 8 (each at most once) and + - * /, make 19.",
            "3 * 8 = 24, 24 - 5 = 19",
            "3 * 8 - 5",
        )
        out = []
        for i, (key, (nums, target, expr)) in enumerate(probs):
            q = (
                f"Using the numbers {', '.join(map(str, nums))} (each at most once) and "
                f"+ - * /, make {target}."
            )
            out.append(
                Example(
                    id=f"{self.name}-d{difficulty}-{split}-{seed}-{i}",
                    prompt=build_prompt(style, q, what="expression", demo=demo),
                    answer=expr,
                    task=self.name,
                    meta={
                        "key": key,
                        "numbers": nums,
                        "target": target,
                        "difficulty": difficulty,
                        "answer_format": answer_format(style),
                    },
                )
            )
        return out

    def check(self, completion: str, example: Example) -> float:
        nums, target = example.meta["numbers"], example.meta["target"]
        for cand in countdown_candidate(completion):
            try:
                value, used = safe_eval(cand)
            except ValueError:
                continue
            if used and value == target and is_submultiset(used, nums):
                return 1.0
        return 0.0


for _task in (Arithmetic(), WordProblems(), Countdown()):
    TASKS.register(_task.name)(_task)


# ------------------------------------------------------------------------- loading


def task_params(name: str) -> dict[str, Any]:
    """Keyword parameters of a task's ``make`` (beyond split/n/seed) with defaults."""
    sig = inspect.signature(TASKS.get(name).make)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seed"
    }


def check_task_params(name: str, params: dict[str, Any]) -> None:
    """Raise ValueError naming unknown parameters (and the allowed ones) before any work."""
    allowed = task_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"task {name!r} does not accept {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
        )


def load_task(name: str, split: str, n: int, seed: int = 0, **params: Any) -> list[Example]:
    """Generate ``n`` examples of task ``name`` (KeyError lists the valid task names)."""
    task = TASKS.get(name)
    check_task_params(name, params)
    return task.make(split, n, seed=seed, **params)


def check_example(completion: str, example: Example) -> float:
    """Grade with the example's task (which must be registered)."""
    return float(TASKS.get(example.task).check(completion, example))
