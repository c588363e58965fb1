"""Per-task evaluation for SB3 models: success rate and return of every task, not only their mean.

SB3's ``EvalCallback`` pools every episode into one ``eval/success_rate``; on a multitask
benchmark the interesting question is which tasks succeed. :func:`evaluate_per_task` returns the
per-task figures (library code returns metrics) and :class:`PerTaskEvalCallback` logs them through
the model's logger as ``eval/success_rate/<task_name>`` and ``eval/mean_reward/<task_name>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.type_aliases import PolicyPredictor
from stable_baselines3.common.vec_env import VecEnv, sync_envs_normalization


@dataclass(frozen=True)
class PerTaskEvaluation:
    """Results of :func:`evaluate_per_task`.

    :param success_rate: each task's fraction of successful episodes; empty when the environment
        reports no ``is_success``.
    :param mean_reward: each task's mean episode return.
    :param episodes: episodes run per task.
    """

    success_rate: dict[str, float]
    mean_reward: dict[str, float]
    episodes: dict[str, int]

    @property
    def mean_success_rate(self) -> float:
        """Mean over tasks of the success rates (NaN without success information)."""
        return float(np.mean(list(self.success_rate.values()))) if self.success_rate else math.nan

    @property
    def mean_reward_over_tasks(self) -> float:
        """Mean over tasks of the mean returns, so that every task counts once."""
        return float(np.mean(list(self.mean_reward.values())))


def evaluate_per_task(
    model: PolicyPredictor,
    env: VecEnv,
    n_eval_episodes: int = 10,
    deterministic: bool = True,
) -> PerTaskEvaluation:
    """Run ``n_eval_episodes`` episodes in every sub-environment and report them per task.

    Uses SB3's ``evaluate_policy``, so wrappers behave as in ``EvalCallback``. Sub-environment
    ``i`` is task ``env.task_names[i]`` (as :func:`famo_rl.sb3.make_vec_env` builds them; several
    sub-environments may share a task, whose episodes are then pooled); an environment without
    ``task_names`` gets ``env_0``, ``env_1``, ... An episode is a success if its final info says
    ``is_success`` (:class:`~famo_rl.sb3.MultiTaskVecEnv` sets it if the episode succeeded at any
    step, Meta-World's protocol).

    :param model: anything with SB3's ``predict``, e.g. a :class:`~famo_rl.sb3.MultiTaskSAC`.
    :param env: the evaluation environment, an SB3 ``VecEnv``. With ``terminate_on_success=True``
        episodes stop at their first success, which gives the same success rates faster.
    :param n_eval_episodes: episodes per sub-environment.
    :param deterministic: use the policy's mode rather than sampling.
    :raises TypeError: if ``env`` is not an SB3 ``VecEnv``.
    :raises ValueError: for ``n_eval_episodes`` below 1.
    """
    if not isinstance(env, VecEnv):
        raise TypeError(f"env must be an SB3 VecEnv, found {type(env).__name__}")
    if isinstance(n_eval_episodes, bool) or not isinstance(n_eval_episodes, int):
        raise ValueError(f"n_eval_episodes must be a positive integer, found {n_eval_episodes!r}")
    if n_eval_episodes < 1:
        raise ValueError(f"n_eval_episodes must be a positive integer, found {n_eval_episodes!r}")
    env_task_names = _env_task_names(env)
    successes: list[list[float]] = [[] for _ in range(env.num_envs)]
    returns: list[list[float]] = [[] for _ in range(env.num_envs)]

    def collect(locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        del globals_
        if not locals_["done"]:
            return
        env_idx, info = locals_["i"], locals_["info"]
        episode = info.get("episode")
        ended_return = episode["r"] if episode is not None else locals_["current_rewards"][env_idx]
        returns[env_idx].append(float(ended_return))
        if "is_success" in info:
            successes[env_idx].append(float(info["is_success"]))

    # evaluate_policy splits its episodes evenly over the sub-environments.
    evaluate_policy(
        model,
        env,
        n_eval_episodes=n_eval_episodes * env.num_envs,
        deterministic=deterministic,
        callback=collect,
        warn=False,
    )
    pooled_returns: dict[str, list[float]] = {}
    pooled_successes: dict[str, list[float]] = {}
    for env_idx, task_name in enumerate(env_task_names):
        pooled_returns.setdefault(task_name, []).extend(returns[env_idx])
        if successes[env_idx]:
            pooled_successes.setdefault(task_name, []).extend(successes[env_idx])
    return PerTaskEvaluation(
        success_rate={name: float(np.mean(values)) for name, values in pooled_successes.items()},
        mean_reward={name: float(np.mean(values)) for name, values in pooled_returns.items()},
        episodes={name: len(values) for name, values in pooled_returns.items()},
    )


class PerTaskEvalCallback(BaseCallback):
    """Evaluate every ``eval_freq`` steps and log each task's success rate and return.

    Logs ``eval/success_rate/<task_name>`` and ``eval/mean_reward/<task_name>`` and, with
    ``log_aggregate``, ``eval/success_rate`` and ``eval/mean_reward`` as means *over tasks* (every
    task weighs the same), then dumps the logger at the current step, as ``EvalCallback`` does.
    Alongside an ``EvalCallback``, which logs those two aggregate tags itself, pass
    ``log_aggregate=False``. The latest results are in :attr:`last_evaluation`, all of them in
    :attr:`evaluations` as ``(num_timesteps, PerTaskEvaluation)`` pairs.

    :param eval_env: the evaluation environment, one sub-environment per task (e.g.
        ``make_vec_env(..., terminate_on_success=True)``).
    :param n_eval_episodes: episodes per task at each evaluation.
    :param eval_freq: evaluate every ``eval_freq`` calls of the callback, that is every
        ``eval_freq`` steps of the training ``VecEnv`` (``eval_freq * n_envs`` transitions), as
        ``EvalCallback`` counts.
    :param deterministic: use the policy's mode rather than sampling.
    :param log_aggregate: also log the means over tasks as ``eval/success_rate`` and
        ``eval/mean_reward``.
    :param verbose: 1 prints the mean success rate at each evaluation.
    """

    def __init__(
        self,
        eval_env: VecEnv,
        n_eval_episodes: int = 10,
        eval_freq: int = 10_000,
        deterministic: bool = True,
        log_aggregate: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if not isinstance(eval_env, VecEnv):
            raise TypeError(
                f"eval_env must be an SB3 VecEnv (e.g. famo_rl.sb3.make_vec_env(...)), found "
                f"{type(eval_env).__name__}"
            )
        for name, value in (("n_eval_episodes", n_eval_episodes), ("eval_freq", eval_freq)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, found {value!r}")
        self.eval_env = eval_env
        self.n_eval_episodes = n_eval_episodes
        self.eval_freq = eval_freq
        self.deterministic = deterministic
        self.log_aggregate = log_aggregate
        self.last_evaluation: PerTaskEvaluation | None = None
        self.evaluations: list[tuple[int, PerTaskEvaluation]] = []

    def _on_step(self) -> bool:
        if self.n_calls % self.eval_freq == 0:
            self.evaluate()
        return True

    def evaluate(self) -> PerTaskEvaluation:
        """Evaluate now, log the results and return them."""
        if self.model.get_vec_normalize_env() is not None:
            # The evaluation env must normalise observations with the training statistics.
            sync_envs_normalization(self.training_env, self.eval_env)
        evaluation = evaluate_per_task(
            self.model, self.eval_env, self.n_eval_episodes, self.deterministic
        )
        self.last_evaluation = evaluation
        self.evaluations.append((self.num_timesteps, evaluation))

        for task_name, rate in evaluation.success_rate.items():
            self.logger.record(f"eval/success_rate/{task_name}", rate, exclude=("stdout", "log"))
        for task_name, value in evaluation.mean_reward.items():
            self.logger.record(f"eval/mean_reward/{task_name}", value, exclude=("stdout", "log"))
        if self.log_aggregate:
            if evaluation.success_rate:
                self.logger.record("eval/success_rate", evaluation.mean_success_rate)
            self.logger.record("eval/mean_reward", evaluation.mean_reward_over_tasks)
        if self.verbose >= 1:
            print(
                f"Eval num_timesteps={self.num_timesteps}, mean success rate over tasks="
                f"{evaluation.mean_success_rate:.3f}"
            )
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(self.num_timesteps)
        return evaluation


def _env_task_names(env: VecEnv) -> list[str]:
    """The task of each sub-environment: ``env.task_names`` if it has one per sub-env."""
    names = getattr(env, "task_names", None)
    if names is None or len(names) != env.num_envs:
        return [f"env_{env_idx}" for env_idx in range(env.num_envs)]
    return [str(name) for name in names]
