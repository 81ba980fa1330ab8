"""Where the per-chunk work runs: a Dask cluster, local by default or an existing one by address.

`dask_client()` yields a `distributed.Client`: connected to ``address`` (or ``$FITLOOP_DASK_ADDRESS``) when one
is given, e.g. ``tcp://scheduler:8786``; otherwise to a local cluster of one single-threaded worker process per
core, closed on exit. The local cluster's scheduler, workers and dashboard listen on ``127.0.0.1`` only
(`LOCAL_HOST`), unless ``host`` says otherwise. An address where no scheduler answers fails within
`CONNECT_TIMEOUT_S` with one line that names it, and one where something answers but not as a Dask scheduler (a
dashboard's port, a worker's, any other server) within `HANDSHAKE_TIMEOUT_S` (`check_scheduler`): Dask's own
connect waits for the peer's handshake without a time limit, so a Client made there hung forever. A scheduler
without workers is waited for `WORKERS_TIMEOUT_S`, saying so, then refused (`wait_for_a_worker`): chunks sent
there would wait forever without a word.

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

import asyncio
import logging
import os
import socket
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from core.errors import FitloopError

DASK_ADDRESS_ENV = "FITLOOP_DASK_ADDRESS"
LOCAL_HOST = "127.0.0.1"  # the local cluster listens here only: nothing on the network can reach it
CONNECT_TIMEOUT_S = 5.0   # a scheduler that answers at all answers within this
HANDSHAKE_TIMEOUT_S = 10.0  # a scheduler that accepted the connection says who it is within this
WORKERS_TIMEOUT_S = 60.0  # how long a scheduler without workers is given to get one (a worker starting up)
DEFAULT_PORT = 8786       # Dask's scheduler port, when an address leaves it out
WORKER_MMAP_THRESHOLD = 1 << 26  # bytes: glibc's MALLOC_MMAP_THRESHOLD_ for worker processes (module docstring)


class ClusterError(FitloopError):
    """No Dask scheduler at the given address, or an address that is not one."""


def resolve_address(address: str | None) -> str | None:
    """The scheduler address to use: the argument, else ``$FITLOOP_DASK_ADDRESS``, else None (a local cluster)."""
    return address or os.environ.get(DASK_ADDRESS_ENV) or None


def choose_cluster(address: str | None, workers: int | None, *, workers_name: str = "--workers",
                   address_name: str = "--dask-address") -> str | None:
    """The scheduler address to use (`resolve_address`; None: a local cluster of ``workers`` processes).

    ``workers`` sizes a local cluster only, so with an address (given, or from ``$FITLOOP_DASK_ADDRESS``) it would
    be ignored without a word: refused instead, naming where the address came from. The names are the caller's
    for the two settings (the CLI's options, a flow's parameters)."""
    resolved = resolve_address(address)
    if workers is not None and resolved is not None:
        source = address_name if address else f"${DASK_ADDRESS_ENV} ({resolved!r})"
        raise ClusterError(f"{workers_name} {workers} sizes a local Dask cluster, but {source} names an existing "
                           f"one; give one of them" + ("" if address else f" (unset ${DASK_ADDRESS_ENV} to use a "
                                                                           f"local cluster)"))
    return resolved


def worker_environ() -> dict[str, object]:
    """The environment the local cluster's worker processes start with: Dask's own pre-spawn settings plus
    ``MALLOC_MMAP_THRESHOLD_`` (module docstring) and distributed's log level at warning (a worker process started
    from a flow's script imports Prefect, whose console then showed every worker's start and stop lines), each
    unless the user's Dask config sets it."""
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.setdefault("MALLOC_MMAP_THRESHOLD_", WORKER_MMAP_THRESHOLD)
    environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    return environ


def _where(address: str) -> str:
    return f"{address!r} (from ${DASK_ADDRESS_ENV})" if address == os.environ.get(DASK_ADDRESS_ENV) else \
        repr(address)


def check_scheduler(address: str, *, handshake_timeout_s: float | None = None) -> str:
    """The address, normalised (``tcp://host:port``), once a Dask scheduler answers there.

    Raises:
        ClusterError: the address is not ``[tcp://|tls://]HOST[:PORT]`` (a port in 1-65535), nothing accepts a TCP
            connection at it within `CONNECT_TIMEOUT_S`, or (``tcp://``) what accepts it does not say it is a Dask
            scheduler within ``handshake_timeout_s`` (default `HANDSHAKE_TIMEOUT_S`; `_identity`). Other schemes
            (``inproc://``, ``ucx://``) are passed on unchecked; ``tls://`` gets the TCP check only (the handshake
            needs the cluster's certificates)."""
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
    if not 1 <= port <= 65535:  # the system would take 99999 as 99999 % 65536 and say "connection refused"
        raise ClusterError(f"Dask address {_where(address)}: port {port} is out of range (1-65535); give the "
                           f"scheduler's port (default {DEFAULT_PORT})")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        reason = (f"no answer within {CONNECT_TIMEOUT_S:.0f} s" if isinstance(err, TimeoutError)
                  else (err.strerror or str(err)).lower())
        raise ClusterError(f"no Dask scheduler at {_where(address)} ({reason}); start one there (dask scheduler) "
                           f"or leave the address out to use a local cluster") from None
    checked = f"{scheme}://{unparse_host_port(host, port)}"
    if handshake_timeout_s is None:
        handshake_timeout_s = HANDSHAKE_TIMEOUT_S
    if scheme == "tcp":
        try:
            kind = _identity(checked, handshake_timeout_s).get("type")
        except Exception as err:  # noqa: BLE001 - whatever went wrong, it did not answer as a scheduler does
            reason = (f"no Dask handshake within {handshake_timeout_s:g} s" if isinstance(err, TimeoutError)
                      else "it closed the connection" if isinstance(err, OSError)  # distributed's CommClosedError too
                      else "its reply is not Dask's protocol")
            raise ClusterError(f"no Dask scheduler at {_where(address)}: something answers there but not as a "
                               f"Dask scheduler ({reason}); give the address `dask scheduler` prints "
                               f"(tcp://HOST:8786, not its dashboard's)") from None
        if kind != "Scheduler":
            raise ClusterError(f"no Dask scheduler at {_where(address)}: a Dask {(kind or 'server').lower()} answers "
                               f"there, not a scheduler; give the scheduler's address (`dask scheduler` prints it)")
    return checked


def _identity(address: str, timeout_s: float) -> dict:
    """The reply of the Dask server at ``address`` to ``identity`` (``{"type": "Scheduler", ...}``), or its error.

    Bounded by ``timeout_s`` of wall time: `distributed.comm.connect` reads the peer's handshake with no limit, so
    a peer that accepts and says nothing would hold it forever. Runs on its own thread and event loop, so it works
    the same from a plain caller, a Prefect flow or inside a running loop."""
    from distributed.comm import connect

    async def ask() -> dict:
        comm = await connect(address, timeout=timeout_s)
        try:
            await comm.write({"op": "identity", "reply": True})
            reply = await comm.read()
        finally:
            comm.abort()
        if not isinstance(reply, dict):
            raise TypeError(f"an identity reply of type {type(reply).__name__}")
        return reply

    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["reply"] = asyncio.run(asyncio.wait_for(ask(), timeout_s))
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=run, name="fitloop-dask-identity", daemon=True)
    thread.start()
    thread.join(timeout_s + CONNECT_TIMEOUT_S)  # the loop's own limit failing too leaves the daemon thread behind
    if "reply" in outcome:
        return outcome["reply"]  # type: ignore[return-value]
    raise outcome.get("error") or TimeoutError(f"no reply within {timeout_s:g} s")  # type: ignore[misc]


def wait_for_a_worker(client: "distributed.Client", address: str,  # noqa: F821
                      timeout_s: float = WORKERS_TIMEOUT_S) -> None:
    """Return once the scheduler of ``client`` has a worker; say on stderr that it is waiting, if it must, and
    raise `ClusterError` after ``timeout_s``: work sent to a scheduler without workers waits forever, silently."""
    if client.scheduler_info(n_workers=1).get("workers"):
        return
    print(f"fitloop: the Dask scheduler at {address} has no workers yet; waiting up to {timeout_s:g} s for one "
          f"(dask worker {address})", file=sys.stderr, flush=True)
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError:
        raise ClusterError(f"the Dask scheduler at {address} has no workers (waited {timeout_s:g} s); start one "
                           f"with `dask worker {address}`") from None


@contextmanager
def dask_client(address: str | None = None, workers: int | None = None, *, host: str = LOCAL_HOST,
                workers_timeout_s: float = WORKERS_TIMEOUT_S) -> Iterator["distributed.Client"]:  # noqa: F821
    """A Dask client for the duration of the block (see module docstring).

    address: an existing scheduler (default ``$FITLOOP_DASK_ADDRESS``), which must have a worker within
    ``workers_timeout_s`` (`wait_for_a_worker`); none: a local cluster of ``workers`` processes (default one per
    core) whose scheduler, workers and dashboard listen on ``host``."""
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
            wait_for_a_worker(client, checked, workers_timeout_s)
            yield client
        return
    import dask

    if workers is not None and workers < 0:  # LocalCluster would wait for them forever
        raise ClusterError(f"a local Dask cluster of {workers} worker processes: give --workers 1 or more (or "
                           f"leave it out: one per core)")
    n = workers or os.cpu_count() or 1
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}), \
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host=host, dashboard_address=f"{host}:0",
                         silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client
