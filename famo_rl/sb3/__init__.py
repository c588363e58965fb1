"""Stable-Baselines3 plug-in: FAMO-balanced multitask SAC, a stratified replay buffer, multitask
``VecEnv`` adapters and a per-task evaluation callback."""

from .buffer import TaskStratifiedReplayBuffer
from .callbacks import PerTaskEvalCallback, PerTaskEvaluation, evaluate_per_task
from .sac import MultiTaskSAC
from .vec_env import MultiTaskVecEnv, make_vec_env

__all__ = [
    "MultiTaskSAC",
    "MultiTaskVecEnv",
    "PerTaskEvalCallback",
    "PerTaskEvaluation",
    "TaskStratifiedReplayBuffer",
    "evaluate_per_task",
    "make_vec_env",
]
