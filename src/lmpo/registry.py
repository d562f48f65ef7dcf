"""Name -> function registries for the algorithm core.

Every method (advantage estimator, policy loss, KL estimator, preference loss, ...)
is a plain function registered under a name. Config selects it by that name; extra
config keys are checked against the function's keyword-only parameters *before*
any work starts, so a typo fails early and says what is allowed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """A small, explicit name -> function map (one per kind of function)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._fns: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._fns:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._fns[name] = fn
            return fn

        return deco

    def get(self, name: str) -> F:
        try:
            return self._fns[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._fns))}"
            ) from None

    def params(self, name: str) -> dict[str, Any]:
        """Keyword-only parameters of a registered function and their defaults."""
        sig = inspect.signature(self.get(name))
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def check_params(self, name: str, params: dict[str, Any]) -> None:
        """Raise ValueError naming any key the function does not accept.

        A function may also carry a ``check_params(**params)`` attribute that validates the
        values (e.g. that a file exists); it is called here, so values fail before any work.
        """
        allowed = self.params(name)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(
                f"{self.kind} {name!r} does not accept {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
            )
        check = getattr(self.get(name), "check_params", None)
        if check is not None:
            check(**params)

    def copy(self) -> Registry[F]:
        new: Registry[F] = Registry(self.kind)
        new._fns = dict(self._fns)
        return new

    def names(self) -> list[str]:
        return sorted(self._fns)

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._fns)
