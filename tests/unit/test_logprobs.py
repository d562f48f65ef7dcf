import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmpo.models.logprobs import (
    _HeadLogprobs,
    position_ids_from_mask,
    selective_logprobs,
    sequence_logprobs,
    shared_prefix_logprobs,
)


def naive_logprobs(model, ids, attn, start):
    logits = model(
        input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)
    ).logits.float()
    logp = (
        torch.log_softmax(logits[:, start - 1 : -1], -1)
        .gather(-1, ids[:, start:, None])
        .squeeze(-1)
    )
    return logp * attn[:, start:]


def _batch(tok):
    rows = [("Hi there", "abc"), ("A longer prompt here", "x"), ("Q", "answer 42")]
    P = max(len(tok(p).input_ids) for p, _ in rows)
    T = max(len(tok(r).input_ids) for _, r in rows)
    ids = torch.full((3, P + T), tok.pad_token_id)
    attn = torch.zeros(3, P + T, dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        pi, ri = tok(p).input_ids, tok(r).input_ids
        ids[i, P - len(pi) : P] = torch.tensor(pi)
        attn[i, P - len(pi) : P] = 1
        ids[i, P : P + len(ri)] = torch.tensor(ri)
        attn[i, P : P + len(ri)] = 1
    return ids, attn, P


def test_chunked_equals_full_vocab_forward(tiny):
    model, tok = tiny
    ids, attn, P = _batch(tok)
    ref = naive_logprobs(model, ids, attn, P)
    for chunk in (1, 3, 1000):
        got, ent = sequence_logprobs(model, ids, attn, P, chunk_size=chunk, with_entropy=True)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        assert ent.shape == got.shape and (ent[attn[:, P:] == 0] == 0).all() and (ent >= 0).all()


def test_chunked_gradients_equal_full(tiny):
    model, tok = tiny
    ids, attn, P = _batch(tok)
    w = torch.randn(ids.shape[0], ids.shape[1] - P)
    model.zero_grad()
    (naive_logprobs(model, ids, attn, P) * w).sum().backward()
    g_ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got, _ = sequence_logprobs(model, ids, attn, P, chunk_size=2)
    (got * w).sum().backward()
    for a, b in zip(g_ref, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.zero_grad()


def test_selective_logprobs_temperature():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    h = torch.randn(7, 8)
    y = torch.randint(0, 50, (7,))
    got, _ = selective_logprobs(h, head, y, temperature=0.7, chunk_size=3)
    want = torch.log_softmax(head(h) / 0.7, -1).gather(-1, y[:, None]).squeeze(-1)
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------- fused head log-prob Function


def _naive_head(h, head, y, temperature):
    logp = torch.log_softmax(
        torch.nn.functional.linear(h, head.weight, head.bias).float() / temperature, -1
    )
    return logp.gather(-1, y[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1).detach()


def _head_case(n=7, h=5, v=11, bias=True, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(h, v, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g))
        if bias:
            head.bias.copy_(torch.randn(v, generator=g))
    hidden = torch.randn(n, h, generator=g, dtype=dtype, requires_grad=True)
    return hidden, head, torch.randint(0, v, (n,), generator=g), torch.randn(n, generator=g)


def _grads(hidden, head, logp, w):
    params = [hidden, *(p for p in head.parameters() if p.requires_grad)]
    return torch.autograd.grad((logp * w).sum(), params)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_head_values_and_grads_equal_naive(bias, temperature):
    hidden, head, y, w = _head_case(bias=bias)
    want, want_ent = _naive_head(hidden, head, y, temperature)
    got, ent = selective_logprobs(
        hidden, head, y, temperature=temperature, chunk_size=3, with_entropy=True
    )
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(ent, want_ent)
    assert not ent.requires_grad
    for a, b in zip(_grads(hidden, head, got, w), _grads(hidden, head, want, w), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_head_gradcheck(bias, temperature):
    hidden, head, y, _ = _head_case(n=4, v=6, bias=bias, dtype=torch.float64)
    b = head.bias if bias else None
    want = torch.log_softmax(head(hidden) / temperature, -1).gather(-1, y[:, None]).squeeze(-1)
    torch.testing.assert_close(
        _HeadLogprobs.apply(hidden, head.weight, b, y, temperature, False)[0], want
    )
    assert torch.autograd.gradcheck(
        lambda h, w, b: _HeadLogprobs.apply(h, w, b, y, temperature, True)[0],
        (hidden, head.weight, b),
    )


def test_fused_head_frozen_weight_and_no_grad():
    """LoRA-style frozen head: only the hidden gradient is formed; no-grad gives plain values."""
    hidden, head, y, w = _head_case()
    head.requires_grad_(False)
    got, _ = selective_logprobs(hidden, head, y, temperature=0.7, chunk_size=3)
    want, want_ent = _naive_head(hidden, head, y, 0.7)
    (g,) = _grads(hidden, head, got, w)
    torch.testing.assert_close(g, _grads(hidden, head, want, w)[0])
    with torch.no_grad():
        got, ent = selective_logprobs(
            hidden, head, y, temperature=0.7, chunk_size=3, with_entropy=True
        )
    assert got.grad_fn is None and ent.grad_fn is None
    torch.testing.assert_close(got, want.detach())
    torch.testing.assert_close(ent, want_ent)


def test_fused_head_bfloat16_matches_autograd():
    """bf16 model: float32 log-probs/entropy, bf16 grads, as autograd through linear(...).float() gives."""
    hidden, head, y, w = _head_case(dtype=torch.bfloat16)
    got, ent = selective_logprobs(hidden, head, y, chunk_size=3, with_entropy=True)
    want, want_ent = _naive_head(hidden, head, y, 1.0)
    assert got.dtype == ent.dtype == torch.float32
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(ent, want_ent)
    for a, b in zip(_grads(hidden, head, got, w), _grads(hidden, head, want, w), strict=True):
        assert a.dtype == b.dtype == torch.bfloat16
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 12), st.integers(1, 13), st.floats(0.3, 2.0), st.booleans(), st.integers(0, 99)
)
def test_fused_head_property(n, chunk_size, temperature, bias, seed):
    """Any row count, chunking, temperature: values, entropy and all gradients match naive."""
    hidden, head, y, w = _head_case(n=n, bias=bias, seed=seed)
    want, want_ent = _naive_head(hidden, head, y, temperature)
    got, ent = selective_logprobs(
        hidden, head, y, temperature=temperature, chunk_size=chunk_size, with_entropy=True
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=1e-5)
    for a, b in zip(_grads(hidden, head, got, w), _grads(hidden, head, want, w), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ shared-prefix forward


def _groups(tok, prompts, answers_per_prompt, seed=0):
    """Rollout-shaped tensors: each prompt repeated for its answers, left/right padded."""
    from lmpo.rollout.sampler import encode_prompts

    g = torch.Generator().manual_seed(seed)
    rows, gid = [], []
    for i, (p, answers) in enumerate(zip(prompts, answers_per_prompt, strict=True)):
        for a in answers:
            rows.append((p, torch.randint(3, 200, (a,), generator=g)))
            gid.append(i)
    prompt_ids, prompt_mask = encode_prompts(tok, [p for p, _ in rows])
    T = max(len(r) for _, r in rows)
    resp = torch.full((len(rows), T), tok.pad_token_id)
    rmask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, (_, r) in enumerate(rows):
        resp[i, : len(r)], rmask[i, : len(r)] = r, 1
    return prompt_ids, prompt_mask, resp, rmask, torch.tensor(gid)


def _plain(model, prompt_ids, prompt_mask, resp, rmask, **kw):
    ids, attn = torch.cat([prompt_ids, resp], 1), torch.cat([prompt_mask, rmask], 1)
    return sequence_logprobs(model, ids, attn, prompt_ids.shape[1], **kw)


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_shared_prefix_equals_plain_forward(tiny, attn_impl):
    model, tok = tiny
    model.config._attn_implementation = attn_impl
    try:
        batch = _groups(
            tok,
            ["What is 2+2?", "A much longer prompt, with more tokens in it", "Q"],
            [[5, 1, 9], [4, 4], [7]],
        )
        want, want_ent = _plain(model, *batch[:4], with_entropy=True)
        got, got_ent = shared_prefix_logprobs(model, *batch, chunk_size=3, with_entropy=True)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_ent, want_ent, atol=1e-5, rtol=1e-5)
    finally:
        model.config._attn_implementation = "sdpa"


def test_shared_prefix_gradients_equal_plain(tiny):
    model, tok = tiny
    batch = _groups(tok, ["Hello there, solve this", "Another one"], [[3, 6, 2, 5], [8, 1]], seed=1)
    w = torch.randn(batch[2].shape)
    model.zero_grad()
    (_plain(model, *batch[:4])[0] * w).sum().backward()
    g_ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (shared_prefix_logprobs(model, *batch, chunk_size=4)[0] * w).sum().backward()
    for a, b in zip(g_ref, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.zero_grad()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=4), min_size=1, max_size=3),
    st.integers(0, 99),
)
def test_shared_prefix_property(tiny, sizes, seed):
    """Any group layout (group sizes, answer lengths, split groups) matches the plain forward."""
    model, tok = tiny
    prompts = ["p" * (1 + (seed + i) % 7) for i in range(len(sizes))]
    batch = _groups(tok, prompts, sizes, seed=seed)
    want, _ = _plain(model, *batch[:4])
    got, _ = shared_prefix_logprobs(model, *batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ padding-free packing


def _packed_calls(monkeypatch):
    """Counts calls of the packed attention kernel (it is looked up by name at each layer)."""
    from lmpo.models import logprobs as L

    calls = []
    real = L._packed_attention

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(L, "_packed_attention", counting)
    from transformers import AttentionInterface

    AttentionInterface._global_mapping.pop(L.PACKED_ATTENTION, None)  # re-registered with the spy
    monkeypatch.setattr(
        AttentionInterface, "_global_mapping", dict(AttentionInterface._global_mapping)
    )
    return calls


def test_packed_groups_equal_padded_rows_values_and_gradients(tiny, monkeypatch):
    """Several groups run as one padding-free row with per-group attention: log-probs,
    entropies and every parameter gradient equal the padded one-row-per-group forward."""
    model, tok = tiny
    batch = _groups(
        tok,
        ["Hello there, solve this", "Q", "A third, medium prompt"],
        [[3, 9, 2], [8, 1], [4]],
        seed=3,
    )
    w = torch.randn(batch[2].shape)

    def run():
        model.zero_grad()
        lp, ent = shared_prefix_logprobs(model, *batch, chunk_size=5, with_entropy=True)
        (lp * w).sum().backward()
        return lp.detach(), ent, [p.grad.clone() for p in model.parameters()]

    calls = _packed_calls(monkeypatch)
    got = run()
    assert len(calls) == model.config.num_hidden_layers  # one packed attention call per layer
    assert model.config._attn_implementation == "sdpa"  # restored after the forward
    model._lmpo_no_packing = True
    try:
        want = run()
    finally:
        del model._lmpo_no_packing
    assert len(calls) == model.config.num_hidden_layers  # the padded path did not pack
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.zero_grad()


def test_packing_skipped_with_checkpointing_and_single_group(tiny, monkeypatch):
    """Checkpointing recomputes layers in backward, after the attention setting is restored,
    so it keeps padded rows; one group has no padding to remove."""
    import copy

    from lmpo.models.policy import enable_checkpointing

    model, tok = tiny
    calls = _packed_calls(monkeypatch)
    one = _groups(tok, ["Only one prompt"], [[3, 5, 2]], seed=4)
    shared_prefix_logprobs(model, *one)
    assert calls == []
    ckpt = copy.deepcopy(model)
    enable_checkpointing(ckpt)
    ckpt.train()
    batch = _groups(tok, ["First prompt", "Second"], [[3, 4], [2, 6]], seed=5)
    got, _ = shared_prefix_logprobs(ckpt, *batch)
    assert calls == []
    torch.testing.assert_close(got, _plain(model, *batch[:4])[0], atol=1e-5, rtol=1e-5)


def _assert_falls_back(tiny, monkeypatch, kernel, seed):
    """With ``kernel`` registered as the packed attention, the packed output is discarded,
    the padded path runs (equal to the plain forward) and the model is marked."""
    from transformers import AttentionInterface

    from lmpo.models import logprobs as L

    model, tok = tiny
    monkeypatch.setattr(
        AttentionInterface,
        "_global_mapping",
        {**AttentionInterface._global_mapping, L.PACKED_ATTENTION: kernel},
    )
    batch = _groups(tok, ["First prompt", "Second"], [[3, 4], [2, 6]], seed=seed)
    try:
        got, _ = shared_prefix_logprobs(model, *batch)
        assert model._lmpo_no_packing is True
    finally:
        model.__dict__.pop("_lmpo_no_packing", None)
    torch.testing.assert_close(got, _plain(model, *batch[:4])[0], atol=1e-5, rtol=1e-5)


def test_model_that_bypasses_the_kernel_falls_back_to_padded_rows(tiny, monkeypatch):
    """If attention never reaches the packed kernel (a model with its own attention code),
    the packed output is discarded, the padded path runs, and the model is marked."""
    from transformers import AttentionInterface

    stock = AttentionInterface._global_mapping["sdpa"]

    def bypass(module, q, k, v, mask, **kw):  # ignores the spans: attends across groups
        return stock(
            module, q, k, v, None, **{k2: v2 for k2, v2 in kw.items() if not k2.startswith("lmpo_")}
        )

    _assert_falls_back(tiny, monkeypatch, bypass, seed=6)


@pytest.mark.parametrize("extra", [{"softcap": 30.0}, {"sliding_window": 4}])
def test_attention_variants_the_packed_kernel_lacks_fall_back(tiny, monkeypatch, extra):
    """A model whose attention passes e.g. logit soft-capping or a sliding window would get
    plain SDPA from the packed kernel: it runs padded rows instead, and says so once."""
    from lmpo.models import logprobs as L

    with pytest.raises(L.PackingUnsupported):
        q = torch.zeros(1, 2, 3, 4)
        L._packed_attention(None, q, q, q, None, lmpo_spans=[], lmpo_calls=[0], **extra)

    def with_variant(module, q, k, v, mask, **kw):
        return L._packed_attention(module, q, k, v, mask, **kw, **extra)

    _assert_falls_back(tiny, monkeypatch, with_variant, seed=7)


def test_answer_logprob_sums_share_repeated_prompts(tiny, monkeypatch):
    """Rows with the same prompt are one group (one prompt encoding); the sums equal
    separate [prompt; answer] rows, values and gradients."""
    import lmpo.models.logprobs as lp

    model, tok = tiny
    prompts = [tok(p).input_ids for p in ["What is 2+2?", "Q", "What is 2+2?", "Q", "Other"]]
    answers = [
        [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14], [15, 16]],
        [[17], [18, 19], [20], [21], [22, 23]],
    ]
    seen = []
    real = lp._pack_groups
    monkeypatch.setattr(lp, "_pack_groups", lambda *a: seen.append(len(a[-1])) or real(*a))
    model.zero_grad()
    got = lp.answer_logprob_sums(model, prompts, answers, tok.pad_token_id)
    got.sum().backward()
    g_shared = [p.grad.clone() for p in model.parameters()]
    assert seen == [3]  # 3 distinct prompts for 5 rows x 2 answers
    model.zero_grad()
    want = lp.answer_logprob_sums(model, prompts, answers, tok.pad_token_id, shared_prefix=False)
    want.sum().backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, p in zip(g_shared, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)
