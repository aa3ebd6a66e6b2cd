"""Timing, and the matmul peak that FLOP/s are compared with.

Absolute times on a shared machine are noisy, so the benchmarks claim ratios: the two sides of a ratio are measured
back to back in the same process (interleaved rounds where it matters) and the median over rounds is reported.
"""

import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .settings import Runtime


def timed(function: Callable[[], Any], runtime: Runtime) -> float:
    """Wall-clock seconds of one call, synchronised on GPUs."""
    runtime.sync()
    start = time.perf_counter()
    function()
    runtime.sync()
    return time.perf_counter() - start


def interleaved(
    functions: dict[str, Callable[[], Any]], runtime: Runtime, rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Times each function once per round, alternating them (the order rotates every round) so that load from other
    jobs on a shared machine hits all sides of a ratio alike. Returns the seconds of every round per name."""
    names = list(functions)
    for _ in range(warmup):
        for name in names:
            functions[name]()
    times = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(functions[name], runtime))
    return times


def median(values: Iterable[float]) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def ratio_per_round(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of the per-round ratio (each round's two numbers were measured seconds apart)."""
    return median(n / d for n, d in zip(numerator, denominator))


def matmul_rate(runtime: Runtime, size: int, calls: int = 3) -> float:
    """Best FLOP/s of `calls` square matmuls of `size` in the run's compute dtype: the peak a model can approach."""
    left = torch.randn(size, size, device=runtime.device)
    right = torch.randn(size, size, device=runtime.device)
    left, right = left.to(runtime.dtype), right.to(runtime.dtype)
    left @ right
    best = min(timed(lambda: left @ right, runtime) for _ in range(calls))
    if runtime.is_cuda:  # one product takes ~1 ms on a GPU: time a run of them, not one launch and sync
        best = min(timed(lambda: [left @ right for _ in range(20)], runtime) / 20 for _ in range(calls))
    return 2 * size**3 / best


def gemm_rate(runtime: Runtime, rows: int, inner: int, columns: int, calls: int = 3) -> float:
    """Best FLOP/s of a `(rows, inner) @ (inner, columns)` linear layer with bias, the shape a model runs."""
    inputs = torch.randn(rows, inner, device=runtime.device)
    weight = torch.randn(columns, inner, device=runtime.device)
    bias = torch.randn(columns, device=runtime.device)
    with runtime.autocast():
        torch.nn.functional.linear(inputs, weight, bias)
        repeat = 50 if runtime.is_cuda else 1  # microseconds on a GPU: time a run of calls, not one launch and sync
        best = min(
            timed(lambda: [torch.nn.functional.linear(inputs, weight, bias) for _ in range(repeat)], runtime) / repeat
            for _ in range(calls)
        )
    return 2 * rows * inner * columns / best


def peak_matmul_size(runtime: Runtime) -> int:
    return 8192 if runtime.is_cuda else 2048
