"""Connecting to a Dask cluster (`pipelines.cluster`): an address that is not a scheduler, a scheduler without
workers, and options that contradict each other each end in one line within a bounded time, never a silent wait.

Everything listens on 127.0.0.1 and is stopped by its test; no flow runs here."""
from __future__ import annotations

import logging
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from pipelines import cluster
from pipelines.cluster import ClusterError, check_scheduler, choose_cluster, dask_client

HTTP_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@contextmanager
def _server(reply: bytes | None):
    """A TCP server on loopback that accepts every connection and then says nothing (``reply`` None) or answers
    ``reply`` to whatever it reads and closes, as an HTTP server (a Dask dashboard) does; yields its address."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            accepted.append(conn)
            if reply is not None:
                conn.recv(65536)
                conn.sendall(reply)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


def _within(seconds: float, fn):
    """Call ``fn`` on a daemon thread; (its exception or None, its wall time), or fail if it is still running after
    ``seconds`` (the old code: a `distributed.Client` that waited for a handshake forever)."""
    outcome: dict = {}

    def run() -> None:
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 - returned to the test
            outcome["error"] = err

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds:.0f} s"
    return outcome.get("error"), time.monotonic() - start


@pytest.mark.parametrize("reply", [None, HTTP_400], ids=["says-nothing", "answers-http"])
def test_an_address_that_answers_but_is_no_scheduler_fails_within_seconds_with_one_line(reply, monkeypatch):
    monkeypatch.setattr(cluster, "HANDSHAKE_TIMEOUT_S", 1.0)
    with _server(reply) as address:
        for connect in (lambda: check_scheduler(address), lambda: dask_client(address).__enter__()):
            error, took = _within(30, connect)
            assert isinstance(error, ClusterError), error
            assert str(error).startswith(f"no Dask scheduler at '{address}': something answers there but not as a "
                                         f"Dask scheduler (")
            assert "\n" not in str(error) and took < 10


@pytest.fixture(scope="module")
def idle_scheduler():
    """A real Dask scheduler on loopback with no worker (`LocalCluster(n_workers=0)`)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as local:
        yield local.scheduler_address


def test_a_scheduler_without_workers_is_waited_for_saying_so_then_refused_in_one_line(idle_scheduler, capsys):
    def connect() -> None:
        with dask_client(idle_scheduler, workers_timeout_s=1):
            pass

    error, took = _within(60, connect)
    assert isinstance(error, ClusterError), error
    assert str(error) == (f"the Dask scheduler at {idle_scheduler} has no workers (waited 1 s); start one with "
                          f"`dask worker {idle_scheduler}`")
    assert 1 <= took < 30
    assert f"the Dask scheduler at {idle_scheduler} has no workers yet; waiting up to 1 s" in capsys.readouterr().err
    assert cluster.WORKERS_TIMEOUT_S == 60  # the default a real run waits


def test_a_worker_address_is_named_as_a_worker_not_a_scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as local:
        worker = next(iter(local.scheduler.workers))
        with pytest.raises(ClusterError, match="a Dask worker answers there, not a scheduler"):
            check_scheduler(worker)
        assert check_scheduler(local.scheduler_address) == local.scheduler_address


@pytest.mark.parametrize("port", [99999, 0, 65536])
def test_a_port_out_of_range_is_named_not_taken_for_connection_refused(port):
    with pytest.raises(ClusterError) as error:
        check_scheduler(f"tcp://127.0.0.1:{port}")
    assert str(error.value) == (f"Dask address 'tcp://127.0.0.1:{port}': port {port} is out of range (1-65535); give "
                                f"the scheduler's port (default 8786)")


def test_workers_with_an_address_is_refused_not_ignored(monkeypatch):
    monkeypatch.delenv(cluster.DASK_ADDRESS_ENV, raising=False)
    with pytest.raises(ClusterError, match=r"^--workers 2 sizes a local Dask cluster, but --dask-address names an "
                                           r"existing one; give one of them$"):
        choose_cluster("tcp://127.0.0.1:8786", 2)
    assert choose_cluster(None, 2) is None and choose_cluster("tcp://h:1", None) == "tcp://h:1"
    monkeypatch.setenv(cluster.DASK_ADDRESS_ENV, "tcp://10.0.0.7:8786")
    with pytest.raises(ClusterError, match=r"^--workers 2 sizes a local Dask cluster, but \$FITLOOP_DASK_ADDRESS "
                                           r"\('tcp://10\.0\.0\.7:8786'\) names an existing one; give one of them "
                                           r"\(unset \$FITLOOP_DASK_ADDRESS to use a local cluster\)$"):
        choose_cluster(None, 2)
    assert choose_cluster(None, None) == "tcp://10.0.0.7:8786"


def test_the_preprocess_command_and_the_flows_refuse_workers_with_an_address(monkeypatch, tmp_path, capsys):
    from fitloop.cli import main
    from pipelines.flow_params import check_cluster

    monkeypatch.delenv(cluster.DASK_ADDRESS_ENV, raising=False)
    (tmp_path / "root").mkdir()
    assert main(["preprocess", "lsp", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out"),
                 "--workers", "2", "--dask-address", "tcp://127.0.0.1:8786"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fitloop: error: --workers 2 sizes a local Dask cluster, but --dask-address names an existing "
                   "one; give one of them"]
    assert not (tmp_path / "out").exists()
    with pytest.raises(ClusterError, match="^workers 1 sizes a local Dask cluster, but dask_address names"):
        check_cluster("tcp://127.0.0.1:8786", 1)


def test_local_workers_start_with_distributeds_log_at_warning():
    """A worker process started from a flow's script imports Prefect, whose console showed each worker's start and
    stop lines (15 per run); a level the user's Dask config sets is kept."""
    import dask

    from pipelines.cluster import worker_environ

    assert worker_environ()["DASK_LOGGING__DISTRIBUTED"] == "warning"
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {"DASK_LOGGING__DISTRIBUTED": "info"}}):
        assert worker_environ()["DASK_LOGGING__DISTRIBUTED"] == "info"
