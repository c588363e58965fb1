"""Tests for ``examples/toy_two_task.py``: the formulas, the Pareto checks, and a short full run.

The example is a script, not part of the package, so it is loaded from its file path.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from famo_rl import make_balancer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toy_two_task.py"


@pytest.fixture(scope="module")
def toy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("toy_two_task", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up in sys.modules while the class is being created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def losses_by_hand(t1: float, t2: float, f2_sign: float) -> tuple[float, float]:
    """The paper's formulas, one scalar at a time, as written in the module docstring."""
    c1 = max(math.tanh(0.5 * t2), 0.0)
    c2 = max(math.tanh(-0.5 * t2), 0.0)
    bend = math.tanh(-t2)
    f1 = math.log(max(abs(0.5 * (-t1 - 7) - bend), 5e-6)) + 6
    f2 = math.log(max(abs(0.5 * (-t1 + 3) + f2_sign * bend + 2), 5e-6)) + 6
    g1 = ((-t1 + 7) ** 2 + 0.1 * (-t2 - 8) ** 2) / 10 - 20
    g2 = ((-t1 - 7) ** 2 + 0.1 * (-t2 - 8) ** 2) / 10 - 20
    return 0.1 * (c1 * f1 + c2 * g1), c1 * f2 + c2 * g2


def losses_at(toy: ModuleType, variant: str, t1: float, t2: float) -> tuple[float, float]:
    theta = torch.tensor([t1, t2], dtype=torch.float64)
    first, second = toy.ToyProblem(toy.VARIANTS[variant]).losses(theta).tolist()
    return first, second


# --------------------------------------------------------------------------------------------------
# The formulas.


def test_both_losses_vanish_at_the_origin(toy: ModuleType) -> None:
    # c1 = c2 = tanh(0) = 0 switches both halves of the problem off.
    for variant in ("text", "code"):
        assert losses_at(toy, variant, 0.0, 0.0) == (0.0, 0.0)


def test_losses_in_the_lower_half_plane_by_hand(toy: ModuleType) -> None:
    # theta = (1, -2): c1 = 0, c2 = tanh(1); g1 = (6^2 + 0.1 * 6^2) / 10 - 20 = -16.04 and
    # g2 = (8^2 + 0.1 * 6^2) / 10 - 20 = -13.24. The sign of f2 does not matter here.
    c2 = math.tanh(1.0)
    expected = (0.1 * c2 * -16.04, c2 * -13.24)
    for variant in ("text", "code"):
        assert losses_at(toy, variant, 1.0, -2.0) == pytest.approx(expected, rel=1e-12)


def test_losses_in_the_upper_half_plane_by_hand(toy: ModuleType) -> None:
    # theta = (1, 2): c1 = tanh(1), c2 = 0, tanh(-2) = -tanh(2) = -b. f1's argument is
    # (-1 - 7) / 2 + b = b - 4; f2's is (-1 + 3) / 2 + b + 2 = 3 + b with the text's sign and
    # 3 - b with the code's.
    c1, b = math.tanh(1.0), math.tanh(2.0)
    f1 = math.log(4 - b) + 6
    text = (0.1 * c1 * f1, c1 * (math.log(3 + b) + 6))
    code = (0.1 * c1 * f1, c1 * (math.log(3 - b) + 6))
    assert losses_at(toy, "text", 1.0, 2.0) == pytest.approx(text, rel=1e-12)
    assert losses_at(toy, "code", 1.0, 2.0) == pytest.approx(code, rel=1e-12)


@pytest.mark.parametrize("variant", ["text", "code"])
def test_vectorised_losses_match_the_formulas(toy: ModuleType, variant: str) -> None:
    generator = torch.Generator().manual_seed(0)
    points = 20 * torch.rand(200, 2, generator=generator, dtype=torch.float64) - 10
    # Points on f1's valley floor, where the 5e-6 clamp is active.
    t2 = torch.linspace(0.5, 9.0, 5, dtype=torch.float64)
    points = torch.cat([points, torch.stack([-7 - 2 * torch.tanh(-t2), t2], dim=-1)])
    losses = toy.ToyProblem(toy.VARIANTS[variant]).losses(points)
    sign = toy.VARIANTS[variant].f2_sign
    for point, loss in zip(points.tolist(), losses.tolist(), strict=True):
        assert loss == pytest.approx(losses_by_hand(*point, sign), rel=1e-10, abs=1e-12)


def test_variants_differ_only_in_f2_and_the_starts(toy: ModuleType) -> None:
    text, code = toy.VARIANTS["text"], toy.VARIANTS["code"]
    assert (text.f2_sign, code.f2_sign) == (-1.0, 1.0)
    assert text.starts == ((-8.5, 7.5), (-8.5, 5.0), (0.0, 0.0), (9.0, 9.0), (10.0, -8.0))
    assert code.starts == ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
    assert losses_at(toy, "text", 3.0, 1.0)[0] == losses_at(toy, "code", 3.0, 1.0)[0]
    assert losses_at(toy, "text", 3.0, 1.0)[1] != losses_at(toy, "code", 3.0, 1.0)[1]


def test_famo_floors_bound_the_losses_from_below(toy: ModuleType) -> None:
    # L1 >= 0.1 * min(log(5e-6) + 6, -20) = -2 and L2 >= -20: the floors (-2.1, -21) hold.
    grid = torch.linspace(-12, 12, 241, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1)
    for variant in toy.VARIANTS.values():
        losses = toy.ToyProblem(variant).losses(points).reshape(-1, 2)
        assert losses[:, 0].min() >= -2.0 and losses[:, 1].min() >= -20.0


def test_famo_combines_the_toy_losses_as_algorithm_1_says(toy: ModuleType) -> None:
    # At theta = (1, -2) (losses by hand above) FAMO's first step has weights z = (1/2, 1/2).
    # Shifted losses l_i = L_i - floor_i + eps; the objective is c * sum z_i log l_i and the
    # gradient sum_i (c z_i / l_i) grad L_i, with c = 1 / sum(z_i / l_i).
    options = toy.METHOD_OPTIONS["famo"]
    balancer = make_balancer("famo", 2, **options)
    problem = toy.ToyProblem(toy.VARIANTS["text"])
    theta = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)

    c2 = math.tanh(1.0)
    shifted = [0.1 * c2 * -16.04 + 2.1 + 1e-8, c2 * -13.24 + 21.0 + 1e-8]
    scale = 1.0 / (0.5 / shifted[0] + 0.5 / shifted[1])
    expected_value = scale * (0.5 * math.log(shifted[0]) + 0.5 * math.log(shifted[1]))
    effective = [scale * 0.5 / shifted[0], scale * 0.5 / shifted[1]]

    # FAMO keeps its floors in float32 (-2.1 rounds to -2.0999999), hence the 1e-5 tolerances.
    value = balancer.combine(problem.losses(theta))
    assert value.item() == pytest.approx(expected_value, rel=1e-5)
    value.backward()
    jacobian = problem.task_gradients(theta)
    expected_grad = effective[0] * jacobian[0] + effective[1] * jacobian[1]
    torch.testing.assert_close(theta.grad, expected_grad, rtol=1e-5, atol=0.0)
    assert sum(effective) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------
# The Pareto checks.


def test_min_norm_combination_by_hand(toy: ModuleType) -> None:
    combine = toy.min_norm_combination

    def vector(*values: float) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    # Orthogonal unit vectors: the midpoint. Opposite vectors: zero (Pareto-stationary).
    torch.testing.assert_close(combine(vector(1, 0), vector(0, 1)), vector(0.5, 0.5))
    torch.testing.assert_close(combine(vector(1, 0), vector(-3, 0)), vector(0, 0))
    # Aligned vectors: the shorter one (w = 2 clamps to 1). Equal vectors: that vector.
    torch.testing.assert_close(combine(vector(1, 0), vector(2, 0)), vector(1, 0))
    torch.testing.assert_close(combine(vector(1, 1), vector(1, 1)), vector(1, 1))


def test_front_points_are_stationary_and_not_dominated(toy: ModuleType) -> None:
    problem = toy.ToyProblem(toy.VARIANTS["text"])
    # Between the bowls' minima, the L1 and L2 slopes along t1 point in opposite directions.
    theta = torch.tensor([0.0, -8.3], dtype=torch.float64)
    assert problem.dominated_by(problem.losses(theta)) < toy.DOMINANCE_TOLERANCE
    jacobian = problem.task_gradients(theta)
    assert jacobian[0, 0] < 0 < jacobian[1, 0]


def test_plateau_is_nearly_stationary_but_dominated(toy: ModuleType) -> None:
    # The text variant's start (9, 9) lies next to f2's valley, where every t2-derivative is
    # ~exp(-9): min-norm alone would call it Pareto-stationary; the dominance check does not.
    problem = toy.ToyProblem(toy.VARIANTS["text"])
    theta = torch.tensor([9.0, 9.0], dtype=torch.float64)
    assert problem.pareto_residual(theta) < 1e-2
    assert problem.dominated_by(problem.losses(theta)) > 1.0


# --------------------------------------------------------------------------------------------------
# The script.


def test_quick_flag_caps_the_steps(toy: ModuleType) -> None:
    assert toy.parse_args(["--quick"]).steps == toy.QUICK_STEPS
    assert toy.parse_args(["--quick", "--steps", "100"]).steps == 100
    args = toy.parse_args(["--nash-steps", "50", "--cap", "cagrad=70", "--steps", "100"])
    steps = {spec.method: spec.steps for spec in toy.plan_runs(args, toy.VARIANTS["text"])}
    assert steps == {
        "ls": 100,
        "mgda": 100,
        "pcgrad": 100,
        "cagrad": 70,
        "nashmtl": 50,
        "famo": 100,
    }


def test_short_run_writes_the_figure_and_finite_results(
    toy: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 300 steps rather than --quick's 2000 keeps this test under ~15 s on two cores.
    argv = ["--quick", "--steps", "300", "--out", str(tmp_path), "--methods", "ls,famo,mgda"]
    assert toy.main(argv) == 0

    assert (tmp_path / "toy_two_task.png").stat().st_size > 0
    payload = json.loads((tmp_path / "toy_two_task.json").read_text())
    assert payload["settings"]["variant"] == "text"
    runs = payload["runs"]
    starts = [tuple(start) for start in toy.VARIANTS["text"].starts]
    assert [(run["method"], tuple(run["start"])) for run in runs] == [
        (method, start) for method in ("ls", "famo", "mgda") for start in starts
    ]
    for run in runs:
        assert run["steps"] == 300
        assert all(math.isfinite(loss) for loss in run["final_losses"])
        assert math.isfinite(run["min_norm"]) and run["seconds_per_1000_steps"] > 0
        assert len(run["trajectory"]) == 301
    output = capsys.readouterr().out
    assert "Variant 'text'" in output and "reached" in output


def test_worker_processes_give_the_same_results(toy: ModuleType) -> None:
    args = toy.parse_args(["--steps", "20", "--methods", "ls,famo"])
    variant = toy.VARIANTS["code"]
    specs = toy.plan_runs(args, variant)
    alone = toy.run_all(specs, variant, toy.DEFAULT_TOLERANCE, workers=1)
    spread = toy.run_all(specs, variant, toy.DEFAULT_TOLERANCE, workers=2)
    assert [run.final_theta for run in spread] == [run.final_theta for run in alone]
