"""The two measurements every benchmark and demo here makes: a median time and a relative error."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

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
