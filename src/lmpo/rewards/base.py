"""Reward functions: one signature, a registry, user functions by import path, weighted sums.

Every reward has the signature ``fn(batch: ScoreBatch, *, <params>) -> list[float]`` (one
value per completion) and is registered in ``REWARDS`` under a name. A spec
``(name_or_import_path, weight, params)`` selects one; ``resolve_specs`` checks names and
params before any model loads, ``score`` computes the weighted sum and keeps each
reward's raw (unweighted) values for logging.

User rewards are named ``"package.module:function"`` and follow TRL's convention::

    def my_reward(completions: list[str], answers: list[str], **kw) -> list[float]: ...

The function is called with the completions and gold answers positionally, the spec's
params as keywords, and, if it declares them by name (or takes ``**kwargs``), these
extras: ``examples`` (list[Example]), ``prompts``, ``lengths`` (completion tokens),
``truncated``, ``max_new_tokens``.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmpo.data.examples import Example
from lmpo.registry import Registry


@dataclass
class ScoreBatch:
    """The B completions to score, aligned with their examples.

    completions:    decoded completion texts (special tokens stripped).
    examples:       the example each completion answers (repeated G times for a group).
    lengths:        completion lengths in tokens (EOS counted if generated).
    truncated:      True where generation stopped at max_new_tokens without EOS.
    max_new_tokens: the generation budget (L_max of the DAPO length penalty).
    """

    completions: list[str]
    examples: list[Example]
    lengths: list[int]
    truncated: list[bool]
    max_new_tokens: int

    def __post_init__(self) -> None:
        b = len(self.completions)
        for name in ("examples", "lengths", "truncated"):
            if len(getattr(self, name)) != b:
                raise ValueError(
                    f"ScoreBatch: {name} has {len(getattr(self, name))} entries, "
                    f"completions has {b}"
                )

    def __len__(self) -> int:
        return len(self.completions)


RewardFn = Callable[..., list[float]]
REWARDS: Registry = Registry("reward")

USER_EXTRAS = ("examples", "prompts", "lengths", "truncated", "max_new_tokens")


def _user_extras(batch: ScoreBatch) -> dict[str, Any]:
    return {
        "examples": batch.examples,
        "prompts": [e.prompt for e in batch.examples],
        "lengths": batch.lengths,
        "truncated": batch.truncated,
        "max_new_tokens": batch.max_new_tokens,
    }


def resolve_reward(path: str) -> RewardFn:
    """Import ``"package.module:function"`` and adapt it to the ScoreBatch signature.

    The returned wrapper carries ``user_fn`` (the original) and ``accepts_any``/
    ``user_params`` for parameter validation.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"reward {path!r}: expected a registered name or 'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward {path!r}: cannot import module {module_name!r} ({e})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"reward {path!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"reward {path!r}: {attr!r} is not callable")

    sig = inspect.signature(fn)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) < 2 and not any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values()
    ):
        raise ValueError(
            f"reward {path!r}: a user reward takes (completions, answers, **kw); "
            f"{attr} has signature {sig}"
        )
    named = {p.name for p in positional[2:]} | {
        p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    wanted_extras = set(USER_EXTRAS) if accepts_any else named & set(USER_EXTRAS)

    def wrapper(batch: ScoreBatch, **params: Any) -> list[float]:
        extras = {k: v for k, v in _user_extras(batch).items() if k in wanted_extras}
        answers = [e.answer for e in batch.examples]
        return fn(batch.completions, answers, **extras, **params)

    wrapper.__name__ = path
    wrapper.__doc__ = fn.__doc__
    wrapper.user_fn = fn  # type: ignore[attr-defined]
    wrapper.accepts_any = accepts_any  # type: ignore[attr-defined]
    wrapper.user_params = named - set(USER_EXTRAS)  # type: ignore[attr-defined]
    return wrapper


@dataclass(frozen=True)
class ResolvedReward:
    """A validated spec: display name, weight, keyword params and the callable."""

    name: str
    weight: float
    fn: RewardFn
    params: dict[str, Any] = field(default_factory=dict)


Spec = str | tuple | ResolvedReward


def _one_spec(spec: Spec) -> tuple[str, float, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, 1.0, {}
    if isinstance(spec, tuple) and len(spec) in (2, 3):
        name, weight = spec[0], spec[1]
        params = dict(spec[2]) if len(spec) == 3 and spec[2] is not None else {}
        return name, weight, params
    raise ValueError(
        f"reward spec {spec!r}: expected name, (name, weight) or (name, weight, params)"
    )


def resolve_specs(specs: Sequence[Spec]) -> list[ResolvedReward]:
    """Validate reward specs (names, weights, params) without scoring anything.

    Call this when a config is built so a typo fails before the model loads. A name is
    looked up in ``REWARDS``; a name containing ':' is imported as a user reward.
    Repeated names get a ``#2``, ``#3`` suffix in the per-reward logs.
    """
    if not specs:
        raise ValueError("no rewards given; e.g. [('correctness', 1.0, {})]")
    out: list[ResolvedReward] = []
    seen: dict[str, int] = {}
    for spec in specs:
        if isinstance(spec, ResolvedReward):
            name, weight, params, fn = spec.name, spec.weight, spec.params, spec.fn
        else:
            name, weight, params = _one_spec(spec)
            if not isinstance(name, str):
                raise ValueError(f"reward spec {spec!r}: the name must be a string")
            if name in REWARDS:
                REWARDS.check_params(name, params)
                fn = REWARDS.get(name)
            elif ":" in name:
                fn = resolve_reward(name)
                unknown = sorted(set(params) - fn.user_params) if not fn.accepts_any else []
                if unknown:
                    raise ValueError(
                        f"reward {name!r} does not accept {', '.join(map(repr, unknown))}; "
                        f"allowed: {', '.join(sorted(fn.user_params)) or '(none)'}"
                    )
            else:
                raise KeyError(
                    f"unknown reward {name!r}; valid names: {', '.join(REWARDS.names())}, "
                    f"or 'package.module:function' for a user reward"
                )
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
        ):
            raise ValueError(f"reward {name!r}: weight must be a finite number, got {weight!r}")
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        out.append(ResolvedReward(name=label, weight=float(weight), fn=fn, params=dict(params)))
    return out


def score(batch: ScoreBatch, specs: Sequence[Spec]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of rewards.

    Returns ``total`` [B] = sum_k weight_k * values_k and ``per_reward`` {name: values_k [B]}
    (raw, unweighted, float32). Raises ValueError naming the reward if it returns the
    wrong number of values or a non-finite value.
    """
    resolved = resolve_specs(specs)
    b = len(batch)
    total = torch.zeros(b, dtype=torch.float32)
    per_reward: dict[str, torch.Tensor] = {}
    for r in resolved:
        values = r.fn(batch, **r.params)
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(
                f"reward {r.name!r} returned non-numeric values: {values!r:.200}"
            ) from None
        if len(values) != b:
            raise ValueError(f"reward {r.name!r} returned {len(values)} values for {b} completions")
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise ValueError(
                f"reward {r.name!r} returned non-finite values at positions {bad[:5]} "
                f"(e.g. {values[bad[0]]})"
            )
        t = torch.tensor(values, dtype=torch.float32)
        per_reward[r.name] = t
        total += r.weight * t
    return total, per_reward
