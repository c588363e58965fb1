"""Meta-World environments: the contract, validation, and a goal cache that changes nothing."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import numpy.typing as npt
import pytest
from metaworld.types import Task

import famo_rl.envs.metaworld
from famo_rl.envs import MultiTaskVectorEnv, make_envs, make_metaworld_envs, split_observation
from famo_rl.envs.metaworld import (
    _cache_key,
    _cache_path,
    _encodes_exactly,
    _load_tasks,
    _payload_digest,
    _sample_tasks,
    _select,
    default_cache_dir,
)

TASKS = ["reach-v3", "drawer-close-v3"]
SEED = 5
EPISODE_STEPS = 30


@pytest.fixture(scope="module")
def sampled() -> list[list[Task]]:
    """TASKS at SEED as Meta-World samples them, without any cache."""
    return _sample_tasks(_select(TASKS), SEED)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A goal cache holding TASKS at SEED, written by a cold start."""
    folder = tmp_path_factory.mktemp("metaworld-cache")
    make_metaworld_envs(TASKS, seed=SEED, cache_dir=folder).close()
    return folder


def random_actions(num_envs: int, steps: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(0).uniform(-1, 1, (steps, num_envs, 4)).astype(np.float32)


def rollout(envs: gym.vector.VectorEnv, actions: npt.NDArray[np.float32]) -> list[list]:
    """Everything a learner sees: observations, rewards, flags, successes and final observations."""
    obs, _ = envs.reset()
    steps = [[obs]]
    for action in actions:
        obs, reward, terminated, truncated, info = envs.step(action)
        final = info.get("final_info", {})
        final_obs = [row for row in info.get("final_obs", []) if row is not None]
        steps.append(
            [obs, reward, terminated, truncated, info.get("success", np.zeros(0))]
            + [final.get("success", np.zeros(0)), *final_obs]
        )
    envs.close()
    return steps


def assert_same_rollout(first: list[list], second: list[list]) -> None:
    assert len(first) == len(second)
    for step_a, step_b in zip(first, second, strict=True):
        assert len(step_a) == len(step_b)
        for value_a, value_b in zip(step_a, step_b, strict=True):
            np.testing.assert_array_equal(value_a, value_b)


# The contract of famo_rl.envs.base.


def test_contract(cache_dir: Path) -> None:
    envs = make_metaworld_envs(
        TASKS, seed=SEED, cache_dir=cache_dir, max_episode_steps=EPISODE_STEPS
    )
    assert isinstance(envs, MultiTaskVectorEnv)
    assert envs.task_names == TASKS and envs.num_envs == 2
    assert envs.single_observation_space.shape == (39 + 2,)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP

    obs, _ = envs.reset()
    _, task_idx = split_observation(obs, 2)
    np.testing.assert_array_equal(task_idx, [0, 1])
    np.testing.assert_array_equal(obs[:, -2:], np.eye(2))
    for step, action in enumerate(random_actions(2, EPISODE_STEPS), start=1):
        obs, _, terminated, truncated, info = envs.step(action)
        assert not terminated.any()
        assert truncated.all() == (step == EPISODE_STEPS)
        if step < EPISODE_STEPS:
            assert set(np.unique(info["success"])) <= {0.0, 1.0}
    assert info["_final_obs"].all()
    assert np.stack(info["final_obs"]).shape == (2, 41)
    # The returned observation already starts the next episode; the last one is in final_obs.
    assert not np.allclose(np.stack(info["final_obs"])[:, :18], obs[:, :18])
    assert "episode" in info["final_info"]
    envs.close()


# The goal cache.


def test_cached_start_equals_uncached_start(cache_dir: Path, sampled: list[list[Task]]) -> None:
    selection = _select(TASKS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid cache file is read without complaint
        cached_tasks = _load_tasks(selection, SEED, cache_dir)
    # Byte for byte the Task objects Meta-World makes, rebuilt from the numbers on disk.
    assert cached_tasks == sampled
    assert _encodes_exactly(selection.task_names, sampled)

    # Two episodes, so that the reset in between draws from the cached goals again.
    actions = random_actions(2, 2 * EPISODE_STEPS + 5)
    options = {"seed": SEED, "max_episode_steps": EPISODE_STEPS}
    cached = rollout(make_metaworld_envs(TASKS, cache_dir=cache_dir, **options), actions)
    uncached = rollout(make_metaworld_envs(TASKS, use_cache=False, **options), actions)
    assert_same_rollout(cached, uncached)


def test_same_environment_as_gym_make_vec(cache_dir: Path) -> None:
    actions = random_actions(2, EPISODE_STEPS + 5)
    official = gym.make_vec(
        "Meta-World/custom-mt-envs",
        envs_list=TASKS,
        seed=SEED,
        use_one_hot=True,
        vector_strategy="sync",
        max_episode_steps=EPISODE_STEPS,
    )
    ours = make_metaworld_envs(
        TASKS, seed=SEED, cache_dir=cache_dir, max_episode_steps=EPISODE_STEPS
    )
    assert ours.get_attr("task_name") == official.get_attr("task_name")
    assert_same_rollout(rollout(ours, actions), rollout(official, actions))


def test_cache_file_of_another_seed_is_not_used(cache_dir: Path, tmp_path: Path) -> None:
    selection = _select(TASKS)
    source = _cache_path(cache_dir, _cache_key(selection, SEED))
    target = _cache_path(tmp_path, _cache_key(selection, SEED + 1))
    shutil.copy(source, target)

    with pytest.warns(UserWarning, match="written for other settings"):
        tasks = _load_tasks(selection, SEED + 1, tmp_path)
    assert tasks != _load_tasks(selection, SEED, cache_dir)
    assert json.loads(target.read_text())["key"]["seed"] == SEED + 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "tampered", "other tasks"])
def test_corrupt_cache_file_is_rebuilt(
    cache_dir: Path,
    sampled: list[list[Task]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    damage: str,
) -> None:
    # Sampling is slow and proven above; here only the fallback matters, so count the calls.
    calls = []
    monkeypatch.setattr(
        famo_rl.envs.metaworld, "_sample_tasks", lambda *args: calls.append(args) or sampled
    )
    selection = _select(TASKS)
    path = _cache_path(tmp_path, _cache_key(selection, SEED))
    text = _cache_path(cache_dir, _cache_key(selection, SEED)).read_text()
    if damage == "garbage":
        path.write_bytes(b"\x80\x04not json")
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "tampered":
        document = json.loads(text)
        data = document["goals"][0]["rand_vecs"]
        document["goals"][0]["rand_vecs"] = ("A" if data[0] != "A" else "B") + data[1:]
        path.write_text(json.dumps(document))
    else:
        document = json.loads(text)
        document["goals"].reverse()
        document["sha256"] = _payload_digest(document["goals"])
        path.write_text(json.dumps(document))

    with pytest.warns(UserWarning, match="ignoring Meta-World goal cache"):
        tasks = _load_tasks(selection, SEED, tmp_path)
    assert tasks == sampled and len(calls) == 1
    # The rebuilt file replaced the damaged one, and no temporary file is left behind.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _load_tasks(selection, SEED, tmp_path) == sampled
    assert len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "famo-rl" / "metaworld"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "famo-rl" / "metaworld"


def test_async_strategy_matches_sync(cache_dir: Path) -> None:
    actions = random_actions(2, 8)
    options = {"seed": SEED, "cache_dir": cache_dir, "max_episode_steps": EPISODE_STEPS}
    async_envs = make_metaworld_envs(TASKS, vector_strategy="async", **options)
    assert isinstance(async_envs, gym.vector.AsyncVectorEnv)
    assert_same_rollout(
        rollout(async_envs, actions), rollout(make_metaworld_envs(TASKS, **options), actions)
    )


def test_make_envs_dispatches_to_metaworld(cache_dir: Path) -> None:
    envs = make_envs(TASKS, seed=SEED, num_tasks=2, max_episode_steps=7, cache_dir=cache_dir)
    assert envs.task_names == TASKS
    envs.reset()
    truncated = [envs.step(action)[3].all() for action in random_actions(2, 7)]
    assert truncated == [False] * 6 + [True]
    envs.close()


# Validation, before anything is built.


@pytest.mark.parametrize(
    ("benchmark", "kwargs", "error", "match"),
    [
        ("MT11", {}, ValueError, r"unknown benchmark 'MT11'.*did you mean 'MT10'"),
        (["reach-v2"], {}, ValueError, r"unknown Meta-World task name 'reach-v2'.*'reach-v3'"),
        (["reach-v3", "reach-v3"], {}, ValueError, r"distinct, found \['reach-v3'\]"),
        ([], {}, ValueError, "at least one task"),
        ("reach-v3", {}, ValueError, r"single task name: pass a list, \['reach-v3'\]"),
        ([3], {}, TypeError, "task names must be strings, found 3"),
        ("MT10", {"max_episode_steps": 501}, ValueError, r"max_episode_steps .*found 501"),
        ("MT10", {"max_episode_steps": 0}, ValueError, "found 0"),
        ("MT10", {"vector_strategy": "threads"}, ValueError, "found 'threads'"),
        ("MT10", {"reward_function_version": "v3"}, ValueError, "found 'v3'"),
        ("MT10", {"seed": -1}, ValueError, "seed must be in .*found -1"),
        ("MT10", {"seed": 1.5}, TypeError, "seed must be an int, found 1.5"),
    ],
)
def test_invalid_arguments(
    benchmark: object, kwargs: dict, error: type[Exception], match: str, tmp_path: Path
) -> None:
    arguments = {"seed": 0, "cache_dir": tmp_path, **kwargs}
    with pytest.raises(error, match=match):
        make_metaworld_envs(benchmark, **arguments)  # type: ignore[arg-type]


def test_make_envs_validation() -> None:
    with pytest.raises(ValueError, match="did you mean 'MT10'"):
        make_envs("mt10", seed=0)
    with pytest.raises(ValueError, match="did you mean 'synthetic'"):
        make_envs("synthtic", seed=0)
    with pytest.raises(ValueError, match="pass a list"):
        make_envs("reach-v3", seed=0)
    with pytest.raises(ValueError, match="'MT10' has 10 tasks, found num_tasks=4"):
        make_envs("MT10", seed=0, num_tasks=4)
    with pytest.raises(ValueError, match="asks for 3 tasks but num_tasks is 4"):
        make_envs("synthetic-3", seed=0, num_tasks=4)
    assert make_envs("synthetic-3", seed=0).num_envs == 3
    assert make_envs("synthetic", seed=0, num_tasks=6, max_episode_steps=9).episode_length == 9


# Heavier checks on the full benchmarks: run with -m slow.


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", ["MT10", "MT50"])
def test_full_benchmark_cache_round_trip(benchmark: str, tmp_path: Path) -> None:
    selection = _select(benchmark)
    sampled = _load_tasks(selection, 1, tmp_path)
    assert _encodes_exactly(selection.task_names, sampled)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _load_tasks(selection, 1, tmp_path) == sampled


@pytest.mark.slow
def test_mt10_same_environment_as_gym_make_vec(tmp_path: Path) -> None:
    actions = random_actions(10, 12)
    official = gym.make_vec("Meta-World/MT10", seed=3, use_one_hot=True, max_episode_steps=10)
    make_metaworld_envs("MT10", seed=3, cache_dir=tmp_path, max_episode_steps=10).close()
    ours = make_metaworld_envs("MT10", seed=3, cache_dir=tmp_path, max_episode_steps=10)
    assert ours.get_attr("task_name") == official.get_attr("task_name")
    assert_same_rollout(rollout(ours, actions), rollout(official, actions))
