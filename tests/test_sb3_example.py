"""``examples/sb3_mt10.py --quick`` runs end to end: training, evaluation, TensorBoard, saving."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from famo_rl.sb3 import MultiTaskSAC

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sb3_mt10.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sb3_mt10", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up in sys.modules while the class is being created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_trains_evaluates_and_saves(example: ModuleType, tmp_path: Path) -> None:
    result = example.main(["--quick", "--steps", "80", "--seed", "1", "--log-dir", str(tmp_path)])

    assert set(result.success_rate) == {"reach-0", "reach-1", "reach-2", "reach-3"}
    assert result.episodes == {f"reach-{k}": 2 for k in range(4)}
    assert list(tmp_path.glob("MultiTaskSAC_*/events.out.tfevents.*"))
    model = MultiTaskSAC.load(tmp_path / "mt_sac_seed1.zip")
    assert model.num_timesteps == 320 and model._n_updates > 0
    assert model.balancer_config["critic"]["name"] == "famo"
