"""Meta-World MT10 with FAMO, written as an ordinary Stable-Baselines3 training script.

``MultiTaskSAC`` is SB3's SAC with per-task losses balanced by FAMO; the rest is plain SB3:
a ``VecEnv``, ``learn`` with callbacks, TensorBoard through SB3's logger, ``save``.

The settings follow the FAMO authors' MT10 run (3 x 400 networks, batch 1280 = 128 per task,
Adam 3e-4, one gradient step per environment step, 1500 warm-up steps per task, evaluation every
10k steps), with FAMO on the critic and actor losses and one entropy coefficient per task.

Run::

    python examples/sb3_mt10.py --device cuda              # the full run: 2M steps per task (GPU)
    python examples/sb3_mt10.py --steps 20000 --seed 1     # a shorter one
    python examples/sb3_mt10.py --quick                    # seconds, on the synthetic suite
    tensorboard --logdir runs/sb3_mt10

``--steps`` counts environment steps per task; SB3's ``total_timesteps`` counts transitions, so
the script passes ``steps * num_tasks``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from stable_baselines3.common.callbacks import CheckpointCallback

from famo_rl.sb3 import (
    MultiTaskSAC,
    PerTaskEvalCallback,
    PerTaskEvaluation,
    TaskStratifiedReplayBuffer,
    make_vec_env,
)


@dataclass(frozen=True)
class Setting:
    """What differs between the real run and ``--quick``."""

    env_name: str
    net_arch: tuple[int, ...]
    batch_size_per_task: int
    warmup_steps: int
    buffer_size: int
    eval_every: int
    eval_episodes: int
    max_episode_steps: int | None


MT10 = Setting("MT10", (400, 400, 400), 128, 1500, 1_000_000, 10_000, 10, None)
QUICK = Setting("synthetic-4", (32, 32), 16, 50, 10_000, 100, 2, 50)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="environment steps per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda', ... (SB3's 'auto')")
    parser.add_argument("--balancer", default="famo", help="balancer of critic and actor losses")
    parser.add_argument("--weight-decay", type=float, default=1e-3, help="FAMO's decay (gamma)")
    parser.add_argument("--log-dir", type=Path, default=Path("runs/sb3_mt10"))
    parser.add_argument("--progress-bar", action="store_true", help="SB3's progress bar")
    parser.add_argument("--quick", action="store_true", help="a tiny run on the synthetic suite")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> PerTaskEvaluation:
    """Train, evaluate every ``eval_every`` steps, save; return the final evaluation."""
    args = parse_args(argv)
    setting = QUICK if args.quick else MT10
    steps = args.steps if args.steps is not None else (300 if args.quick else 2_000_000)
    if setting is QUICK:
        # Keep the tiny run on one thread: several threads only contend on small networks.
        torch.set_num_threads(1)

    env = make_vec_env(
        setting.env_name, seed=args.seed, max_episode_steps=setting.max_episode_steps
    )
    # Evaluation follows Meta-World's protocol: an episode succeeds if it succeeds at any step,
    # so it may as well stop there.
    eval_env = make_vec_env(
        setting.env_name,
        seed=args.seed + 10_000,
        max_episode_steps=setting.max_episode_steps,
        terminate_on_success=True,
    )
    num_tasks = env.num_envs
    options = {"weight_decay": args.weight_decay} if args.balancer == "famo" else {}
    model = MultiTaskSAC(
        "MlpPolicy",
        env,
        balancer=args.balancer,
        balancer_options=options,
        replay_buffer_class=TaskStratifiedReplayBuffer,
        batch_size=setting.batch_size_per_task * num_tasks,
        buffer_size=setting.buffer_size,
        learning_starts=setting.warmup_steps * num_tasks,
        learning_rate=3e-4,
        gamma=0.99,
        tau=0.005,
        ent_coef="auto",
        policy_kwargs={"net_arch": list(setting.net_arch)},
        tensorboard_log=str(args.log_dir),
        seed=args.seed,
        device=args.device,
        verbose=1,
    )
    evaluation = PerTaskEvalCallback(
        eval_env, n_eval_episodes=setting.eval_episodes, eval_freq=setting.eval_every, verbose=1
    )
    checkpoints = CheckpointCallback(
        save_freq=10 * setting.eval_every,
        save_path=str(args.log_dir / "checkpoints"),
        name_prefix=f"mt_sac_seed{args.seed}",
    )
    model.learn(
        total_timesteps=steps * num_tasks,
        callback=[evaluation, checkpoints],
        log_interval=10 * num_tasks,
        progress_bar=args.progress_bar,
    )
    model.save(args.log_dir / f"mt_sac_seed{args.seed}")
    final = evaluation.evaluate()
    for task_name, rate in final.success_rate.items():
        print(f"{task_name:>24s}  success {rate:.2f}  return {final.mean_reward[task_name]:9.1f}")
    print(f"{'mean over tasks':>24s}  success {final.mean_success_rate:.2f}")
    env.close()
    eval_env.close()
    return final


if __name__ == "__main__":
    main()
