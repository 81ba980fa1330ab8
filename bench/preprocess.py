"""Preprocessing throughput on Dask: the same shard set written by a local cluster of 1 and of 2 workers.

Data: the fixture images (COCO and MPII, ../shared/fixtures) through the real adapters, copied into a temporary
dataset of ``copies`` × 17 persons with one image file each (`bench.shards.replicate`); chunks of
``samples_per_shard`` persons, so there are enough chunks to keep every worker busy. Records are read once,
before timing; each run writes the whole set (decode, crop, encode, tar, manifest) into a fresh folder. Cluster
start-up is not timed. Each worker count runs ``repeats`` times, alternating, and its best run counts.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.shards import FIXTURES, fixture_records, replicate
from pipelines.cluster import dask_client
from pipelines.preprocess import write_shard_set
from shards.writer import ShardConfig


def run(copies: int = 48, samples_per_shard: int = 34, repeats: int = 2, workers: tuple[int, ...] = (1, 2),
        progress: bool = True) -> dict:
    if not FIXTURES.is_dir():
        raise FileNotFoundError(f"{FIXTURES} is absent: this benchmark reads the real fixture images")
    config = ShardConfig(samples_per_shard=samples_per_shard)
    with tempfile.TemporaryDirectory(prefix="fitloop-bench-pre-") as tmp:
        tmp = Path(tmp)
        records = replicate(fixture_records(FIXTURES, ("coco", "mpii")), tmp / "data", copies)
        inputs = [{"dataset": "bench", "split": "-", "root": str(tmp / "data"), "options": {}}]
        best: dict[int, float] = {}
        clients = {n: dask_client(None, n) for n in workers}
        opened = {n: ctx.__enter__() for n, ctx in clients.items()}
        try:
            for _ in range(repeats):
                for n in workers:
                    out = tmp / f"out-{n}"
                    shutil.rmtree(out, ignore_errors=True)
                    start = time.perf_counter()
                    manifest = write_shard_set(records, inputs, out, config, client=opened[n])
                    seconds = time.perf_counter() - start
                    assert manifest["counts"]["written"] == len(records)
                    best[n] = min(best.get(n, float("inf")), seconds)
                    if progress:
                        print(f"  {n} worker(s): {len(records) / seconds:7.1f} samples/s ({seconds:.2f} s)",
                              file=sys.stderr, flush=True)
        finally:
            for ctx in clients.values():
                ctx.__exit__(None, None, None)
    rates = {n: len(records) / s for n, s in best.items()}
    result = {"benchmark": "preprocess", "samples": len(records), "chunks": -(-len(records) // samples_per_shard),
              "samples_per_s": {str(n): r for n, r in rates.items()}}
    if 1 in rates and 2 in rates:
        result["ratio_2_vs_1"] = rates[2] / rates[1]
    return result
