"""The registries of the algorithm core, one per kind of function (see types.py)."""

from __future__ import annotations

from lmpo.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")
POLICY_LOSSES: Registry = Registry("policy loss")
AGGREGATIONS: Registry = Registry("loss aggregation")
KL_ESTIMATORS: Registry = Registry("KL estimator")
PAIRED_LOSSES: Registry = Registry("paired preference loss")
UNPAIRED_LOSSES: Registry = Registry("unpaired preference loss")
REWARD_MODEL_LOSSES: Registry = Registry("reward-model loss")
ENSEMBLES: Registry = Registry("reward ensemble aggregation")
