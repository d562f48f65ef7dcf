"""`lmpo bench` on tiny configurations: the results carry every field, with positive numbers.

Speed itself is never asserted (CONTRIBUTING: no wall-clock assertions); the checks are
that each side measured what it claims and that both sides saw the same tokens.
"""

import importlib.util
import json

import pytest

from lmpo import cli
from lmpo.bench import run as bench_run
from lmpo.bench.run import gemm_peak, run_bench

pytestmark = pytest.mark.integration
HAS_TRL = importlib.util.find_spec("trl") is not None
STEP_KEYS = ("step_s", "generate_s", "score_s", "reference_s", "train_s", "other_s", "prompt_tokens",
             "generated_tokens", "tokens", "peak_rss_mb")
SUMMARY_KEYS = ("step_s", "generate_s", "reference_s", "train_s", "other_s", "tokens_per_s",
                "generated_tokens_per_s", "peak_rss_mb", "train_gflops", "train_flop_utilisation",
                "params", "setup_s", "rss_after_setup_mb", "ref_once_s")


def test_gemm_peak_is_a_positive_rate():
    g = gemm_peak((32, 64), min_time=0.01, threads=1)
    assert g["best_gflops"] > 0 and set(g["gflops_by_size"]) == {"32", "64"}
    assert g["best_gflops"] == max(g["gflops_by_size"].values())


def _check_side(config: dict, tool: str, kind: str) -> dict:
    raw, s = config["raw"][tool], config["summary"][tool]
    assert raw["status"] == "ok", raw
    assert raw["warmup"] is not None and len(raw["steps"]) == 1
    for key in STEP_KEYS:
        assert key in raw["steps"][0], key
    for key in SUMMARY_KEYS:
        assert key in s, key
    for key in ("step_s", "train_s", "tokens_per_s", "peak_rss_mb", "train_gflops", "train_flop_utilisation",
                "params", "rss_after_setup_mb"):
        assert s[key] > 0, (tool, key, s[key])
    if kind == "grpo":
        assert s["generate_s"] > 0 and s["generated_tokens_per_step"] > 0
    return s


def test_bench_cli_lmpo_reports_every_field_and_trl_as_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_run, "trl_installed", lambda: False)
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = ["bench", "--configs", "test-grpo,test-dpo", "--steps", "1", "--threads", "1",
            "--out", str(out), "--markdown", str(md), "--workdir", str(tmp_path / "work")]
    assert cli.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["gemm"]["best_gflops"] > 0 and res["meta"]["threads"] == 1
    grpo, dpo = res["configs"]
    assert (grpo["config"], dpo["config"]) == ("test-grpo", "test-dpo")
    _check_side(grpo, "lmpo", "grpo")
    s = _check_side(dpo, "lmpo", "dpo")
    assert s["ref_once_s"] > 0 and s["reference_s"] == 0  # lmpo's DPO reference is computed once
    for c in (grpo, dpo):
        assert c["status"]["trl"]["status"] == "not installed" and c["ratios"] == {}
    assert "not installed" in capsys.readouterr().out
    assert "| test-grpo | lmpo |" in md.read_text()


def test_bench_unknown_config_names_the_valid_ones(capsys):
    assert cli.main(["bench", "--configs", "grpo-nope", "--tools", "lmpo"]) == 2
    err = capsys.readouterr().err
    assert "grpo-nope" in err and "grpo-smollm2" in err


@pytest.mark.skipif(not HAS_TRL, reason='trl is not installed (pip install -e ".[bench]")')
def test_bench_lmpo_and_trl_see_the_same_tokens(tmp_path):
    out = tmp_path / "bench.json"
    res = run_bench(["test-grpo-kl", "test-dpo"], steps=1, threads=1, out=out, workdir=tmp_path / "work",
                    gemm_sizes=(64,), log=lambda *_: None)
    assert json.loads(out.read_text())["configs"][0]["config"] == "test-grpo-kl"
    grpo, dpo = res["configs"]
    for c, kind in ((grpo, "grpo"), (dpo, "dpo")):
        _check_side(c, "lmpo", kind)
        _check_side(c, "trl", kind)
        assert set(c["ratios"]) == {"throughput_lmpo_over_trl", "step_time_lmpo_over_trl",
                                    "peak_rss_lmpo_over_trl"}
        assert all(v > 0 for v in c["ratios"].values())
        lmpo_steps, trl_steps = c["raw"]["lmpo"]["steps"], c["raw"]["trl"]["steps"]
        # identical data: the same prompt tokens at the same step on both sides
        assert [r["prompt_tokens"] for r in lmpo_steps] == [r["prompt_tokens"] for r in trl_steps]
    # beta > 0: both sides spend time on reference log-probs during the step
    assert grpo["summary"]["lmpo"]["reference_s"] > 0 and grpo["summary"]["trl"]["reference_s"] > 0
    # DPO: TRL (default) runs its reference model every step; the pairs are encoded alike
    assert dpo["summary"]["trl"]["reference_s"] > 0
    assert [r["tokens"] for r in dpo["raw"]["lmpo"]["steps"]] == [r["tokens"] for r in dpo["raw"]["trl"]["steps"]]
    trl_args = grpo["raw"]["trl"]["setup"]["trl_args"]
    assert trl_args["generation_batch_size"] == trl_args["per_device_train_batch_size"] == 4
    assert trl_args["gradient_checkpointing"] is False and trl_args["dtype"] == "torch.float32"
