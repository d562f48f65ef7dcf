"""The algorithm core: pure functions over tensors, found by name in registries.

Importing this package registers every built-in method.
"""

from lmpo.core import advantages, kl, policy_losses, preference, reward_model  # noqa: F401
from lmpo.core.registries import (
    ADVANTAGES,
    AGGREGATIONS,
    ENSEMBLES,
    KL_ESTIMATORS,
    PAIRED_LOSSES,
    POLICY_LOSSES,
    REWARD_MODEL_LOSSES,
    UNPAIRED_LOSSES,
)

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "ENSEMBLES",
    "KL_ESTIMATORS",
    "PAIRED_LOSSES",
    "POLICY_LOSSES",
    "REWARD_MODEL_LOSSES",
    "UNPAIRED_LOSSES",
]
