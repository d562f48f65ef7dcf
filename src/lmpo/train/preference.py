"""The offline preference loop: a registered paired or unpaired loss on a fixed data set.

`train_preference` is the whole run; `preference_step` is one step and reads on one screen.
The loss is found by name in ``PAIRED_LOSSES`` (DPO family, IPO, SimPO, ORPO) or
``UNPAIRED_LOSSES`` (KTO, BCO). What it needs (a reference model, KTO's mismatched pairs,
BCO's reward shift and UDM weights) is read off the function by ``config.inspect_loss``, so
nothing here special-cases a method.

Where the time goes, and what is done about it:

* Reference log-probs are computed once per data set before training (no grad, rows sorted
  by length so micro-batches carry little padding) and cached in
  ``output_dir/reference.safetensors``, keyed by a fingerprint of the model and every token
  id: a resumed run reads them back. With LoRA the reference is the model with its adapters
  disabled; with full fine-tuning it is the model itself before its first update (no copy is
  kept in memory). Reference-free losses (SimPO, ORPO) compute none.
* The answers of one prompt (chosen and rejected; a KTO example and its KL pair) go through
  one packed forward in which the prompt is encoded once
  (``models.logprobs.shared_prefix_logprobs``; ``shared_prefix: false`` uses one
  concatenated forward over all answers instead, with the same result).
* Sequence log-probs are SUM over answer tokens; losses that need MEAN get the lengths.

Batch statistics are taken over the whole step, never a micro-batch, so micro_batch_size
changes memory only: KTO's reference point z0 averages the step's KL pairs, and BCO's shift
delta is updated with the step's rewards before its loss (one extra no-grad forward when the
step has several micro-batches). ORPO's NLL term is the exception: it is a token mean per
micro-batch, and micro-batch losses are weighted by their share of the step's pairs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from lmpo.config import LossSpec, PreferenceConfig, dump_config, inspect_loss
from lmpo.core import PAIRED_LOSSES, UNPAIRED_LOSSES
from lmpo.core.preference import RunningMean
from lmpo.core.types import PairedInputs, UnpairedInputs
from lmpo.data.examples import Example
from lmpo.data.preference import (
    PAIRED,
    PreferenceSet,
    encode,
    load_preferences,
    split_held_out,
    unpair,
)
from lmpo.data.sources import TrainData
from lmpo.models.logprobs import answer_logprob_sums, pad_token_lists, supports_shared_prefix
from lmpo.models.policy import (
    Reference,
    apply_lora,
    count_trainable,
    enable_checkpointing,
    load_base,
    save_final,
)
from lmpo.models.reward_model import write_implicit_meta
from lmpo.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from lmpo.train.evaluate import evaluate
from lmpo.train.logging import MetricsLog, StepProgress, plot_metrics
from lmpo.train.online import RunDirError
from lmpo.train.optim import build_optimizer
from lmpo.train.udm import prompt_embeddings, udm_weights

REFERENCE_FILE = "reference.safetensors"


@dataclass
class Stats:
    """Detached whole-step inputs of unpaired losses (None when the loss does not use them)."""

    kl_logp: Tensor | None = None
    kl_ref_logp: Tensor | None = None
    shift: float | None = None


# ---------------------------------------------------------------------------------- one step


def preference_step(step: int, ctx: Context) -> dict[str, float]:
    cfg, t0 = ctx.cfg, time.perf_counter()
    # the step's row indices: a pure function of (seed, step), so a resumed run sees the same rows
    rows = ctx.order.prompts_for_step(step, cfg.batch.pairs_per_step)
    # no grad, whole step: KTO's KL-pair log-probs, BCO's shift (nothing for paired losses)
    stats = step_statistics(ctx, rows)
    ctx.optimizer.zero_grad(set_to_none=True)
    sums = MetricMeans()
    for micro in _chunks(rows, cfg.batch.micro_batch_size):
        logp = answer_logprobs(ctx, ctx.model, ctx.train, micro, ctx.branches)  # policy, with grad
        inputs = loss_inputs(ctx, "train", micro, logp, stats)  # + cached reference log-probs
        loss, metrics = ctx.loss_fn(inputs, **cfg.loss.params)
        share = len(micro) / len(rows)
        (loss * share).backward()
        sums.add({"loss": float(loss.detach()), **metrics}, share)
    grad_norm = torch.nn.utils.clip_grad_norm_(ctx.trainable, cfg.optim.grad_clip or float("inf"))
    lr = ctx.scheduler.get_last_lr()[0]
    ctx.optimizer.step()
    ctx.scheduler.step()
    dt = time.perf_counter() - t0
    tokens = ctx.train.num_tokens(rows, ctx.branches)
    return {
        **sums.means(),
        "grad_norm": float(grad_norm),
        "lr": lr,
        "epoch": step * cfg.batch.pairs_per_step / len(ctx.train),
        "time/step": dt,
        "tokens_per_s": tokens / dt,
    }


# ---------------------------------------------------------------------------------- pieces


def answer_logprobs(
    ctx: Context, model, data: PreferenceSet, rows: list[int], branches: list[str]
) -> dict[str, Tensor]:
    """Summed answer log-probs [len(rows)] of each branch; a prompt is encoded once for all its answers."""
    sums = answer_logprob_sums(
        model,
        [data.prompts[i] for i in rows],
        [[data.branches[br][i] for i in rows] for br in branches],
        ctx.pad_id,
        shared_prefix=ctx.shared_prefix,
        chunk_size=ctx.cfg.logprob_chunk,
    )
    return {br: sums[k] for k, br in enumerate(branches)}


def loss_inputs(ctx: Context, split: str, rows: list[int], logp: dict[str, Tensor], stats: Stats):
    """PairedInputs or UnpairedInputs for rows of a split from policy log-probs and the caches."""
    data = ctx.train if split == "train" else ctx.test
    idx = torch.tensor(rows, dtype=torch.long)

    def ref(branch: str) -> Tensor | None:
        return ctx.reference[f"{split}/{branch}"][idx] if ctx.spec.needs_reference else None

    def length(branch: str) -> Tensor:
        return torch.tensor([len(data.branches[branch][i]) for i in rows], dtype=torch.float32)

    if ctx.spec.kind == PAIRED:
        return PairedInputs(
            logp["chosen"],
            logp["rejected"],
            ref("chosen"),
            ref("rejected"),
            length("chosen"),
            length("rejected"),
        )
    shift = stats.shift
    if ctx.spec.uses_shift and shift is None:  # one micro-batch per step: this forward's rewards
        ctx.shift.update(ctx.beta * (logp["completion"].detach() - ref("completion")))
        shift = ctx.shift.mean
    weights = ctx.udm[idx] if ctx.udm is not None and split == "train" else None
    return UnpairedInputs(
        logp["completion"],
        ref("completion"),
        torch.tensor([data.desirable[i] for i in rows]),
        kl_logp=stats.kl_logp,
        kl_ref_logp=stats.kl_ref_logp,
        weights=weights,
        shift=shift if shift is not None else 0.0,
    )


def step_statistics(ctx: Context, rows: list[int]) -> Stats:
    """Whole-step, no-grad inputs of unpaired losses: KL-pair log-probs (KTO z0) and the shift (BCO)."""
    spec, stats = ctx.spec, Stats()
    several = len(rows) > ctx.cfg.batch.micro_batch_size
    branches = (["kl"] if spec.needs_kl else []) + (
        ["completion"] if spec.uses_shift and several else []
    )
    if not branches:
        return stats
    lp = no_grad_logprobs(ctx, ctx.model, ctx.train, rows, branches, ctx.cfg.batch.micro_batch_size)
    idx = torch.tensor(rows, dtype=torch.long)
    if spec.needs_kl:
        stats.kl_logp, stats.kl_ref_logp = lp["kl"], ctx.reference["train/kl"][idx]
    if "completion" in lp:  # BCO: delta includes this step's rewards (as TRL), fixed for the step
        ctx.shift.update(ctx.beta * (lp["completion"] - ctx.reference["train/completion"][idx]))
        stats.shift = ctx.shift.mean
    return stats


def no_grad_logprobs(
    ctx, model, data: PreferenceSet, rows: list[int], branches: list[str], size: int
) -> dict[str, Tensor]:
    """answer_logprobs without grad over many rows, in chunks of `size`."""
    out: dict[str, list[Tensor]] = defaultdict(list)
    with torch.no_grad():
        for chunk in _chunks(rows, size):
            for br, v in answer_logprobs(ctx, model, data, chunk, branches).items():
                out[br].append(v)
    return {br: torch.cat(v) for br, v in out.items()}


class MetricMeans:
    """Weighted means of per-micro-batch metrics (a key missing from a micro-batch is skipped)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.weights: dict[str, float] = defaultdict(float)

    def add(self, metrics: dict[str, float], weight: float) -> None:
        for k, v in metrics.items():
            self.sums[k] += float(v) * weight
            self.weights[k] += weight

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.weights[k] for k in self.sums}


def _chunks(rows: list[int], n: int) -> list[list[int]]:
    return [rows[i : i + n] for i in range(0, len(rows), n)]


# ------------------------------------------------------------------------------- evaluation


def pair_eval(ctx: Context, step: int) -> dict[str, float]:
    """Held-out loss, implicit rewards and pair accuracy (policy vs cached reference, no grad)."""
    data = ctx.test
    rows = list(range(min(len(data), ctx.cfg.eval.size or len(data))))
    if not rows:
        return {}
    branches = ctx.branches + (["kl"] if ctx.spec.needs_kl else [])
    ctx.model.eval()
    lp = no_grad_logprobs(ctx, ctx.model, data, rows, branches, ctx.cfg.eval.batch_size)
    ctx.model.train()
    # BCO's shift is frozen at eval (as TRL)
    stats = Stats(shift=ctx.shift.mean if ctx.shift is not None else None)
    if ctx.spec.needs_kl:
        stats.kl_logp, stats.kl_ref_logp = lp["kl"], ctx.reference["test/kl"][: len(rows)]
    if ctx.spec.needs_reference:
        ctx.eval_rewards = torch.cat(
            [ctx.beta * (lp[b] - ctx.reference[f"test/{b}"][: len(rows)]) for b in ctx.branches]
        )
    with torch.no_grad():
        loss, metrics = ctx.loss_fn(
            loss_inputs(ctx, "test", rows, lp, stats), **ctx.cfg.loss.params
        )
    out = {"eval/loss": float(loss), **{f"eval/{k}": v for k, v in metrics.items()}}
    acc = (
        metrics.get("rewards/accuracy") if ctx.spec.kind == PAIRED else pair_accuracy(ctx, rows, lp)
    )
    if acc is not None:
        out["eval/pair_accuracy"] = acc
    return out


def pair_accuracy(ctx: Context, rows: list[int], lp: dict[str, Tensor]) -> float | None:
    """Unpaired losses: fraction of held-out source pairs whose desirable answer has the larger
    log-ratio (implicit reward / beta); None for genuinely unpaired data.

    (Paired losses report their own ``rewards/accuracy``, e.g. length-normalised for SimPO.)
    """
    data = ctx.test
    u = lp["completion"] - ctx.reference["test/completion"][: len(rows)]
    sides: dict[int, dict[bool, float]] = defaultdict(dict)
    for j, i in enumerate(rows):
        if data.pair[i] >= 0:
            sides[data.pair[i]][data.desirable[i]] = float(u[j])
    wins = [s[True] > s[False] for s in sides.values() if len(s) == 2]
    return sum(wins) / len(wins) if wins else None


def run_eval(ctx: Context, step: int, log: MetricsLog, bar: StepProgress) -> dict[str, float]:
    m = pair_eval(ctx, step)
    if ctx.task_examples:
        res = evaluate(
            ctx.model,
            ctx.tokenizer,
            ctx.task_examples,
            max_new_tokens=ctx.cfg.eval.max_new_tokens,
            batch_size=ctx.cfg.eval.batch_size,
            system_prompt=ctx.cfg.data.system_prompt,
        )
        m.update(res.metrics())
        # every completion, for inspection
        out = Path(ctx.cfg.output_dir) / "eval" / f"step-{step:06d}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(s) + "\n" for s in res.samples))
    if m:
        log.log(step, m)
        shown = [
            f"{k.removeprefix('eval/')} {m[k]:.3f}"
            for k in ("eval/pair_accuracy", "eval/loss", "eval/accuracy")
            if k in m
        ]
        bar.print(f"step {step}: held-out {', '.join(shown)}")
    return m


def write_reward_model_meta(ctx: Context, path: Path) -> None:
    """Make ``path`` (the saved policy) loadable by ``load_reward_model``: beta, how the
    reference loads, how answers were tokenized, held-out reward statistics if any."""
    cfg, r = ctx.cfg, ctx.eval_rewards
    model = cfg.model
    if not cfg.tiny_model and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())  # a directory: absolute, to load later
    stats = {}
    if r is not None and len(r) > 1:
        stats = {
            "reward_mean": float(r.mean()),
            "reward_std": float(r.std()),
            "stats_on": "held-out rows",
        }
    write_implicit_meta(
        path,
        beta=ctx.beta,
        reference={"model": model, "tiny_model": cfg.tiny_model, "seed": cfg.seed},
        loss=cfg.loss.name,
        system_prompt=cfg.data.system_prompt,
        max_prompt_tokens=cfg.data.max_prompt_tokens,
        max_completion_tokens=cfg.data.max_completion_tokens,
        **stats,
    )


# ------------------------------------------------------------------------- reference cache


def compute_reference(
    ctx: Context, splits: dict[str, PreferenceSet], branches: list[str], with_embedding: bool
) -> dict[str, Tensor]:
    """Reference log-probs of every row and branch (and train prompt embeddings for UDM), once.

    Must run before the first update (and before a checkpoint is loaded): with full
    fine-tuning the policy is then still the reference.
    """
    out: dict[str, Tensor] = {}
    source = (
        Reference(ctx.model, lora=True).use()
        if ctx.cfg.lora.enabled
        else contextlib.nullcontext(ctx.model)
    )
    size = ctx.cfg.eval.batch_size
    with torch.no_grad(), source as model:
        model.eval()
        for split, data in splits.items():
            if not branches or not len(data):
                continue
            # rows sorted by length: micro-batches carry little padding
            order = sorted(range(len(data)), key=lambda i: data.num_tokens([i], branches))
            lp = no_grad_logprobs(ctx, model, data, order, branches, size)
            for br in branches:
                out[f"{split}/{br}"] = torch.zeros(len(data)).index_copy(
                    0, torch.tensor(order), lp[br]
                )
        if with_embedding:
            data = splits["train"]
            emb = [
                prompt_embeddings(
                    model, *pad_token_lists([data.prompts[i] for i in c], ctx.pad_id, left=True)
                )
                for c in _chunks(list(range(len(data))), size)
            ]
            out["train/prompt_embedding"] = torch.cat(emb)
        model.train()
    return out


def reference_cache(ctx: Context) -> dict[str, Tensor]:
    """The run's reference log-probs: read from output_dir when the fingerprint matches, else computed and saved."""
    spec = ctx.spec
    branches = (
        (list(ctx.branches) + (["kl"] if spec.needs_kl else [])) if spec.needs_reference else []
    )
    with_embedding = ctx.cfg.udm.enabled
    if not branches and not with_embedding:
        return {}
    key = json.dumps(
        {
            "model": ctx.cfg.model,
            "tiny_model": ctx.cfg.tiny_model,
            "seed": ctx.cfg.seed if ctx.cfg.tiny_model else None,
            # the initial weights (reference = base), cheaply: a changed model at the same path
            "weights": repr(sum(float(p.detach().double().sum()) for p in ctx.model.parameters())),
            "branches": branches,
            "embedding": with_embedding,
            "train": ctx.train.fingerprint(),
            "test": ctx.test.fingerprint(),
        }
    )
    fingerprint = hashlib.sha256(key.encode()).hexdigest()
    path = Path(ctx.cfg.output_dir) / REFERENCE_FILE
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                return load_file(str(path))
    tensors = compute_reference(
        ctx, {"train": ctx.train, "test": ctx.test}, branches, with_embedding
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(tmp),
        metadata={"fingerprint": fingerprint},
    )
    os.replace(tmp, path)
    return tensors


# ---------------------------------------------------------------------------------- the run


@dataclass
class Context:
    cfg: PreferenceConfig
    spec: LossSpec
    loss_fn: object
    model: object
    tokenizer: object
    train: PreferenceSet
    test: PreferenceSet
    order: TrainData
    optimizer: torch.optim.Optimizer
    scheduler: object
    generator: torch.Generator
    total_steps: int
    shared_prefix: bool
    pad_id: int
    beta: float
    task_examples: list[Example] = field(default_factory=list)
    reference: dict[str, Tensor] = field(default_factory=dict)
    udm: Tensor | None = None
    udm_metrics: dict[str, float] = field(default_factory=dict)
    shift: RunningMean | None = None
    eval_rewards: Tensor | None = None  # the last held-out implicit rewards (reward-model stats)

    @property
    def branches(self) -> list[str]:
        """The answers the loss takes per row: chosen and rejected, or one completion."""
        return ["chosen", "rejected"] if self.spec.kind == PAIRED else ["completion"]

    @property
    def trainable(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad]


def load_preference_data(cfg: PreferenceConfig, spec: LossSpec):
    """Train/test rows (errors name file and line): unpaired losses take pairs as two examples."""
    fmt, train = load_preferences(cfg.data.train_file)
    if spec.kind == PAIRED and fmt != PAIRED:
        raise ValueError(
            f"{cfg.data.train_file}: loss {spec.name!r} needs paired rows (prompt/chosen/rejected); "
            f"this file has unpaired rows (prompt/completion/label): use kto or bco"
        )
    if cfg.data.test_file:
        test_fmt, test = load_preferences(cfg.data.test_file)
        if test_fmt != fmt:
            raise ValueError(
                f"{cfg.data.test_file}: {test_fmt} rows, but {cfg.data.train_file} has {fmt} rows"
            )
    else:
        train, test = split_held_out(train, cfg.data.test_size, cfg.seed)
    if spec.kind != PAIRED and fmt == PAIRED:
        train, test = unpair(train), unpair(test)
    return train, test


def task_examples(cfg: PreferenceConfig) -> list[Example]:
    t = cfg.eval.task
    if t is None:
        return []
    if t.test_file or t.train_file:
        from lmpo.data.files import load_examples

        return load_examples(t.test_file or t.train_file)[: t.test_size]
    from lmpo.data.tasks import load_task

    return load_task(t.name, "test", t.test_size, seed=0, **t.params)


def build_context(cfg: PreferenceConfig) -> Context:
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    spec = inspect_loss(cfg.loss)
    # data errors surface before the model loads
    rows_train, rows_test = load_preference_data(cfg, spec)
    examples = task_examples(cfg)
    model, tok = load_base(cfg.model, tiny=cfg.tiny_model, seed=cfg.seed)
    kw = {
        "system_prompt": cfg.data.system_prompt,
        "max_prompt_tokens": cfg.data.max_prompt_tokens,
        "max_completion_tokens": cfg.data.max_completion_tokens,
    }
    train, test = encode(tok, rows_train, **kw), encode(tok, rows_test, **kw)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    model.train()
    registry = PAIRED_LOSSES if spec.kind == PAIRED else UNPAIRED_LOSSES
    params = {**registry.params(spec.name), **cfg.loss.params}
    total = cfg.total_steps(len(train))
    optimizer, scheduler = build_optimizer(model, cfg.optim, total)
    ctx = Context(
        cfg,
        spec,
        registry.get(spec.name),
        model,
        tok,
        train,
        test,
        TrainData(train=list(range(len(train))), test=[], seed=cfg.seed),
        optimizer,
        scheduler,
        torch.Generator().manual_seed(cfg.seed),
        total,
        supports_shared_prefix(model) and cfg.shared_prefix,
        tok.pad_token_id,
        float(params.get("beta", 1.0)),
        examples,
    )
    ctx.reference = reference_cache(ctx)  # before any update: the policy is still the reference
    if cfg.udm.enabled:
        u = cfg.udm
        ctx.udm, ctx.udm_metrics = udm_weights(
            ctx.reference["train/prompt_embedding"],
            torch.tensor(train.desirable),
            sample_size=u.prompt_sample_size,
            l2=u.l2,
            min_ratio=u.min_ratio,
            max_ratio=u.max_ratio,
            seed=cfg.seed,
        )
    if spec.uses_shift:
        ctx.shift = RunningMean()
    return ctx


def train_preference(
    cfg: PreferenceConfig, *, resume: bool = False, show_progress: bool = True
) -> dict:
    """Run (or resume) an offline preference run; returns a summary dict (also written to summary.json)."""
    run_dir = Path(cfg.output_dir)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if not resume and list_checkpoints(run_dir):
        raise RunDirError(
            f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose another output_dir"
        )
    t_start = time.time()
    ctx = build_context(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    start, first_eval = 0, None
    if ckpt is not None:
        state = load_checkpoint(
            ckpt,
            model=ctx.model,
            optimizer=ctx.optimizer,
            scheduler=ctx.scheduler,
            generator=ctx.generator,
        )
        start, first_eval = state["step"], state.get("first_eval")
        if ctx.shift is not None:
            ctx.shift.load_state_dict(state["shift"])
    log = MetricsLog(run_dir, resume_step=start if ckpt is not None else None)
    n_train, n_total = count_trainable(ctx.model)
    with StepProgress(ctx.total_steps, start=start, enabled=show_progress) as bar:
        bar.print(
            f"lmpo: {cfg.loss.name} on {len(ctx.train)} train / {len(ctx.test)} held-out rows, "
            f"{ctx.total_steps} steps; {n_train / 1e6:.2f}M of {n_total / 1e6:.1f}M parameters train; run dir {run_dir}"
        )
        if start == 0:
            log.log(
                0,
                {
                    "data/train_rows": len(ctx.train),
                    "data/test_rows": len(ctx.test),
                    "data/truncated": ctx.train.truncated + ctx.test.truncated,
                    **ctx.udm_metrics,
                },
            )
            if cfg.eval.at_start:
                first_eval = run_eval(ctx, 0, log, bar)
        last: dict[str, float] = {}
        for step in range(start + 1, ctx.total_steps + 1):
            last = preference_step(step, ctx)
            log.log(step, last)
            shown = " ".join(
                f"{k.split('/')[-1]} {last[k]:.3f}"
                for k in ("loss", "rewards/accuracy", "rewards/margin")
                if k in last
            )
            bar.advance(f"{shown} {last['time/step']:.1f}s/step")
            if cfg.eval.every and step % cfg.eval.every == 0 and step != ctx.total_steps:
                run_eval(ctx, step, log, bar)
            if cfg.checkpoint_every and (
                step % cfg.checkpoint_every == 0 or step == ctx.total_steps
            ):
                save_checkpoint(
                    run_dir,
                    step,
                    model=ctx.model,
                    optimizer=ctx.optimizer,
                    scheduler=ctx.scheduler,
                    generator=ctx.generator,
                    keep=cfg.keep_checkpoints,
                    state={
                        "shift": ctx.shift.state_dict() if ctx.shift else None,
                        "first_eval": first_eval,
                        "rows_seen": step * cfg.batch.pairs_per_step,
                    },
                )
        final_eval = run_eval(ctx, ctx.total_steps, log, bar)
    log.close()
    save_final(ctx.model, ctx.tokenizer, run_dir / "final")
    if ctx.spec.needs_reference:  # the policy is also a reward model: its implicit reward
        write_reward_model_meta(ctx, run_dir / "final")
    plots = plot_metrics(
        run_dir / "metrics.jsonl",
        run_dir,
        {
            "loss": ["loss", "eval/loss"],
            "pair accuracy": ["rewards/accuracy", "eval/pair_accuracy"],
            "implicit reward": ["rewards/chosen", "rewards/rejected", "rewards/margin"],
            "log-probs": ["logps/chosen", "logps/rejected"],
            "held-out accuracy": ["eval/accuracy"],
        },
    )
    first_eval = first_eval or {}
    summary = {
        "steps": ctx.total_steps,
        "loss": cfg.loss.name,
        "pair_accuracy_before": first_eval.get("eval/pair_accuracy"),
        "pair_accuracy_after": final_eval.get("eval/pair_accuracy"),
        "wall_time_s": time.time() - t_start,
        "final_model": str(run_dir / "final"),
        "reference_cache": str(run_dir / REFERENCE_FILE) if ctx.reference else None,
        "plots": [str(p) for p in plots],
        "last_step": last,
    }
    if ctx.task_examples:
        summary["accuracy_before"] = first_eval.get("eval/accuracy")
        summary["accuracy_after"] = final_eval.get("eval/accuracy")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
