"""The fits table: every SMPL fit fitloop keeps, as a versioned Delta Lake table with best-fit semantics.

SPIN keeps its fits in an N × 82 tensor keyed by row order, overwrites it in place and saves it only on a timeout
(SPIN_REFERENCE §7.3). Here the fits are a Delta table (every version is plain parquet plus a JSON log):

* **An append-only log of improvements.** One row per fit a writer kept (`FITS_SCHEMA`), keyed by the stable
  sample key. Appends never conflict with each other, so writers need no coordination; a commit that loses a
  race is retried (`FitsTable.append`). A writer killed mid-write leaves at most files that no version
  references (`FitsTable.vacuum` removes them): every committed version stays intact and readable.
* **Best so far = an argmin over the log** (`best_of`): per body model and key, the row with the lowest ``loss``.
  Ties go to the earliest fit, and an unscored fit (``loss`` null: imported static fits) loses to any scored one.
  The view is a pure function of the set of rows, so it is correct for any order and any interleaving of appends.
* **Per body model.** A pose and betas mean something only with the body model they were fitted with
  (``body_model_id``, the model's content id), so every best view (`best_of`, `FitsTable.best`, `min_losses`,
  `best_losses`, `diff`) is of one body model: named, or the only one among the rows read. Rows of several models
  with none named raise `MixedBodyModelsError`, which lists them. Compaction keeps each model's best rows.
* **Per frame**, in the same way: a fit's translation (and, off the optical axis, its global orientation) means
  something only with the camera it was made in (``frame``: SPIN's ``crop`` frame or the original ``image``'s
  camera, `fits.schema`), so every best view is also of one frame: named, or the only one among the rows read
  (`MixedFramesError` otherwise). A crop-frame fit never replaces an image-frame one, nor the reverse.
* **Writers append only strict improvements** (`BestLosses`, SPIN's ``new_loss < opt_loss``), which keeps the log
  small. Losses within `LOSS_TIE` (1 %, relative) of each other are one loss: a fit's float32 arithmetic depends
  on the batch it was fitted in (BLAS blocking; SMPLify-X's line search over the batch), so refitting a sample in
  another batch moves its loss (measured: up to 3e-4 relative for body fits, 2e-3 for whole-body ones), and a
  re-run of a seeding flow in other batches would otherwise append a "better" copy of such fits. A writer whose known
  best is stale (another writer improved the key meanwhile) may append a row that is no longer an improvement:
  that costs one row, never correctness, because the view is an argmin.
* **Versions** are Delta versions, one per commit: time travel by version or timestamp, the history of one key,
  a diff of the best fits between two versions. `FitsTable.compact` rewrites the table to its best rows in a new
  version and removes only the files it read, so a fit appended meanwhile survives. `FitsTable.vacuum` deletes
  files that no version inside the retention period references: never a file of the latest version.

**Checked on the way in and on the way out.** Every row is checked where it enters the table
(`fits.schema.check_fits`: finite pose, betas, cam_t and loss, list lengths, a body model content id); a writer
comparing against best losses leaves diverged fits out and counts them. The log, its checkpoint and the latest
version's data files are checked when the table is opened (`check_log`, `check_data_files`); a commit's failure is
an OSError or FitsTableError naming the table (`_writing`); a table is created only in a new or empty folder.

**Exit status.** Every scan reads the parquet files through Arrow's own file system (`_dataset`). deltalake's
``to_pyarrow_dataset()`` reads them by default through a Python file system (``pyarrow.fs.PyFileSystem`` around
its ``DeltaStorageHandler``), with ``pre_buffer``: Arrow's I/O threads then call into Python, and the last
references to the Python file objects can be dropped on those threads. One that does so while the interpreter
finalises takes the GIL, is unwound by ``pthread_exit`` through a ``noexcept`` C++ frame and ends the process in
``std::terminate`` ("terminate called without an active exception", exit status 134), after the script's work
is done. With no Python on Arrow's threads there is nothing to race, whatever was imported first.

The schema and its conventions: `fits.schema`.
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import time as _time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import ColumnProperties, CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from core.killpoint import kill_point
from fits.schema import (
    FITS_SCHEMA,
    FITS_SCHEMA_VERSION,
    QUALITY_COLUMNS,
    RANK_COLUMNS,
    SCHEMA_VERSION_META,
    WHOLEBODY_COLUMNS,
    FitsTableError,
    MixedBodyModelsError,
    MixedFramesError,
    check_fits,
    conform_fits,
    diverged_rows,
    schema_of_version,
)

# Relative difference below which two losses of a key are equal (no improvement): a fit's float32 arithmetic
# depends on the batch it was fitted in (BLAS blocking, batched reductions; SMPLify-X's L-BFGS takes one line search
# over the batch's summed loss), and the fit's iterations amplify that. Measured (CPU, 1 thread): `fitloop fits seed
# SHARDS T<b> --workers 0 --batch-size <b>` into a table per batch size b, each key's loss compared across tables
# (`fitloop fits list T<b> --json --limit 0`). Body fits (SMPLify, open model): batch sizes 1-8, 12, 13, 16, 64 on
# the real COCO excerpt (12 people; also open-small, and --frame image) and synthetic LSP (12, 64, 256 people):
# median 1e-6 to 2e-6, largest 3.1e-4 (poses within 2.4e-4 rad, one at 1.6e-2). Whole-body fits (SMPLify-X,
# open-smplx-small, synthetic COCO-WholeBody, 12 and 40 people, batch sizes 1, 3-5, 7, 12, 16): largest 2.3e-3,
# except 2 of 40 people that batch 1 fitted into another, lower minimum (1.0e-2 and 8.3e-2 lower: other fits,
# 0.2 rad apart, which do improve). 1e-2 keeps every re-seed spread measured 4x (whole-body) to 30x (body) inside
# it, and is far below any change a refit is run for. The trainer's own choice stays SPIN's strict < (step.py).
LOSS_TIE = 1e-2
DEFAULT_RETENTION_HOURS = 168  # Delta's default: a week of versions stays readable after a compaction
TABLE_NAME = "fitloop fits"
TABLE_DESCRIPTION = (f"fitloop fits table, schema_version={FITS_SCHEMA_VERSION}: an append-only log of SMPL and "
                     "SMPL-X fit improvements keyed by sample key; the best fit per key is the row with the lowest "
                     "loss.")
# Small row groups: history() skips those whose key range misses. No dictionaries for the float columns and the
# unique keys: the writer would build them only to give up (half the write time).
_STAGING = re.compile(r"#\d+$")  # object_store writes "<file>#<n>", then links or renames it into place
_WRITER = WriterProperties(compression="SNAPPY", max_row_group_size=64 * 1024, column_properties={
    name: ColumnProperties(dictionary_enabled=False)
    for name in ("key", "pose", "betas", "cam_t", "intrinsics", "loss", "reprojection_loss", "pose_prior",
                 "angle_prior", "shape_prior", *QUALITY_COLUMNS, *WHOLEBODY_COLUMNS, "time")})


@dataclass(frozen=True)
class AppendResult:
    """What one `FitsTable.append` did: ``version`` committed (None: nothing to write), rows written of offered, and
    how many of those offered were diverged fits left out."""

    version: int | None
    rows: int
    offered: int
    retries: int = 0
    diverged: int = 0  # offered rows left out as no fit (`fits.schema.diverged_rows`; appends with known best losses)


class VacuumedVersionError(FitsTableError):
    """A version of the table whose data files a vacuum deleted (`FitsTable.vacuum`): it can no longer be read.

    Attributes: path (the table), version, vacuum_version and vacuum_time (the VACUUM START commit that deleted
    them, ISO time), readable (the versions that can still be read, as text: "0, 2-4"), latest (version)."""

    def __init__(self, path: Path, version: int, vacuum: dict[str, Any], readable: str, latest: int) -> None:
        self.path, self.version, self.readable, self.latest = path, version, readable, latest
        self.vacuum_version, self.vacuum_time = vacuum["version"], _timestamp(vacuum["timestamp"])
        super().__init__(f"{path}: version {version} can no longer be read: the vacuum at version "
                         f"{self.vacuum_version} ({self.vacuum_time}) deleted its data files (a vacuum deletes the "
                         f"files no version younger than its retention needs); versions {readable} can still be "
                         f"read (fitloop fits versions {path})")


def _retention_ms(vacuum: dict[str, Any]) -> int:
    """The retention a VACUUM START commit ran with, ms (what it records; Delta's default, a week, otherwise)."""
    parameters = vacuum.get("operationParameters") or {}
    value = parameters.get("specifiedRetentionMillis") or parameters.get("defaultRetentionMillis")
    try:
        return int(value)
    except (TypeError, ValueError):
        return DEFAULT_RETENTION_HOURS * 3600 * 1000


def version_ranges(versions: Sequence[int]) -> str:
    """Sorted version numbers as text, runs joined: [0, 2, 3, 4] -> "0, 2-4"; "none" when empty."""
    runs: list[list[int]] = []
    for version in versions:
        if runs and version == runs[-1][1] + 1:
            runs[-1][1] = version
        else:
            runs.append([version, version])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "none"


def contents_text(held: dict[str, Any]) -> str:
    """`FitsTable.contents` in words: "N rows, of body models A (n), ...; frames ...; datasets ...", or "no fits"."""
    if not held["rows"]:
        return "no fits"
    return f"{held['rows']} rows, of " + "; ".join(
        f"{name.replace('_', ' ')} " + ", ".join(f"{value} ({rows})" for value, rows in held[name].items())
        for name in ("body_models", "frames", "datasets") if held[name])


def _argmin_rows(fits: pa.Table) -> pa.Array:
    """Row indices of the best fit per key (`RANK_COLUMNS` order, nulls last), in key order."""
    if fits.num_rows == 0:
        return pa.array([], pa.uint64())
    # Arrow's sort is stable and puts nulls (unscored losses) last by default.
    order = pc.sort_indices(fits.select(list(RANK_COLUMNS)), sort_keys=[(name, "ascending") for name in RANK_COLUMNS])
    keys = fits["key"].take(order)
    first = np.ones(len(order), dtype=bool)
    first[1:] = pc.not_equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)
    return order.filter(pa.array(first))


def body_model_counts(fits: pa.Table) -> dict[str, int]:
    """Rows per body model (``body_model_id``) of a table of fits, sorted by id."""
    if fits.num_rows == 0:
        return {}
    counts = pc.value_counts(fits["body_model_id"])
    return dict(sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))


def one_body_model(fits: pa.Table, where: str = "these fits") -> str | None:
    """The one body model of ``fits`` (None: no rows); `MixedBodyModelsError` listing them when there are several."""
    models = pc.unique(fits["body_model_id"])
    if len(models) > 1:
        raise MixedBodyModelsError(body_model_counts(fits), where)
    return models[0].as_py() if len(models) else None


def frame_counts(fits: pa.Table) -> dict[str, int]:
    """Rows per frame (``frame``: crop, image) of a table of fits, sorted."""
    if fits.num_rows == 0:
        return {}
    counts = pc.value_counts(fits["frame"])
    return dict(sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))


def one_frame(fits: pa.Table, where: str = "these fits") -> str | None:
    """The one frame of ``fits`` (None: no rows); `MixedFramesError` listing them when there are two."""
    frames = pc.unique(fits["frame"])
    if len(frames) > 1:
        raise MixedFramesError(frame_counts(fits), where)
    return frames[0].as_py() if len(frames) else None


def best_of(fits: pa.Table, body_model_id: str | None = None, *, frame: str | None = None,
            where: str = "these fits") -> pa.Table:
    """The best fit per key of a log of fits: lowest ``loss``; unscored (null) last; ties to the earliest
    ``time``, then run_id, epoch, step. One row per key, sorted by key. A function of the set of rows only.

    A best fit is of one body model and one frame: the rows of ``body_model_id`` and ``frame`` when given; else
    the rows must hold one model (`MixedBodyModelsError`) and one frame (`MixedFramesError`), naming ``where``.
    A log read without the body_model_id (frame) column is taken as one model's (frame's): its reader selected it
    (`fits.store.FitsStore.load`)."""
    if "body_model_id" in fits.column_names:
        if body_model_id is not None:
            fits = fits.filter(pc.equal(fits["body_model_id"], body_model_id))
        else:
            one_body_model(fits, where)
    if "frame" in fits.column_names:
        if frame is not None:
            fits = fits.filter(pc.equal(fits["frame"], frame))
        else:
            one_frame(fits, where)
    return fits.take(_argmin_rows(fits))


class BestLosses:
    """The best loss per key a writer knows, to append only strict improvements (SPIN: ``new_loss < opt_loss``).

    A fit improves on a key when the key is unknown, or when its loss is scored and lower than the known best by
    more than `LOSS_TIE` of it (any scored loss beats an unscored one). A NaN or infinite loss never improves (as
    in SPIN's comparison), nor does a fit whose pose, betas, cam_t or intrinsics hold a NaN or inf, whatever its
    loss (`fits.schema.diverged_rows`).
    Within one batch only the batch's best fit per key can improve: a fit superseded inside the same commit would
    never be visible in any version.

    The losses are of one body model, ``body_model_id``, and one frame, ``frame`` (each None until the first
    append when read from a table without such fits): `FitsTable.append` refuses fits of another model or frame
    against them.

    Held as arrays: the keys (Arrow), their losses (float64, NaN = unscored) and keys added since (a dict, merged
    into the arrays when it grows). Large batches are looked up with one Arrow hash join, small ones (a training
    step) through a pandas index built once.
    """

    SMALL_BATCH = 4096  # below this, look up through the cached pandas index instead of hashing every key again

    def __init__(self, keys: Sequence[str] | pa.Array = (), losses: Sequence[float] | np.ndarray = (),
                 body_model_id: str | None = None, frame: str | None = None) -> None:
        self._keys = pa.array(keys, pa.string()) if not isinstance(keys, pa.Array) else keys.cast(pa.string())
        self._loss = np.array(losses, dtype=np.float64)  # a copy: the caller's array is never written to
        if len(self._keys) != len(self._loss) or len(pc.unique(self._keys)) != len(self._keys):
            raise FitsTableError("BestLosses needs one loss per key and unique keys")
        self._added: dict[str, float] = {}
        self._index: pd.Index | None = None
        self.body_model_id = body_model_id
        self.frame = frame

    @classmethod
    def of(cls, best: pa.Table, body_model_id: str | None = None, frame: str | None = None) -> "BestLosses":
        """From a best view or `min_losses` of ``body_model_id`` and ``frame`` (columns key and loss, one row per
        key: not checked again)."""
        known = cls.__new__(cls)
        known._keys = best["key"].combine_chunks().cast(pa.string())
        known._loss = best["loss"].cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False).copy()
        known._added, known._index = {}, None
        known.body_model_id = body_model_id
        known.frame = frame
        return known

    def check_model(self, fits: pa.Table) -> None:
        """Refuse ``fits`` unless they are all of this body model and frame (taken as theirs while still None)."""
        model = one_body_model(fits, "one append against known best losses")
        frame = one_frame(fits, "one append against known best losses")
        if model is None:
            return
        if self.body_model_id is None:
            self.body_model_id = model
        elif model != self.body_model_id:
            raise FitsTableError(f"these fits are of body model {model}, the best losses they are compared with "
                                 f"of {self.body_model_id}: read those with best_losses(body_model_id={model!r})")
        if self.frame is None:
            self.frame = frame
        elif frame != self.frame:
            raise FitsTableError(f"these fits are of frame {frame}, the best losses they are compared with of "
                                 f"frame {self.frame}: read those with best_losses(frame={frame!r})")

    def __len__(self) -> int:
        return len(self._keys) + len(self._added)

    def get(self, key: str) -> float | None:
        """The known best loss of ``key`` (NaN: unscored), or None when the key is unknown."""
        known, loss = self._lookup(pa.array([key], pa.string()))
        return float(loss[0]) if known[0] else None

    def _positions(self, keys: pa.Array) -> np.ndarray:
        """Position of each key in the arrays, -1 where absent."""
        if len(keys) >= self.SMALL_BATCH:
            return pc.fill_null(pc.index_in(keys, value_set=self._keys), -1).to_numpy()
        if self._index is None:
            self._index = pd.Index(self._keys.to_pandas())
        return self._index.get_indexer(keys.to_pandas())

    def _lookup(self, keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(known (B,) bool, loss (B,) float64) of each key."""
        positions = self._positions(keys)
        known = positions >= 0
        loss = np.full(len(keys), np.nan)
        loss[known] = self._loss[positions[known]]
        if self._added:
            for i in np.flatnonzero(~known):
                value = self._added.get(keys[i].as_py())
                if value is not None:
                    known[i], loss[i] = True, value
        return known, loss

    def improved(self, fits: pa.Table, diverged: np.ndarray | None = None) -> np.ndarray:
        """(B,) bool: which rows of ``fits`` are strict improvements on what is known. A diverged fit (a NaN or
        infinite pose, betas, cam_t, intrinsics or loss: `fits.schema.diverged_rows`, or ``diverged`` when the
        caller has it) is no fit and never one."""
        rows = np.flatnonzero(~(diverged_rows(fits) if diverged is None else diverged))
        usable = fits if len(rows) == fits.num_rows else fits.take(pa.array(rows, pa.int64()))
        if len(pc.unique(usable["key"])) == usable.num_rows:
            candidates = np.arange(usable.num_rows)
        else:
            candidates = _argmin_rows(usable.select(list(RANK_COLUMNS))).to_numpy()
        known, old = self._lookup(usable["key"].take(candidates).combine_chunks())
        loss = usable["loss"].take(candidates)
        unscored = loss.is_null().to_numpy(zero_copy_only=False)
        new = loss.cast(pa.float64()).fill_null(np.nan).to_numpy()
        with np.errstate(invalid="ignore"):
            better = ~known | (~unscored & (np.isnan(old) | (new < old - LOSS_TIE * np.abs(old))))
        mask = np.zeros(fits.num_rows, dtype=bool)
        mask[rows[candidates[better]]] = True
        return mask

    def record(self, fits: pa.Table) -> None:
        """Take the rows of ``fits`` (one per key, each an improvement) as the new best of their keys."""
        keys = fits["key"].combine_chunks()
        losses = fits["loss"].cast(pa.float64()).fill_null(np.nan).to_numpy()
        positions = self._positions(keys)
        known = positions >= 0
        self._loss[positions[known]] = losses[known]
        fresh = np.flatnonzero(~known)
        if len(fresh) + len(self._added) < max(self.SMALL_BATCH, len(self._keys) // 100):
            self._added.update(zip(keys.take(fresh).to_pylist(), losses[fresh].tolist()))
            return
        self._added.update(zip(keys.take(fresh).to_pylist(), losses[fresh].tolist()))  # merge into the arrays
        self._keys = pa.concat_arrays([self._keys, pa.array(list(self._added), pa.string())])
        self._loss = np.concatenate([self._loss, np.fromiter(self._added.values(), np.float64, len(self._added))])
        self._added, self._index = {}, None


def _retrying(action, max_retries: int):
    """Run ``action()``; on a lost commit race (`CommitFailedError`) wait with jitter and run it again."""
    for attempt in range(max_retries + 1):
        try:
            return action(), attempt
        except CommitFailedError:
            if attempt == max_retries:
                raise
            _time.sleep(min(2.0, 0.02 * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _timestamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


class FitsTable:
    """A Delta table of fits at ``path``; see the module docstring. Get one with `create` or `open`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, *, exist_ok: bool = False) -> "FitsTable":
        """Create an empty fits table (or open the existing one when ``exist_ok``) at ``path``: a new or empty folder;
        any other folder (a shard set, a run folder, a damaged table) or a file is refused (FitsTableError)."""
        path = Path(path)
        if _is_table(path):
            if exist_ok:
                return cls.open(path)
            raise FitsTableError(f"{path} is already a Delta table")
        _check_free_for_table(path)
        path.mkdir(parents=True, exist_ok=True)
        with _writing(path, "creating the fits table"):
            DeltaTable.create(str(path), FITS_SCHEMA, name=TABLE_NAME, description=TABLE_DESCRIPTION)
        return cls(path)

    @classmethod
    def existing_or_free(cls, path: str | Path) -> "FitsTable | None":
        """The fits table at ``path`` (opened: its schema checked), or None where `create` may make one (nothing
        there, an empty folder); FitsTableError for anything else. What ``create(exist_ok=True)`` checks, writing
        nothing: a caller can refuse bad input before it writes elsewhere."""
        path = Path(path)
        if _is_table(path):
            return cls.open(path)
        _check_free_for_table(path)
        return None

    @classmethod
    def open(cls, path: str | Path) -> "FitsTable":
        """Open an existing fits table, checking its columns and schema version (a version-1 table names its
        body models by file: FitsTableError saying how to relabel it, `relabel_body_models`)."""
        path = Path(path)
        found = _schema_version(path)
        if found == 4:
            raise FitsTableError(
                f"{path} has fits schema version 4: it has no whole-body columns (SMPL-X hand, jaw and eye poses, "
                f"expression). Upgrade it once, in a new version (its fits are body-only fits: null): "
                f"`fitloop fits upgrade {path}`")
        if found == 3:
            raise FitsTableError(
                f"{path} has fits schema version 3: its fits have no quality record columns (reprojection per body "
                f"part, facing, candidates). Upgrade it once, in a new version (its fits get none: null): "
                f"`fitloop fits upgrade {path}`")
        if found == 2:
            raise FitsTableError(
                f"{path} has fits schema version 2: its fits do not say which camera their cam_t is in (all of them "
                f"are in SPIN's crop frame, the only one fitloop made then) and have no quality record. Upgrade it "
                f"once, in a new version: `fitloop fits upgrade {path}`")
        if found == 1:
            raise FitsTableError(
                f"{path} has fits schema version 1: its fits name their body model by file (name@file digest, or "
                f"smpl-neutral-10 for imports), and this fitloop knows body models by content. Relabel it once: "
                f"`fitloop fits relabel {path}` lists its old ids, then `fitloop fits relabel {path} --map "
                f"OLD_ID=MODEL ...` (MODEL: open, a model file, or a content id from `fitloop model info`)")
        if found != FITS_SCHEMA_VERSION:
            raise FitsTableError(f"{path} has fits schema version {found}; this fitloop reads {FITS_SCHEMA_VERSION}")
        return cls(path)

    def _snapshot(self, version: int | None = None, timestamp: datetime | str | None = None) -> DeltaTable:
        """The table as of ``version`` or ``timestamp`` (the last commit at or before it), else the latest."""
        if version is not None and timestamp is not None:
            raise FitsTableError("give a version or a timestamp, not both")
        try:
            table = DeltaTable(str(self.path))
            latest = table.version()
            if version is not None and not 0 <= version <= latest:  # deltalake: OverflowError, or its text
                raise FitsTableError(f"{self.path}: no version {version}; {self._versions_text(table)}")
            if version is not None or timestamp is not None:
                table.load_as_version(version if version is not None else timestamp)
        except (DeltaError, TableNotFoundError, ValueError) as err:
            at = f"version {version}" if version is not None else f"timestamp {timestamp}"
            raise FitsTableError(f"{self.path}: cannot load {at}: {' '.join(str(err).split())}") from err
        if timestamp is not None:
            self._check_after_first_commit(table, timestamp)
        if table.version() != latest:  # the latest version's files are checked when the table opens
            self._check_readable(table)
        return table

    def _check_readable(self, snapshot: DeltaTable) -> None:
        """Refuse an older version whose data files are gone, before a read fails on them: `VacuumedVersionError`
        naming the vacuum that deleted them and the versions that can still be read; a file gone with no vacuum
        recorded after it is FitsTableError (deleted outside fitloop: restore it from a backup)."""
        adds = pa.table(snapshot.get_add_actions(flatten=True))
        names = adds["path"].to_pylist() if adds.num_rows else []
        missing = next((name for name in names if not (self.path / unquote(name)).is_file()), None)
        if missing is None:
            return
        version = snapshot.version()
        commits = {entry["version"]: entry for entry in DeltaTable(str(self.path)).history()}
        gone = self._unreadable(commits, self._file_spans(commits))
        still = version_ranges([v for v in sorted(commits) if v not in gone])
        vacuum = gone.get(version)
        if vacuum is None:
            raise FitsTableError(
                f"{self.path / unquote(missing)}: a data file of fits table version {version} is missing and no "
                f"vacuum is recorded after that version (deleted outside fitloop?): restore it from a backup; "
                f"versions {still} can still be read (fitloop fits versions {self.path})")
        raise VacuumedVersionError(self.path, version, vacuum, still, max(commits))

    def _file_spans(self, commits: dict[int, dict[str, Any]]) -> dict[str, tuple[int, int]]:
        """The versions each data file is part of, first and last: a file Delta removes never comes back."""
        table, spans = DeltaTable(str(self.path), version=min(commits)), {}
        for version in sorted(commits):
            table.load_as_version(version)
            adds = pa.table(table.get_add_actions(flatten=True))
            for name in adds["path"].to_pylist() if adds.num_rows else ():
                spans[name] = (spans.get(name, (version,))[0], version)
        return spans

    def _unreadable(self, commits: dict[int, dict[str, Any]],
                    spans: dict[str, tuple[int, int]]) -> dict[int, dict[str, Any] | None]:
        """The versions that can no longer be read (a data file of theirs is gone), each with the VACUUM START
        commit that deleted it: the first vacuum after the commit that removed the file from the table whose
        retention had passed by then (else the first vacuum after it); None where no vacuum is recorded after."""
        vacuums = [commits[v] for v in sorted(commits) if commits[v].get("operation") == "VACUUM START"]
        gone: dict[int, dict[str, Any] | None] = {}
        for name, (first, last) in spans.items():
            if (self.path / unquote(name)).is_file():
                continue
            removed = commits.get(last + 1, {}).get("timestamp", 0)  # when the table dropped the file
            after = [v for v in vacuums if v["version"] > last]
            due = [v for v in after if v["timestamp"] - _retention_ms(v) >= removed]
            vacuum = (due or after or [None])[0]
            for version in range(first, last + 1):
                known = gone.get(version)
                if version not in gone or (vacuum is not None and (known is None
                                                                   or vacuum["version"] < known["version"])):
                    gone[version] = vacuum
        return gone

    def _versions_text(self, table: DeltaTable) -> str:
        """Which versions the table has, for a message naming one it has not."""
        first, last = min(entry["version"] for entry in table.history()), table.version()
        listed = f"its only version is {last}" if first == last else f"its versions are {first}-{last}"
        return f"{listed} (fitloop fits versions {self.path})"

    def _check_after_first_commit(self, table: DeltaTable, timestamp: datetime | str) -> None:
        """Refuse a timestamp before the table's first commit: deltalake reads its first version then (an empty
        table), which would look like a table without fits."""
        commits = DeltaTable(str(self.path)).history()
        first = min(commits, key=lambda entry: entry["version"])
        if table.version() != first["version"]:
            return
        moment = parse_timestamp(timestamp) if isinstance(timestamp, str) else timestamp
        moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        if (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1) < first["timestamp"]:
            raise FitsTableError(f"{self.path}: no version as of {moment.isoformat()}: its first commit (version "
                                 f"{first['version']}) is at {_timestamp(first['timestamp'])} (fitloop fits versions "
                                 f"{self.path})")

    def append(self, fits: pa.Table, *, best: BestLosses | None = None, max_retries: int = 8) -> AppendResult:
        """Append ``fits`` (`FITS_SCHEMA`) in one commit; with ``best``, only its strict improvements (see
        `BestLosses`), and record them in ``best``. A lost commit race is retried; the commit either lands whole or
        not at all. ``rows`` < ``offered`` in the result counts the fits that were not improvements."""
        fits = conform_fits(fits)
        offered, diverged = fits.num_rows, 0
        if best is not None:
            best.check_model(fits)
            no_fit = diverged_rows(fits)
            diverged = int(no_fit.sum())
            fits = fits.filter(pa.array(best.improved(fits, no_fit)))
        fits = check_fits(fits)  # the rows to write; without ``best``, a diverged fit is refused here
        if fits.num_rows == 0:
            return AppendResult(None, 0, offered, diverged=diverged)
        fits = fits.sort_by("key")  # sorted files: key statistics let history() skip row groups
        meta = CommitProperties(custom_metadata={"fitloop.rows": str(fits.num_rows),
                                                 "fitloop.runs": ",".join(pc.unique(fits["run_id"]).to_pylist())})

        def commit() -> int:
            table = DeltaTable(str(self.path))
            with _writing(self.path, f"committing {fits.num_rows} fits"):
                write_deltalake(table, fits, mode="append", writer_properties=_WRITER, commit_properties=meta)
            return table.version()

        kill_point("fits.append")
        version, retries = _retrying(commit, max_retries)
        kill_point("fits.commit")
        if best is not None:
            best.record(fits)
        return AppendResult(version, fits.num_rows, offered, retries, diverged)

    def log(self, *, version: int | None = None, timestamp: datetime | str | None = None,
            columns: Sequence[str] | None = None, where: pc.Expression | None = None) -> pa.Table:
        """Every row of the table as of a version (default the latest), in `FITS_SCHEMA` types."""
        table = _scan(self._snapshot(version, timestamp), self.path, columns=columns, where=where)
        schema = pa.schema([FITS_SCHEMA.field(name) for name in table.schema.names])
        return table.cast(schema)

    def _at(self, version: int | None, timestamp: datetime | str | None = None) -> str:
        """Where a read looks, for messages: the table and its version or timestamp."""
        at = (f" version {version}" if version is not None else f" as of {timestamp}" if timestamp is not None
              else "")
        return f"{self.path}{at}"

    def body_models(self, *, version: int | None = None, timestamp: datetime | str | None = None) -> dict[str, int]:
        """Rows per body model (content id) as of a version or timestamp, sorted by id."""
        return body_model_counts(self.log(version=version, timestamp=timestamp, columns=["body_model_id"]))

    def contents(self, *, version: int | None = None, timestamp: datetime | str | None = None) -> dict[str, Any]:
        """What the table holds as of a version or timestamp (default the latest), for a filter that selected
        nothing to say what there is: ``{"version": read, "latest", "rows", "body_models", "frames",
        "datasets"}``, the last three rows per value, sorted."""
        snapshot = self._snapshot(version, timestamp)
        log = _scan(snapshot, self.path, columns=["body_model_id", "frame", "dataset"])
        counts = {}
        for name, column in (("body_models", "body_model_id"), ("frames", "frame"), ("datasets", "dataset")):
            found = pc.value_counts(log[column]) if log.num_rows else None
            counts[name] = {} if found is None else dict(sorted(zip(found.field("values").to_pylist(),
                                                                    found.field("counts").to_pylist())))
        return {"version": snapshot.version(), "latest": DeltaTable(str(self.path)).version(), "rows": log.num_rows,
                **counts}

    def best(self, *, version: int | None = None, timestamp: datetime | str | None = None,
             dataset: str | None = None, body_model_id: str | None = None, frame: str | None = None) -> pa.Table:
        """The best fit per key (`best_of`) of one body model and frame as of a version or timestamp, optionally of
        one dataset only. ``body_model_id`` (``frame``) None: the rows read must hold one model (frame), else
        `MixedBodyModelsError` (`MixedFramesError`)."""
        where = None if dataset is None else pc.field("dataset") == dataset
        for column, value in (("body_model_id", body_model_id), ("frame", frame)):
            if value is not None:
                where = pc.field(column) == value if where is None else where & (pc.field(column) == value)
        rows = self.log(version=version, timestamp=timestamp, where=where)
        return best_of(rows, body_model_id, frame=frame, where=self._at(version, timestamp)
                       + (f" (dataset {dataset})" if dataset else ""))

    def _min_losses(self, version: int | None, body_model_id: str | None,
                    frame: str | None = None) -> tuple[pa.Table, str | None, str | None]:
        """(`min_losses`, the body model and the frame they are of: the ones named or the ones present, None when
        empty)."""
        where = None
        for column, value in (("body_model_id", body_model_id), ("frame", frame)):
            if value is not None:
                where = pc.field(column) == value if where is None else where & (pc.field(column) == value)
        log = self.log(version=version, columns=["key", "loss", "body_model_id", "frame"], where=where)
        body_model_id = body_model_id or one_body_model(log, self._at(version))
        frame = frame or one_frame(log, self._at(version))
        log = log.select(["key", "loss"])
        mins = log.group_by("key").aggregate([("loss", "min")]).rename_columns(["key", "loss"])  # min skips nulls
        return mins, body_model_id, frame

    def min_losses(self, *, version: int | None = None, body_model_id: str | None = None,
                   frame: str | None = None) -> pa.Table:
        """The best loss per key (columns key, loss; null = unscored) of one body model and frame (as `best`)
        without the rest of the best rows: a group-by min over two columns, cheaper than `best`."""
        return self._min_losses(version, body_model_id, frame)[0]

    def best_losses(self, *, version: int | None = None, body_model_id: str | None = None,
                    frame: str | None = None) -> BestLosses:
        """The best loss per key of one body model and frame (as `best`): what a writer reads once per epoch to
        append only improvements."""
        mins, model, frame = self._min_losses(version, body_model_id, frame)
        return BestLosses.of(mins, model, frame)

    def history(self, key: str, *, version: int | None = None,
                timestamp: datetime | str | None = None) -> pa.Table:
        """Every row of one key as of a version, oldest first (rows of the same time: by decreasing loss, unscored
        first, the order improvements are appended in). Rows a compaction dropped live on in the versions before
        it, until a vacuum removes their files."""
        rows = self.log(version=version, timestamp=timestamp, where=pc.field("key") == key)
        times = rows["time"].cast(pa.int64()).to_numpy()
        losses = rows["loss"].cast(pa.float64()).fill_null(np.inf).to_numpy()
        return rows.take(np.lexsort((-losses, times)))

    def files(self, *, version: int | None = None) -> list[str]:
        """The parquet files of a version: read them with any parquet reader (dask: ``dd.read_parquet(files)``)."""
        return self._snapshot(version).file_uris()

    def versions(self) -> list[dict[str, Any]]:
        """Every version in the log: ``{"version", "rows", "timestamp", "operation", "body_models", "readable",
        "vacuumed_at"}``, oldest first. ``rows`` and ``body_models`` (rows per body model id) are what the log
        records, also for a version that can no longer be read (``body_models`` None where that needs a file a
        vacuum removed); ``readable`` False where a data file of the version is gone, with ``vacuumed_at`` the
        version of the vacuum that deleted it (None: no vacuum recorded after it, the file was deleted outside
        fitloop)."""
        latest = DeltaTable(str(self.path))
        commits = {entry["version"]: entry for entry in latest.history()}
        table, out = DeltaTable(str(self.path), version=min(commits)), []
        per_file: dict[str, dict[str, int] | None] = {}  # versions share files: each is counted once
        spans: dict[str, tuple[int, int]] = {}  # the versions each file is part of, first and last
        for version in sorted(commits):
            table.load_as_version(version)
            adds = pa.table(table.get_add_actions(flatten=True))
            rows = int(pc.sum(adds["num_records"]).as_py() or 0) if adds.num_rows else 0
            models: dict[str, int] | None = {}
            for add in adds.to_pylist() if adds.num_rows else ():
                spans[add["path"]] = (spans.get(add["path"], (version,))[0], version)
                if add["path"] not in per_file:
                    per_file[add["path"]] = self._file_body_models(add)
                counts = per_file[add["path"]]
                if counts is None or models is None:
                    models = None
                    continue
                for model, n in counts.items():
                    models[model] = models.get(model, 0) + n
            out.append({"version": version, "rows": rows, "timestamp": _timestamp(commits[version]["timestamp"]),
                        "operation": commits[version].get("fitloop.operation", commits[version]["operation"]),
                        "body_models": None if models is None else dict(sorted(models.items()))})
        gone = self._unreadable(commits, spans)
        for entry in out:
            vacuum = gone.get(entry["version"])
            entry["readable"] = entry["version"] not in gone
            entry["vacuumed_at"] = None if vacuum is None else vacuum["version"]
        return out

    def _file_body_models(self, add: dict[str, Any]) -> dict[str, int] | None:
        """Rows per body model of one data file: from the log's column statistics when the file holds one model
        (every append), else by reading its body_model_id column; None when the file is gone (vacuumed)."""
        low, high = add.get("min.body_model_id"), add.get("max.body_model_id")
        if low is not None and low == high:
            return {low: int(add["num_records"])}
        path = self.path / unquote(add["path"])
        if not path.is_file():
            return None
        return body_model_counts(pq.read_table(path, columns=["body_model_id"]))

    def diff(self, v1: int, v2: int, *, body_model_id: str | None = None, frame: str | None = None) -> dict[str, Any]:
        """How the best fits of one body model and frame (as `best`; over both versions) changed from version
        ``v1`` to ``v2``: keys improved (lower loss, or scored where they were unscored), added, worse, removed,
        and the loss decrease (px²) of the improved scored keys."""
        (old, m1, f1), (new, m2, f2) = (self._min_losses(v1, body_model_id, frame),
                                        self._min_losses(v2, body_model_id, frame))
        if m1 is not None and m2 is not None and m1 != m2:
            raise MixedBodyModelsError({m1: old.num_rows, m2: new.num_rows},
                                       f"{self.path} versions {v1} and {v2} (keys per version)")
        if f1 is not None and f2 is not None and f1 != f2:
            raise MixedFramesError({f1: old.num_rows, f2: new.num_rows},
                                   f"{self.path} versions {v1} and {v2} (keys per version)")
        model = m1 or m2
        joined = new.join(old.rename_columns(["key", "old"]), "key", join_type="full outer")
        in_old = pc.is_in(joined["key"], value_set=old["key"].combine_chunks()).to_numpy(zero_copy_only=False)
        in_new = pc.is_in(joined["key"], value_set=new["key"].combine_chunks()).to_numpy(zero_copy_only=False)
        a = joined["old"].cast(pa.float64()).fill_null(np.nan).to_numpy()  # NaN: unscored, or no such key
        b = joined["loss"].cast(pa.float64()).fill_null(np.nan).to_numpy()
        both_in = in_old & in_new
        with np.errstate(invalid="ignore"):
            lower = both_in & (b < a)
            scored = both_in & np.isnan(a) & ~np.isnan(b)
            worse = both_in & ((b > a) | (~np.isnan(a) & np.isnan(b)))
        drop = (a - b)[lower]
        return {
            "body_model_id": model, "frame": f1 or f2,
            "from_version": v1, "to_version": v2, "keys_before": int(in_old.sum()), "keys_after": int(in_new.sum()),
            "improved": int(lower.sum() + scored.sum()), "newly_scored": int(scored.sum()),
            "added": int((in_new & ~in_old).sum()), "removed": int((in_old & ~in_new).sum()),
            "worse": int(worse.sum()), "unchanged": int(both_in.sum() - lower.sum() - scored.sum() - worse.sum()),
            "loss_decrease": {
                "total": float(drop.sum()), "mean": float(drop.mean()) if drop.size else 0.0,
                "median": float(np.median(drop)) if drop.size else 0.0, "max": float(drop.max()) if drop.size else 0.0,
                "mean_relative": float((drop / a[lower]).mean()) if drop.size else 0.0,
            },
        }

    def compact(self, *, max_retries: int = 8, on_stage: Callable[[str], None] | None = None,
                drop_diverged: bool = False) -> int:
        """Rewrite the table to its best fits (one row per key, body model and frame) in a new version; returns that
        version. ``on_stage(name)`` is called as each stage starts ("read", "best", "write"). Diverged fits (NaN or
        inf: written before fits were checked where they enter the table) are FitsTableError naming them, or, with
        ``drop_diverged``, left out before the best fits are taken (the key's best valid fit stays).

        Only the files read are removed, so fits appended while compacting stay (the best view is an argmin, so
        nothing they improve is lost). Two compactions racing: one retries on the new latest version.
        """
        stage = on_stage or (lambda name: None)
        version, _ = _retrying(lambda: self._compact_from(DeltaTable(str(self.path)), stage, drop_diverged),
                               max_retries)
        kill_point("fits.compacted")
        return version

    def _compact_from(self, snapshot: DeltaTable, stage: Callable[[str], None] = lambda name: None,
                      drop_diverged: bool = False) -> int:
        """Commit the best fits of ``snapshot`` in place of the files it holds (see `compact`)."""
        read_version = snapshot.version()
        stage("read")
        log, _ = _without_diverged(_scan(snapshot, self.path).cast(FITS_SCHEMA), self.path, drop_diverged, "compact")
        stage("best")
        best = pa.concat_tables([best_of(log, model, frame=frame) for model in body_model_counts(log)
                                 for frame in frame_counts(log)] or [log.slice(0, 0)])
        meta = CommitProperties(custom_metadata={"fitloop.operation": "COMPACT",
                                                 "fitloop.compacted_from": str(read_version),
                                                 "fitloop.rows": str(best.num_rows)})
        stage("write")
        kill_point("fits.compact")
        with _writing(self.path, "committing the compacted fits"):
            write_deltalake(snapshot, best, mode="overwrite", writer_properties=_WRITER, commit_properties=meta)
        return snapshot.version()

    def vacuum(self, *, retention_hours: int = DEFAULT_RETENTION_HOURS, dry_run: bool = False) -> list[str]:
        """Delete files no version of the last ``retention_hours`` references, and files killed writers left;
        returns them. Files of the latest version are never deleted. Versions older than the retention stop
        being readable. A retention shorter than the longest write in progress can delete a running writer's
        not-yet-committed file and fail its commit: keep it above that (the default is a week)."""
        if retention_hours < 0:
            raise FitsTableError(f"retention_hours must be >= 0, got {retention_hours}")
        table = DeltaTable(str(self.path))
        removed = table.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False,
                               full=True)
        # A writer killed while a file was being stored leaves its staging copy ("<file>#<n>", data files and
        # commit files alike); no reader looks at these and Delta's vacuum does not list them.
        cutoff = _time.time() - 3600 * retention_hours
        staged = [p for p in self.path.rglob("*") if _STAGING.search(p.name) and p.is_file()
                  and p.stat().st_mtime < cutoff]
        for path in staged if not dry_run else ():
            path.unlink(missing_ok=True)
        return removed + [p.relative_to(self.path).as_posix() for p in staged]


def _is_table(path: Path) -> bool:
    """Whether ``path`` is a folder holding a Delta table (deltalake's check raises on a file)."""
    try:
        return path.is_dir() and DeltaTable.is_deltatable(str(path))
    except OSError:
        return False


def _check_free_for_table(path: Path) -> None:
    """Refuse to create a fits table at ``path`` unless it is absent or an empty folder: a table made inside a
    shard set or a run folder would mix its files with theirs (and a later cleanup of either would take both)."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FitsTableError(f"{path} is a file, not a fits table folder: give a new or empty folder for the table")
    if (path / "_delta_log").is_dir():
        raise FitsTableError(f"{path} has a _delta_log that does not open as a Delta table (damaged, or its first "
                             f"commit is missing): restore it from a backup, or give a new folder for the table")
    entries = sorted(p.name for p in path.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise FitsTableError(f"{path} is a folder that is not a fits table ({shown}): refusing to create a table "
                             f"inside it; give a new or empty folder (or the fits table's own folder)")


LOW_SPACE_BYTES = 16 << 20  # a write that fails with less free than this on the table's disk failed for space


def _nearly_full(path: Path) -> bool:
    """Whether the disk that holds ``path`` (or its nearest existing parent) has less than `LOW_SPACE_BYTES` free."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        return existing is not None and shutil.disk_usage(existing).free < LOW_SPACE_BYTES
    except OSError:
        return False


# errno of each "(os error N)" an object store error ends in (deltalake reports the local file system's errors so)
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


@contextmanager
def _writing(path: Path, what: str) -> Iterator[None]:
    """Turn deltalake's errors while writing the table at ``path`` into ones that say where and what to do: an
    OS error it reports as text ("Generic LocalFileSystem error: ... No space left on device (os error 28)")
    becomes an `OSError` of that errno naming the table (the CLI adds the advice: free space, permissions, ...);
    any other becomes a FitsTableError. Nothing of a failed commit is in the table (a commit lands whole or not
    at all); files it left unreferenced go with the next `FitsTable.vacuum`. A lost commit race
    (`CommitFailedError`) passes through, to be retried."""
    try:
        yield
    except CommitFailedError:
        raise
    except (DeltaError, OSError) as err:
        text = " ".join(str(err).split())
        code = getattr(err, "errno", None)
        found = _OS_ERROR.search(text)
        code = code if code is not None else int(found.group(1)) if found else None
        if code is None and ("No space left" in text or _nearly_full(path)):
            code = errno.ENOSPC  # deltalake's message may lose the system's reason ("Generic ... error")
        if code is not None:
            raise OSError(code, f"{os.strerror(code)} while {what} (the commit did not happen: the table is as "
                                f"it was)", str(path)) from err
        raise FitsTableError(f"{path}: {what} failed ({text}); the commit did not happen: the table is as it "
                             f"was") from err


_COMMIT_FILE = re.compile(r"^(\d{20})\.json$")  # a Delta commit: _delta_log/<version, 20 digits>.json
# a Delta checkpoint: _delta_log/<version>.checkpoint.parquet, or in parts: <version>.checkpoint.<part>.<parts>.parquet
_CHECKPOINT_FILE = re.compile(r"^(\d{20})\.checkpoint(?:\.\d+\.\d+)?\.parquet$")


def check_log(path: Path) -> int:
    """Check a Delta table's commit log (``path/_delta_log``) before it is read; return its latest version.

    deltalake reads an empty commit file as a commit with no actions: a crash between creating a commit file and
    flushing it leaves one, and the table then opens, lists that version and silently lacks its fits. So every
    commit file after the last checkpoint must be non-empty JSON lines, and the versions must follow each other
    without a gap; the checkpoint the log is read from (the latest, which ``_last_checkpoint`` points to) must be
    a readable parquet file. FitsTableError otherwise, naming the file, the reason and what to do."""
    log = Path(path) / "_delta_log"
    names = [p.name for p in log.iterdir()]
    versions = sorted(int(m.group(1)) for m in map(_COMMIT_FILE.match, names) if m)
    checkpoints: dict[int, list[str]] = {}
    for m in filter(None, map(_CHECKPOINT_FILE.match, names)):
        checkpoints.setdefault(int(m.group(1)), []).append(m.group(0))
    checkpoint = max(checkpoints, default=-1)
    last = log / "_last_checkpoint"
    if last.is_file():
        try:
            hinted = int(json.loads(last.read_text())["version"])
        except (ValueError, KeyError, TypeError) as err:
            raise FitsTableError(f"{last}: unreadable checkpoint pointer ({err}); restore it from a backup or "
                                 f"delete it (the commits before it are still in the log)") from None
        if hinted not in checkpoints:
            raise FitsTableError(f"{last} points to checkpoint {hinted}, and {log} has no {hinted:020d}.checkpoint"
                                 f" file; restore that file from a backup, or delete {last.name} (the table is "
                                 f"then read from its commits and checkpoints)")
    if checkpoint >= 0:
        readable_without = set(range(checkpoint + 1)) <= set(versions)
        for name in sorted(checkpoints[checkpoint]):
            try:
                pq.read_metadata(log / name)
            except (OSError, pa.ArrowException) as err:
                what = (f"move it and {last.name} away (`mv {log / name} {log / name}.broken`): every commit before "
                        f"it is still in the log, which is then read from them" if readable_without else
                        "restore it from a backup: the commits it summarises are no longer in the log")
                raise FitsTableError(f"{log / name}: checkpoint {checkpoint} of the fits table is damaged "
                                     f"({' '.join(str(err).split())}); {what}") from None
    for at, version in enumerate(v for v in versions if v > checkpoint):
        expected = checkpoint + 1 + at
        if version != expected:
            raise FitsTableError(f"{path}: commit {expected} is missing from {log} (the log goes from "
                                 f"{expected - 1} to {version}); restore {expected:020d}.json from a backup")
        file = log / f"{version:020d}.json"
        text = file.read_bytes()
        is_last = version == versions[-1]
        what = ("move it away (`mv {f} {f}.broken`): the table then reads as of version {p}, and the run that wrote "
                "it continues from its last checkpoint" if is_last else
                "restore it from a backup: the versions after it build on it").format(f=file, p=version - 1)
        if not text.strip():
            raise FitsTableError(f"{file}: commit {version} of the fits table is empty (a crash while committing "
                                 f"leaves such a file; its fits were never recorded); {what}")
        for number, line in enumerate(text.splitlines(), 1):
            try:
                ok = not line.strip() or isinstance(json.loads(line), dict)
            except ValueError:
                ok = False
            if not ok:
                raise FitsTableError(f"{file}: commit {version}, line {number} is not a JSON action (the file is "
                                     f"damaged); {what}")
    return max(versions[-1] if versions else -1, checkpoint)


def check_data_files(path: Path, snapshot: DeltaTable) -> None:
    """Check that every data file of ``snapshot`` (a version of the table at ``path``) is there and of the size
    its commit recorded; FitsTableError naming the first that is not, and what to do. (A file damaged inside
    without changing size is found when it is read: `_scan`.)"""
    adds = pa.table(snapshot.get_add_actions(flatten=True))
    if not adds.num_rows:
        return
    for name, size in zip(adds["path"].to_pylist(), adds["size_bytes"].to_pylist()):
        file = path / unquote(name)
        try:
            found = file.stat().st_size
        except FileNotFoundError:
            raise FitsTableError(f"{file}: a data file of fits table version {snapshot.version()} is missing "
                                 f"(deleted outside fitloop?); its fits cannot be read: restore it from a backup "
                                 f"(`fitloop fits vacuum` never deletes a file of the latest version)") from None
        if found != size:
            raise FitsTableError(f"{file}: a data file of fits table version {snapshot.version()} is {found} "
                                 f"bytes, its commit recorded {size} (truncated or overwritten); its fits cannot "
                                 f"be read: restore it from a backup")


def _load(path: Path, version: int | None = None) -> DeltaTable:
    """The Delta table at ``path`` (as of ``version``), its log's load errors as FitsTableError naming it."""
    try:
        return DeltaTable(str(path)) if version is None else DeltaTable(str(path), version=version)
    except TableNotFoundError:
        raise
    except (DeltaError, OSError, ValueError, KeyError) as err:
        raise FitsTableError(f"{path}: its Delta log does not load ({' '.join(str(err).split())}); the log under "
                             f"{path / '_delta_log'} is damaged: restore it from a backup") from None


def _dataset(snapshot: DeltaTable, path: Path) -> pads.Dataset:
    """A version of the table at ``path`` (``snapshot``) as an Arrow dataset read through Arrow's own local file
    system, with deltalake's file pruning by column statistics. Never deltalake's default, a Python file system:
    see the module docstring, Exit status."""
    return snapshot.to_pyarrow_dataset(filesystem=pafs.SubTreeFileSystem(str(path.resolve()), pafs.LocalFileSystem()))


def _scan(snapshot: DeltaTable, path: Path, *, columns: Sequence[str] | None = None,
          where: pc.Expression | None = None) -> pa.Table:
    """The rows of a version of the table at ``path`` (``snapshot``), read by Arrow's threads (`_dataset`); a
    damaged data file is a FitsTableError naming it."""
    try:
        return _dataset(snapshot, path).to_table(columns=list(columns) if columns else None, filter=where)
    except (OSError, pa.ArrowException) as err:
        text = " ".join(str(err).split())
        files = (unquote(f).removeprefix("file://") for f in snapshot.file_uris())
        named = next((f for f in files if Path(f).name in text), None)
        raise FitsTableError(f"{named or f'a data file of {path}'}: cannot be read as part of fits table version "
                             f"{snapshot.version()} ({text}); restore it from a backup") from None


def _schema_version(path: Path) -> int:
    """The fits schema version a Delta table at ``path`` records; FitsTableError when it is no fits table (of
    the columns its version has, `fits.schema.schema_of_version`) or its commit log is damaged (`check_log`)."""
    if not _is_table(path):
        raise FitsTableError(_not_a_table(path))
    check_log(path)
    snapshot = _load(path)
    check_data_files(path, snapshot)
    schema = pa.schema(snapshot.schema())
    found = (int((schema.field("schema_version").metadata or {}).get(SCHEMA_VERSION_META.encode(), b"0"))
             if "schema_version" in schema.names else 0)
    if not 1 <= found <= FITS_SCHEMA_VERSION or schema.names != schema_of_version(found).names:
        raise FitsTableError(f"{path}: columns {schema.names} are not the fits schema's {FITS_SCHEMA.names}")
    return found


def _not_a_table(path: Path) -> str:
    """Why ``path`` does not open as a fits table, and what to do: the commands that make one (a CLI user's way;
    in Python, `FitsTable.create`)."""
    if (path / "_delta_log").is_dir():
        return (f"{path} has a _delta_log that does not open as a Delta table (damaged, or its first commit is "
                f"missing): restore it from a backup")
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        what = "a file" if path.is_file() else "a folder of other files, no _delta_log"
        return (f"{path} is not a Delta table ({what}): give the folder of a fits table (one `fitloop fits seed` or "
                f"`fitloop fits import` made)")
    return (f"{path} is not a Delta table ({'nothing is there' if not path.exists() else 'an empty folder'}): "
            f"make one with `fitloop fits seed SHARDS {path}` or `fitloop fits import {path} --spin-npz NPZ "
            f"--spin-fits NPY --model MODEL`, or give the folder of an existing fits table")


def _to_current(log: pa.Table) -> pa.Table:
    """Rows of any schema version with the columns this version has: a table written before schema 3 held
    crop-frame fits only (frame "crop", no intrinsics); one written before schema 4 has no quality records (every
    quality column null: nothing was measured, so nothing is made up); one written before schema 5 holds body-only
    fits (every whole-body column null)."""
    if "frame" not in log.column_names:
        at = log.schema.get_field_index("cam_t") + 1
        log = log.add_column(at, FITS_SCHEMA.field("frame"), pa.array(["crop"] * log.num_rows, pa.string()))
        log = log.add_column(at + 1, FITS_SCHEMA.field("intrinsics"),
                             pa.nulls(log.num_rows, FITS_SCHEMA.field("intrinsics").type))
    for name in QUALITY_COLUMNS + WHOLEBODY_COLUMNS:
        if name not in log.column_names:
            field = FITS_SCHEMA.field(name)
            log = log.append_column(field, pa.nulls(log.num_rows, field.type))
    log = log.select(FITS_SCHEMA.names)
    return log.set_column(log.schema.get_field_index("schema_version"), "schema_version",
                          pa.array(np.full(log.num_rows, FITS_SCHEMA_VERSION, np.int16)))


def _without_diverged(rows: pa.Table, path: Path, drop: bool, command: str) -> tuple[pa.Table, int]:
    """The rows of a table being rewritten (upgrade, relabel, compact) without its diverged fits (`diverged_rows`:
    written before fits were checked where they enter the table) and how many were left out, when ``drop``; else
    FitsTableError naming them and the command that leaves them out."""
    bad = diverged_rows(rows)
    if not bad.any():
        return rows, 0
    if not drop:
        keys = rows["key"].filter(pa.array(bad))[:3].to_pylist()
        raise FitsTableError(f"{path}: {int(bad.sum())} fit(s) hold a NaN or infinite pose, betas, cam_t, "
                             f"intrinsics or loss, e.g. {keys} (written before fits were checked; no fit at all): "
                             f"rewrite the table without them, `fitloop fits {command} {path} --drop-diverged` "
                             f"(the versions before keep them)")
    return rows.filter(pa.array(~bad)), int(bad.sum())


def upgrade_table(path: str | Path, *, max_retries: int = 8, drop_diverged: bool = False) -> dict[str, Any]:
    """Bring a fits table of schema version 2, 3 or 4 to this one in one new version: every fit of version 2 gets
    frame "crop" (the only frame fitloop made fits in before) and no intrinsics; every fit of 2 or 3 gets no
    quality record (null); every fit of any is a body-only fit (whole-body columns null). Returns ``{"version",
    "rows", "from_version"}``; a table already of this version is left alone (``version`` None). A version-1 table
    needs its body models relabelled (`relabel_body_models`, which upgrades it too). Run it when no writer is
    writing to the table. A diverged fit among its rows (NaN or inf, `fits.schema.diverged_rows`) is
    FitsTableError, or left out with ``drop_diverged`` (``dropped``: how many)."""
    path = Path(path)
    found = _schema_version(path)
    if found == FITS_SCHEMA_VERSION:
        return {"version": None, "rows": 0, "from_version": found, "dropped": 0}
    if found not in (2, 3, 4):
        raise FitsTableError(f"{path} has fits schema version {found}: " + (
            f"relabel its body models first (`fitloop fits relabel {path}`), which upgrades it too" if found == 1
            else f"this fitloop upgrades versions 2 to 4 to {FITS_SCHEMA_VERSION}"))

    def commit() -> dict[str, Any]:
        snapshot = DeltaTable(str(path))
        rows, dropped = _without_diverged(_to_current(_scan(snapshot, path)), path, drop_diverged, "upgrade")
        rows = check_fits(rows)
        meta = CommitProperties(custom_metadata={"fitloop.operation": "UPGRADE", "fitloop.rows": str(rows.num_rows),
                                                 "fitloop.upgraded_from": str(found)})
        with _writing(path, "committing the upgraded fits"):
            write_deltalake(snapshot, rows, mode="overwrite", schema_mode="overwrite", writer_properties=_WRITER,
                            commit_properties=meta)
        return {"version": snapshot.version(), "rows": rows.num_rows, "from_version": found, "dropped": dropped}

    result, _ = _retrying(commit, max_retries)
    return result


def stored_body_models(path: str | Path) -> dict[str, int]:
    """Rows per body model id in the latest version of a fits table of any schema version (to relabel it)."""
    _schema_version(Path(path))
    return body_model_counts(_scan(DeltaTable(str(path)), Path(path), columns=["body_model_id"]))


def relabel_body_models(path: str | Path, mapping: dict[str, str], *, max_retries: int = 8,
                        drop_diverged: bool = False) -> dict[str, Any]:
    """Rename body model ids in a fits table (schema version 1 to this one) and bring it to this schema version
    (`upgrade_table`'s frame and quality columns included), in one new version; returns ``{"version", "rows",
    "relabelled": {old: (new, rows)}}``.

    Every id left after the mapping must be a content id (`fitting.body_model.MODEL_ID_PATTERN`): a version-1
    table's file-based ids must all be mapped, or FitsTableError lists those that are not. The targets must be
    content ids. Versions before this one keep the ids they were written with. Run it when no writer is writing
    to the table: a concurrent commit makes it retry on the new latest version.
    """
    from fitting.body_model import MODEL_ID_PATTERN  # here: the body model module loads torch

    path = Path(path)
    found = _schema_version(path)
    if not 1 <= found <= FITS_SCHEMA_VERSION:
        raise FitsTableError(f"{path} has fits schema version {found}; this fitloop relabels versions 1 to "
                             f"{FITS_SCHEMA_VERSION}")
    bad_targets = sorted({new for new in mapping.values() if not MODEL_ID_PATTERN.match(new)})
    if bad_targets:
        raise FitsTableError(f"relabel targets must be body model content ids (<family>:<16 hex>, as "
                             f"`fitloop model info` prints), not {bad_targets}")

    def commit() -> dict[str, Any]:
        snapshot = DeltaTable(str(path))
        log = _scan(snapshot, path)
        present = body_model_counts(log)
        left = sorted(m for m in present if m not in mapping and not MODEL_ID_PATTERN.match(m))
        if left:
            raise FitsTableError(f"{path}: body model id(s) {left} are not content ids and have no --map "
                                 f"OLD_ID=MODEL; map each to the model its fits were made with")
        ids = log["body_model_id"]
        for old, new in mapping.items():
            ids = pc.if_else(pc.equal(ids, old), new, ids)
        rows, dropped = _without_diverged(
            _to_current(log.set_column(log.schema.get_field_index("body_model_id"), "body_model_id", ids)), path,
            drop_diverged, "relabel")
        rows = check_fits(rows)
        meta = CommitProperties(custom_metadata={
            "fitloop.operation": "RELABEL", "fitloop.rows": str(rows.num_rows),
            "fitloop.relabelled": ",".join(f"{old}={new}" for old, new in mapping.items() if old in present)})
        with _writing(path, "committing the relabelled fits"):
            write_deltalake(snapshot, rows, mode="overwrite", schema_mode="overwrite", writer_properties=_WRITER,
                            commit_properties=meta)
        return {"version": snapshot.version(), "rows": rows.num_rows, "dropped": dropped,
                "relabelled": {old: (new, present[old]) for old, new in mapping.items() if old in present}}

    result, _ = _retrying(commit, max_retries)
    return result


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 time as a UTC datetime (no zone given: UTC)."""
    try:
        moment = datetime.fromisoformat(re.sub(r"Z$", "+00:00", text))
    except ValueError as err:
        raise FitsTableError(f"not an ISO 8601 time: {text!r}") from err
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
