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
