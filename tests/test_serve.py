"""`fitloop serve` refuses, in one line, what cannot serve: no Prefect server named, nothing answering at the one
named, a flow-run limit below 1. No server is started here; `tests/test_flows.py` serves through a real one."""
from __future__ import annotations

import socket

import pytest

from fitloop.cli import main as fitloop

pytestmark = pytest.mark.prefect  # Prefect's client in this process: with the flow tests, last (conftest.py)


@pytest.fixture
def served(monkeypatch):
    """`prefect.serve` replaced by a recorder: a serve that got that far returns at once instead of serving."""
    import prefect

    import pipelines.flows  # noqa: F401 - sets fitloop's Prefect environment (no analytics) before any client

    calls = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments, **options: calls.append(options))
    return calls


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_a_limit_below_one_is_a_usage_error(limit, served, capsys):
    with pytest.raises(SystemExit) as stop:
        fitloop(["serve", "--limit", limit])
    assert stop.value.code == 2 and f"--limit: must be at least 1, got {limit}" in capsys.readouterr().err
    assert served == []


def test_without_a_server_named_serve_refuses_instead_of_serving_on_a_temporary_one(served, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert fitloop(["serve"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "fitloop: error: PREFECT_API_URL is not set: start a Prefect server (prefect server start) and export "
        "PREFECT_API_URL=http://127.0.0.1:4200/api (its address), then serve again"]
    assert served == []


def test_a_server_that_does_not_answer_is_one_line_naming_its_url(served, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = f"http://127.0.0.1:{_unused_port()}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        assert fitloop(["serve"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"fitloop: error: no Prefect server answers at PREFECT_API_URL={url} (")
    assert err[0].endswith("start one (prefect server start) or point PREFECT_API_URL at a running one")
    assert served == []
