"""The two measurements every benchmark and demo here makes, a median time and a relative error,
and the name of the CPU they were made on."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 3,
                   sync: Callable[[], object] | None = None) -> float:
    """Median wall time of `repeats` calls of `run` after `warmup` untimed ones; `sync` (e.g.
    `torch.cuda.synchronize`) is called before each clock read so queued GPU work counts."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        run()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def relative_error(actual, expected) -> float:
    """`||actual - expected|| / ||expected||` in float64 (numpy arrays or CPU tensors)."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} != {expected.shape}")
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it, else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
