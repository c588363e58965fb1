"""The synthetic suite meets the environment contract, repeats from a seed, and is solvable."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from famo_rl.envs import MultiTaskVectorEnv, SyntheticMultiTaskEnv, split_observation
from famo_rl.envs.synthetic import MAX_SPEED, default_reward_scales

NUM_TASKS = 3


def toward_goal(env: SyntheticMultiTaskEnv, obs: npt.NDArray[np.float32]) -> npt.NDArray:
    """A scripted policy: full speed toward each task's goal, slowing down on arrival."""
    return np.clip((env.goals - obs[:, :2]) / MAX_SPEED, -1.0, 1.0)


def rollout(env: SyntheticMultiTaskEnv, actions: npt.NDArray, seed: int) -> list[tuple]:
    obs, _ = env.reset(seed=seed)
    steps = [(obs,)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        steps.append((obs, reward, terminated, truncated, info.get("success")))
    return steps


def assert_same_steps(first: list[tuple], second: list[tuple]) -> None:
    assert len(first) == len(second)
    for step_a, step_b in zip(first, second, strict=True):
        for value_a, value_b in zip(step_a, step_b, strict=True):
            np.testing.assert_array_equal(value_a, value_b)


# The contract of famo_rl.envs.base.


def test_shapes_spaces_and_one_hot() -> None:
    env = SyntheticMultiTaskEnv(NUM_TASKS, seed=0)
    assert isinstance(env, MultiTaskVectorEnv)
    assert env.num_envs == NUM_TASKS
    assert env.task_names == ["reach-0", "reach-1", "reach-2"]
    assert env.single_observation_space.shape == (2 + NUM_TASKS,)
    assert env.single_action_space.shape == (2,)
    assert env.observation_space.shape == (NUM_TASKS, 2 + NUM_TASKS)
    assert env.metadata["autoreset_mode"].value == "SameStep"

    obs, info = env.reset(seed=0)
    assert obs.shape == (NUM_TASKS, 2 + NUM_TASKS) and obs.dtype == np.float32
    assert info == {}
    assert all(env.single_observation_space.contains(row) for row in obs)
    own, task_idx = split_observation(obs, NUM_TASKS)
    assert own.shape == (NUM_TASKS, 2)
    np.testing.assert_array_equal(task_idx, np.arange(NUM_TASKS))
    np.testing.assert_array_equal(obs[:, 2:], np.eye(NUM_TASKS))


def test_truncates_at_episode_length_with_true_final_obs() -> None:
    env = SyntheticMultiTaskEnv(NUM_TASKS, episode_length=5, seed=1)
    obs, _ = env.reset(seed=1)
    start = obs.copy()
    rewards = []
    for step in range(1, 6):
        # Standing still keeps the start position, so the true last observation is known.
        obs, reward, terminated, truncated, info = env.step(np.zeros((NUM_TASKS, 2)))
        rewards.append(reward)
        assert not terminated.any()
        assert truncated.all() == (step == 5)

    assert info["_final_obs"].all() and info["_final_info"].all()
    np.testing.assert_array_equal(np.stack(info["final_obs"]), start)
    # Same-step autoreset: the returned observation already starts the next episode.
    assert not np.array_equal(obs[:, :2], start[:, :2])
    np.testing.assert_array_equal(obs[:, 2:], np.eye(NUM_TASKS))
    episode = info["final_info"]["episode"]
    np.testing.assert_allclose(episode["r"], np.sum(rewards, axis=0), rtol=1e-12)
    np.testing.assert_array_equal(episode["l"], [5] * NUM_TASKS)
    # As with Meta-World, ended sub-environments report their step info only under final_info.
    assert "success" not in info and "success" in info["final_info"]


def test_success_flag_matches_distance_to_goal() -> None:
    env = SyntheticMultiTaskEnv(NUM_TASKS, episode_length=30, seed=2, success_radius=0.1)
    obs, _ = env.reset(seed=2)
    seen_success = np.zeros(NUM_TASKS, dtype=bool)
    for _ in range(29):
        obs, reward, _, _, info = env.step(toward_goal(env, obs))
        distance = np.linalg.norm(obs[:, :2] - env.goals, axis=1)
        np.testing.assert_array_equal(info["success"], (distance <= 0.1).astype(float))
        np.testing.assert_allclose(reward, -env.reward_scales * distance, atol=1e-5)
        seen_success |= info["success"] > 0
    assert seen_success.all()


def test_terminate_on_success_ends_only_the_successful_episode() -> None:
    env = SyntheticMultiTaskEnv(NUM_TASKS, episode_length=50, seed=3, terminate_on_success=True)
    obs, _ = env.reset(seed=3)
    # Only task 0 moves toward its goal; the others stand still far from theirs.
    for _ in range(50):
        action = np.zeros((NUM_TASKS, 2))
        action[0] = toward_goal(env, obs)[0]
        obs, _, terminated, truncated, info = env.step(action)
        if terminated.any():
            break
    np.testing.assert_array_equal(terminated, [True, False, False])
    assert not truncated.any()
    assert info["final_info"]["success"][0] == 1.0
    np.testing.assert_array_equal(info["_final_obs"], [True, False, False])
    assert info["final_obs"][1] is None
    # The two running sub-environments still report their success at the top level.
    np.testing.assert_array_equal(info["_success"], [False, True, True])


def test_toggle_and_queries_in_the_style_of_sync_vector_env() -> None:
    env = SyntheticMultiTaskEnv(NUM_TASKS, seed=0)
    assert env.get_attr("task_name") == ("reach-0", "reach-1", "reach-2")
    assert env.get_attr("terminate_on_success") == (False,) * NUM_TASKS
    env.call("toggle_terminate_on_success", True)
    assert env.terminate_on_success is True


# Determinism.


def test_same_seed_same_run_and_reset_seed_repeats() -> None:
    actions = np.random.default_rng(0).uniform(-1, 1, size=(120, NUM_TASKS, 2))
    env = SyntheticMultiTaskEnv(NUM_TASKS, episode_length=25, seed=7)
    first = rollout(env, actions, seed=11)
    assert_same_steps(first, rollout(env, actions, seed=11))
    assert_same_steps(
        first, rollout(SyntheticMultiTaskEnv(NUM_TASKS, episode_length=25, seed=7), actions, 11)
    )
    other = rollout(env, actions, seed=12)
    assert not np.array_equal(first[0][0], other[0][0])


def test_goals_are_fixed_by_the_constructor_seed() -> None:
    goals = SyntheticMultiTaskEnv(5, seed=4).goals
    np.testing.assert_array_equal(goals, SyntheticMultiTaskEnv(5, seed=4).goals)
    assert not np.allclose(goals, SyntheticMultiTaskEnv(5, seed=5).goals)
    assert len(np.unique(goals.round(6), axis=0)) == 5
    assert np.all(np.abs(goals) < 1.0)


# Learnability and the imbalance it is built to show.


def test_scripted_policy_succeeds_and_random_policy_mostly_fails() -> None:
    def success_rate(policy, seed: int) -> float:
        env = SyntheticMultiTaskEnv(8, episode_length=50, seed=seed, terminate_on_success=True)
        obs, _ = env.reset(seed=seed)
        outcomes = []
        for _ in range(400):
            obs, _, _, _, info = env.step(policy(env, obs))
            if "final_info" in info:
                outcomes.extend(info["final_info"]["success"][info["_final_info"]])
        return float(np.mean(outcomes))

    rng = np.random.default_rng(0)
    assert success_rate(toward_goal, seed=0) == 1.0
    assert success_rate(lambda env, obs: rng.uniform(-1, 1, (8, 2)), seed=0) < 0.3


def test_reward_scales_span_orders_of_magnitude() -> None:
    env = SyntheticMultiTaskEnv(5, seed=0)
    np.testing.assert_allclose(env.reward_scales, [1e-2, 1e-1, 1.0, 1e1, 1e2])
    np.testing.assert_allclose(default_reward_scales(3), [1e-2, 1.0, 1e2])
    env.reset(seed=0)
    rewards = np.stack(
        [env.step(np.random.default_rng(i).uniform(-1, 1, (5, 2)))[1] for i in range(200)]
    )
    magnitude = np.abs(rewards).mean(axis=0)
    assert magnitude[-1] / magnitude[0] > 1e3

    custom = SyntheticMultiTaskEnv(2, reward_scales=[1.0, 3.0], seed=0)
    custom.reset(seed=0)
    _, reward, _, _, _ = custom.step(np.zeros((2, 2)))
    distance = np.linalg.norm(custom._position - custom.goals, axis=1)
    np.testing.assert_allclose(reward, -np.array([1.0, 3.0]) * distance)


# Validation.


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_tasks": 0}, ValueError, "num_tasks must be >= 1, found 0"),
        ({"num_tasks": 2.0}, TypeError, "num_tasks must be an int, found 2.0"),
        ({"num_tasks": True}, TypeError, "num_tasks must be an int"),
        ({"episode_length": 0}, ValueError, "episode_length must be >= 1, found 0"),
        ({"seed": -1}, ValueError, "seed must be >= 0, found -1"),
        ({"success_radius": 0.0}, ValueError, "success_radius must be finite and > 0, found 0.0"),
        ({"success_radius": float("nan")}, ValueError, "success_radius"),
        ({"success_radius": "big"}, TypeError, "success_radius must be a float, found 'big'"),
        ({"reward_scales": [1.0, 2.0]}, ValueError, r"reward_scales .* shape \(3,\)"),
        ({"reward_scales": [1.0, -2.0, 3.0]}, ValueError, "reward_scales must be finite and > 0"),
    ],
)
def test_invalid_arguments_name_the_argument_and_value(
    kwargs: dict, error: type[Exception], match: str
) -> None:
    arguments = {"num_tasks": NUM_TASKS, **kwargs}
    with pytest.raises(error, match=match):
        SyntheticMultiTaskEnv(**arguments)


def test_step_checks_actions_and_needs_a_reset() -> None:
    env = SyntheticMultiTaskEnv(NUM_TASKS, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((NUM_TASKS, 2)))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must have shape \(3, 2\), found shape \(3,\)"):
        env.step(np.zeros(NUM_TASKS))
