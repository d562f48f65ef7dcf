"""Iterative DPO from self-verified samples: rounds of sample, verify, pair, train.

Round r (Iterative RPO, Pang et al. 2024, arXiv 2404.19733; online iterative DPO, Xiong/Dong
et al. 2024; shared/algorithms/preference.md §15.2), with pi_0 = ``cfg.model``:

1. **Pairs.** ``pairs.prompts_per_round`` fresh prompts of the task's train split (consecutive
   slices of one seeded permutation, so no two rounds share a prompt) each get ``pairs.k``
   answers sampled from pi_r and scored by the verifiers (``data.pairs.sample_and_score``);
   each prompt's best good answers are paired with its worst bad ones (``build_rows``).
   Written to ``round-r/pairs.jsonl`` and ``round-r/binary.jsonl``.
2. **Train.** ``train_preference`` on them (``pairs.jsonl`` for a paired loss such as DPO,
   ``binary.jsonl`` for an unpaired one such as KTO), started from pi_r, in ``round-r/train``.
   A preference run computes its reference log-probs from the model it starts from, so the
   reference is pi_r: refreshed every round, as iterative DPO prescribes. Its ``final/`` is
   pi_{r+1}; the optimizer state starts fresh each round.
3. **Eval.** Greedy accuracy of pi_{r+1} on ``eval.size`` problems of the task's test split.

A round whose samples give no training rows (every prompt's answers all good or all bad, or
all blank) trains nothing: it is recorded with ``trained: false`` and the reason, and the next
round samples fresh prompts from the same model.

Departures from Iterative RPO: best-vs-worst pairing instead of uniform draws (see
``data/pairs.py``); no NLL term on the chosen answer unless the configured loss has one.

The run directory: ``round-r/`` (pairs, ``pairs_stats.json``, ``train/``, ``eval.jsonl``),
``rounds.jsonl`` (one row per finished round), ``summary.json`` and ``task_accuracy.png``.
``--resume`` skips the rounds in rounds.jsonl, reuses an unfinished round's pairs when
``pairs_stats.json`` (written after both files) exists, and continues its training from its
last checkpoint; raising ``rounds`` and resuming adds rounds to a finished run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from rich.console import Console

from lmpo.config import IterativeConfig, PreferenceConfig, dump_config, inspect_loss
from lmpo.data.pairs import build_rows, sample_and_score, write_jsonl
from lmpo.data.preference import PAIRED
from lmpo.data.sources import TrainData, load_data
from lmpo.models.policy import load_base
from lmpo.rewards.rewardset import RewardSet
from lmpo.rollout.sampler import SamplingConfig
from lmpo.train.evaluate import evaluate
from lmpo.train.logging import StepProgress, plot_curves, read_metrics
from lmpo.train.online import RunDirError
from lmpo.train.preference import train_preference

ROUNDS_FILE = "rounds.jsonl"
STATS_FILE = "pairs_stats.json"


def train_iterative(
    cfg: IterativeConfig, *, resume: bool = False, show_progress: bool = True
) -> dict:
    """Run (or resume) the rounds; returns a summary (also written to summary.json)."""
    out, t0 = Path(cfg.output_dir), time.time()
    done = finished_rounds(out, resume)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data, examples = round_data(cfg)  # data errors surface before a model loads
    paired = inspect_loss(cfg.preference.loss).kind == PAIRED
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    say = Console(stderr=True, quiet=not show_progress).print
    current = done[-1]["model"] if done else None  # None: the starting model
    model, tok = load_policy(cfg, current)
    before = done[-1]["accuracy"] if done else None
    if not done and cfg.eval.at_start:
        before = task_accuracy(cfg, model, tok, examples, out / "eval-start.jsonl")
        say(f"start: task accuracy {before:.3f}")
    for r in range(len(done), cfg.rounds):
        t_round, rd = time.time(), out / f"round-{r}"
        stats = round_pairs(
            cfg, r, model, tok, data, show_progress
        )  # sample with pi_r, verify, pair
        rows = stats["pairs"] if paired else stats["binary_rows"]
        row = {"round": r, **stats, "accuracy_before": before, "trained": rows > 0}
        if rows:
            del model  # train_preference loads pi_r itself; its reference is pi_r
            run = cfg.round_config(
                r,
                str(rd / ("pairs.jsonl" if paired else "binary.jsonl")),
                current or cfg.model,
                cfg.tiny_model and current is None,
            )
            s = train_round(run, resume, show_progress)
            current = s["final_model"]
            row.update(train_steps=s["steps"], pair_accuracy_after=s.get("pair_accuracy_after"))
            model, tok = load_policy(cfg, current)
        else:
            row["skipped"] = (
                f"0 training rows from {stats['prompts']} prompts ({stats['all_good_groups']} all good, "
                f"{stats['all_bad_groups']} all bad): no training; the next round samples from the same model"
            )
            say(f"round {r}: {row['skipped']}")
        if rows or before is None:
            before = task_accuracy(cfg, model, tok, examples, rd / "eval.jsonl")
        row.update(accuracy=before, model=current, wall_time_s=time.time() - t_round)
        with (out / ROUNDS_FILE).open("a") as f:
            f.write(json.dumps(row) + "\n")
        done.append(row)
        say(f"round {r}: {stats['pairs']} pairs, task accuracy {before:.3f}")
    return finish(cfg, done, time.time() - t0)


def finished_rounds(out: Path, resume: bool) -> list[dict]:
    """The rows of rounds.jsonl (checked); a used output_dir needs ``resume``."""
    done = read_metrics(out / ROUNDS_FILE)
    if not resume and (done or any(out.glob("round-*"))):
        raise RunDirError(
            f"{out} already holds rounds: pass --resume to continue it, or choose another output_dir"
        )
    if [row.get("round") for row in done] != list(range(len(done))):
        raise ValueError(f"{out / ROUNDS_FILE}: rounds are not 0..{len(done) - 1} in order")
    for row in done:
        if row["model"] is not None and not Path(row["model"]).is_dir():
            raise FileNotFoundError(
                f"{out / ROUNDS_FILE}: round {row['round']}'s model {row['model']} is missing"
            )
    return done


def round_data(cfg: IterativeConfig) -> tuple[TrainData, list]:
    """The task's train split (prompts, visited in a seeded order) and the eval problems."""
    data = load_data(cfg)
    need = cfg.rounds * cfg.pairs.prompts_per_round
    if need > len(data.train):
        raise ValueError(
            f"rounds x pairs.prompts_per_round = {need} fresh prompts, but the task's train split has "
            f"{len(data.train)}: rounds never reuse a prompt"
        )
    return data, data.test[: cfg.eval.size or len(data.test)]


def load_policy(cfg: IterativeConfig, path: str | None):
    """pi_r: a finished round's final model, or (path None) the starting model."""
    model, tok = load_base(path or cfg.model, tiny=cfg.tiny_model and path is None, seed=cfg.seed)
    return model.eval(), tok


def round_pairs(
    cfg: IterativeConfig, r: int, model, tok, data: TrainData, show_progress: bool
) -> dict:
    """Sample, verify and pair round r's prompts; write the files. Reused when already complete."""
    rd, p = Path(cfg.output_dir) / f"round-{r}", cfg.pairs
    if (rd / STATS_FILE).is_file():
        return json.loads((rd / STATS_FILE).read_text())
    examples = data.prompts_for_step(r + 1, p.prompts_per_round)  # slice r of the permutation
    sampling = SamplingConfig(max_new_tokens=p.max_new_tokens, temperature=p.temperature)
    calls = -(-len(examples) // max(1, p.batch_size // p.k))
    with StepProgress(calls, enabled=show_progress, description=f"round {r}: sampling") as bar:
        samples = sample_and_score(
            model,
            tok,
            examples,
            RewardSet(p.rewards),
            sampling,
            k=p.k,
            batch_size=p.batch_size,
            seed=cfg.seed * 1000 + r,
            system_prompt=cfg.task.system_prompt,
            threshold=p.threshold,
            progress=lambda n: bar.advance(f"{n}/{len(examples)} prompts"),
        )
    res = build_rows(
        examples,
        samples,
        pairs_per_prompt=p.pairs_per_prompt,
        seed=cfg.seed + r,
        system_prompt=cfg.task.system_prompt,
    )
    write_jsonl(rd / "binary.jsonl", res.binary)
    write_jsonl(rd / "pairs.jsonl", res.pairs)
    tmp = rd / f".{STATS_FILE}.tmp"
    tmp.write_text(json.dumps(res.stats))
    os.replace(tmp, rd / STATS_FILE)  # last: marks both files complete
    return res.stats


def train_round(run: PreferenceConfig, resume: bool, show_progress: bool) -> dict:
    """train_preference for one round; a round that finished before an interruption is read back."""
    summary = Path(run.output_dir) / "summary.json"
    if resume and summary.is_file() and (Path(run.output_dir) / "final").is_dir():
        return json.loads(summary.read_text())
    return train_preference(run, resume=resume, show_progress=show_progress)


def task_accuracy(cfg: IterativeConfig, model, tok, examples: list, path: Path) -> float:
    """Greedy accuracy on the eval problems; every completion is kept in ``path``."""
    res = evaluate(
        model,
        tok,
        examples,
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        system_prompt=cfg.task.system_prompt,
    )
    write_jsonl(path, res.samples)
    return res.accuracy


def finish(cfg: IterativeConfig, rows: list[dict], wall_time: float) -> dict:
    """summary.json and the accuracy-vs-round plot (x = rounds trained; 0 = the starting model)."""
    out = Path(cfg.output_dir)
    acc = [rows[0]["accuracy_before"]] + [row["accuracy"] for row in rows]
    points = [(i, a) for i, a in enumerate(acc) if a is not None]
    plot = plot_curves(
        {"greedy accuracy": points},
        out,
        "task accuracy",
        xlabel="rounds trained (0: the starting model)",
    )
    summary = {
        "rounds": len(rows),
        "accuracy_before": acc[0],
        "accuracy_after": acc[-1],
        "accuracy_per_round": acc[1:],
        "pairs_per_round": [row["pairs"] for row in rows],
        "trained_per_round": [row["trained"] for row in rows],
        "steps": sum(row.get("train_steps", 0) for row in rows),
        "final_model": rows[-1]["model"] or cfg.model,
        "wall_time_s": wall_time,
        "plots": [str(plot)] if plot else [],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
