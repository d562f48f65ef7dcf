"""What the user sees and keeps: JSONL metrics, TensorBoard scalars, PNG plots, a progress bar."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class MetricsLog:
    """Appends one JSON object per step to metrics.jsonl and mirrors scalars to TensorBoard.

    On resume, lines after the checkpoint's step are dropped so the file tells one story.
    """

    def __init__(
        self, run_dir: Path, *, resume_step: int | None = None, tensorboard: bool = True
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(
                    str(Path(run_dir) / "tb"), purge_step=resume_step + 1 if resume_step else None
                )
            except ImportError:  # tensorboard is a dependency; tolerate a broken install
                self._tb = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, out_dir: Path, groups: dict[str, list[str]]) -> list[Path]:
    """One PNG per group of curves (e.g. reward, accuracy) from metrics.jsonl."""
    rows = read_metrics(metrics_path)
    written = []
    for title, keys in groups.items():
        series = {
            k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), int | float)] for k in keys
        }
        p = plot_curves({k: v for k, v in series.items() if v}, out_dir, title)
        if p is not None:
            written.append(p)
    return written


def plot_curves(
    series: dict[str, list[tuple[float, float]]], out_dir: Path, title: str, xlabel: str = "step"
) -> Path | None:
    """One PNG (out_dir/TITLE.png) of named (x, y) curves; None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, pts in series.items():
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=k)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(out_dir) / f"{title.replace(' ', '_').replace('/', '_')}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


class StepProgress:
    """A rich progress bar with ETA and a live summary line; silent when disabled."""

    def __init__(
        self, total: int, *, start: int = 0, enabled: bool = True, description: str = "train"
    ) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task(description, total=total, completed=start, info="")
        self.t0 = time.time()

    def __enter__(self):
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress:
            self._progress.stop()

    def advance(self, info: str = "") -> None:
        if self._progress:
            self._progress.update(self._task, advance=1, info=info)

    def print(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg)
