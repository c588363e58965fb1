"""FAMO against linear scalarization on the imbalanced synthetic suite, over a few seeds.

Five point-mass reaching tasks whose reward scales span 1e-2 .. 1e2, so the critic losses differ by
about eight orders of magnitude and an average of them is dominated by the large-scale tasks. Each
method trains the same small multitask SAC from the same seeds; the script prints the best and the
last mean evaluation success and the worst task's success at the end.

Run: ``python examples/synthetic_study.py`` (about 4 minutes on 2 CPU cores), or
``--seeds 0 --steps 500`` for a quick look.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from famo_rl.training.config import config_from_dict
from famo_rl.training.trainer import Trainer

REWARD_SCALES = [0.01, 0.1, 1.0, 10.0, 100.0]


def study_config(balancer: str, seed: int, steps: int) -> dict:
    """The run both methods share; only the critic and actor balancers differ."""
    return {
        "env": {
            "name": "synthetic",
            "num_tasks": len(REWARD_SCALES),
            "reward_scales": REWARD_SCALES,
        },
        "agent": {
            "hidden_sizes": [64, 64],
            "actor_lr": 1e-3,
            "critic_lr": 1e-3,
            "alpha_lr": 1e-3,
            "init_alpha": 0.1,
            "critic_balancer": balancer,
            "actor_balancer": balancer,
            "alpha_balancer": "ls",
        },
        "seed": seed,
        "total_steps": steps,
        "warmup_steps": min(200, steps // 2),
        "batch_size_per_task": 64,
        "buffer_capacity": 100_000,
        "eval_every": max(steps // 4, 1),
        "eval_episodes": 10,
        "log_every": 100,
        "checkpoint_every": steps,
        "progress": False,
        "num_threads": 1,
    }


def run(balancer: str, seed: int, steps: int, folder: Path) -> dict:
    """Train once and return the best and last success rates."""
    trainer = Trainer(config_from_dict(study_config(balancer, seed, steps)), folder)
    try:
        result = trainer.train()
    finally:
        trainer.close()
    assert result.last_eval is not None
    per_task = result.last_eval.success_rate
    return {
        "balancer": balancer,
        "seed": seed,
        "best_mean": result.best_success_rate,
        "last_mean": result.last_eval.mean_success_rate,
        "last_worst": min(per_task.values()),
        "last_per_task": per_task,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--methods", nargs="+", default=["ls", "famo"])
    parser.add_argument("--json", dest="json_path", help="write the results to this file")
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            for balancer in args.methods:
                record = run(balancer, seed, args.steps, Path(scratch) / f"{balancer}-{seed}")
                results.append(record)
                rates = " ".join(f"{v:.1f}" for v in record["last_per_task"].values())
                print(
                    f"{balancer:6s} seed {seed}: best {record['best_mean']:.2f} "
                    f"last {record['last_mean']:.2f} per task [{rates}]",
                    flush=True,
                )

    print(f"\n{'method':8s} {'best mean':>10s} {'last mean':>10s} {'last worst':>11s}")
    for balancer in args.methods:
        mine = [r for r in results if r["balancer"] == balancer]
        best, last, worst = (
            np.mean([r[k] for r in mine]) for k in ("best_mean", "last_mean", "last_worst")
        )
        print(f"{balancer:8s} {best:10.2f} {last:10.2f} {worst:11.2f}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
