"""Our multitask vector environments as Stable-Baselines3 ``VecEnv`` objects.

SB3 takes its own ``VecEnv`` class, not gymnasium's ``VectorEnv`` (SB3 issue 1745), and the two
disagree on everything that happens at the end of an episode:

========================  ==============================  ====================================
                          our envs (gymnasium, SAME_STEP)  SB3
========================  ==============================  ====================================
step returns              obs, reward, terminated,        obs, reward, done, per-env infos
                          truncated, one batched info
last observation          ``info["final_obs"][i]``        ``infos[i]["terminal_observation"]``
time limit                ``truncated[i]``                ``infos[i]["TimeLimit.truncated"]``
success                   ``success`` at every step       ``infos[i]["is_success"]`` at the end
========================  ==============================  ====================================

:class:`MultiTaskVecEnv` translates, and :func:`make_vec_env` builds one by name, wrapped in SB3's
``VecMonitor`` so that ``rollout/ep_rew_mean`` and ``evaluate_policy`` work as with any SB3 env.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from gymnasium.vector import AutoresetMode
from stable_baselines3.common import env_util
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from ..envs.base import MultiTaskVectorEnv, step_success
from ..envs.factory import make_envs

# Keys of a gymnasium vector info that describe the episode that just ended, not this step.
_AUTORESET_KEYS = ("final_obs", "final_info")


class MultiTaskVecEnv(VecEnv):
    """An SB3 ``VecEnv`` over a multitask gymnasium vector environment (one sub-env per task).

    Sub-environment ``i`` runs task ``task_names[i]``; observations end with the one-hot task id
    (see :mod:`famo_rl.envs.base`) and are cast to float32, as SB3's networks expect. At the end
    of an episode, ``infos[i]`` holds what SB3 reads:

    - ``terminal_observation``: the true last observation (the returned one already starts the
      next episode, as with every SB3 ``VecEnv``);
    - ``TimeLimit.truncated``: true when the episode hit its time limit without terminating, so
      that SAC bootstraps through it (set at every step, false while the episode runs);
    - ``is_success``: whether the episode succeeded at *any* step, Meta-World's protocol; SB3
      turns it into ``rollout/success_rate`` and ``EvalCallback``'s ``eval/success_rate``.

    Every other key of the environment's info (Meta-World's ``success``, ``near_object``, ...) is
    passed on per sub-environment, read from the ended episode's ``final_info`` when it ended.

    :param envs: a gymnasium vector environment meeting :mod:`famo_rl.envs.base`, e.g. the result
        of :func:`famo_rl.envs.make_envs`. It must autoreset in the same step.

    .. note::
        ``seed()`` then ``reset()`` passes the seed to the environment's ``reset``: it reseeds the
        synthetic suite's start states, while Meta-World ignores it (its goals and randomness are
        fixed by the ``seed`` the environment was built with).
    """

    def __init__(self, envs: MultiTaskVectorEnv) -> None:
        if not isinstance(envs, MultiTaskVectorEnv):
            raise TypeError(
                "envs must be a multitask gymnasium vector env (num_envs, task_names, "
                "single_observation_space, single_action_space, reset, step, close), such as "
                f"famo_rl.envs.make_envs(...); found {type(envs).__name__}"
            )
        mode = getattr(envs, "metadata", {}).get("autoreset_mode")
        if mode not in (AutoresetMode.SAME_STEP, AutoresetMode.SAME_STEP.value):
            raise ValueError(
                f"envs must autoreset in the same step (AutoresetMode.SAME_STEP), found {mode!r}"
            )
        if len(envs.task_names) != envs.num_envs:
            raise ValueError(
                f"envs must run one task per sub-environment, found {envs.num_envs} sub-envs and "
                f"{len(envs.task_names)} task names"
            )
        self.vector_env = envs
        self.task_names: list[str] = list(envs.task_names)
        self.num_tasks = len(self.task_names)
        space = envs.single_observation_space
        observation_space = gym.spaces.Box(
            space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32
        )
        super().__init__(envs.num_envs, observation_space, envs.single_action_space)
        self._actions: npt.NDArray[Any] | None = None
        # Whether each sub-environment's current episode has succeeded at some step.
        self._episode_success = np.zeros(self.num_envs, dtype=np.bool_)

    # ----------------------------------------------------------------------------------------------
    # Stepping.

    def reset(self) -> npt.NDArray[np.float32]:
        """Reset every sub-environment, with the seed and options set since the last reset.

        SB3 seeds sub-environment ``i`` with ``seed + i``; gymnasium's vector ``reset(seed=s)``
        does exactly that, so the first seed is passed on.
        """
        options = self._options[0] or None
        obs, info = self.vector_env.reset(seed=self._seeds[0], options=options)
        self.reset_infos = [_sub_env_info(info, index) for index in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        self._episode_success[:] = False
        return np.asarray(obs, dtype=np.float32)

    def step_async(self, actions: npt.NDArray[Any]) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() needs actions: call step_async(actions) first")
        obs, reward, terminated, truncated, info = self.vector_env.step(self._actions)
        self._actions = None
        terminated = np.asarray(terminated, dtype=np.bool_)
        truncated = np.asarray(truncated, dtype=np.bool_)
        done = terminated | truncated
        self._episode_success |= step_success(info, done)

        final_info = info.get("final_info", {})
        infos: list[dict[str, Any]] = []
        for index in range(self.num_envs):
            if not done[index]:
                infos.append(_sub_env_info(info, index))
                continue
            # The top-level info of an ended sub-environment is its next episode's reset info.
            self.reset_infos[index] = _sub_env_info(info, index)
            ended = _sub_env_info(final_info, index)
            ended["terminal_observation"] = np.asarray(info["final_obs"][index], dtype=np.float32)
            ended["is_success"] = bool(self._episode_success[index])
            infos.append(ended)
        for index, sub_env_info in enumerate(infos):
            sub_env_info["TimeLimit.truncated"] = bool(truncated[index] and not terminated[index])
        self._episode_success[done] = False
        return (
            np.asarray(obs, dtype=np.float32),
            np.asarray(reward, dtype=np.float32),
            done,
            infos,
        )

    def close(self) -> None:
        self.vector_env.close()

    # ----------------------------------------------------------------------------------------------
    # Reaching into the sub-environments.

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """One value per sub-environment. ``task_name`` gives the task names; other names are
        looked up through the vector environment's own ``get_attr`` (gymnasium's)."""
        if attr_name == "task_name":
            values: Sequence[Any] = self.task_names
        elif attr_name == "render_mode":
            values = [getattr(self.vector_env, "render_mode", None)] * self.num_envs
        elif hasattr(self.vector_env, "get_attr"):
            values = self.vector_env.get_attr(attr_name)
        else:
            values = [getattr(self.vector_env, attr_name)] * self.num_envs
        return [values[index] for index in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for sub_env in self._sub_envs(indices, f"setting {attr_name!r}"):
            setattr(sub_env, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        if indices is None and hasattr(self.vector_env, "call"):
            return list(self.vector_env.call(method_name, *method_args, **method_kwargs))
        return [
            sub_env.get_wrapper_attr(method_name)(*method_args, **method_kwargs)
            for sub_env in self._sub_envs(indices, f"calling {method_name!r}")
        ]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        sub_envs = getattr(self.vector_env, "envs", None)
        if sub_envs is None:
            return [False for _ in self._get_indices(indices)]
        return [
            env_util.is_wrapped(sub_envs[index], wrapper_class)
            for index in self._get_indices(indices)
        ]

    def _sub_envs(self, indices: VecEnvIndices, action: str) -> list[gym.Env]:
        sub_envs = getattr(self.vector_env, "envs", None)
        if sub_envs is None:
            raise NotImplementedError(
                f"{action} on single sub-environments is not supported for "
                f"{type(self.vector_env).__name__}: it needs a gymnasium SyncVectorEnv, whose "
                "sub-environments live in this process"
            )
        return [sub_envs[index] for index in self._get_indices(indices)]

    def __repr__(self) -> str:
        return f"MultiTaskVecEnv({self.vector_env!r}, task_names={self.task_names})"


def _sub_env_info(batched: dict[str, Any], index: int) -> dict[str, Any]:
    """Sub-environment ``index``'s entries of a gymnasium vector info (masked by ``_key``)."""
    entries: dict[str, Any] = {}
    for key, value in batched.items():
        if key.startswith("_") or key in _AUTORESET_KEYS:
            continue
        mask = batched.get(f"_{key}")
        if mask is not None and not mask[index]:
            continue
        entries[key] = _sub_env_info(value, index) if isinstance(value, dict) else value[index]
    return entries


def make_vec_env(
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
    monitor: bool = True,
) -> VecEnv:
    """A multitask SB3 ``VecEnv``: Meta-World MT10, MT50, a task list, or the synthetic suite.

    Builds :func:`famo_rl.envs.make_envs` (every argument but ``monitor`` means what it means
    there), wraps it in :class:`MultiTaskVecEnv`, then in SB3's ``VecMonitor``. The result has
    ``task_names`` (through SB3's wrapper attribute lookup) and one sub-env per task.

    :param name: ``"MT10"``, ``"MT50"``, a list of Meta-World v3 task names such as
        ``["reach-v3", "push-v3"]``, or ``"synthetic"`` / ``"synthetic-<K>"``.
    :param seed: fixes the tasks' goals and seeds the environment.
    :param num_tasks: synthetic suite only: its number of tasks (default 4).
    :param reward_scales: synthetic suite only: per-task reward scales.
    :param max_episode_steps: episode length; ``None`` means 500 (Meta-World) or 50 (synthetic).
    :param terminate_on_success: end episodes at their first success (use it for evaluation
        environments: success counts at any step anyway, and evaluation gets shorter).
    :param vector_strategy: Meta-World only: ``"sync"`` or ``"async"`` (one process per task).
    :param reward_function_version: Meta-World only: ``"v2"`` or ``"v1"`` rewards.
    :param cache_dir: Meta-World only: folder of the goal cache.
    :param use_cache: Meta-World only: whether to use the goal cache.
    :param monitor: wrap in ``VecMonitor``, which writes ``info["episode"]`` (return, length,
        time) for ``rollout/ep_rew_mean`` and lets ``evaluate_policy`` trust episode ends.
    :raises ValueError: for an unknown name or an argument out of range (from ``make_envs``).
    """
    envs = make_envs(
        name,
        seed=seed,
        num_tasks=num_tasks,
        reward_scales=reward_scales,
        max_episode_steps=max_episode_steps,
        terminate_on_success=terminate_on_success,
        vector_strategy=vector_strategy,
        reward_function_version=reward_function_version,
        cache_dir=cache_dir,
        use_cache=use_cache,
    )
    vec_env = MultiTaskVecEnv(envs)
    return VecMonitor(vec_env) if monitor else vec_env
