"""A scalar reward model: a causal LM's decoder with a linear head on the last real token.

``r(x, y) = w . h(x ⊕ y ⊕ EOS)[last non-pad position] + b``, where ``h`` is the decoder's
final hidden state [B, L, H] (after its last norm) and ``x`` the prompt rendered with the
tokenizer's chat template (``render_prompt``). EOS is appended so every sequence ends on the
same token, whether or not generation stopped there. Inputs longer than ``max_length``
tokens keep their last ``max_length`` tokens (the end of the answer matters most).

A saved reward model is a directory, loadable with ``RewardModel.load(dir)``:

* ``config.json`` + ``model.safetensors``: the decoder (Hugging Face ``save_pretrained``);
* the tokenizer files;
* ``value_head.safetensors``: the head's ``weight`` [1, H] and ``bias`` [1];
* ``reward_model.json``: format tag, ``max_length``, and ``reward_mean``/``reward_std``
  (the rewards' statistics on held-out pairs, written by training; used to standardise
  ensemble members).

Only safetensors and JSON are read: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lmpo.data.prompts import render_prompt
from lmpo.models.loading import _ensure_pad, save_pretrained_clean
from lmpo.models.logprobs import position_ids_from_mask, unwrap
from lmpo.rollout.sampler import encode_prompts

FORMAT = "lmpo-reward-model"
VERSION = 1
HEAD_FILE = "value_head.safetensors"
META_FILE = "reward_model.json"


class RewardModel(nn.Module):
    """backbone: a decoder returning ``last_hidden_state`` (e.g. LlamaModel); head: H -> 1."""

    def __init__(
        self, backbone, tokenizer, *, max_length: int = 512, meta: dict | None = None
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"reward model: max_length must be >= 2, got {max_length}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        self.max_length = max_length
        self.meta = dict(meta or {})

    @classmethod
    def from_causal_lm(
        cls,
        model,
        tokenizer,
        *,
        max_length: int = 512,
        seed: int = 0,
        base_model: str | None = None,
        init_std: float | None = None,
    ):
        """Take the decoder of a causal LM and add a fresh head: seeded N(0, init_std^2) weights
        (default std 1/sqrt(H)), zero bias."""
        rm = cls(
            unwrap(model).get_decoder(),
            tokenizer,
            max_length=max_length,
            meta={"base_model": base_model},
        )
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            std = rm.head.weight.shape[1] ** -0.5 if init_std is None else init_std
            w = torch.randn(rm.head.weight.shape, generator=gen) * std
            rm.head.weight.copy_(w)
            rm.head.bias.zero_()
        return rm

    def encode(self, prompts: list, completions: list[str]) -> tuple[Tensor, Tensor]:
        """Left-padded ids [B, L] and mask of ``render_prompt(prompt) + completion + EOS``."""
        eos = self.tokenizer.eos_token or ""
        texts = [
            render_prompt(self.tokenizer, p) + c + eos
            for p, c in zip(prompts, completions, strict=True)
        ]
        ids, mask = encode_prompts(self.tokenizer, texts)
        return ids[:, -self.max_length :], mask[:, -self.max_length :]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Rewards [B] (float32) read at each row's last non-pad token."""
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state
        cols = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * cols).argmax(-1)  # works for left or right padding
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(h).squeeze(-1).float()

    def rewards(self, prompts: list, completions: list[str]) -> Tensor:
        """Rewards [B] of prompt/completion pairs (with grad if enabled)."""
        return self(*self.encode(prompts, completions))

    @torch.no_grad()
    def score(
        self,
        prompts: list,
        completions: list[str],
        *,
        batch_size: int = 16,
        normalize: bool = False,
    ) -> Tensor:
        """Rewards [N] in batches of ``batch_size``, without grad.

        normalize: standardise with the stored held-out ``reward_mean``/``reward_std``
        (no-op if the model has none, e.g. it was never trained with lmpo).
        """
        was_training = self.training
        self.eval()
        out = [
            self.rewards(prompts[s : s + batch_size], completions[s : s + batch_size])
            for s in range(0, len(completions), batch_size)
        ]
        self.train(was_training)
        r = torch.cat(out) if out else torch.zeros(0)
        mean, std = self.meta.get("reward_mean"), self.meta.get("reward_std")
        if normalize and mean is not None and std:
            r = (r - mean) / std
        return r

    def save(self, path: str | Path) -> Path:
        """Write the directory atomically (temporary directory, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
        try:
            save_pretrained_clean(self.backbone, self.tokenizer, tmp)
            head = {k: v.detach().contiguous().clone() for k, v in self.head.state_dict().items()}
            save_file(head, str(tmp / HEAD_FILE))
            meta = {
                **self.meta,
                "format": FORMAT,
                "version": VERSION,
                "max_length": self.max_length,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
            old = path.with_name(f".old-{path.name}")
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, *, dtype: torch.dtype = torch.float32) -> RewardModel:
        """Load a directory written by ``save`` (FileNotFoundError/ValueError name the path)."""
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        meta = read_meta(path)
        backbone = AutoModel.from_pretrained(str(path), dtype=dtype)
        tok = AutoTokenizer.from_pretrained(str(path))
        _ensure_pad(tok, backbone)
        rm = cls(backbone, tok, max_length=int(meta["max_length"]), meta=meta)
        head = load_file(str(path / HEAD_FILE))
        if set(head) != {"weight", "bias"} or head["weight"].shape != rm.head.weight.shape:
            raise ValueError(
                f"{path / HEAD_FILE}: expected weight {tuple(rm.head.weight.shape)} and bias"
            )
        rm.head.load_state_dict(head)
        return rm.to(dtype).eval()


def read_meta(path: str | Path) -> dict:
    """The reward_model.json of a saved reward model, checked; errors name the path."""
    path = Path(path)
    f = path / META_FILE
    if not f.is_file():
        raise FileNotFoundError(
            f"{path}: not a reward model directory (no {META_FILE}); train one with train_reward_model"
        )
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: malformed JSON ({e.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{f}: not an lmpo reward model (format tag {FORMAT!r} missing)")
    if not (path / HEAD_FILE).is_file():
        raise FileNotFoundError(f"{path}: {HEAD_FILE} is missing")
    return meta
