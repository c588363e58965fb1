"""Properties every balancer must have, checked through the common interface alone."""

from __future__ import annotations

import io

import pytest
import torch

from famo_rl import BALANCERS, Balancer, balancer_options, make_balancer

NAMES = list(BALANCERS)
# Weights on the probability simplex by definition.
SIMPLEX = {"ls", "famo", "rlw", "mgda"}
# Randomised by design (PCGrad projects in a random order; RLW draws weights), so equivariant only
# in distribution; everything else must be exactly permutation-equivariant.
RANDOMISED = {"pcgrad", "rlw"}
# Uncertainty weighting has no minimum for a negative loss: it refuses them.
NON_NEGATIVE_ONLY = {"uw"}
NUM_TASKS = 3


class Model(torch.nn.Module):
    """A shared trunk with one output per task."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, NUM_TASKS)
        ).to(dtype)
        self.inputs = torch.randn(16, 4, dtype=dtype)

    def task_losses(self, scales: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return scales * (self.net(self.inputs) - 1.0).pow(2).mean(dim=0) + offsets


def one_update(
    balancer: Balancer, model: Model, scales: torch.Tensor, offsets: torch.Tensor, mask=None
) -> list[torch.Tensor]:
    """Gradients of one full update through the interface (backward, then update)."""
    model.zero_grad()
    balancer.backward(model.task_losses(scales, offsets), model.parameters(), mask)
    grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        for param in model.parameters():
            param -= 1e-3 * param.grad
        balancer.update(model.task_losses(scales, offsets), mask)
    return grads


def build(name: str) -> Balancer:
    torch.manual_seed(0)
    return make_balancer(name, NUM_TASKS).double()


ONES = torch.ones(NUM_TASKS, dtype=torch.float64)
ZEROS = torch.zeros(NUM_TASKS, dtype=torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_weights_have_the_right_shape_and_sign(name: str) -> None:
    balancer, model = build(name), Model()
    for _ in range(3):
        one_update(balancer, model, torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64), ZEROS)
    weights = balancer.weights
    assert weights.shape == (NUM_TASKS,)
    assert torch.isfinite(weights).all()
    if name in SIMPLEX:
        assert (weights > 0).all()
        assert weights.sum().item() == pytest.approx(1.0)
    if name in ("uw", "famo", "ls", "rlw", "pcgrad", "cagrad", "nashmtl"):
        assert (weights > 0).all()


@pytest.mark.parametrize("name", sorted(set(NAMES) - RANDOMISED))
def test_permutation_equivariance(name: str) -> None:
    """Reordering the tasks reorders the weights and leaves the update unchanged."""
    scales = torch.tensor([0.5, 4.0, 1.0], dtype=torch.float64)
    permutation = torch.tensor([2, 0, 1])

    class Permuted(Model):
        def task_losses(self, scales: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
            return super().task_losses(scales, offsets)[permutation]

    straight, permuted = build(name), build(name)
    model_a, model_b = Model(), Permuted()
    for _ in range(3):
        grads_a = one_update(straight, model_a, scales, ZEROS)
        grads_b = one_update(permuted, model_b, scales, ZEROS)
        for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
            torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(
        straight.weights[permutation], permuted.weights, rtol=1e-4, atol=1e-9
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "case",
    ["tiny", "huge", "mixed", "zero", "negative"],
)
def test_finite_under_extreme_losses(name: str, case: str) -> None:
    scales = {
        "tiny": torch.full((NUM_TASKS,), 1e-12),
        "huge": torch.full((NUM_TASKS,), 1e12),
        "mixed": torch.tensor([1e-12, 1.0, 1e12]),
        "zero": torch.tensor([0.0, 1.0, 0.0]),
        "negative": torch.tensor([1.0, 1e6, 1e-6]),
    }[case].double()
    offsets = torch.tensor([-10.0, -1e9, 0.0]).double() if case == "negative" else ZEROS
    balancer, model = build(name), Model()
    if case == "negative" and name in NON_NEGATIVE_ONLY:
        with pytest.raises(ValueError, match="non-negative"):
            one_update(balancer, model, scales, offsets)
        return
    for _ in range(3):
        grads = one_update(balancer, model, scales, offsets)
        assert all(torch.isfinite(g).all() for g in grads)
        assert torch.isfinite(balancer.weights).all()


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip(name: str) -> None:
    """Save, load with weights_only=True into a fresh balancer, and continue identically."""
    scales = torch.tensor([1.0, 3.0, 0.3], dtype=torch.float64)
    balancer, model = build(name), Model()
    for _ in range(4):
        one_update(balancer, model, scales, ZEROS)
    buffer = io.BytesIO()
    torch.save(balancer.state_dict(), buffer)
    buffer.seek(0)
    restored = build(name)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(restored.weights, balancer.weights)

    model_copy = Model()
    model_copy.load_state_dict(model.state_dict())
    for _ in range(2):
        torch.manual_seed(1)
        grads = one_update(balancer, model, scales, ZEROS)
        torch.manual_seed(1)
        grads_restored = one_update(restored, model_copy, scales, ZEROS)
        for grad, grad_restored in zip(grads, grads_restored, strict=True):
            torch.testing.assert_close(grad, grad_restored)
    torch.testing.assert_close(restored.weights, balancer.weights)


@pytest.mark.parametrize("name", NAMES)
def test_dtype_is_kept(name: str) -> None:
    model = Model(dtype=torch.float64)
    balancer = build(name)
    grads = one_update(balancer, model, ONES, ZEROS)
    assert all(g.dtype == torch.float64 for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_mask_drops_absent_tasks(name: str) -> None:
    """An absent task's loss does not reach the update, however large it is."""
    mask = torch.tensor([True, True, False])
    scales_a = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    scales_b = torch.tensor([1.0, 2.0, 1e6], dtype=torch.float64)
    if name == "nashmtl":
        with pytest.raises(NotImplementedError, match="absent tasks is not supported"):
            one_update(build(name), Model(), scales_a, ZEROS, mask)
        return
    torch.manual_seed(3)
    grads_a = one_update(build(name), Model(), scales_a, ZEROS, mask)
    torch.manual_seed(3)
    grads_b = one_update(build(name), Model(), scales_b, ZEROS, mask)
    for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(grad_a, grad_b)


def test_factory_builds_every_listed_balancer_with_its_options() -> None:
    for name in NAMES:
        balancer = make_balancer(name, 2, **balancer_options(name))
        assert balancer.num_tasks == 2


def test_factory_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match=r"unknown balancer 'fam'.*did you mean 'famo'"):
        make_balancer("fam", 2)


def test_factory_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(TypeError, match=r"'famo' has no option 'lr'.*weight_lr, weight_decay"):
        make_balancer("famo", 2, lr=0.1)


@pytest.mark.parametrize("num_tasks", [0, -1, 2.5, True])
def test_num_tasks_must_be_a_positive_integer(num_tasks: object) -> None:
    with pytest.raises(ValueError, match="num_tasks"):
        make_balancer("ls", num_tasks)  # type: ignore[arg-type]
