"""Typed run configuration: YAML recipes validated before any model loads.

Batch vocabulary (defined here once, used everywhere):

* ``prompts_per_step``        prompts sampled for one training step (one rollout batch).
* ``completions_per_prompt``  answers sampled per prompt: the group size G.
* rollout batch               prompts_per_step x completions_per_prompt completions.
* ``minibatch_size``          completions per optimizer step; the rollout batch is split
                              into rollout/minibatch optimizer steps per inner epoch.
* ``micro_batch_size``        completions per forward/backward pass (gradient accumulation;
                              changes memory only, never the maths).
* ``inner_epochs``            passes over the rollout batch (PPO epochs, mu in GRPO).
"""

from lmpo.config.base import *  # noqa: F403
from lmpo.config.base import ConfigError, Strict, _check_method, _check_rewards, _check_task  # noqa: F401
from lmpo.config.iterative import *  # noqa: F403
from lmpo.config.iterative import IterativeConfig, preference_run  # noqa: F401
from lmpo.config.loading import (  # noqa: F401
    RECIPES_DIR,
    dump_config,
    format_errors,
    list_recipes,
    load_config,
    parse_override,
    recipe_path,
    validate,
)
from lmpo.config.online import *  # noqa: F403
from lmpo.config.online import RunConfig
from lmpo.config.preference import *  # noqa: F403
from lmpo.config.preference import LossSpec, PreferenceConfig, inspect_loss  # noqa: F401
from lmpo.config.reward_model import *  # noqa: F403
from lmpo.config.reward_model import RewardModelConfig

AnyRunConfig = RunConfig | PreferenceConfig | RewardModelConfig | IterativeConfig
RUN_KINDS: dict[str, type[Strict]] = {
    "online": RunConfig,
    "preference": PreferenceConfig,
    "reward_model": RewardModelConfig,
    "iterative": IterativeConfig,
}
