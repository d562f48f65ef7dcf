"""Config of reward-model runs (Bradley-Terry scalar head)."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
)

from lmpo.config.base import CHECKPOINTING, Method, OptimConfig, Strict, _check_method


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
