"""Does FAMO still learn when it skips the re-measurement of the losses after each step?

``SACConfig.famo_reevaluation="next_batch"`` feeds FAMO the next update's losses instead of
re-measuring them on the same batch after the step, which saves the extra forward passes
(``benchmarks/balancers.py`` measures how much). This script measures what it costs in learning:
the synthetic study of ``examples/synthetic_study.py`` (five point-mass tasks whose reward scales
span 1e-2 .. 1e2, the same small SAC), run for ``ls``, FAMO with ``same_batch``, FAMO with
``next_batch``, FAMO re-measuring on one update in four (``famo_reevaluation_every=4``) and FAMO
re-measuring on a quarter of each task's rows (``famo_reevaluation_rows=0.25``) on the same seeds,
interleaved seed by seed. It reports success rates, the run's wall time relative to ``ls``, and how
far FAMO's task weights moved from uniform.

Run: ``python -m benchmarks.reevaluation`` (about 25 minutes on 2 CPU cores); ``--quick`` for a
smoke test; ``--variants`` to run some of them (``ls`` always runs, as the time reference) and
``--name`` to write their results beside the full study's instead of over them.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks._common import machine_description, markdown_table, set_threads, write_json
from famo_rl.training.config import config_from_dict
from famo_rl.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "examples" / "synthetic_study.py"
#: Variant name -> (balancer of the critic and actor losses, famo_reevaluation,
#: famo_reevaluation_every and famo_reevaluation_rows).
VARIANTS: dict[str, tuple[str, str, int, float]] = {
    "ls": ("ls", "same_batch", 1, 1.0),
    "famo same_batch": ("famo", "same_batch", 1, 1.0),
    "famo next_batch": ("famo", "next_batch", 1, 1.0),
    "famo every 4": ("famo", "same_batch", 4, 1.0),
    "famo rows 0.25": ("famo", "same_batch", 1, 0.25),
}


def load_study() -> ModuleType:
    """``examples/synthetic_study.py`` as a module, so both studies share one configuration."""
    spec = importlib.util.spec_from_file_location("synthetic_study", STUDY)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load {STUDY}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_variant(
    study: ModuleType, variant: str, seed: int, steps: int, folder: Path
) -> dict[str, Any]:
    """Train one variant from one seed; success rates, wall time and the final FAMO weights."""
    balancer, reevaluation, every, rows = VARIANTS[variant]
    data = study.study_config(balancer, seed, steps)
    data["agent"]["famo_reevaluation"] = reevaluation
    data["agent"]["famo_reevaluation_every"] = every
    data["agent"]["famo_reevaluation_rows"] = rows
    start = time.perf_counter()
    trainer = Trainer(config_from_dict(data), folder)
    try:
        result = trainer.train()
        weights = {
            role: getattr(trainer.agent, f"{role}_balancer").weights.tolist()
            for role in ("critic", "actor")
        }
    finally:
        trainer.close()
    seconds = time.perf_counter() - start
    assert result.last_eval is not None
    per_task = result.last_eval.success_rate
    return {
        "variant": variant,
        "seed": seed,
        "best_mean": result.best_success_rate,
        "last_mean": result.last_eval.mean_success_rate,
        "last_worst": min(per_task.values()),
        "last_per_task": list(per_task.values()),
        "seconds": seconds,
        "final_weights": weights,
        "critic_weight_ratio": max(weights["critic"]) / min(weights["critic"]),
    }


def summary_rows(records: list[dict[str, Any]], variants: Sequence[str]) -> list[list[str]]:
    """One row per variant: mean success over seeds (per seed in brackets), time against ``ls``."""
    rows = []
    for variant in variants:
        mine = [r for r in records if r["variant"] == variant]
        cells = [f"`{variant}`"]
        for key in ("best_mean", "last_mean", "last_worst"):
            values = [r[key] for r in mine]
            per_seed = ", ".join(f"{v:.2f}" for v in values)
            cells.append(f"{statistics.mean(values):.2f} ({per_seed})")
        ratios = [r["seconds"] / _ls_seconds(records, r["seed"]) for r in mine]
        cells.append(f"{statistics.median(ratios):.2f}")
        weight_ratios = [r["critic_weight_ratio"] for r in mine]
        cells.append(f"{statistics.median(weight_ratios):.2f}" if variant != "ls" else "-")
        rows.append(cells)
    return rows


def _ls_seconds(records: list[dict[str, Any]], seed: int) -> float:
    return next(r["seconds"] for r in records if r["variant"] == "ls" and r["seed"] == seed)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3000, help="vector steps per run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (all runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="one seed, 300 steps: a smoke test")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="variants to run (ls always runs: run times are relative to it)",
    )
    parser.add_argument(
        "--name", default="reevaluation", help="output file stem (default: reevaluation)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.name = [0], 300, f"{args.name}_quick"
    if "ls" not in args.variants:
        args.variants = ["ls", *args.variants]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    study = load_study()
    variants = args.variants
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        # A discarded first run takes the one-time costs (imports, first allocations).
        run_variant(study, "ls", args.seeds[0], 50, Path(scratch) / "warm-up")
        # Seed by seed, every variant in turn, starting from a different one each seed: load on
        # the machine hits them alike.
        for index, seed in enumerate(args.seeds):
            shift = index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                folder = Path(scratch) / f"{variant.replace(' ', '-')}-{seed}"
                record = run_variant(study, variant, seed, args.steps, folder)
                records.append(record)
                print(
                    f"{variant:16s} seed {seed}: best {record['best_mean']:.2f} last "
                    f"{record['last_mean']:.2f} worst {record['last_worst']:.2f} "
                    f"({record['seconds']:.0f} s)",
                    flush=True,
                )
    headers = [
        "variant",
        "best mean success",
        "last mean success",
        "last worst-task success",
        "run time / ls",
        "critic weights max/min",
    ]
    table = markdown_table(headers, summary_rows(records, variants))
    print("\n" + table)
    settings = {"seeds": args.seeds, "steps": args.steps, "threads": args.threads}
    write_json(
        args.out / f"{args.name}.json",
        {"machine": machine_description(), "settings": settings, "runs": records},
    )
    (args.out / f"{args.name}.md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
