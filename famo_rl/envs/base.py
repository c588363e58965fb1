"""What the training loop expects of a multitask vector environment.

Both Meta-World (MT10, MT50, custom task lists) and the synthetic suite are gymnasium vector
environments with one sub-environment per task, in task order, so ``task_idx == env index``:

- ``num_envs == num_tasks`` and ``task_names[i]`` names sub-environment ``i``;
- observations have shape ``(num_tasks, obs_dim + num_tasks)``: the task's own observation
  followed by the one-hot task id (Meta-World's ``use_one_hot=True`` layout);
- ``step`` autoresets in the same step (gymnasium ``AutoresetMode.SAME_STEP``): when an episode
  ends, the returned observation already starts the next one; the true last observation is in
  ``info["final_obs"][i]`` (with ``info["_final_obs"][i]`` true), its info in
  ``info["final_info"]``;
- each step's 0/1 success is in ``info["success"]`` for running sub-environments and in
  ``info["final_info"]["success"]`` for those whose episode just ended (their top-level info is
  the next episode's reset info): read it with :func:`step_success`;
- ``terminated`` is true only at a true terminal state (bootstrap on it alone); time limits set
  ``truncated``.
- a Meta-World sub-environment that fails in ``step`` or ``reset``, or whose ``"async"`` worker
  dies, raises :class:`~famo_rl.envs.crashes.EnvironmentCrashed` with its ``task_name`` and
  ``task_idx``; ``close()`` still works afterwards.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import numpy.typing as npt


@runtime_checkable
class MultiTaskVectorEnv(Protocol):
    """The part of a gymnasium ``VectorEnv`` the trainer uses, plus the task names."""

    num_envs: int
    task_names: list[str]
    single_observation_space: gym.spaces.Box
    single_action_space: gym.spaces.Box

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[npt.NDArray[np.floating], dict]: ...

    def step(
        self, actions: npt.NDArray[np.floating]
    ) -> tuple[
        npt.NDArray[np.floating],
        npt.NDArray[np.floating],
        npt.NDArray[np.bool_],
        npt.NDArray[np.bool_],
        dict,
    ]: ...

    def close(self) -> None: ...


def split_observation(
    obs: npt.NDArray[np.floating], num_tasks: int
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.int64]]:
    """Split ``(n, obs_dim + num_tasks)`` observations into the task's own part and ``task_idx``.

    The replay buffer stores ``task_idx`` rather than the one-hot, which is rebuilt on the device.
    """
    if obs.ndim != 2 or obs.shape[1] <= num_tasks:
        raise ValueError(
            f"observations must have shape (n, obs_dim + {num_tasks}) with a one-hot task id at "
            f"the end, found shape {obs.shape}"
        )
    return obs[:, :-num_tasks], np.argmax(obs[:, -num_tasks:], axis=1).astype(np.int64)


def step_success(info: dict[str, Any], done: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Each sub-environment's success at this step.

    With same-step autoreset, an ended sub-environment's step info is in ``info["final_info"]``
    and its top-level info is the next episode's reset info, so the two are read by ``done``.
    """
    num_envs = len(done)
    running = np.zeros(num_envs, dtype=np.bool_)
    if "success" in info:
        mask = info.get("_success", np.ones(num_envs, dtype=np.bool_))
        running = mask & (np.asarray(info["success"]) > 0)
    ended = np.zeros(num_envs, dtype=np.bool_)
    final_info = info.get("final_info", {})
    if "success" in final_info:
        mask = final_info.get("_success", np.ones(num_envs, dtype=np.bool_))
        ended = mask & (np.asarray(final_info["success"]) > 0)
    return np.where(done, ended, running)
