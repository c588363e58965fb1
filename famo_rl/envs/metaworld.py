"""Meta-World v3 multitask benchmarks (MT10, MT50, custom task lists) with a fast second start.

Building a benchmark spends most of its time sampling goals: Meta-World resets every task class 50
times to draw its 50 goal vectors (``rand_vec``), about a second per task. Those goal vectors depend
only on the task list, the seed and the library versions, so they are cached on disk after the first
start. The cache holds numbers only (JSON with base64-encoded float64 arrays); the ``Task`` objects
are rebuilt from them exactly as Meta-World encodes its own, and a cold start checks that this
rebuilding reproduces Meta-World's bytes before anything is written. A warm start therefore gives
the same environment as a cold one, without unpickling anything read from disk.

The sub-environments are assembled with Meta-World's own per-environment builder, the function
``gym.make_vec("Meta-World/...")`` calls, because ``gym.make_vec`` cannot take pre-sampled goals.
Nothing in Meta-World is patched, but three private names are used: ``_init_each_env`` (that
builder), ``_MT_OVERRIDE`` and ``_N_GOALS`` (how tasks are encoded). The metaworld version is part
of the cache key, the cold-start byte check guards the encoding, and the tests compare rollouts
with ``gym.make_vec``'s.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
import os
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import metaworld
import metaworld.env_dict as mw_env_dict
import numpy as np
import numpy.typing as npt
from gymnasium.vector import AutoresetMode
from metaworld.types import Task

from famo_rl._atomic import atomic_write

from .crashes import make_crash_reporting_vector_env

#: Meta-World's environments raise past this many steps per episode.
MAX_EPISODE_STEPS = 500
#: Bumped whenever the cache layout or the way tasks are rebuilt changes.
CACHE_FORMAT = 1

_BENCHMARKS: dict[str, dict[str, type]] = {
    "MT10": dict(mw_env_dict.MT10_V3),
    "MT50": dict(mw_env_dict.MT50_V3),
}
_ALL_TASKS: dict[str, type] = dict(mw_env_dict.ALL_V3_ENVIRONMENTS)
#: Every Meta-World v3 task name, e.g. ``reach-v3``.
METAWORLD_TASK_NAMES: tuple[str, ...] = tuple(_ALL_TASKS)


@dataclass(frozen=True)
class _Selection:
    """Which tasks to build: a named benchmark (``MT10``, ``MT50``) or a ``custom`` list."""

    benchmark: str
    task_names: tuple[str, ...]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/famo-rl/metaworld`` (``~/.cache/famo-rl/metaworld`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "famo-rl" / "metaworld"


# Checking the arguments.


def _select(benchmark: str | Sequence[str]) -> _Selection:
    if isinstance(benchmark, str):
        if benchmark in _BENCHMARKS:
            return _Selection(benchmark, tuple(_BENCHMARKS[benchmark]))
        if benchmark in _ALL_TASKS:
            raise ValueError(
                f"benchmark {benchmark!r} is a single task name: pass a list, [{benchmark!r}]"
            )
        raise ValueError(
            f"unknown benchmark {benchmark!r}: expected 'MT10', 'MT50' or a list of Meta-World "
            f"task names{did_you_mean(benchmark, [*_BENCHMARKS, *_ALL_TASKS])}"
        )
    if not isinstance(benchmark, Sequence):
        raise TypeError(
            f"benchmark must be 'MT10', 'MT50' or a list of task names, found {benchmark!r}"
        )
    return _Selection("custom", check_task_names(list(benchmark)))


def check_task_names(task_names: list[Any]) -> tuple[str, ...]:
    """The names, checked to be distinct Meta-World v3 task names (``ValueError`` or ``TypeError``
    naming the first bad one, with the closest names where there are any)."""
    if not task_names:
        raise ValueError("benchmark must name at least one task, found []")
    for task_name in task_names:
        if not isinstance(task_name, str):
            raise TypeError(f"task names must be strings, found {task_name!r} in {task_names!r}")
        if task_name not in _ALL_TASKS:
            raise ValueError(
                f"unknown Meta-World task name {task_name!r}"
                f"{did_you_mean(task_name, list(_ALL_TASKS))}"
            )
    duplicates = sorted({name for name in task_names if task_names.count(name) > 1})
    if duplicates:
        raise ValueError(f"task names must be distinct, found {duplicates} more than once")
    return tuple(task_names)


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    """``"; did you mean 'MT10'?"`` for the candidates closest to ``name``, ignoring case."""
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(by_lower[c]) for c in close)}?" if close else ""


def _check_arguments(
    seed: int,
    num_tasks: int,
    vector_strategy: str,
    max_episode_steps: int,
    reward_function_version: str,
) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, found {seed!r}")
    # Meta-World seeds numpy's legacy generator with seed + task_idx, which must fit in 32 bits.
    if not 0 <= seed <= 2**32 - 1 - num_tasks:
        raise ValueError(f"seed must be in [0, 2**32 - 1 - {num_tasks}], found {seed}")
    if vector_strategy not in ("sync", "async"):
        raise ValueError(f"vector_strategy must be 'sync' or 'async', found {vector_strategy!r}")
    if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int):
        raise TypeError(f"max_episode_steps must be an int, found {max_episode_steps!r}")
    if not 1 <= max_episode_steps <= MAX_EPISODE_STEPS:
        raise ValueError(
            f"max_episode_steps must be in [1, {MAX_EPISODE_STEPS}] (Meta-World's environments "
            f"stop there), found {max_episode_steps}"
        )
    if reward_function_version not in ("v1", "v2"):
        raise ValueError(
            f"reward_function_version must be 'v1' or 'v2', found {reward_function_version!r}"
        )


# Goals: sampled by Meta-World, rebuilt from their numbers.


def _task_seeds(selection: _Selection, seed: int) -> list[int]:
    """The seed of each sub-environment and of its goals, as ``gym.make_vec`` uses them.

    A named benchmark seeds everything with ``seed``; a custom list seeds task ``i`` with
    ``seed + i``. (Meta-World's custom list treats ``seed=0`` as no seed at all, giving random goals
    on every start; we keep ``0 + i`` so that every seed repeats.)
    """
    if selection.benchmark == "custom":
        return [seed + task_idx for task_idx in range(len(selection.task_names))]
    return [seed] * len(selection.task_names)


def _sample_tasks(selection: _Selection, seed: int) -> list[list[Task]]:
    """Meta-World's own goal sampling (slow): ``_N_GOALS`` tasks per task name, in order."""
    if selection.benchmark == "custom":
        seeds = _task_seeds(selection, seed)
        return [
            metaworld.MT1(name, seed=task_seed).train_tasks
            for name, task_seed in zip(selection.task_names, seeds, strict=True)
        ]
    benchmark = getattr(metaworld, selection.benchmark)(seed=seed)
    tasks = benchmark.train_tasks
    return [[task for task in tasks if task.env_name == name] for name in selection.task_names]


def _goal_vectors(tasks: list[Task]) -> npt.NDArray[np.float64]:
    """The goal vectors of one task name's tasks, shape ``(num_goals, rand_vec_dim)``.

    Unpickles task data that Meta-World has just produced in this process, never data from disk.
    """
    return np.stack([np.asarray(pickle.loads(task.data)["rand_vec"]) for task in tasks])


def _encode_tasks(task_name: str, goal_vectors: npt.NDArray[np.float64]) -> list[Task]:
    """Rebuild ``Task`` objects from goal vectors the way ``metaworld._make_tasks`` encodes them.

    Any change in Meta-World's encoding is caught on the cold start (see :func:`_encodes_exactly`),
    which then declines to cache.
    """
    task_kwargs = {
        key: value
        for key, value in mw_env_dict.ML1_ARGS_KWARGS[task_name]["kwargs"].items()
        if key != "task_id"
    }
    tasks = []
    for goal_vector in goal_vectors:
        data = dict(task_kwargs, rand_vec=np.array(goal_vector, dtype=np.float64))
        data.update(env_cls=_ALL_TASKS[task_name])
        data.update(metaworld._MT_OVERRIDE)
        tasks.append(Task(env_name=task_name, data=pickle.dumps(data)))
    return tasks


def _encodes_exactly(task_names: Sequence[str], tasks: list[list[Task]]) -> bool:
    """Whether rebuilding ``tasks`` from their goal vectors gives Meta-World's bytes exactly."""
    for task_name, task_list in zip(task_names, tasks, strict=True):
        goal_vectors = _goal_vectors(task_list)
        if goal_vectors.dtype != np.float64:
            return False
        if _encode_tasks(task_name, goal_vectors) != task_list:
            return False
    return True


# The cache.


def _cache_key(selection: _Selection, seed: int) -> dict[str, Any]:
    """Everything the sampled goals depend on. A file is used only if its key equals this one."""
    return {
        "format": CACHE_FORMAT,
        "benchmark": selection.benchmark,
        "task_names": list(selection.task_names),
        "seed": seed,
        "num_goals": metaworld._N_GOALS,
        "metaworld": version("metaworld"),
        "mujoco": version("mujoco"),
        "numpy": np.__version__,
    }


def _cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    label = key["benchmark"] if key["benchmark"] != "custom" else f"custom{len(key['task_names'])}"
    return cache_dir / f"{label}-seed{key['seed']}-{digest}.json"


def _payload_digest(goals: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(goals, sort_keys=True).encode()).hexdigest()


def _write_cache(path: Path, key: dict[str, Any], tasks: list[list[Task]]) -> None:
    """Write the goal vectors atomically: a temporary file in the same folder, then a rename, so a
    reader never sees half a file and concurrent writers leave one complete file."""
    goals = []
    for task_name, task_list in zip(key["task_names"], tasks, strict=True):
        vectors = _goal_vectors(task_list).astype("<f8")
        goals.append(
            {
                "task_name": task_name,
                "shape": list(vectors.shape),
                "rand_vecs": base64.b64encode(vectors.tobytes()).decode("ascii"),
            }
        )
    document = {"key": key, "goals": goals, "sha256": _payload_digest(goals)}
    atomic_write(path, lambda stream: json.dump(document, stream), binary=False)


def _read_cache(path: Path, key: dict[str, Any]) -> list[list[Task]]:
    """The tasks stored at ``path``, rebuilt from numbers only.

    :raises ValueError: if the file is unreadable, was written for another key, or fails a check.
    """
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"unreadable ({error})") from error
    if not isinstance(document, dict) or document.get("key") != key:
        raise ValueError("written for other settings (seed, tasks or library versions)")
    goals = document.get("goals")
    if not isinstance(goals, list) or document.get("sha256") != _payload_digest(goals):
        raise ValueError("checksum mismatch")
    if [entry.get("task_name") for entry in goals] != key["task_names"]:
        raise ValueError("task names differ from the key")
    return [_decode_goals(entry, key["num_goals"]) for entry in goals]


def _decode_goals(entry: dict[str, Any], num_goals: int) -> list[Task]:
    shape = entry["shape"]
    try:
        vectors = np.frombuffer(base64.b64decode(entry["rand_vecs"], validate=True), dtype="<f8")
        vectors = vectors.reshape(shape).astype(np.float64)
    except (ValueError, TypeError) as error:
        raise ValueError(f"bad goal data for {entry['task_name']!r} ({error})") from error
    if vectors.ndim != 2 or vectors.shape[0] != num_goals or not np.all(np.isfinite(vectors)):
        raise ValueError(f"bad goal data for {entry['task_name']!r}: shape {vectors.shape}")
    if len(np.unique(vectors, axis=0)) != num_goals:
        raise ValueError(f"repeated goals for {entry['task_name']!r}")
    return _encode_tasks(entry["task_name"], vectors)


def _load_tasks(selection: _Selection, seed: int, cache_dir: Path | None) -> list[list[Task]]:
    """Tasks from the cache when a valid file exists, else sampled (and cached if ``cache_dir``)."""
    if cache_dir is None:
        return _sample_tasks(selection, seed)
    key = _cache_key(selection, seed)
    path = _cache_path(cache_dir, key)
    if path.exists():
        try:
            return _read_cache(path, key)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            warnings.warn(
                f"ignoring Meta-World goal cache {path}: {error}; sampling the goals again",
                stacklevel=3,
            )
    tasks = _sample_tasks(selection, seed)
    _try_write_cache(path, key, tasks)
    return tasks


def _try_write_cache(path: Path, key: dict[str, Any], tasks: list[list[Task]]) -> None:
    if not _encodes_exactly(key["task_names"], tasks):
        warnings.warn(
            f"not caching Meta-World goals: metaworld {key['metaworld']} encodes tasks in a way "
            "famo_rl does not reproduce exactly, so every start will sample them",
            stacklevel=4,
        )
        return
    try:
        _write_cache(path, key, tasks)
    except OSError as error:
        warnings.warn(f"could not write Meta-World goal cache {path}: {error}", stacklevel=4)


# Assembling the vector environment.


def _build_vector_env(
    selection: _Selection,
    tasks: list[list[Task]],
    seed: int,
    vector_strategy: Literal["sync", "async"],
    env_options: dict[str, Any],
) -> gym.vector.VectorEnv:
    """One sub-environment per task, with Meta-World's own wrapper stack (``_init_each_env``:
    time limit, terminate-on-success toggle, one-hot id, episode statistics, goal sampling), under
    :class:`~famo_rl.envs.crashes.ReportCrashes`, so that a crash names its task."""
    num_tasks = len(selection.task_names)
    builders = [
        partial(
            metaworld._init_each_env,
            env_cls=_ALL_TASKS[task_name],
            tasks=task_list,
            seed=task_seed,
            env_id=task_idx,
            num_tasks=num_tasks,
            use_one_hot=True,
            **env_options,
        )
        for task_idx, (task_name, task_list, task_seed) in enumerate(
            zip(selection.task_names, tasks, _task_seeds(selection, seed), strict=True)
        )
    ]
    return make_crash_reporting_vector_env(
        builders, selection.task_names, vector_strategy, autoreset_mode=AutoresetMode.SAME_STEP
    )


def make_metaworld_envs(
    benchmark: str | Sequence[str],
    *,
    seed: int,
    vector_strategy: Literal["sync", "async"] = "sync",
    max_episode_steps: int = MAX_EPISODE_STEPS,
    reward_function_version: Literal["v1", "v2"] = "v2",
    terminate_on_success: bool = False,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> gym.vector.VectorEnv:
    """Build a Meta-World multitask vector environment meeting :mod:`famo_rl.envs.base`.

    Equivalent to ``gym.make_vec("Meta-World/MT10" | "Meta-World/MT50" |
    "Meta-World/custom-mt-envs", seed=seed, use_one_hot=True, ...)``, plus ``task_names`` on the
    returned environment (sub-environment ``i`` runs ``task_names[i]``), a disk cache of the
    sampled goals that makes a second start several times faster, and crashes that name their task:
    a sub-environment's error in ``step`` or ``reset``, or a dead ``"async"`` worker, raises
    :class:`~famo_rl.envs.crashes.EnvironmentCrashed` (see :mod:`famo_rl.envs.crashes`).

    :param benchmark: ``"MT10"``, ``"MT50"`` or a list of distinct v3 task names such as
        ``["reach-v3", "push-v3"]``.
    :param seed: fixes the 50 goals of every task and seeds every sub-environment.
        Meta-World ignores ``reset(seed=...)``: only this seed makes runs repeat.
    :param vector_strategy: ``"sync"`` (one process) or ``"async"`` (one process per task).
    :param max_episode_steps: episode length before truncation, at most 500.
    :param reward_function_version: Meta-World's reward functions, ``"v2"`` (default) or ``"v1"``.
    :param terminate_on_success: end episodes at their first success (evaluation does this itself).
    :param cache_dir: folder of the goal cache; ``None`` means :func:`default_cache_dir`.
    :param use_cache: read and write the goal cache; ``False`` samples the goals every time.
    :raises ValueError: for an unknown benchmark or task name, or an argument out of range.
    :raises EnvironmentCrashed: if an ``"async"`` worker fails while starting.

    .. warning::
        For a custom list, task ``i`` uses ``seed + i``, as Meta-World does, except that Meta-World
        leaves a custom list unseeded when ``seed == 0``; here ``seed=0`` is seeded like any other.
    """
    selection = _select(benchmark)
    _check_arguments(
        seed, len(selection.task_names), vector_strategy, max_episode_steps, reward_function_version
    )
    folder = (
        (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if use_cache else None
    )
    tasks = _load_tasks(selection, seed, folder)
    env_options = {
        "max_episode_steps": max_episode_steps,
        "terminate_on_success": bool(terminate_on_success),
        "reward_function_version": reward_function_version,
    }
    # The vector classes are gymnasium's SyncVectorEnv and a subclass of its AsyncVectorEnv, with
    # ``task_names`` as an attribute rather than a wrapper, so that metaworld.evaluation and
    # anything expecting those classes still accept them.
    return _build_vector_env(selection, tasks, seed, vector_strategy, env_options)
