"""``make_envs(name, ...)``: every multitask environment by name, for configs and command lines."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import gymnasium as gym

from .metaworld import METAWORLD_TASK_NAMES, did_you_mean, make_metaworld_envs
from .synthetic import SyntheticMultiTaskEnv

#: Tasks of the synthetic suite when neither the name (``synthetic-<K>``) nor ``num_tasks`` says.
DEFAULT_SYNTHETIC_TASKS = 4
#: Episode length of the synthetic suite when ``max_episode_steps`` is not given.
DEFAULT_SYNTHETIC_EPISODE_STEPS = 50

_SYNTHETIC = re.compile(r"synthetic(?:-(\d+))?")
_METAWORLD_TASK_COUNTS = {"MT10": 10, "MT50": 50}
_NAMES = ["synthetic", "synthetic-<K>", *_METAWORLD_TASK_COUNTS]


def make_envs(
    name: str | Sequence[str],
    *,
    seed: int,
    num_tasks: int | None = None,
    reward_scales: Sequence[float] | None = None,
    max_episode_steps: int | None = None,
    terminate_on_success: bool = False,
    vector_strategy: Literal["sync", "async"] = "sync",
    reward_function_version: Literal["v1", "v2"] = "v2",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> gym.vector.VectorEnv:
    """Build the multitask environment called ``name``, meeting :mod:`famo_rl.envs.base`.

    :param name: ``"synthetic"`` or ``"synthetic-<K>"`` (:class:`SyntheticMultiTaskEnv` with
        ``K`` tasks), ``"MT10"``, ``"MT50"``, or a list of Meta-World v3 task names.
    :param seed: fixes the tasks (goals) and seeds the environment.
    :param num_tasks: tasks of the synthetic suite (default 4). For Meta-World it may only repeat
        the benchmark's own count, so that one config can name it for every environment.
    :param reward_scales: synthetic only: per-task reward scales (default ``logspace(-2, 2, K)``).
    :param max_episode_steps: episode length; ``None`` means 50 (synthetic) or 500 (Meta-World).
    :param terminate_on_success: end episodes at their first success.
    :param vector_strategy: Meta-World only: ``"sync"`` or ``"async"`` sub-environments.
    :param reward_function_version: Meta-World only: ``"v2"`` or ``"v1"`` rewards.
    :param cache_dir: Meta-World only: folder of the goal cache (see :func:`make_metaworld_envs`).
    :param use_cache: Meta-World only: whether to use the goal cache.
    :raises ValueError: for an unknown name, or a ``num_tasks`` that contradicts it.

    A Meta-World environment raises :class:`~famo_rl.envs.crashes.EnvironmentCrashed` (naming the
    task) when a sub-environment fails in ``reset`` or ``step``, or an ``"async"`` worker fails or
    dies; ``close()`` works afterwards. The synthetic suite has no sub-environments to crash.
    """
    if isinstance(name, str):
        match = _SYNTHETIC.fullmatch(name)
        if match:
            count = _synthetic_task_count(name, match.group(1), num_tasks)
            return SyntheticMultiTaskEnv(
                count,
                episode_length=max_episode_steps or DEFAULT_SYNTHETIC_EPISODE_STEPS,
                reward_scales=reward_scales,
                seed=seed,
                terminate_on_success=terminate_on_success,
            )
        if name not in _METAWORLD_TASK_COUNTS:
            raise ValueError(_unknown_name_message(name))
    _check_metaworld_task_count(name, num_tasks)
    if reward_scales is not None:
        raise ValueError(
            f"reward_scales applies to the synthetic suite only, not {name!r}; "
            f"found {list(reward_scales)}"
        )
    return make_metaworld_envs(
        name,
        seed=seed,
        vector_strategy=vector_strategy,
        max_episode_steps=max_episode_steps or 500,
        reward_function_version=reward_function_version,
        terminate_on_success=terminate_on_success,
        cache_dir=cache_dir,
        use_cache=use_cache,
    )


def _unknown_name_message(name: str) -> str:
    if name in METAWORLD_TASK_NAMES:
        return f"name {name!r} is a single Meta-World task: pass a list, [{name!r}]"
    hint = did_you_mean(name, [*_NAMES, *METAWORLD_TASK_NAMES])
    return (
        f"unknown environment name {name!r}: expected one of {_NAMES} or a list of Meta-World "
        f"task names{hint}"
    )


def _synthetic_task_count(name: str, count_in_name: str | None, num_tasks: int | None) -> int:
    if count_in_name is None:
        return DEFAULT_SYNTHETIC_TASKS if num_tasks is None else num_tasks
    count = int(count_in_name)
    if num_tasks is not None and num_tasks != count:
        raise ValueError(f"name {name!r} asks for {count} tasks but num_tasks is {num_tasks}")
    return count


def _check_metaworld_task_count(name: str | Sequence[str], num_tasks: int | None) -> None:
    if num_tasks is None:
        return
    count = _METAWORLD_TASK_COUNTS[name] if isinstance(name, str) else len(name)
    if num_tasks != count:
        raise ValueError(
            f"num_tasks applies to the synthetic suite; {name!r} has {count} tasks, "
            f"found num_tasks={num_tasks}"
        )
