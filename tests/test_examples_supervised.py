"""The supervised example runs end to end, and its training loop really trains."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "supervised_multitask.py"


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    """The example script, imported as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("supervised_multitask", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before executing: dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run on one thread: the model is tiny, and extra threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_quick_run_reports_finite_errors_and_famo_learns_every_task(
    example: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "r.json"
    assert example.main(["--quick", "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    num_tasks = results["config"]["num_tasks"]

    for spec in ("ls", "famo"):
        method = results["methods"][spec]
        assert len(method["errors"]) == num_tasks
        assert all(math.isfinite(error) for error in method["errors"])
        assert method["worst_error"] == max(method["errors"])

    famo = results["methods"]["famo"]
    # The output layer starts at zero, so every task starts near the error of predicting the mean.
    assert all(0.5 < error < 1.5 for error in famo["initial_errors"])
    for task_idx, (before, after) in enumerate(
        zip(famo["initial_errors"], famo["errors"], strict=True)
    ):
        assert after < before, f"task {task_idx}: error {after:.4f} not below initial {before:.4f}"
    # The update phase ran: FAMO's weights left their uniform start.
    weights = famo["weights"]
    assert sum(weights) == pytest.approx(1.0)
    assert max(weights) - min(weights) > 1e-3


def test_tasks_without_labels_get_a_finite_zero_loss(example: ModuleType) -> None:
    predictions = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    targets = torch.zeros(2, 2)
    labelled = torch.tensor([[True, False], [True, False]])
    losses = example.task_losses(predictions, targets, labelled)
    assert losses.tolist() == [5.0, 0.0]


def test_method_specs_carry_balancer_options(example: ModuleType) -> None:
    assert example.parse_method("ls") == ("ls", {})
    assert example.parse_method("famo:weight_decay=1e-2:weight_lr=0.01") == (
        "famo",
        {"weight_decay": 0.01, "weight_lr": 0.01},
    )
    with pytest.raises(ValueError, match="key=value"):
        example.parse_method("famo:weight_decay")
