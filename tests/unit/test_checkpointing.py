"""Activation checkpointing (models.policy.enable_checkpointing): the same log-probs and
gradients with fewer saved activations, on every forward path; sampling keeps its KV cache."""

import copy

import pytest
import torch
import yaml

from lmpo.config import (
    ConfigError,
    IterativeConfig,
    LoraConfig,
    RewardModelConfig,
    dump_config,
    validate,
)
from lmpo.models.logprobs import sequence_logprobs, shared_prefix_logprobs
from lmpo.models.policy import apply_lora, checkpointing_enabled, enable_checkpointing
from lmpo.rollout.sampler import SamplingConfig, generate

PROMPTS = ["What is 2+2?", "Say hello to the world please", "x"]


def _batch(seed=0):
    """Two groups of two answers: prompts left-padded, answers right-padded."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, 200, (4, 6), generator=g)
    prompt_ids[1], prompt_ids[3] = prompt_ids[0], prompt_ids[2]
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[:2, :2] = 0
    resp = torch.randint(3, 200, (4, 7), generator=g)
    rmask = torch.ones_like(resp)
    rmask[1, 4:], rmask[3, 2:] = 0, 0
    return prompt_ids, prompt_mask, resp, rmask, torch.tensor([0, 0, 1, 1])


def _logprobs(model, path, batch):
    prompt_ids, prompt_mask, resp, rmask, gids = batch
    if path == "plain":
        ids, attn = torch.cat([prompt_ids, resp], 1), torch.cat([prompt_mask, rmask], 1)
        return sequence_logprobs(model, ids, attn, prompt_ids.shape[1], chunk_size=5)[0]
    return shared_prefix_logprobs(model, prompt_ids, prompt_mask, resp, rmask, gids, chunk_size=5)[
        0
    ]


def _saved_bytes(fn):
    """fn() and the bytes autograd saves for backward outside checkpointed regions."""
    n = [0]

    def pack(t):
        n[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, n[0]


@pytest.mark.parametrize(
    "path,attn_impl,lora",
    [
        ("plain", "sdpa", False),
        ("shared", "sdpa", False),
        ("shared", "eager", False),
        ("shared", "sdpa", True),
    ],
)
def test_checkpointed_gradients_equal_plain_with_fewer_saved_activations(
    tiny, path, attn_impl, lora
):
    """Shared prefixes pass 4D masks (boolean for SDPA, additive for eager) through the checkpoint;
    LoRA gets its gradients without an input requires_grad hook (non-reentrant)."""
    batch, w = _batch(), torch.randn(4, 7, generator=torch.Generator().manual_seed(1))
    out = {}
    for ckpt in (False, True):
        model = copy.deepcopy(tiny[0])
        model.config._attn_implementation = attn_impl
        if lora:
            torch.manual_seed(0)  # the adapters' A matrices draw from the global generator
            model = apply_lora(model, LoraConfig(enabled=True, r=4))
            with torch.no_grad():  # B = 0 at init would leave the adapters out of the forward
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
        if ckpt:
            enable_checkpointing(model)
        model.train()
        assert checkpointing_enabled(model) == ckpt
        logp, saved = _saved_bytes(lambda m=model: _logprobs(m, path, batch))
        (logp * w).sum().backward()
        grads = {k: p.grad for k, p in model.named_parameters() if p.requires_grad}
        out[ckpt] = logp.detach(), grads, saved
    (lp0, g0, s0), (lp1, g1, s1) = out[False], out[True]
    torch.testing.assert_close(lp1, lp0, atol=1e-6, rtol=0)
    assert set(g0) == set(g1) and len(g0) > 0
    for k in g0:
        assert g1[k] is not None and g0[k].abs().sum() > 0, k
        torch.testing.assert_close(g1[k], g0[k], atol=1e-6, rtol=1e-5, msg=k)
    assert s1 < s0 / 2, (s1, s0)  # the decoder layers' activations are no longer kept


def test_sampling_in_train_mode_keeps_the_kv_cache(tiny):
    """generate() switches to eval, where transformers does not checkpoint (and so keeps
    use_cache); the model is back in train mode afterwards."""
    plain = tiny[0]
    model = copy.deepcopy(plain)
    enable_checkpointing(model)
    model.train()
    for cfg, seed in (
        (SamplingConfig(max_new_tokens=10, greedy=True), 0),
        (SamplingConfig(max_new_tokens=10), 3),
    ):
        a = generate(
            plain, tiny[1], PROMPTS, cfg, generator=torch.Generator().manual_seed(seed), repeats=2
        )
        b = generate(
            model, tiny[1], PROMPTS, cfg, generator=torch.Generator().manual_seed(seed), repeats=2
        )
        assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
        torch.testing.assert_close(b.logprobs, a.logprobs, atol=1e-6, rtol=0)
    assert model.training and checkpointing_enabled(model)


def test_reward_model_backbone_checkpoints(tiny):
    from lmpo.models.reward_model import RewardModel

    rm = RewardModel.from_causal_lm(copy.deepcopy(tiny[0]), tiny[1], max_length=64)
    enable_checkpointing(rm.backbone)
    assert checkpointing_enabled(rm)


def test_config_field_in_every_run_kind():
    """Off by default; a boolean (strings other than YAML booleans fail, naming the key);
    an iterative run's preference section passes it on to each round."""
    pairs = {"train_file": "pairs.jsonl"}
    runs = [
        {"kind": "online", "tiny_model": True},
        {"kind": "preference", "tiny_model": True, "data": pairs},
        {"kind": "reward_model", "tiny_model": True, **pairs},
    ]
    for data in runs:
        assert validate(data).gradient_checkpointing is False
        cfg = validate({**data, "gradient_checkpointing": True})
        assert cfg.gradient_checkpointing is True
        assert validate(yaml.safe_load(dump_config(cfg))) == cfg  # round trip
        with pytest.raises(ConfigError, match="gradient_checkpointing"):
            validate({**data, "gradient_checkpointing": "sometimes"})
    it = validate(
        {"kind": "iterative", "tiny_model": True, "preference": {"gradient_checkpointing": True}}
    )
    assert isinstance(it, IterativeConfig)
    assert it.round_config(0, "pairs.jsonl", "m", True).gradient_checkpointing is True
    assert RewardModelConfig.model_fields["gradient_checkpointing"].description
