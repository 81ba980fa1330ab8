import json
import subprocess
import sys

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


def test_a_user_error_is_one_line_without_traceback(capsys, tmp_path):
    assert fitloop(["model", "info", "--model", str(tmp_path / "SMPL_NEUTRAL.pkl")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fitloop: error:") and "no such body-model file" in err and "Traceback" not in err
