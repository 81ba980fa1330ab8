"""`fitloop bench seeding`: the seeding flow's fits/s in this process and on a local Dask cluster of N workers.

Issue 17's scale-out: on 2 cores, are two single-thread worker processes worth their overhead, and does one
process with two torch threads do as well? The same shard set is seeded (`fits.seeding.seed_fits`: batched SMPLify
from the mean start, what `fitloop fits seed` and the seed_fits flow run) into a fresh fits table by each arm:

* ``in-process/T``: no Dask, this process with T torch threads (the baseline is ``in-process/1``);
* ``dask/N``: a local cluster of N worker processes of one thread each (`pipelines.cluster.dask_client`, as the
  flows start it; each task fits one batch with one torch thread: `fits.seeding.fit_batch`).

**Data.** People rendered by `bench.synthetic_shards` from two pose sources, so no single pose distribution sets
the figure: CMU motion capture of the held-out ``test`` subjects (never seen by the pose prior) and SPIN's LSP fits;
the keypoints are the rendered people's, the starts the mean pose (what seeding fits from). **Timed**: wall time
of each whole seeding (reading the shards, fitting, the one commit), best of ``repeats`` alternating runs after
one untimed warm-up run of every arm (loading the model, building each worker's fitter); cluster start-up is not
timed. Every arm must append the same number of fits and reach the same mean loss (to float rounding across
thread counts): a faster arm that fits less would be refused, not reported.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.synthetic_shards import TEST_POSES, DatasetSpec, write_synthetic_shards
from fits.seeding import SeedConfig, seed_fits
from pipelines.cluster import dask_client

SOURCES = ("cmu-test", "lsp")  # pose sources of the seeded people (module docstring)
MEAN_LOSS_RTOL = 1e-3          # arms' mean losses agree to this (float rounding of other thread counts)


def _specs(people: int) -> list[DatasetSpec]:
    half = people // 2
    return [DatasetSpec("seed-cmu", "test", half, cmu="test"),
            DatasetSpec("seed-lsp", "test", people - half, poses=TEST_POSES)]


def run(people: int = 512, batch_size: int = 64, workers: tuple[int, ...] = (1, 2), threads: tuple[int, ...] = (1, 2),
        repeats: int = 2, body_model: str = "open", seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Seed ``people`` rendered people with every arm (module docstring); returns fits/s per arm, each arm's ratio
    to ``in-process/1``, and the load average."""
    if people < 2 or batch_size < 1 or repeats < 1 or any(n < 1 for n in (*workers, *threads)):
        raise ValueError("people >= 2, batch_size, repeats, workers and threads >= 1")
    config = SeedConfig(body_model=body_model, batch_size=batch_size)
    before = torch.get_num_threads()
    best: dict[str, float] = {}
    outcome: dict[str, tuple[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fitloop-bench-seed-") as tmp:
        tmp = Path(tmp)
        manifest = write_synthetic_shards(tmp / "data", _specs(people), body_model=body_model, res=128,
                                          samples_per_shard=max(batch_size, 100), seed=seed)
        shards = tmp / "data" / "shards"
        samples = manifest["counts"]["written"]
        clients = {n: dask_client(None, n) for n in workers}
        opened = {n: ctx.__enter__() for n, ctx in clients.items()}
        try:
            arms: list[tuple[str, Any, int]] = [(f"in-process/{t}", None, t) for t in threads]
            arms += [(f"dask/{n}", opened[n], 1) for n in workers]
            for run_index in range(repeats + 1):  # run 0 warms up each arm (model loading, workers' fitters)
                for name, client, n_threads in arms:
                    table = tmp / f"fits-{name.replace('/', '-')}"
                    shutil.rmtree(table, ignore_errors=True)
                    torch.set_num_threads(n_threads)
                    start = time.perf_counter()
                    result = seed_fits(shards, table, config, client=client)
                    seconds = time.perf_counter() - start
                    outcome[name] = (result.appended, result.mean_loss)
                    if run_index == 0:
                        continue
                    best[name] = min(best.get(name, math.inf), seconds)
                    if progress:
                        print(f"  {name:<14} {samples / seconds:7.1f} fits/s ({seconds:.1f} s, mean loss "
                              f"{result.mean_loss:.2f})", file=sys.stderr, flush=True)
        finally:
            torch.set_num_threads(before)
            for ctx in clients.values():
                ctx.__exit__(None, None, None)
    first = next(iter(outcome.values()))
    for name, (appended, loss) in outcome.items():
        if appended != first[0] or not math.isclose(loss, first[1], rel_tol=MEAN_LOSS_RTOL):
            raise RuntimeError(f"arm {name} appended {appended} fits at mean loss {loss:.4f}, the first arm "
                               f"{first[0]} at {first[1]:.4f}: the arms did not do the same work")
    rates = {name: samples / s for name, s in best.items()}
    baseline = rates.get("in-process/1")
    return {"benchmark": "seeding", "samples": samples, "sources": list(SOURCES), "batch_size": batch_size,
            "body_model": body_model, "repeats": repeats, "fits_per_s": rates,
            "ratio_vs_in_process_1": {n: r / baseline for n, r in rates.items()} if baseline else {},
            "mean_loss": first[1], "load_average": os.getloadavg(), "cores": os.cpu_count()}
