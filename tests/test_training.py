"""The training CLI and loop on the synthetic suite: errors, logs, checkpoints, resume, seeds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from famo_rl.cli import main
from famo_rl.training.checkpoints import CheckpointManager

TINY = {
    "env": {"name": "synthetic", "num_tasks": 3, "max_episode_steps": 20},
    "agent": {
        "hidden_sizes": [16, 16],
        "critic_balancer": "famo",
        "actor_balancer": "famo",
        "alpha_balancer": "ls",
    },
    "total_steps": 120,
    "warmup_steps": 40,
    "batch_size_per_task": 8,
    "buffer_capacity": 3000,
    "eval_every": 60,
    "eval_episodes": 2,
    "log_every": 20,
    "checkpoint_every": 60,
    "progress": False,
    "num_threads": 1,
}


def write_config(folder: Path, data: dict, name: str = "tiny.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def scalars(run_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    config = write_config(folder, TINY)
    assert main(["train", str(config), "--run-dir", str(folder / "run")]) == 0
    return folder / "run"


def test_run_directory_holds_config_events_metrics_and_checkpoints(finished_run: Path) -> None:
    assert yaml.safe_load((finished_run / "config.yaml").read_text())["total_steps"] == 120
    assert (finished_run / "metrics.jsonl").read_text().count("\n") == 2  # evals at 60 and 120
    assert [p.name for p in CheckpointManager(finished_run / "checkpoints").paths()] == [
        "step_60.pt",
        "step_120.pt",
    ]


def test_tensorboard_tags_cover_tasks_losses_weights_and_speed(finished_run: Path) -> None:
    tags = scalars(finished_run)
    tasks = ["reach-0", "reach-1", "reach-2"]
    expected = [
        "eval/success_rate",
        "eval/best_success_rate",
        "eval/return",
        "time/steps_per_second",
    ]
    for name in tasks:
        expected += [
            f"eval/success_rate/{name}",
            f"eval/return/{name}",
            f"rollout/success_rate/{name}",
            f"rollout/episode_return/{name}",
            f"train/critic_loss/{name}",
            f"train/actor_loss/{name}",
            f"train/alpha_loss/{name}",
            f"train/alpha/{name}",
            f"balancer/critic/{name}",
            f"balancer/actor/{name}",
        ]
    missing = sorted(set(expected) - set(tags))
    assert not missing, f"missing tags: {missing}"
    # FAMO's weights moved away from uniform: the updates ran and reached the balancer.
    final = [tags[f"balancer/critic/{name}"][-1] for name in tasks]
    assert max(abs(w - 1 / 3) for w in final) > 1e-4


def documented_tags() -> set[str]:
    """Every tag named in the first column of docs/tensorboard.md's table."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "tensorboard.md").read_text()
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    return {tag for row in rows for tag in re.findall(r"`([^`]+)`", row)}


def test_every_tag_written_is_documented(finished_run: Path) -> None:
    tasks = ["reach-0", "reach-1", "reach-2"]
    documented = documented_tags()
    undocumented = []
    for tag in scalars(finished_run):
        generic = tag
        for name in tasks:
            generic = generic.replace(f"/{name}", "/<task>")
        if generic not in documented:
            undocumented.append(tag)
    assert not undocumented, f"tags missing from docs/tensorboard.md: {undocumented}"


def test_updates_ran_and_changed_the_agent(finished_run: Path) -> None:
    state = CheckpointManager(finished_run / "checkpoints").load_latest()
    assert state is not None
    assert state["step"] == 120 and state["updates"] == 120 - 40
    assert state["agent"]["critic_balancer"]["adam_steps"].min() > 0


def test_resume_continues_from_the_checkpoint(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = write_config(tmp_path, {**TINY, "total_steps": 60})
    assert main(["train", str(config), "--run-dir", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--set", "total_steps=120"]) == 0
    state = CheckpointManager(run / "checkpoints").load_latest()
    assert state is not None and state["step"] == 120 and state["updates"] == 80


def test_seeded_runs_repeat_exactly_on_cpu(finished_run: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, TINY)
    assert main(["train", str(config), "--run-dir", str(tmp_path / "again")]) == 0
    first = CheckpointManager(finished_run / "checkpoints").load_latest()
    second = CheckpointManager(tmp_path / "again" / "checkpoints").load_latest()
    assert first is not None and second is not None
    for key, value in first["agent"]["actor"].items():
        torch.testing.assert_close(second["agent"]["actor"][key], value, rtol=0, atol=0)


def test_eval_command_reads_the_run(finished_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval.json"
    assert main(["eval", str(finished_run), "--episodes", "2", "--json", str(out)]) == 0
    assert "mean success rate" in capsys.readouterr().out
    assert out.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"total_stepz": 5}, "unknown config key 'total_stepz' (did you mean 'total_steps'?)"),
        ({"agent": {"critic_lr": -1.0}}, "critic_lr must be positive, found -1.0"),
        ({"agent": {"critic_balancer": "fam"}}, "unknown balancer 'fam' (did you mean 'famo'?)"),
        ({"env": {"name": "MT10", "max_episode_steps": 600}}, "at most 500 steps, found 600"),
        ({"env": {"name": "MT11"}}, "MT11"),
        ({"device": "gpu"}, "config key 'device'"),
        ({"batch_size_per_task": 0}, "config key 'batch_size_per_task'"),
    ],
)
def test_bad_configs_exit_2_with_one_line_and_write_nothing(
    tmp_path: Path, capsys, change: dict, message: str
) -> None:
    data = {**TINY, **change}
    if "agent" in change:
        data["agent"] = {**TINY["agent"], **change["agent"]}
    config = write_config(tmp_path, data)
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not run.exists()


def test_unknown_override_and_missing_files_exit_2(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, TINY)
    assert main(["train", str(config), "--set", "agent.lrr=1"]) == 2
    assert "agent.lrr" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_shipped_configs_are_valid() -> None:
    from famo_rl.training.config import load_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        load_config(path)
