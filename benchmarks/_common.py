"""What every benchmark shares: the machine's description, robust statistics, output files.

Timings on a shared machine are noisy, so every benchmark measures the methods it compares side by
side, interleaved in one process, and reports medians with their spread; these helpers keep the
reporting identical across scripts.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

#: Libraries whose versions change the numbers.
_VERSIONED = ("torch", "numpy", "torchjd", "stable-baselines3", "metaworld", "mujoco", "gymnasium")


def set_threads(threads: int) -> None:
    """Fix torch's CPU threads for every method alike.

    torch's default (one per core) is many times slower when another process holds a core, and
    the slowdown would land on whichever method happened to run then.
    """
    if threads < 1:
        raise ValueError(f"threads must be a positive integer, found {threads}")
    torch.set_num_threads(threads)


def machine_description(device: str = "cpu") -> dict[str, Any]:
    """The hardware and software a result was measured on, to be stored next to it."""
    description: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": _load_average(),
        "device": device,
        "versions": {name: _version(name) for name in _VERSIONED},
    }
    if device.startswith("cuda"):
        description["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return description


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, extremes and count of ``samples``; the median is what tables show."""
    values = sorted(float(value) for value in samples)
    if not values:
        raise ValueError("cannot summarize an empty list of samples")
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "min": values[0],
        "max": values[-1],
        "n": len(values),
    }


def spread(summary: dict[str, float], digits: int = 2) -> str:
    """``median [min-max]``, the way tables show a summary."""
    return (
        f"{summary['median']:.{digits}f} [{summary['min']:.{digits}f}-{summary['max']:.{digits}f}]"
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, refusing NaN and infinities (tests rely on finite files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def all_finite(data: Any) -> bool:
    """Whether every number inside ``data`` (nested dicts and lists) is finite."""
    if isinstance(data, dict):
        return all(all_finite(value) for value in data.values())
    if isinstance(data, list | tuple):
        return all(all_finite(value) for value in data)
    if isinstance(data, float):
        return math.isfinite(data)
    return True


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * page_size / 2**30, 1)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
