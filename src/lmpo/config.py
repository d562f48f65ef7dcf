"""Typed run configuration: YAML recipes validated before any model loads.

Batch vocabulary (defined here once, used everywhere):

* ``prompts_per_step``        prompts sampled for one training step (one rollout batch).
* ``completions_per_prompt``  answers sampled per prompt: the group size G.
* rollout batch               prompts_per_step x completions_per_prompt completions.
* ``minibatch_size``          completions per optimizer step; the rollout batch is split
                              into rollout/minibatch optimizer steps per inner epoch.
* ``micro_batch_size``        completions per forward/backward pass (gradient accumulation;
                              changes memory only, never the maths).
* ``inner_epochs``            passes over the rollout batch (PPO epochs, mu in GRPO).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
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


class BatchConfig(Strict):
    prompts_per_step: int = Field(8, gt=0)
    completions_per_prompt: int = Field(8, gt=0, description="group size G")
    minibatch_size: int | None = Field(
        None, gt=0, description="completions per optimizer step; default: whole rollout batch"
    )
    micro_batch_size: int = Field(16, gt=0, description="completions per forward/backward")
    inner_epochs: int = Field(1, gt=0)

    @property
    def rollout_size(self) -> int:
        return self.prompts_per_step * self.completions_per_prompt

    @model_validator(mode="after")
    def _divides(self):
        mb = self.minibatch_size or self.rollout_size
        if self.rollout_size % mb:
            raise ValueError(
                f"minibatch_size={mb} must divide prompts_per_step*completions_per_prompt={self.rollout_size}"
            )
        return self


class SamplingConfigModel(Strict):
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list)


class KLConfig(Strict):
    beta: float = Field(0.0, ge=0, description="0 = no KL term and no reference model loaded")
    estimator: str = "k3"
    adaptive_target: float | None = Field(
        None, gt=0, description="target KL for the adaptive controller"
    )
    adaptive_horizon: int = Field(10000, gt=0)


class AlgorithmConfig(Strict):
    advantage: Method = Field(default_factory=lambda: Method(name="grpo"))
    policy_loss: Method = Field(default_factory=lambda: Method(name="ppo_clip"))
    kl: KLConfig = Field(default_factory=KLConfig)


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


class RunConfig(Strict):
    """An online RL run (sample, score, advantages, update)."""

    kind: Literal["online"] = "online"
    model: str = Field("embedded", description="'embedded', a HF directory, or a .gguf file")
    tiny_model: bool = Field(
        False, description="tests: a tiny random model with the byte tokenizer"
    )
    task: TaskConfig = Field(default_factory=TaskConfig)
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="correctness")])
    batch: BatchConfig = Field(default_factory=BatchConfig)
    sampling: SamplingConfigModel = Field(default_factory=SamplingConfigModel)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    steps: int = Field(50, gt=0)
    seed: int = 0
    threads: int | None = Field(None, gt=0, description="torch threads (default: all cores)")
    output_dir: str = "runs/latest"
    checkpoint_every: int = Field(10, ge=0)
    keep_checkpoints: int = Field(2, gt=0)
    logprob_chunk: int = Field(
        512, gt=0, description="rows per LM-head chunk; bounds logits memory"
    )
    shared_prefix: bool = Field(
        True, description="encode a group's prompt once per micro-batch (same maths)"
    )
    gradient_checkpointing: bool = Field(False, description=CHECKPOINTING)

    @field_validator("algorithm")
    @classmethod
    def _registered(cls, alg: AlgorithmConfig) -> AlgorithmConfig:
        from lmpo.core import ADVANTAGES, KL_ESTIMATORS, POLICY_LOSSES

        _check_method(ADVANTAGES, alg.advantage, "algorithm.advantage")
        _check_method(POLICY_LOSSES, alg.policy_loss, "algorithm.policy_loss")
        if alg.kl.estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"algorithm.kl.estimator: unknown {alg.kl.estimator!r}; valid: {', '.join(KL_ESTIMATORS.names())}"
            )
        return alg

    @field_validator("rewards")
    @classmethod
    def _rewards(cls, specs: list[RewardSpec]) -> list[RewardSpec]:
        return _check_rewards(specs)

    @model_validator(mode="after")
    def _task(self):
        _check_task(self.task)
        return self


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


RECIPES_DIR = Path(__file__).parent / "recipes"


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


class LossSpec(BaseModel):
    """What a registered preference loss needs, read off the function itself (``inspect_loss``)."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["paired", "unpaired"]
    params: dict[str, Any]
    needs_reference: bool
    needs_kl: bool = False  # unpaired: log-probs of mismatched prompt/answer pairs (KTO's z0)
    uses_shift: bool = False  # unpaired: a running reward shift (BCO's delta)
    uses_weights: bool = False  # unpaired: density-ratio weights (BCO's UDM)


def inspect_loss(m: Method) -> LossSpec:
    """Check a preference loss's name, parameter names and values; say what inputs it needs.

    The function is called on a fixed dummy batch: with all inputs (so bad values such as
    ``beta: -1`` fail here, before any model loads), then without the reference log-probs,
    without KTO-style KL log-probs, with a reward shift and with weights. The trainer thus
    never special-cases a loss by name.
    """
    import dataclasses

    import torch

    from lmpo.core import PAIRED_LOSSES, UNPAIRED_LOSSES
    from lmpo.core.types import PairedInputs, UnpairedInputs

    if m.name in PAIRED_LOSSES:
        registry, kind = PAIRED_LOSSES, "paired"
    elif m.name in UNPAIRED_LOSSES:
        registry, kind = UNPAIRED_LOSSES, "unpaired"
    else:
        raise ValueError(
            f"unknown preference loss {m.name!r}; paired: {', '.join(PAIRED_LOSSES.names())}; "
            f"unpaired: {', '.join(UNPAIRED_LOSSES.names())}"
        )
    registry.check_params(m.name, m.params)
    fn = registry.get(m.name)

    def t(*v: float):
        return torch.tensor(v, dtype=torch.float64)

    def call(inp) -> float | Exception:
        try:
            return float(fn(inp, **m.params)[0])
        except (ValueError, TypeError) as e:
            return e

    if kind == "paired":
        full = PairedInputs(t(-10, -8), t(-12, -9), t(-11, -8.5), t(-11.5, -9.2), t(5, 4), t(8, 6))
    else:
        desirable = torch.tensor([True, True, False, False])
        full = UnpairedInputs(
            t(-10, -8, -12, -9),
            t(-11, -8.5, -11.5, -9.6),
            desirable,
            t(-15, -14, -13, -16),
            t(-15.4, -14.1, -13.3, -15.8),
        )
    base = call(full)
    if isinstance(base, Exception):
        raise ValueError(f"params rejected: {base}")
    if kind == "paired":
        no_ref = call(dataclasses.replace(full, ref_chosen_logp=None, ref_rejected_logp=None))
        return LossSpec(
            name=m.name,
            kind=kind,
            params=dict(m.params),
            needs_reference=isinstance(no_ref, Exception),
        )
    return LossSpec(
        name=m.name,
        kind=kind,
        params=dict(m.params),
        needs_reference=True,  # UnpairedInputs.ref_logp is required
        needs_kl=isinstance(
            call(dataclasses.replace(full, kl_logp=None, kl_ref_logp=None)), Exception
        ),
        uses_shift=call(dataclasses.replace(full, shift=0.5)) != base,
        uses_weights=call(dataclasses.replace(full, weights=t(2, 2, 2, 2))) != base,
    )


class PreferenceDataConfig(Strict):
    """Preference rows: paired prompt/chosen/rejected (strings or chat messages, or message lists
    with an implicit prompt) or unpaired prompt/completion/label; see ``lmpo.data.preference``."""

    train_file: str = Field(
        description="JSONL/Parquet file; 'lmpo:NAME' = an example file shipped with lmpo"
    )
    test_file: str | None = Field(
        None, description="held-out rows (default: test_size rows of train_file)"
    )
    test_size: int = Field(
        64, ge=0, description="without test_file: rows held out by prompt (at most 1/5); 0 = none"
    )
    system_prompt: str | None = Field(
        None, description="prepended as a system message when a prompt has none"
    )
    max_prompt_tokens: int = Field(512, gt=0, description="longer prompts keep their last tokens")
    max_completion_tokens: int = Field(
        512, gt=0, description="longer answers keep their first tokens"
    )


class PreferenceBatchConfig(Strict):
    pairs_per_step: int = Field(
        8, gt=0, description="pairs per optimizer step (unpaired losses: examples)"
    )
    micro_batch_size: int = Field(
        4, gt=0, description="pairs (examples) per forward/backward; memory only"
    )


class UDMConfig(Strict):
    """BCO's underlying distribution matching: a logistic regression on prompt embeddings
    (mean-pooled final hidden state of the reference model) estimates p(desirable | prompt);
    undesirable examples are weighted by clamp(p / (1 - p), min_ratio, max_ratio)."""

    enabled: bool = False
    min_ratio: float = Field(0.5, gt=0)
    max_ratio: float = Field(10.0, gt=0)
    prompt_sample_size: int = Field(
        1024, gt=0, description="prompts per class the classifier is fitted on"
    )
    l2: float = Field(1.0, ge=0, description="L2 penalty of the classifier (sklearn's 1/C)")

    @model_validator(mode="after")
    def _ratios(self):
        if self.min_ratio > self.max_ratio:
            raise ValueError(
                f"udm.min_ratio={self.min_ratio} must not exceed udm.max_ratio={self.max_ratio}"
            )
        return self


class PreferenceEvalConfig(Strict):
    every: int = Field(
        0, ge=0, description="held-out eval every N steps (0: only before and after)"
    )
    at_start: bool = True
    size: int | None = Field(None, gt=0, description="held-out rows per eval (default: all)")
    batch_size: int = Field(
        8,
        gt=0,
        description="rows per no-grad forward (held-out eval, reference pass); prompts per generate call",
    )
    task: TaskConfig | None = Field(
        None, description="also greedy accuracy on this task's test split (or file)"
    )
    max_new_tokens: int = Field(64, gt=0, description="answer length for the task accuracy")


class PreferenceConfig(Strict):
    """An offline preference run: a registered paired (DPO family, IPO, SimPO, ORPO) or
    unpaired (KTO, BCO) loss on a fixed data set of preferences."""

    kind: Literal["preference"] = "preference"
    model: str = Field("embedded", description="'embedded', a HF directory, or a .gguf file")
    tiny_model: bool = Field(
        False, description="tests: a tiny random model with the byte tokenizer"
    )
    loss: Method = Field(
        default_factory=lambda: Method(name="dpo"),
        description="see `lmpo recipes`; beta is a loss param",
    )
    data: PreferenceDataConfig
    batch: PreferenceBatchConfig = Field(default_factory=PreferenceBatchConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    udm: UDMConfig = Field(default_factory=UDMConfig)
    eval: PreferenceEvalConfig = Field(default_factory=PreferenceEvalConfig)
    epochs: float = Field(1.0, gt=0, description="passes over the training rows")
    steps: int | None = Field(None, gt=0, description="optimizer steps; when set, replaces epochs")
    seed: int = 0
    threads: int | None = Field(None, gt=0, description="torch threads (default: all cores)")
    output_dir: str = "runs/latest"
    checkpoint_every: int = Field(10, ge=0)
    keep_checkpoints: int = Field(2, gt=0)
    logprob_chunk: int = Field(
        512, gt=0, description="rows per LM-head chunk; bounds logits memory"
    )
    shared_prefix: bool = Field(
        True, description="encode a prompt once for all its answers (same maths)"
    )
    gradient_checkpointing: bool = Field(False, description=CHECKPOINTING)

    @field_validator("loss")
    @classmethod
    def _loss(cls, m: Method) -> Method:
        inspect_loss(m)
        return m

    @model_validator(mode="after")
    def _combinations(self):
        if self.udm.enabled and not inspect_loss(self.loss).uses_weights:
            raise ValueError(
                f"udm.enabled: loss {self.loss.name!r} takes no density-ratio weights "
                "(UDM reweights an unpaired loss such as bco)"
            )
        if self.eval.task is not None:
            _check_task(self.eval.task, "eval.task")
        return self

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps of the run for n_train training rows."""
        if self.steps is not None:
            return self.steps
        return max(1, int(-(-self.epochs * n_train // self.batch.pairs_per_step)))


# ---------------------------------------------------------------------------- reward-model runs


class RewardModelConfig(Strict):
    """A reward-model run (``lmpo.train.reward_model``): pair files, base model, loss,
    optimisation, evaluation."""

    kind: Literal["reward_model"] = "reward_model"
    model: str = Field(
        "embedded", description="base model: 'embedded', a HF directory, or a .gguf file"
    )
    tiny_model: bool = Field(
        False, description="tests: a tiny random model with the byte tokenizer"
    )
    train_file: str = Field(
        description="JSONL/Parquet pairs {prompt, chosen, rejected[, margin]} (lmpo pairs); "
        "'lmpo:NAME' = an example file shipped with lmpo"
    )
    eval_file: str | None = Field(
        None, description="held-out pairs; default: eval_fraction of the pairs, by prompt"
    )
    eval_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="about this fraction of the pairs (whole prompts) is held out when eval_file is unset",
    )
    loss: Method = Field(default_factory=lambda: Method(name="bradley_terry"))
    optim: OptimConfig = Field(default_factory=OptimConfig)
    epochs: int = Field(1, gt=0)
    batch_size: int = Field(8, gt=0, description="pairs per optimizer step")
    micro_batch_size: int = Field(8, gt=0, description="pairs per forward/backward (memory only)")
    max_length: int = Field(
        512, ge=2, description="tokens per prompt+answer; longer inputs keep their end"
    )
    gradient_checkpointing: bool = Field(False, description=CHECKPOINTING)
    head_lr: float | None = Field(
        None,
        gt=0,
        description="learning rate of the scalar head (default: optim.lr); a fresh "
        "head moves only ~lr per Adam step, so short runs need it larger than the backbone's",
    )
    head_init_std: float | None = Field(
        None,
        ge=0,
        description="std of the head's initial weights (default 1/sqrt(hidden)); "
        "small values start every reward near 0 instead of at a random projection",
    )
    eval_every: int = Field(
        0, ge=0, description="held-out eval every N steps (0: only before and after)"
    )
    eval_batch_size: int = Field(16, gt=0, description="sequences per forward when scoring")
    seed: int = Field(0, description="head init, data order, held-out split")
    threads: int | None = Field(None, gt=0)
    output_dir: str = "runs/reward_model"
    checkpoint_every: int = Field(
        0, ge=0, description="steps between resumable checkpoints (0: none)"
    )
    keep_checkpoints: int = Field(2, gt=0)

    @field_validator("loss")
    @classmethod
    def _registered(cls, m: Method) -> Method:
        from lmpo.core import REWARD_MODEL_LOSSES

        _check_method(REWARD_MODEL_LOSSES, m, "loss")
        return m


# ---------------------------------------------------------------------------- iterative runs
#
# Vocabulary of an iterative run (rounds of: sample with the current policy, verify, pair, train):
#
# * ``rounds``                   times the loop samples, pairs and trains.
# * ``pairs.prompts_per_round``  fresh train-split prompts sampled in one round; seeded and
#                                disjoint across rounds (rounds x prompts_per_round <= train_size).
# * ``pairs.k``                  answers sampled per prompt.
# * ``pairs.pairs_per_prompt``   pairs kept per prompt that has both good and bad answers.
# * ``preference.batch.*``       as in a preference run, over the round's pairs.


def _section(
    name: str, source: type[BaseModel], drop: set[str], doc: str, **replace
) -> type[Strict]:
    """A config section with the fields of ``source`` minus ``drop``, so each field (type,
    default, bounds, description) is defined once; ``replace`` overrides (type, Field) pairs.
    ``source``'s validators are not copied: ``preference_run`` validates the whole run."""
    import copy

    fields = {
        k: (f.annotation, copy.deepcopy(f)) for k, f in source.model_fields.items() if k not in drop
    }
    return create_model(name, __base__=Strict, __doc__=doc, **{**fields, **replace})


IterativeDataConfig = _section(
    "IterativeDataConfig",
    PreferenceDataConfig,
    {"train_file", "test_file", "system_prompt"},
    "Tokenization of a round's pairs (the files are written by the loop).",
    test_size=(
        int,
        Field(
            0,
            ge=0,
            description="a round's pairs held out by prompt for pair accuracy (at most 1/5); 0 = none",
        ),
    ),
)
IterativePreferenceConfig = _section(
    "IterativePreferenceConfig",
    PreferenceConfig,
    {"kind", "model", "tiny_model", "data", "eval", "seed", "threads", "output_dir"},
    "A round's preference training: the keys of a preference run that the loop does not fill in.",
    data=(IterativeDataConfig, Field(default_factory=IterativeDataConfig)),
)


def preference_run(section: BaseModel, **run: Any) -> PreferenceConfig:
    """The PreferenceConfig of one round: the ``preference`` section plus what the loop fills
    in (model, data files, seed, output_dir); ``run["data"]`` is merged into the section's data."""
    data = section.model_dump()
    data["data"] = {**data["data"], **run.pop("data", {})}
    return PreferenceConfig.model_validate({**data, **run})


class IterativePairsConfig(Strict):
    """A round's preference data (``lmpo.data.pairs``): k answers per prompt sampled from the
    current policy and scored; the best good answer is paired with the worst bad one."""

    prompts_per_round: int = Field(
        64, gt=0, description="fresh train-split prompts per round, disjoint across rounds"
    )
    k: int = Field(8, ge=2, description="answers sampled per prompt")
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(64, gt=0)
    pairs_per_prompt: int = Field(
        1, gt=0, description="up to this many pairs per prompt with good and bad answers"
    )
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="correctness")])
    threshold: float | None = Field(
        None, description="good = total reward >= threshold (default: the task's answer check)"
    )
    batch_size: int = Field(64, gt=0, description="completions per generate call")

    @field_validator("rewards")
    @classmethod
    def _rewards(cls, specs: list[RewardSpec]) -> list[RewardSpec]:
        return _check_rewards(specs)


class IterativeEvalConfig(Strict):
    at_start: bool = Field(True, description="also the starting model's accuracy (before round 0)")
    size: int | None = Field(
        None, gt=0, description="test problems per eval (default: task.test_size)"
    )
    batch_size: int = Field(64, gt=0, description="prompts per generate call")
    max_new_tokens: int = Field(64, gt=0)


class IterativeConfig(Strict):
    """Iterative DPO from self-verified samples (Iterative RPO, arXiv 2404.19733; preference.md
    §15.2): each round samples answers with the current policy, pairs verified-good with bad
    ones, and trains a preference loss whose reference is the round's starting model."""

    kind: Literal["iterative"] = "iterative"
    model: str = Field(
        "embedded", description="round 0's model: 'embedded', a HF directory, or a .gguf file"
    )
    tiny_model: bool = Field(
        False, description="tests: a tiny random model with the byte tokenizer"
    )
    task: TaskConfig = Field(
        default_factory=TaskConfig, description="train split: the prompts; test split: the eval"
    )
    rounds: int = Field(3, gt=0)
    pairs: IterativePairsConfig = Field(default_factory=IterativePairsConfig)
    preference: IterativePreferenceConfig = Field(default_factory=IterativePreferenceConfig)
    eval: IterativeEvalConfig = Field(default_factory=IterativeEvalConfig)
    seed: int = Field(0, description="prompt order, sampling, training order")
    threads: int | None = Field(None, gt=0, description="torch threads (default: all cores)")
    output_dir: str = "runs/iterative"

    @field_validator("preference")
    @classmethod
    def _preference(cls, section):
        try:  # the loss, its params and combinations, as a preference run checks them
            preference_run(section, data={"train_file": "pairs.jsonl"})
        except ValidationError as e:
            raise ValueError(format_errors(e).replace("(top level): ", "")) from None
        return section

    @model_validator(mode="after")
    def _check(self):
        _check_task(self.task)
        need = self.rounds * self.pairs.prompts_per_round
        if self.task.train_file is None and need > self.task.train_size:
            raise ValueError(
                f"rounds x pairs.prompts_per_round = {need} fresh prompts, but task.train_size is "
                f"{self.task.train_size}: raise task.train_size or lower one of the two"
            )
        return self

    def round_config(
        self, r: int, train_file: str, model: str, tiny_model: bool
    ) -> PreferenceConfig:
        """Round r's preference run: started from ``model``, which is also its reference."""
        return preference_run(
            self.preference,
            model=model,
            tiny_model=tiny_model,
            data={"train_file": train_file},
            seed=self.seed + r,
            threads=self.threads,
            output_dir=str(Path(self.output_dir) / f"round-{r}" / "train"),
        )


AnyRunConfig = RunConfig | PreferenceConfig | RewardModelConfig | IterativeConfig
RUN_KINDS: dict[str, type[Strict]] = {
    "online": RunConfig,
    "preference": PreferenceConfig,
    "reward_model": RewardModelConfig,
    "iterative": IterativeConfig,
}
