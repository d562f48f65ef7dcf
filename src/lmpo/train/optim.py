"""AdamW over the trainable parameters and a warmup + constant/linear/cosine LR schedule."""

from __future__ import annotations

import math

import torch


def lr_lambda(schedule: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def build_optimizer(model, cfg, total_steps: int, *, lr_overrides: dict | None = None):
    """lr_overrides: {parameter: lr} for parameters that learn at their own rate (e.g. a fresh
    reward head); the schedule scales every group alike."""
    own_lr = {id(p): lr for p, lr in (lr_overrides or {}).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in own_lr]}]
    for lr in sorted(set(own_lr.values())):
        groups.append({"params": [p for p in params if own_lr.get(id(p)) == lr], "lr": lr})
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(cfg.schedule, cfg.warmup_steps, total_steps)
    )
    return opt, sched
