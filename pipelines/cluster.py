"""Where the per-chunk work runs: a Dask cluster, local by default or an existing one by address.

`dask_client()` yields a `distributed.Client`: connected to ``address`` (or ``$FITLOOP_DASK_ADDRESS``) when one
is given, e.g. ``tcp://scheduler:8786``; otherwise to a local cluster of one single-threaded worker process per
core, closed on exit. The local cluster's scheduler, workers and dashboard listen on ``127.0.0.1`` only
(`LOCAL_HOST`), unless ``host`` says otherwise. An address where no scheduler answers fails within
`CONNECT_TIMEOUT_S` with one line that names it (`check_scheduler`).

**Worker memory allocator.** Dask's nanny starts worker processes with ``MALLOC_TRIM_THRESHOLD_=65536``
(`distributed.nanny.pre-spawn-environ`), and a worker runs its tasks in a thread, not its main thread. Measured
(2026-12-03, 2 cores, one thread per worker): a batch of 64 seed fits (open model) took 1.0 s of CPU on such a
worker against 0.38 s in a plain process; without the trim setting still 0.77 s; with glibc's mmap threshold
raised to `WORKER_MMAP_THRESHOLD` (``MALLOC_MMAP_THRESHOLD_``, so tensors of tens of MB come from the heap instead
of fresh zeroed pages at every allocation) 0.38 s. The local cluster's workers get it (`worker_environ`); an
existing cluster's workers need it in their environment (docs/flows.md).

Chunk functions are plain, importable functions; workers need fitloop installed (the same environment) and
access to the same paths (a shared filesystem on a multi-machine cluster); the callers send absolute paths.
"""
from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from typing import Iterator

from core.errors import FitloopError

DASK_ADDRESS_ENV = "FITLOOP_DASK_ADDRESS"
LOCAL_HOST = "127.0.0.1"  # the local cluster listens here only: nothing on the network can reach it
CONNECT_TIMEOUT_S = 5.0   # a scheduler that answers at all answers within this
DEFAULT_PORT = 8786       # Dask's scheduler port, when an address leaves it out
WORKER_MMAP_THRESHOLD = 1 << 26  # bytes: glibc's MALLOC_MMAP_THRESHOLD_ for worker processes (module docstring)


class ClusterError(FitloopError):
    """No Dask scheduler at the given address, or an address that is not one."""


def resolve_address(address: str | None) -> str | None:
    """The scheduler address to use: the argument, else ``$FITLOOP_DASK_ADDRESS``, else None (a local cluster)."""
    return address or os.environ.get(DASK_ADDRESS_ENV) or None


def worker_environ() -> dict[str, object]:
    """The environment the local cluster's worker processes start with: Dask's own pre-spawn settings plus
    ``MALLOC_MMAP_THRESHOLD_`` (module docstring), unless the user's Dask config sets one."""
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.setdefault("MALLOC_MMAP_THRESHOLD_", WORKER_MMAP_THRESHOLD)
    return environ


def _where(address: str) -> str:
    return f"{address!r} (from ${DASK_ADDRESS_ENV})" if address == os.environ.get(DASK_ADDRESS_ENV) else \
        repr(address)


def check_scheduler(address: str) -> str:
    """The address, normalised (``tcp://host:port``), once something accepts a connection there.

    Raises:
        ClusterError: the address is not ``[tcp://|tls://]HOST[:PORT]``, or nothing accepts a TCP connection at it
            within `CONNECT_TIMEOUT_S`. Other schemes (``inproc://``, ``ucx://``) are passed on unchecked.
    """
    from distributed.comm import parse_address, unparse_host_port
    from distributed.comm.addressing import parse_host_port
    from distributed.comm.registry import backends

    try:
        scheme, location = parse_address(address)
        if scheme not in backends:
            raise ValueError(f"unknown scheme {scheme!r}")
        if scheme not in ("tcp", "tls"):
            return address
        host, port = parse_host_port(location, DEFAULT_PORT)
    except ValueError as err:
        raise ClusterError(f"Dask address {_where(address)} is not tcp://HOST:PORT ({err})") from None
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        reason = (f"no answer within {CONNECT_TIMEOUT_S:.0f} s" if isinstance(err, TimeoutError)
                  else (err.strerror or str(err)).lower())
        raise ClusterError(f"no Dask scheduler at {_where(address)} ({reason}); start one there (dask scheduler) "
                           f"or leave the address out to use a local cluster") from None
    return f"{scheme}://{unparse_host_port(host, port)}"


@contextmanager
def dask_client(address: str | None = None, workers: int | None = None, *,
                host: str = LOCAL_HOST) -> Iterator["distributed.Client"]:  # noqa: F821
    """A Dask client for the duration of the block (see module docstring).

    address: an existing scheduler (default ``$FITLOOP_DASK_ADDRESS``); none: a local cluster of ``workers``
    processes (default one per core) whose scheduler, workers and dashboard listen on ``host``."""
    from distributed import Client, LocalCluster

    # Prefect routes the root logger to its console: keep distributed's start/stop chatter out of it.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    address = resolve_address(address)
    if address:
        checked = check_scheduler(address)
        try:
            client = Client(checked, timeout=f"{CONNECT_TIMEOUT_S * 2:.0f}s")
        except Exception as err:  # noqa: BLE001 - something accepted the connection but is not a Dask scheduler
            raise ClusterError(f"no Dask scheduler at {_where(address)}: something answers there but not as a "
                               f"Dask scheduler ({type(err).__name__}: {str(err)[:120]})") from None
        with client:
            yield client
        return
    import dask

    if workers is not None and workers < 0:  # LocalCluster would wait for them forever
        raise ClusterError(f"a local Dask cluster of {workers} worker processes: give --workers 1 or more (or "
                           f"leave it out: one per core)")
    n = workers or os.cpu_count() or 1
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}), LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host=host, dashboard_address=f"{host}:0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client
