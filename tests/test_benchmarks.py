"""The benchmark scripts run end to end in ``--quick`` mode and write finite numbers.

The full runs take most of an hour; these smoke runs keep the scripts from rotting between
releases. They check that every output exists and holds finite, positive timings, not what the
timings are (on a shared machine they are noise at this size).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # benchmarks/ is a folder of scripts at the repository root, not an installed package.
    sys.path.insert(0, str(ROOT))

from benchmarks import balancers, reevaluation, training  # noqa: E402
from benchmarks._common import all_finite  # noqa: E402


@pytest.fixture(autouse=True)
def keep_threads() -> Iterator[None]:
    """The scripts set torch's thread count; give the next tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def read_json(path: Path) -> dict[str, Any]:
    assert path.is_file(), path
    data = json.loads(path.read_text())
    assert all_finite(data), path
    return data


def assert_outputs(folder: Path, stem: str, plots: list[str]) -> dict[str, Any]:
    """JSON, markdown and plots exist and are not empty; returns the JSON."""
    data = read_json(folder / f"{stem}.json")
    assert (folder / f"{stem}.md").read_text().count("|") > 10
    for plot in plots:
        assert (folder / plot).stat().st_size > 1000, plot
    assert data["machine"]["torch_threads"] == 1
    return data


def test_balancer_benchmark_quick(tmp_path: Path) -> None:
    assert balancers.main(["--quick", "--out", str(tmp_path)]) == 0
    data = assert_outputs(tmp_path, "balancers_quick", ["balancers_quick.png"])
    results = data["results"]
    variants = {record["variant"] for record in results}
    assert variants == set(balancers.VARIANTS)
    assert {record["num_tasks"] for record in results} == {2, 3}
    assert len({record["setting"] for record in results}) == 2
    for record in results:
        assert record["time_ms"]["median"] > 0
        assert math.isfinite(record["ratio_to_ls"]["median"])
        assert record["peak_memory_mib"] >= 0
        if record["variant"] == "ls":
            assert record["ratio_to_ls"]["median"] == 1.0

    # --report writes the same markdown again from the JSON alone, without measuring.
    markdown = (tmp_path / "balancers_quick.md").read_text()
    copy = tmp_path / "again" / "balancers_quick.json"
    copy.parent.mkdir()
    copy.write_text((tmp_path / "balancers_quick.json").read_text())
    assert balancers.main(["--report", str(copy)]) == 0
    assert (copy.parent / "balancers_quick.md").read_text() == markdown
    assert (copy.parent / "balancers_quick.png").stat().st_size > 1000
    summary = markdown.split("\n\n###", 1)[0]
    assert summary.count("\n| `") == len(balancers.VARIANTS)  # one summary row per variant


def test_training_benchmark_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The trainer reads and writes the default goal cache: keep it inside tmp_path.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert training.main(["--quick", "--out", str(out)]) == 0
    data = assert_outputs(out, "training_quick", ["training_quick_profile.png"])
    for contenders in data["throughput"].values():
        assert set(contenders) == set(training.CONTENDERS)
        for entry in contenders.values():
            assert entry["steps_per_second"]["median"] > 0
            assert entry["ratio_to_sb3"]["median"] > 0
    assert set(data["startup"]) == {"2 tasks"}  # MT50 is skipped in --quick
    for entry in data["startup"].values():
        assert entry["cold_seconds"] > 0 and entry["cached_seconds"]["median"] > 0
    for profile in data["profile"].values():
        assert profile["breakdown"]["total"]["ms_per_step"] > 0
        assert profile["breakdown"]["env step"]["ms_per_step"] > 0
        assert profile["top_functions"]


@pytest.mark.slow
def test_reevaluation_study_quick(tmp_path: Path) -> None:
    assert reevaluation.main(["--quick", "--out", str(tmp_path)]) == 0
    data = read_json(tmp_path / "reevaluation_quick.json")
    assert {run["variant"] for run in data["runs"]} == set(reevaluation.VARIANTS)
