"""Shared timing for the bench scripts: interleaved rounds, median per runner."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def timed_rounds(runners: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each runner over interleaved rounds (one call of each per round),
    so a load change on the machine hits every runner alike."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}
