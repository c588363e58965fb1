"""Averaging task losses across ranks so that every rank's balancer sees the same numbers.

Only ``num_tasks`` scalars cross the network per call (never gradients), and the collective runs
asynchronously on the losses' device, so no host synchronisation is added.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed(group: dist.ProcessGroup | None) -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def mean_over_ranks(
    values: Tensor, present: Tensor, group: dist.ProcessGroup | None
) -> tuple[Tensor, Tensor]:
    """Average ``values`` over the ranks where each task is present.

    :param values: detached per-task values, shape ``(num_tasks,)``.
    :param present: boolean mask, shape ``(num_tasks,)``.
    :param group: process group to reduce over (``None``: the default group).
    :return: the averaged values and the mask of tasks present on at least one rank. Without an
        initialised multi-rank group both are returned unchanged.
    """
    if not is_distributed(group):
        return values, present
    packed = torch.stack([torch.where(present, values, 0.0), present.to(values.dtype)])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    counts = packed[1]
    return packed[0] / counts.clamp(min=1.0), counts > 0
