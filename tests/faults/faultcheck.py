"""The fault battery's checks (issue 13, docs/reliability.md).

Every expected fault ends in one of two outcomes, and each case asserts which:
- **a one-line error**: a non-zero exit, stderr exactly one line ``fitloop: error: ...`` naming the file (and the
  record) and the reason, and saying what to do; no traceback (`expect_error`, `expect_error_in_subprocess`);
- **a reject**: the bad record is skipped with a reject row naming file, record and reason, and the counts
  reconcile (read = written + rejected; checked by the case).
And never: a traceback, a hang (subprocess cases run under a timeout), a silently wrong output, a lost committed fit.

Each test file of the battery is one fault class (`FAULT_CLASS` at its top); `docs/reliability.md` tallies them.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fitloop.cli import INTERNAL_ERROR_STATUS
from fitloop.cli import main as fitloop

REPO = Path(__file__).resolve().parents[2]
HANG_TIMEOUT_S = 120  # a case that runs longer hangs: a fault of its own


def _one_line(err: str, fragments: tuple[str, ...]) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fitloop: error: "), f"not one error line:\n{err}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def expect_error(capsys, argv: list[str], *fragments: str) -> str:
    """Run the CLI in this process; assert the one-line error outcome (with each fragment in it); return the line."""
    capsys.readouterr()
    status = fitloop([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status not in (0, INTERNAL_ERROR_STATUS), f"exit {status}:\n{err}"
    return _one_line(err, fragments)


def run_cli(argv: list[str], *, timeout: float = HANG_TIMEOUT_S, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m fitloop.cli ARGV` in a fresh process (as a user runs it), failing the case if it hangs."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "OMP_NUM_THREADS": "1", **(env or {})}
    try:
        return subprocess.run([sys.executable, "-m", "fitloop.cli", *map(str, argv)], capture_output=True,
                              text=True, timeout=timeout, env=full_env, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: `fitloop {' '.join(map(str, argv))}` ran past {timeout} s")


def expect_error_in_subprocess(argv: list[str], *fragments: str, timeout: float = HANG_TIMEOUT_S) -> str:
    """`run_cli`, then assert the one-line error outcome; return the line."""
    result = run_cli(argv, timeout=timeout)
    assert result.returncode not in (0, INTERNAL_ERROR_STATUS), f"exit {result.returncode}:\n{result.stderr}"
    return _one_line(result.stderr, fragments)
