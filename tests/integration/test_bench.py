"""`lmpo bench` on tiny configurations: the results carry every field, with positive numbers.

Speed itself is never asserted (CONTRIBUTING: no wall-clock assertions); the checks are
that each side measured what it claims and that both sides saw the same tokens.
"""

import importlib.util
import json
import re

import pytest

from lmpo import cli
from lmpo.bench import run as bench_run
from lmpo.bench.run import gemm_peak, run_bench

pytestmark = pytest.mark.integration
HAS_TRL = importlib.util.find_spec("trl") is not None
STEP_KEYS = (
    "step_s",
    "generate_s",
    "score_s",
    "reference_s",
    "train_s",
    "other_s",
    "prompt_tokens",
    "generated_tokens",
    "tokens",
    "peak_rss_mb",
)
SUMMARY_KEYS = (
    "step_s",
    "generate_s",
    "reference_s",
    "train_s",
    "other_s",
    "tokens_per_s",
    "generated_tokens_per_s",
    "peak_rss_mb",
    "train_gflops",
    "train_flop_utilisation",
    "params",
    "setup_s",
    "rss_after_setup_mb",
    "ref_once_s",
)


def test_gemm_peak_is_a_positive_rate():
    g = gemm_peak((32, 64), min_time=0.01, threads=1)
    assert g["best_gflops"] > 0 and set(g["gflops_by_size"]) == {"32", "64"}
    assert g["best_gflops"] == max(g["gflops_by_size"].values())


def _check_side(config: dict, tool: str, kind: str, n_steps: int = 1) -> dict:
    raw, s = config["raw"][tool], config["summary"][tool]
    assert raw["status"] == "ok", raw
    assert raw["warmup"] is not None and len(raw["steps"]) == n_steps == s["measured_steps"]
    for key in STEP_KEYS:
        assert all(key in r for r in raw["steps"]), key
    for key in SUMMARY_KEYS:
        assert key in s, key
    for key in (
        "step_s",
        "train_s",
        "tokens_per_s",
        "peak_rss_mb",
        "train_gflops",
        "train_flop_utilisation",
        "params",
        "rss_after_setup_mb",
    ):
        assert s[key] > 0, (tool, key, s[key])
    if kind == "grpo":
        assert s["generate_s"] > 0 and s["generated_tokens_per_step"] > 0
    # peak RSS: the largest over every step and process of the tool
    assert s["peak_rss_mb"] == max(
        [r["peak_rss_mb"] for r in raw["steps"]] + [raw.get("final_peak_rss_mb", 0.0)]
    )
    return s


def _check_rounds(config: dict, tool: str, steps: int, rounds: int) -> None:
    """Rounds mode: one process per round, each continuing at the data step the last one stopped at."""
    raw = config["raw"][tool]
    assert [r["round"] for r in raw["rounds"]] == list(range(1, rounds + 1))
    assert config["summary"][tool]["processes"] == rounds
    per_round = steps + 1  # a warm-up, then the measured steps
    for r in raw["rounds"]:
        assert r["status"] == "ok" and r["measured_steps"] == steps and r["setup"]["setup_s"] > 0
        assert r["first_step"] == (r["round"] - 1) * per_round + 1 == r["warmup"]["step"]
    expected = [
        (r, (r - 1) * per_round + 1 + i) for r in range(1, rounds + 1) for i in range(1, per_round)
    ]
    assert [(rec["round"], rec["step"]) for rec in raw["steps"]] == expected
    assert raw["final_peak_rss_mb"] == max(r["final_peak_rss_mb"] for r in raw["rounds"])


def test_bench_cli_lmpo_reports_every_field_and_trl_as_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_run, "trl_installed", lambda: False)
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = [
        "bench",
        "--configs",
        "test-grpo,test-dpo",
        "--steps",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        "--markdown",
        str(md),
        "--workdir",
        str(tmp_path / "work"),
    ]
    assert cli.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["gemm"]["best_gflops"] > 0 and res["meta"]["threads"] == 1
    # the default: 2 rounds, one process per tool and round
    assert (
        res["meta"]["alternate"],
        res["meta"]["rounds"],
        res["meta"]["measured_steps_per_tool"],
    ) == ("rounds", 2, 2)
    grpo, dpo = res["configs"]
    assert (grpo["config"], dpo["config"]) == ("test-grpo", "test-dpo")
    _check_side(grpo, "lmpo", "grpo", n_steps=2)
    s = _check_side(dpo, "lmpo", "dpo", n_steps=2)
    for c in (grpo, dpo):
        _check_rounds(c, "lmpo", steps=1, rounds=2)
    # lmpo's DPO reference is computed once per process (each round has a fresh run directory)
    assert s["ref_once_s"] > 0 and s["reference_s"] == 0
    assert all(r["setup"]["ref_once_s"] > 0 for r in dpo["raw"]["lmpo"]["rounds"])
    for c in (grpo, dpo):
        assert c["status"]["trl"]["status"] == "not installed" and c["ratios"] == {}
    assert "not installed" in capsys.readouterr().out
    assert (
        "| test-grpo | lmpo |" in md.read_text() and "2 rounds x 1 steps per tool" in md.read_text()
    )


def test_bench_unknown_config_names_the_valid_ones(capsys):
    assert cli.main(["bench", "--configs", "grpo-nope", "--tools", "lmpo"]) == 2
    err = capsys.readouterr().err
    assert "grpo-nope" in err and "grpo-smollm2" in err


def _only_one_alive(monkeypatch) -> list[tuple[str, str]]:
    """Records (tool, job name) of every worker started, asserting none overlaps a live one."""
    started, workers = [], []
    init = bench_run.Worker.__init__

    def checked(self, tool, job, workdir, name=None):
        alive = [w.tool for w in workers if w.proc.poll() is None]
        assert not alive, f"{tool} started while {alive} still alive"
        init(self, tool, job, workdir, name)
        workers.append(self)
        started.append((tool, name))

    monkeypatch.setattr(bench_run.Worker, "__init__", checked)
    return started


@pytest.mark.skipif(not HAS_TRL, reason='trl is not installed (pip install -e ".[bench]")')
def test_bench_rounds_one_process_at_a_time_and_the_same_prompts(tmp_path, monkeypatch):
    started = _only_one_alive(monkeypatch)
    out = tmp_path / "bench.json"
    res = run_bench(
        ["test-grpo-kl", "test-dpo"],
        steps=2,
        rounds=2,
        threads=1,
        out=out,
        workdir=tmp_path / "work",
        gemm_sizes=(64,),
        log=lambda *_: None,
    )
    assert json.loads(out.read_text())["configs"][0]["config"] == "test-grpo-kl"
    assert (res["meta"]["alternate"], res["meta"]["rounds"]) == ("rounds", 2)
    # odd rounds lmpo first, even rounds TRL first
    assert [(t, n.split("-")[-1]) for t, n in started] == [
        ("lmpo", "round1"),
        ("trl", "round1"),
        ("trl", "round2"),
        ("lmpo", "round2"),
    ] * 2
    grpo, dpo = res["configs"]
    for c, kind in ((grpo, "grpo"), (dpo, "dpo")):
        for tool in ("lmpo", "trl"):
            _check_side(c, tool, kind, n_steps=4)
            _check_rounds(c, tool, steps=2, rounds=2)
        assert set(c["ratios"]) == {
            "throughput_lmpo_over_trl",
            "step_time_lmpo_over_trl",
            "peak_rss_lmpo_over_trl",
        }
        assert all(v > 0 for v in c["ratios"].values())
        lmpo_steps, trl_steps = c["raw"]["lmpo"]["steps"], c["raw"]["trl"]["steps"]
        # identical data: the same prompt tokens at the same data step on both sides, every round
        assert [(r["step"], r["prompt_tokens"]) for r in lmpo_steps] == [
            (r["step"], r["prompt_tokens"]) for r in trl_steps
        ]
        warm = [c["raw"][t]["rounds"][1]["warmup"] for t in ("lmpo", "trl")]
        assert warm[0]["prompt_tokens"] == warm[1]["prompt_tokens"]
    # beta > 0: both sides spend time on reference log-probs during the step
    assert grpo["summary"]["lmpo"]["reference_s"] > 0 and grpo["summary"]["trl"]["reference_s"] > 0
    # DPO: TRL (default) runs its reference model every step; the pairs are encoded alike
    assert dpo["summary"]["trl"]["reference_s"] > 0
    assert [r["tokens"] for r in dpo["raw"]["lmpo"]["steps"]] == [
        r["tokens"] for r in dpo["raw"]["trl"]["steps"]
    ]
    trl_args = grpo["raw"]["trl"]["setup"]["trl_args"]
    assert trl_args["generation_batch_size"] == trl_args["per_device_train_batch_size"] == 4
    assert trl_args["gradient_checkpointing"] is False and trl_args["dtype"] == "torch.float32"
    assert (
        trl_args["checkpointing"] is False
        and grpo["raw"]["lmpo"]["setup"]["checkpointing"] is False
    )


@pytest.mark.skipif(not HAS_TRL, reason='trl is not installed (pip install -e ".[bench]")')
def test_bench_checkpointing_spec_turns_it_on_for_both_tools(tmp_path):
    """A spec's gradient_checkpointing reaches both configs, and both models' layers checkpoint."""
    res = run_bench(
        ["test-grpo-ckpt", "test-dpo-ckpt"],
        steps=1,
        rounds=1,
        threads=1,
        workdir=tmp_path / "work",
        gemm_sizes=(64,),
        log=lambda *_: None,
    )
    for c, kind in zip(res["configs"], ("grpo", "dpo"), strict=True):
        for tool in ("lmpo", "trl"):
            _check_side(c, tool, kind)
        assert c["raw"]["lmpo"]["setup"]["checkpointing"] is True
        trl_args = c["raw"]["trl"]["setup"]["trl_args"]
        assert trl_args["gradient_checkpointing"] is True and trl_args["checkpointing"] is True
        assert trl_args["gradient_checkpointing_kwargs"] == {"use_reentrant": False}  # as lmpo's


@pytest.mark.skipif(not HAS_TRL, reason='trl is not installed (pip install -e ".[bench]")')
def test_bench_steps_mode_keeps_both_alive_and_alternates_steps(tmp_path):
    res = run_bench(
        ["test-grpo"],
        steps=2,
        alternate="steps",
        rounds=3,
        threads=1,
        workdir=tmp_path / "work",
        gemm_sizes=(64,),
        log=lambda *_: None,
    )
    assert (
        res["meta"]["alternate"],
        res["meta"]["rounds"],
        res["meta"]["measured_steps_per_tool"],
    ) == ("steps", 1, 2)
    (grpo,) = res["configs"]
    for tool in ("lmpo", "trl"):
        _check_side(grpo, tool, "grpo", n_steps=2)
        assert "rounds" not in grpo["raw"][tool] and grpo["summary"][tool]["processes"] == 1
        assert grpo["raw"][tool]["warmup"]["step"] == 1
    lmpo_steps, trl_steps = grpo["raw"]["lmpo"]["steps"], grpo["raw"]["trl"]["steps"]
    assert [r["step"] for r in lmpo_steps] == [r["step"] for r in trl_steps] == [2, 3]
    assert [r["prompt_tokens"] for r in lmpo_steps] == [r["prompt_tokens"] for r in trl_steps]
    assert "alternating steps" in bench_run.markdown(res)


@pytest.mark.parametrize("oom_counted", [True, False])
def test_bench_worker_killed_is_reported_not_fatal(tmp_path, monkeypatch, oom_counted):
    """A worker SIGKILLed (as the OOM killer does) after its warm-up: reported, its later rounds skipped."""
    monkeypatch.setattr(bench_run, "trl_installed", lambda: False)
    kills = iter(range(5, 100)) if oom_counted else iter([5] * 100)
    monkeypatch.setattr(bench_run, "oom_kills", lambda: next(kills))
    step = bench_run.Worker.step

    def kill_after_warmup(self):
        if self.last_step >= 1:
            self.proc.kill()
            self.proc.wait()
        return step(self)

    monkeypatch.setattr(bench_run.Worker, "step", kill_after_warmup)
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "--configs",
        "test-grpo",
        "--steps",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "work"),
    ]
    assert cli.main(argv) == 1  # a failed side fails the command, after writing the results
    (grpo,) = json.loads(out.read_text())["configs"]
    status, raw = grpo["status"]["lmpo"], grpo["raw"]["lmpo"]
    if oom_counted:
        assert status["status"] == "out of memory" and "OOM killer" in status["message"]
    else:
        assert status["status"] == "killed" and "no OOM kill was recorded" in status["message"]
    assert re.search(
        r"round 1: killed by .*SIGKILL.*exit -9.* after data step 1", status["message"]
    )
    assert [r["round"] for r in raw["rounds"]] == [1] and raw["steps"] == []  # round 2 not run
    assert raw["warmup"]["step"] == 1 and grpo["summary"]["lmpo"] == {}
