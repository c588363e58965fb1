"""The two-objective toy problem of the FAMO paper (Liu et al. 2023, Fig. 1 and App. D).

Two losses of a 2-vector ``theta`` are minimised with Adam (lr 1e-3, 50,000 steps by default)
from five starting points, once per balancer: Adam on the mean loss (``ls``), MGDA, PCGrad,
CAGrad, Nash-MTL and FAMO (floors ``(-2.1, -21)``, no logit decay). The example exists to check,
on a problem whose Pareto front is known, the paper's two claims: FAMO reaches the front where
the mean loss can stall, and it costs about as much per step as the mean loss.

With ``c1 = max(tanh(t2 / 2), 0)``, ``c2 = max(tanh(-t2 / 2), 0)`` and ``b = tanh(-t2)``::

    f1 = log(max(|(-t1 - 7) / 2 - b|, 5e-6)) + 6
    f2 = log(max(|(-t1 + 3) / 2 - b + 2|, 5e-6)) + 6      ("text" variant: the paper's sign)
    g1 = ((-t1 + 7)^2 + 0.1 (-t2 - 8)^2) / 10 - 20
    g2 = ((-t1 - 7)^2 + 0.1 (-t2 - 8)^2) / 10 - 20
    L1 = 0.1 (c1 f1 + c2 g1),    L2 = c1 f2 + c2 g2

The upper half plane (``t2 > 0``) holds two narrow logarithmic valleys; the lower half holds two
quadratic bowls, and the Pareto front is the segment between their minima, near ``t2 = -8``.

**Variants.** The paper's text and the authors' released code disagree on the sign of ``b`` in
``f2`` and on the starting points, so both are offered:

- ``--variant text`` (default): ``f2`` with ``- b``; starts (-8.5, 7.5), (-8.5, 5), (0, 0),
  (9, 9), (10, -8).
- ``--variant code``: ``f2`` with ``+ b``; starts (-8.5, 7.5), (0, 0), (9, 9), (-7.5, -0.5),
  (9, -1).

**Pareto criterion.** At the end of each run the script measures the norm of the minimum-norm
convex combination of the two task gradients, zero exactly at Pareto-stationary points; a run is
*stationary* when that norm is below ``--tolerance`` (see :data:`DEFAULT_TOLERANCE`). That alone
is not enough here: high in the upper half plane every derivative along ``t2`` is of order
``exp(-t2)``, so the valley floors there are nearly stationary although every point of the front
beats them on both losses. A run therefore *reaches the front* when it is stationary and no
sampled point near the known front beats both of its losses by ``DOMINANCE_TOLERANCE`` or more.
The table reports both, with the final ``theta`` and losses.

**Cost.** Each method runs through :func:`famo_rl.make_balancer` with its library defaults, except
FAMO (the paper's floors and decay) and MGDA (``max_iters=2``, which gives the same weights: see
:data:`METHOD_OPTIONS`). CAGrad and Nash-MTL solve a convex program with cvxpy at every step and
are tens of times slower than the others; ``--workers 2`` spreads the runs over two processes,
and ``--nash-steps``, ``--nash-update-every`` and ``--cap`` shorten the slow methods. The output
says when any of them was used.

Run ``python examples/toy_two_task.py --help`` for the options; the results go to
``OUT/toy_two_task.json`` and the figure to ``OUT/toy_two_task.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from famo_rl import BALANCERS, Balancer, make_balancer

#: Every method the paper compares on this problem, in the order they are reported.
ALL_METHODS: tuple[str, ...] = ("ls", "mgda", "pcgrad", "cagrad", "nashmtl", "famo")

#: Options passed to :func:`famo_rl.make_balancer`; the other methods run with library defaults.
#: FAMO: the paper's floors, which are lower bounds of the losses (L1 >= -2, L2 >= -20), and no
#: decay. MGDA: with two tasks, one exact line search of torchjd's Frank-Wolfe solver already
#: lands on the optimum and the second iteration confirms it, so ``max_iters=2`` returns the
#: weights ``max_iters=100`` does (bitwise, on 5,000 random Gramians), while the default spends
#: all 100 iterations whenever the optimum is a vertex of the simplex (gamma stays at 1).
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "famo": {"min_losses": (-2.1, -21.0), "weight_decay": 0.0},
    "mgda": {"max_iters": 2},
}

#: Rough cost per step relative to ``ls`` on a 2-core CPU, only used to start slow runs first.
RELATIVE_COST: dict[str, float] = {"nashmtl": 40.0, "cagrad": 20.0, "pcgrad": 4.0, "mgda": 3.0}

LEARNING_RATE = 1e-3
DEFAULT_STEPS = 50_000
QUICK_STEPS = 2_000
#: Smallest argument of the logarithms: it bounds f1 and f2 below by log(5e-6) + 6 ~ -6.2.
LOG_ARGUMENT_FLOOR = 5e-6
#: Pareto-stationarity tolerance on the norm of the min-norm combination of the task gradients.
#: The task gradients are of order 0.1 to 1 over most of the plane (the bowls' slopes along t1
#: are 0.02 |t1 - 7| and 0.2 |t1 + 7|), and Adam at lr 1e-3 keeps moving about 1e-3 per step
#: around a minimum, where the bowls' curvature (0.02 to 0.2) leaves a residual of 2e-5 to 2e-4.
#: 1e-3 accepts that jitter and rejects points still sliding down a slope.
DEFAULT_TOLERANCE = 1e-3
#: Stationarity cannot rule out the plateau of the upper half plane (see the module docstring).
#: A run is also checked against the global front: the largest margin by which a sampled point of
#: the lower half plane beats it on both losses. Zero or below means no sample dominates it. Runs
#: stalled in the upper half plane are beaten by more than 1 (there L1 > -0.7 and L2 > -6.3, while
#: the front holds points with L1 < -1.5 and L2 < -15 at once); 1e-2 leaves room for the sampling.
DOMINANCE_TOLERANCE = 1e-2
#: How many points of each trajectory are kept for the figure and the JSON file.
TRAJECTORY_POINTS = 500
PLOT_RANGE = (-10.0, 10.0)


@dataclass(frozen=True)
class Variant:
    """One reading of the problem: the sign of ``tanh(-t2)`` in ``f2`` and the starting points."""

    name: str
    f2_sign: float
    starts: tuple[tuple[float, float], ...]
    description: str


VARIANTS: dict[str, Variant] = {
    "text": Variant(
        name="text",
        f2_sign=-1.0,
        starts=((-8.5, 7.5), (-8.5, 5.0), (0.0, 0.0), (9.0, 9.0), (10.0, -8.0)),
        description="paper text: f2 has '- tanh(-t2)'; the paper's five starts",
    ),
    "code": Variant(
        name="code",
        f2_sign=1.0,
        starts=((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)),
        description="authors' released code: f2 has '+ tanh(-t2)'; the code's five starts",
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One method from one start: a unit of work that can be sent to another process."""

    method: str
    start: tuple[float, float]
    steps: int
    options: dict[str, Any]


@dataclass
class RunResult:
    """The outcome of one method from one start."""

    method: str
    start: tuple[float, float]
    steps: int
    options: dict[str, Any]
    final_theta: tuple[float, float]
    final_losses: tuple[float, float]
    min_norm: float
    stationary: bool
    dominated_by: float
    reached: bool
    seconds_per_1000_steps: float
    wall_seconds_per_1000_steps: float
    warning_counts: dict[str, int]
    trajectory: list[tuple[float, float]] = field(repr=False)


# --------------------------------------------------------------------------------------------------
# The problem.


class ToyProblem:
    """The two losses of one variant, written with as few tensor operations as possible.

    Each operation on a 2-vector costs microseconds of interpreter overhead, most of a step's cost
    for the cheap methods, so both valleys and both bowls are computed at once: the valley
    arguments are ``-t1 / 2 + (-3.5, 3.5) + (-1, sign) tanh(-t2)`` and the bowls are centred on
    ``t1 = (7, -7)``. ``tests/test_examples_toy.py`` checks this against the formulas written out.

    :param variant: which sign of ``tanh(-t2)`` to use in ``f2``.
    :param dtype: the dtype of ``theta``.
    """

    def __init__(self, variant: Variant, dtype: torch.dtype = torch.float64) -> None:
        self.variant = variant
        self.valley_offsets = torch.tensor([-3.5, 3.5], dtype=dtype)
        self.valley_bends = torch.tensor([-1.0, variant.f2_sign], dtype=dtype)
        self.bowl_centres = torch.tensor([7.0, -7.0], dtype=dtype)
        self.scales = torch.tensor([0.1, 1.0], dtype=dtype)
        self._front_losses: Tensor | None = None

    def losses(self, theta: Tensor) -> Tensor:
        """The two losses at ``theta``.

        :param theta: points of shape ``(..., 2)``; batched so that the contour grid needs one
            call.
        :return: losses of shape ``(..., 2)``: ``L1`` then ``L2``.
        """
        t1, t2 = theta[..., :1], theta[..., 1:]
        half = torch.tanh(0.5 * t2)
        upper = half.clamp(min=0.0)  # c1
        lower = (-half).clamp(min=0.0)  # c2, as tanh is odd

        arguments = -0.5 * t1 + self.valley_offsets + self.valley_bends * torch.tanh(-t2)
        valleys = torch.log(arguments.abs().clamp(min=LOG_ARGUMENT_FLOOR)) + 6.0  # f1, f2
        bowls = ((t1 - self.bowl_centres) ** 2 + 0.1 * (t2 + 8.0) ** 2) / 10.0 - 20.0  # g1, g2

        return self.scales * (upper * valleys + lower * bowls)

    def task_gradients(self, theta: Tensor) -> Tensor:
        """The Jacobian of :meth:`losses` at one point, shape ``(2 tasks, 2 coordinates)``."""
        return torch.autograd.functional.jacobian(self.losses, theta.detach().clone())

    def pareto_residual(self, theta: Tensor) -> float:
        """Norm of the min-norm convex combination of the task gradients at ``theta``."""
        jacobian = self.task_gradients(theta)
        return float(min_norm_combination(jacobian[0], jacobian[1]).norm())

    @torch.no_grad()
    def dominated_by(self, losses: Tensor) -> float:
        """The largest margin by which a sample near the known front beats ``losses`` on both.

        The samples cover ``t1`` in ``[-7.5, 7.5]`` and ``t2`` in ``[-9.5, -7]``, around the segment
        joining the two bowls' minima, where the Pareto set lies. Samples are attainable points,
        so a Pareto-optimal run gets a margin of zero or less, and a stalled run a large one.
        """
        if self._front_losses is None:
            t1 = torch.linspace(-7.5, 7.5, 1501, dtype=self.scales.dtype)
            t2 = torch.linspace(-9.5, -7.0, 51, dtype=self.scales.dtype)
            grid = torch.stack(torch.meshgrid(t1, t2, indexing="ij"), dim=-1).reshape(-1, 2)
            self._front_losses = self.losses(grid)
        margins = (losses.to(self._front_losses) - self._front_losses).min(dim=-1).values
        return float(margins.max())


def min_norm_combination(grad1: Tensor, grad2: Tensor) -> Tensor:
    """The convex combination of two vectors with the smallest norm, in closed form.

    Minimising ``|w g1 + (1 - w) g2|^2`` over ``w`` in ``[0, 1]`` gives
    ``w = clamp((g2 - g1) . g2 / |g1 - g2|^2, 0, 1)``. Its norm is zero exactly at a
    Pareto-stationary point, where no direction decreases both losses.
    """
    difference = grad1 - grad2
    squared = difference.dot(difference)
    if squared <= torch.finfo(squared.dtype).tiny:  # equal gradients: every combination is g1
        return grad1.clone()
    weight = ((grad2 - grad1).dot(grad2) / squared).clamp(0.0, 1.0)
    return weight * grad1 + (1.0 - weight) * grad2


# --------------------------------------------------------------------------------------------------
# Running.


def run_method(spec: RunSpec, variant: Variant, tolerance: float) -> RunResult:
    """Minimise both losses from ``spec.start`` with Adam on the direction the balancer produces.

    The loop is the one every :class:`~famo_rl.Balancer` supports and does not branch on the
    method: FAMO alone asks for the losses re-measured after the step, and gets them.
    """
    problem = ToyProblem(variant)
    theta = torch.tensor(spec.start, dtype=torch.float64, requires_grad=True)
    balancer = make_balancer(spec.method, 2, **spec.options)
    optimizer = torch.optim.Adam([theta], lr=LEARNING_RATE)
    record_every = max(1, spec.steps // TRAJECTORY_POINTS)
    trajectory = [spec.start]

    began, began_cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        # The cvxpy-based methods may warn at every step; count the warnings instead of printing.
        warnings.simplefilter("always")
        for step in range(1, spec.steps + 1):
            _optimisation_step(problem, theta, balancer, optimizer)
            if step % record_every == 0:
                trajectory.append(_as_pair(theta))
    elapsed, elapsed_cpu = time.perf_counter() - began, time.process_time() - began_cpu

    with torch.no_grad():
        final_losses = problem.losses(theta)
    residual = problem.pareto_residual(theta)
    margin = problem.dominated_by(final_losses)
    return RunResult(
        method=spec.method,
        start=spec.start,
        steps=spec.steps,
        options=spec.options,
        final_theta=_as_pair(theta),
        final_losses=(float(final_losses[0]), float(final_losses[1])),
        min_norm=residual,
        stationary=residual < tolerance,
        dominated_by=margin,
        reached=residual < tolerance and margin < DOMINANCE_TOLERANCE,
        seconds_per_1000_steps=1000.0 * elapsed_cpu / spec.steps,
        wall_seconds_per_1000_steps=1000.0 * elapsed / spec.steps,
        warning_counts=_count_messages(caught),
        trajectory=trajectory,
    )


def _optimisation_step(
    problem: ToyProblem, theta: Tensor, balancer: Balancer, optimizer: torch.optim.Optimizer
) -> None:
    """Backward through the balancer, Adam step, then let the balancer see the new losses."""
    optimizer.zero_grad(set_to_none=True)
    balancer.backward(problem.losses(theta), [theta])
    optimizer.step()
    if balancer.requires_losses_after:
        with torch.no_grad():
            balancer.update(problem.losses(theta))


def _count_messages(caught: Sequence[warnings.WarningMessage]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in caught:
        first_sentence = str(message.message).split(". ")[0]
        text = f"{message.category.__name__}: {first_sentence[:100]}"
        counts[text] = counts.get(text, 0) + 1
    return counts


def _as_pair(theta: Tensor) -> tuple[float, float]:
    first, second = theta.detach().tolist()
    return (first, second)


def run_all(
    specs: Sequence[RunSpec], variant: Variant, tolerance: float, workers: int
) -> list[RunResult]:
    """Run every spec, in this process or in ``workers`` forked ones; results keep spec order.

    Each run is timed inside the process that does it, with one torch thread, in CPU seconds of
    that process (wall seconds are kept too): on a shared machine other processes' load then
    barely moves the comparison between methods.
    """
    if workers == 1:
        return [_report(run_method(spec, variant, tolerance)) for spec in specs]

    # Fork, not spawn: the children inherit this module even when it was loaded from a file path.
    context = multiprocessing.get_context("fork")
    order = sorted(range(len(specs)), key=lambda i: -specs[i].steps * _relative_cost(specs[i]))
    results: dict[int, RunResult] = {}
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        futures = {pool.submit(run_method, specs[i], variant, tolerance): i for i in order}
        for future in as_completed(futures):
            results[futures[future]] = _report(future.result())
    return [results[index] for index in range(len(specs))]


def _relative_cost(spec: RunSpec) -> float:
    return RELATIVE_COST.get(spec.method, 1.0)


def _init_worker() -> None:
    torch.set_num_threads(1)


def _report(result: RunResult) -> RunResult:
    """Print one line as each run ends, so that a long run shows progress."""
    print(
        f"  {result.method:<8} from {_point(result.start):<12} {result.steps} steps: "
        f"min-norm {result.min_norm:.2e}, {result.seconds_per_1000_steps:.2f} s/1k steps",
        flush=True,
    )
    return result


# --------------------------------------------------------------------------------------------------
# Reporting.


def format_table(results: Sequence[RunResult], tolerance: float) -> str:
    """A plain-text table of every run, then per method the count of starts reaching the front."""
    header = (
        f"{'method':<8} {'start':<12} {'steps':>6} {'final theta':<16} {'L1':>8} {'L2':>9} "
        f"{'min-norm':>8} {'stat.':>5} {'beaten by':>9} {'reached':>7} {'s/1k':>7}"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        theta = f"({result.final_theta[0]:.2f}, {result.final_theta[1]:.2f})"
        lines.append(
            f"{result.method:<8} {_point(result.start):<12} {result.steps:>6} {theta:<16} "
            f"{result.final_losses[0]:>8.4f} {result.final_losses[1]:>9.4f} "
            f"{result.min_norm:>8.1e} {_yes(result.stationary):>5} {result.dominated_by:>9.3f} "
            f"{_yes(result.reached):>7} {result.seconds_per_1000_steps:>7.2f}"
        )
    lines += [
        "",
        f"stat.: Pareto-stationary, min-norm < {tolerance:g}. beaten by: the largest margin by",
        "which a sampled point near the front is lower on both losses. reached: stationary and",
        f"beaten by < {DOMINANCE_TOLERANCE:g}. s/1k: CPU seconds per 1000 steps (one thread).",
        "",
        "Per method: starts reaching the front (stationary ones), mean CPU seconds per 1000 steps",
    ]
    for method, runs in _by_method(results).items():
        reached = sum(run.reached for run in runs)
        stationary = sum(run.stationary for run in runs)
        lines.append(
            f"  {method:<8} reached {reached}/{len(runs)} (stationary {stationary}/{len(runs)})   "
            f"{_mean_cost(runs):.3f}"
        )
    lines += _warning_lines(results)
    return "\n".join(lines)


def _warning_lines(results: Sequence[RunResult]) -> list[str]:
    lines = []
    for method, runs in _by_method(results).items():
        counts: dict[str, int] = {}
        for run in runs:
            for text, count in run.warning_counts.items():
                counts[text] = counts.get(text, 0) + count
        steps = sum(run.steps for run in runs)
        for text, count in counts.items():
            lines.append(f"Warning: {method} raised {count} times in {steps} steps: {text}")
    return lines


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _point(point: Sequence[float]) -> str:
    return f"({point[0]:g}, {point[1]:g})"


def _by_method(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    grouped: dict[str, list[RunResult]] = {}
    for result in results:
        grouped.setdefault(result.method, []).append(result)
    return grouped


def _mean_cost(runs: Sequence[RunResult]) -> float:
    return sum(run.seconds_per_1000_steps for run in runs) / len(runs)


def write_json(path: Path, results: Sequence[RunResult], settings: dict[str, Any]) -> None:
    """Save the settings and every run, trajectories included, so the figure can be redrawn."""
    payload = {"settings": settings, "runs": [asdict(result) for result in results]}
    path.write_text(json.dumps(payload, indent=1))


def plot_results(path: Path, results: Sequence[RunResult], variant: Variant) -> None:
    """Trajectories over contours of ``L1 + L2``, one panel per method, and the cost per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = _by_method(results)
    rows = 1 if len(grouped) == 1 else 2
    columns = math.ceil(len(grouped) / rows)
    figure = plt.figure(figsize=(3.2 * columns + 4.0, 3.3 * rows + 0.7), layout="constrained")
    grid = figure.add_gridspec(rows, columns + 1, width_ratios=[1.0] * columns + [1.2])
    surface = _loss_surface(variant)

    for index, (method, runs) in enumerate(grouped.items()):
        axes = figure.add_subplot(grid[index % rows, index // rows])
        _draw_method_panel(axes, method, runs, surface)
    _draw_runtime_bars(figure.add_subplot(grid[:, columns]), grouped)

    figure.suptitle(
        f"Two-task toy problem, {variant.description}\n"
        "red: reached the Pareto front; orange: Pareto-stationary but dominated; white: neither;"
        " dots mark starts, stars ends",
        fontsize=10,
    )
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _loss_surface(variant: Variant) -> tuple[Tensor, Tensor, Tensor]:
    """``L1 + L2`` on a 300 x 300 grid over the plotted square."""
    axis = torch.linspace(*PLOT_RANGE, 300, dtype=torch.float64)
    grid_t1, grid_t2 = torch.meshgrid(axis, axis, indexing="xy")
    with torch.no_grad():
        losses = ToyProblem(variant).losses(torch.stack([grid_t1, grid_t2], dim=-1))
    return grid_t1, grid_t2, losses.sum(dim=-1)


def _draw_method_panel(
    axes: Any, method: str, runs: Sequence[RunResult], surface: tuple[Tensor, Tensor, Tensor]
) -> None:
    axes.contourf(*surface, levels=30, cmap="viridis")
    for run in runs:
        path = torch.tensor(run.trajectory)
        colour = _run_colour(run)
        axes.plot(path[:, 0], path[:, 1], color=colour, linewidth=1.2)
        axes.plot(*run.start, marker="o", color="black", markersize=4)
        axes.plot(*run.final_theta, marker="*", color=colour, markeredgecolor="k", markersize=9)
    steps = sorted({run.steps for run in runs})
    reached = sum(run.reached for run in runs)
    axes.set_title(
        f"{method}, {steps[-1]} steps: {reached}/{len(runs)} reach the front",
        fontsize=8,
    )
    axes.set_xlim(*PLOT_RANGE)
    axes.set_ylim(*PLOT_RANGE)
    axes.set_aspect("equal")
    axes.tick_params(labelsize=7)


def _run_colour(run: RunResult) -> str:
    if run.reached:
        return "tab:red"
    return "tab:orange" if run.stationary else "white"


def _draw_runtime_bars(axes: Any, grouped: dict[str, list[RunResult]]) -> None:
    costs = [_mean_cost(runs) for runs in grouped.values()]
    bars = axes.bar(list(grouped), costs, color="tab:blue")
    axes.bar_label(bars, fmt="%.2f", fontsize=7)
    axes.set_ylabel("CPU seconds per 1000 steps, one thread (mean over starts)")
    axes.set_title("Runtime", fontsize=9)
    axes.tick_params(axis="x", labelrotation=30)


# --------------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the command line; ``--quick`` lowers ``--steps`` to 2000."""
    parser = argparse.ArgumentParser(
        description="The FAMO paper's two-task toy problem, run with several balancers."
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="Adam steps per run")
    parser.add_argument(
        "--methods",
        default=",".join(ALL_METHODS),
        help=f"comma-separated balancers (default: {','.join(ALL_METHODS)})",
    )
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="text")
    parser.add_argument("--out", type=Path, default=Path("examples/output"))
    parser.add_argument("--quick", action="store_true", help=f"at most {QUICK_STEPS} steps")
    parser.add_argument(
        "--nash-steps", type=int, default=None, help="cap on Nash-MTL's steps (same as --cap)"
    )
    parser.add_argument(
        "--nash-update-every",
        type=int,
        default=1,
        help="Nash-MTL re-solves its weights every this many steps (default 1: every step)",
    )
    parser.add_argument(
        "--cap",
        action="append",
        default=[],
        metavar="METHOD=STEPS",
        help="run METHOD for at most STEPS steps (repeatable), for the cvxpy-based methods",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"Pareto-stationarity tolerance on the min-norm (default {DEFAULT_TOLERANCE})",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes to spread the runs on")
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    if not args.methods:
        parser.error("--methods names no method")
    if args.quick:
        args.steps = min(args.steps, QUICK_STEPS)
    args.caps = _parse_caps(parser, args.cap)
    if args.nash_steps is not None:
        args.caps["nashmtl"] = args.nash_steps
    for name in ("steps", "nash_update_every", "workers"):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be positive, found {getattr(args, name)}"
            )
    if any(steps < 1 for steps in args.caps.values()):
        parser.error(f"step caps must be positive, found {args.caps}")


def _parse_caps(parser: argparse.ArgumentParser, caps: list[str]) -> dict[str, int]:
    parsed = {}
    for cap in caps:
        method, _, steps = cap.partition("=")
        if not steps.isdigit():
            parser.error(f"--cap takes METHOD=STEPS, found {cap!r}")
        if method.strip() not in BALANCERS:
            parser.error(f"--cap names an unknown method {method!r}; choose from {list(BALANCERS)}")
        parsed[method.strip()] = int(steps)
    return parsed


def plan_runs(args: argparse.Namespace, variant: Variant) -> list[RunSpec]:
    """One spec per method and start, with each method's step cap and options applied."""
    specs = []
    for method in args.methods:
        options = dict(METHOD_OPTIONS.get(method, {}))
        if method == "nashmtl":
            options["update_weights_every"] = args.nash_update_every
        steps = min(args.steps, args.caps.get(method, args.steps))
        specs += [RunSpec(method, start, steps, options) for start in variant.starts]
    return specs


def describe_deviations(args: argparse.Namespace, specs: Sequence[RunSpec]) -> list[str]:
    """Every way this run departs from the paper's protocol, to print and to save."""
    notes = []
    if args.steps != DEFAULT_STEPS:
        notes.append(f"runs had {args.steps} steps, not the paper's {DEFAULT_STEPS}")
    for method in args.methods:
        steps = min(spec.steps for spec in specs if spec.method == method)
        if steps < args.steps:
            notes.append(f"{method} was capped at {steps} steps (the others ran {args.steps})")
    if "nashmtl" in args.methods and args.nash_update_every > 1:
        notes.append(f"Nash-MTL re-solved its weights only every {args.nash_update_every} steps")
    if args.workers > 1:
        notes.append(f"runs were spread over {args.workers} processes, one torch thread each")
    return notes


def main(argv: list[str] | None = None) -> int:
    """Run every method from every start, print the table, save the figure and the JSON."""
    args = parse_args(argv)
    variant = VARIANTS[args.variant]
    specs = plan_runs(args, variant)
    for method in args.methods:  # fail before any long run on a bad name or a missing solver
        make_balancer(method, 2, **next(s.options for s in specs if s.method == method))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # 2-vectors: threads only add overhead, and timings stay comparable

    deviations = describe_deviations(args, specs)
    print(f"Variant '{variant.name}': {variant.description}")
    print(f"Starts: {', '.join(_point(start) for start in variant.starts)}")
    for note in deviations:
        print(f"Note: {note}")

    results = run_all(specs, variant, args.tolerance, args.workers)
    print()
    print(format_table(results, args.tolerance))
    for note in deviations:
        print(f"Note: {note}")

    settings = {
        "variant": variant.name,
        "variant_description": variant.description,
        "starts": variant.starts,
        "steps": args.steps,
        "learning_rate": LEARNING_RATE,
        "tolerance": args.tolerance,
        "dominance_tolerance": DOMINANCE_TOLERANCE,
        "method_options": {method: dict(METHOD_OPTIONS.get(method, {})) for method in args.methods},
        "deviations": deviations,
        "torch": torch.__version__,
    }
    write_json(args.out / "toy_two_task.json", results, settings)
    plot_results(args.out / "toy_two_task.png", results, variant)
    print(f"\nWrote {args.out / 'toy_two_task.json'} and {args.out / 'toy_two_task.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
