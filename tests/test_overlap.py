"""``overlap_env_steps``: the learner updates while the environment workers step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from famo_rl.training.config import ConfigError, config_from_dict
from famo_rl.training.trainer import Trainer

TASKS = ["reach-v3", "drawer-close-v3"]
WARMUP = 10
STEPS = 30


def config(overlap: bool, strategy: str = "async", name: Any = None) -> dict[str, Any]:
    return {
        "env": {
            "name": TASKS if name is None else name,
            "max_episode_steps": 20,
            "vector_strategy": strategy,
        },
        "agent": {"hidden_sizes": [16, 16], "critic_balancer": "famo", "actor_balancer": "famo"},
        "total_steps": STEPS,
        "warmup_steps": WARMUP,
        "batch_size_per_task": 4,
        "buffer_capacity": 1000,
        "eval_every": 10_000,
        "eval_episodes": 1,
        "checkpoint_every": 10_000,
        "progress": False,
        "num_threads": 1,
        "overlap_env_steps": overlap,
    }


def updates_seen(overlap: bool, run_dir: Path) -> list[tuple[str, int]]:
    """(the environments' state, transitions in the buffer) at every update of a short run."""
    trainer = Trainer(config_from_dict(config(overlap)), run_dir)
    seen: list[tuple[str, int]] = []
    update = trainer.agent.update

    def recording_update(batch: Any) -> Any:
        seen.append((trainer.envs._state.name, len(trainer.buffer)))  # type: ignore[attr-defined]
        return update(batch)

    trainer.agent.update = recording_update  # type: ignore[method-assign]
    try:
        result = trainer.train()
    finally:
        trainer.close()
    assert result.steps == STEPS and result.updates == STEPS - WARMUP
    return seen


def test_updates_run_while_the_workers_step_and_see_the_previous_steps(tmp_path: Path) -> None:
    overlapped = updates_seen(True, tmp_path / "overlap")
    sequential = updates_seen(False, tmp_path / "sequential")
    tasks = len(TASKS)
    # Overlapped: every update ran while a step was pending in the workers, on the transitions
    # of the steps before it.
    assert [state for state, _ in overlapped] == ["WAITING_STEP"] * (STEPS - WARMUP)
    assert [n for _, n in overlapped] == [s * tasks for s in range(WARMUP, STEPS)]
    # Sequential: the workers were idle, and the update saw its own step's transitions too.
    assert [state for state, _ in sequential] == ["DEFAULT"] * (STEPS - WARMUP)
    assert [n for _, n in sequential] == [s * tasks for s in range(WARMUP + 1, STEPS + 1)]


@pytest.mark.parametrize(
    ("strategy", "name", "message"),
    [
        ("sync", None, "needs env.vector_strategy 'async'"),
        ("async", "synthetic", "applies to Meta-World"),
    ],
)
def test_overlap_needs_worker_processes(strategy: str, name: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(config(True, strategy, name))


def worker_priorities(trainer: Trainer) -> list[tuple[int, int]]:
    """(scheduling policy, nice value) of every environment worker."""
    processes = trainer.envs.processes  # type: ignore[attr-defined]
    return [
        (os.sched_getscheduler(process.pid), os.getpriority(os.PRIO_PROCESS, process.pid))
        for process in processes
    ]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="needs Linux scheduling policies")
@pytest.mark.parametrize(
    ("priority", "overlap"), [("idle", True), ("low", True), ("normal", True), ("idle", False)]
)
def test_overlapped_workers_run_at_a_lower_priority(
    tmp_path: Path, priority: str, overlap: bool
) -> None:
    learner = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    expected = {
        "idle": (os.SCHED_IDLE, learner[1]),
        "low": (learner[0], 19),
        "normal": learner,
    }[priority if overlap else "normal"]
    data = {**config(overlap), "overlap_worker_priority": priority, "total_steps": WARMUP + 2}
    trainer = Trainer(config_from_dict(data), tmp_path / "run")
    try:
        assert worker_priorities(trainer) == [expected] * len(TASKS)
        assert trainer.train().updates == 2  # the workers still step and the learner updates
        # The learner keeps its own priority.
        assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)) == learner
    finally:
        trainer.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="needs Linux scheduling policies")
def test_idle_priority_falls_back_to_nice_19_where_it_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> None:
        raise PermissionError("Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    learner = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    trainer = Trainer(config_from_dict({**config(True), "total_steps": WARMUP + 2}), tmp_path)
    try:
        assert worker_priorities(trainer) == [(learner[0], 19)] * len(TASKS)
    finally:
        trainer.close()


def test_unknown_worker_priority_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"overlap_worker_priority.*found 'lowest'"):
        config_from_dict({**config(True), "overlap_worker_priority": "lowest"})
