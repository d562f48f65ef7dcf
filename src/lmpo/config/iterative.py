"""Config of iterative runs: rounds of sample, verify, pair, train."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from lmpo.config.base import RewardSpec, Strict, TaskConfig, _check_rewards, _check_task
from lmpo.config.loading import format_errors
from lmpo.config.preference import PreferenceConfig, PreferenceDataConfig

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
