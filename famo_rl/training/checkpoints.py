"""Checkpoints written atomically and read back without unpickling arbitrary objects."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from famo_rl._atomic import atomic_write

_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointManager:
    """Saves ``step_<N>.pt`` files in a folder, keeping the most recent few.

    :param folder: where checkpoints live (created on first save).
    :param keep: how many of the most recent checkpoints to keep.
    """

    def __init__(self, folder: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, found {keep}")
        self.folder = Path(folder)
        self.keep = keep

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write ``state`` for ``step`` atomically (temporary file, flush, fsync, rename)."""
        target = atomic_write(self.folder / f"step_{step}.pt", lambda s: torch.save(state, s))
        self._prune()
        return target

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return [path for _, path in sorted(found)]

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest readable checkpoint, skipping (with a warning) any that are corrupt."""
        for path in reversed(self.paths()):
            try:
                return load_checkpoint(path, map_location)
            except (RuntimeError, OSError, EOFError, ValueError) as error:
                warnings.warn(
                    f"checkpoint {path} is unreadable ({error}); trying the previous one",
                    stacklevel=2,
                )
        return None

    def _prune(self) -> None:
        for path in self.paths()[: -self.keep]:
            path.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint holding plain data only (``weights_only=True``: no code runs)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} does not hold a mapping, found {type(state).__name__}")
    return state
