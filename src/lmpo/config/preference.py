"""Config of preference runs (DPO family, KTO, BCO) and the loss probe they share."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from lmpo.config.base import (  # noqa: F401
    CHECKPOINTING,
    LoraConfig,
    Method,
    OptimConfig,
    Strict,
    TaskConfig,
    _check_method,
    _check_task,
)


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
