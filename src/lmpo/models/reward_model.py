"""Reward models: a causal LM's decoder with a scalar head (``RewardModel``), or a policy
trained with a DPO-family loss read as its implicit reward (``ImplicitRewardModel``).

Scalar head:

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

Implicit (``reward_model.json`` with ``"kind": "implicit"``, written next to the policy by a
preference run whose loss has a reference): ``r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))``
with summed answer log-probs, tokenized as that run did (``data.preference.AnswerTokenizer``).

``load_reward_model(dir)`` loads either kind. Only safetensors and JSON are read: nothing is
unpickled.
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

from lmpo.data.preference import AnswerTokenizer, Pair, answer_text
from lmpo.data.prompts import render_prompt
from lmpo.models.loading import _ensure_pad, load_model, save_pretrained_clean
from lmpo.models.logprobs import answer_logprob_sums, position_ids_from_mask, unwrap
from lmpo.rollout.sampler import encode_prompts

FORMAT = "lmpo-reward-model"
VERSION = 1
HEAD_FILE = "value_head.safetensors"
META_FILE = "reward_model.json"
SCALAR, IMPLICIT = "scalar", "implicit"


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
        return standardize(r, self.meta, normalize)

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
    kind = meta.get("kind", SCALAR)
    if kind == SCALAR and not (path / HEAD_FILE).is_file():
        raise FileNotFoundError(f"{path}: {HEAD_FILE} is missing")
    if kind == IMPLICIT:
        missing = [k for k in ("beta", "reference") if k not in meta]
        if missing or not (path / "config.json").is_file():
            raise ValueError(f"{f}: implicit reward model without {missing or 'config.json'}")
    elif kind != SCALAR:
        raise ValueError(
            f"{f}: unknown reward-model kind {kind!r} (expected {SCALAR} or {IMPLICIT})"
        )
    return meta


def load_reward_model(path: str | Path) -> RewardModel | ImplicitRewardModel:
    """A saved reward model of either kind (see the module docstring)."""
    if read_meta(path).get("kind", SCALAR) == IMPLICIT:
        return ImplicitRewardModel.load(path)
    return RewardModel.load(path)


def standardize(r: Tensor, meta: dict, normalize: bool) -> Tensor:
    """(r - reward_mean) / reward_std when asked and the model has them, else r."""
    mean, std = meta.get("reward_mean"), meta.get("reward_std")
    if normalize and mean is not None and std:
        return (r - mean) / std
    return r


class ImplicitRewardModel(nn.Module):
    """The implicit reward of a policy trained with a reference-based DPO-family loss.

    Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model", arXiv 2305.18290, sec. 5: DPO fits the Bradley-Terry model with
    ``r(x, y) = beta * log pi(y|x) / pi_ref(y|x)`` (the partition term cancels in every
    comparison of answers to the same prompt). ``policy`` and ``reference`` are causal LMs;
    ``answer_tokens`` renders and tokenizes (prompt, answer) as the training run did, so
    ``score`` reproduces that run's held-out implicit rewards.
    """

    def __init__(self, policy, reference, tokenizer, *, beta: float, meta: dict | None = None):
        super().__init__()
        if not beta > 0:
            raise ValueError(f"implicit reward model: beta must be > 0, got {beta}")
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.beta = float(beta)
        self.meta = dict(meta or {})
        self.answer_tokens = AnswerTokenizer(
            tokenizer,
            system_prompt=self.meta.get("system_prompt"),
            max_prompt_tokens=self.meta.get("max_prompt_tokens"),
            max_completion_tokens=self.meta.get("max_completion_tokens"),
            cache=False,  # an online run scores new answers every step
        )
        for p in self.reference.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def score(
        self,
        prompts: list,
        completions: list[str],
        *,
        batch_size: int = 16,
        normalize: bool = False,
    ) -> Tensor:
        """Rewards [N] in batches of ``batch_size`` rows, without grad (``normalize``: as
        ``RewardModel.score``)."""
        self.policy.eval()
        self.reference.eval()
        out = []
        for s in range(0, len(completions), batch_size):
            toks = [
                self.answer_tokens(p, [[{"role": "assistant", "content": c}]])
                for p, c in zip(
                    prompts[s : s + batch_size], completions[s : s + batch_size], strict=True
                )
            ]
            ps, answers = [t[0] for t in toks], [[t[1][0] for t in toks]]
            pad = self.tokenizer.pad_token_id
            lp = answer_logprob_sums(self.policy, ps, answers, pad)[0]
            lp_ref = answer_logprob_sums(self.reference, ps, answers, pad)[0]
            out.append(self.beta * (lp - lp_ref))
        r = torch.cat(out) if out else torch.zeros(0)
        return standardize(r, self.meta, normalize)

    @classmethod
    def load(cls, path: str | Path, *, dtype: torch.dtype = torch.float32) -> ImplicitRewardModel:
        from lmpo.models.policy import load_base

        path = Path(path)
        meta = read_meta(path)
        policy, tok = load_model(str(path), dtype=dtype)  # the saved policy: a HF directory
        ref = meta["reference"]
        reference, _ = load_base(
            ref["model"], tiny=ref.get("tiny_model", False), seed=ref.get("seed", 0)
        )
        return cls(policy, reference.to(dtype), tok, beta=meta["beta"], meta=meta)


def write_implicit_meta(path: str | Path, *, beta: float, reference: dict, **extra) -> Path:
    """Mark a saved policy directory as an implicit reward model (``reward_model.json``,
    written atomically); ``reference``: ``{"model", "tiny_model", "seed"}`` as ``load_base``
    takes them."""
    path = Path(path)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": IMPLICIT,
        "beta": beta,
        "reference": reference,
        **extra,
    }
    tmp = path / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path / META_FILE)
    return path


def score_pairs(
    rm: RewardModel | ImplicitRewardModel, pairs: list[Pair], *, batch_size: int = 16
) -> tuple[Tensor, Tensor]:
    """Raw rewards [N] of the chosen and of the rejected answers of ``pairs``, without grad.
    A pair's two answers are scored side by side (one prompt encoding for the implicit kind)."""
    prompts = [p.prompt for p in pairs for _ in range(2)]
    answers = [answer_text(a) for p in pairs for a in (p.chosen, p.rejected)]
    r = rm.score(prompts, answers, batch_size=batch_size)
    return r[0::2], r[1::2]
