"""`fitloop bench smplify --workers N`: the throughput row run by N single-thread processes at once.

One process with one torch thread uses one core; a machine's cores are used by several such processes (two
torch threads in one process lose badly when the cores are shared: issue 17). Each worker is a ``spawn``ed
process that loads the body model and the pose prior itself, sets one torch thread, and, per start level:
fits the level's batch once as a warm-up, waits at a barrier with the others and the parent, then fits
``calls`` calls of that batch (the same examples in every worker: SMPLify's fits are independent per example, so
what is fitted does not change the work) and reports its wall and CPU seconds. The parent's clock runs from the
barrier's release until the last worker has reported: **fits/s = N × calls × batch / that wall time**, what the
N processes deliver together (the spawn, the model loading and the warm-up are outside it). CPU only.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from core.errors import FitloopError

WORKER_CALLS = 2          # timed calls of the batch per worker and start level
BARRIER_TIMEOUT_S = 600   # a worker that never reaches the barrier (failed to start) fails the run, not hangs it


def _worker(model: str, prior_path: str, compile: bool, tasks: Any, results: Any, barrier: Any) -> None:
    """A worker process (module docstring): loads, then serves (level, inputs, start) tasks until None."""
    torch.set_num_threads(1)
    from fitting.body_model import load_body_model
    from fitting.priors import load_pose_prior
    from fitting.smplify import SMPLify, SMPLifyConfig

    fitter = SMPLify(load_body_model(model), load_pose_prior(Path(prior_path)),
                     SMPLifyConfig(compile=compile))
    while (task := tasks.get()) is not None:
        level, (kp, focal, center, pose, betas, cam_t), start, calls = task

        def fit() -> None:
            fitter(kp, pose, betas, cam_t, center, start=start, focal_length=focal)

        fit()                                         # warm-up (and compilation), outside the parallel part
        barrier.wait(BARRIER_TIMEOUT_S)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            fit()
        results.put((level, calls * len(kp), time.perf_counter() - wall, time.process_time() - cpu))


def parallel_throughput(model: str, prior_path: Path, inputs: dict[str, tuple[tuple[torch.Tensor, ...], str]],
                        workers: int, compile: bool = False, calls: int = WORKER_CALLS) -> dict[str, dict[str, Any]]:
    """Per start level (``inputs``: level -> (keypoints, focal, center, pose, betas, cam_t) of one batch, start
    kind), the fits/s of ``workers`` single-thread processes fitting ``calls`` calls of that batch each, at once
    (module docstring); with each worker's own wall and CPU seconds and the load average before and after.
    compile: the workers' SMPLifyConfig.compile."""
    ctx = mp.get_context("spawn")
    tasks, results, barrier = ctx.Queue(), ctx.Queue(), ctx.Barrier(workers + 1)
    procs = [ctx.Process(target=_worker, args=(model, str(prior_path), compile, tasks, results, barrier), daemon=True)
             for _ in range(workers)]
    for p in procs:
        p.start()
    out: dict[str, dict[str, Any]] = {}
    try:
        for level, (tensors, start) in inputs.items():
            load0 = os.getloadavg()
            for _ in procs:
                tasks.put((level, tuple(t.cpu() for t in tensors), start, calls))
            try:
                barrier.wait(BARRIER_TIMEOUT_S)                   # every worker loaded and warmed up
            except threading.BrokenBarrierError:
                raise FitloopError(f"bench smplify --workers: a worker did not start fitting within "
                                   f"{BARRIER_TIMEOUT_S} s (its error, if any, is printed above)") from None
            wall = time.perf_counter()
            reports = [results.get(timeout=BARRIER_TIMEOUT_S) for _ in procs]
            wall = time.perf_counter() - wall
            fits = sum(r[1] for r in reports)
            out[level] = {"workers": workers, "threads_per_worker": 1, "calls_per_worker": calls,
                          "batch": len(tensors[0]), "fits": fits, "wall_s": wall, "fits_per_s": fits / wall,
                          "worker_wall_s": [r[2] for r in reports], "worker_cpu_s": [r[3] for r in reports],
                          "fits_per_cpu_s": fits / sum(r[3] for r in reports),
                          "load_average_start": list(load0), "load_average_end": list(os.getloadavg())}
    finally:
        for _ in procs:
            tasks.put(None)
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():                                      # only our own workers, by handle
                p.terminate()
    return out
