"""Recipes: find, load, override, validate (by run kind) and dump run configs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import (
    ValidationError,
)

from lmpo.config.base import ConfigError

if TYPE_CHECKING:
    from lmpo.config import AnyRunConfig, RunConfig

RECIPES_DIR = Path(__file__).parent.parent / "recipes"


def recipe_path(name_or_path: str | None) -> Path:
    if name_or_path is None:
        name_or_path = "default"
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"recipe {name_or_path!r}: not a YAML file and not a shipped recipe; shipped: {', '.join(list_recipes())}"
    )


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=1e-5")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def load_config(recipe: str | None = None, overrides: list[str] | None = None) -> AnyRunConfig:
    """Read a recipe (shipped name or path), apply key=value overrides, validate."""
    path = recipe_path(recipe)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys to values")
    for item in overrides or []:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return validate(data, source=str(path))


def validate(data: dict, source: str = "config") -> AnyRunConfig:
    """The run config of ``data["kind"]`` (default ``online``): one of ``RUN_KINDS``."""
    from lmpo.config import RUN_KINDS

    kind = data.get("kind", "online")
    cls = RUN_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(
            f"{source}: kind: unknown run kind {kind!r}; valid: {', '.join(RUN_KINDS)}"
        )
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_errors(e)}") from None


def format_errors(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            inp = err.get("input")
            shown = f" (got {inp!r})" if not isinstance(inp, dict | list) else ""
            lines.append(f"{loc}: {msg}{shown}")
    return "; ".join(lines)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------- preference runs
#
# Batch vocabulary of a preference run (offline: a fixed data set, no sampling):
#
# * ``batch.pairs_per_step``   preference pairs per optimizer step; for an unpaired loss
#                              (KTO, BCO): labelled examples per step.
# * ``batch.micro_batch_size`` pairs (examples) per forward/backward: memory only, never the
#                              maths (batch statistics such as KTO's z0 and BCO's shift are
#                              taken over the whole step).
