"""Run benchmark configurations for lmpo and TRL, alternating steps, and summarise them.

For each configuration: prepare the shared model directory (and pairs file), start one
worker process per tool (one after the other, so set-up does not overlap), run one warm-up
step on each, then alternate measured steps (lmpo, TRL, lmpo, TRL, ...). Reported per tool:
medians over the measured steps of s/step and its split (generate / score / reference /
train / other), median tokens/s, peak RSS of the worker process, and training FLOP
utilisation = 6 x parameters x step tokens / train seconds, divided by the best fp32
GEMM rate measured in the same run (``gemm_peak``, before and after the workers).

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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmpo.bench.specs import BenchSpec, get_specs, prepare

TOOLS = ("lmpo", "trl")
STEP_KEYS = ("step_s", "generate_s", "score_s", "reference_s", "train_s", "other_s")


# ------------------------------------------------------------------------------- GEMM peak


def gemm_peak(sizes: tuple[int, ...] = (256, 512, 1024, 2048), min_time: float = 0.3,
              threads: int | None = None) -> dict:
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
    pass


class Worker:
    """A tool's worker process for one configuration, driven one step at a time."""

    def __init__(self, tool: str, job: dict, workdir: Path) -> None:
        self.tool = tool
        self.log_path = workdir / f"{job['spec']['name']}-{tool}.log"
        job_path = workdir / f"{job['spec']['name']}-{tool}.json"
        job_path.write_text(json.dumps({**job, "tool": tool}))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
               "HF_DATASETS_CACHE": str(workdir / "hf-datasets")}
        if job.get("threads"):
            env["OMP_NUM_THREADS"] = str(job["threads"])
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen([sys.executable, "-m", "lmpo.bench.worker", str(job_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=env)

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise WorkerError(f"worker exited (code {self.proc.returncode}); log: {self._tail()}")
        msg = json.loads(line)
        if msg["event"] == "error":
            raise WorkerError(f"{msg['message']}; log: {self.log_path}")
        return msg

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        msg = self.read()
        if msg["event"] != "step":
            raise WorkerError(f"expected a step, got {msg}")
        return msg["record"]

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
        self.log.close()
        return last

    def _tail(self, n: int = 1500) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"{self.log_path}: ...{text[-n:]}" if text else str(self.log_path)


# --------------------------------------------------------------------------------- one config


def run_config(spec: BenchSpec, tools: list[str], steps: int, threads: int | None, workdir: Path,
               log=print) -> dict:
    job = {**prepare(spec, workdir), "workdir": str(workdir), "threads": threads,
           "total_steps": steps + 1}
    results: dict[str, dict] = {}
    workers: dict[str, Worker] = {}
    try:
        for tool in tools:
            if tool == "trl" and not trl_installed():
                results[tool] = {"status": "not installed", "message": 'pip install -e ".[bench]"'}
                continue
            w = Worker(tool, {**job, "workdir": str(_tool_dir(workdir, spec, tool))}, workdir)
            try:
                msg = w.read()
            except WorkerError as e:
                w.close()
                results[tool] = {"status": "error", "message": str(e)}
                continue
            if msg["event"] == "unavailable":
                w.close()
                results[tool] = {"status": "not yet available", "message": msg["message"]}
                continue
            results[tool] = {"status": "ok", "setup": {k: v for k, v in msg.items() if k != "event"},
                             "warmup": None, "steps": []}
            workers[tool] = w
            log(f"  {tool}: ready in {msg['setup_s']:.1f}s")
        for i in range(steps + 1):  # step 0 is the warm-up
            for tool, w in list(workers.items()):
                try:
                    rec = w.step()
                except WorkerError as e:
                    results[tool] = {**results[tool], "status": "error", "message": str(e)}
                    w.close()
                    del workers[tool]
                    continue
                if i == 0:
                    results[tool]["warmup"] = rec
                else:
                    results[tool]["steps"].append(rec)
                log(f"  {tool}: {'warm-up' if i == 0 else f'step {i}/{steps}'} {rec['step_s']:.2f}s")
        for tool, w in workers.items():
            last = w.close()
            if last and last.get("event") == "done":
                results[tool]["final_peak_rss_mb"] = last["peak_rss_mb"]
    finally:
        for w in workers.values():
            if w.proc.poll() is None:
                w.close()
    return results


def _tool_dir(workdir: Path, spec: BenchSpec, tool: str) -> Path:
    d = workdir / f"{spec.name}-{tool}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def trl_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


# ------------------------------------------------------------------------------- summaries


def summarize(tool_result: dict, peak_gflops: float) -> dict:
    """Medians over the measured steps; the FLOP rate and its fraction of the GEMM peak."""
    steps = tool_result.get("steps") or []
    if tool_result.get("status") != "ok" or not steps:
        return {}
    med = {k: statistics.median(r[k] for r in steps) for k in STEP_KEYS}
    params = tool_result["setup"]["params"]
    # model FLOP/s counts every sequence's prompt (comparable across tools); hardware FLOP/s
    # counts only what was run (a shared prompt once), so its utilisation can't exceed 100%
    flops = [6.0 * params * r["tokens"] / r["train_s"] for r in steps if r["train_s"] > 0]
    gflops = statistics.median(flops) / 1e9 if flops else 0.0
    hw = [6.0 * params * r.get("encoded_tokens", r["tokens"]) / r["train_s"] for r in steps if r["train_s"] > 0]
    hw_gflops = statistics.median(hw) / 1e9 if hw else 0.0
    peak_rss = max([r["peak_rss_mb"] for r in steps] + [tool_result.get("final_peak_rss_mb", 0.0)])
    return {
        **med,
        "tokens_per_s": statistics.median(r["tokens"] / r["step_s"] for r in steps),
        "generated_tokens_per_s": statistics.median(r["generated_tokens"] / r["step_s"] for r in steps),
        "tokens_per_step": statistics.mean(r["tokens"] for r in steps),
        "prompt_tokens_per_step": statistics.mean(r["prompt_tokens"] for r in steps),
        "generated_tokens_per_step": statistics.mean(r["generated_tokens"] for r in steps),
        "peak_rss_mb": peak_rss,
        "train_gflops": gflops,
        "train_model_flop_utilisation": gflops / peak_gflops if peak_gflops > 0 else 0.0,
        "train_hw_gflops": hw_gflops,
        "train_flop_utilisation": hw_gflops / peak_gflops if peak_gflops > 0 else 0.0,
        "measured_steps": len(steps),
        "params": params,
        "setup_s": tool_result["setup"]["setup_s"],
        "rss_after_setup_mb": tool_result["setup"]["rss_after_setup_mb"],
        "ref_once_s": tool_result["setup"]["ref_once_s"],
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


def run_bench(configs: list[str], *, steps: int = 5, threads: int | None = None, tools=TOOLS,
              out: str | Path | None = None, workdir: str | Path | None = None, keep: bool = False,
              gemm_sizes: tuple[int, ...] = (256, 512, 1024, 2048), log=print) -> dict:
    """Run `configs` for `tools`; returns (and writes to `out`) the results dict."""
    specs = get_specs(configs)
    bad = [t for t in tools if t not in TOOLS]
    if bad or not tools:
        raise ValueError(f"--tools: unknown {bad}; valid: {', '.join(TOOLS)}")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
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
            raw = run_config(spec, list(tools), steps, threads, wd, log=log)
            rows.append({"config": spec.name, "spec": spec.to_dict(), "raw": raw})
        gemm_after = gemm_peak(gemm_sizes, threads=threads)
    finally:
        if own and not keep:
            shutil.rmtree(wd, ignore_errors=True)
    peak = max(gemm_before["best_gflops"], gemm_after["best_gflops"])
    results = {
        "meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": steps, "warmup_steps": 1,
                 "threads": threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
                 "processor": platform.processor(), "versions": versions(),
                 "order": "one warm-up step per tool, then alternating measured steps: " + ", ".join(tools)},
        "gemm": {"best_gflops": peak, "before": gemm_before, "after": gemm_after},
        "configs": [],
    }
    for row in rows:
        summary = {t: summarize(row["raw"][t], peak) for t in row["raw"]}
        status = {t: {k: row["raw"][t][k] for k in ("status", "message") if k in row["raw"][t]}
                  for t in row["raw"]}
        results["configs"].append({**row, "status": status, "summary": summary,
                                   "ratios": ratios(summary)})
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=1))
    return results


# ---------------------------------------------------------------------------------- output

COLUMNS = [("s/step", "step_s", "{:.2f}"), ("gen s", "generate_s", "{:.2f}"),
           ("ref s", "reference_s", "{:.2f}"), ("train s", "train_s", "{:.2f}"),
           ("other s", "other_s", "{:.2f}"), ("tok/s", "tokens_per_s", "{:.0f}"),
           ("RSS MB", "peak_rss_mb", "{:.0f}"), ("model GFLOP/s", "train_gflops", "{:.1f}"),
           ("hw GFLOP/s", "train_hw_gflops", "{:.1f}"), ("util", "train_flop_utilisation", "{:.1%}")]


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
            out.append([c["config"], "lmpo/TRL", f"x{r['step_time_lmpo_over_trl']:.2f}", "", "", "", "",
                        f"x{r['throughput_lmpo_over_trl']:.2f}", f"x{r['peak_rss_lmpo_over_trl']:.2f}", "", ""])
    return out


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 130))
    m = results["meta"]
    t = Table(title=f"lmpo bench: medians of {m['steps']} alternating steps after 1 warm-up, "
                    f"{m['threads']} threads; GEMM peak {results['gemm']['best_gflops']:.1f} GFLOP/s")
    for name in ["config", "tool"] + [c[0] for c in COLUMNS]:
        t.add_column(name, justify="left" if name in ("config", "tool") else "right", no_wrap=True)
    for row in table_rows(results):
        t.add_row(*row)
    console.print(t)
    console.print("time columns: median seconds per step; model GFLOP/s: 6 x params x step tokens (every "
                  "prompt copy) / train s; hw GFLOP/s: the same over tokens actually encoded; util: hw "
                  "GFLOP/s over the GEMM peak; lmpo/TRL row: step time, tokens/s and peak RSS ratios")
    for c in results["configs"]:
        for tool, st in c["status"].items():
            if st.get("status") != "ok" and st.get("message"):
                console.print(f"{c['config']} / {tool}: {st['status']}: {st['message']}")


def markdown(results: dict) -> str:
    m = results["meta"]
    v = m["versions"]
    head = ["config", "tool"] + [c[0] for c in COLUMNS]
    lines = [
        f"Medians of {m['steps']} alternating steps after one warm-up step per tool; {m['threads']} "
        f"threads; fp32 GEMM peak {results['gemm']['best_gflops']:.1f} GFLOP/s; lmpo {v['lmpo']}, "
        f"TRL {v['trl']}, torch {v['torch']}, transformers {v['transformers']}. Time columns are "
        "seconds per step; the lmpo/TRL row gives time, throughput and memory ratios.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    return "\n".join(lines) + "\n"
