"""The best fits a training run supervises with: the fits table's best view, in memory, kept current.

SPIN keeps an N × 82 tensor per dataset and writes it only on a timeout (SPIN_REFERENCE §7.3). Here the store is
loaded from the fits table (`fits.table.FitsTable`, rows of one body model and one frame only: the trainer's are
crop-frame fits, SPIN's, and the image-frame fits a table may also hold are not its) at a version, takes each step's
improvements, and `flush` appends them to the table in one commit — at every checkpoint and every epoch end — so
the store after a flush holds the table's best view and a resumed run reloads exactly it.

**Read once, then kept current by version numbers.** The table is an append-only log that is never compacted
while a run trains, so reading all of it is the expensive part. `load` reads it once (a run's start); after that:

* **its own writes** cost no read: `flush` commits the pending improvements, which the store already holds, and
  notes the data files that commit added (from the Delta log: file names, no data);
* **other writers' commits** (the other ranks of a distributed run, other runs on the same table): `refresh`
  asks the Delta log for the latest version and reads only the data files the store has not seen, none when
  every commit since its version is its own. A compaction's rewritten files are new files to the store: it reads
  them once (they hold best rows, which change nothing in an argmin).

Improvement is the table's rule (`fits.table.BestLosses`): a fit replaces the stored one when its loss is
finite and strictly lower, or when the key has no scored fit. Losses are float32, as the table stores them, so the
store and the table's argmin always agree. Poses are canonical (`fits.schema`).

`FitsStore.view` reads the store like a table's log (`StoreView`), so a function that takes the best view of a
table's log (the evaluation of the fits against ground truth) reads memory instead of scanning the table.

**Quality.** With each best fit the store keeps what `fits.quality.FitFilter` judges it by (its quality record and
pose prior, `fits.quality.FILTER_COLUMNS`; NaN = null), so the trainer filters its supervision without reading the
table again (`quality`).

**Whole-body fits** (`fits.schema.WHOLEBODY_COLUMNS`, an SMPL-X model's): with each best fit the store keeps its
hand, jaw and eye poses and expression, and its hands' and face's reprojection (px), or that it has none (a
body-only fit: null columns); `lookup_wholebody` gives them for a batch. A whole-body fit is best by the same
rule as any fit (its ``loss``, the 49 body joints'), so a key's best fit may be body-only after it had a
whole-body one, and the trainer supervises hands and face only where the best fit has them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch
from deltalake import DeltaTable
from torch import Tensor

from core.errors import FitloopError
from core.frames import FIT_CENTER
from core.host_syncs import to_device
from fits.quality import FILTER_COLUMNS, columns_of
from fits.schema import (
    FITS_SCHEMA,
    NUM_BETAS,
    NUM_POSE,
    WHOLEBODY_PARAMETERS,
    WHOLEBODY_PART_COLUMNS,
    FitsTableError,
    WholeBodyFit,
    diverged_rows,
)
from fits.table import AppendResult, FitsTable, best_of
from fitting.smplify import SMPLify

# A stored fit scored again on its sample's keypoints with its own camera gives its stored loss up to float rounding
# (float32 on one side, another batch's kernels on the other: ~1e-6 relative); a fit made from other keypoints is off
# by orders of magnitude (other people: thousands of px² against a few). 1% + 0.01 px² is far from both.
STALE_LOSS_RTOL = 1e-2
STALE_LOSS_ATOL = 1e-2  # px²

# what the store reads of a row: the fit, what `best_of` ranks by, and what a fit filter judges
_COLUMNS = ["key", "pose", "betas", "loss", "cam_t", "time", "run_id", "epoch", "step", *FILTER_COLUMNS,
            *WHOLEBODY_PARAMETERS, *WHOLEBODY_PART_COLUMNS]
_NUM_QUALITY = len(FILTER_COLUMNS)
# a whole-body fit's parameters side by side (hand_pose, jaw_pose, eye_pose, expression: 109 values), its parts
_WHOLEBODY_WIDTH = sum(WHOLEBODY_PARAMETERS.values())
_WHOLEBODY_SPLITS = np.cumsum(list(WHOLEBODY_PARAMETERS.values()))[:-1]
_NUM_WHOLEBODY_PARTS = len(WHOLEBODY_PART_COLUMNS)


class FitsStore:
    """key -> best (pose (72,), betas (10,), loss, quality, whole-body parameters or none) of one body model and
    frame; NaN loss = unscored; quality (`fits.quality.FILTER_COLUMNS`) NaN where null.

    Attributes:
        body_model_id: the body model whose rows the store holds (None: built in memory, not from a table).
        frame: the frame of its rows (`fits.schema.FRAMES`; the trainer's: "crop").
        version: the table version whose every row (of that body model) the store holds; None before `load`.
        rows_read: rows read from the table so far (`load` and `refresh`).
        path: the table's folder (None: built in memory), for messages.
    """

    def __init__(self, keys: list[str], pose: np.ndarray, betas: np.ndarray, loss: np.ndarray, *,
                 cam_t: np.ndarray | None = None, quality: np.ndarray | None = None,
                 wholebody: np.ndarray | None = None,
                 wholebody_quality: np.ndarray | None = None, body_model_id: str | None = None,
                 frame: str = "crop") -> None:
        """cam_t: (N, 3) m, NaN rows where a fit has no camera (imports); None: none has. quality: (N,
        len(FILTER_COLUMNS)) float, NaN = null; None: no fit has a record. wholebody: (N, 109)
        float, each fit's hand_pose, jaw_pose, eye_pose and expression side by side, NaN rows for body-only fits;
        None: every fit is body-only. wholebody_quality: (N, 3) px of `fits.schema.WHOLEBODY_PART_COLUMNS`, NaN =
        null."""
        self._index = {k: i for i, k in enumerate(keys)}
        self._pose = np.array(pose, dtype=np.float32).reshape(len(keys), NUM_POSE)
        self._betas = np.array(betas, dtype=np.float32).reshape(len(keys), NUM_BETAS)
        self._loss = np.array(loss, dtype=np.float32).reshape(len(keys))
        self._cam_t = (np.full((len(keys), 3), np.nan, np.float32) if cam_t is None
                       else np.array(cam_t, dtype=np.float32).reshape(len(keys), 3))
        self._quality = (np.full((len(keys), _NUM_QUALITY), np.nan, np.float32) if quality is None
                         else np.array(quality, dtype=np.float32).reshape(len(keys), _NUM_QUALITY))
        self._wholebody = (np.full((len(keys), _WHOLEBODY_WIDTH), np.nan, np.float32) if wholebody is None
                           else np.array(wholebody, dtype=np.float32).reshape(len(keys), _WHOLEBODY_WIDTH))
        self._wholebody_quality = (
            np.full((len(keys), _NUM_WHOLEBODY_PARTS), np.nan, np.float32) if wholebody_quality is None
            else np.array(wholebody_quality, dtype=np.float32).reshape(len(keys), _NUM_WHOLEBODY_PARTS))
        self._pending: list[pa.Table] = []
        self.body_model_id = body_model_id
        self.frame = frame
        self.version: int | None = None
        self.rows_read = 0
        self.path: Path | None = None
        self._seen: set[str] = set()          # data files whose rows the store holds
        self._delta: DeltaTable | None = None  # the Delta log, advanced forward only (cheap: new commits only)

    @classmethod
    def load(cls, table: FitsTable, body_model_id: str, version: int | None = None,
             frame: str = "crop") -> "FitsStore":
        """The best fit per key among the rows of ``body_model_id`` and ``frame`` as of ``version`` (default the
        latest): one read of the table's log. A version a vacuum deleted: `fits.table.VacuumedVersionError`."""
        delta = table._snapshot(version)  # a version the table lacks, or one a vacuum deleted: FitsTableError
        at = delta.version()
        rows = best_of(table.log(version=at, columns=_COLUMNS, where=_rows_of(body_model_id, frame)))
        keys = rows["key"].to_pylist()
        pose, betas, loss, quality = _arrays(rows)
        wholebody, wholebody_quality = _wholebody_arrays(rows)
        store = cls(keys, pose, betas, loss, cam_t=_cameras(rows), quality=quality, wholebody=wholebody,
                    wholebody_quality=wholebody_quality, body_model_id=body_model_id, frame=frame)
        store.version, store._seen, store._delta = at, set(delta.file_uris()), delta
        store.rows_read = rows.num_rows
        store.path = Path(table.path)
        return store

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    @property
    def pending_rows(self) -> int:
        return sum(t.num_rows for t in self._pending)

    def lookup(self, keys: list[str]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(pose (B, 72), betas (B, 10), loss (B,) float32 (NaN: unscored), known (B,) bool) for ``keys``;
        unknown keys get zeros and NaN."""
        rows = np.array([self._index.get(k, -1) for k in keys], dtype=np.int64)
        known = rows >= 0
        pose = np.zeros((len(keys), NUM_POSE), np.float32)
        betas = np.zeros((len(keys), NUM_BETAS), np.float32)
        loss = np.full(len(keys), np.nan, np.float32)
        hit = rows[known]
        pose[known], betas[known], loss[known] = self._pose[hit], self._betas[hit], self._loss[hit]
        return torch.from_numpy(pose), torch.from_numpy(betas), torch.from_numpy(loss), torch.from_numpy(known)

    def lookup_camera(self, keys: list[str]) -> Tensor:
        """The cam_t (B, 3) float32, m, of the stored best fits of ``keys`` (the store's frame); NaN rows where the
        fit has none (an import) or the key is unknown."""
        rows = np.array([self._index.get(k, -1) for k in keys], dtype=np.int64)
        cam_t = np.full((len(keys), 3), np.nan, np.float32)
        cam_t[rows >= 0] = self._cam_t[rows[rows >= 0]]
        return torch.from_numpy(cam_t)

    def lookup_wholebody(self, keys: list[str]) -> tuple[WholeBodyFit, Tensor]:
        """The whole-body parameters of the stored best fits of ``keys`` (`fits.schema.WholeBodyFit` of tensors:
        hand_pose (B, 90), jaw_pose (B, 3), eye_pose (B, 6), expression (B, 10), part_reprojection (B, 3) px, NaN =
        null) and has (B,) bool: the key's best fit is a whole-body fit. Zeros where it is not (a body-only fit or
        an unknown key)."""
        rows = np.array([self._index.get(k, -1) for k in keys], dtype=np.int64)
        values = np.full((len(keys), _WHOLEBODY_WIDTH), np.nan, np.float32)
        parts = np.full((len(keys), _NUM_WHOLEBODY_PARTS), np.nan, np.float32)
        known = rows >= 0
        values[known], parts[known] = self._wholebody[rows[known]], self._wholebody_quality[rows[known]]
        has = ~np.isnan(values).any(-1)
        values[~has] = 0.0
        hand, jaw, eye, expression = (torch.from_numpy(np.ascontiguousarray(v))
                                      for v in np.split(values, _WHOLEBODY_SPLITS, axis=1))
        return WholeBodyFit(hand, jaw, eye, expression, torch.from_numpy(parts)), torch.from_numpy(has)

    def quality(self, keys: list[str]) -> np.ndarray:
        """The quality of the stored best fits of ``keys``: (B, len(FILTER_COLUMNS)) float32 in
        `fits.quality.FILTER_COLUMNS` order, NaN where null or the key is unknown."""
        rows = np.array([self._index.get(k, -1) for k in keys], dtype=np.int64)
        out = np.full((len(keys), _NUM_QUALITY), np.nan, np.float32)
        out[rows >= 0] = self._quality[rows[rows >= 0]]
        return out

    def offer(self, fits: pa.Table) -> int:
        """Keep the rows of ``fits`` (`fits.schema.FITS_SCHEMA`) that improve on the store (module
        docstring; within the batch only each key's lowest loss); they wait for `flush`. Returns how many. A
        diverged fit (NaN or inf in its loss, pose, betas, cam_t or intrinsics: `fits.schema.diverged_rows`) is
        never kept, so it can neither become the best fit nor reach the table."""
        keys = fits["key"].to_pylist()
        pose, betas, loss, quality = _arrays(fits)
        cam_t = _cameras(fits)
        wholebody, wholebody_quality = _wholebody_arrays(fits)
        usable = ~diverged_rows(fits) & np.isfinite(loss)  # an unscored fit (NaN here) never improves in the loop
        keep = []
        for i in np.argsort(loss, kind="stable"):          # lowest first: a key's later rows cannot improve
            if not usable[i]:
                continue
            row = self._index.get(keys[i])
            if row is not None and np.isfinite(self._loss[row]) and not loss[i] < self._loss[row]:
                continue
            if row is None:
                row = self._grow(keys[i])
            self._pose[row], self._betas[row], self._loss[row], self._quality[row] = pose[i], betas[i], loss[i], \
                quality[i]
            self._cam_t[row] = cam_t[i]
            self._wholebody[row], self._wholebody_quality[row] = wholebody[i], wholebody_quality[i]
            keep.append(i)
        if keep:
            self._pending.append(fits.take(pa.array(sorted(keep), pa.int64())))
        return len(keep)

    def flush(self, table: FitsTable) -> AppendResult:
        """Append every pending improvement to ``table`` in one commit (none: no commit, version None).

        The store already holds what it writes: it reads nothing back, and notes the data files of its commit so
        that `refresh` does not read them either. When no other commit landed since the store's version, the
        store's version becomes the commit's."""
        if not self._pending:
            return AppendResult(None, 0, 0)
        fits = pa.concat_tables(self._pending)
        result = table.append(fits)
        self._pending = []
        if self._delta is not None and result.version is not None:
            before = self._files_at(result.version - 1)
            self._seen |= self._files_at(result.version) - before
            if self.version == result.version - 1:
                self.version = result.version
        return result

    def refresh(self, table: FitsTable, version: int | None = None) -> int:
        """Take in the commits other writers made since the store's version, up to ``version`` (default the
        latest): only the data files the store has not seen are read. Pending improvements stay pending. Returns
        the rows read (0 when every commit since is the store's own)."""
        if self._delta is None or self.body_model_id is None:
            raise FitsTableError("this FitsStore was not loaded from a table (FitsStore.load): nothing to refresh")
        if version is None:
            self._delta.update_incremental()
        elif version != self._delta.version():
            self._delta.load_as_version(version)
        target = self._delta.version()
        if target == self.version:
            return 0
        files = set(self._delta.file_uris())
        new = sorted(files - self._seen)
        rows = 0
        if new:
            # Arrow's own file system (native paths): no Python on Arrow's threads (fits.table, Exit status)
            read = pads.dataset(new, format="parquet").to_table(
                columns=_COLUMNS, filter=_rows_of(self.body_model_id, self.frame), use_threads=False)
            read = read.cast(pa.schema([FITS_SCHEMA.field(name) for name in read.schema.names]))
            self._merge(best_of(read))
            rows = read.num_rows
        self._seen, self.version = files, target
        self.rows_read += rows
        return rows

    def view(self) -> "StoreView":
        """The store's best fits, readable as a table's log at the store's version (`StoreView`)."""
        return StoreView(self)

    def best_rows(self) -> pa.Table:
        """The store's best fit per key as rows of `FITS_SCHEMA` (key order): key, dataset, pose, betas, loss, cam_t,
        body_model_id, frame, the quality and the whole-body parameters and parts the store keeps filled (null for
        body-only fits); the columns the store does not keep are null."""
        order = sorted(self._index)
        rows = np.array([self._index[k] for k in order], dtype=np.int64)
        keys = pa.array(order, pa.string())
        n = len(order)
        filled = {
            "key": keys,
            "dataset": pc.replace_substring_regex(keys, "/.*$", ""),
            "pose": pa.FixedSizeListArray.from_arrays(pa.array(self._pose[rows].reshape(-1), pa.float32()), NUM_POSE),
            "betas": pa.FixedSizeListArray.from_arrays(pa.array(self._betas[rows].reshape(-1), pa.float32()),
                                                       NUM_BETAS),
            "loss": pa.array(self._loss[rows], pa.float32(), mask=np.isnan(self._loss[rows])),
            "cam_t": pa.FixedSizeListArray.from_arrays(pa.array(self._cam_t[rows].reshape(-1), pa.float32()), 3,
                                                       mask=pa.array(np.isnan(self._cam_t[rows]).any(-1))),
            "body_model_id": pa.array([self.body_model_id or ""] * n, pa.string()),
            "frame": pa.array([self.frame] * n, pa.string()),
            **{name: pa.array(self._quality[rows, i], pa.float64(), mask=np.isnan(self._quality[rows, i]))
               for i, name in enumerate(FILTER_COLUMNS)},
            **_wholebody_columns(self._wholebody[rows], self._wholebody_quality[rows]),
        }
        return pa.table({f.name: filled.get(f.name, pa.nulls(n, f.type)).cast(f.type) for f in FITS_SCHEMA})

    # -- internals ------------------------------------------------------------------------------------------------
    def _files_at(self, version: int) -> set[str]:
        if version < 0:
            return set()
        self._delta.load_as_version(version)
        return set(self._delta.file_uris())

    def _merge(self, rows: pa.Table) -> None:
        """Take table rows (one per key) where they are better by the table's rule: unknown key, or a scored loss
        where the store's is unscored or higher."""
        pose, betas, loss, quality = _arrays(rows)
        cam_t = _cameras(rows)
        wholebody, wholebody_quality = _wholebody_arrays(rows)
        for i, key in enumerate(rows["key"].to_pylist()):
            row = self._index.get(key)
            if row is not None and not (np.isfinite(loss[i]) and (np.isnan(self._loss[row])
                                                                   or loss[i] < self._loss[row])):
                continue
            if row is None:
                row = self._grow(key)
            self._pose[row], self._betas[row], self._loss[row], self._quality[row] = pose[i], betas[i], loss[i], \
                quality[i]
            self._cam_t[row] = cam_t[i]
            self._wholebody[row], self._wholebody_quality[row] = wholebody[i], wholebody_quality[i]

    def _grow(self, key: str) -> int:
        row = len(self._index)
        if row == len(self._loss):  # capacity doubles: many new keys cost amortised O(1) each
            extra = max(64, row)
            self._pose = np.concatenate([self._pose, np.zeros((extra, NUM_POSE), np.float32)])
            self._betas = np.concatenate([self._betas, np.zeros((extra, NUM_BETAS), np.float32)])
            self._loss = np.concatenate([self._loss, np.full(extra, np.nan, np.float32)])
            self._cam_t = np.concatenate([self._cam_t, np.full((extra, 3), np.nan, np.float32)])
            self._quality = np.concatenate([self._quality, np.full((extra, _NUM_QUALITY), np.nan, np.float32)])
            self._wholebody = np.concatenate([self._wholebody, np.full((extra, _WHOLEBODY_WIDTH), np.nan,
                                                                       np.float32)])
            self._wholebody_quality = np.concatenate([self._wholebody_quality,
                                                      np.full((extra, _NUM_WHOLEBODY_PARTS), np.nan, np.float32)])
        self._index[key] = row
        return row


class StaleFitsError(FitloopError):
    """The fits table's stored fits do not score on their samples' keypoints what the table says (`stale_fits`)."""


def stale_fits(store: FitsStore, smplify: SMPLify, keys: list[str], keypoints: Tensor, *, skip: Tensor | None = None,
               focal: Tensor | None = None, center: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(stale (B,) bool, the stored fits' loss scored again (B,), their stored loss (B,)): each stored best fit of
    ``keys`` with a camera (seed, loop and 3D fits; imports have none) and a scored loss, posed and scored on
    ``keypoints`` (the samples' canonical fit-frame px, on SMPLify's device) with its own camera (``focal``,
    ``center`` (B, 2) fit-frame px; default SPIN's crop camera), as the table scored it; stale where the two
    disagree beyond `STALE_LOSS_RTOL` / `STALE_LOSS_ATOL`: the table was made from other keypoints under the same
    keys, and its losses compare with none made here. ``skip`` (B,): rows not checked (whole-body fits: their body
    joints move with the face). On the device, no host sync."""
    device = keypoints.device
    pose, betas, loss, _ = (to_device(t, device) for t in store.lookup(keys))
    cam_t = to_device(store.lookup_camera(keys), device)
    checked = torch.isfinite(loss) & torch.isfinite(cam_t).all(-1)
    if skip is not None:
        checked = checked & ~skip
    if center is None:
        center = torch.full((len(keys), 2), FIT_CENTER, device=device)
    rescored = smplify.fitting_loss(pose, betas, torch.nan_to_num(cam_t), center, keypoints,
                                    focal_length=focal).mean(-1)
    stale = checked & ((rescored - loss).abs() > STALE_LOSS_RTOL * loss.abs() + STALE_LOSS_ATOL)
    return stale, rescored, loss


def stale_fits_error(store: FitsStore, keys: list[str], stale: np.ndarray, rescored: np.ndarray,
                     stored: np.ndarray, fix: str) -> StaleFitsError:
    """What `stale_fits` found (host arrays), as one line ending in what to do (``fix``)."""
    first = int(np.flatnonzero(stale)[0])
    return StaleFitsError(
        f"{store.path or 'the fits store'}: its fit of {keys[first]} scores {rescored[first]:.4g} px² on this "
        f"sample's keypoints, and {stored[first]:.4g} px² as the table stored it ({int(stale.sum())} of this batch's "
        f"{len(keys)} stored fits disagree): the table's fits of these keys were made from other keypoints (another "
        f"shard set with the same keys, or these shards converted again with other options), and it would keep them "
        f"as the best fits; {fix}")


class StoreView:
    """A `FitsStore` read as a fits table's log: ``log(version=, columns=, where=)`` answers as
    `FitsTable.log` would at the store's version, but with one row per key, each key's best (`FitsStore.best_rows`).
    `best_of` of it is itself, so a function that reads a table's log to take its best view (the fits evaluation)
    gives the same result on the view, without scanning the table."""

    def __init__(self, store: FitsStore) -> None:
        self.store = store

    @property
    def path(self) -> str:
        """What the view reads, for messages (as `FitsTable.path`)."""
        where = self.store.path if self.store.path is not None else "fits built in memory"
        return f"{where} (in memory at version {self.store.version})"

    def log(self, *, version: int | None = None, columns: Sequence[str] | None = None,
            where: pc.Expression | None = None) -> pa.Table:
        """The store's best rows, filtered by ``where`` and cut to ``columns``. ``version`` must be the store's
        (None: the store's), and nothing may be pending: the view answers for one table version only."""
        store = self.store
        if (version is not None and version != store.version) or store.pending_rows:
            raise FitsTableError(f"the fits store holds table version {store.version} "
                                 f"(+{store.pending_rows} pending rows), not version {version}: read the table")
        rows = store.best_rows()
        if where is not None:
            rows = rows.filter(where)
        return rows.select(list(columns)) if columns else rows


def _rows_of(body_model_id: str, frame: str) -> pc.Expression:
    """The filter of one body model's rows of one frame."""
    return (pc.field("body_model_id") == body_model_id) & (pc.field("frame") == frame)


def _wholebody_arrays(rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(whole-body parameters (N, 109) float32 side by side, NaN rows for body-only fits; the hands' and face's
    reprojection (N, 3) float32, NaN = null) of fits rows."""
    values = np.full((rows.num_rows, _WHOLEBODY_WIDTH), np.nan, np.float32)
    parts = np.full((rows.num_rows, _NUM_WHOLEBODY_PARTS), np.nan, np.float32)
    if rows.num_rows == 0:
        return values, parts
    has = rows["hand_pose"].is_valid().to_numpy(zero_copy_only=False)  # all four or none (`fits.schema.check_fits`)
    if has.any():
        chosen = rows.filter(pa.array(has))
        values[has] = np.concatenate([pc.list_flatten(chosen[name]).to_numpy().reshape(-1, width)
                                      for name, width in WHOLEBODY_PARAMETERS.items()], axis=1)
    for i, name in enumerate(WHOLEBODY_PART_COLUMNS):
        parts[:, i] = rows[name].cast(pa.float32()).fill_null(np.nan).to_numpy()
    return values, parts


def _wholebody_columns(values: np.ndarray, parts: np.ndarray) -> dict[str, pa.Array]:
    """The whole-body columns of rows from (N, 109) side-by-side parameters (NaN rows: body-only, null) and (N, 3)
    part reprojections (NaN: null)."""
    body_only = np.isnan(values).any(-1)
    columns = {}
    for name, chunk in zip(WHOLEBODY_PARAMETERS, np.split(values, _WHOLEBODY_SPLITS, axis=1)):
        flat = pa.array(np.nan_to_num(chunk).reshape(-1), pa.float32())
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, chunk.shape[1], mask=pa.array(body_only))
    for i, name in enumerate(WHOLEBODY_PART_COLUMNS):
        columns[name] = pa.array(parts[:, i], pa.float32(), mask=np.isnan(parts[:, i]))
    return columns


def _cameras(rows: pa.Table) -> np.ndarray:
    """The cam_t (N, 3) float32 of fits rows, NaN rows where null."""
    cam_t = np.full((rows.num_rows, 3), np.nan, np.float32)
    if rows.num_rows:
        column = rows["cam_t"].combine_chunks()
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        cam_t[valid] = pc.list_flatten(column.filter(column.is_valid())).to_numpy().reshape(-1, 3)
    return cam_t


def _arrays(rows: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pose (N, 72), betas (N, 10), loss (N,) float32, NaN = unscored, quality (N, len(FILTER_COLUMNS)) float32,
    NaN = null) of fits rows."""
    if rows.num_rows == 0:
        return (np.zeros((0, NUM_POSE)), np.zeros((0, NUM_BETAS)), np.zeros(0, np.float32),
                np.zeros((0, _NUM_QUALITY), np.float32))
    pose = pc.list_flatten(rows["pose"]).to_numpy().reshape(-1, NUM_POSE)
    betas = pc.list_flatten(rows["betas"]).to_numpy().reshape(-1, NUM_BETAS)
    loss = rows["loss"].cast(pa.float32()).fill_null(np.nan).to_numpy()
    columns = columns_of(rows)
    quality = np.stack([columns[name] for name in FILTER_COLUMNS], -1).astype(np.float32)
    return pose, betas, loss, quality
