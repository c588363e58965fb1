"""Crashed Meta-World sub-environments are reported with their task, and closing still works."""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import metaworld
import numpy as np
import pytest

from famo_rl.envs import EnvironmentCrashed, make_envs
from famo_rl.envs.crashes import ReportCrashes, describe_exit

TASKS = ["reach-v3", "drawer-close-v3"]
SEED = 3
EPISODE_STEPS = 5
#: Generous for a loaded machine; a close that waits on a dead worker would never return.
CLOSE_WITHIN_S = 10.0


class FailAtStep(gym.Wrapper):
    """Fails (raises, or kills its own process) at the ``fail_at``-th call to step or reset."""

    def __init__(self, env: gym.Env, method: str, fail_at: int, how: str) -> None:
        super().__init__(env)
        self._method, self._fail_at, self._how = method, fail_at, how
        self._calls = 0

    def step(self, action: Any) -> Any:
        self._count("step")
        return self.env.step(action)

    def reset(self, **kwargs: Any) -> Any:
        self._count("reset")
        return self.env.reset(**kwargs)

    def _count(self, method: str) -> None:
        if method != self._method:
            return
        self._calls += 1
        if self._calls < self._fail_at:
            return
        if self._how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise ValueError(f"simulated failure\nin {method}")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("metaworld-cache")
    make_envs(TASKS, seed=SEED, cache_dir=folder).close()
    return folder


@pytest.fixture
def fail_task_1(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``fail(method, fail_at, how)`` makes the sub-environment of ``TASKS[1]`` fail.

    The factory builds sub-environments with ``metaworld._init_each_env``; the async workers are
    forked, so they inherit the patched builder.
    """
    build = metaworld._init_each_env

    def fail(method: str, fail_at: int, how: str = "raise") -> None:
        def build_failing(*args: Any, env_id: int, **kwargs: Any) -> gym.Env:
            env = build(*args, env_id=env_id, **kwargs)
            return FailAtStep(env, method, fail_at, how) if env_id == 1 else env

        monkeypatch.setattr(metaworld, "_init_each_env", build_failing)

    return fail


def build(cache_dir: Path, vector_strategy: Literal["sync", "async"]) -> gym.vector.VectorEnv:
    return make_envs(
        TASKS,
        seed=SEED,
        vector_strategy=vector_strategy,
        max_episode_steps=EPISODE_STEPS,
        cache_dir=cache_dir,
    )


def run_until_crash(
    envs: gym.vector.VectorEnv, steps: int = 3 * EPISODE_STEPS
) -> EnvironmentCrashed:
    actions = np.zeros((envs.num_envs, 4), dtype=np.float32)
    with pytest.raises(EnvironmentCrashed) as caught:
        envs.reset()
        for _ in range(steps):
            envs.step(actions)
    return caught.value


def assert_closes_promptly(envs: gym.vector.VectorEnv) -> None:
    start = time.perf_counter()
    envs.close()
    assert time.perf_counter() - start < CLOSE_WITHIN_S
    assert envs.closed
    for process in getattr(envs, "processes", []):
        assert not process.is_alive()


def test_error_is_one_line_and_pickles() -> None:
    error = EnvironmentCrashed("reach-v3", 0, "step", "ValueError: boom", worker_traceback="trace")
    assert str(error) == "environment for task 'reach-v3' (index 0) crashed during step: " + (
        "ValueError: boom"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)
    assert isinstance(error, RuntimeError)
    assert describe_exit(-9) == "worker process died (exit code -9, SIGKILL)"
    assert describe_exit(1) == "worker process died (exit code 1)"


@pytest.mark.parametrize("method", ["step", "reset"])
def test_sync_sub_environment_error_names_its_task(
    cache_dir: Path, fail_task_1: Callable[..., None], method: str
) -> None:
    # The second reset of TASKS[1] is the autoreset at the end of its first episode.
    fail_task_1(method, fail_at=2)
    envs = build(cache_dir, "sync")
    assert isinstance(envs, gym.vector.SyncVectorEnv)
    assert all(isinstance(env, ReportCrashes) for env in envs.envs)

    crash = run_until_crash(envs)
    assert (crash.task_name, crash.task_idx, crash.phase) == (TASKS[1], 1, method)
    assert str(crash) == (
        f"environment for task 'drawer-close-v3' (index 1) crashed during {method}: "
        "ValueError: simulated failure in " + method
    )
    assert isinstance(crash.__cause__, ValueError)
    assert crash.exit_code is None
    assert_closes_promptly(envs)


def test_async_worker_error_names_its_task(
    cache_dir: Path, fail_task_1: Callable[..., None]
) -> None:
    fail_task_1("step", fail_at=3)
    envs = build(cache_dir, "async")
    assert isinstance(envs, gym.vector.AsyncVectorEnv)

    crash = run_until_crash(envs)
    assert (crash.task_name, crash.task_idx, crash.phase) == (TASKS[1], 1, "step")
    assert "ValueError: simulated failure in step" in str(crash)
    assert crash.worker_traceback is not None and "in _count" in crash.worker_traceback
    # The crashed environment stays crashed, rather than failing on a closed pipe.
    with pytest.raises(EnvironmentCrashed, match="drawer-close-v3"):
        envs.step(np.zeros((2, 4), dtype=np.float32))
    assert_closes_promptly(envs)


def test_async_worker_killed_between_steps_names_its_task(cache_dir: Path) -> None:
    envs = build(cache_dir, "async")
    actions = np.zeros((2, 4), dtype=np.float32)
    envs.reset()
    envs.step(actions)
    os.kill(envs.processes[1].pid, signal.SIGKILL)

    crash = run_until_crash(envs)
    assert (crash.task_name, crash.task_idx, crash.exit_code) == (TASKS[1], 1, -signal.SIGKILL)
    assert str(crash).endswith("worker process died (exit code -9, SIGKILL)")
    assert envs.processes[0].is_alive()
    assert_closes_promptly(envs)


@pytest.mark.parametrize("method", ["step", "reset"])
def test_async_worker_dying_mid_call_names_its_task(
    cache_dir: Path, fail_task_1: Callable[..., None], method: str
) -> None:
    # A worker that dies while the main process waits for its answer: a segfault, say.
    fail_task_1(method, fail_at=2 if method == "step" else 1, how="kill")
    envs = build(cache_dir, "async")

    crash = run_until_crash(envs)
    assert (crash.task_name, crash.task_idx) == (TASKS[1], 1)
    assert crash.exit_code == -signal.SIGKILL
    assert crash.phase == method
    assert_closes_promptly(envs)


@pytest.mark.parametrize("vector_strategy", ["sync", "async"])
def test_wrapper_changes_nothing_else(
    cache_dir: Path, vector_strategy: Literal["sync", "async"]
) -> None:
    # The rollouts themselves are compared with gym.make_vec's in test_envs_metaworld.py.
    envs = build(cache_dir, vector_strategy)
    assert envs.task_names == TASKS
    assert envs.get_attr("task_name") == ("SawyerReachEnvV3", "SawyerDrawerCloseEnvV3")
    envs.call("toggle_terminate_on_success", True)
    assert envs.get_attr("terminate_on_success") == (True, True)
    envs.reset()
    envs.step(np.zeros((2, 4), dtype=np.float32))
    assert_closes_promptly(envs)
