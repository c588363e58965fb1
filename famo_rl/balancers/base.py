"""The interface every balancer implements, and the input checks they share.

A *balancer* turns ``num_tasks`` task losses into one parameter update. Every balancer goes
through the same two phases, so a training loop never needs to know which one it holds::

    optimizer.zero_grad()
    balancer.backward(task_losses, params)        # fills params' .grad
    optimizer.step()
    if balancer.requires_losses_after:            # FAMO: re-measure the losses
        with torch.no_grad():
            balancer.update(compute_task_losses())

A loop that re-measures on a subset of the batch's rows, to save most of that forward pass, also
hands :meth:`Balancer.update` the same rows' losses from before the step (averaged from the
per-row losses it already has), so that the change it sees is measured on the same rows::

    balancer.update(task_losses_on(rows), task_losses_before=losses_before_on(rows))

Balancers are :class:`torch.nn.Module` objects so that ``.to()``, ``state_dict()`` and
``load_state_dict()`` behave as everywhere else in PyTorch. Their internal state (FAMO's logits,
uncertainty weighting's log-variances) is stepped by the balancer itself: never add
``balancer.parameters()`` to your model's optimizer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch
from torch import Tensor, nn


class Balancer(nn.Module, ABC):
    """Turns a vector of task losses into gradients on shared parameters.

    :param num_tasks: number of tasks ``K``; every loss vector must have shape ``(K,)``.

    Subclasses implement :meth:`backward` and :attr:`weights`; those that learn from how the losses
    moved across an optimizer step set :attr:`requires_losses_after` and implement :meth:`update`.
    """

    #: Whether :meth:`update` must be called with the losses measured after the optimizer step.
    requires_losses_after: bool = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer, found {num_tasks!r}")
        self.num_tasks = num_tasks

    @abstractmethod
    def backward(
        self, task_losses: Tensor, params: Iterable[Tensor], mask: Tensor | None = None
    ) -> None:
        """Accumulate the balanced update direction into the ``.grad`` of ``params``.

        :param task_losses: differentiable task losses, shape ``(num_tasks,)``.
        :param params: the parameters to produce gradients for (usually all of the model's).
            Gradients are accumulated, as with :meth:`torch.Tensor.backward`.
        :param mask: optional boolean tensor of shape ``(num_tasks,)``; ``False`` marks a task
            absent from the batch. Absent tasks contribute nothing. Their losses must still be
            finite (for example zero): compute per-task means as ``sum / count.clamp(min=1)``.
        """

    def update(
        self,
        task_losses_after: Tensor,
        mask: Tensor | None = None,
        task_losses_before: Tensor | None = None,
    ) -> None:
        """Learn from the losses measured on the same batch after the optimizer step.

        Only balancers with :attr:`requires_losses_after` use it; for the others it does nothing,
        so a loop may call it unconditionally (at the price of an extra forward pass).

        :param task_losses_after: task losses after the step, shape ``(num_tasks,)``; gradients
            are not needed.
        :param mask: as in :meth:`backward`; with ``task_losses_before`` it applies to both.
        :param task_losses_before: the losses before the step *on the rows that*
            ``task_losses_after`` *was measured on*, shape ``(num_tasks,)``, when those are a
            subset of the batch that :meth:`backward` saw. ``None`` (the default) compares
            ``task_losses_after`` with the losses handed to :meth:`backward`.
        """
        del task_losses_after, mask, task_losses_before

    @property
    @abstractmethod
    def weights(self) -> Tensor:
        """Current task weights, shape ``(num_tasks,)``, detached, for logging."""

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"

    # ----------------------------------------------------------------------------------------------
    # Input checks shared by every balancer.

    def _check_losses(self, task_losses: Tensor, name: str = "task_losses") -> Tensor:
        if not isinstance(task_losses, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, found {type(task_losses).__name__}")
        if task_losses.shape != (self.num_tasks,):
            raise ValueError(
                f"{name} must have shape ({self.num_tasks},) (one loss per task), "
                f"found shape {tuple(task_losses.shape)}"
            )
        if not task_losses.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, found {task_losses.dtype}")
        return task_losses

    def _check_mask(self, mask: Tensor | None, like: Tensor) -> Tensor:
        """Return a boolean mask on ``like``'s device; all-present when ``mask`` is None."""
        if mask is None:
            return torch.ones(self.num_tasks, dtype=torch.bool, device=like.device)
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor of booleans, found {type(mask).__name__}")
        if mask.shape != (self.num_tasks,):
            raise ValueError(
                f"mask must have shape ({self.num_tasks},), found shape {tuple(mask.shape)}"
            )
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must have dtype torch.bool, found {mask.dtype}")
        return mask.to(like.device, non_blocking=True)


def as_param_list(params: Iterable[Tensor]) -> list[Tensor]:
    """Materialise ``params`` (often a generator) and check that there is something to update."""
    if isinstance(params, Tensor):
        params = [params]
    param_list = [p for p in params if p.requires_grad]
    if not param_list:
        raise ValueError("params holds no tensor that requires grad: nothing would be updated")
    return param_list
