import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny():
    """A tiny random Llama and the byte-level test tokenizer (built in memory, no downloads)."""
    from lmpo.models.loading import tiny_model

    model, tok = tiny_model(seed=0)
    return model, tok
