"""FAMO's behaviour beyond the paper's happy path: floors, masks, bad values, state, dtypes."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from famo_rl import FAMO


def step(famo: FAMO, before: torch.Tensor, after: torch.Tensor, mask=None) -> torch.Tensor:
    """One combine/update pair on leaf losses; returns d combined / d losses."""
    losses = before.clone().requires_grad_(True)
    combined = famo.combine(losses, mask)
    (grad,) = torch.autograd.grad(combined, losses)
    famo.update(after, mask)
    return grad


def test_starts_uniform_and_weights_sum_to_one() -> None:
    famo = FAMO(5)
    torch.testing.assert_close(famo.weights, torch.full((5,), 0.2))
    step(famo, torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([0.5, 2, 3, 4, 5]))
    assert famo.weights.sum().item() == pytest.approx(1.0)
    # Task 0 improved most, so its weight drops (the paper's balancing direction).
    assert famo.weights[0] < famo.weights[1:].min()


def test_update_without_combine_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="combine"):
        FAMO(2).update(torch.ones(2))


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        (torch.ones(3), r"shape \(2,\)"),
        (torch.ones(2, 1), r"shape \(2,\)"),
        (torch.ones(2, dtype=torch.long), "floating-point"),
    ],
)
def test_bad_loss_vectors_are_named(losses: torch.Tensor, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        FAMO(2).combine(losses)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_lr": -1.0}, "weight_lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"eps": 0.0}, "eps"),
        ({"min_losses": [0.0]}, "min_losses"),
        ({"min_losses": [0.0, float("nan")]}, "min_losses"),
    ],
)
def test_bad_options_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FAMO(2, **kwargs)


def test_loss_below_declared_floor_raises_on_cpu_naming_the_task() -> None:
    famo = FAMO(3, min_losses=[0.0, -1.0, 0.0])
    with pytest.raises(ValueError, match=r"task 1 is -2.*min_losses\[1\] = -1"):
        famo.combine(torch.tensor([1.0, -2.0, 1.0]))
    # A loss exactly at its floor is fine: eps keeps the logarithm finite.
    assert torch.isfinite(famo.combine(torch.tensor([0.0, -1.0, 0.0])))


def test_estimated_floors_handle_negative_losses_without_nan() -> None:
    """Actor-like losses drifting far below zero never produce NaN or inf."""
    famo = FAMO(3)
    generator = torch.Generator().manual_seed(0)
    level = torch.tensor([1.0, -1.0, 10.0])
    for t in range(500):
        before = level - 0.05 * t * torch.tensor([0.0, 3.0, 1.0])
        after = before - torch.rand(3, generator=generator)
        grad = step(famo, before, after)
        assert torch.isfinite(grad).all()
        assert torch.isfinite(famo.logits).all()
    assert (famo.floors <= 2 * after.clamp(max=0)).all()
    # The non-negative task keeps the paper's floor of zero.
    assert famo.floors[0] == 0.0


def test_estimated_floor_is_the_papers_setting_for_positive_losses() -> None:
    declared, estimated = FAMO(2, min_losses=[0.0, 0.0]), FAMO(2)
    for before, after in [([3.0, 0.2], [2.0, 0.19]), ([2.0, 0.19], [1.5, 0.1])]:
        step(declared, torch.tensor(before), torch.tensor(after))
        step(estimated, torch.tensor(before), torch.tensor(after))
    torch.testing.assert_close(declared.logits, estimated.logits)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=1e-12, max_value=1e12),
            st.floats(min_value=-1e12, max_value=-1e-12),
            st.just(0.0),
        ),
        min_size=4,
        max_size=4,
    ),
    st.floats(min_value=1e-3, max_value=1e3),
)
def test_extreme_losses_stay_finite(values: list[float], factor: float) -> None:
    famo = FAMO(4)
    before = torch.tensor(values, dtype=torch.float64)
    for _ in range(3):
        after = before * factor
        grad = step(famo, before, after)
        assert torch.isfinite(grad).all()
        assert torch.isfinite(famo.weights).all()
        assert famo.weights.sum().item() == pytest.approx(1.0)
        before = after


def test_absent_tasks_are_untouched_and_contribute_nothing() -> None:
    """Task 2 always absent: tasks 0 and 1 evolve exactly as a two-task FAMO."""
    three, two = FAMO(3), FAMO(2)
    mask = torch.tensor([True, True, False])
    generator = torch.Generator().manual_seed(1)
    for _ in range(100):
        before = torch.rand(3, generator=generator) + 0.1
        after = before * (0.5 + torch.rand(3, generator=generator))
        before[2] = 1e6  # garbage for the absent task, finite as documented
        grad3 = step(three, before, after, mask)
        grad2 = step(two, before[:2], after[:2])
        assert grad3[2] == 0.0
        torch.testing.assert_close(grad3[:2], grad2)
    torch.testing.assert_close(three.logits[:2], two.logits)
    assert three.logits[2] == 0.0 and three.adam_steps[2] == 0 and three.exp_avg[2] == 0


def test_absent_task_keeps_the_step_scale_through_its_last_known_loss() -> None:
    """A batch missing the small-loss task must not take a raw step on the large-loss task."""
    famo = FAMO(2)
    step(famo, torch.tensor([1e-3, 1e3]), torch.tensor([1e-3, 1e3]))
    grad = step(
        famo, torch.tensor([5.0, 1e3]), torch.tensor([5.0, 1e3]), torch.tensor([False, True])
    )
    z = famo.weights
    expected = (z[1] / 1e3) / (z[0] / 1e-3 + z[1] / 1e3)
    assert grad[0] == 0.0
    torch.testing.assert_close(grad[1], expected, rtol=1e-4, atol=0)
    assert grad[1] < 1e-3  # restricted to the present task alone, the weight would be 1


def test_non_finite_after_loss_skips_that_task_only() -> None:
    famo = FAMO(3)
    step(famo, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, float("nan"), float("inf")]))
    assert torch.isfinite(famo.logits).all()
    assert famo.adam_steps.tolist() == [1.0, 0.0, 0.0]


def test_state_dict_round_trip_through_weights_only_load() -> None:
    generator = torch.Generator().manual_seed(2)
    famo = FAMO(4, weight_decay=1e-2, min_losses=[-1.0, 0.0, 0.0, -3.0])
    for _ in range(20):
        before = torch.rand(4, generator=generator)
        step(famo, before, before * 0.9)
    buffer = io.BytesIO()
    torch.save(famo.state_dict(), buffer)
    buffer.seek(0)
    restored = FAMO(4, weight_decay=1e-2, min_losses=[0.0, 0.0, 0.0, 0.0])
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for name, value in famo.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value, msg=name)
    # Both continue identically, Adam moments included.
    for _ in range(10):
        before = torch.rand(4, generator=generator)
        step(famo, before, before * 0.8)
        step(restored, before, before * 0.8)
    torch.testing.assert_close(restored.logits, famo.logits, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float32])
def test_follows_loss_dtype(dtype: torch.dtype) -> None:
    famo = FAMO(3)
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=dtype, requires_grad=True)
    combined = famo.combine(losses)
    assert combined.dtype == dtype
    (grad,) = torch.autograd.grad(combined, losses)
    assert grad.dtype == dtype
    famo.update(torch.tensor([0.5, 2.0, 3.0], dtype=dtype))
    # State never narrows below float32, and widens to float64 when the losses do.
    assert famo.logits.dtype == torch.promote_types(dtype, torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_follows_device_without_host_synchronisation() -> None:
    famo = FAMO(3, min_losses=[0.0, 0.0, 0.0])
    losses = torch.tensor([1.0, 2.0, 3.0], device="cuda", requires_grad=True)
    after = torch.tensor([0.5, 2.0, 3.0], device="cuda")
    famo.combine(losses)  # first call moves the state: allowed to copy
    famo.update(after)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        famo.combine(losses).backward()
        famo.update(after)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert famo.logits.device.type == "cuda"
    famo.combine(torch.tensor([-1.0, 2.0, 3.0], device="cuda"))
    with pytest.raises(ValueError, match="below the declared min_losses"):
        famo.check()
