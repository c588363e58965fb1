"""FAMO-balanced multitask SAC that behaves like any Stable-Baselines3 algorithm.

:class:`MultiTaskSAC` subclasses ``stable_baselines3.SAC`` and changes one thing: in ``train()``,
each loss (entropy coefficient, critic, actor) is computed per task, as the mean over that task's
samples, and the ``(num_tasks,)`` vector of task losses goes through a balancer
(:func:`famo_rl.balancers.make_balancer`) instead of being averaged over the batch. The task of a
sample is read from the one-hot id that ends its observation. Everything else (rollouts, replay,
callbacks, logging, ``save``/``load``, ``predict``) is SB3's own code.

With one task and the ``ls`` balancer the update is SB3's, operation for operation: the per-task
means are written so that, for one task, every value and gradient goes through the same floating
point operations as SB3's batch means (see :class:`_TaskBatch`), and the tests check that the
parameters stay bit-identical to ``SAC``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, ReplayBufferSamples
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from torch import Tensor, nn
from torch.nn import functional as F

from ..balancers import Balancer, balancer_options, make_balancer
from .buffer import TaskStratifiedReplayBuffer
from .vec_env import MultiTaskVecEnv

SelfMultiTaskSAC = TypeVar("SelfMultiTaskSAC", bound="MultiTaskSAC")

#: Per-task tags go to TensorBoard, CSV and JSON, not to the console table, which they would swamp.
_PER_TASK_EXCLUDE = ("stdout", "log")
_LOSSES = ("critic_loss", "actor_loss", "ent_coef_loss")


@dataclass(frozen=True)
class _TaskBatch:
    """Which rows of a batch belong to which task, for per-task means.

    A per-task mean is ``(values * mask).sum(dim=0) / counts``: multiplying by a 0/1 mask and
    dividing by the count, rather than ``index_add`` and multiplying by ``1 / count``, so that with
    one task (mask all ones) the gradient of every row is ``grad / batch_size``, exactly what
    ``Tensor.mean`` gives SB3.

    :param task_idx: each row's task, shape ``(batch,)``.
    :param mask: one-hot of ``task_idx``, shape ``(batch, num_tasks)``, the values' dtype.
    :param counts: rows per task, shape ``(num_tasks,)``, at least 1 (absent tasks get mean 0).
    :param present: tasks with at least one row, boolean, shape ``(num_tasks,)``.
    """

    task_idx: Tensor
    mask: Tensor
    counts: Tensor
    present: Tensor

    @classmethod
    def from_observations(cls, observations: Tensor, num_tasks: int) -> _TaskBatch:
        """Read each row's task from the one-hot id ending ``observations`` (no host sync)."""
        task_idx = observations[:, -num_tasks:].argmax(dim=1)
        # A comparison rather than F.one_hot, which may check its input on the host.
        tasks = th.arange(num_tasks, device=task_idx.device)
        mask = (task_idx.unsqueeze(1) == tasks).to(observations.dtype)
        counts = mask.sum(dim=0)
        return cls(task_idx, mask, counts.clamp(min=1.0), counts > 0)

    def mean(self, values: Tensor) -> Tensor:
        """Per-task means of ``values``, shape ``(batch, 1)`` or ``(batch, num_tasks)`` (column
        ``k`` used for task ``k``'s rows): shape ``(num_tasks,)``, 0 for absent tasks."""
        return (values * self.mask).sum(dim=0) / self.counts

    def per_row(self, per_task: Tensor) -> Tensor:
        """Each row's entry of a ``(num_tasks,)`` tensor, shape ``(batch, 1)``."""
        return per_task[self.task_idx].unsqueeze(1)


class _TrainStats:
    """Sums of per-task metrics over the gradient steps of one ``train()`` call, kept on the
    device and copied to the host once, at the end."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self.steps = 0

    def add(self, present: Tensor, metrics: Mapping[str, Tensor]) -> None:
        """Add one step's metrics: losses (named ``*_loss``) count only for present tasks."""
        weight = present.to(next(iter(metrics.values())).dtype)
        entries = {"present": weight}
        for name, value in metrics.items():
            if name in _LOSSES:
                value = value * weight
                entries[f"{name}/mean"] = value.sum() / weight.sum().clamp(min=1.0)
            entries[name] = value
        for name, value in entries.items():
            self._sums[name] = self._sums[name] + value if name in self._sums else value
        self.steps += 1

    def to_host(self) -> dict[str, np.ndarray]:
        """The sums as numpy arrays, through a single device-to-host copy."""
        names = list(self._sums)
        flat = th.cat([self._sums[name].reshape(-1) for name in names]).cpu().numpy()
        sizes = [self._sums[name].numel() for name in names]
        parts = np.split(flat.astype(np.float64), np.cumsum(sizes)[:-1])
        return dict(zip(names, parts, strict=True))


class MultiTaskSAC(SAC):
    """Stable-Baselines3's SAC with per-task losses combined by a balancer (FAMO by default).

    Use it as ``SAC``: ``MultiTaskSAC("MlpPolicy", env, ...)``, ``learn``, ``predict``, ``save``,
    ``MultiTaskSAC.load``, callbacks and TensorBoard work unchanged. The environment is one
    sub-environment per task whose observations end with the one-hot task id, such as
    :func:`famo_rl.sb3.make_vec_env` builds (a gymnasium vector env from
    :func:`famo_rl.envs.make_envs` is wrapped automatically).

    In each gradient step, for every task ``k`` (the rows of the batch whose one-hot says ``k``):

    - ``ent_coef_loss[k] = mean(-log_ent_coef[k] * (log_prob + target_entropy))``, stepped first;
    - ``critic_loss[k] = 0.5 * sum over critics of mean((Q(s, a) - y)^2)``, with the target ``y``
      using task ``k``'s entropy coefficient;
    - ``actor_loss[k] = mean(ent_coef[k] * log_prob - min Q(s, pi(s)))``;

    each vector is handed to its balancer, whose ``backward`` fills the gradients before the
    optimizer step; balancers that ask for it (FAMO) then get the losses re-measured on the same
    batch without gradients (the actor's with the same policy noise). Tasks absent from a batch
    are masked out. With ``ent_coef="auto"`` every task learns its own coefficient
    (``log_ent_coef`` has shape ``(num_tasks,)``, SB3's ``(1,)``), all starting at the same value,
    unless ``per_task_ent_coef=False``.

    :param policy: as for ``SAC`` (``"MlpPolicy"``, ...).
    :param env: one sub-environment per task, observations ending with the one-hot task id.
    :param num_tasks: number of tasks; ``None`` takes it from ``env.task_names``. Pass 1 to run
        on an ordinary single-task environment (no one-hot needed).
    :param task_names: names for the per-task TensorBoard tags; ``None`` takes ``env.task_names``,
        else ``task_0``, ``task_1``, ...
    :param balancer: balancer of the critic and actor losses, a name from
        :data:`famo_rl.balancers.BALANCERS` (``"famo"``, ``"ls"``, ``"pcgrad"``, ...).
    :param balancer_options: options of ``balancer``, e.g. ``{"weight_decay": 1e-2}`` for FAMO.
    :param critic_balancer: balancer of the critic losses only, overriding ``balancer``.
    :param critic_balancer_options: its options (default: ``balancer_options`` when
        ``critic_balancer`` is ``None``, else none).
    :param actor_balancer: balancer of the actor losses only, overriding ``balancer``.
    :param actor_balancer_options: its options, as for the critic.
    :param ent_coef_balancer: balancer of the entropy-coefficient losses (``"ls"``: each task's
        coefficient only feels its own loss, so weighting mostly rescales its Adam step).
    :param ent_coef_balancer_options: its options.
    :param per_task_ent_coef: with ``ent_coef="auto"``, learn one coefficient per task (default)
        or a single shared one, as SB3 and the FAMO authors' MT10 run do; its per-task losses
        still go through ``ent_coef_balancer``.
    :param sac_kwargs: every other argument of ``stable_baselines3.SAC``, by keyword
        (``learning_rate``, ``buffer_size``, ``batch_size``, ``ent_coef``, ``replay_buffer_class``,
        ``tensorboard_log``, ``seed``, ``device``, ...). With
        ``replay_buffer_class=TaskStratifiedReplayBuffer`` its ``num_tasks`` is filled in and
        ``batch_size`` must be a multiple of ``num_tasks``.
    :raises ValueError: for an unknown balancer, an unknown task count, a task count that the
        environment contradicts, or a non-``Box`` observation space.
    :raises TypeError: for a balancer option the balancer does not take.

    .. warning::
        SB3's ``train/actor_loss``, ``train/critic_loss`` and ``train/ent_coef_loss`` are here the
        mean over tasks of the per-task losses (the batch mean when batches are stratified), not
        the balanced objective; ``train/ent_coef`` is the mean over tasks of the coefficients.
    """

    balancers: nn.ModuleDict

    def __init__(
        self,
        policy: str | type[Any],
        env: GymEnv | str | None,
        *,
        num_tasks: int | None = None,
        task_names: list[str] | None = None,
        balancer: str = "famo",
        balancer_options: Mapping[str, Any] | None = None,
        critic_balancer: str | None = None,
        critic_balancer_options: Mapping[str, Any] | None = None,
        actor_balancer: str | None = None,
        actor_balancer_options: Mapping[str, Any] | None = None,
        ent_coef_balancer: str = "ls",
        ent_coef_balancer_options: Mapping[str, Any] | None = None,
        per_task_ent_coef: bool = True,
        _init_setup_model: bool = True,
        **sac_kwargs: Any,
    ) -> None:
        self.balancer_config = _balancer_config(
            {
                "critic": _choose(
                    critic_balancer, critic_balancer_options, balancer, balancer_options
                ),
                "actor": _choose(
                    actor_balancer, actor_balancer_options, balancer, balancer_options
                ),
                "ent_coef": (ent_coef_balancer, ent_coef_balancer_options),
            }
        )
        self.per_task_ent_coef = bool(per_task_ent_coef)
        self.num_tasks = num_tasks
        self.task_names = None if task_names is None else [str(name) for name in task_names]
        super().__init__(policy, env, _init_setup_model=False, **sac_kwargs)
        if _init_setup_model:
            self._setup_model()

    # ----------------------------------------------------------------------------------------------
    # Set-up: tasks, replay buffer, one entropy coefficient per task, balancers.

    def _setup_model(self) -> None:
        self._resolve_tasks(self.env)
        self._configure_replay_buffer()
        super()._setup_model()
        if self.log_ent_coef is not None and self.per_task_ent_coef:
            # SB3 learns one coefficient, shape (1,); each task gets its own, from the same start.
            self.log_ent_coef = self.log_ent_coef.detach().repeat(self.num_tasks)
            self.log_ent_coef.requires_grad_(True)
            self.ent_coef_optimizer = th.optim.Adam([self.log_ent_coef], lr=self.lr_schedule(1))
        learned = self.log_ent_coef is not None
        self.balancers = nn.ModuleDict(
            {
                role: make_balancer(spec["name"], self.num_tasks, **spec["options"])
                for role, spec in self.balancer_config.items()
                if role != "ent_coef" or learned
            }
        ).to(self.device)

    def _resolve_tasks(self, env: VecEnv | None) -> None:
        """Settle ``num_tasks`` and ``task_names`` from the arguments and the environment."""
        env_names = _env_task_names(env)
        if self.num_tasks is None and self.task_names is None and env_names is None:
            raise ValueError(
                "cannot tell the number of tasks: the environment has no task_names; pass "
                "num_tasks= (1 for an ordinary single-task environment) or task_names=, or build "
                "the environment with famo_rl.sb3.make_vec_env"
            )
        names = self.task_names if self.task_names is not None else env_names
        if self.num_tasks is None:
            self.num_tasks = len(names)  # type: ignore[arg-type]  # one of the two is set
        if isinstance(self.num_tasks, bool) or not isinstance(self.num_tasks, int):
            raise ValueError(f"num_tasks must be a positive integer, found {self.num_tasks!r}")
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer, found {self.num_tasks!r}")
        sources = (("task_names", self.task_names), ("the environment's task_names", env_names))
        for source, found in sources:
            if found is not None and len(found) != self.num_tasks:
                raise ValueError(
                    f"num_tasks is {self.num_tasks} but {source} has {len(found)} tasks: {found}"
                )
        self.task_names = list(names) if names else [f"task_{k}" for k in range(self.num_tasks)]
        self._check_observation_space()

    def _check_observation_space(self) -> None:
        space = self.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(
                "MultiTaskSAC needs a 1-D Box observation space ending with the one-hot task id, "
                f"found {space}"
            )
        if space.shape[0] < self.num_tasks:
            raise ValueError(
                f"observations of width {space.shape[0]} cannot end with a one-hot id of "
                f"num_tasks={self.num_tasks} tasks"
            )

    def _configure_replay_buffer(self) -> None:
        """Give a stratified buffer its task count, and check the batch size against it."""
        buffer_class = self.replay_buffer_class
        if not (
            isinstance(buffer_class, type) and issubclass(buffer_class, TaskStratifiedReplayBuffer)
        ):
            return
        given = self.replay_buffer_kwargs.setdefault("num_tasks", self.num_tasks)
        if given != self.num_tasks:
            raise ValueError(
                f"replay_buffer_kwargs['num_tasks'] is {given!r} but the agent has "
                f"num_tasks={self.num_tasks}"
            )
        if self.batch_size < self.num_tasks or self.batch_size % self.num_tasks:
            raise ValueError(
                f"batch_size must be a positive multiple of num_tasks={self.num_tasks} with "
                f"{buffer_class.__name__} (batch_size // num_tasks samples per task), found "
                f"batch_size={self.batch_size}"
            )

    @staticmethod
    def _wrap_env(env: GymEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        """SB3's wrapping, after turning a gymnasium vector env into a :class:`MultiTaskVecEnv`
        (SB3 alone would wrap it as a single environment)."""
        if isinstance(env, gym.vector.VectorEnv):
            env = MultiTaskVecEnv(env)  # type: ignore[arg-type]  # checked by the constructor
            if monitor_wrapper:
                env = VecMonitor(env)
        return SAC._wrap_env(env, verbose, monitor_wrapper)

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        """SB3's ``set_env``, refusing an environment with another number of tasks.

        :raises ValueError: if ``env.task_names`` has a different length than ``num_tasks``.
        """
        wrapped = self._wrap_env(env, self.verbose)
        names = _env_task_names(wrapped)
        if names is not None and len(names) != self.num_tasks:
            raise ValueError(
                f"env has {len(names)} tasks ({names}) but this model was built for "
                f"num_tasks={self.num_tasks} ({self.task_names})"
            )
        super().set_env(wrapped, force_reset)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        """SAC's, plus the balancers: their state (FAMO's logits and Adam moments) is saved
        with the model and restored by ``load``."""
        state_dicts, variables = super()._get_torch_save_params()
        return [*state_dicts, "balancers"], variables

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        """SB3's, then a one-time check on the host that observations end with the task id
        (``train()`` reads it on the device, where a wrong layout would pass unnoticed)."""
        result = super()._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        raw = self._last_original_obs if self._vec_normalize_env is not None else self._last_obs
        if self.num_tasks > 1 and raw is not None:
            one_hot = np.asarray(raw)[:, -self.num_tasks :]
            if not (np.isin(one_hot, (0.0, 1.0)).all() and (one_hot.sum(axis=1) == 1).all()):
                raise ValueError(
                    f"observations must end with a one-hot task id of width {self.num_tasks}, "
                    f"found {one_hot[:4].tolist()} at the end of the first ones"
                )
        return result

    def learn(
        self: SelfMultiTaskSAC,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "MultiTaskSAC",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfMultiTaskSAC:
        """SB3's ``learn``; only the default TensorBoard run name differs."""
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    # ----------------------------------------------------------------------------------------------
    # Training: SAC.train's steps, in SAC.train's order, with per-task losses.

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """Run ``gradient_steps`` updates on batches of ``batch_size`` from the replay buffer."""
        assert self.replay_buffer is not None, "_setup_model() builds the replay buffer"
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers += [self.ent_coef_optimizer]
        self._update_learning_rate(optimizers)

        stats = _TrainStats()
        for gradient_step in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            tasks = _TaskBatch.from_observations(replay_data.observations, self.num_tasks)

            # A new gSDE noise matrix each step: log_std may have changed since the last one.
            if self.use_sde:
                self.actor.reset_noise()
            actions_pi, log_prob = self.actor.action_log_prob(replay_data.observations)
            log_prob = log_prob.reshape(-1, 1)
            noise = self._policy_noise() if self.balancers["actor"].requires_losses_after else None

            ent_coef, metrics = self._update_ent_coef(log_prob, tasks)
            metrics.update(self._update_critic(replay_data, discounts, ent_coef, tasks))
            metrics.update(
                self._update_actor(
                    replay_data.observations, actions_pi, log_prob, noise, ent_coef, tasks
                )
            )

            if gradient_step % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                # Batch-norm running statistics are copied, not averaged.
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)
            stats.add(tasks.present, metrics)

        self._n_updates += gradient_steps
        if stats.steps:
            self._record_train_metrics(stats)

    def _update_ent_coef(
        self, log_prob: Tensor, tasks: _TaskBatch
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Step the entropy coefficients; return each task's from before the step, shape
        ``(num_tasks,)``, which the critic and actor losses use (as in SB3)."""
        if self.ent_coef_optimizer is None or self.log_ent_coef is None:
            ent_coef = self.ent_coef_tensor.expand(self.num_tasks)
            return ent_coef, {"ent_coef": ent_coef}
        # Detached: the critic and actor losses must not move the coefficients.
        ent_coef = th.exp(self.log_ent_coef.detach()).expand(self.num_tasks)
        entropy_gap = (log_prob + self.target_entropy).detach()

        def task_losses() -> Tensor:
            return tasks.mean(-(self.log_ent_coef * entropy_gap))

        balancer = self.balancers["ent_coef"]
        ent_coef_loss = task_losses()
        self.ent_coef_optimizer.zero_grad()
        balancer.backward(ent_coef_loss, [self.log_ent_coef], tasks.present)
        self.ent_coef_optimizer.step()
        self._update_balancer(balancer, task_losses, tasks)
        return ent_coef, {
            "ent_coef": ent_coef,
            "ent_coef_loss": ent_coef_loss.detach(),
            "weights/ent_coef": balancer.weights,
        }

    def _update_critic(
        self,
        replay_data: ReplayBufferSamples,
        discounts: Tensor | float,
        ent_coef: Tensor,
        tasks: _TaskBatch,
    ) -> dict[str, Tensor]:
        """Step the critics on their per-task TD losses."""
        with th.no_grad():
            next_actions, next_log_prob = self.actor.action_log_prob(replay_data.next_observations)
            next_q_values = th.cat(
                self.critic_target(replay_data.next_observations, next_actions), dim=1
            )
            next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
            next_q_values = next_q_values - tasks.per_row(ent_coef) * next_log_prob.reshape(-1, 1)
            target_q_values = (
                replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values
            )

        def task_losses() -> Tensor:
            current_q_values = self.critic(replay_data.observations, replay_data.actions)
            squared_errors = (
                F.mse_loss(current_q, target_q_values, reduction="none")
                for current_q in current_q_values
            )
            return 0.5 * sum(tasks.mean(errors) for errors in squared_errors)  # type: ignore[return-value]

        balancer = self.balancers["critic"]
        critic_loss = task_losses()
        self.critic.optimizer.zero_grad()
        balancer.backward(critic_loss, _optimized(self.critic.optimizer), tasks.present)
        self.critic.optimizer.step()
        self._update_balancer(balancer, task_losses, tasks)
        return {"critic_loss": critic_loss.detach(), "weights/critic": balancer.weights}

    def _update_actor(
        self,
        observations: Tensor,
        actions_pi: Tensor,
        log_prob: Tensor,
        noise: Tensor | None,
        ent_coef: Tensor,
        tasks: _TaskBatch,
    ) -> dict[str, Tensor]:
        """Step the actor on its per-task losses, against the critics just updated."""

        def task_losses(actions: Tensor, log_prob: Tensor) -> Tensor:
            q_values_pi = th.cat(self.critic(observations, actions), dim=1)
            min_qf_pi, _ = th.min(q_values_pi, dim=1, keepdim=True)
            # (batch, num_tasks): column k holds the rows' losses under task k's coefficient.
            return tasks.mean(ent_coef * log_prob - min_qf_pi)

        balancer = self.balancers["actor"]
        actor_loss = task_losses(actions_pi, log_prob)
        self.actor.optimizer.zero_grad()
        balancer.backward(actor_loss, _optimized(self.actor.optimizer), tasks.present)
        self.actor.optimizer.step()
        self._update_balancer(
            balancer, lambda: task_losses(*self._resample(observations, noise)), tasks
        )
        return {"actor_loss": actor_loss.detach(), "weights/actor": balancer.weights}

    @staticmethod
    def _update_balancer(
        balancer: Balancer, task_losses: Callable[[], Tensor], tasks: _TaskBatch
    ) -> None:
        """Give a balancer that asks for it the losses re-measured after the optimizer step."""
        if balancer.requires_losses_after:
            with th.no_grad():
                balancer.update(task_losses(), tasks.present)

    def _policy_noise(self) -> Tensor | None:
        """The standard-normal draws behind the actor's last sample, so that the actor loss can be
        re-measured after the step on the same sample; ``None`` with gSDE, whose noise stays
        fixed until the next ``reset_noise()``."""
        action_dist = self.actor.action_dist
        if not isinstance(action_dist, SquashedDiagGaussianDistribution):
            return None
        normal = action_dist.distribution
        return ((action_dist.gaussian_actions - normal.loc) / normal.scale).detach()

    def _resample(self, observations: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
        """Actions and log-probabilities of the current actor for the given noise."""
        if noise is None:
            actions, log_prob = self.actor.action_log_prob(observations)
            return actions, log_prob.reshape(-1, 1)
        mean_actions, log_std, _ = self.actor.get_action_dist_params(observations)
        action_dist = self.actor.action_dist.proba_distribution(mean_actions, log_std)
        normal = action_dist.distribution
        gaussian_actions = normal.loc + noise * normal.scale
        actions = th.tanh(gaussian_actions)
        return actions, action_dist.log_prob(actions, gaussian_actions).reshape(-1, 1)

    def _record_train_metrics(self, stats: _TrainStats) -> None:
        """SB3's ``train/*`` scalars, then per-task losses, coefficients and balancer weights."""
        sums = stats.to_host()
        steps = stats.steps
        present = sums["present"]
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", float(sums["ent_coef"].mean() / steps))
        for name in _LOSSES:
            if name in sums:
                self.logger.record(f"train/{name}", float(sums[f"{name}/mean"][0] / steps))

        for task_idx, task_name in enumerate(self.task_names):
            values = {f"train/ent_coef/{task_name}": sums["ent_coef"][task_idx] / steps}
            if present[task_idx] > 0:
                for name in _LOSSES:
                    if name in sums:
                        per_task = sums[name][task_idx] / present[task_idx]
                        values[f"train/{name}/{task_name}"] = per_task
            for role in self.balancers:
                values[f"balancer/{role}/{task_name}"] = sums[f"weights/{role}"][task_idx] / steps
            for key, value in values.items():
                self.logger.record(key, float(value), exclude=_PER_TASK_EXCLUDE)


def _optimized(optimizer: th.optim.Optimizer) -> list[Tensor]:
    """The parameters ``optimizer`` steps: the balancer fills exactly their gradients."""
    return [param for group in optimizer.param_groups for param in group["params"]]


def _env_task_names(env: VecEnv | None) -> list[str] | None:
    """``env.task_names``, looked up through SB3's wrappers; ``None`` when it has none."""
    if env is None:
        return None
    names = getattr(env, "task_names", None)
    return None if names is None else [str(name) for name in names]


def _choose(
    name: str | None,
    options: Mapping[str, Any] | None,
    default_name: str,
    default_options: Mapping[str, Any] | None,
) -> tuple[str, Mapping[str, Any] | None]:
    """A role's balancer: its own if named, else the shared ``balancer`` with its options."""
    if name is None:
        return default_name, default_options if options is None else options
    return name, options


def _balancer_config(
    choices: dict[str, tuple[str, Mapping[str, Any] | None]],
) -> dict[str, dict[str, Any]]:
    """Check each role's balancer name and option names now, before any environment is built.

    :return: ``{role: {"name": ..., "options": {...}}}``, plain dicts so that SB3's JSON save
        format gives them back unchanged.
    """
    config: dict[str, dict[str, Any]] = {}
    for role, (name, options) in choices.items():
        parameter = "balancer" if role != "ent_coef" else "ent_coef_balancer"
        if not isinstance(name, str):
            raise TypeError(f"{parameter} must be a balancer name (str), found {name!r}")
        try:
            valid = balancer_options(name)
        except ValueError as error:
            raise ValueError(f"{role} balancer: {error}") from None
        options = {} if options is None else options
        if not isinstance(options, Mapping):
            raise TypeError(
                f"{role} balancer options must be a dict, found {type(options).__name__}"
            )
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(
                f"{role} balancer {name!r} has no option {unknown[0]!r}; its options are: "
                f"{', '.join(valid) if valid else '(none)'}"
            )
        config[role] = {"name": name, "options": dict(options)}
    return config
