"""Rewards: ``fn(batch: ScoreBatch, *, <params>) -> list[float]``, found by name in REWARDS.

Built-ins: ``correctness`` (task check / math-verify), ``format`` (answer format of the
prompt), ``length`` (DAPO soft overlong penalty), ``reward_model`` (saved reward models or an
ensemble of them). User rewards by import path
``"package.module:function"`` with TRL's ``fn(completions, answers, **kw)`` signature.
``score(batch, specs)`` returns the weighted total [B] and each reward's values.
"""

from lmpo.rewards.base import (
    REWARDS,
    ResolvedReward,
    ScoreBatch,
    resolve_reward,
    resolve_specs,
    score,
)
from lmpo.rewards.builtin import (
    check_file_answer,
    correctness,
    follows_format,
    format_reward,
    grade,
    length,
    overlong_penalty,
)
from lmpo.rewards.reward_model import reward_model

__all__ = [
    "REWARDS",
    "ResolvedReward",
    "ScoreBatch",
    "check_file_answer",
    "correctness",
    "follows_format",
    "format_reward",
    "grade",
    "length",
    "overlong_penalty",
    "resolve_reward",
    "reward_model",
    "resolve_specs",
    "score",
]
