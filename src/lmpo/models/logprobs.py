"""Per-token log-probs without materialising full-vocabulary logits for a whole batch.

The decoder runs once; the LM head and log-softmax then run over chunks of response
positions. Under autograd each chunk is checkpointed, so backward recomputes that chunk's
logits instead of keeping [B, T, V] alive (V = 49k for SmolLM2: that tensor is where
naive implementations spend most of their memory).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def unwrap(model):
    """The underlying *ForCausalLM (PEFT wrappers keep their LoRA layers active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_and_head(model):
    base = unwrap(model)
    return base.get_decoder(), base.get_output_embeddings()


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _chunk_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, temperature: float) -> Tensor:
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def _chunk_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


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
    weight, bias = head.weight, head.bias
    out, ent = [], []
    grad = torch.is_grad_enabled() and hidden.requires_grad
    for s in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[s : s + chunk_size], labels[s : s + chunk_size]
        if grad:
            out.append(checkpoint(_chunk_logprobs, h, weight, bias, y, temperature, use_reentrant=False))
        else:
            out.append(_chunk_logprobs(h, weight, bias, y, temperature))
        if with_entropy:
            ent.append(_chunk_entropy(h.detach(), weight, bias, temperature))
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
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    hid = hidden[:, response_start - 1 : -1]  # position t predicts token t+1
    labels = input_ids[:, response_start:]
    mask = attention_mask[:, response_start:].bool()
    B, T = labels.shape
    logp = hid.new_zeros(B, T, dtype=torch.float32)
    sel_logp, sel_ent = selective_logprobs(
        hid[mask], head, labels[mask], temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy
    )
    logp = logp.masked_scatter(mask, sel_logp)
    ent = None
    if with_entropy:
        ent = torch.zeros(B, T).masked_scatter(mask, sel_ent)
    return logp, ent
