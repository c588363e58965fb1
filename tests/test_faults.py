"""Fault injection: non-finite losses, signals, killed processes, corrupt and mismatched
checkpoints.

The process tests start the real CLI in a subprocess on the synthetic suite with tiny networks, and
kill or signal it at chosen moments; the rest run in process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from famo_rl.agents import Batch, MultiTaskReplayBuffer, MultiTaskSAC, SACConfig
from famo_rl.cli import main
from famo_rl.training.checkpoints import CheckpointManager, load_checkpoint
from famo_rl.training.config import load_config
from famo_rl.training.trainer import Trainer

TINY: dict[str, Any] = {
    "env": {"name": "synthetic", "num_tasks": 3, "max_episode_steps": 20},
    "agent": {
        "hidden_sizes": [16, 16],
        "critic_balancer": "famo",
        "actor_balancer": "famo",
        "alpha_balancer": "ls",
    },
    "total_steps": 100,
    "warmup_steps": 20,
    "batch_size_per_task": 8,
    "buffer_capacity": 3000,
    "eval_every": 1000,
    "eval_episodes": 1,
    "log_every": 10,
    "checkpoint_every": 20,
    "keep_checkpoints": 3,
    "progress": False,
    "num_threads": 1,
}
#: Long enough that a subprocess is still running when the test signals or kills it.
LONG_RUN = {**TINY, "total_steps": 1_000_000, "checkpoint_every": 25}


def write_config(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def checkpoint_steps(run: Path) -> list[int]:
    return [int(p.stem.split("_")[1]) for p in CheckpointManager(run / "checkpoints").paths()]


def start_cli(
    args: list[str], script: str | None = None, new_session: bool = False
) -> subprocess.Popen[str]:
    """``famo-rl`` in a subprocess; ``script`` runs first in that process (to inject a fault)."""
    code = (
        script or ""
    ) + "\nimport sys\nfrom famo_rl.cli import main\nsys.exit(main(sys.argv[1:]))"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=new_session,
    )


def wait_for(condition, process: subprocess.Popen[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"process ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.05)


def resumed_trainer(run: Path, **overrides: Any) -> Trainer:
    config = load_config(run / "config.yaml", [f"{k}={v}" for k, v in overrides.items()])
    return Trainer(config, run, resume=True)


# --------------------------------------------------------------------------------------------------
# Non-finite losses.


def tiny_agent() -> MultiTaskSAC:
    config = SACConfig(hidden_sizes=(16, 16), critic_balancer="famo", actor_balancer="famo")
    return MultiTaskSAC(obs_dim=3, action_dim=2, num_tasks=2, config=config, seed=0)


def tiny_batch(reward_fill: float | None = None) -> Batch:
    generator = torch.Generator().manual_seed(1)
    rows = 8
    reward = torch.randn(rows, generator=generator)
    if reward_fill is not None:
        reward[:4] = reward_fill  # task 0's rows
    return Batch(
        obs=torch.randn(rows, 3, generator=generator),
        action=torch.rand(rows, 2, generator=generator) * 2 - 1,
        reward=reward,
        next_obs=torch.randn(rows, 3, generator=generator),
        terminated=torch.zeros(rows),
        task_idx=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
    )


def snapshot(module: torch.nn.Module | dict) -> dict[str, torch.Tensor]:
    state = module if isinstance(module, dict) else module.state_dict()
    return {k: v.clone() for k, v in _flatten(state).items()}


def _flatten(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        return {
            k: v
            for key, value in state.items()
            for k, v in _flatten(value, f"{prefix}.{key}").items()
        }
    if isinstance(state, list):
        return {
            k: v
            for i, value in enumerate(state)
            for k, v in _flatten(value, f"{prefix}.{i}").items()
        }
    return {}


def assert_same(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, equal_nan=True, msg=key)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_non_finite_critic_loss_skips_the_critic_step_and_leaves_its_state(poison: float) -> None:
    agent = tiny_agent()
    agent.update(tiny_batch())  # creates the optimizers' moments
    critic = snapshot(agent.critic)
    optimizer = snapshot(agent.critic_optimizer.state_dict())
    # FAMO's logits and their Adam state (its record of the latest finite losses may move).
    balancer = {k: v for k, v in snapshot(agent.critic_balancer).items() if "losses" not in k}
    actor = snapshot(agent.actor)

    metrics = agent.update(tiny_batch(reward_fill=poison))

    assert bool(metrics["skipped"])
    assert_same(critic, snapshot(agent.critic))
    assert_same(optimizer, snapshot(agent.critic_optimizer.state_dict()))
    after = snapshot(agent.critic_balancer)
    assert_same(balancer, {k: after[k] for k in balancer})
    # The actor's losses do not read the reward: its step went ahead.
    assert any(not torch.equal(v, snapshot(agent.actor)[k]) for k, v in actor.items())
    assert int(agent.skipped_updates) == 1 and int(agent.consecutive_skips) == 1

    agent.update(tiny_batch(reward_fill=poison))
    assert int(agent.consecutive_skips) == 2
    assert not bool(agent.update(tiny_batch())["skipped"])
    assert int(agent.skipped_updates) == 2 and int(agent.consecutive_skips) == 0
    assert all(torch.isfinite(p).all() for p in agent.critic.parameters())


def test_non_finite_observations_skip_every_learner_and_keep_everything_finite() -> None:
    agent = tiny_agent()
    agent.update(tiny_batch())
    state = snapshot(agent.state_dict())
    batch = tiny_batch()
    batch.obs[0, 0] = float("nan")
    assert bool(agent.update(batch)["skipped"])
    after = snapshot(agent.state_dict())
    changed = {k for k in state if not torch.equal(state[k], after[k])}
    # The target critics' Polyak step, the skip count and the noise generator move; so may the
    # balancers' records of the latest finite losses.
    moved = (".critic_target", ".skipped_updates", ".generator")
    assert changed and all(k.startswith(moved) or "losses" in k or "floors" in k for k in changed)
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_skipped_updates_are_counted_and_a_run_of_them_stops_the_run(
    tmp_path: Path, capsys
) -> None:
    # A reward scale of 1e300 overflows float32 in the replay buffer: every TD error is infinite.
    data = {
        **TINY,
        "env": {**TINY["env"], "reward_scales": [1.0, 1.0, 1e300]},
        "max_consecutive_skips": 5,
        "log_every": 2,
    }
    run = tmp_path / "run"
    code = main(["train", str(write_config(tmp_path, data)), "--run-dir", str(run)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "5 consecutive updates (limit max_consecutive_skips=5) had non-finite" in err[0]
    assert "step_20.pt" in err[0] and "--resume" in err[0]
    # The last good checkpoint (step 20, before updates began) is intact; nothing newer was written.
    assert checkpoint_steps(run) == [20]
    assert load_checkpoint(run / "checkpoints" / "step_20.pt")["step"] == 20
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    assert [e.value for e in events.Scalars("train/skipped_updates")][-1] >= 2


def test_a_few_skipped_updates_do_not_stop_the_run(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    sample = MultiTaskReplayBuffer.sample

    def sometimes_poisoned(self: MultiTaskReplayBuffer, rows: int) -> Batch:
        batch = sample(self, rows)
        calls["n"] += 1
        if calls["n"] in (3, 4, 5):
            batch.reward[0] = float("nan")
        return batch

    monkeypatch.setattr(MultiTaskReplayBuffer, "sample", sometimes_poisoned)
    data = {**TINY, "max_consecutive_skips": 4}
    assert main(["train", str(write_config(tmp_path, data)), "--run-dir", str(tmp_path / "r")]) == 0
    state = CheckpointManager(tmp_path / "r" / "checkpoints").load_latest()
    assert state is not None and state["step"] == 100
    assert int(state["agent"]["skipped_updates"]) == 3


# --------------------------------------------------------------------------------------------------
# Signals and killed processes.


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path, signum: int) -> None:
    run = tmp_path / "run"
    process = start_cli(["train", str(write_config(tmp_path, LONG_RUN)), "--run-dir", str(run)])
    wait_for(lambda: 50 in checkpoint_steps(run), process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert f"{signal.Signals(signum).name} received: stopped at step" in err
    stopped_at = int(err.split("stopped at step ")[1].split(",")[0])
    assert max(checkpoint_steps(run)) == stopped_at >= 50

    trainer = resumed_trainer(run, total_steps=stopped_at + 30)
    try:
        assert trainer.step == stopped_at
        result = trainer.train()
    finally:
        trainer.close()
    assert result.steps == stopped_at + 30 and result.stopped_by is None


def test_kill_9_mid_run_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = start_cli(["train", str(write_config(tmp_path, LONG_RUN)), "--run-dir", str(run)])
    wait_for(lambda: 75 in checkpoint_steps(run), process)
    process.kill()
    process.communicate(timeout=30)

    path, saved = CheckpointManager(run / "checkpoints").latest()  # type: ignore[misc]
    trainer = resumed_trainer(run, total_steps=saved["step"] + 40)
    try:
        assert trainer.step == saved["step"] and trainer.updates == saved["updates"]
        balancer = snapshot(saved["agent"]["critic_balancer"])
        assert_same(balancer, snapshot(trainer.agent.critic_balancer))
        result = trainer.train()
    finally:
        trainer.close()
    assert result.steps == saved["step"] + 40
    assert result.updates == saved["updates"] + 40
    final = CheckpointManager(run / "checkpoints").load_latest()
    assert final is not None
    # Training went on: FAMO took 40 more logit steps on every task.
    steps_before = saved["agent"]["critic_balancer"]["adam_steps"]
    assert torch.equal(final["agent"]["critic_balancer"]["adam_steps"], steps_before + 40)


DIE_WHILE_WRITING_THE_THIRD_CHECKPOINT = textwrap.dedent(
    """
    import os, signal, torch
    _save, _calls = torch.save, [0]
    def _dying_save(obj, stream, *args, **kwargs):
        _calls[0] += 1
        if _calls[0] == 3:
            stream.write(b"PK\\x03\\x04 half a checkpoint")
            stream.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return _save(obj, stream, *args, **kwargs)
    torch.save = _dying_save
    """
)


def test_kill_9_mid_checkpoint_keeps_the_previous_ones(tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = start_cli(
        ["train", str(write_config(tmp_path, LONG_RUN)), "--run-dir", str(run)],
        script=DIE_WHILE_WRITING_THE_THIRD_CHECKPOINT,
    )
    process.communicate(timeout=90)
    assert process.returncode == -signal.SIGKILL
    folder = run / "checkpoints"
    assert checkpoint_steps(run) == [25, 50]
    assert len(list(folder.glob(".step_75.pt.*.tmp"))) == 1  # the half-written file, never renamed

    trainer = resumed_trainer(run, total_steps=80)
    try:
        assert trainer.step == 50
        trainer.train()
    finally:
        trainer.close()
    assert checkpoint_steps(run) == [50, 75, 80]
    assert not list(folder.glob("*.tmp"))  # the next save cleared the leftover


# --------------------------------------------------------------------------------------------------
# Corrupt, unsafe and mismatched checkpoints.


@pytest.fixture()
def short_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    data = {**TINY, "total_steps": 60}
    assert main(["train", str(write_config(tmp_path, data)), "--run-dir", str(run)]) == 0
    assert checkpoint_steps(run) == [20, 40, 60]
    return run


class _RunsCode:
    """Unpickling this would create a file: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def corrupt(path: Path, how: str, marker: Path) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(4096))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "code":
        torch.save({"step": 60, "payload": _RunsCode(marker)}, path)
    elif how == "not a mapping":
        torch.save([1, 2, 3], path)


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "code", "not a mapping"])
def test_an_unreadable_newest_checkpoint_is_reported_and_the_previous_used(
    short_run: Path, tmp_path: Path, how: str
) -> None:
    marker = tmp_path / "code-ran"
    corrupt(short_run / "checkpoints" / "step_60.pt", how, marker)
    with pytest.warns(UserWarning, match=r"step_60\.pt is unreadable .*trying the previous one"):
        trainer = resumed_trainer(short_run)
    try:
        assert trainer.step == 40
    finally:
        trainer.close()
    assert not marker.exists()


def test_no_readable_checkpoint_exits_2(short_run: Path, capsys) -> None:
    for path in (short_run / "checkpoints").glob("step_*.pt"):
        path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning):
        assert main(["train", "--resume", str(short_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"no readable checkpoint in {short_run / 'checkpoints'}")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("env.num_tasks=4", "was saved for tasks ['reach-0', 'reach-1', 'reach-2'], but this run"),
        ("agent.critic_balancer=ls", "critic_balancer='famo', but this agent has"),
        ("agent.hidden_sizes=[32,32]", "hidden_sizes=[16, 16], but this agent has"),
        ("agent.per_task_alpha=false", "per_task_alpha=True, but this agent has"),
    ],
)
def test_a_checkpoint_from_another_setting_is_refused(
    short_run: Path, capsys, override: str, message: str
) -> None:
    before = sorted(p.name for p in (short_run / "checkpoints").iterdir())
    assert main(["train", "--resume", str(short_run), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "step_60.pt" in err and message in err
    assert sorted(p.name for p in (short_run / "checkpoints").iterdir()) == before


# --------------------------------------------------------------------------------------------------
# The replay buffer in checkpoints.


def test_the_replay_buffer_is_saved_and_restored_with_its_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    data = {**TINY, "total_steps": 60, "checkpoint_buffer": True}
    assert main(["train", str(write_config(tmp_path, data)), "--run-dir", str(run)]) == 0
    saved = load_checkpoint(run / "checkpoints" / "buffer.pt")
    assert saved["step"] == 60 and saved["size"] == 60

    trainer = resumed_trainer(run, total_steps=70)
    try:
        assert len(trainer.buffer) == 3 * 60
        torch.testing.assert_close(trainer.buffer.state_dict()["obs"], saved["obs"])
        trainer.train()
    finally:
        trainer.close()
    # Updates started at once: no refill after the resume.
    final = CheckpointManager(run / "checkpoints").load_latest()
    assert final is not None and final["updates"] == (60 - 20) + 10


def test_a_buffer_file_from_another_step_is_not_used(tmp_path: Path) -> None:
    run = tmp_path / "run"
    data = {**TINY, "total_steps": 60, "checkpoint_buffer": True}
    assert main(["train", str(write_config(tmp_path, data)), "--run-dir", str(run)]) == 0
    (run / "checkpoints" / "step_60.pt").write_bytes(b"corrupt")  # resume falls back to step 40
    with pytest.warns(UserWarning) as warned:
        trainer = resumed_trainer(run)
    try:
        assert trainer.step == 40 and len(trainer.buffer) == 0
    finally:
        trainer.close()
    assert any(
        "buffer file is from step 60, not the checkpoint's step 40" in str(w.message)
        for w in warned
    )


# --------------------------------------------------------------------------------------------------
# Crashed environment workers (Meta-World, one worker process per task).

ASYNC_METAWORLD = {
    **LONG_RUN,
    "env": {
        "name": ["reach-v3", "drawer-close-v3"],
        "max_episode_steps": 20,
        "vector_strategy": "async",
    },
}


def worker_pids(process: subprocess.Popen[str]) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_a_killed_environment_worker_is_reported_with_its_task_and_a_checkpoint(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    process = start_cli(
        ["train", str(write_config(tmp_path, ASYNC_METAWORLD)), "--run-dir", str(run)]
    )
    wait_for(lambda: 25 in checkpoint_steps(run), process, timeout=180)
    workers = worker_pids(process)
    assert len(workers) >= 2
    os.kill(workers[-1], signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("famo-rl train: stopped: environment for task '")
    assert "crashed during step: worker process died (exit code -9, SIGKILL)" in line
    stopped_at = int(line.split("checkpoint saved at step ")[1].split(" ")[0])
    assert max(checkpoint_steps(run)) == stopped_at
    assert load_checkpoint(run / "checkpoints" / f"step_{stopped_at}.pt")["step"] == stopped_at


def test_ctrl_c_to_the_process_group_stops_cleanly_with_async_workers(tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = start_cli(
        ["train", str(write_config(tmp_path, ASYNC_METAWORLD)), "--run-dir", str(run)],
        new_session=True,
    )
    wait_for(lambda: 25 in checkpoint_steps(run), process, timeout=180)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: every process
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "SIGINT received: stopped at step" in err and "Traceback" not in err
