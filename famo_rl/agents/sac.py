"""Multitask soft actor-critic whose critic, actor and temperature losses go through balancers.

One network of each kind serves every task (conditioned on the one-hot task id). Each loss is
computed per task, as the mean over that task's rows of the batch, and the ``(num_tasks,)`` vector
of task losses is handed to a :class:`~famo_rl.balancers.Balancer`, which turns it into gradients.
"""

from __future__ import annotations

import copy
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import ConfigDict
from torch import Tensor

from ..balancers import Balancer, balancer_options, make_balancer
from ..envs.base import split_observation
from .buffer import Batch, _check_positive_int
from .networks import SquashedGaussianActor, TwinCritic


@dataclass
class SACConfig:
    """Hyperparameters of :class:`MultiTaskSAC`.

    The defaults follow the MT10 setup of the FAMO paper's authors (3 x 400 networks, Adam at
    3e-4, discount 0.99, tau 0.005, initial temperature 1) except for the balancers and the
    temperature: they balanced only the critic loss with FAMO and used one shared temperature.
    ``SACConfig(actor_balancer="ls", per_task_alpha=False)`` reproduces that setting.

    .. warning::
        FAMO's own default ``weight_decay`` is 1e-3 (the paper's Algorithm 2); the authors' MT10
        run used 1e-2. Pass it through ``critic_balancer_options`` to match that run.
    """

    # Unknown keys in a YAML config are errors, not silently ignored.
    __pydantic_config__ = ConfigDict(extra="forbid")

    #: Widths of the hidden ReLU layers of the actor and of each Q network.
    hidden_sizes: tuple[int, ...] = (400, 400, 400)
    #: Adam learning rate of the actor.
    actor_lr: float = 3e-4
    #: Adam learning rate of the twin critics.
    critic_lr: float = 3e-4
    #: Adam learning rate of ``log_alpha``.
    alpha_lr: float = 3e-4
    #: The RL discount factor.
    discount: float = 0.99
    #: Polyak rate of the target critics: ``target <- (1 - tau) * target + tau * critic``.
    tau: float = 0.005
    #: Initial entropy temperature of every task.
    init_alpha: float = 1.0
    #: One temperature per task (``log_alpha`` of shape ``(num_tasks,)``) or one shared, ``(1,)``.
    per_task_alpha: bool = True
    #: One output head per task in the actor and the critics, instead of a single head.
    multi_head: bool = False
    #: Maximum global norm of the critic's and the actor's gradients, applied after the
    #: balancer's backward; ``None`` disables clipping. ``log_alpha`` is never clipped.
    grad_clip: float | None = None
    #: Balancer of the per-task critic losses (a name from :data:`famo_rl.BALANCERS`).
    critic_balancer: str = "famo"
    #: Options of the critic balancer, e.g. ``{"weight_decay": 1e-2}`` for FAMO.
    critic_balancer_options: dict[str, Any] = field(default_factory=dict)
    #: Balancer of the per-task actor losses.
    actor_balancer: str = "famo"
    #: Options of the actor balancer.
    actor_balancer_options: dict[str, Any] = field(default_factory=dict)
    #: Balancer of the per-task temperature losses.
    alpha_balancer: str = "ls"
    #: Options of the temperature balancer.
    alpha_balancer_options: dict[str, Any] = field(default_factory=dict)
    #: Entropy each task's policy is driven towards; ``None`` means ``-action_dim``.
    target_entropy: float | None = None
    #: Where a balancer that learns from the losses after its step (FAMO) gets them.
    #: ``"same_batch"``, as the paper's code does: re-measured on the same batch right after the
    #: optimizer step, one extra forward pass without gradients per balanced loss (about 12% of an
    #: update for the critic, 20% more for the actor on the CPU). ``"next_batch"``: the next
    #: update's losses, measured on the next batch before its step, at no extra cost; the change
    #: they show mixes the step's effect with batch-to-batch noise and the moving critic, so the
    #: task weights move less (see ``benchmarks/README.md``).
    famo_reevaluation: Literal["same_batch", "next_batch"] = "same_batch"
    #: Hand such a balancer its losses after the step on one update in this many, counting from
    #: the first; the others skip the re-measurement and leave FAMO's logits as they are. Every
    #: logit step stays the paper's, there are just fewer of them: 4 cuts ``same_batch``'s extra
    #: cost fourfold. 1 (every update) is the paper's setting.
    famo_reevaluation_every: int = 1
    #: Fraction of the batch's rows, in (0, 1], on which ``same_batch`` re-measures the critic and
    #: actor losses after the step: of each task present in the batch, its first
    #: ``max(1, round(fraction * rows))`` rows in batch order (a random sample of the task's rows
    #: when the batch comes from the replay buffer). The balancer compares them with the same rows'
    #: losses before the step, averaged from the per-row losses of the update's forward pass, so
    #: the change it sees is paired; 0.25 cuts the re-measurement's forward rows about fourfold.
    #: 1 (all rows) is the paper's setting. ``next_batch`` re-measures nothing: it requires 1.
    famo_reevaluation_rows: float = 1.0

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(self.hidden_sizes)
        if not self.hidden_sizes or not all(
            isinstance(width, int) and not isinstance(width, bool) and width > 0
            for width in self.hidden_sizes
        ):
            raise ValueError(
                f"hidden_sizes must be a non-empty sequence of positive integers, "
                f"found {self.hidden_sizes!r}"
            )
        for name in ("actor_lr", "critic_lr", "alpha_lr", "init_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, found {getattr(self, name)!r}")
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, found {getattr(self, name)!r}")
        if not 0.0 <= self.discount <= 1.0:
            raise ValueError(f"discount must lie in [0, 1], found {self.discount!r}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must lie in (0, 1], found {self.tau!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, found {self.grad_clip!r}")
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise ValueError(f"target_entropy must be finite or None, found {self.target_entropy}")
        if self.famo_reevaluation not in ("same_batch", "next_batch"):
            raise ValueError(
                f"famo_reevaluation must be 'same_batch' or 'next_batch', "
                f"found {self.famo_reevaluation!r}"
            )
        every = self.famo_reevaluation_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"famo_reevaluation_every must be a positive integer, found {every!r}")
        self._check_reevaluation_rows()
        for role in ("critic", "actor", "alpha"):
            name = getattr(self, f"{role}_balancer")
            options = getattr(self, f"{role}_balancer_options")
            try:
                valid = balancer_options(name)
            except ValueError as error:
                raise ValueError(f"{role}_balancer: {error}") from None
            unknown = sorted(set(options) - set(valid))
            if unknown:
                raise ValueError(
                    f"{role}_balancer_options: balancer {name!r} has no option {unknown[0]!r}; "
                    f"its options are: {', '.join(valid) if valid else '(none)'}"
                )

    def _check_reevaluation_rows(self) -> None:
        rows = self.famo_reevaluation_rows
        if isinstance(rows, bool) or not isinstance(rows, (int, float)) or not 0.0 < rows <= 1.0:
            raise ValueError(f"famo_reevaluation_rows must be a fraction in (0, 1], found {rows!r}")
        if rows != 1.0 and self.famo_reevaluation == "next_batch":
            raise ValueError(
                f"famo_reevaluation_rows={rows!r} needs famo_reevaluation='same_batch': "
                "'next_batch' re-measures nothing, so there are no rows to choose"
            )


@dataclass(frozen=True)
class TaskGroups:
    """Which batch rows belong to which task, for averaging per-sample values per task.

    :param task_idx: each row's task, shape ``(batch,)``.
    :param present: tasks with at least one row, boolean, shape ``(num_tasks,)``.
    :param inverse_counts: ``1 / max(count, 1)`` per task, shape ``(num_tasks,)``.
    """

    task_idx: Tensor
    present: Tensor
    inverse_counts: Tensor

    @classmethod
    def from_task_idx(cls, task_idx: Tensor, num_tasks: int, dtype: torch.dtype) -> TaskGroups:
        """Count the rows of each task, on ``task_idx``'s device, without a host sync."""
        ones = torch.ones(task_idx.shape[0], dtype=dtype, device=task_idx.device)
        counts = torch.zeros(num_tasks, dtype=dtype, device=task_idx.device)
        counts.index_add_(0, task_idx, ones)
        return cls(task_idx, counts > 0, 1.0 / counts.clamp(min=1.0))

    def mean(self, values: Tensor) -> Tensor:
        """Per-task means of per-row ``values`` ``(batch,)``: shape ``(num_tasks,)``, 0 if absent.

        Differentiable in ``values``.
        """
        sums = torch.zeros_like(self.inverse_counts).index_add(0, self.task_idx, values)
        return sums * self.inverse_counts

    def subset(self, fraction: float) -> tuple[Tensor, TaskGroups]:
        """A stratified subset of ``max(round(fraction * batch), num_tasks)`` rows (at most all).

        Each task gives its first rows in batch order, ``fraction`` of its rows within one row and
        at least one: the rows are taken in order of their rank within their task relative to the
        task's row count. The size does not depend on the counts, so no host synchronisation is
        needed.

        :param fraction: share of the rows, in ``(0, 1]``.
        :return: the rows' indices into the batch, shape ``(rows,)``, and their groups.
        """
        batch, num_tasks = self.task_idx.shape[0], self.present.shape[0]
        counts = torch.zeros(num_tasks, dtype=torch.long, device=self.task_idx.device)
        counts.index_add_(0, self.task_idx, torch.ones_like(self.task_idx))
        # Each row's rank among its task's rows, in batch order: its place in a stable sort by task
        # minus the place where its task starts.
        order = torch.argsort(self.task_idx, stable=True)
        starts = counts.cumsum(0) - counts
        rank = torch.empty_like(order)
        rank[order] = torch.arange(batch, device=order.device) - starts[self.task_idx[order]]
        # Every task's first row has position 0: num_tasks rows or more take them all.
        position = rank / counts[self.task_idx]
        size = min(batch, max(round(fraction * batch), num_tasks))
        rows = torch.argsort(position, stable=True)[:size]
        dtype = self.inverse_counts.dtype
        return rows, TaskGroups.from_task_idx(self.task_idx[rows], num_tasks, dtype)


class MultiTaskSAC:
    """Soft actor-critic for ``num_tasks`` tasks with balanced per-task losses.

    Each :meth:`update` runs, on one batch, :meth:`update_critic`, :meth:`update_actor` and
    :meth:`update_alpha`, each handing its ``(num_tasks,)`` task losses to its balancer, then
    :meth:`update_target`. A balancer that sets ``requires_losses_after`` (FAMO) gets the losses
    re-measured on the same batch, without gradients, right after its optimizer step; with
    ``famo_reevaluation="next_batch"`` it gets the next update's losses instead, measured on the
    next batch before that update's step; with ``famo_reevaluation_every=n`` only one update in
    ``n`` does either; with ``famo_reevaluation_rows`` below 1 the critic and actor losses are
    re-measured on a stratified subset of the batch's rows and compared with the same rows' losses
    before the step.

    Per-task losses, each the mean over that task's rows of the batch:

    - ``critic_loss``: ``0.5 * (MSE(q1, y) + MSE(q2, y))`` with
      ``y = reward + discount * (1 - terminated) * (min target Q - alpha * log_prob)(next_obs)``;
    - ``actor_loss``: ``mean(alpha[task] * log_prob - min Q)``;
    - ``alpha_loss``: ``mean(-log_alpha[task] * (log_prob + target_entropy))``, the second factor
      detached.

    :param obs_dim: observation width *without* the one-hot task id.
    :param action_dim: action width.
    :param num_tasks: number of tasks.
    :param config: hyperparameters; ``None`` uses :class:`SACConfig`'s defaults.
    :param device: where the networks, optimizers, balancers and updates live.
    :param action_low: the environment's lower action bounds, shape ``(action_dim,)``; ``None``
        means -1.
    :param action_high: upper bounds, shape ``(action_dim,)``; ``None`` means 1.
    :param seed: fixes the initial parameters and every sample the agent draws, through the
        agent's own generators (``torch.manual_seed`` plays no part); ``None`` draws a fresh seed.

    Batches hold actions in the environment's units (as :meth:`act` returns them); the networks
    see them rescaled to ``[-1, 1]``. On the CPU a fixed seed repeats updates exactly.

    .. warning::
        A balancer's state between its two phases is not saved: call :meth:`state_dict` between
        updates, never from inside one. With ``famo_reevaluation="next_batch"`` the two phases
        straddle consecutive updates, so an agent restored from a :meth:`state_dict` skips one
        step of its balancers' weights (the first update after loading has nothing to compare).
        The count behind ``famo_reevaluation_every`` is not saved either: it restarts at loading.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_tasks: int,
        config: SACConfig | None = None,
        device: torch.device | str = "cpu",
        action_low: npt.ArrayLike | None = None,
        action_high: npt.ArrayLike | None = None,
        seed: int | None = None,
    ) -> None:
        _check_positive_int("obs_dim", obs_dim)
        _check_positive_int("action_dim", action_dim)
        _check_positive_int("num_tasks", num_tasks)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0
        ):
            raise ValueError(f"seed must be a non-negative integer or None, found {seed!r}")
        if config is not None and not isinstance(config, SACConfig):
            raise TypeError(f"config must be a SACConfig or None, found {type(config).__name__}")
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.num_tasks = int(num_tasks)
        self.config = config if config is not None else SACConfig()
        self.device = torch.device(device)
        self.seed = secrets.randbits(63) if seed is None else int(seed)
        cfg = self.config

        init_seed, sample_seed = np.random.SeedSequence(self.seed).generate_state(2, np.uint64)
        init_generator = torch.Generator().manual_seed(int(init_seed))
        self.generator = torch.Generator(device=self.device).manual_seed(int(sample_seed))

        sizes = (self.obs_dim, self.action_dim, self.num_tasks, cfg.hidden_sizes, cfg.multi_head)
        self.actor = SquashedGaussianActor(*sizes, generator=init_generator).to(self.device)
        self.critic = TwinCritic(*sizes, generator=init_generator).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        num_alphas = self.num_tasks if cfg.per_task_alpha else 1
        self.log_alpha = torch.full(
            (num_alphas,), math.log(cfg.init_alpha), device=self.device, requires_grad=True
        )
        self.target_entropy = float(
            -self.action_dim if cfg.target_entropy is None else cfg.target_entropy
        )

        self._actor_params = list(self.actor.parameters())
        self._critic_params = list(self.critic.parameters())
        # The fused Adam kernel is several times faster than the default one on CPU and CUDA.
        fused = True if self.device.type in ("cpu", "cuda") else None
        self.actor_optimizer = torch.optim.Adam(self._actor_params, lr=cfg.actor_lr, fused=fused)
        self.critic_optimizer = torch.optim.Adam(self._critic_params, lr=cfg.critic_lr, fused=fused)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr, fused=fused)
        # Fused Adam skips a step on the device when told so (``found_inf``): non-finite steps
        # are skipped without a host synchronisation. Other optimizers need one.
        self._skips_on_device = fused is True
        #: Updates with any phase skipped for non-finite losses, gradients or weights, and the
        #: current run of consecutive ones: device tensors, read by the trainer when it chooses.
        self.skipped_updates = torch.zeros((), dtype=torch.long, device=self.device)
        self.consecutive_skips = torch.zeros((), dtype=torch.long, device=self.device)

        self.critic_balancer = self._balancer(cfg.critic_balancer, cfg.critic_balancer_options)
        self.actor_balancer = self._balancer(cfg.actor_balancer, cfg.actor_balancer_options)
        self.alpha_balancer = self._balancer(cfg.alpha_balancer, cfg.alpha_balancer_options)
        # next_batch: the balancers whose last step still waits for its losses after the step.
        self._awaiting_losses_after: set[str] = set()
        # Updates so far, for famo_reevaluation_every (not saved in state_dict).
        self._update_count = 0

        low, high = _action_bounds(action_low, action_high, self.action_dim)
        self._action_low, self._action_high = low, high
        self._action_center = torch.as_tensor((high + low) / 2.0, device=self.device)
        self._action_scale = torch.as_tensor((high - low) / 2.0, device=self.device)

    # ----------------------------------------------------------------------------------------------
    # Acting.

    @torch.no_grad()
    def act(self, obs: npt.ArrayLike, deterministic: bool = False) -> npt.NDArray[np.float32]:
        """Actions for a vector environment's observations.

        :param obs: shape ``(num_envs, obs_dim + num_tasks)``, ending with the one-hot task id.
        :param deterministic: take the policy's mode instead of sampling.
        :return: actions within the action bounds, shape ``(num_envs, action_dim)``, float32.
        """
        obs_array = np.asarray(obs)
        expected = self.obs_dim + self.num_tasks
        if obs_array.ndim != 2 or obs_array.shape[1] != expected:
            raise ValueError(
                f"obs must have shape (num_envs, {expected}) (obs_dim + num_tasks, ending with "
                f"the one-hot task id), found shape {obs_array.shape}"
            )
        own_obs, task_idx = split_observation(obs_array, self.num_tasks)
        obs_tensor = torch.as_tensor(own_obs, dtype=torch.float32, device=self.device)
        task_tensor = torch.as_tensor(task_idx, device=self.device)
        if deterministic:
            action = self.actor.mode(obs_tensor, task_tensor)
        else:
            action, _ = self.actor(obs_tensor, task_tensor, self._noise(len(task_idx)))
        return (self._action_center + self._action_scale * action).cpu().numpy()

    def eval_action(self, obs: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Deterministic actions, for ``metaworld.evaluation.evaluation``."""
        return self.act(obs, deterministic=True)

    def reset(self, env_mask: npt.NDArray[np.bool_]) -> None:
        """Nothing to reset (the policy is memoryless); part of Meta-World's agent protocol."""
        del env_mask

    # ----------------------------------------------------------------------------------------------
    # Learning.

    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One gradient step on ``batch``: critic, actor, temperature, then the target critics.

        :param batch: transitions, e.g. from
            :meth:`~famo_rl.agents.buffer.MultiTaskReplayBuffer.sample`; moved to the agent's
            device if needed. Tasks without rows are masked out of every balancer.
        :return: detached tensors on the device (no host synchronisation): ``critic_loss``,
            ``actor_loss``, ``alpha_loss``, ``alpha``, ``entropy`` (per task, ``(num_tasks,)``),
            ``critic_weights``, ``actor_weights``, ``alpha_weights`` (each balancer's weights,
            ``(num_tasks,)``), ``q_mean`` (scalar), ``skipped`` (0-dim bool: a learner's step was
            skipped because its losses, gradients or balancer weights were not finite; see
            :attr:`skipped_updates` and :attr:`consecutive_skips`), and with ``grad_clip`` set
            the scalars ``critic_grad_norm`` and ``actor_grad_norm`` (norms before clipping).
        """
        batch = self._check_batch(batch)
        groups = TaskGroups.from_task_idx(batch.task_idx, self.num_tasks, batch.reward.dtype)
        metrics = self.update_critic(batch, groups)
        metrics.update(self.update_actor(batch, groups))
        metrics.update(self.update_alpha(metrics["entropy"], groups.present))
        self.update_target()
        self._update_count += 1
        skipped = torch.stack([metrics.pop(f"{role}_skipped") for role in _ROLES]).any()
        self.skipped_updates += skipped
        self.consecutive_skips.mul_(skipped).add_(skipped)
        metrics["skipped"] = skipped
        return metrics

    def update_critic(self, batch: Batch, groups: TaskGroups) -> dict[str, Tensor]:
        """Step the twin critics on their per-task TD errors; see :meth:`update` for the metrics."""
        action = (batch.action - self._action_center) / self._action_scale
        with torch.no_grad():
            next_action, next_log_prob = self.actor(
                batch.next_obs, batch.task_idx, self._noise(len(batch.task_idx))
            )
            next_q = self.critic_target(batch.next_obs, next_action, batch.task_idx).amin(dim=0)
            soft_value = next_q - self._alpha_per_row(batch.task_idx) * next_log_prob
            target_q = batch.reward + self.config.discount * (1.0 - batch.terminated) * soft_value

        def row_losses(rows: Tensor | slice = _ALL_ROWS) -> tuple[Tensor, Tensor]:
            q = self.critic(batch.obs[rows], action[rows], batch.task_idx[rows])
            return 0.5 * (q - target_q[rows]).pow(2).sum(dim=0), q

        critic_row_loss, q = row_losses()
        critic_loss = groups.mean(critic_row_loss)
        self._close_previous_step("critic", critic_loss, groups.present)
        self.critic_optimizer.zero_grad(set_to_none=True)
        self.critic_balancer.backward(critic_loss, self._critic_params, groups.present)
        metrics = self._clip("critic_grad_norm", self._critic_params)
        stepped = self._step_if_finite("critic", critic_loss, self._critic_params, groups.present)

        def losses_after() -> tuple[Tensor, Tensor | None]:
            return self._losses_after_on_rows(lambda r: row_losses(r)[0], critic_row_loss, groups)

        self._measure_losses_after("critic", losses_after, groups.present & stepped)

        metrics["critic_loss"] = critic_loss.detach()
        metrics["q_mean"] = q.detach().mean()
        metrics["critic_weights"] = self.critic_balancer.weights
        metrics["critic_skipped"] = ~stepped
        return metrics

    def update_actor(self, batch: Batch, groups: TaskGroups) -> dict[str, Tensor]:
        """Step the actor on its per-task soft policy losses; see :meth:`update` for the metrics.

        The actions are resampled from the same noise when the losses are re-measured after the
        step (on the same rows' noise with ``famo_reevaluation_rows`` below 1), so that the
        balancer compares the same sample before and after.
        """
        noise = self._noise(len(batch.task_idx))
        alpha = self._alpha_per_row(batch.task_idx)

        def row_losses(rows: Tensor | slice = _ALL_ROWS) -> tuple[Tensor, Tensor]:
            obs, task_idx = batch.obs[rows], batch.task_idx[rows]
            action, log_prob = self.actor(obs, task_idx, noise[rows])
            q = self.critic(obs, action, task_idx).amin(dim=0)
            return alpha[rows] * log_prob - q, log_prob

        actor_row_loss, log_prob = row_losses()
        actor_loss = groups.mean(actor_row_loss)
        self._close_previous_step("actor", actor_loss, groups.present)
        self.actor_optimizer.zero_grad(set_to_none=True)
        # Only the actor's gradients are computed: the critic is read, not trained, here.
        self.actor_balancer.backward(actor_loss, self._actor_params, groups.present)
        metrics = self._clip("actor_grad_norm", self._actor_params)
        stepped = self._step_if_finite("actor", actor_loss, self._actor_params, groups.present)

        def losses_after() -> tuple[Tensor, Tensor | None]:
            return self._losses_after_on_rows(lambda r: row_losses(r)[0], actor_row_loss, groups)

        self._measure_losses_after("actor", losses_after, groups.present & stepped)

        metrics["actor_loss"] = actor_loss.detach()
        metrics["entropy"] = -groups.mean(log_prob.detach())
        metrics["actor_weights"] = self.actor_balancer.weights
        metrics["actor_skipped"] = ~stepped
        return metrics

    def update_alpha(self, entropy: Tensor, present: Tensor) -> dict[str, Tensor]:
        """Step ``log_alpha`` towards ``target_entropy``.

        :param entropy: the policy's per-task entropy estimate ``-mean(log_prob)`` on the batch,
            shape ``(num_tasks,)`` (``update_actor``'s ``entropy`` metric).
        :param present: tasks with rows in the batch, boolean, shape ``(num_tasks,)``.
        :return: ``alpha_loss``, ``alpha`` and ``alpha_weights``, each ``(num_tasks,)``.
        """
        # mean(-log_alpha * (log_prob + target_entropy)) = log_alpha * (entropy - target_entropy)
        entropy_gap = torch.where(present, entropy.detach() - self.target_entropy, 0.0)

        def task_losses() -> Tensor:
            return self.log_alpha.expand(self.num_tasks) * entropy_gap

        alpha_loss = task_losses()
        self._close_previous_step("alpha", alpha_loss, present)
        self.alpha_optimizer.zero_grad(set_to_none=True)
        self.alpha_balancer.backward(alpha_loss, [self.log_alpha], present)
        stepped = self._step_if_finite("alpha", alpha_loss, [self.log_alpha], present)

        self._measure_losses_after("alpha", lambda: (task_losses(), None), present & stepped)

        return {
            "alpha_skipped": ~stepped,
            "alpha_loss": alpha_loss.detach(),
            "alpha": self.log_alpha.detach().exp().expand(self.num_tasks).clone(),
            "alpha_weights": self.alpha_balancer.weights,
        }

    @torch.no_grad()
    def update_target(self) -> None:
        """Polyak-average the critics into the target critics at rate ``tau``."""
        target_params = list(self.critic_target.parameters())
        # One fused call instead of a Python loop over the parameter tensors.
        torch._foreach_lerp_(target_params, self._critic_params, self.config.tau)

    # ----------------------------------------------------------------------------------------------
    # Checkpoints.

    def state_dict(self) -> dict[str, Any]:
        """Networks, target critics, optimizers, ``log_alpha``, balancers and generator state.

        Plain tensors, numbers and strings, loadable with ``torch.load(path, weights_only=True)``.
        """
        return {
            "setting": self._setting(),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "critic_balancer": self.critic_balancer.state_dict(),
            "actor_balancer": self.actor_balancer.state_dict(),
            "alpha_balancer": self.alpha_balancer.state_dict(),
            "generator": self.generator.get_state(),
            "skipped_updates": self.skipped_updates.detach().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        :raises ValueError: when the state comes from a different setting (tasks, dimensions,
            network shapes, temperature layout, balancers or action bounds), naming what differs.
        """
        saved = state.get("setting") if isinstance(state, dict) else None
        if not isinstance(saved, dict):
            raise ValueError("state is not a MultiTaskSAC.state_dict(): it has no 'setting' entry")
        current = self._setting()
        for key, value in current.items():
            if saved.get(key) != value:
                raise ValueError(
                    f"state was saved with {key}={saved.get(key)!r}, but this agent has "
                    f"{key}={value!r}"
                )
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.critic_balancer.load_state_dict(state["critic_balancer"])
        self.actor_balancer.load_state_dict(state["actor_balancer"])
        self.alpha_balancer.load_state_dict(state["alpha_balancer"])
        self.generator.set_state(state["generator"].cpu())
        if "skipped_updates" in state:
            self.skipped_updates.copy_(state["skipped_updates"])
        self.consecutive_skips.zero_()
        # The balancers' pending steps were not saved: nothing waits for its losses after.
        self._awaiting_losses_after.clear()
        self._update_count = 0

    # ----------------------------------------------------------------------------------------------
    # Losses after the step, for balancers that learn from them (FAMO).

    def _measure_losses_after(
        self,
        role: str,
        task_losses: Callable[[], tuple[Tensor, Tensor | None]],
        present: Tensor,
    ) -> None:
        """Hand ``role``'s balancer the losses after its step: re-measured now (``same_batch``)
        or, with ``next_batch``, left to the next update (no forward pass here); nothing on the
        updates that ``famo_reevaluation_every`` skips.

        :param task_losses: measures the losses after the step, ``(num_tasks,)``, and returns them
            with the same rows' losses before the step when those rows are a subset of the batch
            (``None`` otherwise: the balancer compares with the losses it was given before).
        """
        balancer: Balancer = getattr(self, f"{role}_balancer")
        if not balancer.requires_losses_after:
            return
        if self._update_count % self.config.famo_reevaluation_every != 0:
            return
        if self.config.famo_reevaluation == "next_batch":
            self._awaiting_losses_after.add(role)
            return
        with torch.no_grad():
            after, before = task_losses()
            if before is None:
                balancer.update(after, present)
            else:
                balancer.update(after, present, task_losses_before=before)

    def _losses_after_on_rows(
        self,
        row_losses: Callable[[Tensor | slice], Tensor],
        row_losses_before: Tensor,
        groups: TaskGroups,
    ) -> tuple[Tensor, Tensor | None]:
        """Per-task losses after the step, from the per-row losses of the given rows.

        With ``famo_reevaluation_rows`` at 1, on every row, and ``None`` for the losses before.
        Below 1, on a stratified subset of the rows (:meth:`TaskGroups.subset`), together with the
        same rows' losses before the step, averaged from ``row_losses_before``, shape ``(batch,)``.
        """
        fraction = self.config.famo_reevaluation_rows
        if fraction == 1.0:
            return groups.mean(row_losses(_ALL_ROWS)), None
        rows, subset = groups.subset(fraction)
        return subset.mean(row_losses(rows)), subset.mean(row_losses_before.detach()[rows])

    def _close_previous_step(self, role: str, task_losses: Tensor, present: Tensor) -> None:
        """With ``next_batch``: this batch's losses, before the step, close the previous step."""
        if role in self._awaiting_losses_after:
            self._awaiting_losses_after.discard(role)
            getattr(self, f"{role}_balancer").update(task_losses.detach(), present)

    # ----------------------------------------------------------------------------------------------
    # Helpers.

    def _balancer(self, name: str, options: dict[str, Any]) -> Balancer:
        return make_balancer(name, self.num_tasks, **options).to(self.device)

    def _noise(self, rows: int) -> Tensor:
        """Standard normal draws from the agent's generator, shape ``(rows, action_dim)``."""
        shape = (rows, self.action_dim)
        return torch.randn(shape, generator=self.generator, device=self.device)

    def _alpha_per_row(self, task_idx: Tensor) -> Tensor:
        """Each row's detached temperature, shape ``(batch,)``."""
        alpha = self.log_alpha.detach().exp()
        return alpha[task_idx] if self.config.per_task_alpha else alpha.expand(task_idx.shape[0])

    def _step_if_finite(
        self, role: str, task_losses: Tensor, params: Sequence[Tensor], present: Tensor
    ) -> Tensor:
        """Step ``role``'s optimizer unless its present tasks' losses, its gradients or its
        balancer's weights hold a NaN or an infinity; return whether it stepped (0-dim bool).

        A skipped step leaves the parameters and the optimizer's moments and step count as they
        were. With fused Adam the decision stays on the device.
        """
        optimizer: torch.optim.Optimizer = getattr(self, f"{role}_optimizer")
        balancer: Balancer = getattr(self, f"{role}_balancer")
        checked = [torch.where(present, task_losses.detach(), 0.0), balancer.weights.detach()]
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            # One fused pass over the gradients; a non-finite entry makes its norm non-finite.
            checked.append(torch.stack(torch._foreach_norm(grads)).to(task_losses.dtype))
        finite = torch.isfinite(torch.cat(checked)).all()
        if self._skips_on_device:
            optimizer.found_inf = (~finite).to(torch.float32)  # type: ignore[attr-defined]
            optimizer.step()
        elif bool(finite):
            optimizer.step()
        return finite

    def _clip(self, name: str, params: Sequence[Tensor]) -> dict[str, Tensor]:
        if self.config.grad_clip is None:
            return {}
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        return {name: norm.detach()}

    def _setting(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "num_tasks": self.num_tasks,
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "hidden_sizes": list(cfg.hidden_sizes),
            "multi_head": cfg.multi_head,
            "per_task_alpha": cfg.per_task_alpha,
            "critic_balancer": cfg.critic_balancer,
            "actor_balancer": cfg.actor_balancer,
            "alpha_balancer": cfg.alpha_balancer,
            "action_low": self._action_low.tolist(),
            "action_high": self._action_high.tolist(),
        }

    def _check_batch(self, batch: Batch) -> Batch:
        """Check the shapes and dtypes of ``batch`` and move it to the device (no host sync)."""
        if not isinstance(batch, Batch):
            raise TypeError(f"batch must be a Batch, found {type(batch).__name__}")
        values = {name: getattr(batch, name) for name in _BATCH_FIELDS}
        for name, value in values.items():
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"batch.{name} must be a torch.Tensor, found {type(value).__name__}"
                )
        if batch.task_idx.dtype != torch.int64 or batch.task_idx.dim() != 1:
            raise TypeError(
                f"batch.task_idx must be a 1-D torch.int64 tensor, found dtype "
                f"{batch.task_idx.dtype} and shape {tuple(batch.task_idx.shape)}"
            )
        rows = batch.task_idx.shape[0]
        expected = {
            "obs": (rows, self.obs_dim),
            "action": (rows, self.action_dim),
            "reward": (rows,),
            "next_obs": (rows, self.obs_dim),
            "terminated": (rows,),
        }
        for name, shape in expected.items():
            value = values[name]
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"batch.{name} must have shape {shape} (batch.task_idx has {rows} rows), "
                    f"found shape {tuple(value.shape)}"
                )
            if not value.is_floating_point():
                raise TypeError(f"batch.{name} must be floating point, found {value.dtype}")
        return Batch(**{name: value.to(self.device) for name, value in values.items()})


_BATCH_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "task_idx")
#: Indexes every row of a batch (a view: no copy).
_ALL_ROWS = slice(None)
#: The three learners of an update, in their order.
_ROLES = ("critic", "actor", "alpha")


def _action_bounds(
    low: npt.ArrayLike | None, high: npt.ArrayLike | None, action_dim: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Broadcast the bounds to ``(action_dim,)`` float32 and check that they are usable."""
    bounds = []
    for name, value, default in (("action_low", low, -1.0), ("action_high", high, 1.0)):
        array = np.asarray(default if value is None else value, dtype=np.float32)
        if array.ndim > 1 or array.size not in (1, action_dim):
            raise ValueError(
                f"{name} must be a scalar or have shape ({action_dim},), found shape {array.shape}"
            )
        array = np.broadcast_to(array, (action_dim,)).copy()
        if not np.isfinite(array).all():
            raise ValueError(f"{name} must be finite, found {array.tolist()}")
        bounds.append(array)
    if not (bounds[0] < bounds[1]).all():
        raise ValueError(
            f"action_low must be below action_high everywhere, found action_low="
            f"{bounds[0].tolist()} and action_high={bounds[1].tolist()}"
        )
    return bounds[0], bounds[1]
