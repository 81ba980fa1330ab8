"""Kill points: named places in fitloop's writers where a test kills the writer, at exactly the place it means.

Every writer must survive SIGKILL anywhere: nothing it committed is lost, and run again it ends with what an
uninterrupted run gives (docs/reliability.md). A kill by timer lands anywhere, or after the writer has finished, so
the fault battery kills at named places instead: each writer calls `kill_point(site)` where a kill matters (just
before and just after each commit of its output, between the units of its work). Normally that is one environment
lookup. With ``FITLOOP_FAULT_KILL_AFTER=<site>:<n>`` the process sends itself SIGKILL the n-th time it reaches
``site``: what ``kill -9``, the OOM killer or a lost machine does at that moment, with no chance to clean up.

The sites (`SITES`) are counted per process: a writer's Dask workers count their own.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

from core.errors import FitloopError

KILL_AFTER_ENV = "FITLOOP_FAULT_KILL_AFTER"

# site -> what has just happened when it is reached
SITES = {
    "shards.sample": "a sample was added to the shard being written (its .tmp file)",
    "shards.chunk": "a chunk's shard is in place and its receipt written",
    "shards.rejects": "a finished shard set's rejects.parquet is written, its manifest not yet",
    "seed.batch": "a batch of seed fits is fitted (nothing committed yet)",
    "fits.append": "an append to the fits table is about to commit (its rows checked)",
    "fits.commit": "an append to the fits table has committed",
    "fits.compact": "a compaction has read the table and chosen the best rows, and is about to write them",
    "fits.compacted": "a compaction has committed",
    "train.step": "a training step is done (the optimiser has stepped)",
    "train.checkpoint": "a training checkpoint is saved",
}

_reached: Counter[str] = Counter()


def kill_point(site: str) -> None:
    """Count ``site`` (one of `SITES`); SIGKILL this process when ``FITLOOP_FAULT_KILL_AFTER`` is ``<site>:<n>``
    and this is the n-th time the process reaches it."""
    if site not in SITES:
        raise ValueError(f"unknown kill point {site!r}; add it to core.killpoint.SITES")
    spec = os.environ.get(KILL_AFTER_ENV)
    if not spec:
        return
    wanted, n = parse_kill_after(spec)
    if wanted != site:
        return
    _reached[site] += 1
    if _reached[site] == n:
        os.kill(os.getpid(), signal.SIGKILL)


def parse_kill_after(spec: str) -> tuple[str, int]:
    """``"<site>:<n>"`` as (site, n); FitloopError naming the variable when it is not one."""
    site, _, count = spec.rpartition(":")
    if site not in SITES or not count.isdigit() or int(count) < 1:
        raise FitloopError(f"{KILL_AFTER_ENV}={spec!r}: expected <site>:<n> with n >= 1 and a site among "
                           f"{', '.join(SITES)}; unset it to run normally")
    return site, int(count)
