"""Balancers that weight the losses themselves: one backward pass, like FAMO.

These are short formulas rather than algorithms, written here because each must honour the task
mask and expose the weights it used for logging, which torchjd's scalarizers do not offer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .base import Balancer, as_param_list


class _WeightedSum(Balancer):
    """Backpropagates ``sum_i weight_i * loss_i`` over the present tasks."""

    last_weights: Tensor

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.register_buffer("last_weights", torch.full((num_tasks,), 1.0 / num_tasks))

    @property
    def weights(self) -> Tensor:
        return self.last_weights.detach().clone()

    def combine(self, task_losses: Tensor, mask: Tensor | None = None) -> Tensor:
        """The scalar to backpropagate, shape ``()``, with the dtype of ``task_losses``."""
        losses = self._check_losses(task_losses)
        present = self._check_mask(mask, losses)
        weights = torch.where(present, self._task_weights(losses.detach(), present), 0.0)
        self.last_weights = weights.detach().to(self.last_weights)
        return (weights.to(losses.dtype) * torch.where(present, losses, 0.0)).sum()

    def backward(
        self, task_losses: Tensor, params: Iterable[Tensor], mask: Tensor | None = None
    ) -> None:
        self.combine(task_losses, mask).backward(inputs=as_param_list(params))

    def _task_weights(self, losses: Tensor, present: Tensor) -> Tensor:
        raise NotImplementedError


class LinearScalarization(_WeightedSum):
    """Linear scalarization (``ls``): the mean of the present tasks' losses.

    The baseline every multitask method is measured against (MT-SAC in Meta-World papers).
    """

    def _task_weights(self, losses: Tensor, present: Tensor) -> Tensor:
        count = present.sum().clamp(min=1).to(losses.dtype)
        return torch.ones_like(losses) / count


class RandomWeighting(_WeightedSum):
    """Random loss weighting (``rlw``, Lin et al. 2022): fresh softmax-of-Gaussian weights per step.

    Draws from torch's global generator on the losses' device, so ``torch.manual_seed`` makes it
    repeatable.
    """

    def _task_weights(self, losses: Tensor, present: Tensor) -> Tensor:
        logits = torch.randn(self.num_tasks, device=losses.device, dtype=losses.dtype)
        return torch.softmax(torch.where(present, logits, -torch.inf), dim=0)


class UncertaintyWeighting(Balancer):
    r"""Uncertainty weighting (``uw``, Kendall, Gal and Cipolla, CVPR 2018).

    Minimises :math:`\sum_i \tfrac12 e^{-s_i} \ell_i + \tfrac12 s_i` over the model and the
    per-task log-variances :math:`s`, which start at zero. The balancer steps :math:`s` itself
    with Adam, right after computing its gradient, which equals stepping it jointly with the model.

    :param num_tasks: number of tasks ``K``.
    :param lr: Adam learning rate of the log-variances (the paper trains them jointly with the
        model, so use the model's learning rate).

    .. warning::
        Losses must be non-negative: for a negative loss the objective has no minimum in
        :math:`s_i` and the weight grows without bound. Negative losses raise ``ValueError``.
        FAMO handles them.
    """

    def __init__(self, num_tasks: int, lr: float = 3e-4) -> None:
        super().__init__(num_tasks)
        if not lr > 0:
            raise ValueError(f"lr must be positive, found {lr!r}")
        self.lr = float(lr)
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))
        self.optimizer = torch.optim.Adam([self.log_vars], lr=self.lr)

    @property
    def weights(self) -> Tensor:
        """The loss weights :math:`\\tfrac12 e^{-s_i}`, shape ``(num_tasks,)``."""
        return (0.5 * torch.exp(-self.log_vars)).detach()

    def combine(self, task_losses: Tensor, mask: Tensor | None = None) -> Tensor:
        """The scalar to backpropagate (depends on the model and on the log-variances)."""
        losses = self._check_losses(task_losses)
        present = self._check_mask(mask, losses)
        negative = present & (losses.detach() < 0)
        if bool(negative.any()):
            task = int(negative.nonzero()[0, 0])
            value = float(losses.detach()[task])
            raise ValueError(
                f"uncertainty weighting needs non-negative losses, found {value:.6g} "
                f"for task {task}; use FAMO (which handles negative losses) or shift the losses"
            )
        if losses.device != self.log_vars.device:
            raise ValueError(
                f"task_losses are on {losses.device} but the balancer is on "
                f"{self.log_vars.device}: move it with balancer.to(device) before training"
            )
        log_vars = self.log_vars.to(losses.dtype)
        terms = 0.5 * torch.exp(-log_vars) * losses + 0.5 * log_vars
        return torch.where(present, terms, 0.0).sum()

    def backward(
        self, task_losses: Tensor, params: Iterable[Tensor], mask: Tensor | None = None
    ) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.combine(task_losses, mask).backward(inputs=[*as_param_list(params), self.log_vars])
        self.optimizer.step()

    def get_extra_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
