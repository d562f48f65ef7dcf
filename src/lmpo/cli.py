"""`lmpo` command line: train, eval, recipes, tasks."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

USAGE_TRAIN = "lmpo train [RECIPE] [key=value ...]   e.g. lmpo train default optim.lr=2e-5 steps=10"
# the run function of each config kind (config.RUN_KINDS), imported only when used
TRAINERS = {
    "online": "lmpo.train.online:train_online",
    "preference": "lmpo.train.preference:train_preference",
    "reward_model": "lmpo.train.reward_model:train_reward_model",
    "iterative": "lmpo.train.iterative:train_iterative",
}


def _cmd_train(args) -> int:
    from lmpo.config import ConfigError, load_config

    recipe, overrides = None, []
    for item in args.items:
        if "=" in item:
            overrides.append(item)
        elif recipe is None:
            recipe = item
        else:
            raise ConfigError(f"unexpected argument {item!r}; usage: {USAGE_TRAIN}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(recipe, overrides)  # fails here, before any model loads
    if args.dry_run:
        from lmpo.config import dump_config

        print(dump_config(cfg))
        return 0
    import importlib

    module, fn = TRAINERS[cfg.kind].split(":")
    train = getattr(importlib.import_module(module), fn)
    summary = train(cfg, resume=args.resume, show_progress=not args.no_progress)
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="lmpo train")
    t.add_column("metric")
    t.add_column("value", justify="right")
    keys = (
        "pair_accuracy_before",
        "pair_accuracy_after",
        "accuracy_before",
        "accuracy_after",
        "steps",
        "rounds",
        "pairs_per_round",
        "accuracy_per_round",
        "wall_time_s",
        "final_model",
    )
    for k in (k for k in keys if k in summary):
        v = summary[k]
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(t)


def _cmd_eval(args) -> int:
    import torch

    from lmpo.data.files import load_examples
    from lmpo.data.tasks import load_task
    from lmpo.models.loading import load_model
    from lmpo.train.evaluate import evaluate

    if args.file:
        examples = load_examples(args.file)[: args.n]
        name = str(args.file)
    else:
        params = dict(_kv(p) for p in args.param)
        examples = load_task(args.task, "test", args.n, seed=0, **params)
        name = args.task
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    res = evaluate(
        model,
        tok,
        examples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        system_prompt=args.system_prompt,
        k=args.k,
        temperature=args.temperature,
        seed=args.seed,
    )
    out = {
        "model": args.model,
        "task": name,
        "n": res.n,
        "accuracy": res.accuracy,
        "pass_at_k": res.pass_at_k,
        "mean_length": res.mean_length,
        "truncated_frac": res.truncated_frac,
    }
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"lmpo eval: {name}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("examples", str(res.n))
    t.add_row("greedy accuracy", f"{res.accuracy:.4f}")
    for k, v in res.pass_at_k.items():
        t.add_row(f"pass@{k} ({args.k} samples)", f"{v:.4f}")
    t.add_row("mean completion tokens", f"{res.mean_length:.1f}")
    t.add_row("truncated", f"{res.truncated_frac:.3f}")
    Console().print(t)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**out, "samples": res.samples}, indent=1))
    else:
        print(json.dumps(out))
    return 0


def _cmd_eval_pairs(args) -> int:
    """Held-out pair accuracy of a saved reward model (either kind) on a pair file."""
    import torch

    from lmpo.models.reward_model import load_reward_model, score_pairs
    from lmpo.train.reward_model import read_pairs

    pairs = read_pairs(args.pairs)  # bad rows fail naming file and line, before the model loads
    if args.threads:
        torch.set_num_threads(args.threads)
    rm = load_reward_model(args.reward_model)
    rw, rl = score_pairs(rm, pairs, batch_size=args.batch_size)
    out = {
        "reward_model": str(args.reward_model),
        "kind": rm.meta.get("kind", "scalar"),
        "pairs_file": str(args.pairs),
        "pairs": len(pairs),
        "pair_accuracy": float((rw > rl).float().mean()) if pairs else None,
        "mean_margin": float((rw - rl).mean()) if pairs else None,
    }
    print(json.dumps(out))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        rows = [
            {"id": p.id, "chosen_reward": float(a), "rejected_reward": float(b)}
            for p, a, b in zip(pairs, rw, rl, strict=True)
        ]
        Path(args.out).write_text(json.dumps({**out, "rows": rows}, indent=1))
    return 0


def _kv(item: str):
    import yaml

    if "=" not in item:
        raise ValueError(f"--param {item!r}: expected key=value")
    k, v = item.split("=", 1)
    return k, yaml.safe_load(v)


def _cmd_recipes(args) -> int:
    import yaml

    from lmpo.config import RECIPES_DIR, list_recipes

    for name in list_recipes():
        first = (RECIPES_DIR / f"{name}.yaml").read_text().splitlines()[0]
        desc = first.lstrip("# ").strip() if first.startswith("#") else ""
        print(f"{name:28s} {desc}")
    if args.show:
        print(
            yaml.safe_dump(
                yaml.safe_load((RECIPES_DIR / f"{args.show}.yaml").read_text()), sort_keys=False
            )
        )
    return 0


def _cmd_tasks(args) -> int:
    from lmpo.data.tasks import TASKS

    for name in TASKS.names():
        task = TASKS.get(name)
        doc = (task.__doc__ or "").strip().splitlines()
        print(f"{name:16s} {doc[0] if doc else ''}")
    return 0


def _cmd_pairs(args) -> int:
    from lmpo.config import RewardSpec
    from lmpo.data.files import load_examples
    from lmpo.data.pairs import build_rows, sample_and_score, write_jsonl
    from lmpo.data.tasks import load_task
    from lmpo.rewards.rewardset import RewardSet
    from lmpo.rollout.sampler import SamplingConfig
    from lmpo.train.logging import StepProgress

    if args.file:
        if args.split:
            raise ValueError("--split applies to built-in tasks; a --file is used as it is")
        examples, name = load_examples(args.file)[: args.n], str(args.file)
    else:
        params = dict(_kv(p) for p in args.param)
        examples, name = (
            load_task(args.task, args.split or "train", args.n, seed=args.seed, **params),
            args.task,
        )
    rewards = RewardSet(
        [RewardSpec.model_validate(_reward_item(r)) for r in args.reward or ["correctness"]]
    )
    if not 0.0 <= args.flip <= 1.0:
        raise ValueError(f"--flip must be in [0, 1], got {args.flip}")
    if args.k < 2 or args.pairs_per_prompt < 1:
        raise ValueError(
            f"need --k >= 2 and --pairs-per-prompt >= 1, got {args.k} and {args.pairs_per_prompt}"
        )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.tiny_model:
        from lmpo.models.loading import tiny_model

        model, tok = tiny_model(seed=args.seed)
    else:
        from lmpo.models.loading import load_model

        model, tok = load_model(args.model)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    calls = -(-len(examples) // max(1, args.batch_size // args.k))
    with StepProgress(calls, enabled=not args.no_progress, description="pairs") as bar:
        samples = sample_and_score(
            model,
            tok,
            examples,
            rewards,
            sampling,
            k=args.k,
            batch_size=args.batch_size,
            seed=args.seed,
            system_prompt=args.system_prompt,
            threshold=args.threshold,
            progress=lambda done: bar.advance(f"{done}/{len(examples)} prompts"),
        )
    res = build_rows(
        examples,
        samples,
        pairs_per_prompt=args.pairs_per_prompt,
        flip_fraction=args.flip,
        seed=args.seed,
        system_prompt=args.system_prompt,
        pairing=args.pairing,
    )
    if args.pairs_out:
        write_jsonl(args.pairs_out, res.pairs)
    if args.binary_out:
        write_jsonl(args.binary_out, res.binary)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"lmpo pairs: {name}")
    t.add_column("")
    t.add_column("value", justify="right")
    for key, v in res.stats.items():
        t.add_row(key.replace("_", " "), f"{v:.3f}" if isinstance(v, float) else str(v))
    t.add_row("pairs written to", args.pairs_out or "(skipped)")
    t.add_row("binary rows written to", args.binary_out or "(skipped)")
    Console().print(t)
    print(json.dumps({"task": name, **res.stats}))
    return 0


def _reward_item(item: str) -> dict:
    """--reward NAME[=WEIGHT], or a YAML mapping like "{name: reward_model, params: {paths: [rm]}}"."""
    import yaml

    if item.lstrip().startswith("{"):
        data = yaml.safe_load(item)
        if not isinstance(data, dict):
            raise ValueError(f"--reward {item!r}: expected a mapping with name, weight, params")
        return data
    name, sep, weight = item.partition("=")
    return {"name": name, "weight": float(weight)} if sep else {"name": name}


def _add_pairs_parser(sub) -> None:
    a = sub.add_parser(
        "pairs", help="sample k answers per prompt, score them, write preference pairs (JSONL)"
    )
    a.add_argument(
        "--model",
        default="embedded",
        help="'embedded', a HF directory (e.g. runs/x/final) or a .gguf",
    )
    a.add_argument(
        "--tiny-model", action="store_true", help="tests: a tiny random model instead of --model"
    )
    a.add_argument("--task", default="arithmetic", help="built-in task (see `lmpo tasks`)")
    a.add_argument(
        "--param", action="append", default=[], help="task parameter key=value, e.g. difficulty=2"
    )
    a.add_argument(
        "--split", choices=["train", "test"], help="built-in task split (default: train)"
    )
    a.add_argument("--file", help="JSONL/Parquet with prompt and answer instead of a task")
    a.add_argument("--n", type=int, default=200, help="prompts")
    a.add_argument("--k", type=int, default=8, help="answers sampled per prompt")
    a.add_argument("--temperature", type=float, default=1.0)
    a.add_argument("--max-new-tokens", type=int, default=64)
    a.add_argument("--batch-size", type=int, default=64, help="completions per generate call")
    a.add_argument("--system-prompt")
    a.add_argument(
        "--reward",
        action="append",
        help="NAME[=WEIGHT] or a YAML mapping; repeatable (default: correctness)",
    )
    a.add_argument(
        "--threshold",
        type=float,
        help="good = total reward >= this (default: the task's answer check)",
    )
    a.add_argument(
        "--pairs-per-prompt",
        type=int,
        default=1,
        help="up to m pairs per mixed prompt, best vs worst",
    )
    a.add_argument(
        "--pairing",
        choices=["ranked", "all"],
        default="ranked",
        help="ranked: i-th best good vs i-th worst bad, no answer reused (preference training); "
        "all: every good vs every bad answer, for reward models (cap with --pairs-per-prompt)",
    )
    a.add_argument(
        "--flip",
        type=float,
        default=0.0,
        help="fraction of pairs (and of binary rows) with flipped labels",
    )
    a.add_argument("--seed", type=int, default=0, help="task draw, sampling and flips")
    a.add_argument(
        "--pairs-out",
        default="pairs.jsonl",
        help="paired rows {prompt, chosen, rejected}; '' to skip",
    )
    a.add_argument(
        "--binary-out",
        default="binary.jsonl",
        help="unpaired rows {prompt, completion, label}; '' to skip",
    )
    a.add_argument("--threads", type=int)
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.set_defaults(fn=_cmd_pairs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmpo", description="Post-train causal language models with policy optimization."
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train", help="train with a recipe (default: GRPO on the embedded model)", usage=USAGE_TRAIN
    )
    t.add_argument("items", nargs="*", help="a recipe name or YAML path, then key=value overrides")
    t.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in output_dir"
    )
    t.add_argument("--output-dir", help="shortcut for output_dir=...")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--dry-run", action="store_true", help="validate and print the config, then stop"
    )
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="greedy accuracy / pass@k of a model on a task or a file")
    e.add_argument(
        "--model",
        default="embedded",
        help="'embedded', a HF directory (e.g. runs/x/final) or a .gguf",
    )
    e.add_argument("--task", default="arithmetic", help="built-in task (see `lmpo tasks`)")
    e.add_argument(
        "--param", action="append", default=[], help="task parameter key=value, e.g. difficulty=2"
    )
    e.add_argument("--file", help="JSONL/Parquet with prompt and answer instead of a task")
    e.add_argument("--n", type=int, default=200, help="examples")
    e.add_argument("--k", type=int, default=0, help="also pass@k from k samples per prompt")
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--max-new-tokens", type=int, default=64)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--system-prompt")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int)
    e.add_argument("--out", help="write results (and every completion) as JSON here")
    e.set_defaults(fn=_cmd_eval)

    ep = sub.add_parser(
        "eval-pairs",
        help="pair accuracy of a saved reward model (scalar head or a DPO policy) on a pair file",
    )
    ep.add_argument(
        "reward_model", help="a reward-model directory: runs/<rm>/final, or runs/<dpo run>/final"
    )
    ep.add_argument("pairs", help="JSONL/Parquet pairs prompt/chosen/rejected")
    ep.add_argument("--batch-size", type=int, default=16, help="sequences per forward")
    ep.add_argument("--threads", type=int)
    ep.add_argument("--out", help="also write every pair's two rewards as JSON here")
    ep.set_defaults(fn=_cmd_eval_pairs)

    r = sub.add_parser("recipes", help="list the shipped recipes")
    r.add_argument("--show", help="print one recipe")
    r.set_defaults(fn=_cmd_recipes)

    k = sub.add_parser("tasks", help="list the built-in verifiable tasks")
    k.set_defaults(fn=_cmd_tasks)
    _add_pairs_parser(sub)
    from lmpo.bench.cli import add_parser as _add_bench_parser  # lmpo vs TRL (issue #5)

    _add_bench_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as e:
        if os.environ.get("LMPO_DEBUG"):  # full traceback for bug reports
            raise
        msg = e.args[0] if e.args else str(e)
        print(f"lmpo {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
