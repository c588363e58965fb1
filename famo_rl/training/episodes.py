"""Per-task episode statistics of the training rollouts, vectorised over tasks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class EpisodeTracker:
    """Tracks each task's episode return and success ("success at any step").

    Keeps the last ``window`` finished episodes of every task, so the rollout success rate is
    smoothed over recent episodes rather than one.

    :param num_tasks: number of sub-environments, one per task.
    :param window: finished episodes remembered per task.
    """

    def __init__(self, num_tasks: int, window: int = 10) -> None:
        self.num_tasks = num_tasks
        self.window = window
        self.running_return = np.zeros(num_tasks)
        self.running_success = np.zeros(num_tasks, dtype=bool)
        self.returns = np.full((num_tasks, window), np.nan)
        self.successes = np.full((num_tasks, window), np.nan)
        self.finished = np.zeros(num_tasks, dtype=np.int64)

    def record(
        self,
        reward: npt.NDArray[np.floating],
        success: npt.NDArray[np.floating] | npt.NDArray[np.bool_],
        done: npt.NDArray[np.bool_],
    ) -> None:
        """Add one step of every task; ``done`` closes those tasks' episodes."""
        self.running_return += reward
        self.running_success |= np.asarray(success, dtype=bool)
        ended = np.flatnonzero(done)
        if ended.size == 0:
            return
        slot = self.finished[ended] % self.window
        self.returns[ended, slot] = self.running_return[ended]
        self.successes[ended, slot] = self.running_success[ended]
        self.finished[ended] += 1
        self.running_return[ended] = 0.0
        self.running_success[ended] = False

    def success_rate(self) -> npt.NDArray[np.floating]:
        """Mean success over each task's remembered episodes (NaN before its first episode)."""
        return _nanmean_rows(self.successes)

    def mean_return(self) -> npt.NDArray[np.floating]:
        """Mean return over each task's remembered episodes (NaN before its first episode)."""
        return _nanmean_rows(self.returns)

    def state_dict(self) -> dict[str, list]:
        return {
            "running_return": self.running_return.tolist(),
            "running_success": self.running_success.tolist(),
            "returns": self.returns.tolist(),
            "successes": self.successes.tolist(),
            "finished": self.finished.tolist(),
        }

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.running_return = np.asarray(state["running_return"], dtype=np.float64)
        self.running_success = np.asarray(state["running_success"], dtype=bool)
        self.returns = np.asarray(state["returns"], dtype=np.float64)
        self.successes = np.asarray(state["successes"], dtype=np.float64)
        self.finished = np.asarray(state["finished"], dtype=np.int64)


def _nanmean_rows(values: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    counts = np.sum(~np.isnan(values), axis=1)
    sums = np.nansum(values, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
