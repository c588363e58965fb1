"""FAMO: Fast Adaptive Multitask Optimization (Liu, Feng, Stone and Liu, NeurIPS 2023).

FAMO decreases every task loss at a balanced *relative* rate using only the loss values: no
per-task gradients, so its cost does not grow with the number of tasks.

Written here rather than taken from torchjd (whose ``torchjd.scalarization.FAMO`` implements the
same Algorithm 1) because a multitask RL learner needs what that one lacks: masks for tasks absent
from a batch, losses that go negative (SAC's actor and temperature losses), identical weights on
every rank under ``torch.distributed``, and no host synchronisation per step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ._distributed import mean_over_ranks
from .base import Balancer, as_param_list


class FAMO(Balancer):
    r"""The FAMO balancer (paper Algorithm 1).

    Each step has two phases. :meth:`combine` returns the scalar whose gradient is

    .. math::
        \sum_i \frac{c\, z_i}{\ell_i} \nabla \ell_i, \qquad
        c = \Big(\sum_i \frac{z_i}{\ell_i}\Big)^{-1}, \qquad z = \operatorname{softmax}(\xi),

    the gradient of :math:`c \sum_i z_i \log \ell_i` with :math:`c` held constant, where
    :math:`\ell_i` is the shifted loss ``loss_i - floor_i + eps``. After the optimizer step,
    :meth:`update` takes the losses re-measured on the same batch,
    :math:`\delta_i = \log \ell_i^{\text{before}} - \log \ell_i^{\text{after}}`, and steps the
    logits :math:`\xi` with Adam on the gradient :math:`J_{\text{softmax}}(\xi)^\top \delta`,
    learning rate ``weight_lr`` (the paper's :math:`\beta`) and L2 decay ``weight_decay``
    (the paper's :math:`\gamma`).

    **Floors.** With ``min_losses`` given, they are declared lower bounds of the losses and a loss
    below its floor is a misuse: on the CPU it raises :class:`ValueError` at once; on an
    accelerator (where checking would force a host synchronisation every step) the shifted loss is
    clamped to ``eps``, the event counted in :attr:`floor_violations`, and :meth:`check` raises.
    With ``min_losses=None`` (the default) each task's floor is estimated on the fly as the running
    minimum of ``loss - |loss|``: ``0`` while a task's loss stays non-negative, which is exactly the
    paper's setting, and twice the lowest loss seen once it goes negative, so the shifted loss
    stays at least ``|loss|`` and never reaches zero. Floors only move down.

    **Masks.** Absent tasks contribute nothing to the update, and their logits (with their Adam
    moments and step counts) are left untouched: the softmax Jacobian is taken over the present
    tasks only. The normaliser :math:`c` still counts an absent task, at its last known loss, so
    that the update keeps the scale it has on full batches; the present tasks' effective weights
    then sum to less than one. (Restricting :math:`c` to the present tasks lets one batch that
    misses the small-loss tasks take a raw, unbalanced step on the large-loss ones.)

    **Re-measuring on fewer rows.** :meth:`update` may be given losses after the step measured on
    a subset of the batch's rows, together with the same rows' losses before the step
    (``task_losses_before``); :math:`\delta` then compares those two, a paired difference, and the
    losses that :meth:`combine` saw serve only for the model step. This is not in the paper, which
    re-measures the whole batch.

    **Distributed.** When a process group with several ranks is initialised, the ``num_tasks``
    detached losses are averaged across ranks in both phases (never gradients), so every rank
    computes the same weights; the local losses still carry each rank's gradient, which DDP then
    averages.

    :param num_tasks: number of tasks ``K``.
    :param weight_lr: Adam learning rate of the logits, the paper's :math:`\beta`.
    :param weight_decay: L2 decay on the logits, the paper's :math:`\gamma`. The method's one
        sensitive knob: 1e-3 in the paper's Algorithm 2, 1e-2 in the authors' MT10 run.
    :param min_losses: declared per-task lower bounds, shape ``(K,)``, or ``None`` to estimate
        floors on the fly (see above).
    :param eps: added to every shifted loss, as in the paper; must be positive.
    :param betas: Adam's moment decay rates for the logits.
    :param adam_eps: Adam's denominator term for the logits.
    :param process_group: the group to average losses over; ``None`` means the default group
        whenever one is initialised.

    .. warning::
        The loss measured by :meth:`combine` is kept until :meth:`update` and is not part of
        :meth:`state_dict`: save checkpoints after :meth:`update`, not between the two phases.
    """

    requires_losses_after = True

    logits: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    adam_steps: Tensor
    floors: Tensor
    floor_violations: Tensor
    last_losses: Tensor
    effective_weights: Tensor

    def __init__(
        self,
        num_tasks: int,
        weight_lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: Sequence[float] | Tensor | None = None,
        eps: float = 1e-8,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__(num_tasks)
        _check_non_negative("weight_lr", weight_lr)
        _check_non_negative("weight_decay", weight_decay)
        if not eps > 0:
            raise ValueError(f"eps must be positive, found {eps!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), found {betas!r}")
        _check_non_negative("adam_eps", adam_eps)
        self.weight_lr = float(weight_lr)
        self.weight_decay = float(weight_decay)
        self.eps = float(eps)
        self.betas = (float(betas[0]), float(betas[1]))
        self.adam_eps = float(adam_eps)
        self.process_group = process_group
        self.declared_floors = min_losses is not None

        zeros = torch.zeros(num_tasks)
        self.register_buffer("logits", zeros.clone())
        self.register_buffer("exp_avg", zeros.clone())
        self.register_buffer("exp_avg_sq", zeros.clone())
        # Per-task step counts: a task absent from a batch does not advance its bias correction.
        self.register_buffer("adam_steps", zeros.clone())
        if min_losses is None:
            floors = torch.full((num_tasks,), float("inf"))
        else:
            floors = _as_floor_tensor(min_losses, num_tasks)
        self.register_buffer("floors", floors)
        self.register_buffer("floor_violations", torch.zeros((), dtype=torch.long))
        # Each task's most recent (rank-averaged) loss; NaN until the task is first seen.
        self.register_buffer("last_losses", torch.full((num_tasks,), float("nan")))
        self.register_buffer("effective_weights", zeros + 1.0 / num_tasks, persistent=False)
        self._pending: tuple[Tensor, Tensor] | None = None

    # ----------------------------------------------------------------------------------------------
    # Public API.

    @property
    def weights(self) -> Tensor:
        """Softmax weights :math:`z`, shape ``(num_tasks,)``."""
        return torch.softmax(self.logits, dim=0).detach()

    def combine(self, task_losses: Tensor, mask: Tensor | None = None) -> Tensor:
        """Return the scalar to backpropagate for this batch, and remember the losses.

        :param task_losses: differentiable task losses, shape ``(num_tasks,)``.
        :param mask: optional boolean ``(num_tasks,)``; ``False`` marks an absent task.
        :return: a scalar whose value is :math:`c \\sum_i z_i \\log \\ell_i` and whose gradient is
            FAMO's update direction. It has the dtype and device of ``task_losses``.
        """
        losses = self._check_losses(task_losses)
        self._follow(losses)
        local_present = self._check_mask(mask, losses)
        raw = losses.detach().to(self.logits.dtype)
        raw, present = mean_over_ranks(raw, local_present & torch.isfinite(raw), self.process_group)

        floors = self._floors_after_seeing(raw, present)
        shifted = self._shift(raw, floors, present)
        all_weights = torch.softmax(self.logits, dim=0)
        weights = torch.where(present, all_weights, 0.0)
        ratio = weights / shifted
        # Absent tasks enter the normaliser c with their last known loss, so that the step size
        # does not jump when a batch happens to miss the tasks with the smallest losses.
        remembered = ~present & torch.isfinite(self.last_losses)
        absent_ratio = torch.where(
            remembered, all_weights / self._shift(self.last_losses, floors, remembered), 0.0
        )
        denominator = ratio.sum() + absent_ratio.sum()
        scale = 1.0 / denominator.clamp(min=torch.finfo(ratio.dtype).tiny)
        effective = scale * ratio
        self.last_losses.copy_(torch.where(present, raw, self.last_losses))
        objective = scale * (weights * torch.log(shifted)).sum()

        # The value is the paper's objective; the gradient is its gradient, written as a weighted
        # sum of the local losses so that on every rank the weights come from the averaged losses
        # and a local loss need not lie above the (global) floor.
        local = torch.where(local_present, losses, 0.0)
        surrogate = (effective.to(losses.dtype) * local).sum()
        self.effective_weights = effective
        self._pending = (raw, present)
        return objective.to(losses.dtype) + (surrogate - surrogate.detach())

    def backward(
        self, task_losses: Tensor, params: Iterable[Tensor], mask: Tensor | None = None
    ) -> None:
        """Backpropagate :meth:`combine` into ``params`` (see :meth:`Balancer.backward`)."""
        param_list = as_param_list(params)
        self.combine(task_losses, mask).backward(inputs=param_list)

    @torch.no_grad()
    def update(
        self,
        task_losses_after: Tensor,
        mask: Tensor | None = None,
        task_losses_before: Tensor | None = None,
    ) -> None:
        """Step the logits from the losses re-measured on the same batch after the model step.

        :param task_losses_after: task losses after the optimizer step, shape ``(num_tasks,)``.
        :param mask: optional boolean ``(num_tasks,)``; tasks absent here or in :meth:`combine`
            leave their logits untouched.
        :param task_losses_before: the losses before the step on the same rows as
            ``task_losses_after``, shape ``(num_tasks,)``, when those rows are a subset of the
            batch that :meth:`combine` saw; ``None`` compares with :meth:`combine`'s losses, as in
            the paper. Estimated floors are lowered to admit them too.

        .. warning::
            Under ``torch.distributed`` every rank must pass ``task_losses_before`` or none: it is
            averaged over the ranks with a collective call.
        """
        if self._pending is None:
            raise RuntimeError(
                "FAMO.update() needs the losses from before the step: call combine() or "
                "backward() on the same batch first, then optimizer.step(), then update()"
            )
        losses = self._check_losses(task_losses_after, "task_losses_after")
        self._follow(losses)
        local_present = self._check_mask(mask, losses)
        after = losses.detach().to(self.logits.dtype)
        after, present_after = mean_over_ranks(
            after, local_present & torch.isfinite(after), self.process_group
        )
        before, present_before = self._pending
        if task_losses_before is not None:
            before, present_before = self._paired_before(
                task_losses_before, local_present, present_before
            )
        present = present_before & present_after

        floors = self._floors_after_seeing(after, present)
        delta = torch.where(
            present,
            torch.log(self._shift(before, floors, present))
            - torch.log(self._shift(after, floors, present)),
            0.0,
        )
        # Softmax Jacobian restricted to the present tasks: J^T delta = z * (delta - z . delta).
        weights = torch.where(present, torch.softmax(self.logits, dim=0), 0.0)
        weights = weights / weights.sum().clamp(min=torch.finfo(weights.dtype).tiny)
        grad = weights * (delta - (weights * delta).sum())
        self._adam_step(grad, present)
        self._pending = None

    def check(self) -> None:
        """Raise if any loss fell below its declared floor since construction.

        On the CPU violations raise immediately; call this at a point where the host syncs anyway
        (logging, checkpointing) when training on an accelerator.
        """
        count = int(self.floor_violations)
        if count:
            raise ValueError(
                f"FAMO saw {count} task loss(es) below the declared min_losses "
                f"{self.floors.tolist()}; min_losses must be lower bounds of the losses "
                "(lower them, or pass min_losses=None to estimate floors on the fly)"
            )

    def extra_repr(self) -> str:
        floors = "declared" if self.declared_floors else "estimated"
        return (
            f"num_tasks={self.num_tasks}, weight_lr={self.weight_lr}, "
            f"weight_decay={self.weight_decay}, floors={floors}, eps={self.eps}"
        )

    # ----------------------------------------------------------------------------------------------
    # Steps of the algorithm.

    def _paired_before(
        self, task_losses_before: Tensor, local_present: Tensor, present_before: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The rank-averaged losses before the step on the re-measured rows, and where present;
        estimated floors are lowered to admit them."""
        losses = self._check_losses(task_losses_before, "task_losses_before")
        before = losses.detach().to(device=self.logits.device, dtype=self.logits.dtype)
        before, present = mean_over_ranks(
            before, local_present & torch.isfinite(before), self.process_group
        )
        present = present_before & present
        self._floors_after_seeing(before, present)
        return before, present

    def _follow(self, losses: Tensor) -> None:
        """Move the state to the losses' device, widening its dtype if the losses are wider."""
        dtype = torch.promote_types(losses.dtype, self.logits.dtype)
        if self.logits.device != losses.device or self.logits.dtype != dtype:
            self.to(device=losses.device, dtype=dtype)

    def _floors_after_seeing(self, losses: Tensor, present: Tensor) -> Tensor:
        """The floors to shift ``losses`` by, first lowering estimated floors to admit them."""
        if self.declared_floors:
            self._count_violations(losses, present)
            return self.floors
        candidates = torch.where(present, losses - losses.abs(), float("inf"))
        self.floors.copy_(torch.minimum(self.floors, candidates))
        return self.floors

    def _count_violations(self, losses: Tensor, present: Tensor) -> None:
        below = present & (losses < self.floors)
        if losses.device.type == "cpu" and bool(below.any()):
            task = int(below.nonzero()[0, 0])
            raise ValueError(
                f"FAMO: the loss of task {task} is {float(losses[task]):.6g}, below its declared "
                f"floor min_losses[{task}] = {float(self.floors[task]):.6g}; min_losses must be "
                "lower bounds of the losses (lower them, or pass min_losses=None to estimate "
                "floors on the fly)"
            )
        self.floor_violations += below.sum()

    def _shift(self, losses: Tensor, floors: Tensor, present: Tensor) -> Tensor:
        """``loss - floor + eps``, kept >= eps; 1 for absent tasks so that logs stay finite."""
        shifted = (losses - floors + self.eps).clamp(min=self.eps)
        return torch.where(present, shifted, 1.0)

    def _adam_step(self, grad: Tensor, present: Tensor) -> None:
        """Adam with L2 decay (as ``torch.optim.Adam``), applied to present tasks only."""
        beta1, beta2 = self.betas
        grad = grad + self.weight_decay * self.logits
        steps = self.adam_steps + present.to(self.adam_steps.dtype)
        exp_avg = torch.where(present, self.exp_avg.lerp(grad, 1.0 - beta1), self.exp_avg)
        exp_avg_sq = torch.where(
            present, self.exp_avg_sq * beta2 + (1.0 - beta2) * grad * grad, self.exp_avg_sq
        )
        safe_steps = steps.clamp(min=1.0)
        bias_correction1 = 1.0 - beta1**safe_steps
        bias_correction2_sqrt = (1.0 - beta2**safe_steps).sqrt()
        denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + self.adam_eps
        step = self.weight_lr / bias_correction1 * exp_avg / denom
        self.logits.copy_(torch.where(present, self.logits - step, self.logits))
        self.exp_avg.copy_(exp_avg)
        self.exp_avg_sq.copy_(exp_avg_sq)
        self.adam_steps.copy_(steps)


def _check_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be non-negative, found {value!r}")


def _as_floor_tensor(min_losses: Sequence[float] | Tensor, num_tasks: int) -> Tensor:
    floors = torch.as_tensor(min_losses, dtype=torch.float32).detach().clone().cpu()
    if floors.shape != (num_tasks,):
        raise ValueError(
            f"min_losses must have one value per task, shape ({num_tasks},), "
            f"found shape {tuple(floors.shape)}"
        )
    if not bool(torch.isfinite(floors).all()):
        raise ValueError(f"min_losses must be finite, found {floors.tolist()}")
    return floors
