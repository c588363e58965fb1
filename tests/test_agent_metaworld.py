"""Our agent under Meta-World's own evaluation, and a short MT10 run through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from metaworld.evaluation import evaluation as metaworld_evaluation
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from famo_rl.agents import MultiTaskSAC, SACConfig
from famo_rl.cli import main
from famo_rl.envs import make_metaworld_envs
from famo_rl.evaluation import evaluate

TASKS = ["reach-v3", "push-v3"]


def test_metaworld_evaluation_runs_on_the_agent_unchanged_and_agrees_with_ours(
    tmp_path: Path,
) -> None:
    def build():
        return make_metaworld_envs(TASKS, seed=3, cache_dir=tmp_path, max_episode_steps=30)

    envs = build()
    num_tasks = len(TASKS)
    agent = MultiTaskSAC(
        obs_dim=envs.single_observation_space.shape[0] - num_tasks,
        action_dim=envs.single_action_space.shape[0],
        num_tasks=num_tasks,
        config=SACConfig(hidden_sizes=(32, 32)),
        action_low=envs.single_action_space.low,
        action_high=envs.single_action_space.high,
        seed=0,
    )
    mean_success, mean_return, per_task, returns = metaworld_evaluation(agent, envs, 3)
    assert set(per_task) == set(TASKS)
    assert all(len(r) == 3 for r in returns.values())
    # Our protocol gives the same numbers: the agent's eval actions are deterministic.
    ours = evaluate(agent, build(), 3)
    assert ours.success_rate == per_task
    assert ours.mean_return == pytest.approx(mean_return, rel=1e-9)
    assert ours.mean_success_rate == pytest.approx(mean_success)


@pytest.mark.slow
def test_mt10_smoke_run_through_the_cli_writes_the_documented_tags(tmp_path: Path) -> None:
    config = {
        "env": {"name": "MT10", "max_episode_steps": 100},
        "agent": {"hidden_sizes": [32, 32]},
        "total_steps": 2000,
        "warmup_steps": 500,
        "batch_size_per_task": 16,
        "buffer_capacity": 50000,
        "eval_every": 1000,
        "eval_episodes": 1,
        "log_every": 250,
        "checkpoint_every": 1000,
        "progress": False,
        "num_threads": 1,
    }
    path = tmp_path / "mt10.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["train", str(path), "--run-dir", str(run)]) == 0
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ["eval/success_rate", "time/steps_per_second", "train/critic_loss"]:
        assert tag in tags
    for task in ["reach-v3", "pick-place-v3", "window-close-v3"]:
        assert f"eval/success_rate/{task}" in tags
        assert f"balancer/critic/{task}" in tags
        assert f"rollout/success_rate/{task}" in tags
    steps = [e.value for e in events.Scalars("time/steps_per_second")]
    assert np.isfinite(steps).all()
    assert torch.load(next((run / "checkpoints").glob("step_2000.pt")), weights_only=True)
