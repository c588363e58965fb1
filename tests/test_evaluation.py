"""evaluate() follows Meta-World's protocol: checked against metaworld's own evaluation."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from metaworld.evaluation import evaluation as metaworld_evaluation
from metaworld.policies import ENV_POLICY_MAP

from famo_rl.envs import SyntheticMultiTaskEnv, make_metaworld_envs
from famo_rl.envs.synthetic import MAX_SPEED
from famo_rl.evaluation import EvalAgent, EvalResult, evaluate

TASKS = ["reach-v3", "drawer-close-v3"]
SEED = 5


class NoisyScriptedAgent:
    """Meta-World's scripted expert for each task plus seeded noise: deterministic, and it
    succeeds on some episodes only, so that success rates and returns are informative."""

    def __init__(self, task_names: list[str], noise: float = 0.5, seed: int = 0) -> None:
        self.policies = [ENV_POLICY_MAP[name]() for name in task_names]
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.reset_masks: list[npt.NDArray[np.bool_]] = []

    def eval_action(self, obs: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the scripted policies warn about their gains
            actions = np.stack(
                [p.get_action(o[:39]) for p, o in zip(self.policies, obs, strict=True)]
            )
        actions = actions + self.noise * self.rng.normal(size=actions.shape)
        return np.clip(actions, -1.0, 1.0).astype(np.float32)

    def reset(self, env_mask: npt.NDArray[np.bool_]) -> None:
        self.reset_masks.append(np.array(env_mask))


class TowardGoal:
    """Scripted agent for the synthetic suite: moves each point toward its task's goal."""

    def __init__(self, goals: npt.NDArray[np.float64], fail_after: int | None = None) -> None:
        self.goals = goals
        self.fail_after = fail_after
        self.calls = 0

    def eval_action(self, obs: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("agent failed")
        return np.clip((self.goals - obs[:, :2]) / MAX_SPEED, -1.0, 1.0)

    def reset(self, env_mask: npt.NDArray[np.bool_]) -> None:
        pass


class ContractOnly:
    """The bare contract of famo_rl.envs.base: no terminate-on-success switch to use."""

    def __init__(self, env: SyntheticMultiTaskEnv) -> None:
        self._env = env
        self.num_envs = env.num_envs
        self.task_names = env.task_names
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        return self._env.reset(seed=seed, options=options)

    def step(self, actions: npt.NDArray[np.floating]) -> tuple[Any, ...]:
        return self._env.step(actions)

    def close(self) -> None:
        self._env.close()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("metaworld-cache")
    make_metaworld_envs(TASKS, seed=SEED, cache_dir=folder).close()
    return folder


def test_agrees_with_metaworld_evaluation(cache_dir: Path) -> None:
    def build():
        return make_metaworld_envs(TASKS, seed=SEED, cache_dir=cache_dir, max_episode_steps=60)

    reference_envs, our_envs = build(), build()
    mean_success, mean_return, success_rates, returns = metaworld_evaluation(
        NoisyScriptedAgent(TASKS), reference_envs, num_episodes=4
    )
    agent = NoisyScriptedAgent(TASKS)
    result = evaluate(agent, our_envs, num_episodes=4)

    assert isinstance(agent, EvalAgent)
    assert result.success_rate == success_rates
    assert result.episode_returns == returns
    assert result.mean_success_rate == pytest.approx(mean_success, abs=1e-12)
    assert result.mean_return == pytest.approx(mean_return, rel=1e-12)
    assert result.mean_returns == {name: np.mean(r) for name, r in returns.items()}
    # An informative case: some episodes succeed (reach-v3), others run out of time.
    assert 0.0 < result.mean_success_rate < 1.0
    # The environment's own setting is back, as metaworld's evaluation leaves it.
    assert our_envs.get_attr("terminate_on_success") == (False, False)
    assert agent.reset_masks[0].all()
    reference_envs.close()
    our_envs.close()


@pytest.mark.parametrize("terminate_on_success", [False, True])
def test_synthetic_scripted_agent_succeeds_and_setting_is_restored(
    terminate_on_success: bool,
) -> None:
    env = SyntheticMultiTaskEnv(4, seed=0, terminate_on_success=terminate_on_success)
    result = evaluate(TowardGoal(env.goals), env, num_episodes=5, seed=0)

    assert isinstance(result, EvalResult)
    assert result.success_rate == {name: 1.0 for name in env.task_names}
    assert result.mean_success_rate == 1.0
    assert all(len(returns) == 5 for returns in result.episode_returns.values())
    assert all(value < 0.0 for value in result.mean_returns.values())
    assert env.terminate_on_success is terminate_on_success


def test_standing_still_fails_and_returns_follow_reward_scales() -> None:
    class StandStill(TowardGoal):
        def eval_action(self, obs: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
            return np.zeros((len(obs), 2))

    env = SyntheticMultiTaskEnv(3, seed=0, success_radius=1e-9)
    result = evaluate(StandStill(env.goals), env, num_episodes=3, seed=1)
    assert result.mean_success_rate == 0.0
    returns = np.array(list(result.mean_returns.values()))
    assert np.all(np.abs(returns[1:]) > 10 * np.abs(returns[:-1]))


def test_setting_is_restored_when_the_agent_fails() -> None:
    env = SyntheticMultiTaskEnv(2, seed=0)
    with pytest.raises(RuntimeError, match="agent failed"):
        evaluate(TowardGoal(env.goals, fail_after=3), env, num_episodes=2)
    assert env.terminate_on_success is False


def test_without_a_switch_the_episode_is_counted_at_first_success() -> None:
    # Same starts, same deterministic agent: the first episode of each task must score the same
    # whether the environment ends it at success or evaluate() stops counting there.
    switched = SyntheticMultiTaskEnv(4, seed=2)
    bare = ContractOnly(SyntheticMultiTaskEnv(4, seed=2))
    expected = evaluate(TowardGoal(switched.goals), switched, num_episodes=1, seed=3)
    result = evaluate(TowardGoal(switched.goals), bare, num_episodes=1, seed=3)
    assert result == expected
    assert result.mean_success_rate == 1.0

    several = evaluate(TowardGoal(switched.goals), bare, num_episodes=4, seed=3)
    assert several.mean_success_rate == 1.0
    assert all(len(returns) == 4 for returns in several.episode_returns.values())


@pytest.mark.parametrize("num_episodes", [0, -1, 2.5, True])
def test_num_episodes_must_be_a_positive_int(num_episodes: object) -> None:
    env = SyntheticMultiTaskEnv(2, seed=0)
    with pytest.raises(
        ValueError, match=f"num_episodes must be a positive int, found {num_episodes}"
    ):
        evaluate(TowardGoal(env.goals), env, num_episodes=num_episodes)  # type: ignore[arg-type]
