"""Run benchmark configurations for lmpo and TRL, alternating them, and summarise them.

For each configuration, prepare the shared model directory (and pairs file), then, by
``alternate``:

* ``rounds`` (default): only one worker process is alive at a time, so one tool's peak
  memory never meets the other's resident set. For each round r = 1..R, each tool in turn
  (odd rounds lmpo, TRL; even rounds TRL, lmpo, so drift cancels) gets a fresh process
  that sets up, runs one warm-up and S measured steps, and exits. Round r runs data steps
  (r-1)(S+1)+1 .. r(S+1) on both tools (the first is the warm-up): each round continues
  where that tool's previous round stopped, so both see identical prompts per step.
* ``steps``: one worker per tool started one after the other (set-up does not overlap),
  both kept alive; one warm-up step each, then measured steps alternate (lmpo, TRL, lmpo,
  ...). Closest in time, but the machine needs both tools' memory at once.

Reported per tool: medians over all measured steps (of all rounds) of s/step and its split
(generate / score / reference / train / other), median tokens/s, peak RSS (the maximum over
the tool's worker processes), and training FLOP utilisation = 6 x parameters x step tokens
/ train seconds, divided by the best fp32 GEMM rate measured in the same run
(``gemm_peak``, before and after the workers). A worker that dies is reported with a
status and message, never by crashing the run: "out of memory" when it was SIGKILLed and
the kernel counted an OOM kill meanwhile, "killed" for other signals, else "error".

Two FLOP rates: the model rate counts 6N FLOPs for every token of every training sequence,
a prompt once per completion (or answer), and is comparable across tools; the hardware
rate counts only the tokens actually encoded (lmpo's shared-prefix forward encodes a
group's prompt once), and the utilisation reported is the hardware rate over the peak.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmpo.bench.specs import BenchSpec, get_specs, prepare

TOOLS = ("lmpo", "trl")
ALTERNATE = ("rounds", "steps")
STEP_KEYS = ("step_s", "generate_s", "score_s", "reference_s", "train_s", "other_s")


# ------------------------------------------------------------------------------- GEMM peak


def gemm_peak(
    sizes: tuple[int, ...] = (256, 512, 1024, 2048),
    min_time: float = 0.3,
    threads: int | None = None,
) -> dict:
    """Best fp32 torch.matmul rate over square sizes: {"best_gflops", "gflops_by_size"}."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    used, by_size = torch.get_num_threads(), {}
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        out = torch.empty(n, n)
        torch.matmul(a, b, out=out)  # warm-up
        reps, t0 = 0, time.perf_counter()
        while True:
            torch.matmul(a, b, out=out)
            reps += 1
            dt = time.perf_counter() - t0
            if dt >= min_time and reps >= 2:
                break
        by_size[str(n)] = 2.0 * n**3 * reps / dt / 1e9
    torch.set_num_threads(before)
    return {"best_gflops": max(by_size.values()), "gflops_by_size": by_size, "threads": used}


# --------------------------------------------------------------------------------- workers


class WorkerError(RuntimeError):
    """A worker failed: ``status`` is "error", "out of memory" (killed by the kernel's OOM
    killer) or "killed" (another signal, or SIGKILL with no OOM kill on record)."""

    def __init__(self, message: str, status: str = "error") -> None:
        super().__init__(message)
        self.status = status


def oom_kills() -> int | None:
    """The kernel's count of OOM kills since boot (``oom_kill`` in /proc/vmstat), if readable.

    It counts kills by the global and by cgroup OOM killers alike; a rise while a worker ran
    that ended in SIGKILL is how a worker is recognised as OOM-killed.
    """
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


class Worker:
    """A tool's worker process for one configuration, driven one step at a time."""

    def __init__(self, tool: str, job: dict, workdir: Path, name: str | None = None) -> None:
        self.tool = tool
        name = name or f"{job['spec']['name']}-{tool}"
        self.log_path = workdir / f"{name}.log"
        job_path = workdir / f"{name}.json"
        job_path.write_text(json.dumps({**job, "tool": tool}))
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "HF_DATASETS_CACHE": str(workdir / "hf-datasets"),
        }
        if job.get("threads"):
            env["OMP_NUM_THREADS"] = str(job["threads"])
        self.last_step = 0  # the last data step the worker reported
        self.last_rss_mb = 0.0  # the last peak RSS it reported
        self.oom_before = oom_kills()
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmpo.bench.worker", str(job_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise self._exited()
        msg = json.loads(line)
        if msg["event"] == "error":
            raise WorkerError(f"{msg['message']}; log: {self.log_path}")
        if msg["event"] == "step":
            self.last_step = msg["step"]
        rss = msg.get("peak_rss_mb", (msg.get("record") or {}).get("peak_rss_mb"))
        if rss is not None:
            self.last_rss_mb = max(self.last_rss_mb, rss)
        return msg

    def step(self) -> dict:
        """Run the next step; its record, with the data step number under ``step``."""
        try:
            self.proc.stdin.write("step\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # the worker is gone (killed, or crashed)
            raise self._exited() from None
        msg = self.read()
        if msg["event"] != "step":
            raise WorkerError(f"expected a step, got {msg}")
        return {**msg["record"], "step": msg["step"]}

    def _exited(self) -> WorkerError:
        """Why the worker stopped without a word: its exit code, and the OOM killer if it sent it."""
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        code = self.proc.returncode
        where = f"after data step {self.last_step}" if self.last_step else "before its first step"
        where += f", last reported peak RSS {self.last_rss_mb:.0f} MB" if self.last_rss_mb else ""
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            if -code == signal.SIGKILL:
                after = oom_kills()
                if self.oom_before is not None and after is not None and after > self.oom_before:
                    return WorkerError(
                        f"killed by the kernel's OOM killer (SIGKILL, exit {code}; /proc/vmstat oom_kill "
                        f"+{after - self.oom_before} while it ran) {where}: the machine ran out of memory; "
                        f"log: {self._tail()}",
                        status="out of memory",
                    )
                why = (
                    "no OOM kill was recorded in /proc/vmstat meanwhile"
                    if after is not None
                    else "/proc/vmstat is unreadable, so an OOM kill can't be confirmed"
                )
                return WorkerError(
                    f"killed by SIGKILL (exit {code}) {where}; {why}; log: {self._tail()}",
                    status="killed",
                )
            return WorkerError(
                f"killed by {sig} (exit {code}) {where}; log: {self._tail()}", status="killed"
            )
        return WorkerError(f"worker exited (code {code}) {where}; log: {self._tail()}")

    def close(self) -> dict | None:
        """Let the worker finish; its last message (``done`` with the final peak RSS), if any."""
        last = None
        try:  # a worker waiting for a step leaves on "exit"; a finished one has stopped reading
            self.proc.stdin.write("exit\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass
        try:
            for line in self.proc.stdout:
                last = json.loads(line)
            self.proc.wait(timeout=120)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        self.log.close()
        return last

    def _tail(self, n: int = 1500) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"{self.log_path}: ...{text[-n:]}" if text else str(self.log_path)


def start_worker(
    tool: str, job: dict, workdir: Path, name: str | None = None
) -> tuple[Worker | None, dict]:
    """Start a worker and wait for its set-up: (worker, {"status": "ok", "setup": ...}), or
    (None, {"status", "message"}) when the tool is missing, unavailable or failed to set up."""
    if tool == "trl" and not trl_installed():
        return None, {"status": "not installed", "message": 'pip install -e ".[bench]"'}
    w = Worker(tool, job, workdir, name)
    try:
        msg = w.read()
    except WorkerError as e:
        w.close()
        return None, {"status": e.status, "message": str(e)}
    if msg["event"] == "unavailable":
        w.close()
        return None, {"status": "not yet available", "message": msg["message"]}
    return w, {"status": "ok", "setup": {k: v for k, v in msg.items() if k != "event"}}


# --------------------------------------------------------------------------------- one config


def run_config(
    spec: BenchSpec,
    tools: list[str],
    steps: int,
    threads: int | None,
    workdir: Path,
    log=print,
    alternate: str = "rounds",
    rounds: int = 2,
) -> dict:
    """Per tool: {"status", "message"?, "setup", "warmup", "steps": [measured step records],
    "final_peak_rss_mb"?}, and in rounds mode also "rounds": one entry per worker process."""
    job = {**prepare(spec, workdir), "workdir": str(workdir), "threads": threads}
    if alternate == "steps":
        return _run_steps(spec, job, tools, steps, workdir, log)
    if alternate == "rounds":
        return _run_rounds(spec, job, tools, steps, rounds, workdir, log)
    raise ValueError(f"--alternate: unknown {alternate!r}; valid: {', '.join(ALTERNATE)}")


def _run_steps(
    spec: BenchSpec, job: dict, tools: list[str], steps: int, workdir: Path, log
) -> dict:
    """Both workers alive at once; one warm-up step each, then measured steps alternate tools."""
    job = {**job, "total_steps": steps + 1, "first_step": 1}
    results: dict[str, dict] = {}
    workers: dict[str, Worker] = {}
    try:
        for tool in tools:
            w, res = start_worker(
                tool, {**job, "workdir": str(_tool_dir(workdir, spec, tool))}, workdir
            )
            results[tool] = res
            if w is None:
                continue
            results[tool].update(warmup=None, steps=[])
            workers[tool] = w
            log(f"  {tool}: ready in {res['setup']['setup_s']:.1f}s")
        for i in range(steps + 1):  # step 0 is the warm-up
            for tool, w in list(workers.items()):
                try:
                    rec = w.step()
                except WorkerError as e:
                    results[tool] = {**results[tool], "status": e.status, "message": str(e)}
                    log(f"  {tool}: {e.status}")
                    w.close()
                    del workers[tool]
                    continue
                if i == 0:
                    results[tool]["warmup"] = rec
                else:
                    results[tool]["steps"].append(rec)
                log(
                    f"  {tool}: {'warm-up' if i == 0 else f'step {i}/{steps}'} {rec['step_s']:.2f}s"
                )
        for tool, w in workers.items():
            last = w.close()
            if last and last.get("event") == "done":
                results[tool]["final_peak_rss_mb"] = last["peak_rss_mb"]
    finally:
        for w in workers.values():
            if w.proc.poll() is None:
                w.close()
    return results


def _run_rounds(
    spec: BenchSpec, job: dict, tools: list[str], steps: int, rounds: int, workdir: Path, log
) -> dict:
    """One worker process alive at a time: per round, each tool in turn runs a warm-up and
    `steps` measured steps in a fresh process that then exits. Rounds alternate the order
    (odd: `tools` as given, even: reversed) so slow drifts of the machine hit both tools alike.

    Round r runs data steps (r-1)(steps+1)+1 .. r(steps+1) on every tool, the first as the
    warm-up: each round continues where the tool's previous round stopped, and both tools
    see the same prompts at the same data step. A tool that fails is not run again.
    """
    per_round = steps + 1
    results: dict[str, dict] = {}
    for r in range(1, rounds + 1):
        first = (r - 1) * per_round + 1
        for tool in tools if r % 2 else tools[::-1]:
            if results.get(tool, {}).get("status", "ok") != "ok":
                continue
            res = _one_round(spec, job, tool, steps, r, first, workdir, log)
            if tool not in results:
                if res["status"] != "ok" and "setup" not in res:  # never started: nothing to keep
                    results[tool] = {k: res[k] for k in ("status", "message") if k in res}
                    continue
                results[tool] = {
                    "status": "ok",
                    "setup": res.get("setup"),
                    "warmup": res.get("warmup"),
                    "steps": [],
                    "rounds": [],
                }
            out = results[tool]
            out["steps"] += res.get("steps", [])
            out["rounds"].append(
                {
                    "round": r,
                    "first_step": first,
                    **{k: res[k] for k in res if k != "steps"},
                    "measured_steps": len(res.get("steps", [])),
                }
            )
            if "final_peak_rss_mb" in res:
                out["final_peak_rss_mb"] = max(
                    out.get("final_peak_rss_mb", 0.0), res["final_peak_rss_mb"]
                )
            if res["status"] != "ok":
                out["status"], out["message"] = res["status"], f"round {r}: {res['message']}"
    return results


def _one_round(
    spec: BenchSpec, job: dict, tool: str, steps: int, r: int, first: int, workdir: Path, log
) -> dict:
    """One tool's process for round r: set-up, warm-up at data step `first`, `steps` measured steps."""
    tool_dir = (
        _tool_dir(workdir, spec, tool) / f"round-{r}"
    )  # fresh run dir: nothing cached from before
    tool_dir.mkdir(parents=True, exist_ok=True)
    job = {**job, "workdir": str(tool_dir), "total_steps": steps + 1, "first_step": first}
    w, res = start_worker(tool, job, workdir, name=f"{spec.name}-{tool}-round{r}")
    if w is None:
        log(f"  round {r}, {tool}: {res['status']}")
        return res
    res.update(warmup=None, steps=[])
    try:
        log(f"  round {r}, {tool}: ready in {res['setup']['setup_s']:.1f}s")
        for i in range(steps + 1):  # step 0 is the warm-up
            try:
                rec = {**w.step(), "round": r}
            except WorkerError as e:
                res.update(status=e.status, message=str(e))
                log(f"  round {r}, {tool}: {e.status}")
                break
            if i == 0:
                res["warmup"] = rec
            else:
                res["steps"].append(rec)
            log(
                f"  round {r}, {tool}: {'warm-up' if i == 0 else f'step {i}/{steps}'} "
                f"(data step {rec['step']}) {rec['step_s']:.2f}s"
            )
    finally:
        last = w.close()  # the process has exited before the next one starts
    if last and last.get("event") == "done":
        res["final_peak_rss_mb"] = last["peak_rss_mb"]
    return res


def _tool_dir(workdir: Path, spec: BenchSpec, tool: str) -> Path:
    d = workdir / f"{spec.name}-{tool}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def trl_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


# ------------------------------------------------------------------------------- summaries


def summarize(tool_result: dict, peak_gflops: float) -> dict:
    """Medians over the measured steps (of all rounds); the FLOP rate and its fraction of the
    GEMM peak; peak RSS over all of the tool's processes; set-up figures over its processes
    (median time, largest RSS)."""
    steps = tool_result.get("steps") or []
    if tool_result.get("status") != "ok" or not steps:
        return {}
    med = {k: statistics.median(r[k] for r in steps) for k in STEP_KEYS}
    params = tool_result["setup"]["params"]
    # model FLOP/s counts every sequence's prompt (comparable across tools); hardware FLOP/s
    # counts only what was run (a shared prompt once), so its utilisation can't exceed 100%
    flops = [6.0 * params * r["tokens"] / r["train_s"] for r in steps if r["train_s"] > 0]
    gflops = statistics.median(flops) / 1e9 if flops else 0.0
    hw = [
        6.0 * params * r.get("encoded_tokens", r["tokens"]) / r["train_s"]
        for r in steps
        if r["train_s"] > 0
    ]
    hw_gflops = statistics.median(hw) / 1e9 if hw else 0.0
    peak_rss = max([r["peak_rss_mb"] for r in steps] + [tool_result.get("final_peak_rss_mb", 0.0)])
    setups = [x["setup"] for x in tool_result.get("rounds") or [] if x.get("setup")] or [
        tool_result["setup"]
    ]
    return {
        **med,
        "tokens_per_s": statistics.median(r["tokens"] / r["step_s"] for r in steps),
        "generated_tokens_per_s": statistics.median(
            r["generated_tokens"] / r["step_s"] for r in steps
        ),
        "tokens_per_step": statistics.mean(r["tokens"] for r in steps),
        "prompt_tokens_per_step": statistics.mean(r["prompt_tokens"] for r in steps),
        "generated_tokens_per_step": statistics.mean(r["generated_tokens"] for r in steps),
        "peak_rss_mb": peak_rss,
        "train_gflops": gflops,
        "train_model_flop_utilisation": gflops / peak_gflops if peak_gflops > 0 else 0.0,
        "train_hw_gflops": hw_gflops,
        "train_flop_utilisation": hw_gflops / peak_gflops if peak_gflops > 0 else 0.0,
        "measured_steps": len(steps),
        "processes": len(setups),
        "params": params,
        "setup_s": statistics.median(x["setup_s"] for x in setups),
        "rss_after_setup_mb": max(x["rss_after_setup_mb"] for x in setups),
        "ref_once_s": statistics.median(x["ref_once_s"] for x in setups),
    }


def ratios(summary: dict[str, dict]) -> dict:
    a, b = summary.get("lmpo") or {}, summary.get("trl") or {}
    if not a or not b:
        return {}
    return {
        "throughput_lmpo_over_trl": a["tokens_per_s"] / b["tokens_per_s"],
        "step_time_lmpo_over_trl": a["step_s"] / b["step_s"],
        "peak_rss_lmpo_over_trl": a["peak_rss_mb"] / b["peak_rss_mb"],
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("lmpo", "torch", "transformers", "trl", "accelerate", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def order_text(alternate: str, rounds: int, tools) -> str:
    tools = list(tools)
    if alternate == "steps":
        return (
            "both workers alive at once; one warm-up step per tool, then alternating measured steps: "
            + ", ".join(tools)
        )
    rev = f", even rounds {', '.join(tools[::-1])}" if len(tools) > 1 and rounds > 1 else ""
    return (
        f"{rounds} round(s); per round one worker process per tool, one alive at a time, each "
        f"running one warm-up and the measured steps, then exiting; odd rounds {', '.join(tools)}{rev}; "
        "each round continues at the data step where the tool's previous round stopped"
    )


def run_bench(
    configs: list[str],
    *,
    steps: int = 5,
    threads: int | None = None,
    tools=TOOLS,
    out: str | Path | None = None,
    workdir: str | Path | None = None,
    keep: bool = False,
    gemm_sizes: tuple[int, ...] = (256, 512, 1024, 2048),
    alternate: str = "rounds",
    rounds: int = 2,
    log=print,
) -> dict:
    """Run `configs` for `tools`; returns (and writes to `out`) the results dict.

    ``alternate="rounds"`` (default): `rounds` rounds, each tool's `steps` measured steps of a
    round in its own process, only one process alive at a time. ``alternate="steps"``: both
    workers alive, measured steps alternating (needs the memory of both; `rounds` unused).
    """
    specs = get_specs(configs)
    bad = [t for t in tools if t not in TOOLS]
    if bad or not tools:
        raise ValueError(f"--tools: unknown {bad}; valid: {', '.join(TOOLS)}")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if alternate not in ALTERNATE:
        raise ValueError(f"--alternate: unknown {alternate!r}; valid: {', '.join(ALTERNATE)}")
    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {rounds}")
    rounds = rounds if alternate == "rounds" else 1
    threads = threads or os.cpu_count() or 1
    own = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="lmpo-bench-")) if own else Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        gemm_before = gemm_peak(gemm_sizes, threads=threads)
        log(f"fp32 GEMM peak: {gemm_before['best_gflops']:.1f} GFLOP/s ({threads} threads)")
        rows = []
        for spec in specs:
            log(f"{spec.name}: {spec.description}")
            raw = run_config(
                spec, list(tools), steps, threads, wd, log=log, alternate=alternate, rounds=rounds
            )
            rows.append({"config": spec.name, "spec": spec.to_dict(), "raw": raw})
        gemm_after = gemm_peak(gemm_sizes, threads=threads)
    finally:
        if own and not keep:
            shutil.rmtree(wd, ignore_errors=True)
    peak = max(gemm_before["best_gflops"], gemm_after["best_gflops"])
    results = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "steps": steps,
            "warmup_steps": 1,
            "alternate": alternate,
            "rounds": rounds,
            "measured_steps_per_tool": steps * rounds,
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "versions": versions(),
            "order": order_text(alternate, rounds, tools),
        },
        "gemm": {"best_gflops": peak, "before": gemm_before, "after": gemm_after},
        "configs": [],
    }
    for row in rows:
        summary = {t: summarize(row["raw"][t], peak) for t in row["raw"]}
        status = {
            t: {k: row["raw"][t][k] for k in ("status", "message") if k in row["raw"][t]}
            for t in row["raw"]
        }
        results["configs"].append(
            {**row, "status": status, "summary": summary, "ratios": ratios(summary)}
        )
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=1))
    return results


# ---------------------------------------------------------------------------------- output

COLUMNS = [
    ("s/step", "step_s", "{:.2f}"),
    ("gen s", "generate_s", "{:.2f}"),
    ("ref s", "reference_s", "{:.2f}"),
    ("train s", "train_s", "{:.2f}"),
    ("other s", "other_s", "{:.2f}"),
    ("tok/s", "tokens_per_s", "{:.0f}"),
    ("RSS MB", "peak_rss_mb", "{:.0f}"),
    ("model GFLOP/s", "train_gflops", "{:.1f}"),
    ("hw GFLOP/s", "train_hw_gflops", "{:.1f}"),
    ("util", "train_flop_utilisation", "{:.1%}"),
]


def table_rows(results: dict) -> list[list[str]]:
    out = []
    for c in results["configs"]:
        for tool, st in c["status"].items():
            s = c["summary"].get(tool) or {}
            if s:
                cells = [fmt.format(s[key]) for _, key, fmt in COLUMNS]
            else:
                cells = [st.get("status", "?")] + [""] * (len(COLUMNS) - 1)
            out.append([c["config"], tool, *cells])
        r = c["ratios"]
        if r:
            out.append(
                [
                    c["config"],
                    "lmpo/TRL",
                    f"x{r['step_time_lmpo_over_trl']:.2f}",
                    "",
                    "",
                    "",
                    "",
                    f"x{r['throughput_lmpo_over_trl']:.2f}",
                    f"x{r['peak_rss_lmpo_over_trl']:.2f}",
                    "",
                    "",
                    "",
                ]
            )
    return out


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 130))
    m = results["meta"]
    t = Table(
        title=f"lmpo bench: medians of {measured_text(m)}, {m['threads']} threads; "
        f"GEMM peak {results['gemm']['best_gflops']:.1f} GFLOP/s"
    )
    for name in ["config", "tool"] + [c[0] for c in COLUMNS]:
        t.add_column(name, justify="left" if name in ("config", "tool") else "right", no_wrap=True)
    for row in table_rows(results):
        t.add_row(*row)
    console.print(t)
    console.print(
        "time columns: median seconds per step; model GFLOP/s: 6 x params x step tokens (every "
        "prompt copy) / train s; hw GFLOP/s: the same over tokens actually encoded; util: hw "
        "GFLOP/s over the GEMM peak; lmpo/TRL row: step time, tokens/s and peak RSS ratios"
    )
    for c in results["configs"]:
        for tool, st in c["status"].items():
            if st.get("status") != "ok" and st.get("message"):
                console.print(f"{c['config']} / {tool}: {st['status']}: {st['message']}")


def measured_text(meta: dict) -> str:
    """What the medians are over (results of older versions have no "alternate": steps mode)."""
    if meta.get("alternate", "steps") == "steps":
        return f"{meta['steps']} alternating steps after one warm-up step per tool (both processes alive)"
    r = meta["rounds"]
    return (
        f"{r} round{'s' if r != 1 else ''} x {meta['steps']} steps per tool, each round one process per "
        "tool (one alive at a time) with its own warm-up step"
    )


def markdown(results: dict) -> str:
    m = results["meta"]
    v = m["versions"]
    head = ["config", "tool"] + [c[0] for c in COLUMNS]
    lines = [
        f"Medians of {measured_text(m)}; {m['threads']} "
        f"threads; fp32 GEMM peak {results['gemm']['best_gflops']:.1f} GFLOP/s; lmpo {v['lmpo']}, "
        f"TRL {v['trl']}, torch {v['torch']}, transformers {v['transformers']}. Time columns are "
        "seconds per step; the lmpo/TRL row gives time, throughput and memory ratios.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    return "\n".join(lines) + "\n"
