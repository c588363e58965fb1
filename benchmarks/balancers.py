"""Cost of one multitask SAC update with each balancer, against plain averaging, as K grows.

FAMO's reason to exist is its cost: gradient-manipulation methods (PCGrad, CAGrad, Nash-MTL, MGDA,
IMTL-G) need one gradient per task, O(K) backward passes, while FAMO needs the task losses only,
plus one forward pass without gradients to re-measure them after the step. This script times one
full :meth:`famo_rl.agents.MultiTaskSAC.update` (critic, actor and temperature, then the target
critics) for each balancer at several task counts, with the paper's 3 x 400 networks and
Meta-World's dimensions (39-dimensional observations, 4-dimensional actions), at 128 samples per
task and at a fixed total batch of 1280.

**Which balancer where.** The balancer under test handles the critic and the actor losses; the
temperature losses are always averaged (``ls``). Exceptions, each its own row: ``uw`` balances the
critic only (uncertainty weighting refuses the actor's signed losses), and ``famo, critic only`` is
the FAMO paper's MT10 variant (actor averaged). ``next_batch`` rows use
``SACConfig.famo_reevaluation="next_batch"``, which skips the re-measurement; ``every 4`` rows use
``famo_reevaluation_every=4`` (one update in four re-measures; their samples time four
consecutive updates and report the mean); ``rows 0.25`` rows use ``famo_reevaluation_rows=0.25``
(every update re-measures, on a quarter of each task's rows).

**How it is measured.** Every variant gets its own agent (same seed, same initial weights) and the
same fixed batch. After warm-up updates (discarded), rounds of one timed update per variant run in
a shuffled order, so that load on the machine hits every variant alike; each variant's time is
divided by ``ls``'s time in the same round and the medians of those ratios are reported with their
extremes. Variants whose warm-up update took longer than ``--slow-seconds`` (Nash-MTL, CAGrad and
the other gradient methods at K = 50) get ``--slow-repeats`` rounds instead of ``--repeats``.
Peak memory is measured on one more update per variant, after the timed rounds: on CUDA,
``max_memory_allocated`` above the level before the update; on the CPU, where torch keeps no such
counter, the high-water mark of the bytes that torch tensors allocated *during* the update hold at
once, from the profiler's memory events (tensors that existed before the update, such as last
step's gradients, are not subtracted when freed; numpy, cvxpy and Python objects are not counted).

Run: ``python -m benchmarks.balancers`` (about an hour on 2 CPU cores, most of it the
gradient methods at K = 50); ``--device cuda`` on a GPU; ``--quick`` for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks._common import (
    machine_description,
    markdown_table,
    set_threads,
    spread,
    summarize,
    write_json,
)
from famo_rl.agents import Batch, MultiTaskSAC, SACConfig

ROOT = Path(__file__).resolve().parents[1]
#: Meta-World's observation (without the one-hot task id) and action widths.
OBS_DIM, ACTION_DIM = 39, 4
GRADIENT_METHODS = ("pcgrad", "cagrad", "nashmtl", "mgda", "imtl")


@dataclass(frozen=True)
class Variant:
    """One row of the tables: which balancer handles which loss, and how FAMO re-measures."""

    label: str
    critic_balancer: str
    actor_balancer: str
    famo_reevaluation: Literal["same_batch", "next_batch"] = "same_batch"
    famo_reevaluation_every: int = 1
    famo_reevaluation_rows: float = 1.0

    def config(self, hidden_sizes: tuple[int, ...]) -> SACConfig:
        """The agent of this row; everything but the balancers keeps its default."""
        return SACConfig(
            hidden_sizes=hidden_sizes,
            critic_balancer=self.critic_balancer,
            actor_balancer=self.actor_balancer,
            alpha_balancer="ls",
            famo_reevaluation=self.famo_reevaluation,
            famo_reevaluation_every=self.famo_reevaluation_every,
            famo_reevaluation_rows=self.famo_reevaluation_rows,
        )

    @property
    def updates_per_sample(self) -> int:
        """Updates timed together: a whole cycle when only one update in ``n`` re-measures."""
        return self.famo_reevaluation_every


VARIANTS: dict[str, Variant] = {
    v.label: v
    for v in (
        Variant("ls", "ls", "ls"),
        Variant("uw (critic only)", "uw", "ls"),
        Variant("famo", "famo", "famo"),
        Variant("famo, critic only (paper)", "famo", "ls"),
        Variant("famo next_batch", "famo", "famo", "next_batch"),
        Variant("famo next_batch, critic only", "famo", "ls", "next_batch"),
        Variant("famo every 4", "famo", "famo", famo_reevaluation_every=4),
        Variant("famo every 4, critic only", "famo", "ls", famo_reevaluation_every=4),
        Variant("famo rows 0.25", "famo", "famo", famo_reevaluation_rows=0.25),
        Variant("famo rows 0.25, critic only", "famo", "ls", famo_reevaluation_rows=0.25),
        *(Variant(name, name, name) for name in GRADIENT_METHODS),
    )
}


@dataclass(frozen=True)
class Setting:
    """A batch size rule: ``per_task`` rows for every task, or ``total`` rows shared by all."""

    name: str
    per_task: int | None = None
    total: int | None = None

    def rows(self, num_tasks: int) -> int:
        """Rows of the batch for ``num_tasks`` tasks."""
        return self.per_task * num_tasks if self.per_task is not None else int(self.total or 0)


def make_batch(setting: Setting, num_tasks: int, device: torch.device) -> Batch:
    """A fixed random batch; with a fixed total, tasks take turns (K = 50: 25 or 26 rows each)."""
    rows = setting.rows(num_tasks)
    generator = torch.Generator().manual_seed(0)
    batch = Batch(
        obs=torch.randn(rows, OBS_DIM, generator=generator),
        action=torch.rand(rows, ACTION_DIM, generator=generator) * 2 - 1,
        reward=torch.randn(rows, generator=generator),
        next_obs=torch.randn(rows, OBS_DIM, generator=generator),
        terminated=(torch.rand(rows, generator=generator) < 0.01).float(),
        task_idx=torch.arange(rows) % num_tasks,
    )
    return Batch(**{name: getattr(batch, name).to(device) for name in batch.__dataclass_fields__})


class Timer:
    """Wall time per update, synchronising with the GPU so that queued kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, agent: MultiTaskSAC, batch: Batch, updates: int = 1) -> float:
        """Seconds per update, averaged over ``updates`` consecutive updates."""
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(updates):
            agent.update(batch)
        if self.cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / updates


def peak_memory_bytes(agent: MultiTaskSAC, batch: Batch, device: torch.device) -> int:
    """Peak bytes of one update (see the module docstring for what is counted where)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        agent.update(batch)
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated(device) - before)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        agent.update(batch)
    with tempfile.TemporaryDirectory() as scratch:
        trace_path = Path(scratch) / "trace.json"
        profiler.export_chrome_trace(str(trace_path))
        events = json.loads(trace_path.read_text())["traceEvents"]
    # Each event carries the allocator's running total ("Total Allocated") after it; the total
    # before the first event is the baseline. Frees of tensors older than the profile are not
    # recorded, so the running total's maximum above the baseline is the most that the update's
    # own tensors held at once.
    memory = sorted(
        (event for event in events if _is_cpu_memory_event(event)), key=lambda e: e["ts"]
    )
    if not memory:
        return 0
    baseline = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return int(max(0, *(event["args"]["Total Allocated"] - baseline for event in memory)))


def _is_cpu_memory_event(event: dict[str, Any]) -> bool:
    return event.get("name") == "[memory]" and event["args"].get("Device Type") == 0


def measure(
    variants: Sequence[Variant],
    setting: Setting,
    num_tasks: int,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Time and profile every variant at one (batch setting, task count); see the docstring."""
    device = torch.device(args.device)
    batch = make_batch(setting, num_tasks, device)
    timer = Timer(device)
    agents = {}
    first_seconds = {}
    cycle = {variant.label: variant.updates_per_sample for variant in variants}
    for variant in variants:
        agent = MultiTaskSAC(
            OBS_DIM, ACTION_DIM, num_tasks, variant.config(args.hidden), device=device, seed=0
        )
        first_seconds[variant.label] = max(timer(agent, batch) for _ in range(args.warmup))
        agents[variant.label] = agent
    caps = {
        label: args.slow_repeats if seconds > args.slow_seconds else args.repeats
        for label, seconds in first_seconds.items()
    }
    caps["ls"] = args.repeats
    times: dict[str, list[float]] = {label: [] for label in agents}
    ratios: dict[str, list[float]] = {label: [] for label in agents}
    order = random.Random(num_tasks)
    for round_index in range(args.repeats):
        labels = [label for label in agents if round_index < caps[label]]
        order.shuffle(labels)
        this_round = {label: timer(agents[label], batch, cycle[label]) for label in labels}
        for label, seconds in this_round.items():
            times[label].append(seconds)
            ratios[label].append(seconds / this_round["ls"])
    # Memory last, on agents past their first-step allocations, and outside the timed rounds.
    memory = {}
    if not args.no_memory:
        memory = {label: peak_memory_bytes(a, batch, device) for label, a in agents.items()}
    return [
        _record(variant, setting, num_tasks, batch, times, ratios, memory) for variant in variants
    ]


def _record(
    variant: Variant,
    setting: Setting,
    num_tasks: int,
    batch: Batch,
    times: dict[str, list[float]],
    ratios: dict[str, list[float]],
    memory: dict[str, int],
) -> dict[str, Any]:
    label = variant.label
    record: dict[str, Any] = {
        "setting": setting.name,
        "num_tasks": num_tasks,
        "batch_rows": int(batch.task_idx.shape[0]),
        "variant": label,
        "critic_balancer": variant.critic_balancer,
        "actor_balancer": variant.actor_balancer,
        "famo_reevaluation": variant.famo_reevaluation,
        "famo_reevaluation_every": variant.famo_reevaluation_every,
        "famo_reevaluation_rows": variant.famo_reevaluation_rows,
        "times_ms": [1000 * t for t in times[label]],
        "time_ms": summarize([1000 * t for t in times[label]]),
        "ratios_to_ls": ratios[label],
        "ratio_to_ls": summarize(ratios[label]),
    }
    if label in memory:
        record["peak_memory_mib"] = memory[label] / 2**20
    return record


# --------------------------------------------------------------------------------------------------
# Reporting.


def tables(records: list[dict[str, Any]], settings: Sequence[Setting]) -> str:
    """Per batch setting: ratio to ``ls`` and milliseconds per update, then peak memory."""
    text = []
    for setting in settings:
        mine = [r for r in records if r["setting"] == setting.name]
        task_counts = sorted({r["num_tasks"] for r in mine})
        labels = list(dict.fromkeys(r["variant"] for r in mine))
        cell = {(r["variant"], r["num_tasks"]): r for r in mine}
        rows, memory_rows = [], []
        for label in labels:
            row, memory_row = [f"`{label}`"], [f"`{label}`"]
            for k in task_counts:
                record = cell[(label, k)]
                row.append(
                    f"{spread(record['ratio_to_ls'])}x · {record['time_ms']['median']:.0f} ms"
                    f" (n={record['time_ms']['n']})"
                )
                memory = record.get("peak_memory_mib")
                memory_row.append("-" if memory is None else f"{memory:.1f}")
            rows.append(row)
            memory_rows.append(memory_row)
        batch_rows = {k: cell[(labels[0], k)]["batch_rows"] for k in task_counts}
        headers = ["balancer"] + [f"K={k} (batch {batch_rows[k]})" for k in task_counts]
        text.append(f"### {setting.name}: time per update, ratio to `ls` [min-max] · median\n")
        text.append(markdown_table(headers, rows))
        text.append(f"\n### {setting.name}: peak memory of one update above its start (MiB)\n")
        text.append(markdown_table(headers, memory_rows))
        text.append("")
    return "\n".join(text)


def summary_table(records: list[dict[str, Any]], settings: Sequence[Setting]) -> str:
    """One table of every variant's median ratio to ``ls``, a column per (batch setting, K)."""
    columns = [
        (setting.name, k)
        for setting in settings
        for k in sorted({r["num_tasks"] for r in records if r["setting"] == setting.name})
    ]
    cell = {(r["variant"], r["setting"], r["num_tasks"]): r for r in records}
    rows = []
    for label in dict.fromkeys(r["variant"] for r in records):
        row = [f"`{label}`"]
        for name, k in columns:
            record = cell.get((label, name, k))
            row.append("-" if record is None else f"{record['ratio_to_ls']['median']:.2f}")
        rows.append(row)
    headers = ["balancer", *(f"{name}, K={k}" for name, k in columns)]
    return (
        "### Time per update, median ratio to `ls` within a round, every setting\n\n"
        + markdown_table(headers, rows)
    )


def plot(records: list[dict[str, Any]], settings: Sequence[Setting], path: Path) -> None:
    """Time per update against K, one line per balancer, one panel per batch setting.

    Solid lines: methods that only weight the losses (one backward pass); dashed: methods that
    need one gradient per task.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["variant"] for r in records))
    colors = plt.get_cmap("tab20").colors
    figure, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings) + 2.5, 4.5))
    axes = list(axes) if len(settings) > 1 else [axes]
    for axis, setting in zip(axes, settings, strict=True):
        mine = [r for r in records if r["setting"] == setting.name]
        for index, label in enumerate(labels):
            points = sorted(
                (r["num_tasks"], r["time_ms"]["median"]) for r in mine if r["variant"] == label
            )
            gradient = label in GRADIENT_METHODS
            axis.plot(
                *zip(*points, strict=True),
                "--" if gradient else "-",
                color="black" if label == "ls" else colors[index % len(colors)],
                linewidth=2.5 if label in ("ls", "famo") else 1.2,
                marker="o",
                markersize=3,
                label=label,
            )
        task_counts = sorted({r["num_tasks"] for r in mine})
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks(task_counts, [str(k) for k in task_counts])
        axis.minorticks_off()
        axis.set_xlabel("number of tasks K")
        axis.set_ylabel("time per SAC update (ms, median)")
        axis.set_title(setting.name)
        axis.grid(True, alpha=0.3)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# --------------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 50])
    parser.add_argument("--per-task", type=int, default=128, help="rows per task (first setting)")
    parser.add_argument("--total", type=int, default=1280, help="total rows (second setting)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[400, 400, 400])
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="discarded updates per variant")
    parser.add_argument("--slow-seconds", type=float, default=5.0)
    parser.add_argument("--slow-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (all methods)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="tiny networks, K in {2, 3}")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="measure nothing: write the markdown and the plot again from a results file",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.per_task, args.total, args.hidden = [2, 3], 16, 48, [32, 32]
        args.repeats, args.warmup, args.slow_repeats = 1, 1, 1
    args.hidden = tuple(args.hidden)
    if "ls" not in args.methods:
        args.methods = ["ls", *args.methods]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        report(json.loads(args.report.read_text())["results"], args.report.with_suffix(""))
        return 0
    set_threads(args.threads)
    variants = [VARIANTS[label] for label in args.methods]
    settings = [
        Setting(f"{args.per_task} samples per task", per_task=args.per_task),
        Setting(f"total batch {args.total}", total=args.total),
    ]
    records = []
    with warnings.catch_warnings():
        # cvxpy warns on every Nash-MTL solve that its problem cannot be cached; expected here.
        warnings.filterwarnings("ignore", message=".*DPP.*")
        for setting in settings:
            for num_tasks in args.tasks:
                started = time.perf_counter()
                records += measure(variants, setting, num_tasks, args)
                print(
                    f"{setting.name}, K={num_tasks}: {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
    name = "balancers_quick" if args.quick else f"balancers_{args.device.split(':')[0]}"
    run_settings = {
        key: value
        for key, value in vars(args).items()
        if key not in ("out", "quick", "methods", "report")
    }
    run_settings["hidden"] = list(args.hidden)
    run_settings["variants"] = [vars(v) for v in variants]
    write_json(
        args.out / f"{name}.json",
        {"machine": machine_description(args.device), "settings": run_settings, "results": records},
    )
    report(records, args.out / name)
    return 0


def report(records: list[dict[str, Any]], stem: Path) -> None:
    """Write ``<stem>.md`` (the summary, then every setting's tables) and ``<stem>.png``."""
    settings = [Setting(name) for name in dict.fromkeys(r["setting"] for r in records)]
    text = summary_table(records, settings) + "\n" + tables(records, settings)
    print(text)
    stem.with_suffix(".md").write_text(text)
    plot(records, settings, stem.with_suffix(".png"))


if __name__ == "__main__":
    raise SystemExit(main())
