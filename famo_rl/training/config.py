"""Typed training configuration, loaded from YAML with ``key=value`` overrides.

Every field is documented on its dataclass; pydantic validates types and ranges so that a typo
becomes a one-line :class:`ConfigError` naming the key and the value found, before anything is
written.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from famo_rl.agents.sac import SACConfig

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
#: Meta-World's own limit on an episode's length.
METAWORLD_MAX_EPISODE_STEPS = 500


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
    reward_scales: list[Annotated[float, Field(gt=0)]] | None = None
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


@dataclasses.dataclass
class TrainConfig:
    """A training run. Steps count vector-environment steps: each advances every task once."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    agent: SACConfig = dataclasses.field(default_factory=SACConfig)
    #: Seeds the environments, the networks, the replay sampling and the warm-up actions.
    seed: NonNegativeInt = 0
    #: Learner device; ``auto`` takes CUDA when available.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Length of the run in vector-environment steps (the paper: 2M on MT10).
    total_steps: PositiveInt = 2_000_000
    #: Steps of uniformly random actions before learning starts (the paper: 1500).
    warmup_steps: NonNegativeInt = 1500
    #: Gradient updates per vector-environment step.
    updates_per_step: PositiveInt = 1
    #: Replay samples per task in each batch (the paper: 128, a batch of 1280 on MT10).
    batch_size_per_task: PositiveInt = 128
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
    #: Run directory; ``None`` makes ``runs/<config name>-seed<seed>-<time>``.
    run_dir: str | None = None
    #: Show a progress bar.
    progress: bool = True
    #: torch's CPU threads; ``None`` keeps torch's default. On small, busy machines 1 is often
    #: fastest (two threads contending with the environments can be many times slower).
    num_threads: PositiveInt | None = None


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
        raise ConfigError(f"config {str(path)!r} is not valid YAML: {_one_line(error)}") from error
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
        raise ConfigError(_describe(error.errors()[0], data)) from None
    _check_consistency(config)
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain data (lists, not tuples) for YAML and checkpoints."""
    return _ADAPTER.dump_python(config, mode="json")


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like key=value, e.g. seed=3")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section of the config")
        node = child
    node[parts[-1]] = value


def _describe(error: Any, data: dict[str, Any]) -> str:
    location = [str(part) for part in error["loc"]]
    key = ".".join(location)
    if error["type"] == "unexpected_keyword_argument":
        return f"unknown config key {key!r}{_suggestion(location)}"
    if error["type"] == "value_error":
        # Raised by a section's own checks, whose message already names the field and value.
        message = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
        return f"config section {key!r}: {message}"
    found = error.get("input")
    message = error["msg"][0].lower() + error["msg"][1:]
    return f"config key {key!r}: {message}, found {found!r}"


def _suggestion(location: list[str]) -> str:
    section: Any = TrainConfig
    for part in location[:-1]:
        fields = {f.name: f for f in dataclasses.fields(section)}
        if part not in fields:
            return ""
        section = _dataclass_type(fields[part])
    if section is None:
        return ""
    names = [f.name for f in dataclasses.fields(section)]
    close = difflib.get_close_matches(location[-1], names, n=1)
    return f" (did you mean {'.'.join([*location[:-1], close[0]])!r}?)" if close else ""


def _dataclass_type(field: dataclasses.Field) -> type | None:
    factory = field.default_factory
    if factory is dataclasses.MISSING:
        return None
    return factory if dataclasses.is_dataclass(factory) else None  # type: ignore[return-value]


def _check_consistency(config: TrainConfig) -> None:
    env = config.env
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


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
