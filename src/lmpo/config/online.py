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

from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from lmpo.config.base import (  # noqa: F401
    CHECKPOINTING,
    EvalConfig,
    LoraConfig,
    Method,
    OptimConfig,
    RewardSpec,
    SamplingConfigModel,
    Strict,
    TaskConfig,
    _check_method,
    _check_rewards,
    _check_task,
)


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
