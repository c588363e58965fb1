"""Meta-World's evaluation protocol, for any environment meeting :mod:`famo_rl.envs.base`.

Protocol (``metaworld.evaluation.evaluation``): every task runs ``num_episodes`` episodes with the
agent's deterministic actions; an episode ends at its first success and counts as a success if one
happened at any step; the success rate of a task is its share of successful episodes, and the
benchmark's is the mean over tasks. Returns are summed rewards up to the episode's end, as the
environment's episode statistics report them when it has them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .envs.base import MultiTaskVectorEnv, step_success


@runtime_checkable
class EvalAgent(Protocol):
    """What :func:`evaluate` needs of an agent (Meta-World's ``Agent`` protocol)."""

    def eval_action(self, obs: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
        """Deterministic actions, shape ``(num_tasks, action_dim)``, for ``obs``."""
        ...

    def reset(self, env_mask: npt.NDArray[np.bool_]) -> None:
        """Forget any per-episode state of the sub-environments where ``env_mask`` is true."""
        ...


@dataclass(frozen=True)
class EvalResult:
    """Success rates and returns of one evaluation.

    :param mean_success_rate: mean over tasks of :attr:`success_rate`.
    :param success_rate: per task name, the share of its episodes that succeeded.
    :param mean_return: mean return over all episodes (tasks weigh equally: each has
        ``num_episodes``).
    :param mean_returns: per task name, the mean return of its episodes.
    :param episode_returns: per task name, the return of each episode, in the order they ended.
    """

    mean_success_rate: float
    success_rate: dict[str, float]
    mean_return: float
    mean_returns: dict[str, float]
    episode_returns: dict[str, list[float]] = field(repr=False)


class _Tally:
    """The first ``num_episodes`` episodes of each task: their returns and successes."""

    def __init__(self, task_names: list[str], num_episodes: int) -> None:
        self.num_episodes = num_episodes
        self.returns: dict[str, list[float]] = {name: [] for name in task_names}
        self.successes: dict[str, list[bool]] = {name: [] for name in task_names}

    def add(self, task_name: str, episode_return: float, success: bool) -> None:
        if len(self.returns[task_name]) < self.num_episodes:
            self.returns[task_name].append(float(episode_return))
            self.successes[task_name].append(bool(success))

    def complete(self) -> bool:
        return all(len(returns) >= self.num_episodes for returns in self.returns.values())

    def result(self) -> EvalResult:
        success_rate = {name: float(np.mean(s)) for name, s in self.successes.items()}
        mean_returns = {name: float(np.mean(r)) for name, r in self.returns.items()}
        return EvalResult(
            mean_success_rate=float(np.mean(list(success_rate.values()))),
            success_rate=success_rate,
            mean_return=float(np.mean([r for returns in self.returns.values() for r in returns])),
            mean_returns=mean_returns,
            episode_returns={name: list(r) for name, r in self.returns.items()},
        )


def _reported_returns(
    info: dict[str, Any], done: npt.NDArray[np.bool_], returns: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """The episode returns the environment reports (``final_info["episode"]["r"]``, as Meta-World's
    evaluation reads them) where it reports them, else ``returns`` summed here.

    Meta-World's sums can differ from a float64 sum in the last bits: a task whose reward is
    sometimes ``np.float32`` accumulates its return in float32.
    """
    episode = info.get("final_info", {}).get("episode", {})
    if "r" not in episode:
        return returns
    mask = done & episode.get("_r", np.ones(len(done), dtype=np.bool_))
    return np.where(mask, np.asarray(episode["r"], dtype=np.float64), returns)


def _stop_at_success(envs: MultiTaskVectorEnv) -> Callable[[], None] | None:
    """Make the environment end episodes at their first success, as Meta-World's evaluation does.

    :returns: a function restoring the previous setting, or ``None`` if ``envs`` has no
        ``terminate_on_success`` switch (then :func:`evaluate` stops counting at the first success
        and lets the episode run out unobserved).
    """
    get_attr = getattr(envs, "get_attr", None)
    call = getattr(envs, "call", None)
    if get_attr is None or call is None:
        return None
    try:
        previous = [bool(value) for value in get_attr("terminate_on_success")]
    except AttributeError:
        return None
    call("toggle_terminate_on_success", True)

    def restore() -> None:
        if len(set(previous)) == 1:
            call("toggle_terminate_on_success", previous[0])
        else:
            envs.set_attr("terminate_on_success", previous)  # type: ignore[attr-defined]

    return restore


def _run_episodes(
    agent: EvalAgent,
    envs: MultiTaskVectorEnv,
    tally: _Tally,
    stops_at_success: bool,
    seed: int | None,
) -> None:
    """Step every sub-environment until each task has its episodes.

    When the environment does not end episodes at success itself (``stops_at_success`` false), an
    episode is counted at its first success and the sub-environment is ignored until it resets.
    """
    task_names = list(envs.task_names)
    num_envs = envs.num_envs
    obs, _ = envs.reset(seed=seed)
    agent.reset(np.ones(num_envs, dtype=np.bool_))
    returns = np.zeros(num_envs)
    succeeded = np.zeros(num_envs, dtype=np.bool_)
    counted = np.zeros(num_envs, dtype=np.bool_)

    while not tally.complete():
        actions = np.asarray(agent.eval_action(obs))
        obs, reward, terminated, truncated, info = envs.step(actions)
        done = np.logical_or(terminated, truncated)
        agent.reset(done)

        returns += np.where(counted, 0.0, reward)
        succeeded |= step_success(info, done) & ~counted
        episode_over = done if stops_at_success else done | succeeded
        episode_returns = _reported_returns(info, done, returns)
        for env_idx in np.flatnonzero(episode_over & ~counted):
            tally.add(task_names[env_idx], episode_returns[env_idx], succeeded[env_idx])

        counted = (counted | episode_over) & ~done
        returns[done] = 0.0
        succeeded[done] = False


def evaluate(
    agent: EvalAgent,
    envs: MultiTaskVectorEnv,
    num_episodes: int = 50,
    *,
    seed: int | None = None,
) -> EvalResult:
    """Success rates and returns of ``agent`` over ``num_episodes`` episodes of every task.

    Agrees with ``metaworld.evaluation.evaluation`` on Meta-World environments (same episodes,
    success rates and returns), and works on any environment meeting :mod:`famo_rl.envs.base`.
    If the environment has Meta-World's ``terminate_on_success`` switch, it is turned on for the
    evaluation and restored afterwards, even on error.

    :param agent: gives deterministic actions (``eval_action``) and is told which sub-environments
        start a new episode (``reset``).
    :param envs: the environment; it is reset first.
    :param num_episodes: episodes per task (Meta-World's protocol uses 50).
    :param seed: passed to ``envs.reset`` (Meta-World ignores it; the synthetic suite uses it).
    :raises ValueError: if ``num_episodes`` is not a positive int.

    .. warning::
        The environment is left mid-episode: a training loop sharing it must reset it afterwards.
        Use a separate environment for evaluation.
    """
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, int) or num_episodes < 1:
        raise ValueError(f"num_episodes must be a positive int, found {num_episodes!r}")
    tally = _Tally(list(envs.task_names), num_episodes)
    restore = _stop_at_success(envs)
    try:
        _run_episodes(agent, envs, tally, stops_at_success=restore is not None, seed=seed)
    finally:
        if restore is not None:
            restore()
    return tally.result()
