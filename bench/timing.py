"""A small timer for benchmarks: warm-up, then the median of repeated runs, synchronising CUDA when used."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_seconds(fn: Callable[[], object], *, repeats: int = 20, warmup: int = 3,
                   device: torch.device | str = "cpu") -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs, in seconds."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()  # CPU-GPU sync point: the kernels must finish inside the timed region
        times.append(time.perf_counter() - start)
    return statistics.median(times)
