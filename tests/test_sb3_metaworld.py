"""The SB3 plug-in on Meta-World: what SB3 reads from each step, a scripted expert as the oracle of
per-task success, and a short MultiTaskSAC run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from metaworld.policies import SawyerReachV3Policy

from famo_rl.sb3 import MultiTaskSAC, TaskStratifiedReplayBuffer, evaluate_per_task, make_vec_env

torch.set_num_threads(1)

TASKS = ["reach-v3", "push-v3"]
OBS_DIM = 39 + len(TASKS)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("metaworld-goals")


def test_steps_carry_what_sb3_reads(cache_dir: Path) -> None:
    env = make_vec_env(TASKS, seed=0, max_episode_steps=15, cache_dir=cache_dir)
    assert env.task_names == TASKS
    assert env.observation_space.shape == (OBS_DIM,)
    assert env.observation_space.dtype == np.float32
    obs = env.reset()
    assert obs.shape == (2, OBS_DIM) and obs.dtype == np.float32
    assert np.array_equal(obs[:, -2:], np.eye(2))
    for _ in range(15):
        obs, _, dones, infos = env.step(np.zeros((2, 4), dtype=np.float32))
    assert dones.all()
    for info in infos:
        assert info["TimeLimit.truncated"] is True
        assert isinstance(info["is_success"], bool)
        assert info["terminal_observation"].shape == (OBS_DIM,)
        assert info["terminal_observation"].dtype == np.float32
        assert "success" in info and "episode" in info
    env.close()


# Meta-World's scripted policies warn about their gains at every step.
@pytest.mark.filterwarnings("ignore:Constant")
def test_a_scripted_expert_succeeds_on_its_task_only(cache_dir: Path) -> None:
    expert = SawyerReachV3Policy()

    class ReachExpert:
        """Meta-World's scripted reach policy in sub-env 0, no motion in sub-env 1."""

        def predict(self, obs: np.ndarray, **_: Any) -> tuple[np.ndarray, None]:
            actions = np.zeros((2, 4), dtype=np.float32)
            actions[0] = expert.get_action(obs[0, :39])
            return actions, None

    env = make_vec_env(
        TASKS, seed=0, max_episode_steps=100, terminate_on_success=True, cache_dir=cache_dir
    )
    result = evaluate_per_task(ReachExpert(), env, n_eval_episodes=2)
    assert result.success_rate == {"reach-v3": 1.0, "push-v3": 0.0}
    assert result.episodes == {"reach-v3": 2, "push-v3": 2}
    env.close()


def test_multitask_sac_runs_on_metaworld_with_success_statistics(cache_dir: Path) -> None:
    env = make_vec_env(TASKS, seed=0, max_episode_steps=20, cache_dir=cache_dir)
    model = MultiTaskSAC(
        "MlpPolicy",
        env,
        replay_buffer_class=TaskStratifiedReplayBuffer,
        batch_size=32,
        learning_starts=40,
        policy_kwargs={"net_arch": [32, 32]},
        seed=0,
    )
    model.learn(100)
    assert model.task_names == TASKS
    assert model._n_updates > 0
    # SB3's rollout/success_rate and rollout/ep_rew_mean read these buffers.
    assert len(model.ep_success_buffer) == 4
    assert len(model.ep_info_buffer) == 4
    assert model.replay_buffer.env_tasks.tolist() == [0, 1]
    env.close()
