import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))  # for the user reward module below


def write_recipe(tmp_path: Path, **overrides) -> Path:
    """A seconds-long recipe on the tiny random model; rewards that vary so updates happen."""
    data = {
        "tiny_model": True,
        "task": {
            "name": "arithmetic",
            "train_size": 40,
            "test_size": 4,
            "params": {"style": "bare"},
        },
        "rewards": [{"name": "user_rewards:vowel_count", "weight": 1.0}],
        "batch": {"prompts_per_step": 2, "completions_per_prompt": 3, "micro_batch_size": 4},
        "sampling": {"max_new_tokens": 6},
        "optim": {"lr": 1e-2},
        "steps": 2,
        "eval": {"batch_size": 4},
        "checkpoint_every": 1,
        "output_dir": str(tmp_path / "run"),
    }
    for k, v in overrides.items():
        node = data
        keys = k.split(".")
        for kk in keys[:-1]:
            node = node.setdefault(kk, {})
        node[keys[-1]] = v
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture
def recipe(tmp_path):
    return lambda **kw: write_recipe(tmp_path, **kw)
