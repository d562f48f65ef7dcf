"""Benchmark configurations, and the model directory and data both tools read.

A configuration fixes everything the two tools must share: the model (one directory of
safetensors weights and tokenizer files, loaded by both), the prompts or pairs, the batch
(prompts x completions, or pairs), the generation settings and the loss hyper-parameters.
Each tool then translates it into its own config (``lmpo.bench.sides``).

Models:

* ``embedded``   SmolLM2-135M-Instruct, the fp32 directory lmpo caches from the embedded GGUF.
* ``tiny-llama`` a random Llama, 4 layers x 256 hidden (4 heads, 2 KV heads, MLP 1024), with
                 SmolLM2's tokenizer (vocabulary 49,152); saved once to the work directory.
* ``tiny``       ``lmpo.models.loading.tiny_model`` with its byte tokenizer (vocabulary 259):
                 for tests, seconds per run.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class BenchSpec:
    """One benchmark configuration (the same for lmpo and TRL).

    GRPO: ``prompts`` x ``completions`` completions per step, at most ``max_new_tokens`` each,
    sampled at temperature 1 (top-p 1, no top-k); KL coefficient ``beta`` (0: no reference
    model); PPO-clip 0.2 with a token mean over the step (TRL: ``loss_type="dapo"``); group
    standardised advantages; the whole step is one forward/backward pass and one optimizer
    step on both sides.

    DPO: ``pairs`` pairs per step (the same pairs every step), prompts of about
    ``prompt_tokens`` tokens (as encoded: chat template included) and answers of about
    ``answer_tokens``; sigmoid loss with ``dpo_beta``; one forward/backward per step.
    ``trl_precompute_ref`` sets TRL's ``precompute_ref_log_probs`` (lmpo always computes
    reference log-probs once, before training).

    ``gradient_checkpointing``: both tools recompute each decoder layer's activations in
    backward (non-reentrant; lmpo's ``gradient_checkpointing``, TRL's argument of that name).
    """

    name: str
    kind: Literal["grpo", "dpo"]
    model: Literal["embedded", "tiny-llama", "tiny"]
    description: str
    prompts: int = 8
    completions: int = 8
    max_new_tokens: int = 64
    beta: float = 0.0
    task_params: dict[str, Any] = field(default_factory=dict)
    pairs: int = 8
    prompt_tokens: int = 30
    answer_tokens: int = 64
    dpo_beta: float = 0.1
    trl_precompute_ref: bool = False
    gradient_checkpointing: bool = False
    lr: float = 1e-5
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


SPECS: dict[str, BenchSpec] = {
    s.name: s
    for s in [
        BenchSpec(
            "grpo-smollm2",
            "grpo",
            "embedded",
            "GRPO, SmolLM2-135M, 8 prompts x 8 completions, <=64 new tokens, beta 0",
        ),
        BenchSpec(
            "grpo-smollm2-kl",
            "grpo",
            "embedded",
            "as grpo-smollm2 with a KL term (beta 0.04, reference model)",
            beta=0.04,
        ),
        BenchSpec(
            "grpo-smollm2-ckpt",
            "grpo",
            "embedded",
            "as grpo-smollm2, both tools with activation checkpointing",
            gradient_checkpointing=True,
        ),
        BenchSpec(
            "grpo-tiny-llama",
            "grpo",
            "tiny-llama",
            "GRPO, random Llama 4x256, vocab 49k, 8 x 8, <=64 new tokens, beta 0",
        ),
        BenchSpec(
            "dpo-smollm2",
            "dpo",
            "embedded",
            "DPO (sigmoid), SmolLM2-135M, 8 pairs, prompt ~30 + answers ~64 tokens; "
            "TRL computes reference log-probs every step (its default)",
            lr=5e-6,
        ),
        BenchSpec(
            "dpo-smollm2-precompute",
            "dpo",
            "embedded",
            "as dpo-smollm2 with TRL's precompute_ref_log_probs=True",
            lr=5e-6,
            trl_precompute_ref=True,
        ),
        BenchSpec(
            "dpo-smollm2-ckpt",
            "dpo",
            "embedded",
            "as dpo-smollm2, both tools with activation checkpointing",
            lr=5e-6,
            gradient_checkpointing=True,
        ),
        BenchSpec(
            "test-grpo",
            "grpo",
            "tiny",
            "tests: tiny random model, 2 prompts x 2 completions, 4 new tokens",
            prompts=2,
            completions=2,
            max_new_tokens=4,
            task_params={"style": "bare"},
        ),
        BenchSpec(
            "test-grpo-kl",
            "grpo",
            "tiny",
            "tests: test-grpo with beta 0.04",
            prompts=2,
            completions=2,
            max_new_tokens=4,
            beta=0.04,
            task_params={"style": "bare"},
        ),
        BenchSpec(
            "test-grpo-ckpt",
            "grpo",
            "tiny",
            "tests: test-grpo with activation checkpointing on both sides",
            prompts=2,
            completions=2,
            max_new_tokens=4,
            gradient_checkpointing=True,
            task_params={"style": "bare"},
        ),
        BenchSpec(
            "test-dpo",
            "dpo",
            "tiny",
            "tests: tiny random model, 2 pairs, short answers",
            pairs=2,
            prompt_tokens=8,
            answer_tokens=8,
        ),
        BenchSpec(
            "test-dpo-precompute",
            "dpo",
            "tiny",
            "tests: test-dpo with TRL's precompute_ref_log_probs",
            pairs=2,
            prompt_tokens=8,
            answer_tokens=8,
            trl_precompute_ref=True,
        ),
        BenchSpec(
            "test-dpo-ckpt",
            "dpo",
            "tiny",
            "tests: test-dpo with activation checkpointing on both sides",
            pairs=2,
            prompt_tokens=8,
            answer_tokens=8,
            gradient_checkpointing=True,
        ),
    ]
}
DEFAULT_CONFIGS = ["grpo-smollm2", "grpo-smollm2-kl", "grpo-tiny-llama", "dpo-smollm2"]


def get_specs(names: list[str]) -> list[BenchSpec]:
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise ValueError(
            f"--configs: unknown {', '.join(map(repr, unknown))}; valid: {', '.join(SPECS)}"
        )
    if not names:
        raise ValueError("--configs: give at least one configuration")
    return [SPECS[n] for n in names]


# ----------------------------------------------------------------------------- models


def model_dir(kind: str, workdir: Path) -> Path:
    """The directory both tools load the model from (created on first use)."""
    if kind == "embedded":
        return embedded_dir()
    target = workdir / f"model-{kind}"
    if (target / "config.json").is_file():
        return target
    from lmpo.models.loading import save_pretrained_clean, tiny_model

    if kind == "tiny-llama":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(embedded_dir()))
        model, tok = tiny_model(
            tok,
            layers=4,
            hidden=256,
            heads=4,
            kv_heads=2,
            intermediate=1024,
            vocab_size=len(tok),
            seed=0,
        )
    elif kind == "tiny":
        model, tok = tiny_model(seed=0)
    else:
        raise ValueError(f"unknown benchmark model {kind!r}; valid: embedded, tiny-llama, tiny")
    save_pretrained_clean(model, tok, target)
    return target


def embedded_dir() -> Path:
    """lmpo's fp32 safetensors copy of the embedded GGUF (converted once, as `load_model` does)."""
    from lmpo.models.loading import _gguf_cache_path, embedded_gguf_path, load_model

    path = _gguf_cache_path(embedded_gguf_path())
    if not (path / "config.json").is_file():
        load_model(None)  # converts and caches; the model itself is dropped here
    return path


# ------------------------------------------------------------------------------- data

WORDS = (
    "the model reads a short question about numbers and writes a careful answer with each step "
    "shown so that a reader can check the sum the product and the final result before moving on "
    "to the next problem in the list"
).split()


def _grow(n_tokens, rng: random.Random, length) -> str:
    """Words from a fixed list, one at a time, until length(text) >= n_tokens (at least one word)."""
    words = [rng.choice(WORDS)]
    while length(" ".join(words)) < n_tokens:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def write_pairs(spec: BenchSpec, tok, path: Path) -> Path:
    """spec.pairs conversational pairs {prompt, chosen, rejected} as JSONL (lmpo and TRL format).

    Lengths are those of the encoded sequences: the prompt as the chat template renders it
    (system line included) is about ``spec.prompt_tokens`` tokens, each answer with its
    end-of-turn tokens about ``spec.answer_tokens``.
    """
    from lmpo.data.preference import render_answers

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False).input_ids)

    def user(text: str) -> list[dict]:
        return [{"role": "user", "content": text}]

    def answer(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    rng = random.Random(spec.seed)
    rows = []
    for i in range(spec.pairs):
        prompt = user(
            _grow(spec.prompt_tokens, rng, lambda t: n(render_answers(tok, user(t), [])[0]))
        )
        chosen, rejected = (
            answer(
                _grow(
                    spec.answer_tokens,
                    rng,
                    lambda t, p=prompt: n(render_answers(tok, p, [answer(t)])[1][0]),
                )
            )
            for _ in range(2)
        )
        rows.append({"id": f"bench-{i}", "prompt": prompt, "chosen": chosen, "rejected": rejected})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepare(spec: BenchSpec, workdir: Path) -> dict:
    """The job both workers receive: the spec, the model directory and (DPO) the pairs file."""
    mdir = model_dir(spec.model, workdir)
    job = {"spec": spec.to_dict(), "model_dir": str(mdir)}
    if spec.kind == "dpo":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(mdir))
        job["pairs_file"] = str(write_pairs(spec, tok, workdir / f"{spec.name}-pairs.jsonl"))
    return job
