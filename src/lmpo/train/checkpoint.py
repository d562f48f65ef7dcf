"""Atomic checkpoints that resume a run exactly.

A checkpoint is a directory ``step-000010`` holding the trainable weights (safetensors),
the optimizer and scheduler states, RNG states and a JSON trainer state (step, data
position, controller states). It is written to a temporary directory and renamed into
place, so a crash mid-write leaves the previous checkpoint intact. Loading uses
``torch.load(weights_only=True)``: no pickle of arbitrary objects is ever executed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad
    }


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "python": random.getstate(),
    }


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model,
    optimizer,
    scheduler,
    generator: torch.Generator,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"{PREFIX}{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-" + final.name, dir=run_dir))
    try:
        save_file(trainable_state(model), str(tmp / "weights.safetensors"))
        rng = rng_state(generator)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng_torch": rng["torch"],
                "rng_generator": rng["generator"],
            },
            tmp / "train_state.pt",
        )
        py = rng["python"]
        payload = dict(state, step=step, python_rng=[py[0], list(py[1]), py[2]])
        (tmp / "trainer_state.json").write_text(json.dumps(payload, indent=1))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(d: Path) -> None:
    for f in d.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def list_checkpoints(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(
        p
        for p in run_dir.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and (p / "trainer_state.json").is_file()
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(
    path: Path, *, model, optimizer, scheduler, generator: torch.Generator
) -> dict[str, Any]:
    """Restore everything saved by save_checkpoint; returns the trainer state dict."""
    path = Path(path)
    weights = load_file(str(path / "weights.safetensors"))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ValueError(
            f"{path}: checkpoint does not match the model (missing {missing[:3]}, unexpected {extra[:3]}); "
            "was it written with a different model or LoRA setting?"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    ts = torch.load(path / "train_state.pt", weights_only=True)
    optimizer.load_state_dict(ts["optimizer"])
    scheduler.load_state_dict(ts["scheduler"])
    torch.set_rng_state(ts["rng_torch"])
    generator.set_state(ts["rng_generator"])
    state = json.loads((path / "trainer_state.json").read_text())
    py = state.pop("python_rng")
    random.setstate((py[0], tuple(py[1]), py[2]))
    return state
