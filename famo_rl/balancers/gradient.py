"""Gradient-manipulation balancers (PCGrad, CAGrad, Nash-MTL, MGDA, IMTL-G, UPGrad, Aligned-MTL).

They need the full ``(num_tasks, num_params)`` Jacobian, one backward pass per task, which is the
O(K) cost FAMO avoids. The aggregation itself comes from torchjd, a library made for exactly this;
this module only adapts it to the :class:`~famo_rl.balancers.base.Balancer` interface (masks,
weights for logging, state dicts).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torchjd.aggregation import Aggregator
from torchjd.autojac import backward as jacobian_backward
from torchjd.autojac import jac_to_grad

from .base import Balancer, as_param_list


class JacobianBalancer(Balancer):
    """Aggregates the task-loss Jacobian with a torchjd aggregator.

    :param num_tasks: number of tasks ``K``.
    :param aggregator: a torchjd aggregator that returns its weights (a ``WeightedAggregator``).
    :param masks_supported: whether the aggregator accepts fewer rows than ``K`` (Nash-MTL's
        solver is built for exactly ``K`` tasks).

    The :attr:`weights` are the coefficients the aggregator put on each task's gradient in the last
    update (zero for absent tasks); they need not be positive or sum to one.
    """

    last_weights: Tensor

    def __init__(
        self, num_tasks: int, aggregator: Aggregator, masks_supported: bool = True
    ) -> None:
        super().__init__(num_tasks)
        self.aggregator = aggregator
        self.masks_supported = masks_supported
        self.register_buffer("last_weights", torch.full((num_tasks,), 1.0 / num_tasks))

    @property
    def weights(self) -> Tensor:
        return self.last_weights.detach().clone()

    def backward(
        self, task_losses: Tensor, params: Iterable[Tensor], mask: Tensor | None = None
    ) -> None:
        losses = self._check_losses(task_losses)
        param_list = as_param_list(params)
        rows = torch.arange(self.num_tasks, device=losses.device)
        if mask is not None:
            # These methods synchronise with the host anyway (solvers, Gramians on the CPU).
            rows = self._check_mask(mask, losses).nonzero().squeeze(1)
            if len(rows) == 0:
                return
            if len(rows) < self.num_tasks and not self.masks_supported:
                raise NotImplementedError(
                    f"{type(self.aggregator).__name__} with absent tasks is not supported: its "
                    f"solver is built for exactly {self.num_tasks} tasks"
                )
        jacobian_backward(losses[rows], inputs=param_list)
        weights = jac_to_grad(param_list, self.aggregator)
        last = torch.zeros_like(self.last_weights)
        if weights is not None:
            last[rows.to(last.device)] = weights.detach().to(last)
        self.last_weights = last

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, aggregator={self.aggregator!r}"


class NashMTLBalancer(JacobianBalancer):
    """Nash-MTL (Navon et al., ICML 2022) through torchjd, with its solver state in state dicts."""

    def __init__(
        self,
        num_tasks: int,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
    ) -> None:
        from torchjd.aggregation import NashMTL

        aggregator = NashMTL(
            n_tasks=num_tasks,
            max_norm=max_norm,
            update_weights_every=update_weights_every,
            optim_niter=optim_niter,
        )
        super().__init__(num_tasks, aggregator, masks_supported=False)

    def backward(
        self, task_losses: Tensor, params: Iterable[Tensor], mask: Tensor | None = None
    ) -> None:
        with warnings.catch_warnings():
            # torchjd's program re-solves with new data each step; cvxpy warns that it cannot
            # cache the compilation, which is expected and says nothing about the result.
            warnings.filterwarnings("ignore", message=".*not DPP.*", category=UserWarning)
            super().backward(task_losses, params, mask)

    def get_extra_state(self) -> dict[str, Any]:
        weighting = self.aggregator.weighting
        return {
            "step": float(weighting.step),
            "prvs_alpha": torch.as_tensor(weighting.prvs_alpha).clone(),
            "normalization_factor": torch.as_tensor(weighting.normalization_factor).clone(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        weighting = self.aggregator.weighting
        weighting.prvs_alpha = state["prvs_alpha"].numpy().copy()
        weighting.normalization_factor = state["normalization_factor"].numpy().copy()
        weighting.step = float(state["step"])
        if weighting.step > 0:
            # torchjd builds the convex program on its first call only (when step == 0); a restored
            # solver past that point must build it here, warm-started from the restored weights.
            weighting._init_optim_problem()
