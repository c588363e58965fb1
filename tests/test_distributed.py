"""FAMO under torch.distributed: two CPU processes (gloo) must hold identical weights."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from famo_rl import FAMO

STEPS = 40
NUM_TASKS = 3


def local_losses(rank: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Different losses on each rank, drifting negative for task 2 (an actor-like loss)."""
    generator = torch.Generator().manual_seed(1000 * rank + t)
    before = torch.rand(NUM_TASKS, generator=generator) * torch.tensor([1.0, 10.0, 1.0])
    before[2] -= 0.1 * t
    after = before * (0.5 + torch.rand(NUM_TASKS, generator=generator))
    return before, after


def local_mask(rank: int, t: int) -> torch.Tensor:
    """Task 1 is absent on rank 0 every third step: the ranks' masks differ."""
    return torch.tensor([True, not (rank == 0 and t % 3 == 0), True])


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        famo = FAMO(NUM_TASKS, weight_decay=1e-2)
        params = torch.zeros(NUM_TASKS, requires_grad=True)
        for t in range(STEPS):
            before, after = local_losses(rank, t)
            famo.backward(before + params, [params], local_mask(rank, t))
            famo.update(after, local_mask(rank, t))
        torch.save(
            {"state": famo.state_dict(), "grad": params.grad}, Path(out_dir) / f"rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_ranks_hold_identical_weights_equal_to_single_process_on_mean_losses(
    tmp_path: Path,
) -> None:
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(ranks[1]["state"][key], value, rtol=0, atol=0, msg=key)

    # One process fed the losses averaged over the ranks where each task is present.
    single = FAMO(NUM_TASKS, weight_decay=1e-2)
    for t in range(STEPS):
        pairs = [local_losses(r, t) for r in range(2)]
        masks = torch.stack([local_mask(r, t) for r in range(2)]).float()
        count = masks.sum(0)
        before = sum(m * p[0] for m, p in zip(masks, pairs, strict=True)) / count
        after = sum(m * p[1] for m, p in zip(masks, pairs, strict=True)) / count
        single.combine(before)
        single.update(after)
    torch.testing.assert_close(ranks[0]["state"]["logits"], single.logits)
    assert (single.weights - 1 / NUM_TASKS).abs().max() > 0.01
