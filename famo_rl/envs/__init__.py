"""Multitask vector environments: the contract (:mod:`.base`), Meta-World and a synthetic suite."""

from .base import MultiTaskVectorEnv, split_observation, step_success
from .crashes import CrashReportingAsyncVectorEnv, EnvironmentCrashed
from .factory import make_envs
from .metaworld import make_metaworld_envs
from .synthetic import SyntheticMultiTaskEnv

__all__ = [
    "CrashReportingAsyncVectorEnv",
    "EnvironmentCrashed",
    "MultiTaskVectorEnv",
    "SyntheticMultiTaskEnv",
    "make_envs",
    "make_metaworld_envs",
    "split_observation",
    "step_success",
]
