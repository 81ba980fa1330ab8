"""The CLI's own net: the machine's faults are one line; an unexpected exception keeps its traceback and asks to be
reported (issue 13)."""
import errno

import pytest
from faultcheck import expect_error

import fitloop.commands.model as model_commands
from fitloop.cli import INTERNAL_ERROR_STATUS
from fitloop.cli import main as fitloop

FAULT_CLASS = "machine faults (OS errors) and unexpected exceptions"


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "free space"), (errno.EROFS, "write elsewhere"),
                                          (errno.EACCES, "permissions"), (errno.ENOTDIR, "a file is in the way")])
def test_an_os_error_is_one_line_naming_the_file_and_what_to_do(capsys, monkeypatch, code, advice):
    def fails(args):
        raise OSError(code, "system reason", "/data/out/shard-000000.tar")

    monkeypatch.setattr(model_commands, "cmd_info", fails)
    expect_error(capsys, ["model", "info"], "/data/out/shard-000000.tar: system reason", advice)


def test_an_unexpected_exception_keeps_its_traceback_and_asks_for_a_report(capsys, monkeypatch):
    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(model_commands, "cmd_info", bug)
    assert fitloop(["model", "info"]) == INTERNAL_ERROR_STATUS
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert err.strip().splitlines()[-1].startswith("fitloop: internal error") and "report" in err


@pytest.mark.parametrize("argv, minimum, given", [
    (["preprocess", "lsp", "--root", "r", "--out", "o", "--workers", "-2"], 1, -2),
    (["synth", "--out", "o", "--workers", "0"], 1, 0),
    (["demo", "--workers", "0"], 1, 0),
    (["train", "--num-workers", "-1"], 0, -1)])
def test_a_count_out_of_range_is_refused_where_it_is_parsed(capsys, argv, minimum, given):
    """Before any work starts: a negative --workers reached a local Dask cluster, which waited for its workers
    forever with no word."""
    with pytest.raises(SystemExit) as stop:
        fitloop(argv)
    assert stop.value.code == 2
    assert f"must be at least {minimum}, got {given}" in capsys.readouterr().err


def test_a_local_dask_cluster_of_negative_workers_is_refused(capsys):
    """`fits seed --workers -1` (0 there: no Dask) and any caller of the library: refused, not a silent wait."""
    from pipelines.cluster import ClusterError, dask_client

    with pytest.raises(ClusterError, match="-1 worker processes: give --workers 1 or more"):
        with dask_client(None, -1):
            pass
