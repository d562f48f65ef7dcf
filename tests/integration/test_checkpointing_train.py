"""`gradient_checkpointing: true` in each trainer: one step equals the step without it (loss,
gradients, weights) and the trained model really checkpoints. Tiny random model, seconds."""

import json

import pytest
import torch

from lmpo.config import load_config, validate
from lmpo.models.policy import checkpointing_enabled
from lmpo.train import online, preference
from lmpo.train import reward_model as rmtrain
from lmpo.train.optim import build_optimizer

pytestmark = pytest.mark.integration
VOLATILE = ("time/", "tokens_per_s")


def _padded_rows(model) -> None:
    """Compare checkpointing alone: checkpointed models keep padded rows, so the model without
    it does too (padding-free packing has its own equivalence tests in test_logprobs.py; its
    float rounding differs, which one Adam step amplifies in near-zero gradients)."""
    model._lmpo_no_packing = True


def _same_step(ctx_off, ctx_on, m_off: dict, m_on: dict) -> None:
    """Metrics, the gradients the step used (kept after optimizer.step) and the new weights."""
    for k in m_off:
        if not k.startswith(VOLATILE):
            assert m_on[k] == pytest.approx(m_off[k], rel=1e-5, abs=1e-6), k
    params_off, params_on = (
        dict(ctx_off.model.named_parameters()),
        dict(ctx_on.model.named_parameters()),
    )
    assert params_off.keys() == params_on.keys()
    n_grads = 0
    for k, p in params_off.items():
        q = params_on[k]
        if p.grad is not None:
            n_grads += 1
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=k)
        # one Adam step moves a weight by ~lr * sign(grad): float noise in a near-zero
        # gradient could move it by a few 1e-6 at lr 1e-2 (as in test_train_cli.py)
        torch.testing.assert_close(q.detach(), p.detach(), atol=5e-5, rtol=1e-4, msg=k)
    assert n_grads > 0


@pytest.mark.parametrize("lora", [False, True])
def test_online_step_equals_without_checkpointing(recipe, tmp_path, lora):
    """With a KL term, so the reference forward (a frozen copy; LoRA: adapters off) runs too."""
    ctxs, metrics = {}, {}
    for ckpt in (False, True):
        cfg = load_config(
            str(recipe()),
            [
                f"gradient_checkpointing={str(ckpt).lower()}",
                "algorithm.kl.beta=0.04",
                f"lora.enabled={str(lora).lower()}",
                "lora.r=4",
                f"output_dir={tmp_path / str(ckpt)}",
            ],
        )
        ctx = online.build_context(cfg)
        assert checkpointing_enabled(ctx.model) == ckpt and ctx.shared_prefix
        _padded_rows(ctx.model)
        if ctx.reference is not None and ctx.reference.model is not None:
            assert not checkpointing_enabled(ctx.reference.model)  # the copy never runs backward
        metrics[ckpt] = online.rl_step(1, ctx)
        ctxs[ckpt] = ctx
    assert metrics[True]["kl"] >= 0 and metrics[True]["grad_norm"] > 0
    _same_step(ctxs[False], ctxs[True], metrics[False], metrics[True])


def _preference_cfg(tmp_path, name: str, **kw):
    rows = [
        {"prompt": f"{a}+{b}?", "chosen": f"{a + b}", "rejected": f"{a + b + 1}!"}
        for a in range(1, 4)
        for b in range(2, 5)
    ]
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return validate(
        {
            "kind": "preference",
            "tiny_model": True,
            "loss": {"name": "dpo", "params": {"beta": 0.1}},
            "data": {"train_file": str(f), "test_size": 0},
            "batch": {"pairs_per_step": 4, "micro_batch_size": 2},
            "optim": {"lr": 1e-2},
            "steps": 2,
            "output_dir": str(tmp_path / name),
            **kw,
        }
    )


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_preference_step_equals_without_checkpointing(tmp_path, shared_prefix):
    ctxs, metrics = {}, {}
    for ckpt in (False, True):
        cfg = _preference_cfg(
            tmp_path, str(ckpt), gradient_checkpointing=ckpt, shared_prefix=shared_prefix
        )
        ctx = preference.build_context(cfg)
        assert checkpointing_enabled(ctx.model) == ckpt and ctx.shared_prefix == shared_prefix
        _padded_rows(ctx.model)
        metrics[ckpt] = preference.preference_step(1, ctx)
        ctxs[ckpt] = ctx
    _same_step(ctxs[False], ctxs[True], metrics[False], metrics[True])


def test_reward_model_step_equals_without_checkpointing(tmp_path):
    rows = [{"prompt": f"Is {i} a number?", "chosen": "yes", "rejected": "no"} for i in range(8)]
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = {}
    for ckpt in (False, True):
        cfg = rmtrain.RewardModelConfig.model_validate(
            {
                "tiny_model": True,
                "train_file": str(f),
                "eval_fraction": 0.0,
                "batch_size": 4,
                "micro_batch_size": 2,
                "max_length": 64,
                "optim": {"lr": 1e-3},
                "gradient_checkpointing": ckpt,
                "output_dir": str(tmp_path / str(ckpt)),
            }
        )
        rm = rmtrain.build_reward_model(cfg)
        assert checkpointing_enabled(rm) == ckpt
        optimizer, _ = build_optimizer(rm, cfg.optim, 1)
        train, _ = rmtrain.load_splits(cfg)
        m = rmtrain.train_step(rm, train[:4], cfg, optimizer)
        out[ckpt] = m, {k: (p.grad.clone(), p.detach().clone()) for k, p in rm.named_parameters()}
    (m0, p0), (m1, p1) = out[False], out[True]
    assert m1 == pytest.approx(m0, rel=1e-5, abs=1e-6) and m0["grad_norm"] > 0
    for k in p0:
        torch.testing.assert_close(p1[k][0], p0[k][0], atol=1e-6, rtol=1e-5, msg=k)
        torch.testing.assert_close(p1[k][1], p0[k][1], atol=5e-5, rtol=1e-4, msg=k)
