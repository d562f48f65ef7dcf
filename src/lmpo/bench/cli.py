"""The `lmpo bench` subcommand (parser and handler; heavy imports happen only when it runs)."""

from __future__ import annotations


def add_parser(sub) -> None:
    from lmpo.bench.specs import DEFAULT_CONFIGS, SPECS

    b = sub.add_parser(
        "bench",
        help="lmpo vs TRL on identical settings: s/step, time split, tokens/s, memory, FLOP use",
        description="Runs each tool in its own worker process. Default (--alternate rounds): per "
        "round, one process per tool, only one alive at a time (lmpo then TRL in odd rounds, TRL then "
        "lmpo in even ones), each running one warm-up and --steps measured steps and exiting; a round "
        "continues at the data step where the tool's previous round stopped. --alternate steps keeps "
        "both alive and alternates single steps (needs both tools' memory at once). Configurations: "
        + "; ".join(f"{n}: {s.description}" for n, s in SPECS.items()),
    )
    b.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma-separated (default: {','.join(DEFAULT_CONFIGS)})",
    )
    b.add_argument(
        "--steps",
        type=int,
        default=5,
        help="measured steps per tool (per round with --alternate rounds), after 1 warm-up",
    )
    b.add_argument(
        "--alternate",
        choices=["rounds", "steps"],
        default="rounds",
        help="rounds: one worker process alive at a time, tools alternate per round (default); "
        "steps: both workers alive, tools alternate per step",
    )
    b.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds per tool with --alternate rounds (default 2; medians over all rounds)",
    )
    b.add_argument("--threads", type=int, help="torch threads per tool (default: all cores)")
    b.add_argument("--tools", default="lmpo,trl", help="comma-separated subset of lmpo,trl")
    b.add_argument("--out", default="bench.json", help="results JSON (every step's record too)")
    b.add_argument("--markdown", help="also write the table as Markdown here")
    b.add_argument(
        "--workdir", help="keep model copies, logs and run dirs here (default: a temp dir)"
    )
    b.set_defaults(fn=run_cli)


def run_cli(args) -> int:
    from pathlib import Path

    from lmpo.bench.run import markdown, print_table, run_bench

    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    results = run_bench(
        split(args.configs),
        steps=args.steps,
        threads=args.threads,
        tools=split(args.tools),
        out=args.out,
        workdir=args.workdir,
        alternate=args.alternate,
        rounds=args.rounds,
    )
    print_table(results)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(results))
    print(f"results: {args.out}")
    failed = [
        c["config"]
        for c in results["configs"]
        if any(
            s.get("status") in ("error", "out of memory", "killed") for s in c["status"].values()
        )
    ]
    return 1 if failed else 0
