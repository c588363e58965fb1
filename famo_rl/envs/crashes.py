"""Crashed sub-environments, reported with the name of their task.

A multitask vector environment runs one sub-environment per task. When one of them fails, the error
gymnasium gives says nothing about which task it was, and a worker process that dies outright
(killed, out of memory, a segfault in MuJoCo) only shows up as a bare ``EOFError`` or
``BrokenPipeError`` from its pipe. Here every such failure becomes one :class:`EnvironmentCrashed`
naming the task, for both vector strategies:

- each sub-environment is wrapped in :class:`ReportCrashes`, which turns an error in its ``step``
  or ``reset`` into :class:`EnvironmentCrashed` (in this process for ``"sync"``, in the worker for
  ``"async"``, where it travels back as plain strings, so it always pickles);
- :class:`CrashReportingAsyncVectorEnv` names the task of a worker that reported any other error
  or died, and closes itself after a crash without waiting on the broken workers.

It reads two private parts of gymnasium's ``AsyncVectorEnv``: the error queue its workers report
to (``_raise_if_errors``, overridden) and the wait state (``_state``), reset before a forced close.
"""

from __future__ import annotations

import contextlib
import copy
import multiprocessing.connection
import os
import queue
import signal
import typing
import warnings
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Literal

import gymnasium as gym
from gymnasium.vector import AutoresetMode
from gymnasium.vector.async_vector_env import AsyncState, _async_worker

#: Seconds to wait for a worker whose pipe broke to be seen dead, and for a reported error to
#: arrive on gymnasium's error queue (it is put there just before the worker answers).
WORKER_REPORT_TIMEOUT_S = 5.0
#: Seconds a crashed environment's workers get to stop after ``terminate`` before being killed.
WORKER_STOP_TIMEOUT_S = 2.0

Phase = Literal["start", "reset", "step", "call", "set_attr"]
#: How far :meth:`CrashReportingAsyncVectorEnv.set_worker_priority` lowers the workers' priority.
WorkerPriority = Literal["idle", "low", "normal"]
WORKER_PRIORITIES: tuple[WorkerPriority, ...] = typing.get_args(WorkerPriority)


def _set_idle_policy(pid: int) -> bool:
    """Put process ``pid`` under ``SCHED_IDLE``; False where the system refuses it."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except PermissionError:
        return False
    return True


class EnvironmentCrashed(RuntimeError):
    """The sub-environment running one task failed; the vector environment is no longer usable.

    ``str(error)`` is one line, e.g. ``environment for task 'reach-v3' (index 0) crashed during
    step: ValueError: ...`` or ``... crashed during step: worker process died (exit code -9,
    SIGKILL)``. Close the vector environment after catching it: ``close()`` does not wait on the
    crashed worker.

    :param task_name: the task of the sub-environment that failed, e.g. ``reach-v3``.
    :param task_idx: its position in the benchmark (``task_names[task_idx] == task_name``).
    :param phase: what the vector environment was doing: ``"start"``, ``"reset"``, ``"step"``,
        ``"call"`` (also ``get_attr``) or ``"set_attr"``. A reset by autoreset inside ``step`` is
        ``"reset"``.
    :param reason: the original error as ``"<type>: <message>"``, or how the worker died.
    :param exit_code: the worker's exit code when it died (negative: killed by that signal),
        else ``None``.
    :param worker_traceback: the traceback formatted in the worker process, for ``"async"``
        (in ``"sync"`` the original error is the ``__cause__``).
    """

    def __init__(
        self,
        task_name: str,
        task_idx: int,
        phase: str,
        reason: str,
        exit_code: int | None = None,
        worker_traceback: str | None = None,
    ) -> None:
        super().__init__(
            f"environment for task {task_name!r} (index {task_idx}) crashed during {phase}: "
            f"{reason}"
        )
        self.task_name = task_name
        self.task_idx = task_idx
        self.phase = phase
        self.reason = reason
        self.exit_code = exit_code
        self.worker_traceback = worker_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle their message alone by default; a worker sends this one to the main
        # process, so it must come back with every field.
        fields = (self.task_name, self.task_idx, self.phase, self.reason, self.exit_code)
        return type(self), (*fields, self.worker_traceback)


def describe_error(error: BaseException) -> str:
    """``"<type>: <message>"`` on one line."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def describe_exit(exit_code: int | None) -> str:
    """How a worker process ended, e.g. ``worker process died (exit code -9, SIGKILL)``."""
    if exit_code is None:
        return "worker process died (exit code unknown)"
    if exit_code < 0:
        try:
            return f"worker process died (exit code {exit_code}, {signal.Signals(-exit_code).name})"
        except ValueError:
            pass
    return f"worker process died (exit code {exit_code})"


class ReportCrashes(gym.Wrapper):
    """Raise :class:`EnvironmentCrashed` naming the task when the wrapped environment's ``step``
    or ``reset`` fails (any ``Exception``; ``KeyboardInterrupt`` passes unchanged).

    The only cost on the step path is a ``try`` block.

    :param env: one task's environment.
    :param task_name: its task, e.g. ``reach-v3``.
    :param task_idx: its position in the benchmark.
    """

    def __init__(self, env: gym.Env, task_name: str, task_idx: int) -> None:
        super().__init__(env)
        # Private names, so that ``get_attr("task_name")`` still finds Meta-World's own.
        self._task_name = task_name
        self._task_idx = task_idx
        self._crashed = False

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        try:
            return self.env.step(action)
        except Exception as error:
            raise self._crash("step", error) from error

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        try:
            return self.env.reset(seed=seed, options=options)
        except Exception as error:
            raise self._crash("reset", error) from error

    def close(self) -> None:
        """Close the environment; after a crash, a failure to close is a warning, not an error."""
        if not self._crashed:
            self.env.close()
            return
        try:
            self.env.close()
        except Exception as error:
            warnings.warn(
                f"could not close the crashed environment for task {self._task_name!r}: "
                f"{describe_error(error)}",
                stacklevel=2,
            )

    def _crash(self, phase: Phase, error: Exception) -> EnvironmentCrashed:
        self._crashed = True
        if isinstance(error, EnvironmentCrashed):
            return error
        return EnvironmentCrashed(self._task_name, self._task_idx, phase, describe_error(error))


def _build_reporting_crashes(
    build: Callable[[], gym.Env], task_name: str, task_idx: int
) -> gym.Env:
    # An async worker builds its environment outside gymnasium's error reporting, so a failure
    # here ends the worker; the main process then reports its exit code, and the traceback is on
    # the worker's stderr.
    try:
        env = build()
    except Exception as error:
        raise EnvironmentCrashed(task_name, task_idx, "start", describe_error(error)) from error
    return ReportCrashes(env, task_name, task_idx)


def _worker_deaf_to_interrupts(*args: Any) -> None:
    """gymnasium's worker loop, ignoring SIGINT.

    Ctrl-C in a terminal reaches every process of the group; the main process decides how to stop
    (the trainer saves a checkpoint first), and a worker killed by it would look like a crash.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _async_worker(*args)


class CrashReportingAsyncVectorEnv(gym.vector.AsyncVectorEnv):
    """gymnasium's ``AsyncVectorEnv``, whose failures raise :class:`EnvironmentCrashed`.

    A worker that reports an error, or whose process dies (its pipe breaks), raises
    :class:`EnvironmentCrashed` for that worker's task, with the worker's exit code when it died.
    After a crash every call raises the same error again, and ``close()`` terminates the workers
    instead of waiting on them, so it neither hangs nor raises.

    :param env_fns: one builder per task, in task order.
    :param task_names: the task of each builder; set as :attr:`task_names`.
    :param autoreset_mode: gymnasium's autoreset mode (same step, as :mod:`famo_rl.envs.base` says).
    :param context: the multiprocessing start method; ``None`` for Python's default.
    :raises ValueError: if there are not as many task names as builders.

    .. warning::
        Overrides gymnasium's private ``_raise_if_errors``: a worker's error no longer goes to
        gymnasium's logger; its traceback is in :attr:`EnvironmentCrashed.worker_traceback`.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        task_names: Sequence[str],
        *,
        autoreset_mode: AutoresetMode = AutoresetMode.SAME_STEP,
        context: str | None = None,
    ) -> None:
        if len(task_names) != len(env_fns):
            raise ValueError(
                f"task_names must name every one of the {len(env_fns)} builders, found "
                f"{len(task_names)} names: {list(task_names)}"
            )
        self.task_names = list(task_names)
        self._phase: Phase = "start"
        self._crash: EnvironmentCrashed | None = None
        self._broken = False
        self._guard(
            "start",
            super().__init__,
            env_fns,
            context=context,
            autoreset_mode=autoreset_mode,
            worker=_worker_deaf_to_interrupts,
        )

    def set_worker_priority(self, priority: WorkerPriority) -> None:
        """Lower every worker's scheduling priority, so that the workers yield the learner's core.

        For a learner that updates while the workers step: on a machine with few cores the
        scheduler otherwise hands the learner's core to workers that wake up, so that the update
        slows down by about the environments' own time and overlapping gains little.

        - ``"idle"``: Linux's ``SCHED_IDLE`` policy; a worker runs only on a core that nothing
          else wants, and a waking worker never preempts the learner. Where the platform has no
          such policy or refuses it (some sandboxes), ``"low"``.
        - ``"low"``: the highest nice value, 19 (Unix); a worker still takes a small share of a
          busy core.
        - ``"normal"``: the workers keep the learner's priority.

        .. warning::
            The workers also yield to other programs on a busy machine, so their steps may then
            take longer (with ``"idle"``, as long as those programs keep every core busy).

        :param priority: ``"idle"``, ``"low"`` or ``"normal"``.
        """
        if priority not in WORKER_PRIORITIES:
            raise ValueError(f"priority must be one of {WORKER_PRIORITIES}, found {priority!r}")
        if priority == "idle" and not hasattr(os, "SCHED_IDLE"):
            priority = "low"
        if priority == "normal" or not hasattr(os, "setpriority"):
            return
        for process in self.processes:
            # A worker that has already died is reported by the next exchange with it.
            with contextlib.suppress(ProcessLookupError):
                if not (priority == "idle" and _set_idle_policy(process.pid)):
                    os.setpriority(os.PRIO_PROCESS, process.pid, 19)

    # Every exchange with the workers goes through _guard; get_attr goes through call.

    def reset_async(self, seed: Any = None, options: dict[str, Any] | None = None) -> None:
        self._guard("reset", super().reset_async, seed=seed, options=options)

    def reset_wait(self, timeout: float | None = None) -> Any:
        return self._guard("reset", super().reset_wait, timeout)

    def step_async(self, actions: Any) -> None:
        self._guard("step", super().step_async, actions)

    def step_wait(self, timeout: float | None = None) -> Any:
        return self._guard("step", super().step_wait, timeout)

    def call_async(self, name: str, /, *args: Any, **kwargs: Any) -> None:
        self._guard("call", super().call_async, name, *args, **kwargs)

    def call_wait(self, timeout: float | None = None) -> tuple[Any, ...]:
        return self._guard("call", super().call_wait, timeout)

    def set_attr(self, name: str, values: Any) -> None:
        self._guard("set_attr", super().set_attr, name, values)

    def close_extras(self, timeout: float | None = None, terminate: bool = False) -> None:
        """Close the workers; after a crash (or a broken pipe), terminate them instead."""
        if not (self._broken or terminate):
            try:
                super().close_extras(timeout=timeout)
                return
            except (EnvironmentCrashed, EOFError, ConnectionError):
                pass  # a worker failed while closing: stop the others below
        # gymnasium would first wait for the pending call's answers, which may never come.
        self._state = AsyncState.DEFAULT
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(WORKER_STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
        for index, pipe in enumerate(self.parent_pipes):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
                self.parent_pipes[index] = None
        super().close_extras(terminate=True)

    def _guard(self, phase: Phase, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # The crash is kept and raised as copies, without tracebacks: a raised exception's traceback
        # holds this object, and such a cycle would leave closing to the garbage collector.
        if self._crash is not None:
            raise copy.copy(self._crash)
        self._phase = phase
        try:
            return method(*args, **kwargs)
        except EnvironmentCrashed as crash:
            self._broken = True
            self._crash = copy.copy(crash)
            raise
        except (EOFError, ConnectionError) as error:
            self._broken = True
            crash = self._find_dead_worker(phase)
            if crash is None:
                raise
            self._crash = copy.copy(crash)
            raise crash from error

    def _find_dead_worker(self, phase: Phase) -> EnvironmentCrashed | None:
        """The crash of the first worker that has died, waiting a little for it to be seen dead
        (its pipe closes just before its exit is reported); ``None`` if all of them live on."""
        processes = getattr(self, "processes", [])
        by_sentinel = {process.sentinel: task_idx for task_idx, process in enumerate(processes)}
        ended = multiprocessing.connection.wait(list(by_sentinel), WORKER_REPORT_TIMEOUT_S)
        if not ended:
            return None
        task_idx = min(by_sentinel[sentinel] for sentinel in ended)
        process = processes[task_idx]
        process.join(WORKER_REPORT_TIMEOUT_S)
        return EnvironmentCrashed(
            self.task_names[task_idx],
            task_idx,
            phase,
            describe_exit(process.exitcode),
            exit_code=process.exitcode,
        )

    def _raise_if_errors(self, successes: Iterable[bool]) -> None:
        """Raise :class:`EnvironmentCrashed` for the first worker that reported an error.

        Those workers have stopped (gymnasium's worker leaves its loop after an error), so their
        pipes are closed here as gymnasium does.
        """
        failed = [index for index, success in enumerate(successes) if not success]
        if not failed:
            return
        reports = {}
        for _ in failed:
            try:
                index, error_type, error, trace = self.error_queue.get(
                    timeout=WORKER_REPORT_TIMEOUT_S
                )
            except queue.Empty:
                break  # the report could not be sent (e.g. an error that does not pickle)
            reports[index] = (error_type, error, trace)
        for index in failed:
            pipe = self.parent_pipes[index]
            if pipe is not None:
                pipe.close()
                self.parent_pipes[index] = None
        self._state = AsyncState.DEFAULT

        task_idx = min(reports) if reports else failed[0]
        error_type, error, trace = reports.get(task_idx, (None, None, None))
        if error_type is not None and issubclass(error_type, KeyboardInterrupt):
            raise KeyboardInterrupt
        if isinstance(error, EnvironmentCrashed):
            error.worker_traceback = trace
            raise error
        reason = (
            describe_error(error)
            if isinstance(error, BaseException)
            else "the worker reported an error that could not be sent back"
        )
        raise EnvironmentCrashed(
            self.task_names[task_idx], task_idx, self._phase, reason, worker_traceback=trace
        )


def make_crash_reporting_vector_env(
    builders: Sequence[Callable[[], gym.Env]],
    task_names: Sequence[str],
    vector_strategy: Literal["sync", "async"],
    autoreset_mode: AutoresetMode = AutoresetMode.SAME_STEP,
) -> gym.vector.VectorEnv:
    """A vector environment of one sub-environment per task whose crashes name their task.

    :param builders: one builder per task, in task order (picklable for ``"async"``).
    :param task_names: the task of each builder; set as ``task_names`` on the result.
    :param vector_strategy: ``"sync"`` (a ``SyncVectorEnv``) or ``"async"``
        (a :class:`CrashReportingAsyncVectorEnv`, one process per task).
    :param autoreset_mode: gymnasium's autoreset mode.
    :raises ValueError: for an unknown ``vector_strategy`` or a count of task names that differs
        from the count of builders.
    """
    if len(task_names) != len(builders):
        raise ValueError(
            f"task_names must name every one of the {len(builders)} builders, found "
            f"{len(task_names)} names: {list(task_names)}"
        )
    wrapped = [
        partial(_build_reporting_crashes, build, task_name, task_idx)
        for task_idx, (build, task_name) in enumerate(zip(builders, task_names, strict=True))
    ]
    if vector_strategy == "sync":
        envs: gym.vector.VectorEnv = gym.vector.SyncVectorEnv(
            wrapped, autoreset_mode=autoreset_mode
        )
    elif vector_strategy == "async":
        envs = CrashReportingAsyncVectorEnv(wrapped, task_names, autoreset_mode=autoreset_mode)
    else:
        raise ValueError(f"vector_strategy must be 'sync' or 'async', found {vector_strategy!r}")
    envs.task_names = list(task_names)  # type: ignore[attr-defined]
    return envs
