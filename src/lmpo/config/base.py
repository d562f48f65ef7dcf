"""Config pieces shared by every run kind: strict models, a registered method, the task,
rewards, sampling, optimizer, LoRA, eval sections, and their checks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


CHECKPOINTING = (
    "recompute each decoder layer's activations in backward (models.policy.enable_checkpointing): "
    "less activation memory for one more decoder forward per backward pass; the same maths"
)


class Method(Strict):
    """A registered function chosen by name plus its keyword parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class TaskConfig(Strict):
    """A built-in task (name + params) or user files (train_file/test_file)."""

    name: str | None = Field("arithmetic", description="built-in task; see `lmpo tasks`")
    params: dict[str, Any] = Field(
        default_factory=dict, description="task parameters, e.g. difficulty"
    )
    train_file: str | None = Field(None, description="JSONL/Parquet rows with prompt and answer")
    test_file: str | None = None
    train_size: int = Field(2000, gt=0, description="built-in task: training problems")
    test_size: int = Field(200, gt=0, description="held-out problems for evaluation")
    system_prompt: str | None = Field(None, description="prepended as a system message when set")

    @model_validator(mode="after")
    def _one_source(self):
        if self.train_file is None and self.name is None:
            raise ValueError("set task.name (a built-in task) or task.train_file")
        return self


class RewardSpec(Strict):
    name: str = Field(description="built-in reward or 'module:function'")
    weight: float = 1.0
    params: dict[str, Any] = Field(default_factory=dict)


class SamplingConfigModel(Strict):
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list)


class OptimConfig(Strict):
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float | None = Field(1.0, gt=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)


class LoraConfig(Strict):
    enabled: bool = False
    r: int = Field(16, gt=0)
    alpha: float = 32.0
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )


class EvalConfig(Strict):
    every: int = Field(
        0, ge=0, description="held-out eval every N steps (0: only before and after)"
    )
    size: int | None = Field(
        None, gt=0, description="test problems per eval (default: task.test_size)"
    )
    batch_size: int = Field(64, gt=0)
    at_start: bool = True


def _check_rewards(specs: list[RewardSpec]) -> list[RewardSpec]:
    from lmpo.rewards.base import REWARDS

    if not specs:
        raise ValueError("at least one reward is needed")
    for i, s in enumerate(specs):
        if ":" in s.name:
            continue  # user function, resolved (and checked) when the run starts
        try:
            REWARDS.get(s.name)
            REWARDS.check_params(s.name, s.params)
        except (KeyError, ValueError) as e:
            raise ValueError(f"rewards[{i}]: {e.args[0]}") from None
    return specs


def _check_task(t: TaskConfig, where: str = "task") -> None:
    """A built-in task's name and parameter values (a file source is read when the run starts)."""
    from lmpo.data.tasks import TASKS

    if t.train_file is None and t.name is not None:
        try:
            task = TASKS.get(t.name)
        except KeyError as e:
            raise ValueError(f"{where}.name: {e.args[0]}") from None
        _check_task_params(task, t.params, where)
        from lmpo.data.tasks import load_task

        try:  # one problem is cheap and checks the parameter values too
            load_task(t.name, "test", 1, seed=0, **t.params)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}.params: {e}") from None


def _check_method(registry, m: Method, where: str) -> None:
    try:
        registry.get(m.name)
        registry.check_params(m.name, m.params)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{where}: {e.args[0]}") from None


def _check_task_params(task, params: dict, where: str = "task") -> None:
    import inspect

    sig = inspect.signature(task.make)
    allowed = {
        p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
    } - {"seed"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"{where}.params: {task.name} does not accept {unknown}; allowed: {sorted(allowed)}"
        )


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the key and value."""
