"""The Stable-Baselines3 plug-in: exact agreement with SB3's SAC on one task, save/load, the
stratified buffer, the VecEnv adapter, TensorBoard tags and callbacks, and user errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecNormalize
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn.utils import parameters_to_vector

from famo_rl.balancers import FAMO, LinearScalarization
from famo_rl.envs import SyntheticMultiTaskEnv, make_envs
from famo_rl.sb3 import (
    MultiTaskSAC,
    MultiTaskVecEnv,
    PerTaskEvalCallback,
    TaskStratifiedReplayBuffer,
    evaluate_per_task,
    make_vec_env,
)
from famo_rl.sb3.sac import _TaskBatch

torch.set_num_threads(1)

SMALL = {"policy_kwargs": {"net_arch": [32, 32]}}


def synthetic(num_tasks: int, episode_steps: int = 20, seed: int = 0) -> Any:
    return make_vec_env(f"synthetic-{num_tasks}", seed=seed, max_episode_steps=episode_steps)


def assert_same_state(first: Any, second: Any) -> None:
    """Bit-equal tensors, recursively through dicts and lists (state_dicts, optimizer states)."""
    if isinstance(first, torch.Tensor):
        assert torch.equal(first, second)
    elif isinstance(first, dict):
        assert first.keys() == second.keys()
        for key in first:
            assert_same_state(first[key], second[key])
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second)
        for left, right in zip(first, second, strict=True):
            assert_same_state(left, right)
    else:
        assert first == second


# --------------------------------------------------------------------------------------------------
# The subclass changes nothing it should not: one task with `ls` is SB3's SAC, bit for bit.


@pytest.mark.parametrize(
    ("env_id", "options"),
    [
        # A batch size that is not a power of two: 1/100 rounds, so the order of operations shows.
        ("synthetic-1", {"batch_size": 100}),
        (
            "synthetic-1",
            {"batch_size": 64, "ent_coef": 0.2, "gradient_steps": 2, "target_update_interval": 2},
        ),
        # An ordinary SB3 environment (no one-hot id) with num_tasks=1, and gSDE exploration.
        ("Pendulum-v1", {"batch_size": 64, "use_sde": True}),
    ],
    ids=["auto-ent-coef", "fixed-ent-coef", "pendulum-gsde"],
)
def test_one_task_with_ls_reproduces_sb3_sac_exactly(env_id: str, options: dict[str, Any]) -> None:
    def env() -> Any:
        return synthetic(1) if env_id.startswith("synthetic") else env_id

    def trained(algorithm: type[SAC], **extra: Any) -> SAC:
        model = algorithm(
            "MlpPolicy", env(), seed=3, learning_starts=60, **SMALL, **options, **extra
        )
        return model.learn(160)

    reference = trained(SAC)
    ours = trained(MultiTaskSAC, num_tasks=1, balancer="ls", ent_coef_balancer="ls")

    assert isinstance(ours.balancers["critic"], LinearScalarization)
    assert ours._n_updates == reference._n_updates > 0
    untrained = MultiTaskSAC("MlpPolicy", env(), num_tasks=1, seed=3, **SMALL, **options)
    moved = parameters_to_vector(ours.actor.parameters()) - parameters_to_vector(
        untrained.actor.parameters()
    )
    assert moved.abs().max() > 0, "the updates must have moved the parameters for the check"
    assert_same_state(ours.policy.state_dict(), reference.policy.state_dict())
    assert_same_state(ours.actor.optimizer.state_dict(), reference.actor.optimizer.state_dict())
    assert_same_state(ours.critic.optimizer.state_dict(), reference.critic.optimizer.state_dict())
    if reference.log_ent_coef is not None:
        assert torch.equal(ours.log_ent_coef, reference.log_ent_coef)
        assert_same_state(
            ours.ent_coef_optimizer.state_dict(), reference.ent_coef_optimizer.state_dict()
        )


# --------------------------------------------------------------------------------------------------
# Per-task losses.


def test_task_batch_means_match_per_task_averages_and_mask_absent_tasks() -> None:
    one_hot = torch.eye(3)[torch.tensor([0, 2, 2, 0, 2])]
    observations = torch.cat([torch.randn(5, 4), one_hot], dim=1)
    tasks = _TaskBatch.from_observations(observations, 3)
    values = torch.tensor([[1.0], [2.0], [4.0], [3.0], [6.0]])

    assert tasks.present.tolist() == [True, False, True]
    assert tasks.mean(values).tolist() == [2.0, 0.0, 4.0]
    per_task_columns = values * torch.tensor([1.0, 10.0, 100.0])
    assert tasks.mean(per_task_columns).tolist() == [2.0, 0.0, 400.0]
    assert tasks.per_row(torch.tensor([5.0, 6.0, 7.0])).squeeze(1).tolist() == [5, 7, 7, 5, 7]


def test_famo_balancers_learn_and_each_task_has_its_own_entropy_coefficient() -> None:
    model = MultiTaskSAC(
        "MlpPolicy",
        synthetic(3),
        seed=0,
        batch_size=48,
        learning_starts=60,
        replay_buffer_class=TaskStratifiedReplayBuffer,
        **SMALL,
    )
    model.learn(240)

    assert model.log_ent_coef.shape == (3,)
    assert isinstance(model.balancers["critic"], FAMO)
    assert isinstance(model.balancers["actor"], FAMO)
    assert isinstance(model.balancers["ent_coef"], LinearScalarization)
    for role in ("critic", "actor"):
        famo = model.balancers[role]
        assert torch.all(famo.adam_steps > 0), "FAMO.update must run after every step"
        assert not torch.equal(famo.logits, torch.zeros(3))


def test_actor_loss_is_remeasured_on_the_same_policy_sample() -> None:
    model = MultiTaskSAC("MlpPolicy", synthetic(2), seed=0, **SMALL)
    observations = torch.as_tensor(model.env.reset())
    actions, log_prob = model.actor.action_log_prob(observations)
    noise = model._policy_noise()
    again, again_log_prob = model._resample(observations, noise)
    torch.testing.assert_close(again, actions)
    torch.testing.assert_close(again_log_prob, log_prob.reshape(-1, 1))


# --------------------------------------------------------------------------------------------------
# save / load.


def test_save_load_round_trip_restores_predictions_balancers_and_training(tmp_path: Path) -> None:
    model = MultiTaskSAC(
        "MlpPolicy",
        synthetic(3),
        seed=0,
        batch_size=48,
        learning_starts=60,
        replay_buffer_class=TaskStratifiedReplayBuffer,
        balancer_options={"weight_decay": 1e-2},
        **SMALL,
    )
    model.learn(240)
    model.save(tmp_path / "model.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    loaded = MultiTaskSAC.load(tmp_path / "model.zip", env=synthetic(3))
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")

    obs = synthetic(3, seed=5).reset()
    assert np.array_equal(
        loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0]
    )
    assert loaded.task_names == model.task_names == ["reach-0", "reach-1", "reach-2"]
    assert loaded.balancer_config == model.balancer_config
    assert loaded.balancers["critic"].weight_decay == 1e-2
    assert_same_state(loaded.balancers.state_dict(), model.balancers.state_dict())
    assert_same_state(loaded.ent_coef_optimizer.state_dict(), model.ent_coef_optimizer.state_dict())
    assert torch.equal(loaded.log_ent_coef, model.log_ent_coef)

    # Training goes on identically from the saved state (same data, same random draws).
    loaded.set_logger(configure(folder=None, format_strings=[]))
    for agent in (model, loaded):
        set_random_seed(7)
        agent.train(gradient_steps=3, batch_size=48)
    assert_same_state(loaded.policy.state_dict(), model.policy.state_dict())
    assert_same_state(loaded.balancers.state_dict(), model.balancers.state_dict())


def test_load_without_env_predicts_and_set_env_checks_the_task_count(tmp_path: Path) -> None:
    model = MultiTaskSAC("MlpPolicy", synthetic(2), seed=0, **SMALL)
    model.save(tmp_path / "model")
    loaded = MultiTaskSAC.load(tmp_path / "model")
    obs = synthetic(2).reset()
    assert loaded.predict(obs, deterministic=True)[0].shape == (2, 2)

    loaded.set_env(synthetic(2, seed=1))
    with pytest.raises(ValueError, match="env has 3 tasks"):
        loaded.set_env(make_vec_env("synthetic-3", seed=0, max_episode_steps=20))


# --------------------------------------------------------------------------------------------------
# The stratified replay buffer.


def filled_buffer(n_envs: int, num_tasks: int, rows: int = 30, **options: Any) -> Any:
    obs_space = gym.spaces.Box(-1.0, 1.0, (2 + num_tasks,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    buffer = TaskStratifiedReplayBuffer(
        1000, obs_space, action_space, device="cpu", n_envs=n_envs, num_tasks=num_tasks, **options
    )
    env_task = np.arange(n_envs) % num_tasks
    for row in range(rows):
        obs = np.concatenate(
            [np.full((n_envs, 1), row), env_task[:, None], np.eye(num_tasks)[env_task]], axis=1
        ).astype(np.float32)
        timeout = row % 5 == 4
        infos = [{"TimeLimit.truncated": timeout} for _ in range(n_envs)]
        done = np.full(n_envs, row % 5 == 4)
        buffer.add(obs, obs, np.zeros((n_envs, 1)), env_task.astype(np.float32), done, infos)
    return buffer


@pytest.mark.parametrize("n_envs", [3, 6])
def test_stratified_buffer_samples_every_task_equally(n_envs: int) -> None:
    np.random.seed(0)
    buffer = filled_buffer(n_envs, 3)
    batch = buffer.sample(12)
    tasks = batch.observations[:, -3:].argmax(dim=1)
    assert tasks.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # Rewards were stored as the task index: each row comes from a sub-env of its task.
    assert torch.equal(batch.rewards.squeeze(1), tasks.float())
    # Time-limit ends are not terminal: SAC bootstraps through them, as with SB3's buffer.
    assert float(batch.dones.sum()) == 0.0
    rows_seen = set(batch.observations[:, 0].tolist())
    assert len(rows_seen) > 1


def test_stratified_buffer_memory_layout_and_terminal_dones() -> None:
    np.random.seed(1)
    buffer = filled_buffer(3, 3, optimize_memory_usage=True, handle_timeout_termination=False)
    batch = buffer.sample(30)
    assert batch.observations[:, -3:].argmax(dim=1).tolist() == sorted([0, 1, 2] * 10)
    # Without timeout handling, every fifth row's done counts.
    assert set(batch.dones.squeeze(1).tolist()) <= {0.0, 1.0}


def test_stratified_buffer_errors_name_the_problem() -> None:
    buffer = filled_buffer(3, 3)
    with pytest.raises(ValueError, match="batch_size must be a positive multiple of num_tasks=3"):
        buffer.sample(10)
    with pytest.raises(ValueError, match="switched from task 0 to task 1"):
        obs = np.concatenate([np.zeros((3, 2)), np.eye(3)[[1, 1, 2]]], axis=1)
        buffer.add(obs, obs, np.zeros((3, 1)), np.zeros(3), np.zeros(3), [{}] * 3)
    with pytest.raises(ValueError, match="one-hot task id of width 3"):
        obs = np.zeros((3, 5))
        buffer.add(obs, obs, np.zeros((3, 1)), np.zeros(3), np.zeros(3), [{}] * 3)
    partial = filled_buffer(3, 4, rows=1)
    with pytest.raises(ValueError, match="task 3"):
        partial.sample(8)


# --------------------------------------------------------------------------------------------------
# The VecEnv adapter.


def test_vec_env_maps_same_step_autoreset_to_sb3_conventions() -> None:
    envs = SyntheticMultiTaskEnv(2, episode_length=5, seed=0)
    vec_env = MultiTaskVecEnv(envs)
    vec_env.seed(4)
    obs = vec_env.reset()
    assert obs.dtype == np.float32 and obs.shape == (2, 4)
    # Task 0 starts on its goal (success at the first step) then leaves it; task 1 stays away.
    envs._position[0] = envs.goals[0]
    envs._position[1] = -envs.goals[1]
    away = np.sign(envs.goals[0])
    for step in range(5):
        actions = np.stack([np.zeros(2) if step == 0 else -away, np.zeros(2)])
        obs, rewards, dones, infos = vec_env.step(actions.astype(np.float32))
        if step < 4:
            assert not dones.any()
            assert all(info["TimeLimit.truncated"] is False for info in infos)
            assert "is_success" not in infos[0]
    assert dones.all() and rewards.dtype == np.float32
    assert [info["TimeLimit.truncated"] for info in infos] == [True, True]
    # Success counts at any step of the episode (Meta-World's protocol), not only the last.
    assert infos[0]["success"] == 0.0 and infos[0]["is_success"] is True
    assert infos[1]["is_success"] is False
    for index in range(2):
        terminal = infos[index]["terminal_observation"]
        assert terminal.dtype == np.float32
        assert not np.array_equal(terminal, obs[index]), "obs already starts the next episode"
    assert vec_env.get_attr("task_name") == ["reach-0", "reach-1"]
    assert vec_env.get_attr("task_name", indices=1) == ["reach-1"]


def test_vec_env_seeding_and_termination() -> None:
    vec_env = MultiTaskVecEnv(SyntheticMultiTaskEnv(2, seed=0, success_radius=5.0))
    vec_env.seed(11)
    first = vec_env.reset()
    vec_env.seed(11)
    assert np.array_equal(vec_env.reset(), first)
    vec_env.env_method("toggle_terminate_on_success", True)
    _, _, dones, infos = vec_env.step(np.zeros((2, 2), dtype=np.float32))
    # Terminated on success: a true end, so SAC must not bootstrap through it.
    assert dones.all()
    assert [info["TimeLimit.truncated"] for info in infos] == [False, False]
    assert [info["is_success"] for info in infos] == [True, True]


def test_vec_env_refuses_other_autoreset_modes() -> None:
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make("Pendulum-v1")], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP
    )
    envs.task_names = ["pendulum"]
    with pytest.raises(ValueError, match="SAME_STEP"):
        MultiTaskVecEnv(envs)
    with pytest.raises(TypeError, match="multitask gymnasium vector env"):
        MultiTaskVecEnv(gym.make("Pendulum-v1"))  # type: ignore[arg-type]


def test_gymnasium_vector_env_is_wrapped_automatically() -> None:
    model = MultiTaskSAC("MlpPolicy", make_envs("synthetic-2", seed=0), seed=0, **SMALL)
    assert model.num_tasks == 2 and model.task_names == ["reach-0", "reach-1"]
    assert isinstance(model.env.unwrapped, MultiTaskVecEnv)


# --------------------------------------------------------------------------------------------------
# What SB3 users rely on: callbacks, progress bar, TensorBoard tags.


@pytest.mark.filterwarnings("ignore:rich is experimental")  # SB3 uses tqdm.rich
def test_learn_with_sb3_callbacks_writes_sb3_and_per_task_tags(tmp_path: Path) -> None:
    pytest.importorskip("rich", reason="SB3's progress bar needs rich (and tqdm)")
    eval_env = make_vec_env("synthetic-2", seed=9, max_episode_steps=10, terminate_on_success=True)
    per_task = PerTaskEvalCallback(eval_env, n_eval_episodes=2, eval_freq=50, log_aggregate=False)
    callbacks = [
        EvalCallback(eval_env, n_eval_episodes=2, eval_freq=50, warn=False),
        per_task,
        CheckpointCallback(save_freq=50, save_path=str(tmp_path / "checkpoints")),
    ]
    model = MultiTaskSAC(
        "MlpPolicy",
        synthetic(2, episode_steps=10),
        seed=0,
        batch_size=32,
        learning_starts=40,
        tensorboard_log=str(tmp_path),
        replay_buffer_class=TaskStratifiedReplayBuffer,
        **SMALL,
    )
    model.learn(200, callback=callbacks, log_interval=2, progress_bar=True)

    (run_dir,) = tmp_path.glob("MultiTaskSAC_*")
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {
        "rollout/ep_rew_mean",
        "rollout/success_rate",
        "eval/mean_reward",
        "eval/success_rate",
        "train/critic_loss",
        "train/actor_loss",
        "train/ent_coef",
        "train/ent_coef_loss",
    }
    for task in ("reach-0", "reach-1"):
        expected |= {
            f"train/critic_loss/{task}",
            f"train/actor_loss/{task}",
            f"train/ent_coef/{task}",
            f"train/ent_coef_loss/{task}",
            f"balancer/critic/{task}",
            f"balancer/actor/{task}",
            f"balancer/ent_coef/{task}",
            f"eval/success_rate/{task}",
            f"eval/mean_reward/{task}",
        }
    assert expected <= tags, sorted(expected - tags)
    weights = [
        events.Scalars(f"balancer/critic/{task}")[-1].value for task in ("reach-0", "reach-1")
    ]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5)

    assert per_task.last_evaluation is not None
    assert per_task.last_evaluation.episodes == {"reach-0": 2, "reach-1": 2}
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.zip"))
    assert checkpoints
    restored = MultiTaskSAC.load(checkpoints[-1])
    assert restored.num_tasks == 2


def test_evaluate_per_task_reports_each_task() -> None:
    class GoToGoal:
        """Drives every point mass straight to its task's goal."""

        def __init__(self, goals: np.ndarray) -> None:
            self.goals = goals

        def predict(self, obs: np.ndarray, **_: Any) -> tuple[np.ndarray, None]:
            direction = self.goals - obs[:, :2]
            return np.clip(direction / 0.1, -1.0, 1.0).astype(np.float32), None

    vec_env = make_vec_env("synthetic-3", seed=0, max_episode_steps=40)
    goals = vec_env.unwrapped.vector_env.goals
    result = evaluate_per_task(GoToGoal(goals), vec_env, n_eval_episodes=2)
    assert result.success_rate == {"reach-0": 1.0, "reach-1": 1.0, "reach-2": 1.0}
    assert result.episodes == {"reach-0": 2, "reach-1": 2, "reach-2": 2}
    wrong_goals = evaluate_per_task(GoToGoal(-goals), vec_env, n_eval_episodes=1)
    assert wrong_goals.mean_success_rate == 0.0


# --------------------------------------------------------------------------------------------------
# User errors.


def test_user_errors_name_the_parameter_and_value() -> None:
    env = synthetic(2)
    with pytest.raises(ValueError, match="unknown balancer 'famoo'.*did you mean 'famo'"):
        MultiTaskSAC("MlpPolicy", env, balancer="famoo")
    with pytest.raises(TypeError, match="balancer 'famo' has no option 'gamma'"):
        MultiTaskSAC("MlpPolicy", env, critic_balancer="famo", critic_balancer_options={"gamma": 1})
    with pytest.raises(ValueError, match="batch_size must be a positive multiple of num_tasks=2"):
        MultiTaskSAC(
            "MlpPolicy", env, batch_size=33, replay_buffer_class=TaskStratifiedReplayBuffer
        )
    with pytest.raises(ValueError, match="cannot tell the number of tasks"):
        MultiTaskSAC("MlpPolicy", "Pendulum-v1")
    with pytest.raises(ValueError, match="num_tasks is 3 but the environment's task_names has 2"):
        MultiTaskSAC("MlpPolicy", env, num_tasks=3)
    with pytest.raises(ValueError, match="must end with a one-hot task id of width 2"):
        MultiTaskSAC("MlpPolicy", "Pendulum-v1", num_tasks=2, **SMALL).learn(10)


def test_a_shared_entropy_coefficient_is_available() -> None:
    model = MultiTaskSAC(
        "MlpPolicy",
        synthetic(2),
        seed=0,
        batch_size=32,
        learning_starts=40,
        per_task_ent_coef=False,
        **SMALL,
    )
    model.learn(80)
    assert model.log_ent_coef.shape == (1,)
    assert model.balancers["ent_coef"].num_tasks == 2


def test_vec_normalize_keeps_tasks_apart() -> None:
    env = VecNormalize(synthetic(3))
    model = MultiTaskSAC(
        "MlpPolicy",
        env,
        seed=0,
        batch_size=48,
        learning_starts=60,
        replay_buffer_class=TaskStratifiedReplayBuffer,
        **SMALL,
    )
    model.learn(120)
    # The buffer keeps raw observations: each sub-env's one-hot still names its task.
    assert model.replay_buffer.env_tasks.tolist() == [0, 1, 2]
    batch = model.replay_buffer.sample(48, env=model.get_vec_normalize_env())
    tasks = _TaskBatch.from_observations(batch.observations, 3)
    assert tasks.counts.tolist() == [16.0, 16.0, 16.0]
