"""The best fits a training run supervises with: the fits table's best view, in memory, plus what is not yet written.

SPIN keeps an N × 82 tensor per dataset and writes it only on a timeout (SPIN_REFERENCE §7.3). Here the store is
loaded from the fits table (`fits.table.FitsTable`, rows of this run's body model only) at a version, takes
each step's improvements, and `flush` appends them to the table in one commit — at every checkpoint and every
epoch end — so the store after a flush equals the table's best view and a resumed run reloads exactly it.

Improvement is the table's rule (`fits.table.BestLosses`): a fit replaces the stored one when its loss is
finite and strictly lower, or when the key has no scored fit. Losses are float32, as the table stores them, so the
store and the table's argmin always agree. Poses are canonical (`fits.schema`).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from fits.schema import NUM_BETAS, NUM_POSE
from fits.table import AppendResult, FitsTable, best_of


class FitsStore:
    """key -> best (pose (72,), betas (10,), loss) of one body model; NaN loss = unscored."""

    def __init__(self, keys: list[str], pose: np.ndarray, betas: np.ndarray, loss: np.ndarray) -> None:
        self._index = {k: i for i, k in enumerate(keys)}
        self._pose = np.array(pose, dtype=np.float32).reshape(len(keys), NUM_POSE)
        self._betas = np.array(betas, dtype=np.float32).reshape(len(keys), NUM_BETAS)
        self._loss = np.array(loss, dtype=np.float32).reshape(len(keys))
        self._pending: list[pa.Table] = []

    @classmethod
    def load(cls, table: FitsTable, body_model_id: str, version: int | None = None) -> "FitsStore":
        """The best fit per key among the rows of ``body_model_id`` as of ``version`` (default the latest)."""
        rows = best_of(table.log(version=version, columns=["key", "pose", "betas", "loss", "time", "run_id",
                                                           "epoch", "step"],
                                 where=pc.field("body_model_id") == body_model_id))
        keys = rows["key"].to_pylist()
        pose = pc.list_flatten(rows["pose"]).to_numpy().reshape(-1, NUM_POSE) if keys else np.zeros((0, NUM_POSE))
        betas = pc.list_flatten(rows["betas"]).to_numpy().reshape(-1, NUM_BETAS) if keys else np.zeros((0, NUM_BETAS))
        loss = rows["loss"].cast(pa.float32()).fill_null(np.nan).to_numpy()
        return cls(keys, pose, betas, loss)

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

    def offer(self, fits: pa.Table) -> int:
        """Keep the rows of ``fits`` (`fits.schema.FITS_SCHEMA`) that improve on the store (module
        docstring; within the batch only each key's lowest loss); they wait for `flush`. Returns how many."""
        keys = fits["key"].to_pylist()
        loss = fits["loss"].cast(pa.float32()).fill_null(np.nan).to_numpy()
        pose = pc.list_flatten(fits["pose"]).to_numpy().reshape(-1, NUM_POSE)
        betas = pc.list_flatten(fits["betas"]).to_numpy().reshape(-1, NUM_BETAS)
        keep = []
        for i in np.argsort(loss, kind="stable"):          # lowest first: a key's later rows cannot improve
            if not np.isfinite(loss[i]):
                continue
            row = self._index.get(keys[i])
            if row is not None and np.isfinite(self._loss[row]) and not loss[i] < self._loss[row]:
                continue
            if row is None:
                row = self._grow(keys[i])
            self._pose[row], self._betas[row], self._loss[row] = pose[i], betas[i], loss[i]
            keep.append(i)
        if keep:
            self._pending.append(fits.take(pa.array(sorted(keep), pa.int64())))
        return len(keep)

    def flush(self, table: FitsTable) -> AppendResult:
        """Append every pending improvement to ``table`` in one commit (none: no commit, version None)."""
        if not self._pending:
            return AppendResult(None, 0, 0)
        fits = pa.concat_tables(self._pending)
        result = table.append(fits)
        self._pending = []
        return result

    def _grow(self, key: str) -> int:
        row = len(self._index)
        if row == len(self._loss):  # capacity doubles: many new keys cost amortised O(1) each
            extra = max(64, row)
            self._pose = np.concatenate([self._pose, np.zeros((extra, NUM_POSE), np.float32)])
            self._betas = np.concatenate([self._betas, np.zeros((extra, NUM_BETAS), np.float32)])
            self._loss = np.concatenate([self._loss, np.full(extra, np.nan, np.float32)])
        self._index[key] = row
        return row
