import torch

from lmpo.models.logprobs import position_ids_from_mask, selective_logprobs, sequence_logprobs


def naive_logprobs(model, ids, attn, start):
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits.float()
    logp = torch.log_softmax(logits[:, start - 1 : -1], -1).gather(-1, ids[:, start:, None]).squeeze(-1)
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
