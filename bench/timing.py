"""Shared timing for the bench scripts: interleaved rounds, median per runner."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def timed_rounds(
    runners: dict[str, Callable[[], object]], rounds: int, warmup: int, statistic: str = "median"
) -> dict[str, float]:
    """Seconds per call of each runner over interleaved rounds (one call of each per round), so a load change on
    the machine hits every runner alike. `statistic` is "median" or "min"; the minimum is the steadier estimate of
    a runner's own cost when interference (other processes, page faults after the allocator returned memory to
    the OS) only ever adds time."""
    if statistic not in ("median", "min"):
        raise ValueError(f"statistic must be 'median' or 'min', got {statistic!r}")
    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    reduce = statistics.median if statistic == "median" else min
    return {name: reduce(ts) for name, ts in times.items()}
