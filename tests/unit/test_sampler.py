import torch

from lmpo.models.logprobs import sequence_logprobs
from lmpo.rollout.sampler import SamplingConfig, encode_prompts, generate

PROMPTS = ["What is 2+2?", "Say hello to the world please", "x"]


def test_greedy_matches_transformers_generate(tiny):
    model, tok = tiny
    r = generate(model, tok, PROMPTS, SamplingConfig(max_new_tokens=12, greedy=True))
    ids, mask = encode_prompts(tok, PROMPTS)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=12,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    for i in range(len(PROMPTS)):
        n = int(r.response_mask[i].sum())
        assert r.response_ids[i, :n].tolist() == out[i, ids.shape[1] : ids.shape[1] + n].tolist()


def test_sampled_logprobs_equal_recomputed(tiny):
    model, tok = tiny
    g = torch.Generator().manual_seed(0)
    r = generate(
        model, tok, PROMPTS * 2, SamplingConfig(max_new_tokens=10, temperature=0.8), generator=g
    )
    ids, attn = r.input_ids()
    lp, _ = sequence_logprobs(model, ids, attn, r.prompt_ids.shape[1], temperature=0.8)
    torch.testing.assert_close(lp * r.response_mask, r.logprobs, atol=1e-4, rtol=1e-4)
    assert (r.logprobs[r.response_mask == 0] == 0).all()


def test_same_generator_state_same_samples(tiny):
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=0.9)
    a = generate(model, tok, PROMPTS, cfg, generator=torch.Generator().manual_seed(3))
    b = generate(model, tok, PROMPTS, cfg, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.response_ids, b.response_ids)


def test_eos_and_truncation_flags(tiny):
    model, tok = tiny
    # make EOS the argmax everywhere: every answer is exactly one token (the EOS) long
    with torch.no_grad():
        bias = torch.zeros(model.config.vocab_size)
        bias[tok.eos_token_id] = 100.0
        model.lm_head.bias = torch.nn.Parameter(bias)
    try:
        r = generate(model, tok, PROMPTS, SamplingConfig(max_new_tokens=5, greedy=True))
        assert r.response_mask.sum(-1).tolist() == [1, 1, 1]
        assert not r.truncated.any()
    finally:
        model.lm_head.bias = None
    r = generate(model, tok, PROMPTS, SamplingConfig(max_new_tokens=3, greedy=True))
    ended = [
        (r.response_ids[i][r.response_mask[i].bool()] == tok.eos_token_id).any().item()
        for i in range(3)
    ]
    assert r.truncated.tolist() == [not e for e in ended]


def test_stop_strings_end_sequences(tiny):
    model, tok = tiny
    free = generate(model, tok, PROMPTS, SamplingConfig(max_new_tokens=10, greedy=True))
    first = free.texts[0][:2]
    stopped = generate(
        model, tok, PROMPTS, SamplingConfig(max_new_tokens=10, greedy=True, stop=(first,))
    )
    assert stopped.texts[0] == first
    assert not stopped.truncated[0]


def test_repeats_prefill_once_equals_repeated_prompts(tiny):
    """Prefilling each prompt once and copying its cache G times samples what G copies would."""
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0)
    G = 3
    a = generate(model, tok, PROMPTS, cfg, generator=torch.Generator().manual_seed(5), repeats=G)
    b = generate(
        model,
        tok,
        [p for p in PROMPTS for _ in range(G)],
        cfg,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.prompt_mask, b.prompt_mask)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.truncated, b.truncated)


def test_categorical_matches_distribution_and_skips_zero_weights():
    from lmpo.rollout.sampler import categorical

    w = torch.tensor([[0.0, 1.0, 3.0, 0.0, 6.0]]).repeat(20000, 1)
    draws = categorical(w, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).double() / len(draws)
    assert freq[0] == 0 and freq[3] == 0  # zero-weight tokens are never drawn
    # 20k draws: 4 standard errors of the largest cell is < 0.015
    torch.testing.assert_close(
        freq, torch.tensor([0.0, 0.1, 0.3, 0.0, 0.6], dtype=torch.float64), atol=0.015, rtol=0
    )
    one_hot = categorical(torch.eye(7), torch.Generator().manual_seed(1))
    assert one_hot.tolist() == list(range(7))
