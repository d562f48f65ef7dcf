"""Build the trainable policy (full fine-tuning or LoRA) and, when needed, its frozen reference."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch

from lmpo.models.loading import load_model, save_pretrained_clean, tiny_model
from lmpo.models.logprobs import checkpointing_enabled, unwrap  # noqa: F401 (re-exported)


def load_base(model: str, *, tiny: bool = False, seed: int = 0):
    if tiny:
        return tiny_model(seed=seed)
    return load_model(model)


def apply_lora(model, lora_cfg):
    """Wrap with PEFT LoRA adapters; only adapter weights train."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def enable_checkpointing(model) -> None:
    """Activation checkpointing: each decoder layer keeps only its input in the forward and
    recomputes its activations in backward: less memory for one more forward per backward pass,
    the same maths. Non-reentrant, so gradients reach LoRA weights without an input
    ``requires_grad`` hook (the one transformers adds is removed: it only makes backward
    differentiate the frozen embedding output) and custom 4D masks (shared prefixes) pass
    through unchanged. transformers checkpoints only in train mode, so sampling
    (``model.eval()``) keeps its KV cache.
    """
    base = unwrap(model)  # a PEFT wrapper forwards to the *ForCausalLM that holds the layers
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(base, "_require_grads_hook"):
        base.disable_input_require_grads()


class Reference:
    """Frozen reference log-probs source.

    With LoRA the reference is the same network with adapters disabled (no second copy
    in memory); with full fine-tuning it is a frozen deep copy of the initial weights.
    """

    def __init__(self, policy, *, lora: bool) -> None:
        self.lora = lora
        self.model = None
        if not lora:
            self.model = copy.deepcopy(policy).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.policy = policy

    @contextlib.contextmanager
    def use(self):
        if self.lora:
            with self.policy.disable_adapter():
                yield self.policy
        else:
            yield self.model


def save_final(model, tokenizer, path: Path) -> None:
    """Save so that plain AutoModelForCausalLM.from_pretrained(path) loads it (LoRA merged)."""
    path = Path(path)
    if hasattr(model, "merge_and_unload"):
        merged = copy.deepcopy(model).merge_and_unload()
    else:
        merged = model
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    save_pretrained_clean(merged, tokenizer, tmp)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)


def count_trainable(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train, total


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
