"""MultiTaskSAC with FAMO learns the synthetic suite through SB3's own training loop."""

from __future__ import annotations

import torch

from famo_rl.sb3 import MultiTaskSAC, TaskStratifiedReplayBuffer, evaluate_per_task, make_vec_env

torch.set_num_threads(1)


def test_famo_through_sb3_learns_two_synthetic_tasks() -> None:
    def envs(seed: int) -> object:
        return make_vec_env(
            "synthetic-2", seed=seed, reward_scales=[1.0, 1.0], max_episode_steps=30
        )

    model = MultiTaskSAC(
        "MlpPolicy",
        envs(0),
        balancer="famo",
        replay_buffer_class=TaskStratifiedReplayBuffer,
        batch_size=64,
        learning_starts=200,
        learning_rate=1e-3,
        ent_coef="auto_0.1",
        policy_kwargs={"net_arch": [64, 64]},
        seed=2,
    )
    # The goals depend on the build seed only: evaluate on other start positions, same goals.
    eval_env = envs(0)
    eval_env.seed(123)
    before = evaluate_per_task(model, eval_env, n_eval_episodes=10)
    model.learn(1200)  # 600 steps per task, 500 gradient steps
    after = evaluate_per_task(model, eval_env, n_eval_episodes=10)

    assert before.mean_success_rate <= 0.2
    assert after.mean_success_rate >= 0.7, after.success_rate
    assert min(after.success_rate.values()) >= 0.5, after.success_rate
    assert after.mean_reward_over_tasks > before.mean_reward_over_tasks
