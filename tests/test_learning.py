"""The agent learns: a short run on the synthetic suite reaches a stated success rate."""

from __future__ import annotations

from pathlib import Path

import pytest

from famo_rl.training.config import config_from_dict
from famo_rl.training.trainer import Trainer


@pytest.mark.parametrize("balancer", ["famo"])
def test_sac_learns_the_synthetic_suite(tmp_path: Path, balancer: str) -> None:
    config = config_from_dict(
        {
            "env": {"name": "synthetic", "num_tasks": 4, "reward_scales": [1.0, 1.0, 1.0, 1.0]},
            "agent": {
                "hidden_sizes": [64, 64],
                "actor_lr": 1e-3,
                "critic_lr": 1e-3,
                "alpha_lr": 1e-3,
                "init_alpha": 0.1,
                "critic_balancer": balancer,
                "actor_balancer": balancer,
            },
            "total_steps": 2000,
            "warmup_steps": 200,
            "batch_size_per_task": 64,
            "buffer_capacity": 100_000,
            "eval_every": 1000,
            "eval_episodes": 10,
            "log_every": 500,
            "checkpoint_every": 2000,
            "progress": False,
            "num_threads": 1,
        }
    )
    trainer = Trainer(config, tmp_path / "run")
    try:
        result = trainer.train()
    finally:
        trainer.close()
    assert result.updates == 2000 - 200
    assert result.last_eval is not None
    # A random policy succeeds about 0.09 of the time here; the learned one reaches most goals.
    assert result.best_success_rate >= 0.8, result.last_eval.success_rate
