"""Training checkpoints: written atomically, read back without running code from the file.

A checkpoint (``<run>/checkpoints/step-<step:09d>.pt``) is a dict of tensors and plain values:

=================  ========================================================================================
``format``         ``"fitloop-checkpoint"``, ``format_version`` 1
``model``          the regressor's state dict (without DDP's ``module.`` prefix)
``optimizer``      Adam's state dict; ``scaler``: the fp16 gradient scaler's (empty otherwise)
``step``           optimiser steps done; ``epoch``, ``batch``: the data position (the next batch to train is
                   batch ``batch`` of epoch ``epoch``; ``batch`` = steps per epoch means the epoch is done)
``fits_table``     the table's path; ``fits_version``: its version once this run's fits were written
``run_id``         the run every fit row names; ``body_model_id``
``config``         the resolved `training.config.TrainConfig` as a dict
``world_size``     the processes that trained it (torchrun); a resumed run must have as many
``rng``            per rank, in rank order: ``{"torch": [...], "cuda": [...]}``, torch's CPU RNG state (dropout)
                   and the rank's CUDA device's (empty without CUDA); every rank draws its own dropout masks
``time``           UTC, ISO 8601
=================  ========================================================================================

Format 1 (before per-rank RNG states) held one ``rng`` state for all ranks and no ``world_size``; it is still
read (`rank_rng_state`).

Written as ``<name>.tmp``, fsynced, renamed: a run killed while saving leaves the previous checkpoint intact.
Loaded with ``torch.load(weights_only=True)``. A run keeps its newest few (`prune_checkpoints`, after each save: a
ResNet-50's checkpoint with Adam's state is ~320 MB, and a long run saves hundreds).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from core.errors import FitloopError

FORMAT = "fitloop-checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_NAME = re.compile(r"^step-(\d{9})\.pt$")
CHECKPOINTS_DIR = "checkpoints"


class CheckpointError(FitloopError):
    """A checkpoint is missing, unreadable, or from another format."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (module docstring) as ``step-<step>.pt`` atomically; returns the path."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{int(payload['step']):09d}.pt"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints (by step; ``keep`` 0 keeps all) and any ``.tmp`` left by a
    save that was killed; returns what was deleted. Call it after a save, so that the newest stays."""
    folder = checkpoint_dir(run_dir)
    if keep < 0:
        raise ValueError(f"keep must be >= 0 (0 keeps every checkpoint), got {keep}")
    if not folder.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    doomed = [p for _, p in found[:-keep]] if keep else []
    doomed += [p for p in folder.iterdir() if p.name.endswith(".pt.tmp")]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the most steps in the run folder, or None."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    return found[-1][1] if found else None


def read_torch_file(path: Path, what: str = "a checkpoint", error: type[FitloopError] = CheckpointError) -> Any:
    """What ``torch.save`` wrote at ``path`` (tensors and plain values only, to the CPU: a pickle's other globals
    are refused); ``error`` naming the file as not ``what`` for one it cannot read:
    missing, truncated, or not a file torch.save writes (a zip archive, or the pickle of torch < 1.6: SPIN's
    checkpoints, torchvision's weights)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unreadable, truncated or not ours
        reason = f"{type(err).__name__}: {err}"
        try:
            with path.open("rb") as f:
                head = f.read(4)
        except OSError:
            head = None
        if head is not None and head[:2] != b"PK" and head[:1] != b"\x80":   # zip's magic; pickle protocol 2+
            reason = "neither a zip archive nor a pickle: not a file torch.save writes"
        raise error(f"{path}: cannot be read as {what} ({reason})") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain values only) to the CPU and check its format."""
    data = read_torch_file(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fitloop checkpoint")
    if data.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: checkpoint format {data.get('format_version')}, this fitloop reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    return data


def rank_rng_state(data: dict[str, Any], rank: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(CPU RNG state, CUDA RNG state of the rank's device or None) of ``rank`` in a loaded checkpoint."""
    rng = data["rng"]
    if data.get("format_version") == 1:  # rank 0's CPU state for every rank; its CUDA states are not restored
        return rng["torch"], None
    cuda = rng["cuda"][rank] if rng.get("cuda") else None
    return rng["torch"][rank], cuda
