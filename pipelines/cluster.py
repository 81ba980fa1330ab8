"""Where the per-chunk work runs: a Dask cluster, local by default or an existing one by address.

`dask_client()` yields a `distributed.Client`: connected to ``address`` (or ``$FITLOOP_DASK_ADDRESS``) when one
is given, e.g. ``tcp://scheduler:8786``; otherwise to a local cluster of one single-threaded worker process per
core, closed on exit. Chunk functions are plain, importable functions; workers need fitloop installed (the same
environment) and access to the same paths (a shared filesystem on a multi-machine cluster).
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

DASK_ADDRESS_ENV = "FITLOOP_DASK_ADDRESS"


def resolve_address(address: str | None) -> str | None:
    """The scheduler address to use: the argument, else ``$FITLOOP_DASK_ADDRESS``, else None (a local cluster)."""
    return address or os.environ.get(DASK_ADDRESS_ENV) or None


@contextmanager
def dask_client(address: str | None = None, workers: int | None = None) -> Iterator["distributed.Client"]:  # noqa: F821
    """A Dask client for the duration of the block (see module docstring); `workers` sizes a local cluster."""
    from distributed import Client, LocalCluster

    # Prefect routes the root logger to its console: keep distributed's start/stop chatter out of it.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    address = resolve_address(address)
    if address:
        with Client(address, timeout="30s") as client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        yield client
