"""The fits of a few samples: their best fit and their history as of a table version, read in one scan each.

`FitsTable.best` and `FitsTable.history` answer for the whole table or for one key; pictures and pages need a
handful of keys, so these read only the rows of those keys (one filtered scan) and group them in Python. A best
fit is of one body model (`fits.table.best_of`); a history holds the fits of every model (each row names its own).
Rows are plain dicts (``pa.Table.to_pylist``): pose (72,), betas (10,), cam_t (3,) or None, frame, intrinsics
(4,) or None, loss or None, ...
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from fits.schema import RANK_COLUMNS
from fits.table import FitsTable, best_of


def latest_version(table: FitsTable) -> int:
    """The table's latest version number."""
    return DeltaTable(str(table.path)).version()


def _rows(table: FitsTable, keys: Sequence[str], version: int | None) -> pa.Table:
    """The rows of ``keys`` as of ``version``, in `FITS_SCHEMA` types (`FitsTable.log`, filtered by key)."""
    return table.log(version=version, where=pc.field("key").isin(pa.array(sorted(set(keys)), pa.string())))


def best_fits(table: FitsTable, keys: Sequence[str], version: int | None = None, *,
              body_model_id: str | None = None, frame: str | None = None) -> dict[str, dict[str, Any]]:
    """key -> its best fit (lowest loss, `best_of`) of the body model ``body_model_id`` and ``frame`` as of
    ``version`` (default the latest); keys without a fit of it are absent. ``body_model_id`` (``frame``) None: the
    keys' fits must be of one model (frame), else `fits.schema.MixedBodyModelsError` (`MixedFramesError`)."""
    at = f"{table.path} version {version}" if version is not None else str(table.path)
    best = best_of(_rows(table, keys, version), body_model_id, frame=frame, where=f"{at}, {len(set(keys))} key(s)")
    return {row["key"]: row for row in best.to_pylist()}


def fit_histories(table: FitsTable, keys: Sequence[str],
                  version: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """key -> every fit of it as of ``version``, oldest first, in `FitsTable.history`'s order (same time: by
    decreasing loss, unscored first); every key asked for is present (an empty list: no fit)."""
    rows = _rows(table, keys, version)
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    if rows.num_rows:
        times = rows["time"].cast(pa.int64()).to_numpy()
        losses = rows["loss"].cast(pa.float64()).fill_null(np.inf).to_numpy()
        for row in rows.take(np.lexsort((-losses, times))).to_pylist():
            out[row["key"]].append(row)
    return out


def best_in_history(history: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Position -> a label of each body model's and frame's best fit in one key's history (rows as
    `fit_histories` gives them): the body model id, followed by " (image frame)" for an image-frame fit. The
    table's rule (`fits.table.best_of`: lowest loss, unscored last, ties to the earliest time, then run_id, epoch,
    step), applied per model and frame, so a picture or listing marks the fit the table would serve."""
    def rank(i: int) -> tuple:
        row = history[i]
        return tuple((row[c] is None, row[c] if row[c] is not None else 0) for c in RANK_COLUMNS if c != "key")

    best: dict[tuple[str, str], int] = {}
    for i, row in enumerate(history):
        group = (row["body_model_id"], row.get("frame") or "crop")
        if group not in best or rank(i) < rank(best[group]):
            best[group] = i
    return {i: model if frame == "crop" else f"{model} ({frame} frame)" for (model, frame), i in best.items()}
