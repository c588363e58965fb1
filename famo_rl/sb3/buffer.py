"""A replay buffer whose batches hold the same number of transitions from every task.

SB3's ``ReplayBuffer`` draws a random sub-environment for every sample, so the tasks' shares of a
batch vary from batch to batch, and a task can be missing from a small one. Per-task losses are
then means over a varying number of samples, and a balancer such as FAMO, which compares each
task's loss before and after a step, sees that noise as progress. Stratifying removes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize


class TaskStratifiedReplayBuffer(ReplayBuffer):
    """SB3's ``ReplayBuffer``, sampling ``batch_size // num_tasks`` transitions of every task.

    Pass it as ``replay_buffer_class=TaskStratifiedReplayBuffer`` to any SB3 off-policy algorithm
    (:class:`~famo_rl.sb3.MultiTaskSAC` fills in ``num_tasks`` itself). Storage, ``timeouts``
    (``handle_timeout_termination``), ``optimize_memory_usage`` and ``VecNormalize`` behave as in
    the base class; only the choice of sub-environment per sample differs.

    A transition's task is read from the one-hot task id that ends its observation. Each
    sub-environment must run a single task for the buffer's lifetime (several sub-environments
    may share one): the buffer learns each sub-environment's task from its first observation and
    checks every later one. Within a task, a sample is uniform over that task's stored transitions.
    Batches list the tasks in order, ``batch_size // num_tasks`` rows each.

    :param buffer_size: capacity in transitions, over all sub-environments.
    :param observation_space: a 1-D ``Box`` whose last ``num_tasks`` entries are the one-hot id.
    :param action_space: the action space.
    :param device: where sampled batches go.
    :param n_envs: number of sub-environments.
    :param optimize_memory_usage: SB3's memory-saving layout (next observations not stored apart).
    :param handle_timeout_termination: keep time-limit ends out of ``dones``, so SAC bootstraps.
    :param num_tasks: number of tasks; ``None`` means ``n_envs`` (one sub-environment per task, as
        :func:`famo_rl.sb3.make_vec_env` builds them).
    :raises ValueError: for a ``num_tasks`` below 1 or an observation space without room for the
        one-hot id.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        num_tasks: int | None = None,
    ) -> None:
        num_tasks = n_envs if num_tasks is None else num_tasks
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer or None, found {num_tasks!r}")
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
            raise ValueError(
                "TaskStratifiedReplayBuffer needs a 1-D Box observation space ending with the "
                f"one-hot task id, found {observation_space}"
            )
        if observation_space.shape[0] < num_tasks:
            raise ValueError(
                f"observations of width {observation_space.shape[0]} cannot end with a one-hot "
                f"id of num_tasks={num_tasks} tasks"
            )
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device=device,
            n_envs=n_envs,
            optimize_memory_usage=optimize_memory_usage,
            handle_timeout_termination=handle_timeout_termination,
        )
        self.num_tasks = num_tasks
        #: Task of each sub-environment, -1 until its first transition is stored.
        self.env_tasks = np.full(n_envs, -1, dtype=np.int64)

    def add(
        self,
        obs: npt.NDArray[Any],
        next_obs: npt.NDArray[Any],
        action: npt.NDArray[Any],
        reward: npt.NDArray[Any],
        done: npt.NDArray[Any],
        infos: list[dict[str, Any]],
    ) -> None:
        """Store one transition per sub-environment, checking each one's task id."""
        task_idx = self._task_idx(np.asarray(obs))
        unknown = self.env_tasks < 0
        self.env_tasks[unknown] = task_idx[unknown]
        moved = np.flatnonzero(self.env_tasks != task_idx)
        if moved.size:
            env_idx = int(moved[0])
            raise ValueError(
                f"sub-environment {env_idx} switched from task {self.env_tasks[env_idx]} to task "
                f"{task_idx[env_idx]}: TaskStratifiedReplayBuffer needs every sub-environment to "
                "run one task (use SB3's ReplayBuffer for environments that switch tasks)"
            )
        super().add(obs, next_obs, action, reward, done, infos)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """``batch_size // num_tasks`` transitions of each task, tasks in order.

        :raises ValueError: if ``batch_size`` is not a positive multiple of ``num_tasks``, or a
            task has no stored transition (no sub-environment runs it).
        """
        per_task = self._per_task(batch_size)
        env_indices = self._sample_env_indices(per_task)
        if self.optimize_memory_usage and self.full:
            # The slot at ``pos`` holds the next observation of the newest transition only.
            batch_inds = (
                np.random.randint(1, self.buffer_size, size=batch_size) + self.pos
            ) % self.buffer_size
        else:
            upper_bound = self.buffer_size if self.full else self.pos
            batch_inds = np.random.randint(0, upper_bound, size=batch_size)
        return self._samples_at(batch_inds, env_indices, env)

    def _per_task(self, batch_size: int) -> int:
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or batch_size < self.num_tasks
            or batch_size % self.num_tasks
        ):
            raise ValueError(
                f"batch_size must be a positive multiple of num_tasks={self.num_tasks} "
                f"(batch_size // num_tasks transitions of each task), found {batch_size!r}"
            )
        if not (self.full or self.pos > 0):
            raise ValueError("the replay buffer is empty: add transitions before sampling")
        return int(batch_size) // self.num_tasks

    def _sample_env_indices(self, per_task: int) -> npt.NDArray[np.int64]:
        """For each sample, a sub-environment of its task, uniformly among that task's."""
        env_counts = np.bincount(self.env_tasks, minlength=self.num_tasks)
        missing = np.flatnonzero(env_counts == 0)
        if missing.size:
            raise ValueError(
                f"no sub-environment has stored a transition of task {int(missing[0])}: "
                f"stratified batches need every one of the {self.num_tasks} tasks"
            )
        envs_by_task = np.argsort(self.env_tasks, kind="stable")
        first_env = np.cumsum(env_counts) - env_counts
        sample_tasks = np.repeat(np.arange(self.num_tasks), per_task)
        if self.n_envs == self.num_tasks:
            return envs_by_task[sample_tasks]
        offsets = np.random.randint(0, env_counts[sample_tasks])
        return envs_by_task[first_env[sample_tasks] + offsets]

    def _samples_at(
        self,
        batch_inds: npt.NDArray[np.int64],
        env_indices: npt.NDArray[np.int64],
        env: VecNormalize | None,
    ) -> ReplayBufferSamples:
        """The stored transitions at ``(batch_inds, env_indices)``, as the base class returns
        them (time-limit ends removed from ``dones``, normalised by ``env`` if given)."""
        if self.optimize_memory_usage:
            next_obs = self.observations[(batch_inds + 1) % self.buffer_size, env_indices, :]
        else:
            next_obs = self.next_observations[batch_inds, env_indices, :]
        dones = self.dones[batch_inds, env_indices] * (1 - self.timeouts[batch_inds, env_indices])
        data = (
            self._normalize_obs(self.observations[batch_inds, env_indices, :], env),
            self.actions[batch_inds, env_indices, :],
            self._normalize_obs(next_obs, env),
            dones.reshape(-1, 1),
            self._normalize_reward(self.rewards[batch_inds, env_indices].reshape(-1, 1), env),
        )
        return ReplayBufferSamples(*tuple(map(self.to_torch, data)))

    def _task_idx(self, obs: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """Each sub-environment's task from the one-hot id ending its observation."""
        if self.num_tasks == 1:
            # One task: every transition is its own, whether or not a width-1 id ends the obs.
            return np.zeros(self.n_envs, dtype=np.int64)
        one_hot = obs.reshape(self.n_envs, -1)[:, -self.num_tasks :]
        if not (np.all((one_hot == 0) | (one_hot == 1)) and np.all(one_hot.sum(axis=1) == 1)):
            raise ValueError(
                f"observations must end with a one-hot task id of width {self.num_tasks}, "
                f"found {one_hot.tolist()} at their end"
            )
        return np.argmax(one_hot, axis=1).astype(np.int64)
