"""Checkpoints written atomically and read back without unpickling arbitrary objects."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from famo_rl._atomic import TEMPORARY_SUFFIX, atomic_write

_NAME = re.compile(r"^step_(\d+)\.pt$")
#: What a checkpoint that cannot be read raises: truncated or corrupt archives (RuntimeError,
#: EOFError), unreadable files (OSError), and contents that are not plain data (UnpicklingError,
#: a RuntimeError, when ``weights_only`` refuses them) or not a mapping (ValueError).
UNREADABLE = (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError)


class CheckpointManager:
    """Saves ``step_<N>.pt`` files in a folder, keeping the most recent few.

    Besides the numbered checkpoints the folder may hold named extras (the replay buffer), one file
    each, rewritten in place.

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
        self._remove_stale_temporaries()
        target = atomic_write(self.folder / f"step_{step}.pt", lambda s: torch.save(state, s))
        self._prune()
        return target

    def save_extra(self, name: str, state: dict[str, Any]) -> Path:
        """Write the extra file ``name`` atomically, replacing the previous one."""
        self._remove_stale_temporaries()
        return atomic_write(self.folder / name, lambda s: torch.save(state, s))

    def load_extra(self, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Read back :meth:`save_extra`'s ``name`` (plain data only).

        :raises FileNotFoundError: when there is none.
        """
        return load_checkpoint(self.folder / name, map_location)

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return [path for _, path in sorted(found)]

    def latest(
        self, map_location: str | torch.device = "cpu"
    ) -> tuple[Path, dict[str, Any]] | None:
        """The newest readable checkpoint and its path, skipping (with a warning naming the file
        and the error) any that are truncated or corrupt; ``None`` when none is readable."""
        for path in reversed(self.paths()):
            try:
                return path, load_checkpoint(path, map_location)
            except UNREADABLE as error:
                warnings.warn(
                    f"checkpoint {path} is unreadable ({describe_unreadable(error)}); "
                    "trying the previous one",
                    stacklevel=2,
                )
        return None

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The state of :meth:`latest`."""
        found = self.latest(map_location)
        return None if found is None else found[1]

    def _prune(self) -> None:
        for path in self.paths()[: -self.keep]:
            path.unlink(missing_ok=True)

    def _remove_stale_temporaries(self) -> None:
        """Remove half-written files that a killed process left behind (one writer per run)."""
        if self.folder.is_dir():
            for path in self.folder.glob(f".*{TEMPORARY_SUFFIX}"):
                path.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint holding plain data only (``weights_only=True``: no code runs)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} does not hold a mapping, found {type(state).__name__}")
    return state


def describe_unreadable(error: BaseException) -> str:
    """A short account of why a file could not be loaded as a checkpoint."""
    if isinstance(error, pickle.UnpicklingError):
        # torch's message is a page of advice on loading with weights_only=False, which we never do.
        return "it holds objects other than plain data; refused without running them"
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
