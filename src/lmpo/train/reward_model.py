"""Train a scalar reward model on preference pairs (Bradley-Terry by default).

``train_reward_model(cfg)`` is the whole run: read the pair files (errors name file and
line, before any model loads), put a linear head on the base model's decoder
(``models/reward_model.py``), then take optimizer steps of ``batch_size`` pairs with the
registered reward-model loss (``REWARD_MODEL_LOSSES``, e.g. ``bradley_terry``), evaluating
held-out pair accuracy (fraction with r_chosen > r_rejected) before, every ``eval_every``
steps, and after. The run directory gets metrics.jsonl, plots, resumable checkpoints and
``final/``, a reward-model directory loadable with ``RewardModel.load`` and usable as the
``reward_model`` reward. The config is ``lmpo.config.RewardModelConfig`` (``kind: reward_model``,
so ``lmpo train reward_model`` runs it); the pair files are read by
``data.preference.load_preferences`` and split by ``split_held_out``, as in preference runs.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from lmpo.config import RewardModelConfig, dump_config
from lmpo.core import REWARD_MODEL_LOSSES
from lmpo.core.types import RewardModelInputs
from lmpo.data.files import DataError
from lmpo.data.preference import PAIRED, Pair, answer_text, load_preferences, split_held_out
from lmpo.models.policy import count_trainable, enable_checkpointing, load_base
from lmpo.models.reward_model import RewardModel, score_pairs
from lmpo.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from lmpo.train.logging import MetricsLog, StepProgress, plot_metrics
from lmpo.train.optim import build_optimizer


def read_pairs(path: str) -> list[Pair]:
    """The pairs of a file; a file of unpaired rows fails naming the file."""
    fmt, rows = load_preferences(path)
    if fmt != PAIRED:
        raise DataError(
            f"{path}: a reward model trains on pairs (prompt/chosen/rejected); "
            "this file has unpaired rows (prompt/completion/label)"
        )
    return rows


def load_splits(cfg: RewardModelConfig) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out) pairs; a file of unpaired rows fails naming the file."""
    pairs = read_pairs(cfg.train_file)
    if cfg.eval_file:
        return pairs, read_pairs(cfg.eval_file)
    f = cfg.eval_fraction
    n = max(1, round(f * len(pairs))) if f > 0 else 0
    return split_held_out(pairs, n, cfg.seed, max_fraction=f)


def build_reward_model(cfg: RewardModelConfig) -> RewardModel:
    """The base model's decoder with a fresh seeded head (the LM head is dropped)."""
    base, tok = load_base(cfg.model, tiny=cfg.tiny_model, seed=cfg.seed)
    rm = RewardModel.from_causal_lm(
        base,
        tok,
        max_length=cfg.max_length,
        seed=cfg.seed,
        base_model=cfg.model,
        init_std=cfg.head_init_std,
    )
    if cfg.gradient_checkpointing:
        enable_checkpointing(rm.backbone)
    return rm


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """The pairs of step ``step`` (1-based): consecutive slices of a seeded permutation per epoch,
    so a resumed run sees exactly the batches of an uninterrupted one."""
    per_epoch = math.ceil(n / batch_size)
    epoch, j = divmod(step - 1, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return perm[j * batch_size : (j + 1) * batch_size].tolist()


def pair_loss(rm: RewardModel, pairs: list[Pair], cfg: RewardModelConfig):
    """(loss, metrics) of the configured loss on one micro-batch; one forward for both sides."""
    r = rm.rewards(
        [p.prompt for p in pairs] * 2,
        [answer_text(p.chosen) for p in pairs] + [answer_text(p.rejected) for p in pairs],
    )
    margins = [p.margin for p in pairs]
    margin = None if all(m is None for m in margins) else torch.tensor([m or 0.0 for m in margins])
    inp = RewardModelInputs(r[: len(pairs)], r[len(pairs) :], margin)
    return REWARD_MODEL_LOSSES.get(cfg.loss.name)(inp, **cfg.loss.params)


def train_step(
    rm: RewardModel, pairs: list[Pair], cfg: RewardModelConfig, optimizer
) -> dict[str, float]:
    """One optimizer step over ``pairs``, accumulated over micro-batches (losses are pair means)."""
    rm.train()
    optimizer.zero_grad(set_to_none=True)
    out: dict[str, float] = {}
    for s in range(0, len(pairs), cfg.micro_batch_size):
        micro = pairs[s : s + cfg.micro_batch_size]
        w = len(micro) / len(pairs)
        loss, metrics = pair_loss(rm, micro, cfg)
        (loss * w).backward()
        for k, v in {"loss": float(loss.detach()), **metrics}.items():
            out[k] = out.get(k, 0.0) + w * v
    params = [p for p in rm.parameters() if p.requires_grad]
    out["grad_norm"] = float(
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
    )
    optimizer.step()
    return out


@torch.no_grad()
def evaluate_pairs(
    rm: RewardModel, pairs: list[Pair], cfg: RewardModelConfig
) -> tuple[dict, torch.Tensor]:
    """Held-out metrics (pair accuracy: r_chosen > r_rejected, ties count as wrong) and the
    raw rewards [2N] (chosen then rejected)."""
    if not pairs:
        return {}, torch.zeros(0)
    rw, rl = score_pairs(rm, pairs, batch_size=cfg.eval_batch_size)
    margins = [p.margin for p in pairs]
    margin = None if all(m is None for m in margins) else torch.tensor([m or 0.0 for m in margins])
    loss, m = REWARD_MODEL_LOSSES.get(cfg.loss.name)(
        RewardModelInputs(rw, rl, margin), **cfg.loss.params
    )
    metrics = {
        "eval/loss": float(loss),
        "eval/accuracy": float((rw > rl).float().mean()),
        "eval/margin": float((rw - rl).mean()),
        "eval/pairs": len(pairs),
    }
    return metrics, torch.cat([rw, rl])


def train_reward_model(
    cfg: RewardModelConfig, *, resume: bool = False, show_progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) reward-model training; returns a summary (also written to summary.json)."""
    run_dir = Path(cfg.output_dir)
    if not resume and list_checkpoints(run_dir):
        raise RuntimeError(
            f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose another output_dir"
        )
    ckpt = latest_checkpoint(run_dir) if resume else None
    t0 = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train, held = load_splits(cfg)  # data errors surface before the model loads
    if not train:
        raise ValueError(f"{cfg.train_file}: no training pairs left after holding out {len(held)}")
    rm = build_reward_model(cfg)
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    head_lr = {p: cfg.head_lr for p in rm.head.parameters()} if cfg.head_lr else None
    optimizer, scheduler = build_optimizer(rm, cfg.optim, steps, lr_overrides=head_lr)
    # unused by the maths here, but save_checkpoint/load_checkpoint keep a generator state
    generator = torch.Generator().manual_seed(cfg.seed)
    start, first = 0, None
    if ckpt is not None:
        state = load_checkpoint(
            ckpt, model=rm, optimizer=optimizer, scheduler=scheduler, generator=generator
        )
        start, first = state["step"], state.get("first_eval")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    log = MetricsLog(run_dir, resume_step=start if ckpt is not None else None)
    n_train, n_total = count_trainable(rm)
    with StepProgress(steps, start=start, enabled=show_progress, description="reward model") as bar:
        bar.print(
            f"lmpo: reward model, {len(train)} train / {len(held)} held-out pairs, "
            f"{n_train / 1e6:.2f}M of {n_total / 1e6:.1f}M parameters train; run dir {run_dir}"
        )
        if start == 0:
            first, _ = evaluate_pairs(rm, held, cfg)
            log.log(0, first)
        for step in range(start + 1, steps + 1):
            batch = [train[i] for i in batch_indices(step, len(train), cfg.batch_size, cfg.seed)]
            m = train_step(rm, batch, cfg, optimizer)
            scheduler.step()
            log.log(step, {**m, "lr": scheduler.get_last_lr()[0]})
            bar.advance(f"loss {m['loss']:.3f} acc {m.get('accuracy', float('nan')):.3f}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step != steps:
                log.log(step, evaluate_pairs(rm, held, cfg)[0])
            if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == steps):
                save_checkpoint(
                    run_dir,
                    step,
                    model=rm,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    generator=generator,
                    keep=cfg.keep_checkpoints,
                    state={"first_eval": first},
                )
        final, scores = evaluate_pairs(rm, held or train[:256], cfg)
        if held:
            log.log(steps, final)
            bar.print(
                f"held-out pair accuracy {final['eval/accuracy']:.3f} (before {first['eval/accuracy']:.3f})"
            )
    log.close()
    rm.meta.update(
        reward_mean=float(scores.mean()),
        reward_std=float(scores.std()) if len(scores) > 1 else 1.0,
        stats_on="held-out pairs" if held else "training pairs",
    )
    rm.save(run_dir / "final")
    plots = plot_metrics(
        run_dir / "metrics.jsonl",
        run_dir,
        {
            "reward model loss": ["loss", "eval/loss"],
            "pair accuracy": ["accuracy", "eval/accuracy"],
        },
    )
    summary = {
        "steps": steps,
        "train_pairs": len(train),
        "eval_pairs": len(held),
        "accuracy_before": (first or {}).get("eval/accuracy"),
        "accuracy_after": final.get("eval/accuracy") if held else None,
        "wall_time_s": time.time() - t0,
        "final_model": str(run_dir / "final"),
        "plots": [str(p) for p in plots],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
