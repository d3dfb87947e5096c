"""Shared timing for the bench scripts: interleaved rounds, median per runner; the machine's header line."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


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


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def matmul_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """The machine's square-matmul rate in `dtype` at torch's current thread count (best of `repeats`)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / min(seconds) / 1e9


def machine_header() -> str:
    """torch version, threads, CPU model and fp32 / bf16 matmul GFLOP/s: speed claims are ratios against a peer in
    the same run, read next to these rates (bf16 runs ~6x fp32 on AMX CPUs, ~3x with AVX-512 BF16, ~1x without)."""
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu_model()}; matmul 1024^2: "
            f"fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s ({bf16 / fp32:.1f}x)")
