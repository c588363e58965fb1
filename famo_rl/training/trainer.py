"""The training loop: collect, update, evaluate, log, checkpoint.

Only this module logs; the agent and the balancers return metrics as tensors, which are brought to
the host once per logging interval (not once per update).
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from famo_rl.agents import MultiTaskReplayBuffer, MultiTaskSAC
from famo_rl.envs import (
    CrashReportingAsyncVectorEnv,
    EnvironmentCrashed,
    MultiTaskVectorEnv,
    make_envs,
    split_observation,
    step_success,
)
from famo_rl.evaluation import EvalResult, evaluate

from .checkpoints import UNREADABLE, CheckpointManager, describe_unreadable
from .config import TrainConfig, config_to_dict
from .episodes import EpisodeTracker

CHECKPOINT_FORMAT = 1
#: The replay buffer's file in the checkpoint folder, when ``checkpoint_buffer`` is set.
BUFFER_FILE = "buffer.pt"
#: Signals that stop a run after its current step, with a checkpoint.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: TensorBoard namespaces of the agent's update metrics; the rest go under ``train/``.
BALANCER_TAGS = {
    "critic_weights": "balancer/critic",
    "actor_weights": "balancer/actor",
    "alpha_weights": "balancer/alpha",
}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device")
    return torch.device(name)


def build_envs(config: TrainConfig, seed: int) -> MultiTaskVectorEnv:
    """The vector environment a config describes, seeded with ``seed``."""
    env = config.env
    return make_envs(
        env.name,
        seed=seed,
        num_tasks=env.num_tasks,
        reward_scales=env.reward_scales,
        max_episode_steps=env.max_episode_steps,
        reward_function_version=env.reward_function_version,
        vector_strategy=env.vector_strategy,
        use_cache=env.use_cache,
    )


def build_agent(
    config: TrainConfig, envs: MultiTaskVectorEnv, device: torch.device
) -> MultiTaskSAC:
    """A multitask SAC sized for ``envs``."""
    num_tasks = envs.num_envs
    obs_dim = envs.single_observation_space.shape[0] - num_tasks
    action_space = envs.single_action_space
    return MultiTaskSAC(
        obs_dim=obs_dim,
        action_dim=action_space.shape[0],
        num_tasks=num_tasks,
        config=config.agent,
        device=device,
        action_low=action_space.low,
        action_high=action_space.high,
        seed=config.seed,
    )


class RunStopped(RuntimeError):
    """The run cannot go on (a crashed environment, non-finite training); the message says why
    and which checkpoint to resume from."""


@dataclass
class TrainResult:
    """What a finished or interrupted run reports."""

    run_dir: Path
    steps: int
    updates: int
    last_eval: EvalResult | None
    best_success_rate: float
    #: The signal (``"SIGINT"``, ``"SIGTERM"``) that stopped the run early, if any.
    stopped_by: str | None = None
    #: The checkpoint written last, if any.
    checkpoint: Path | None = None


class Trainer:
    """Trains a multitask SAC agent as a :class:`TrainConfig` describes.

    :param config: the validated configuration.
    :param run_dir: where the resolved config, TensorBoard events, metrics and checkpoints go.
    :param resume: continue from the newest checkpoint in ``run_dir``.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path, resume: bool = False) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.device)
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        _seed_everything(config.seed)
        self.envs = build_envs(config, config.seed)
        if config.overlap_env_steps:
            # The config check guarantees Meta-World in worker processes.
            workers = cast(CrashReportingAsyncVectorEnv, self.envs)
            workers.set_worker_priority(config.overlap_worker_priority)
        self.eval_envs: MultiTaskVectorEnv | None = None
        self.task_names = list(self.envs.task_names)
        self.num_tasks = self.envs.num_envs
        self.rows_per_task = config.rows_per_task(self.num_tasks)
        self.agent = build_agent(config, self.envs, self.device)
        obs_dim = self.envs.single_observation_space.shape[0] - self.num_tasks
        self.buffer = MultiTaskReplayBuffer(
            num_tasks=self.num_tasks,
            obs_dim=obs_dim,
            action_dim=self.envs.single_action_space.shape[0],
            capacity=config.buffer_capacity,
            device=self.device,
            seed=config.seed,
        )
        self.tracker = EpisodeTracker(self.num_tasks)
        self.action_rng = np.random.default_rng(config.seed)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", config.keep_checkpoints)
        self.step = 0
        self.updates = 0
        self.best_success_rate = float("nan")
        self.last_eval: EvalResult | None = None
        self.last_checkpoint: Path | None = None
        # The longest run of consecutive skipped updates since the last look, kept on the device
        # so that the host reads it only every ``_skip_check_interval`` updates.
        self._longest_skip_run = torch.zeros((), dtype=torch.long, device=self.device)
        self._skip_check_interval = 1 if self.device.type == "cpu" else 50
        if resume:
            self._restore()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(
            yaml.safe_dump(config_to_dict(config), sort_keys=False)
        )
        self.writer = SummaryWriter(str(self.run_dir))

    # ----------------------------------------------------------------------------------------------
    # The loop.

    def train(self) -> TrainResult:
        """Run until ``total_steps``, evaluating, logging and checkpointing along the way."""
        config = self.config
        progress = tqdm(
            total=config.total_steps,
            initial=self.step,
            disable=not config.progress,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
        )
        window_start, window_step = time.perf_counter(), self.step
        metrics: dict[str, torch.Tensor] = {}
        with _StopOnSignals() as stop:
            try:
                obs, _ = self.envs.reset(seed=config.seed + self.step)
                while self.step < config.total_steps and stop.received is None:
                    obs, step_metrics = self._advance(obs)
                    metrics = step_metrics or metrics
                    progress.update(1)
                    if self.step % config.log_every == 0:
                        now = time.perf_counter()
                        steps_per_second = (self.step - window_step) / max(now - window_start, 1e-9)
                        window_start, window_step = now, self.step
                        self._log_training(metrics, steps_per_second)
                        progress.set_postfix(self._postfix(steps_per_second), refresh=False)
                    if stop.received is not None:
                        break
                    if self.step % config.eval_every == 0 or self.step == config.total_steps:
                        self._evaluate()
                        progress.set_postfix(self._postfix(None), refresh=False)
                    if self.step % config.checkpoint_every == 0 or self.step == config.total_steps:
                        self.save_checkpoint()
                if stop.received is not None:
                    self.save_checkpoint()
            except EnvironmentCrashed as error:
                path = self.save_checkpoint()
                raise RunStopped(
                    f"{error}; checkpoint saved at step {self.step} to {path}; continue with "
                    f"famo-rl train --resume {self.run_dir}"
                ) from error
            finally:
                progress.close()
                self.writer.flush()
        return TrainResult(
            self.run_dir,
            self.step,
            self.updates,
            self.last_eval,
            self.best_success_rate,
            stopped_by=stop.received,
            checkpoint=self.last_checkpoint,
        )

    def close(self) -> None:
        """Release the environments and the event writer."""
        self.writer.close()
        self.envs.close()
        if self.eval_envs is not None:
            self.eval_envs.close()

    def _check_skipped_updates(self) -> None:
        """Stop the run once ``max_consecutive_skips`` updates in a row were skipped.

        The agent skips an update whose losses, gradients or weights are not finite and counts
        it on the device; the host looks every ``_skip_check_interval`` updates (every update on
        the CPU, where looking costs nothing). No checkpoint is written: the last one holds the
        last good state.
        """
        torch.maximum(
            self._longest_skip_run, self.agent.consecutive_skips, out=self._longest_skip_run
        )
        if self.updates % self._skip_check_interval != 0:
            return
        longest = int(self._longest_skip_run)
        self._longest_skip_run.zero_()
        limit = self.config.max_consecutive_skips
        if longest < limit:
            return
        latest = self.checkpoints.paths()
        where = f"the last checkpoint is {latest[-1]}" if latest else "no checkpoint was written"
        raise RunStopped(
            f"{longest} consecutive updates (limit max_consecutive_skips={limit}) had non-finite "
            f"losses, gradients or balancer weights, at step {self.step}; {where}. Lower the "
            f"learning rates or check the rewards, then continue with famo-rl train --resume "
            f"{self.run_dir}"
        )

    def _advance(
        self, obs: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.floating], dict[str, torch.Tensor]]:
        """One step: act, step every task, store the transitions, update the agent.

        Returns the next observations and the last update's metrics (empty when none ran).
        With ``overlap_env_steps`` the learner updates while the environment workers step, so the
        update sees the transitions up to the previous step.
        """
        actions = self._actions(obs)
        metrics: dict[str, torch.Tensor] = {}
        if self.config.overlap_env_steps:
            self.envs.step_async(actions)  # type: ignore[attr-defined]
            if self._ready_to_update(self.step + 1):
                metrics = self._update()
            outcome = self.envs.step_wait()  # type: ignore[attr-defined]
            next_obs = self._store(obs, actions, outcome)
        else:
            next_obs = self._store(obs, actions, self.envs.step(actions))
            if self._ready_to_update(self.step + 1):
                metrics = self._update()
        self.step += 1
        return next_obs, metrics

    def _update(self) -> dict[str, torch.Tensor]:
        """``updates_per_step`` gradient updates on fresh batches; the last one's metrics."""
        metrics: dict[str, torch.Tensor] = {}
        for _ in range(self.config.updates_per_step):
            metrics = self.agent.update(self.buffer.sample(self.rows_per_task))
            self.updates += 1
            self._check_skipped_updates()
        return metrics

    def _ready_to_update(self, step: int) -> bool:
        """Whether ``step`` (counting from 1) updates: past the warm-up, and, after a resume
        without the buffer, once every task has a transition again."""
        return step > self.config.warmup_steps and self.buffer.size_per_task > 0

    def _actions(self, obs: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
        """Uniformly random actions during the warm-up, the policy's samples after it."""
        if self.step < self.config.warmup_steps:
            space = self.envs.single_action_space
            return self.action_rng.uniform(
                space.low, space.high, size=(self.num_tasks, *space.shape)
            ).astype(space.dtype)
        return self.agent.act(obs)

    def _store(
        self,
        obs: npt.NDArray[np.floating],
        actions: npt.NDArray[np.floating],
        outcome: tuple[Any, ...],
    ) -> npt.NDArray[np.floating]:
        """Store one step's transitions and episode statistics; return the next observations."""
        next_obs, reward, terminated, truncated, info = outcome
        done = np.logical_or(terminated, truncated)
        # With same-step autoreset, next_obs already starts the next episode where one ended.
        final_obs = next_obs
        if done.any():
            final_obs = next_obs.copy()
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[i] = info["final_obs"][i]
        state, _ = split_observation(obs, self.num_tasks)
        next_state, _ = split_observation(final_obs, self.num_tasks)
        self.buffer.add(state, actions, reward, next_state, terminated)
        self.tracker.record(reward, step_success(info, done), done)
        return next_obs

    # ----------------------------------------------------------------------------------------------
    # Evaluation, logging and checkpoints.

    def _evaluate(self) -> EvalResult:
        if self.eval_envs is None:
            # The same seed: Meta-World's seed fixes each task's set of goals, which evaluation
            # must share with training; each episode then draws its goal from that set.
            self.eval_envs = build_envs(self.config, self.config.seed)
        result = evaluate(self.agent, self.eval_envs, self.config.eval_episodes)
        self.last_eval = result
        if not self.best_success_rate >= result.mean_success_rate:
            self.best_success_rate = result.mean_success_rate
        step = self.step
        self.writer.add_scalar("eval/success_rate", result.mean_success_rate, step)
        self.writer.add_scalar("eval/best_success_rate", self.best_success_rate, step)
        self.writer.add_scalar("eval/return", result.mean_return, step)
        for name in self.task_names:
            self.writer.add_scalar(f"eval/success_rate/{name}", result.success_rate[name], step)
            self.writer.add_scalar(f"eval/return/{name}", result.mean_returns[name], step)
        self._append_metrics(
            {
                "step": step,
                "eval/success_rate": result.mean_success_rate,
                "eval/best_success_rate": self.best_success_rate,
                "eval/return": result.mean_return,
                "eval/success_rate_per_task": result.success_rate,
            }
        )
        return result

    def _log_training(self, metrics: dict[str, torch.Tensor], steps_per_second: float) -> None:
        step = self.step
        self.writer.add_scalar("time/steps_per_second", steps_per_second, step)
        self.writer.add_scalar("time/updates", self.updates, step)
        self.writer.add_scalar("train/skipped_updates", int(self.agent.skipped_updates), step)
        for key, tensor in metrics.items():
            if key == "skipped":
                continue  # the last update's flag; train/skipped_updates counts them all
            value = tensor.detach().cpu().tolist()  # the one host sync per logging interval
            tag = BALANCER_TAGS.get(key, f"train/{key}")
            if isinstance(value, list) and len(value) == self.num_tasks:
                for name, item in zip(self.task_names, value, strict=True):
                    self.writer.add_scalar(f"{tag}/{name}", item, step)
                if key not in BALANCER_TAGS:
                    self.writer.add_scalar(tag, float(np.mean(value)), step)
            elif isinstance(value, float):
                self.writer.add_scalar(tag, value, step)
        success, returns = self.tracker.success_rate(), self.tracker.mean_return()
        if not np.isnan(success).all():
            self.writer.add_scalar("rollout/success_rate", float(np.nanmean(success)), step)
            self.writer.add_scalar("rollout/episode_return", float(np.nanmean(returns)), step)
        for i, name in enumerate(self.task_names):
            if not np.isnan(success[i]):
                self.writer.add_scalar(f"rollout/success_rate/{name}", success[i], step)
                self.writer.add_scalar(f"rollout/episode_return/{name}", returns[i], step)

    def _postfix(self, steps_per_second: float | None) -> dict[str, str]:
        postfix = {}
        if steps_per_second is not None:
            postfix["sps"] = f"{steps_per_second:.0f}"
        if self.last_eval is not None:
            postfix["eval_success"] = f"{self.last_eval.mean_success_rate:.2f}"
        return postfix

    def _append_metrics(self, record: dict[str, Any]) -> None:
        with (self.run_dir / "metrics.jsonl").open("a") as stream:
            stream.write(json.dumps(record) + "\n")

    def save_checkpoint(self) -> Path:
        """Save everything needed to continue: agent, counters, episode stats, random states,
        and with ``checkpoint_buffer`` the replay buffer (written first, so that a checkpoint
        never names a buffer file that is not there)."""
        buffer_step = None
        if self.config.checkpoint_buffer:
            self.checkpoints.save_extra(
                BUFFER_FILE, {"step": self.step, **self.buffer.state_dict()}
            )
            buffer_step = self.step
        self.last_checkpoint = self.checkpoints.save(
            self.step,
            {
                "format": CHECKPOINT_FORMAT,
                "step": self.step,
                "updates": self.updates,
                "best_success_rate": self.best_success_rate,
                "config": config_to_dict(self.config),
                "task_names": self.task_names,
                "agent": self.agent.state_dict(),
                "tracker": self.tracker.state_dict(),
                "action_rng": self.action_rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "buffer_step": buffer_step,
            },
        )
        return self.last_checkpoint

    def _restore(self) -> None:
        found = self.checkpoints.latest(map_location=self.device)
        if found is None:
            raise FileNotFoundError(f"no readable checkpoint in {self.checkpoints.folder}")
        path, state = found
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"checkpoint {path} has format {state.get('format')!r}; this version of famo-rl "
                f"reads format {CHECKPOINT_FORMAT}"
            )
        if state.get("task_names") != self.task_names:
            raise ValueError(
                f"checkpoint {path} was saved for tasks {state.get('task_names')}, but this "
                f"run has {self.task_names}"
            )
        try:
            self.agent.load_state_dict(state["agent"])
        except ValueError as error:
            raise ValueError(f"checkpoint {path} does not fit this run: {error}") from None
        self._restore_buffer(state.get("buffer_step"))
        self.tracker.load_state_dict(state["tracker"])
        self.action_rng.bit_generator.state = state["action_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step = int(state["step"])
        self.updates = int(state["updates"])
        self.best_success_rate = float(state["best_success_rate"])
        self.last_checkpoint = path

    def _restore_buffer(self, buffer_step: int | None) -> None:
        """Refill the replay buffer from its file when it belongs to the restored checkpoint."""
        if buffer_step is None:
            return
        try:
            saved = self.checkpoints.load_extra(BUFFER_FILE, map_location=self.device)
        except UNREADABLE as error:
            warnings.warn(
                f"replay buffer not restored ({describe_unreadable(error)}); it refills before "
                "updates resume",
                stacklevel=2,
            )
            return
        if saved.get("step") != buffer_step:
            warnings.warn(
                f"replay buffer file is from step {saved.get('step')}, not the checkpoint's "
                f"step {buffer_step}; it is not used and the buffer refills before updates resume",
                stacklevel=2,
            )
            return
        self.buffer.load_state_dict(saved)


class _StopOnSignals:
    """While active, SIGINT and SIGTERM ask the loop to stop (``received`` names the signal)
    instead of killing it; a second signal interrupts at once. Outside the main thread, where
    Python cannot install handlers, it does nothing."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> _StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.received is not None:
            self._restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name} while stopping")
        self.received = signal.Signals(signum).name

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
