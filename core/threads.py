"""torch's CPU thread count for a block of work, restored afterwards (benchmarks, trainers and the demo set it
explicitly: with other processes busy, torch's default threads oversubscribe the cores)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block on ``threads`` torch CPU threads, then restore the caller's count (also on an exception)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
