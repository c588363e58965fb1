"""Multitask soft actor-critic: replay buffer, task-conditioned networks and the agent."""

from .buffer import Batch, MultiTaskReplayBuffer
from .networks import SquashedGaussianActor, TaskConditionedMLP, TwinCritic
from .sac import MultiTaskSAC, SACConfig, TaskGroups

__all__ = [
    "Batch",
    "MultiTaskReplayBuffer",
    "MultiTaskSAC",
    "SACConfig",
    "SquashedGaussianActor",
    "TaskConditionedMLP",
    "TaskGroups",
    "TwinCritic",
]
