import json
import subprocess
import sys

import pytest

from fitloop.cli import CLOSED_PIPE_STATUS
from fitloop.cli import main as fitloop


def test_help_lists_every_command_group(capsys):
    assert fitloop([]) == 2
    out = capsys.readouterr().out
    for group in ("demo", "model", "bench", "prior"):
        assert group in out


def test_model_info_json_reports_the_open_model_with_49_joints():
    # through the installed console script, as a user runs it
    result = subprocess.run([sys.executable, "-m", "fitloop.cli", "model", "info", "--json"],
                            capture_output=True, text=True, check=True)
    info = json.loads(result.stdout)
    assert info["name"] == "fitloop-open" and info["joints"] == 49
    assert info["vertices"] == 13492 and info["betas"] == 10 and info["faces"] > 0
    assert set(info["joint_source"]) >= {"OP Nose", "Top of Head (LSP)", "Right Hip"}


def test_model_info_says_how_many_of_a_files_shape_directions_are_fitted(capsys, tmp_path):
    # SMPL 1.1 and SMPL+H ship 300 shape directions; fitloop fits SPIN's first 10: "betas 10" alone hid the rest
    import numpy as np
    from model_files import smpl_arrays

    np.savez(tmp_path / "SMPL_NEUTRAL_300.npz", **smpl_arrays(num_betas=300))
    assert fitloop(["model", "info", "--model", str(tmp_path / "SMPL_NEUTRAL_300.npz")]) == 0
    out = capsys.readouterr().out
    assert "betas 10 (of the file's 300 shape directions" in out and "the other 290 stay at zero" in out
    assert fitloop(["model", "info", "--model", str(tmp_path / "SMPL_NEUTRAL_300.npz"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["betas"] == 10 and info["file_shape_directions"] == 300


def test_a_user_error_is_one_line_without_traceback(capsys, tmp_path):
    assert fitloop(["model", "info", "--model", str(tmp_path / "SMPL_NEUTRAL.pkl")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fitloop: error:") and "no such body-model file" in err and "Traceback" not in err


def test_output_into_a_closed_pipe_ends_quietly():
    # `fitloop model info | head -0`: the reader is gone before the first line is written
    proc = subprocess.Popen([sys.executable, "-m", "fitloop.cli", "model", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == CLOSED_PIPE_STATUS == 141, err  # as a shell reports a program that SIGPIPE ended
    assert err == ""  # no traceback, no "Exception ignored … BrokenPipeError"


def test_a_broken_pipe_of_the_command_itself_is_not_hidden(monkeypatch):
    import fitloop.commands.model as model_commands

    def broken(args):
        raise BrokenPipeError("a worker's socket")

    monkeypatch.setattr(model_commands, "cmd_info", broken)
    with pytest.raises(BrokenPipeError, match="worker"):
        fitloop(["model", "info"])  # stdout is fine here, so the error is the command's own


def test_python_dash_m_fitloop_runs_the_cli():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fitloop", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
