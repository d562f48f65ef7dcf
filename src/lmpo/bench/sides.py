"""The two sides of a benchmark: lmpo and TRL, each set up from the same job, run step by step.

A side is built in its worker process (``lmpo.bench.worker``) and driven through two
callables: ``wait()`` blocks until the parent asks for the next step, ``emit(record)``
reports a finished step. A worker runs the data steps ``first_step .. first_step + total - 1``
of the job (``first_step`` is 1 unless ``lmpo bench --alternate rounds`` continues a tool's
run in a later process): lmpo trains on the prompts of those step numbers, and TRL's data set
is built from the same prompts in the same order, so both see identical prompts per step.
Every step record has the same keys on both sides:

* ``step_s``       wall time of the whole step (lmpo: around ``rl_step`` / ``preference_step``;
                   TRL: from ``on_step_begin`` to ``on_step_end``, so it includes generation,
                   scoring, reference, loss, backward, clipping and the optimizer step).
* ``generate_s``   sampling, including prompt tokenization and decoding (lmpo: ``time/generate``
                   of ``rl_step``; TRL: time inside ``GRPOTrainer._generate``).
* ``score_s``      reward functions (lmpo: ``time/score``; TRL: ``_calculate_rewards``).
* ``reference_s``  reference-model log-probs during the step (lmpo GRPO: ``time/reference``;
                   lmpo DPO: 0, they are computed once before training and reported as
                   ``ref_once_s``; TRL GRPO: ``_get_per_token_logps_and_entropies`` called on
                   the reference model; TRL DPO: forward time of ``ref_model``, or 0 with
                   ``precompute_ref_log_probs`` (then ``ref_once_s``)).
* ``train_s``      policy forward/backward and optimizer step (lmpo GRPO: ``time/train``,
                   which also holds the advantage computation; lmpo DPO: ``time/step`` of
                   ``preference_step``; TRL GRPO: ``step_s`` minus the time inside
                   ``_generate_and_score_completions``; TRL DPO: ``step_s`` - ``reference_s``).
* ``other_s``      the rest of the step (``step_s`` minus the four above).
* ``prompt_tokens``, ``generated_tokens``: non-padding tokens of the step, a prompt counted
                   once per completion (GRPO) or once per answer (DPO: chosen and rejected).
* ``tokens``       prompt + generated (GRPO) or prompt + answer (DPO) tokens: the tokens of
                   the step's training sequences, used for tokens/s and training FLOPs.
* ``encoded_tokens`` tokens the training forward actually runs: ``tokens`` minus the prompt
                   copies a shared-prefix forward does not re-encode (lmpo encodes a GRPO group's
                   prompt once, a DPO pair's prompt once); used for hardware FLOP utilisation.
* ``peak_rss_mb``  peak resident memory of this worker process so far (``ru_maxrss``).
"""

from __future__ import annotations

import json
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from lmpo.models.policy import checkpointing_enabled

Wait = Callable[[], None]
Emit = Callable[[dict], None]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def record(
    step_s: float,
    generate_s: float = 0.0,
    score_s: float = 0.0,
    reference_s: float = 0.0,
    train_s: float = 0.0,
    prompt_tokens: int = 0,
    generated_tokens: int = 0,
    encoded_tokens: int | None = None,
) -> dict:
    tokens = int(prompt_tokens + generated_tokens)
    return {
        "step_s": step_s,
        "generate_s": generate_s,
        "score_s": score_s,
        "reference_s": reference_s,
        "train_s": train_s,
        "other_s": step_s - generate_s - score_s - reference_s - train_s,
        "prompt_tokens": int(prompt_tokens),
        "generated_tokens": int(generated_tokens),
        "tokens": tokens,
        "encoded_tokens": tokens if encoded_tokens is None else int(encoded_tokens),
        "peak_rss_mb": peak_rss_mb(),
    }


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ lmpo


def lmpo_grpo_config(spec: dict, model_dir: str, workdir: Path, threads: int | None):
    from lmpo.config import RunConfig

    B = spec["prompts"] * spec["completions"]
    return RunConfig.model_validate(
        {
            "model": model_dir,
            "task": {"name": "arithmetic", "params": spec["task_params"], "test_size": 1},
            "rewards": [{"name": "correctness"}],
            "batch": {
                "prompts_per_step": spec["prompts"],
                "completions_per_prompt": spec["completions"],
                "micro_batch_size": B,
            },  # the whole step in one pass, as TRL below
            "sampling": {
                "max_new_tokens": spec["max_new_tokens"],
                "temperature": 1.0,
                "top_p": 1.0,
            },
            "algorithm": {
                "advantage": {"name": "grpo"},
                "policy_loss": {"name": "ppo_clip"},
                "kl": {"beta": spec["beta"], "estimator": "k3"},
            },
            "optim": {
                "lr": spec["lr"],
                "betas": [0.9, 0.99],
                "weight_decay": 0.0,
                "grad_clip": 1.0,
                "schedule": "constant",
            },
            "steps": 10_000,
            "seed": spec["seed"],
            "threads": threads,
            "output_dir": str(workdir / "lmpo-run"),
            "gradient_checkpointing": spec["gradient_checkpointing"],
        }
    )


class LmpoGRPO:
    def __init__(self, job: dict, workdir: Path, threads: int | None) -> None:
        from lmpo.train import online

        self.online = online
        self.cfg = lmpo_grpo_config(job["spec"], job["model_dir"], workdir, threads)
        self.ctx = online.build_context(self.cfg)
        self.rollout = None
        sample_group = online.sample_group

        def recording(ctx, examples):  # keeps the step's rollout for the token counts
            batch = sample_group(ctx, examples)
            self.rollout = batch.rollout
            return batch

        online.sample_group = recording  # only in this worker process
        self.first = int(job.get("first_step", 1))
        self.info = {
            "params": n_params(self.ctx.model),
            "ref_once_s": 0.0,
            "checkpointing": checkpointing_enabled(self.ctx.model),
        }

    def run(self, wait: Wait, emit: Emit, total: int, ready: Callable[[], None]) -> None:
        ready()
        for step in range(self.first, self.first + total):
            wait()
            t0 = time.perf_counter()
            m = self.online.rl_step(step, self.ctx)
            dt = time.perf_counter() - t0
            r = self.rollout
            prompt = int(r.prompt_mask.sum())
            G = self.cfg.batch.completions_per_prompt
            encoded = (prompt // G if self.ctx.shared_prefix else prompt) + int(
                r.response_mask.sum()
            )
            emit(
                record(
                    dt,
                    m["time/generate"],
                    m["time/score"],
                    m["time/reference"],
                    m["time/train"],
                    prompt,
                    int(r.response_mask.sum()),
                    encoded_tokens=encoded,
                )
            )


class LmpoDPO:
    def __init__(self, job: dict, workdir: Path, threads: int | None) -> None:
        try:
            from lmpo.train import preference

            preference.preference_step  # noqa: B018 (the loop this side needs)
        except (ImportError, AttributeError) as e:
            raise Unavailable(
                f"lmpo's offline preference loop is not available yet ({e})"
            ) from None
        from lmpo.config import PreferenceConfig

        spec = job["spec"]
        self.preference, self.spec = preference, spec
        self.first = int(job.get("first_step", 1))
        self.cfg = PreferenceConfig.model_validate(
            {
                "model": job["model_dir"],
                "loss": {"name": "dpo", "params": {"beta": spec["dpo_beta"]}},
                "data": {
                    "train_file": job["pairs_file"],
                    "test_size": 0,
                    "max_prompt_tokens": 4096,
                    "max_completion_tokens": 4096,
                },
                "batch": {"pairs_per_step": spec["pairs"], "micro_batch_size": spec["pairs"]},
                "optim": {
                    "lr": spec["lr"],
                    "betas": [0.9, 0.99],
                    "weight_decay": 0.0,
                    "grad_clip": 1.0,
                    "schedule": "constant",
                },
                "eval": {"at_start": False},
                "steps": 10_000,
                "seed": spec["seed"],
                "threads": threads,
                "output_dir": str(workdir / "lmpo-dpo-run"),
                "gradient_checkpointing": spec["gradient_checkpointing"],
            }
        )
        ref_time = [0.0]
        reference_cache = preference.reference_cache

        def timed(ctx):  # the one-off reference pass inside build_context
            t0 = time.perf_counter()
            out = reference_cache(ctx)
            ref_time[0] += time.perf_counter() - t0
            return out

        preference.reference_cache = timed  # only in this worker process
        self.ctx = preference.build_context(self.cfg)
        self.info = {
            "params": n_params(self.ctx.model),
            "ref_once_s": ref_time[0],
            "checkpointing": checkpointing_enabled(self.ctx.model),
        }

    def run(self, wait: Wait, emit: Emit, total: int, ready: Callable[[], None]) -> None:
        ready()
        data = self.ctx.train
        for step in range(self.first, self.first + total):
            wait()
            t0 = time.perf_counter()
            m = self.preference.preference_step(step, self.ctx)
            dt = time.perf_counter() - t0
            rows = self.ctx.order.prompts_for_step(step, self.cfg.batch.pairs_per_step)
            prompt = sum(2 * len(data.prompts[i]) for i in rows)  # once per answer, as TRL feeds it
            answers = sum(
                len(data.branches["chosen"][i]) + len(data.branches["rejected"][i]) for i in rows
            )
            encoded = (prompt // 2 if self.ctx.shared_prefix else prompt) + answers
            emit(
                record(
                    dt,
                    train_s=m["time/step"],
                    prompt_tokens=prompt,
                    generated_tokens=answers,
                    encoded_tokens=encoded,
                )
            )


# ------------------------------------------------------------------------------------- TRL


def _trl_common(spec: dict, workdir: Path, total: int) -> dict:
    """TrainingArguments shared by GRPO and DPO: fp32 CPU, no saving/reporting, activation
    checkpointing as the spec says (non-reentrant, as lmpo's)."""
    return {
        "output_dir": str(workdir / "trl-run"),
        "max_steps": total,
        "gradient_accumulation_steps": 1,
        "learning_rate": spec["lr"],
        "lr_scheduler_type": "constant",
        "adam_beta1": 0.9,
        "adam_beta2": 0.99,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch",
        "gradient_checkpointing": spec["gradient_checkpointing"],
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "bf16": False,
        "fp16": False,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": total + 1,
        "disable_tqdm": True,
        "seed": spec["seed"],
        "dataloader_num_workers": 0,
    }


def _load_hf(model_dir: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tok


class Timers:
    """Seconds spent inside wrapped methods since the last reset."""

    def __init__(self) -> None:
        self.s: dict[str, float] = defaultdict(float)
        self.n: dict[str, int] = defaultdict(int)

    def reset(self) -> None:
        self.s.clear()
        self.n.clear()

    def wrap(self, name: str | Callable[..., str | None], fn):
        def timed(*args, **kwargs):
            key = name(*args, **kwargs) if callable(name) else name
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if key is not None:
                    self.s[key] += time.perf_counter() - t0

        return timed


def _check_trl_args(trainer, keys: tuple[str, ...], spec: dict) -> dict:
    """The TRL settings in effect (recorded with the results); fails if any side setting slipped."""
    a = trainer.args
    used = {k: getattr(a, k, None) for k in keys}
    used["dtype"] = str(next(trainer.model.parameters()).dtype)
    if bool(a.gradient_checkpointing) != spec["gradient_checkpointing"]:
        raise RuntimeError(
            f"TRL's gradient_checkpointing is not the spec's ({spec['gradient_checkpointing']}): {used}"
        )
    if a.bf16 or a.fp16 or used["dtype"] != "torch.float32":
        raise RuntimeError(f"TRL is not running plain fp32: {used}")
    return used


def _check_checkpointing(model, used: dict, spec: dict) -> None:
    """Records in ``used`` (the TRL settings) whether the model's layers really checkpoint
    (``checkpointing``, as on the lmpo side); fails unless the spec says so. transformers turns
    checkpointing on inside ``train()``, so this runs when training begins."""
    used["checkpointing"] = checkpointing_enabled(model)
    if used["checkpointing"] != spec["gradient_checkpointing"]:
        raise RuntimeError(
            f"TRL's model checkpointing is not the spec's ({spec['gradient_checkpointing']}): {used}"
        )


def _pacing_callback(
    wait: Wait,
    on_end: Callable[[float], None],
    ready: Callable[[], None],
    check_model: Callable[[object], None],
):
    from transformers import TrainerCallback

    class Pace(TrainerCallback):
        """Blocks each step until the parent asks for it; times begin -> end of the step."""

        t0 = 0.0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            check_model(model)
            ready()  # dataloader and optimizer exist now

        def on_step_begin(self, args, state, control, **kwargs):
            wait()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            on_end(time.perf_counter() - self.t0)

    return Pace()


class TrlGRPO:
    def __init__(self, job: dict, workdir: Path, threads: int | None) -> None:
        from lmpo.data.prompts import prompt_messages
        from lmpo.data.sources import load_data
        from lmpo.rewards.rewardset import RewardSet

        self.job, self.workdir = job, workdir
        spec = job["spec"]
        cfg = lmpo_grpo_config(
            spec, job["model_dir"], workdir, threads
        )  # the same data and rewards
        self.cfg = cfg
        self.data = load_data(cfg)
        self.rewards = RewardSet(cfg.rewards)
        self.prompt_messages = prompt_messages
        self.model, self.tok = _load_hf(job["model_dir"])
        self.info = {"params": n_params(self.model), "ref_once_s": 0.0}

    def _reward_fn(self, examples):
        T = self.cfg.sampling.max_new_tokens
        eos = {self.tok.eos_token_id}

        def lmpo_rewards(prompts, completions, completion_ids, row, **kwargs):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            lengths = [len(c) for c in completion_ids]
            truncated = [len(c) >= T and (not c or c[-1] not in eos) for c in completion_ids]
            total, _, _ = self.rewards.score(
                texts, [examples[i] for i in row], lengths, truncated, T
            )
            return total.tolist()

        return lmpo_rewards

    def run(self, wait: Wait, emit: Emit, total: int, ready: Callable[[], None]) -> None:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        spec, cfg = self.job["spec"], self.cfg
        # the prompts lmpo visits at steps first..first+total-1, in that order (TRL must not shuffle them)
        first = int(self.job.get("first_step", 1))
        examples = [
            e
            for s in range(first, first + total)
            for e in self.data.prompts_for_step(s, spec["prompts"])
        ]
        rows = [
            {"prompt": self.prompt_messages(e.prompt, cfg.task.system_prompt), "row": i}
            for i, e in enumerate(examples)
        ]
        B = spec["prompts"] * spec["completions"]
        args = GRPOConfig(
            **_trl_common(spec, self.workdir, total),
            per_device_train_batch_size=B,
            steps_per_generation=1,
            num_generations=spec["completions"],
            num_iterations=1,
            max_completion_length=spec["max_new_tokens"],
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=spec["beta"],
            epsilon=0.2,
            loss_type="dapo",
            scale_rewards="group",
            shuffle_dataset=False,
            use_vllm=False,
            log_completions=False,
            remove_unused_columns=False,
        )
        timers, tokens = Timers(), {}

        def on_end(step_s: float) -> None:
            prep = timers.s["prepare"]
            emit(
                record(
                    step_s,
                    timers.s["generate"],
                    timers.s["score"],
                    timers.s["reference"],
                    step_s - prep,
                    tokens.get("prompt", 0),
                    tokens.get("generated", 0),
                )
            )
            timers.reset()
            tokens.clear()

        def begin() -> None:
            wait()
            timers.reset()

        pace = _pacing_callback(
            begin,
            on_end,
            ready,
            lambda model: _check_checkpointing(model, self.info["trl_args"], spec),
        )
        trainer = GRPOTrainer(
            model=self.model,
            reward_funcs=self._reward_fn(examples),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=self.tok,
            callbacks=[pace],
        )
        self.info["trl_args"] = _check_trl_args(
            trainer,
            (
                "per_device_train_batch_size",
                "generation_batch_size",
                "steps_per_generation",
                "num_generations",
                "num_iterations",
                "gradient_accumulation_steps",
                "max_completion_length",
                "beta",
                "loss_type",
                "use_vllm",
                "gradient_checkpointing",
                "gradient_checkpointing_kwargs",
                "bf16",
            ),
            spec,
        )
        if trainer.args.generation_batch_size != B or trainer.args.steps_per_generation != 1:
            raise RuntimeError(f"TRL does not run the step in one pass: {self.info['trl_args']}")

        generate = trainer._generate

        def counting_generate(prompts):
            out = generate(prompts)
            tokens["prompt"] = tokens.get("prompt", 0) + sum(len(p) for p in out[0])
            tokens["generated"] = tokens.get("generated", 0) + sum(len(c) for c in out[1])
            return out

        trainer._generate = timers.wrap("generate", counting_generate)
        trainer._calculate_rewards = timers.wrap("score", trainer._calculate_rewards)
        trainer._generate_and_score_completions = timers.wrap(
            "prepare", trainer._generate_and_score_completions
        )
        trainer._get_per_token_logps_and_entropies = timers.wrap(
            lambda model, *a, **k: (
                "reference" if model is trainer.ref_model and model is not None else None
            ),
            trainer._get_per_token_logps_and_entropies,
        )
        trainer.train()


class TrlDPO:
    def __init__(self, job: dict, workdir: Path, threads: int | None) -> None:
        self.job, self.workdir = job, workdir
        self.rows = [json.loads(line) for line in Path(job["pairs_file"]).read_text().splitlines()]
        self.model, self.tok = _load_hf(job["model_dir"])
        self.info = {"params": n_params(self.model), "ref_once_s": 0.0}

    def run(self, wait: Wait, emit: Emit, total: int, ready: Callable[[], None]) -> None:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        spec = self.job["spec"]
        args = DPOConfig(
            **_trl_common(spec, self.workdir, total),
            per_device_train_batch_size=spec["pairs"],
            beta=spec["dpo_beta"],
            loss_type=["sigmoid"],
            max_length=None,
            precompute_ref_log_probs=spec["trl_precompute_ref"],
            precompute_ref_batch_size=spec["pairs"],
        )
        timers = Timers()
        counts: dict[str, int] = {}

        def on_end(step_s: float) -> None:
            ref = timers.s["reference"]
            emit(
                record(
                    step_s,
                    reference_s=ref,
                    train_s=step_s - ref,
                    prompt_tokens=counts["prompt"],
                    generated_tokens=counts["answers"],
                )
            )
            timers.reset()

        def begin() -> None:
            wait()
            timers.reset()

        precompute = DPOTrainer._precompute_ref_logps
        DPOTrainer._precompute_ref_logps = timers.wrap("ref_once", precompute)
        rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in self.rows]
        pace = _pacing_callback(
            begin,
            on_end,
            ready,
            lambda model: _check_checkpointing(model, self.info["trl_args"], spec),
        )
        trainer = DPOTrainer(
            model=self.model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=self.tok,
            callbacks=[pace],
        )
        self.info["ref_once_s"] = timers.s["ref_once"]
        self.info["trl_args"] = _check_trl_args(
            trainer,
            (
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "beta",
                "loss_type",
                "precompute_ref_log_probs",
                "max_length",
                "gradient_checkpointing",
                "gradient_checkpointing_kwargs",
                "bf16",
            ),
            spec,
        )
        ds = trainer.train_dataset  # every step takes all rows (one batch = the whole data set)
        counts["prompt"] = sum(2 * len(p) for p in ds["prompt_ids"])
        counts["answers"] = sum(
            len(c) + len(r) for c, r in zip(ds["chosen_ids"], ds["rejected_ids"], strict=True)
        )
        if trainer.ref_model is not None:
            starts: list[float] = []
            ref = trainer.accelerator.unwrap_model(trainer.ref_model)
            ref.register_forward_pre_hook(lambda *a: starts.append(time.perf_counter()))

            def post(*a):
                timers.s["reference"] += time.perf_counter() - starts.pop()

            ref.register_forward_hook(post)
        trainer.train()


class Unavailable(RuntimeError):
    """This side cannot run this configuration (reported as such, never faked)."""


SIDES = {
    ("lmpo", "grpo"): LmpoGRPO,
    ("lmpo", "dpo"): LmpoDPO,
    ("trl", "grpo"): TrlGRPO,
    ("trl", "dpo"): TrlDPO,
}
