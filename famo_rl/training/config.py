"""Typed training configuration, loaded from YAML with ``key=value`` overrides.

Every field is documented on its dataclass; pydantic validates types and ranges so that a typo
becomes a one-line :class:`ConfigError` naming the key and the value found, before anything is
written.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from famo_rl.agents.sac import SACConfig
from famo_rl.balancers import make_balancer
from famo_rl.envs.crashes import WorkerPriority
from famo_rl.envs.factory import DEFAULT_SYNTHETIC_TASKS
from famo_rl.envs.metaworld import METAWORLD_TASK_NAMES, check_task_names, did_you_mean

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
#: Meta-World's own limit on an episode's length.
METAWORLD_MAX_EPISODE_STEPS = 500
#: Tasks of each named Meta-World benchmark.
METAWORLD_BENCHMARKS = {"MT10": 10, "MT50": 50}
#: The default of ``batch_size_per_task`` (the paper's 128).
DEFAULT_BATCH_SIZE_PER_TASK = 128
# numpy's legacy seeding, which the trainer uses, takes seeds below 2**32.
_SEED_LIMIT = 2**32
_SYNTHETIC = re.compile(r"synthetic(?:-(\d+))?")
_ENV_NAMES = ["synthetic", "synthetic-<K>", *METAWORLD_BENCHMARKS]


class ConfigError(ValueError):
    """A configuration problem, described in one line for the user."""


@dataclasses.dataclass
class EnvConfig:
    """Which tasks to train on."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    #: ``"MT10"``, ``"MT50"``, ``"synthetic"``, or a list of Meta-World task names.
    name: str | list[str] = "MT10"
    #: Number of tasks of the synthetic suite (ignored by Meta-World, whose benchmark fixes it).
    num_tasks: PositiveInt | None = None
    #: Per-task reward scales of the synthetic suite; ``None`` spreads them over 1e-2 .. 1e2.
    reward_scales: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = None
    #: Episode length; ``None`` keeps the benchmark's own (500 for Meta-World, 50 synthetic).
    max_episode_steps: PositiveInt | None = None
    #: Meta-World reward function version.
    reward_function_version: Literal["v1", "v2"] = "v2"
    #: Step the sub-environments in this process (``sync``) or in worker processes (``async``).
    vector_strategy: Literal["sync", "async"] = "sync"
    #: Reuse the sampled Meta-World goals from the on-disk cache (identical environments).
    use_cache: bool = True

    @property
    def is_metaworld(self) -> bool:
        return not (isinstance(self.name, str) and self.name.startswith("synthetic"))

    def count_tasks(self) -> int:
        """The number of tasks of this environment, from the config alone (nothing is built).

        :raises ConfigError: for an unknown environment or task name.
        """
        if not isinstance(self.name, str):
            _check_task_names(self.name)
            return len(self.name)
        match = _SYNTHETIC.fullmatch(self.name)
        if match and match.group(1) is not None:
            return int(match.group(1))
        if match:
            return DEFAULT_SYNTHETIC_TASKS if self.num_tasks is None else self.num_tasks
        if self.name in METAWORLD_BENCHMARKS:
            return METAWORLD_BENCHMARKS[self.name]
        if self.name in METAWORLD_TASK_NAMES:
            raise ConfigError(
                f"config key 'env.name': {self.name!r} is a single Meta-World task; give a list, "
                f"[{self.name!r}]"
            )
        hint = did_you_mean(self.name, [*_ENV_NAMES, *METAWORLD_TASK_NAMES])
        raise ConfigError(
            f"config key 'env.name': unknown environment {self.name!r}, expected one of "
            f"{', '.join(_ENV_NAMES)} or a list of Meta-World task names{hint}"
        )


@dataclasses.dataclass
class TrainConfig:
    """A training run. Steps count vector-environment steps: each advances every task once."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    agent: SACConfig = dataclasses.field(default_factory=SACConfig)
    #: Seeds the environments, the networks, the replay sampling and the warm-up actions.
    seed: Annotated[int, Field(ge=0, lt=_SEED_LIMIT)] = 0
    #: Learner device; ``auto`` takes CUDA when available.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Length of the run in vector-environment steps (the paper: 2M on MT10).
    total_steps: PositiveInt = 2_000_000
    #: Steps of uniformly random actions before learning starts (the paper: 1500).
    warmup_steps: NonNegativeInt = 1500
    #: Gradient updates per vector-environment step.
    updates_per_step: PositiveInt = 1
    #: Replay samples per task in each batch (the paper: 128, a batch of 1280 on MT10).
    batch_size_per_task: PositiveInt = DEFAULT_BATCH_SIZE_PER_TASK
    #: Replay samples in each batch over all tasks, split evenly between them (the paper: 1280 on
    #: MT10), instead of ``batch_size_per_task``, which must then keep its default. It must be a
    #: multiple of the number of tasks. ``None`` uses ``batch_size_per_task``.
    batch_size: PositiveInt | None = None
    #: Replay capacity in transitions over all tasks (the paper: 1M).
    buffer_capacity: PositiveInt = 1_000_000
    #: Evaluate every this many steps (the paper: 10k).
    eval_every: PositiveInt = 10_000
    #: Evaluation episodes per task, following Meta-World's protocol.
    eval_episodes: PositiveInt = 10
    #: Write training scalars every this many steps.
    log_every: PositiveInt = 1000
    #: Save a checkpoint every this many steps (and at the end).
    checkpoint_every: PositiveInt = 50_000
    #: Number of most recent checkpoints kept on disk.
    keep_checkpoints: PositiveInt = 3
    #: Also save the replay buffer (one file, ``checkpoints/buffer.pt``, rewritten with each
    #: checkpoint), so that a resumed run continues with its data instead of refilling. Its size is
    #: about ``4 * (2 * obs_dim + action_dim + 2)`` bytes per stored transition: 333 MB for MT10's
    #: full 1M transitions (about 2 s to write on 2 CPU cores), on disk and, while it is written,
    #: once more in memory.
    checkpoint_buffer: bool = False
    #: Update the agent while the environments step (needs ``env.vector_strategy: async``): a step
    #: then costs the longer of the two instead of their sum, and each update sees the
    #: transitions up to the previous step instead of the current one.
    overlap_env_steps: bool = False
    #: With ``overlap_env_steps``: the environment workers' scheduling priority, so that they step
    #: on idle cores and yield the learner's core to it. ``idle`` (Linux's ``SCHED_IDLE``; ``low``
    #: elsewhere): a worker runs only on a core nothing else wants; ``low``: nice 19; ``normal``:
    #: unchanged. On 2 cores the overlapped loop ran at 1.36x Stable-Baselines3's speed with
    #: ``idle``, 1.21x with ``low`` and 1.17x with ``normal`` (``benchmarks/``); on a machine whose
    #: cores other programs keep busy, the workers yield to those too.
    overlap_worker_priority: WorkerPriority = "idle"
    #: Stop the run after this many consecutive updates were skipped for non-finite losses,
    #: gradients or balancer weights (each skip is counted in ``train/skipped_updates``).
    max_consecutive_skips: PositiveInt = 100
    #: Run directory; ``None`` makes ``runs/<config name>-seed<seed>-<time>``.
    run_dir: str | None = None
    #: Show a progress bar.
    progress: bool = True
    #: torch's CPU threads; ``None`` keeps torch's default. On small, busy machines 1 is often
    #: fastest (two threads contending with the environments can be many times slower).
    num_threads: PositiveInt | None = None

    def rows_per_task(self, num_tasks: int | None = None) -> int:
        """Replay samples of each task in a batch: ``batch_size // num_tasks`` or the per-task size.

        :param num_tasks: tasks of the environment; ``None`` counts them from ``env``.
        :raises ConfigError: if ``batch_size`` is below the number of tasks or not a multiple of
            it, or if ``batch_size_per_task`` was changed as well.
        """
        if self.batch_size is None:
            return self.batch_size_per_task
        if num_tasks is None:
            num_tasks = self.env.count_tasks()
        if self.batch_size_per_task != DEFAULT_BATCH_SIZE_PER_TASK:
            raise ConfigError(
                f"config keys 'batch_size' and 'batch_size_per_task' exclude each other; give one, "
                f"found batch_size={self.batch_size} and "
                f"batch_size_per_task={self.batch_size_per_task}"
            )
        if self.batch_size < num_tasks or self.batch_size % num_tasks:
            raise ConfigError(
                f"config key 'batch_size' must be a positive multiple of the number of tasks "
                f"({num_tasks} on {self.env.name!r}), found {self.batch_size}"
            )
        return self.batch_size // num_tasks


_ADAPTER = TypeAdapter(TrainConfig)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config, apply ``key=value`` overrides (dotted keys, YAML values), validate.

    :raises ConfigError: with a one-line message naming the key and the value found.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ConfigError(f"cannot read config {str(path)!r}: {error.strerror}") from error
    except yaml.YAMLError as error:
        problem = _yaml_problem(error)
        raise ConfigError(f"config {str(path)!r} is not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config {str(path)!r} must be a mapping of keys to values, found {type(data).__name__}"
        )
    for override in overrides:
        _apply_override(data, override)
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a plain mapping into a :class:`TrainConfig`."""
    try:
        config = _ADAPTER.validate_python(data)
    except ValidationError as error:
        # A value that fits no member of a union fails once per member; the deepest failure is
        # the most precise (the bad element of a list rather than "not a string").
        deepest = max(error.errors(), key=lambda details: len(details["loc"]))
        raise ConfigError(_describe(deepest)) from None
    _check_consistency(config)
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain data (lists, not tuples) for YAML and checkpoints."""
    return _ADAPTER.dump_python(config, mode="json")


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {override!r} must look like key=value, e.g. seed=3")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = data
    schema: Any = TrainConfig
    for depth, part in enumerate(parts[:-1]):
        schema = _field_type(schema, part)
        child = node.setdefault(part, {})
        if not isinstance(child, dict) or not _is_section(schema):
            section = ".".join(parts[: depth + 1])
            raise ConfigError(f"override {override!r}: {section!r} is not a section of the config")
        node = child
    node[parts[-1]] = value


def _field_type(schema: Any, name: str) -> Any:
    """The type of field ``name`` of the dataclass ``schema``; ``None`` where it is not known."""
    if not dataclasses.is_dataclass(schema):
        return None
    return _type_hints(schema).get(name)


@functools.cache
def _type_hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _is_section(schema: Any) -> bool:
    # Unknown keys pass here and are reported, with a suggestion, by validation.
    return schema is None or dataclasses.is_dataclass(schema) or typing.get_origin(schema) is dict


def _describe(error: Any) -> str:
    location = _key_path(error["loc"])
    key = ".".join(location)
    if error["type"] == "unexpected_keyword_argument":
        return f"unknown config key {key!r}{_suggestion(location)}"
    if error["type"] == "value_error":
        # Raised by a section's own checks, whose message starts with the field's name.
        message = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
        field = re.match(r"\w+", message)
        if field and _field_type(_section_type(location), field.group()) is not None:
            return f"config key {key}.{message}"
        return f"config section {key!r}: {message}"
    found = error.get("input")
    message = error["msg"][0].lower() + error["msg"][1:]
    return f"config key {key!r}: {message}, found {found!r}"


def _key_path(loc: Sequence[int | str]) -> list[str]:
    """A validation error's location as config keys: field names and list positions.

    Pydantic also names the member of a union it tried (``env.name.str``); those are dropped.
    """
    path: list[str] = []
    schema: Any = TrainConfig
    for part in loc:
        if dataclasses.is_dataclass(schema):
            path.append(str(part))
            schema = _field_type(schema, str(part))
        elif isinstance(part, int):
            path.append(str(part))
    return path


def _section_type(location: list[str]) -> Any:
    schema: Any = TrainConfig
    for part in location:
        schema = _field_type(schema, part)
    return schema


def _suggestion(location: list[str]) -> str:
    section = _section_type(location[:-1])
    if not dataclasses.is_dataclass(section):
        return ""
    names = [field.name for field in dataclasses.fields(section)]
    close = difflib.get_close_matches(location[-1], names, n=1)
    return f" (did you mean {'.'.join([*location[:-1], close[0]])!r}?)" if close else ""


def _check_consistency(config: TrainConfig) -> None:
    num_tasks = _check_env(config.env)
    if config.env.is_metaworld and config.seed > _SEED_LIMIT - 1 - num_tasks:
        # Meta-World seeds task i's goals with seed + i, which must stay below 2**32.
        raise ConfigError(
            f"config key 'seed' must be at most 2**32 - 1 - {num_tasks} for {num_tasks} "
            f"Meta-World tasks, found {config.seed}"
        )
    config.rows_per_task(num_tasks)
    if config.overlap_env_steps and not config.env.is_metaworld:
        raise ConfigError(
            "config key 'overlap_env_steps' applies to Meta-World, whose environments can step in "
            f"worker processes; the synthetic suite steps in this process, found env.name "
            f"{config.env.name!r}"
        )
    if config.overlap_env_steps and config.env.vector_strategy != "async":
        raise ConfigError(
            "config key 'overlap_env_steps' needs env.vector_strategy 'async' (environments in "
            f"worker processes), found env.vector_strategy {config.env.vector_strategy!r}"
        )
    if config.buffer_capacity < num_tasks:
        raise ConfigError(
            f"config key 'buffer_capacity' must hold at least one transition of each of the "
            f"{num_tasks} tasks, found {config.buffer_capacity}"
        )
    _check_balancers(config.agent, num_tasks)


def _check_env(env: EnvConfig) -> int:
    """Check the environment's names and options; return its number of tasks."""
    num_tasks = env.count_tasks()
    if num_tasks < 1:
        raise ConfigError(f"config key 'env.name' must give at least one task, found {env.name!r}")
    if not env.is_metaworld and env.num_tasks not in (None, num_tasks):
        raise ConfigError(
            f"config key 'env.num_tasks' contradicts 'env.name' {env.name!r} ({num_tasks} tasks), "
            f"found {env.num_tasks}"
        )
    scales = env.reward_scales
    if not env.is_metaworld and scales is not None and len(scales) != num_tasks:
        raise ConfigError(
            f"config key 'env.reward_scales' needs one scale per task ({num_tasks}), found "
            f"{len(scales)}: {scales}"
        )
    if env.is_metaworld and (env.max_episode_steps or 0) > METAWORLD_MAX_EPISODE_STEPS:
        raise ConfigError(
            f"config key 'env.max_episode_steps': Meta-World episodes are at most "
            f"{METAWORLD_MAX_EPISODE_STEPS} steps, found {env.max_episode_steps}"
        )
    if env.is_metaworld and env.reward_scales is not None:
        raise ConfigError(
            f"config key 'env.reward_scales' applies to the synthetic suite only, not "
            f"{env.name!r}; found {env.reward_scales}"
        )
    if env.is_metaworld and env.num_tasks is not None:
        raise ConfigError(
            f"config key 'env.num_tasks' applies to the synthetic suite only; {env.name!r} fixes "
            f"its own tasks, found {env.num_tasks}"
        )
    return num_tasks


def _check_task_names(task_names: list[str]) -> None:
    try:
        check_task_names(task_names)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config key 'env.name': {error}") from None


def _check_balancers(agent: SACConfig, num_tasks: int) -> None:
    """Build each balancer once, so that a bad option value is reported before the run starts."""
    for role in ("critic", "actor", "alpha"):
        options = getattr(agent, f"{role}_balancer_options")
        try:
            make_balancer(getattr(agent, f"{role}_balancer"), num_tasks, **options)
        except (ValueError, TypeError, ImportError) as error:
            raise ConfigError(
                f"config key agent.{role}_balancer_options = {options}: {_one_line(error)}"
            ) from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is None or problem is None:
        return _one_line(error)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
