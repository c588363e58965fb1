"""A cheap synthetic multitask suite: point masses reaching task-specific goals in 2-D.

It meets the contract in :mod:`famo_rl.envs.base` without MuJoCo, so the training loop, the
balancers and the evaluation can be tested in seconds. Each task ``k`` moves a point in the square
``[-1, 1]^2`` toward its own goal; the goal is not observed, so only the one-hot task id tells the
tasks apart, and the tasks pull a shared policy in different directions. Rewards are
``-reward_scales[k] * distance``, with scales spread over orders of magnitude (``1e-2`` to ``1e2``
by default): averaging per-task losses lets the large-scale tasks drown the small ones, which is the
imbalance FAMO is meant to correct.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

#: Largest displacement per step along each axis (the action is a velocity in ``[-1, 1]^2``).
MAX_SPEED = 0.1
#: Goals lie at a distance from the centre drawn in this range, so every goal is reachable.
GOAL_RADIUS_RANGE = (0.4, 0.8)

FloatArray = npt.NDArray[np.float64]


def default_reward_scales(num_tasks: int) -> FloatArray:
    """``logspace(-2, 2, num_tasks)``: per-task reward scales from ``1e-2`` to ``1e2``."""
    return np.logspace(-2.0, 2.0, num_tasks)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, found {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, found {value}")
    return int(value)


def _check_success_radius(success_radius: object) -> float:
    if isinstance(success_radius, bool) or not isinstance(success_radius, (int, float)):
        raise TypeError(f"success_radius must be a float, found {success_radius!r}")
    if not (math.isfinite(success_radius) and success_radius > 0.0):
        raise ValueError(f"success_radius must be finite and > 0, found {success_radius}")
    return float(success_radius)


def _check_reward_scales(
    reward_scales: Sequence[float] | FloatArray | None, num_tasks: int
) -> FloatArray:
    if reward_scales is None:
        return default_reward_scales(num_tasks)
    scales = np.asarray(reward_scales, dtype=np.float64)
    if scales.shape != (num_tasks,):
        raise ValueError(
            f"reward_scales must hold one scale per task, shape ({num_tasks},), found shape "
            f"{scales.shape}: {reward_scales!r}"
        )
    if not (np.all(np.isfinite(scales)) and np.all(scales > 0.0)):
        raise ValueError(f"reward_scales must be finite and > 0, found {reward_scales!r}")
    return scales


def sample_goals(num_tasks: int, seed: int) -> FloatArray:
    """Goals spread evenly in angle around the centre, with a seeded phase and distances.

    Evenly spaced angles keep the tasks distinct (no two goals coincide), so a policy that ignores
    the task id cannot solve them all.

    :returns: goals, shape ``(num_tasks, 2)``.
    """
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    distances = rng.uniform(*GOAL_RADIUS_RANGE, size=num_tasks)
    angles = phase + 2.0 * np.pi * np.arange(num_tasks) / num_tasks
    return distances[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


class SyntheticMultiTaskEnv(gym.vector.VectorEnv):
    """``num_tasks`` point-mass reaching tasks, one sub-environment each, stepped together in numpy.

    Observation of sub-environment ``k``: the position ``(x, y)`` followed by the one-hot task id,
    shape ``(2 + num_tasks,)``, float32. Action: a velocity in ``[-1, 1]^2`` (clipped), scaled by
    :data:`MAX_SPEED`. Reward: ``-reward_scales[k] * ||position - goal_k||``. Success: the distance
    is at most ``success_radius``. Each episode starts at a uniformly random position and is
    truncated after ``episode_length`` steps.

    Like Meta-World, it resets an ended sub-environment in the same step: the returned observation
    starts the next episode, the last one is in ``info["final_obs"]`` and the step's info (with
    ``success`` and the ``episode`` statistics ``{"r": return, "l": length}``) in
    ``info["final_info"]``; the top-level info of an ended sub-environment is its (empty) reset
    info, so ``info["success"]`` is masked by ``info["_success"]`` and is absent when every
    sub-environment ended at once.

    :param num_tasks: number of tasks (and sub-environments).
    :param episode_length: steps before an episode is truncated.
    :param reward_scales: one positive scale per task; ``None`` uses
        :func:`default_reward_scales` (``logspace(-2, 2, num_tasks)``).
    :param seed: fixes the goals and seeds the start positions; ``reset(seed=...)`` reseeds the
        start positions only, the goals stay those of the constructor's seed.
    :param success_radius: distance to the goal that counts as success.
    :param terminate_on_success: end an episode (``terminated=True``) at its first success, as
        Meta-World's evaluation does; toggled by :meth:`toggle_terminate_on_success`.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_tasks: int = 4,
        *,
        episode_length: int = 50,
        reward_scales: Sequence[float] | FloatArray | None = None,
        seed: int = 0,
        success_radius: float = 0.1,
        terminate_on_success: bool = False,
    ) -> None:
        self.num_tasks = _check_int("num_tasks", num_tasks, 1)
        self.episode_length = _check_int("episode_length", episode_length, 1)
        self.reward_scales = _check_reward_scales(reward_scales, self.num_tasks)
        self.success_radius = _check_success_radius(success_radius)
        seed = _check_int("seed", seed, 0)
        self.terminate_on_success = bool(terminate_on_success)

        self.num_envs = self.num_tasks
        self.task_names = [f"reach-{task_idx}" for task_idx in range(self.num_tasks)]
        self.goals = sample_goals(self.num_tasks, seed)
        self._one_hot = np.eye(self.num_tasks, dtype=np.float32)

        low = np.concatenate([-np.ones(2), np.zeros(self.num_tasks)]).astype(np.float32)
        high = np.ones(2 + self.num_tasks, dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        self._np_random, self._np_random_seed = seeding.np_random(seed)
        self._position = np.zeros((self.num_tasks, 2))
        self._elapsed = np.zeros(self.num_tasks, dtype=np.int64)
        self._returns = np.zeros(self.num_tasks)
        self._needs_reset = True

    # Queries in the style of gymnasium's SyncVectorEnv, which Meta-World's evaluation relies on.

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """One value per sub-environment: ``task_name`` gives each task's name, other names the
        (shared) attribute of this object."""
        if name == "task_name":
            return tuple(self.task_names)
        return (getattr(self, name),) * self.num_envs

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call method ``name`` once (the state is shared) and return its result per sub-env."""
        attribute = getattr(self, name)
        result = attribute(*args, **kwargs) if callable(attribute) else attribute
        return (result,) * self.num_envs

    def toggle_terminate_on_success(self, on: bool) -> None:
        """Turn ending episodes at their first success on or off (Meta-World's method name)."""
        self.terminate_on_success = bool(on)

    # The environment proper.

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """Start a new episode in every sub-environment.

        :param seed: reseeds the start positions (the goals do not change), so that runs repeat.
        :param options: ignored.
        """
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(_check_int("seed", seed, 0))
        self._start_episodes(np.ones(self.num_envs, dtype=np.bool_))
        self._needs_reset = False
        return self._observations(), {}

    def step(
        self, actions: npt.NDArray[np.floating]
    ) -> tuple[
        npt.NDArray[np.float32],
        FloatArray,
        npt.NDArray[np.bool_],
        npt.NDArray[np.bool_],
        dict[str, Any],
    ]:
        """Move every point, score it, and reset the sub-environments whose episode ended.

        :param actions: velocities, shape ``(num_tasks, 2)``; values beyond ``[-1, 1]`` are clipped.
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, 2):
            raise ValueError(
                f"actions must have shape ({self.num_envs}, 2), found shape {actions.shape}"
            )

        step = MAX_SPEED * np.clip(actions, -1.0, 1.0)
        self._position = np.clip(self._position + step, -1.0, 1.0)
        self._elapsed += 1
        distance = np.linalg.norm(self._position - self.goals, axis=1)
        reward = -self.reward_scales * distance
        self._returns += reward
        success = distance <= self.success_radius
        terminated = success & self.terminate_on_success
        truncated = self._elapsed >= self.episode_length

        ended = terminated | truncated
        step_info = self._step_info(success, ended)
        if ended.any():
            step_info.update(self._final_info(success, ended))
            self._start_episodes(ended)
        return self._observations(), reward, terminated, truncated, step_info

    def _start_episodes(self, mask: npt.NDArray[np.bool_]) -> None:
        self._position[mask] = self.np_random.uniform(-1.0, 1.0, size=(int(mask.sum()), 2))
        self._elapsed[mask] = 0
        self._returns[mask] = 0.0

    def _observations(self) -> npt.NDArray[np.float32]:
        return np.concatenate([self._position.astype(np.float32), self._one_hot], axis=1)

    @staticmethod
    def _step_info(success: npt.NDArray[np.bool_], ended: npt.NDArray[np.bool_]) -> dict[str, Any]:
        """Top-level info: ``success`` for the sub-environments that go on (the ended ones report
        their reset info, which is empty), as gymnasium's SyncVectorEnv lays out Meta-World's."""
        running = ~ended
        if not running.any():
            return {}
        return {
            "success": np.where(running, success, False).astype(np.float64),
            "_success": running,
        }

    def _final_info(
        self, success: npt.NDArray[np.bool_], ended: npt.NDArray[np.bool_]
    ) -> dict[str, Any]:
        """``final_obs`` and ``final_info`` of the ended sub-environments, masked per key."""
        final_obs = np.full(self.num_envs, None, dtype=object)
        observations = self._observations()
        for task_idx in np.flatnonzero(ended):
            final_obs[task_idx] = observations[task_idx]
        episode = {
            "r": np.where(ended, self._returns, 0.0),
            "_r": ended.copy(),
            "l": np.where(ended, self._elapsed, 0),
            "_l": ended.copy(),
        }
        final_info = {
            "success": np.where(ended, success, False).astype(np.float64),
            "_success": ended.copy(),
            "episode": episode,
            "_episode": ended.copy(),
        }
        return {
            "final_obs": final_obs,
            "_final_obs": ended.copy(),
            "final_info": final_info,
            "_final_info": ended.copy(),
        }

    def __repr__(self) -> str:
        return f"SyntheticMultiTaskEnv(num_tasks={self.num_tasks})"
