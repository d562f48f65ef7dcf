"""Per-token log-probs without materialising full-vocabulary logits for a whole batch.

The decoder runs once; the LM head and log-softmax then run over chunks of response
positions (V = 49k for SmolLM2: a [B, T, V] logits tensor is where naive implementations
spend most of their memory). Each chunk is one autograd Function, `_HeadLogprobs`, that
saves only its hidden rows, labels and logsumexp; backward recomputes the chunk's logits
and turns them into the gradient (onehot(label) - softmax) / T in place. The entropy is
taken from the forward's logits, so a trained chunk costs 4 head matmuls (forward,
recompute, two gradients), one fewer than checkpointing the chunk and running a separate
no-grad matmul for the entropy. Memory is unchanged: at most one float32 [chunk, V]
buffer is alive at a time (plus its bfloat16 twin for bf16 models, as before).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def unwrap(model):
    """The underlying *ForCausalLM (PEFT wrappers keep their LoRA layers active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_and_head(model):
    base = unwrap(model)
    return base.get_decoder(), base.get_output_embeddings()


def checkpointing_enabled(model) -> bool:
    """Whether any layer of the model checkpoints its activations (in train mode)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _head_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """logits / temperature [n, V] in float32 (or float64), a fresh buffer the caller may overwrite."""
    z = torch.nn.functional.linear(hidden, weight, bias)
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    return z.div_(temperature) if temperature != 1.0 else z


class _HeadLogprobs(torch.autograd.Function):
    """One chunk: (log softmax(head(hidden) / T)[labels], entropy or None), entropy detached."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, with_entropy):
        z = _head_logits(hidden, weight, bias, temperature)
        z_y = z.gather(1, labels[:, None]).squeeze(1)
        m = z.amax(1, keepdim=True)
        s = z.sub_(m).exp_().sum(1, keepdim=True)  # z now holds exp(logits - max)
        lse = (m + s.log()).squeeze(1)
        ent = None
        if with_entropy:  # -sum p log p with p = softmax, normalised in place
            ent = z.div_(s).xlogy_(z).sum(1).neg_()
            ctx.mark_non_differentiable(ent)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.temperature = temperature
        return z_y - lse, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, g, _):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g = g / ctx.temperature
        # d logp / d logits = (onehot(label) - softmax) / T, built on the recomputed logits
        gz = _head_logits(hidden, weight, bias, ctx.temperature).sub_(lse[:, None]).exp_()
        gz = gz.mul_(-g[:, None]).scatter_add_(1, labels[:, None], g[:, None]).to(weight.dtype)
        grad_h = (gz @ weight).to(hidden.dtype) if need_h else None
        grad_w = gz.t() @ hidden.to(weight.dtype) if need_w else None
        grad_b = gz.sum(0).to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None


def selective_logprobs(
    hidden: Tensor,
    head: torch.nn.Linear,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """log softmax(head(hidden)/temperature)[labels], chunked over rows.

    hidden: [N, H]; labels: [N] -> logp [N] (and entropy [N], detached, if asked).
    """
    out, ent = [], []
    for s in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[s : s + chunk_size], labels[s : s + chunk_size]
        lp, e = _HeadLogprobs.apply(h, head.weight, head.bias, y, temperature, with_entropy)
        out.append(lp)
        ent.append(e)
    logp = torch.cat(out) if out else hidden.new_zeros(0)
    return logp, (torch.cat(ent) if with_entropy and ent else None)


def sequence_logprobs(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_start: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = False,
    position_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of tokens input_ids[:, response_start:] given everything before them.

    input_ids, attention_mask: [B, L] (prompt left-padded to response_start, response
    right-padded). Returns logp [B, L - response_start] (0 where attention_mask is 0)
    and optionally the per-token entropy of the predictive distribution (detached).
    """
    decoder, head = decoder_and_head(model)
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    hidden = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    ).last_hidden_state
    hid = hidden[:, response_start - 1 : -1]  # position t predicts token t+1
    labels = input_ids[:, response_start:]
    mask = attention_mask[:, response_start:].bool()
    B, T = labels.shape
    logp = hid.new_zeros(B, T, dtype=torch.float32)
    sel_logp, sel_ent = selective_logprobs(
        hid[mask],
        head,
        labels[mask],
        temperature=temperature,
        chunk_size=chunk_size,
        with_entropy=with_entropy,
    )
    logp = logp.masked_scatter(mask, sel_logp)
    ent = None
    if with_entropy:
        ent = torch.zeros(B, T).masked_scatter(mask, sel_ent)
    return logp, ent


# ------------------------------------------------------------------------- shared prefixes


def _pack_groups(prompt_ids, prompt_mask, response_ids, response_mask, rows_by_group):
    """One packed row per group: [prompt, response_1, ..., response_k] (real tokens only).

    Returns ids, positions, segment ids (0 prompt, j for response j, -1 padding) [N, L] and,
    per completion row, (pack index, hidden-state indices that predict its tokens, length).
    """
    packs, where = [], {}
    for n, rows in enumerate(rows_by_group):
        prompt = prompt_ids[rows[0]][prompt_mask[rows[0]].bool()]
        p = len(prompt)
        ids, pos, seg, off = [prompt], [torch.arange(p)], [torch.zeros(p, dtype=torch.long)], p
        for j, r in enumerate(rows, start=1):
            n_tok = int(response_mask[r].sum())
            ids.append(response_ids[r, :n_tok])
            pos.append(
                torch.arange(p, p + n_tok)
            )  # every answer continues the prompt at position p
            seg.append(torch.full((n_tok,), j))
            # token t of the answer is predicted by the state before it: the prompt's last
            # token for t = 0, else the answer's own token t - 1
            idx = (
                torch.cat([torch.tensor([p - 1]), torch.arange(off, off + n_tok - 1)])
                if n_tok
                else torch.arange(0)
            )
            where[r] = (n, idx, n_tok)
            off += n_tok
        packs.append((torch.cat(ids), torch.cat(pos), torch.cat(seg)))
    L = max(len(x[0]) for x in packs)
    ids = torch.zeros(len(packs), L, dtype=torch.long)
    pos = torch.zeros(len(packs), L, dtype=torch.long)
    seg = torch.full((len(packs), L), -1, dtype=torch.long)
    for n, (i, p, s) in enumerate(packs):
        ids[n, : len(i)], pos[n, : len(p)], seg[n, : len(s)] = i, p, s
    return ids, pos, seg, where


def shared_prefix_mask(seg: Tensor, dtype: torch.dtype, attn_implementation: str) -> Tensor:
    """[N, 1, L, L] mask: causal inside the prompt; each answer sees the prompt and its own past.

    Padding positions (segment -1) attend only to themselves so no softmax row is empty.
    Boolean (True = attend) for SDPA, additive float for eager attention.
    """
    L = seg.shape[1]
    q, k = torch.arange(L)[:, None], torch.arange(L)[None, :]
    sq, sk = seg[:, :, None], seg[:, None, :]
    allowed = (k <= q) & (sk >= 0) & ((sk == 0) | (sk == sq))
    allowed = allowed | ((sq < 0) & (k == q))
    allowed = allowed[:, None]
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return allowed


PACKED_ATTENTION = "lmpo_packed_sdpa"
# attention variants plain SDPA would silently drop: such models run padded rows instead
_UNSUPPORTED_ATTENTION_KWARGS = ("softcap", "sliding_window", "s_aux", "position_bias")


class PackingUnsupported(RuntimeError):
    """The model's attention needs something the packed kernel does not implement."""


def _packed_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs
):
    """Attention for a padding-free packed row: query [1, H, N, d], key/value [1, Hkv, N, d].

    ``kwargs["lmpo_spans"]`` lists (start, end, mask) per group: SDPA runs on each span alone
    with that group's [1, 1, L, L] boolean mask, so the cost is sum(L^2), not N^2, and no
    token attends across groups. Returns [1, N, H, d] like transformers' attention functions.
    """
    spans, calls = kwargs["lmpo_spans"], kwargs["lmpo_calls"]
    unsupported = [k for k in _UNSUPPORTED_ATTENTION_KWARGS if kwargs.get(k) is not None]
    if unsupported:
        raise PackingUnsupported(f"attention with {', '.join(unsupported)}")
    calls[0] += 1
    n_rep = query.shape[1] // key.shape[1]
    if (
        n_rep > 1
    ):  # grouped-query attention: kv head h serves query heads h*n_rep ... h*n_rep+n_rep-1
        key, value = key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1)
    out = torch.cat(
        [
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, s:e],
                key[:, :, s:e],
                value[:, :, s:e],
                attn_mask=m,
                dropout_p=dropout,
                scale=scaling,
            )
            for s, e, m in spans
        ],
        dim=2,
    )
    return out.transpose(1, 2).contiguous(), None


def packing_applies(model) -> bool:
    """Padding-free packing needs attention dispatched through transformers' AttentionInterface
    (SDPA/eager models) and no activation checkpointing (its recompute in backward would
    dispatch on the restored attention setting)."""
    if getattr(model, "_lmpo_no_packing", False) or not supports_shared_prefix(model):
        return False
    return not checkpointing_enabled(model)


def _packed_forward(decoder, config, ids: Tensor, pos: Tensor, seg: Tensor):
    """Final hidden states of the real tokens of all packs as one row [1, N, H], and each
    pack's offset in it; (None, None) if the model did not route attention through us or
    needs an attention variant the packed kernel lacks."""
    from transformers import AttentionInterface

    if PACKED_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(PACKED_ATTENTION, _packed_attention)
    real = seg >= 0  # each pack's real tokens come first in its row
    lengths = real.sum(-1).tolist()
    offsets, spans, start = [], [], 0
    for n, length in enumerate(lengths):
        mask = shared_prefix_mask(seg[n : n + 1, :length], torch.float32, "sdpa")
        offsets.append(start)
        spans.append((start, start + length, mask))
        start += length
    calls = [0]
    previous = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    try:
        out = decoder(
            input_ids=ids[real][None],
            position_ids=pos[real][None],
            attention_mask=None,
            use_cache=False,
            lmpo_spans=spans,
            lmpo_calls=calls,
        ).last_hidden_state
    except PackingUnsupported:
        return None, None
    finally:
        config._attn_implementation = previous
    if calls[0] == 0:
        return None, None
    return out, offsets


def supports_shared_prefix(model) -> bool:
    """Custom 4D masks reach the attention kernel as-is for SDPA and eager attention."""
    return getattr(unwrap(model).config, "_attn_implementation", None) in ("sdpa", "eager")


def shared_prefix_logprobs(
    model,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    group_ids: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Response log-probs with each group's prompt encoded once (Prefix Grouper).

    Liu et al., "Prefix Grouper: Efficient GRPO Training through Shared-Prefix Forward"
    (2025): the G answers of a group share one prompt, so the prompt's hidden states are
    computed once and every answer attends to them plus its own causal past. Outputs and
    gradients equal the standard forward (`sequence_logprobs` on [prompt; answer] rows) up
    to float rounding; the prompt's gradient is the sum over its answers, as it is there.
    Departure: instead of splitting attention into prefix/suffix calls, each group is one
    packed row with a block mask, which any SDPA/eager model accepts unchanged. With more
    than one group, the groups are also packed padding-free into a single row (see
    `_packed_forward`): the linear layers see only real tokens, attention runs per group.

    prompt_ids/prompt_mask: [B, P] left-padded; response_ids/response_mask: [B, T]
    right-padded; group_ids: [B] (rows with equal ids must have the same prompt).
    Returns logp [B, T] (0 on padding) and optionally the detached entropy [B, T].
    """
    B, T = response_ids.shape
    rows_by_group: dict[int, list[int]] = {}
    for r, g in enumerate(group_ids.tolist()):
        rows_by_group.setdefault(g, []).append(r)
    ids, pos, seg, where = _pack_groups(
        prompt_ids, prompt_mask, response_ids, response_mask, list(rows_by_group.values())
    )
    decoder, head = decoder_and_head(model)
    hidden = None
    if len(rows_by_group) > 1 and packing_applies(model):
        hidden, offsets = _packed_forward(decoder, unwrap(model).config, ids, pos, seg)
        if hidden is None:  # attention never reached the packed kernel: remember, use rows
            model._lmpo_no_packing = True
    if hidden is None:  # one group, or a model that cannot run packed: padded rows, block mask
        impl = unwrap(model).config._attn_implementation
        mask = shared_prefix_mask(seg, head.weight.dtype, impl)
        hidden = decoder(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False
        ).last_hidden_state
        offsets = [n * ids.shape[1] for n in range(ids.shape[0])]
    flat_idx = torch.cat([offsets[n] + idx for r, (n, idx, _) in sorted(where.items())])
    resp_mask = response_mask.bool()
    labels = response_ids[resp_mask]  # row-major order == sorted rows, tokens in order
    sel_logp, sel_ent = selective_logprobs(
        hidden.reshape(-1, hidden.shape[-1])[flat_idx],
        head,
        labels,
        temperature=temperature,
        chunk_size=chunk_size,
        with_entropy=with_entropy,
    )
    logp = torch.zeros(B, T, dtype=torch.float32).masked_scatter(resp_mask, sel_logp)
    ent = torch.zeros(B, T).masked_scatter(resp_mask, sel_ent) if with_entropy else None
    return logp, ent


# ------------------------------------------------------------------- token lists -> log-probs


def pad_token_lists(rows: list[list[int]], pad_id: int, *, left: bool) -> tuple[Tensor, Tensor]:
    """Token lists -> ids and mask [B, L], padded on the left (prompts) or the right (answers)."""
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(L - len(r), L) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def answer_logprob_sums(
    model,
    prompts: list[list[int]],
    answers: list[list[list[int]]],
    pad_id: int,
    *,
    shared_prefix: bool = True,
    chunk_size: int = 512,
) -> Tensor:
    """Summed log-probs [K, B] of answers[k][i] given prompts[i] (token lists).

    With ``shared_prefix`` (and a model that supports it) every answer to the same prompt
    (the K answers of row i, and the answers of rows with an identical prompt, such as a
    group of samples being scored) shares one encoding of it (`shared_prefix_logprobs`);
    otherwise each [prompt; answer] is its own row (`sequence_logprobs`). Grad flows if
    enabled.
    """
    b, K = len(prompts), len(answers)
    p_ids, p_mask = pad_token_lists(prompts * K, pad_id, left=True)
    a_ids, a_mask = pad_token_lists([a for branch in answers for a in branch], pad_id, left=False)
    if shared_prefix and supports_shared_prefix(model):
        distinct: dict[tuple[int, ...], int] = {}
        group = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
        groups = torch.tensor(group).repeat(K)
        logp, _ = shared_prefix_logprobs(
            model, p_ids, p_mask, a_ids, a_mask, groups, chunk_size=chunk_size
        )
    else:
        ids, attn = torch.cat([p_ids, a_ids], 1), torch.cat([p_mask, a_mask], 1)
        logp, _ = sequence_logprobs(model, ids, attn, p_ids.shape[1], chunk_size=chunk_size)
    return logp.sum(-1).view(K, b)
