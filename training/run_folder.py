"""A run folder holds one training run: ``run.json`` names the run, and every checkpoint names it too.

`fitloop train --run-dir RUN` writes its files into RUN (`RUN_FILES`): ``run.json``, ``config.json``,
``checkpoints/``, the CSV logs, ``curves.png`` and ``tensorboard/``. A run started in a folder another run had
used would write its checkpoints beside the old ones, and a later ``--resume`` would load whichever had the most
steps, the old run's included, and say "resuming". So:

* **A new run claims its folder** before it writes anything, to the folder or to the fits table (`check_new_run`,
  read-only, on every rank; then `claim` on rank 0): ``config.json``, then ``run.json`` =
  ``{"format": "fitloop-run", "run_id", "created"}``, each written as a temporary file and renamed. A folder that
  holds any run file is refused in one line naming the run it holds, unless ``overwrite`` (``--overwrite``): then
  that run's files are deleted first. Other files in the folder are left alone, and the old run's fits stay in the
  fits table (it keeps every run's).
* **A resume continues the folder's own run** (`resume_point`): the latest checkpoint must name the run of
  ``run.json``, else the resume is refused in one line naming both. A folder written before runs had a
  ``run.json`` belongs to the run of its latest checkpoint (`claim` then writes ``run.json``).
* **A run stopped before its first checkpoint** resumes from its start, with the config in ``config.json`` and the
  same run id. The trainer saves a checkpoint at step 0, before the first step and so before its first fits
  write-back; until then the run has written at most its seed fits, and seeding again appends only the ones still
  missing, so the run ends as an uninterrupted one does.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import FitloopError
from training.checkpoint import CHECKPOINTS_DIR, CheckpointError, latest_checkpoint, load_checkpoint
from training.config import TrainConfig
from training.run_log import LOG_FILES

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
FORMAT = "fitloop-run"
RUN_FILES = (RUN_FILE, CONFIG_FILE, CHECKPOINTS_DIR, *LOG_FILES)  # everything a run writes into its folder


class RunFolderError(FitloopError):
    """A run folder that is not the run's to use: another run's, damaged, or a file."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a resume starts: the saved config, and the checkpoint (None: the run stopped before its first one and
    starts over), read from ``path`` (the checkpoint, or ``config.json`` when starting over)."""

    config: TrainConfig
    checkpoint: dict[str, Any] | None
    path: Path


def run_files(run_dir: Path) -> list[str]:
    """The run files (`RUN_FILES`) present in ``run_dir``."""
    return [name for name in RUN_FILES if (Path(run_dir) / name).exists()]


def folder_run_id(run_dir: Path) -> str | None:
    """The run ``run_dir`` belongs to, from its ``run.json`` (None: there is none); RunFolderError when it is
    unreadable."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or not isinstance(data.get("run_id"), str) or not data["run_id"]:
            raise ValueError(f"not a {FORMAT} file")
    except (ValueError, AttributeError, UnicodeDecodeError) as err:
        raise RunFolderError(f"{path}: unreadable ({err}); it names the run that owns {run_dir}: restore it, or "
                             f"start a new run there with --overwrite (deletes the old run's checkpoints and "
                             f"logs)") from None
    return data["run_id"]


def check_new_run(run_dir: Path, overwrite: bool) -> None:
    """Refuse (RunFolderError, changing nothing) to start a new run in ``run_dir`` when it is a file, or holds a run
    and not ``overwrite``."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is a file, not a folder; choose a folder for the run (--run-dir)")
    used = run_files(run_dir)
    if not used or overwrite:
        return
    try:
        owner = folder_run_id(run_dir)
    except RunFolderError:
        owner = None
    held = f"run {owner}" if owner else "an earlier run"
    raise RunFolderError(f"{run_dir} holds {held} ({', '.join(used)}); continue it with --resume, start a new run "
                         f"in it with --overwrite (deletes that run's checkpoints and logs), or choose another "
                         f"--run-dir")


def claim(run_dir: Path, config: TrainConfig, *, overwrite: bool = False) -> None:
    """Make ``run_dir`` the folder of ``config.run_id``'s run (module docstring): with ``overwrite``, delete the run
    files there first; write ``config.json``, then ``run.json`` (unless it names this run already). RunFolderError
    when ``run.json`` names another run and not ``overwrite``."""
    run_dir = Path(run_dir)
    if overwrite:
        for name in run_files(run_dir):
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    owner = folder_run_id(run_dir)
    if owner is not None and owner != config.run_id:
        raise RunFolderError(f"{run_dir} belongs to run {owner} ({run_dir / RUN_FILE}), not to run {config.run_id}; "
                             f"start run {config.run_id} in another --run-dir, or over run {owner} with --overwrite")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(run_dir / CONFIG_FILE, config.to_json() + "\n")
    if owner is None:
        _write_atomic(run_dir / RUN_FILE, json.dumps({
            "format": FORMAT, "run_id": config.run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")


def resume_point(run_dir: Path) -> ResumePoint:
    """Where a resume of ``run_dir``'s run starts (module docstring): its latest checkpoint, which must be of the
    folder's run (RunFolderError naming both otherwise); or, when the run stopped before its first checkpoint, its
    start with the config of ``config.json``. CheckpointError when the folder holds no run."""
    run_dir = Path(run_dir)
    owner = folder_run_id(run_dir)
    path = latest_checkpoint(run_dir)
    if path is None:
        if owner is None and run_files(run_dir):  # a start killed between config.json and run.json
            raise CheckpointError(f"{run_dir}: no checkpoint and no {RUN_FILE} to resume from (a run stopped while "
                                  f"starting); start it again with --overwrite")
        if owner is None:
            raise CheckpointError(f"{run_dir}: no checkpoint to resume from (no run was started there); start the "
                                  f"run without --resume")
        config_path = run_dir / CONFIG_FILE
        config = _read_config(config_path, f"the config of run {owner}, stopped before its first checkpoint")
        if config.run_id != owner:
            raise RunFolderError(f"{config_path} is the config of run {config.run_id}, and {run_dir} belongs to run "
                                 f"{owner} ({run_dir / RUN_FILE}); start a new run there with --overwrite")
        return ResumePoint(config, None, config_path)
    data = load_checkpoint(path)
    if owner is not None and data.get("run_id") != owner:
        theirs = data.get("run_id") or "(none named)"
        raise RunFolderError(f"{path} is a checkpoint of run {theirs}, and {run_dir} belongs to run "
                             f"{owner} ({run_dir / RUN_FILE}): a resume continues only the folder's own run; move "
                             f"that checkpoint away, or start a new run there with --overwrite")
    try:
        config = TrainConfig.from_dict(data["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its config cannot be read ({err}); start a new run") from None
    return ResumePoint(config, data, path)


def _read_config(path: Path, what: str) -> TrainConfig:
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise RunFolderError(f"{path} is missing: {what}; start the run again with --overwrite") from None
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise RunFolderError(f"{path}: unreadable ({err}): {what}; start the run again with --overwrite") from None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
