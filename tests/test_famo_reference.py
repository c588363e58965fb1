"""FAMO checked against an independent reading of the paper's Algorithm 1.

The reference below is written from the paper's text, not from our implementation: per-task
gradients from autograd, combined with weights c * z_i / l_i, and the logit step fed with the
closed-form softmax Jacobian J = diag(z) - z z^T and stepped by torch.optim.Adam.
"""

from __future__ import annotations

import pytest
import torch

from famo_rl import FAMO

NUM_TASKS = 4
STEPS = 300
EPS = 1e-8


def make_problem(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A shared linear model regressing four targets of very different scales."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, 5, generator=generator, dtype=torch.float64)
    scales = torch.tensor([1e-2, 1.0, 10.0, 300.0], dtype=torch.float64)
    targets = torch.randn(64, NUM_TASKS, generator=generator, dtype=torch.float64) * scales
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    torch.manual_seed(seed)
    model = model.double()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return model, inputs, targets


def task_losses(
    model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    return (model(inputs) - targets).pow(2).mean(dim=0)


class ReferenceFAMO:
    """Algorithm 1 of the paper, step by step, with explicit per-task gradients."""

    def __init__(self, num_tasks: int, weight_lr: float, weight_decay: float) -> None:
        self.xi = torch.zeros(num_tasks, dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.xi], lr=weight_lr, weight_decay=weight_decay)

    def softmax(self) -> torch.Tensor:
        exp = torch.exp(self.xi.detach() - self.xi.detach().max())
        return exp / exp.sum()

    def model_gradient(
        self, losses: torch.Tensor, params: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        z = self.softmax()
        shifted = losses.detach() + EPS
        c = 1.0 / (z / shifted).sum()
        coefficients = c * z / shifted
        total = [torch.zeros_like(p) for p in params]
        for i in range(len(losses)):
            grads = torch.autograd.grad(losses[i], params, retain_graph=True)
            for acc, grad in zip(total, grads, strict=True):
                acc += coefficients[i] * grad
        return total

    def logit_step(self, before: torch.Tensor, after: torch.Tensor) -> None:
        z = self.softmax()
        delta = torch.log(before + EPS) - torch.log(after + EPS)
        jacobian = torch.diag(z) - torch.outer(z, z)
        self.xi.grad = jacobian.T @ delta
        self.optimizer.step()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3, 1e-2])
def test_famo_matches_reference_algorithm_over_hundreds_of_steps(weight_decay: float) -> None:
    ours_model, inputs, targets = make_problem()
    ref_model, _, _ = make_problem()
    ours = FAMO(NUM_TASKS, weight_lr=0.025, weight_decay=weight_decay)
    reference = ReferenceFAMO(NUM_TASKS, weight_lr=0.025, weight_decay=weight_decay)
    ours_opt = torch.optim.SGD(ours_model.parameters(), lr=1e-3)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=1e-3)
    ref_params = list(ref_model.parameters())

    for _ in range(STEPS):
        ours_opt.zero_grad()
        ours.backward(task_losses(ours_model, inputs, targets), ours_model.parameters())
        ours_opt.step()
        with torch.no_grad():
            ours.update(task_losses(ours_model, inputs, targets))

        before = task_losses(ref_model, inputs, targets)
        for param, grad in zip(
            ref_params, reference.model_gradient(before, ref_params), strict=True
        ):
            param.grad = grad
        ref_opt.step()
        with torch.no_grad():
            reference.logit_step(before.detach(), task_losses(ref_model, inputs, targets))

        torch.testing.assert_close(ours.logits, reference.xi.detach(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ours.weights, reference.softmax(), rtol=1e-9, atol=1e-12)

    for mine, theirs in zip(ours_model.parameters(), ref_params, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-12)
    # The run must have moved the weights away from uniform for the comparison to mean anything.
    assert (ours.weights - 1 / NUM_TASKS).abs().max() > 0.01


def test_combine_value_and_gradient_are_the_papers() -> None:
    """The scalar's value is c * sum z log l and its gradient is that of the literal formula."""
    model, inputs, targets = make_problem(seed=3)
    famo = FAMO(NUM_TASKS)
    famo.logits.copy_(torch.tensor([0.3, -0.2, 0.5, -0.6]))
    losses = task_losses(model, inputs, targets)
    combined = famo.combine(losses)
    ours = torch.autograd.grad(combined, list(model.parameters()), retain_graph=True)

    z = torch.softmax(famo.logits, 0)
    c = (1.0 / (z / (losses.detach() + EPS)).sum()).detach()
    literal = c * (z * torch.log(losses + EPS)).sum()
    expected = torch.autograd.grad(literal, list(model.parameters()))
    torch.testing.assert_close(combined, literal.detach())
    for mine, theirs in zip(ours, expected, strict=True):
        torch.testing.assert_close(mine, theirs)
    # The effective weights c z_i / l_i are a convex combination.
    torch.testing.assert_close(famo.effective_weights.sum(), torch.tensor(1.0, dtype=z.dtype))


def test_declared_floors_make_famo_shift_invariant() -> None:
    """Losses shifted by b with min_losses = b follow exactly the unshifted trajectory."""
    offsets = torch.tensor([-5.0, 2.0, -100.0, 0.5], dtype=torch.float64)
    runs = []
    for shift, floors in ((torch.zeros(4, dtype=torch.float64), None), (offsets, offsets)):
        model, inputs, targets = make_problem(seed=1)
        famo = FAMO(NUM_TASKS, min_losses=floors)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        for _ in range(50):
            optimizer.zero_grad()
            famo.backward(task_losses(model, inputs, targets) + shift, model.parameters())
            optimizer.step()
            with torch.no_grad():
                famo.update(task_losses(model, inputs, targets) + shift)
        runs.append(famo.logits.clone())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-6, atol=1e-9)
