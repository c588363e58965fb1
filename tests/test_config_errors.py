"""Bad configs and command lines: one line naming the key and the value, exit status 2, no
traceback, and nothing written (no run directory, no cache, no files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from famo_rl.cli import main
from famo_rl.training.config import ConfigError, config_from_dict, config_to_dict

BASE = {
    "env": {"name": "synthetic", "num_tasks": 3, "max_episode_steps": 20},
    "agent": {"hidden_sizes": [16, 16]},
    "total_steps": 40,
    "warmup_steps": 20,
    "buffer_capacity": 300,
    "eval_every": 40,
    "eval_episodes": 1,
    "progress": False,
    "num_threads": 1,
}
# Meta-World configs are only validated here, never built (building MT10 takes seconds).
MT10 = ["env.name=MT10", "env.num_tasks=null"]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, also the cache home: any file a command writes lands here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "not_a_run").mkdir()
    return tmp_path


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def assert_usage_error(folder: Path, capsys: pytest.CaptureFixture, argv: list[str], expected):
    before = files_under(folder)
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    command = argv[0]
    assert lines[0].startswith(f"famo-rl {command}: error: "), lines[0]
    assert "Traceback" not in captured.err
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert files_under(folder) == before


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["total_stepz=5"], ["'total_stepz'", "did you mean 'total_steps'"]),
        (["agent.critic_lrr=1"], ["'agent.critic_lrr'", "did you mean 'agent.critic_lr'"]),
        (["env.nam=MT10"], ["'env.nam'", "did you mean 'env.name'"]),
        (["total_steps=abc"], ["'total_steps'", "valid integer", "found 'abc'"]),
        (["agent.hidden_sizes=5"], ["'agent.hidden_sizes'", "found 5"]),
        (["agent.hidden_sizes=[16, 0]"], ["agent.hidden_sizes", "(16, 0)"]),
        (["progress=maybe"], ["'progress'", "found 'maybe'"]),
        (["agent=3"], ["'agent'", "found 3"]),
        (["env.name=5"], ["'env.name'", "found 5"]),
        (["agent.critic_lr=-1"], ["agent.critic_lr", "positive", "found -1.0"]),
        (["agent.actor_lr=.inf"], ["agent.actor_lr", "finite", "found inf"]),
        (["agent.discount=1.5"], ["agent.discount", "found 1.5"]),
        (["total_steps=0"], ["'total_steps'", "found 0"]),
        (["buffer_capacity=-5"], ["'buffer_capacity'", "found -5"]),
        (["buffer_capacity=2"], ["'buffer_capacity'", "3 tasks", "found 2"]),
        (["eval_episodes=0"], ["'eval_episodes'", "found 0"]),
        (["seed=-1"], ["'seed'", "found -1"]),
        (["seed=4294967296"], ["'seed'", "found 4294967296"]),
        ([*MT10, "seed=4294967290"], ["'seed'", "10", "found 4294967290"]),
        (["device=gpu"], ["'device'", "found 'gpu'"]),
        (["batch_size=2"], ["'batch_size'", "(3 on 'synthetic')", "found 2"]),
        (["batch_size=10"], ["'batch_size'", "multiple of the number of tasks", "found 10"]),
        ([*MT10, "batch_size=5"], ["'batch_size'", "(10 on 'MT10')", "found 5"]),
        (
            ["batch_size=12", "batch_size_per_task=4"],
            ["'batch_size'", "'batch_size_per_task'", "batch_size=12", "batch_size_per_task=4"],
        ),
        ([*MT10, "env.max_episode_steps=501"], ["'env.max_episode_steps'", "found 501"]),
        ([*MT10, "env.reward_scales=[1.0]"], ["'env.reward_scales'", "[1.0]"]),
        (["env.name=MT10"], ["'env.num_tasks'", "found 3"]),
        (["env.name=MT11"], ["'env.name'", "'MT11'", "did you mean 'MT10'"]),
        (["env.name=synthetc"], ["'env.name'", "'synthetc'", "did you mean 'synthetic'"]),
        (["env.name=reach-v3"], ["'env.name'", "['reach-v3']"]),
        (
            ["env.name=[reach-v3, pusj-v3]", "env.num_tasks=null"],
            ["'env.name'", "'pusj-v3'", "did you mean 'push-v3'"],
        ),
        (["env.name=[reach-v3, 7]"], ["'env.name.1'", "found 7"]),
        (["env.name=[reach-v3, reach-v3]"], ["'env.name'", "['reach-v3']"]),
        (["env.name=[]", "env.num_tasks=null"], ["'env.name'", "found []"]),
        (["env.name=synthetic-0", "env.num_tasks=null"], ["'env.name'", "'synthetic-0'"]),
        (["env.name=synthetic-5"], ["'env.num_tasks'", "'synthetic-5'", "found 3"]),
        (["env.reward_scales=[1.0, 2.0]"], ["'env.reward_scales'", "[1.0, 2.0]"]),
        (["env.reward_scales=[1.0, 2.0, -1.0]"], ["'env.reward_scales.2'", "found -1.0"]),
        (["env.reward_scales=[1.0, 2.0, .nan]"], ["'env.reward_scales.2'", "nan"]),
        (["env.vector_strategy=threads"], ["'env.vector_strategy'", "found 'threads'"]),
        (
            ["agent.critic_balancer=fam"],
            ["agent.critic_balancer", "'fam'", "did you mean 'famo'"],
        ),
        (["agent.alpha_balancer=famo2"], ["agent.alpha_balancer", "'famo2'"]),
        (
            ["agent.actor_balancer_options={weight_lr: -1}"],
            ["agent.actor_balancer_options", "weight_lr", "-1"],
        ),
        (["agent.critic_balancer_options={lr: 1}"], ["agent.critic_balancer_options", "'lr'"]),
        (["nokey"], ["'nokey'", "key=value"]),
        (["=3"], ["'=3'", "key=value"]),
        (["agent..critic_lr=1"], ["'agent..critic_lr=1'", "key=value"]),
        (["seed.x=1"], ["'seed.x=1'", "'seed' is not a section"]),
        (["agent.discount.x=1"], ["'agent.discount.x=1'", "'agent.discount'"]),
    ],
)
def test_bad_overrides(folder: Path, capsys, overrides: list[str], expected: list[str]) -> None:
    argv = ["train", "base.yaml"]
    for override in overrides:
        argv += ["--set", override]
    assert_usage_error(folder, capsys, argv, expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, ["cannot read config", "'config.yaml'", "No such file"]),
        ("a: [1\n", ["'config.yaml'", "not valid YAML", "line 2"]),
        ("- 1\n- 2\n", ["'config.yaml'", "mapping", "found list"]),
        ("total_steps: 10\nagent:\n  critic_lrr: 1\n", ["'agent.critic_lrr'", "'agent.critic_lr'"]),
        ("env: synthetic\n", ["'env'", "found 'synthetic'"]),
    ],
)
def test_bad_config_files(folder: Path, capsys, text: str | None, expected: list[str]) -> None:
    if text is not None:
        (folder / "config.yaml").write_text(text)
    assert_usage_error(folder, capsys, ["train", "config.yaml"], expected)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train"], ["config file is required"]),
        (["train", "--resume", "not_a_run"], ["not_a_run", "not a run directory"]),
        (["train", "base.yaml", "--resume", "not_a_run"], ["'base.yaml'", "'not_a_run'"]),
        (["train", "base.yaml", "--run-dir", "base.yaml"], ["'base.yaml'", "not a directory"]),
        (["eval", "not_a_run"], ["not_a_run", "not a run directory"]),
        (["eval", "missing"], ["missing", "not a run directory"]),
        (["eval", "not_a_run", "--episodes", "0"], ["--episodes", "found 0"]),
    ],
)
def test_bad_commands(folder: Path, capsys, argv: list[str], expected: list[str]) -> None:
    assert_usage_error(folder, capsys, argv, expected)


def test_the_process_exits_2_without_a_traceback(folder: Path) -> None:
    before = files_under(folder)
    command = [sys.executable, "-m", "famo_rl.cli", "train", "base.yaml", "--set", "env.name=MT11"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "famo-rl train: error: config key 'env.name': unknown environment 'MT11', expected one of "
        "synthetic, synthetic-<K>, MT10, MT50 or a list of Meta-World task names; did you mean "
        "'MT10'?"
    ]
    assert files_under(folder) == before


# --------------------------------------------------------------------------------------------------
# The total batch and the number of tasks, from the config alone.


@pytest.mark.parametrize(
    ("env", "num_tasks"),
    [
        ({"name": "MT10"}, 10),
        ({"name": "MT50"}, 50),
        ({"name": ["reach-v3", "push-v3"]}, 2),
        ({"name": "synthetic"}, 4),
        ({"name": "synthetic", "num_tasks": 6}, 6),
        ({"name": "synthetic-7"}, 7),
    ],
)
def test_tasks_are_counted_without_building_the_environment(env: dict, num_tasks: int) -> None:
    assert config_from_dict({"env": env}).env.count_tasks() == num_tasks


def test_batch_size_splits_evenly_between_the_tasks() -> None:
    assert config_from_dict({}).rows_per_task() == 128
    assert config_from_dict({"batch_size_per_task": 32}).rows_per_task() == 32
    config = config_from_dict({"env": {"name": "MT10"}, "batch_size": 1280})
    assert config.rows_per_task() == 128
    assert config.rows_per_task(num_tasks=5) == 256
    # A saved config (which lists batch_size_per_task at its default) loads again unchanged.
    again = config_from_dict(config_to_dict(config))
    assert again == config and again.rows_per_task() == 128
    with pytest.raises(ConfigError, match=r"number of tasks \(3 on"):
        config.rows_per_task(num_tasks=3)
