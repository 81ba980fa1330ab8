"""One epoch's update of the fits table against rewriting a full parquet snapshot, timed in the same run.

Setup (not timed into the update): ``rows`` synthetic fits (random float32 pose, betas, per-joint losses) seed a
fits table and a parquet snapshot. Each epoch then offers a new fit for every key, of which a fraction
``improved`` has a lower loss.

* fitloop: read the best losses once (`FitsTable.best_losses`), keep the strict improvements (`BestLosses`) and
  append them in one commit. Disk grows by the improved rows only; every earlier version stays readable.
* baseline: the current snapshot is already in memory (the baseline is spared the read); replace the improved
  rows and rewrite the whole snapshot as one parquet file (temporary name, then rename), as a system that keeps
  only "the fits file" does. Each epoch writes every row again, and keeps no earlier version.

At the end the best view of the table is checked against the snapshot (same keys, same losses).
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import FitloopError
from fits.schema import FitProvenance, fits_batch
from fits.table import FitsTable

# The baseline gets the table's writer tuning: dictionaries only for the columns that repeat.
BENCH_MODEL = "open:00000000000be4c4"  # a body model content id for the synthetic fits
SNAPSHOT_DICTIONARY = ["dataset", "source", "run_id", "body_model_id", "fit_config_hash"]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _fits(keys: pa.Array, loss: np.ndarray, rng: np.random.Generator, provenance: FitProvenance) -> pa.Table:
    """Synthetic fits: loss (B,) as given, per-joint losses scaled to that mean, random pose and betas."""
    rows = len(keys)
    per_joint = rng.random((rows, 49), dtype=np.float32)
    per_joint *= (loss / per_joint.mean(axis=1))[:, None]
    return fits_batch(keys, 0.3 * rng.standard_normal((rows, 72), dtype=np.float32),
                      rng.standard_normal((rows, 10), dtype=np.float32), provenance,
                      reprojection_loss=per_joint, loss=loss.astype(np.float32),
                      cam_t=rng.standard_normal((rows, 3), dtype=np.float32), iterations=35)


def _rewrite_snapshot(snapshot: pa.Table, candidates: pa.Table, path: Path) -> pa.Table:
    """The baseline: keep the candidates that improve on the in-memory snapshot, rewrite the whole file."""
    lower = pc.less(candidates["loss"], snapshot["loss"]).to_numpy(zero_copy_only=False)  # both in key order
    rows = np.arange(snapshot.num_rows)
    merged = pa.concat_tables([snapshot, candidates]).take(np.where(lower, rows + snapshot.num_rows, rows))
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(merged, tmp, use_dictionary=SNAPSHOT_DICTIONARY)
    tmp.replace(path)
    return merged


def run(rows: int = 1_000_000, improved: float = 0.3, epochs: int = 2, workdir: Path | None = None,
        seed: int = 0) -> dict:
    """Time ``epochs`` updates of ``rows`` fits with ``improved`` of them lower, both ways; returns the figures."""
    if workdir is not None and not Path(workdir).is_dir():
        raise FitloopError(f"--workdir {workdir}: no such folder; give an existing folder for the temporary tables")
    work = Path(tempfile.mkdtemp(prefix="fitloop-bench-fits-", dir=workdir))
    try:
        rng = np.random.default_rng(seed)
        keys = pa.array([f"bench/s{i:07d}" for i in range(rows)])  # sorted, as both sides store them
        current = _fits(keys, rng.uniform(20, 80, rows), rng, FitProvenance("bench-seed", BENCH_MODEL, "bench", "seed"))
        table = FitsTable.create(work / "table")
        start = time.perf_counter()
        table.append(current)
        seed_table_s = time.perf_counter() - start
        snapshot_path = work / "snapshot.parquet"
        start = time.perf_counter()
        pq.write_table(current, snapshot_path, use_dictionary=SNAPSHOT_DICTIONARY)
        seed_snapshot_s = time.perf_counter() - start
        snapshot = current

        per_epoch = []
        for epoch in range(1, epochs + 1):
            old_loss = snapshot["loss"].to_numpy()
            factor = rng.uniform(1.02, 1.5, rows)
            lower = rng.permutation(rows)[: int(round(improved * rows))]
            factor[lower] = rng.uniform(0.5, 0.98, len(lower))
            candidates = _fits(keys, old_loss * factor, rng,
                               FitProvenance("bench-loop", BENCH_MODEL, "bench", "loop", epoch, epoch * 1000))
            table_before = _size(table.path)

            start = time.perf_counter()
            best = table.best_losses()
            read_s = time.perf_counter() - start
            result = table.append(candidates, best=best)
            append_s = time.perf_counter() - start - read_s

            start = time.perf_counter()
            snapshot = _rewrite_snapshot(snapshot, candidates, snapshot_path)
            snapshot_s = time.perf_counter() - start
            per_epoch.append({
                "epoch": epoch, "offered": rows, "appended": result.rows, "version": result.version,
                "read_best_losses_s": read_s, "filter_and_append_s": append_s, "update_s": read_s + append_s,
                "snapshot_rewrite_s": snapshot_s, "table_growth_bytes": _size(table.path) - table_before,
                "snapshot_bytes_written": _size(snapshot_path),
            })
            del candidates

        start = time.perf_counter()
        best_view = table.best()
        best_view_s = time.perf_counter() - start
        expected = snapshot.sort_by("key")
        equal = (best_view["key"].equals(expected["key"]) and best_view["loss"].equals(expected["loss"]))
        start = time.perf_counter()
        history_rows = table.history(keys[rows // 2].as_py()).num_rows
        history_s = time.perf_counter() - start

        small = fits_batch(keys[:64], np.zeros((64, 72)), np.zeros((64, 10)),
                           FitProvenance("bench-step", BENCH_MODEL, "bench", "loop", epochs + 1, 0),
                           loss=np.zeros(64), reprojection_loss=np.zeros((64, 49)))
        step_times = []
        for _ in range(5):
            start = time.perf_counter()
            table.append(small)
            step_times.append(time.perf_counter() - start)

        update = statistics.median(e["update_s"] for e in per_epoch)
        baseline = statistics.median(e["snapshot_rewrite_s"] for e in per_epoch)
        return {
            "benchmark": "fits-table", "rows": rows, "improved": improved, "epochs": per_epoch,
            "seed_table_s": seed_table_s, "seed_snapshot_s": seed_snapshot_s,
            "update_s_median": update, "snapshot_rewrite_s_median": baseline, "speedup_vs_snapshot": baseline / update,
            "best_view_s": best_view_s, "best_view_rows": best_view.num_rows, "best_view_equals_snapshot": equal,
            "history_one_key_s": history_s, "history_one_key_rows": history_rows,
            "small_append_64_rows_ms": 1e3 * statistics.median(step_times),
            "table_bytes": _size(table.path), "snapshot_bytes": _size(snapshot_path),
            "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
