"""Training-step benchmark: time per step of `fitloop train` and where it goes, against SPIN's SMPLify in the step.

Data: a synthetic shard set (`bench.synthetic_shards`: rendered open-model bodies, half with ground-truth SMPL and
3D joints as H36M, half 2D-only with OpenPose detections as the in-the-wild sets) with enough samples for the
timed steps, and seed fits for all of them (SPIN's static fits). The run is built exactly as `fitloop train`
builds it (`training.loop.setup`) and steps with `training.loop.train_step`; the step's parts are timed with a
CUDA sync at the end of each part:

* data: the next batch from the DataLoader and its copy to the device;
* network: the regressor and body model forward, the losses, backward and Adam;
* smplify: the stored fits re-scored and SMPLify run from the prediction;
* write_back: SPIN's choice, the winners undone to the canonical frame, scored, and kept by the fits store.

Plus the cost of one write to the fits table (`flush`, once per checkpoint in training, amortised over its steps).

Host syncs (`count_syncs`, ``fitloop bench train-step --count-syncs``): one step's reads of tensor values
(`core.host_syncs.count_host_syncs`) for the hmr and keypoints heads, with and without SMPLify in the loop, filed
by the package whose line makes them (docs/training.md, "Host syncs"). The timing below always times the parts
(``profile_parts``), which on CUDA adds a sync per part.

Baseline: the same step with SPIN's SMPLify procedure (``mode="reference"``: Adam, 100 iterations per stage on the
full mesh) in place of fitloop's default solver. Figures are medians over the timed steps after warm-up.
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from bench.synthetic_shards import DatasetSpec, write_synthetic_shards
from core.host_syncs import HostSyncs, count_host_syncs
from fits.seeding import SeedConfig, seed_fits
from fits.store import FitsStore
from fitting.smplify import SMPLifyConfig
from training.config import TrainConfig
from training.loop import Position, Run, resolve, setup, train_step
from training.run_log import PARTS
from training.step_stats import StepStats, StepTimer

REPO = Path(__file__).resolve().parents[1]


def _seeded_run(config: TrainConfig) -> tuple[Run, FitsStore, int, float]:
    """(the run as `fitloop train` builds it, its fits store after seeding every training sample, fits seeded,
    seconds the seeding took); the data stream at its first batch."""
    run = setup(config)
    seeding = SeedConfig(body_model=config.body_model, joint_regressor_extra=config.joint_regressor_extra,
                         pose_prior=config.pose_prior, smplify=config.smplify, batch_size=config.batch_size,
                         run_id="bench-seed", device=str(run.smplify_device))
    start = time.perf_counter()
    seeded = seed_fits([Path(s) for s in config.shards], run.table.path, seeding, splits=config.train_splits,
                       missing_only=True).appended
    seed_s = time.perf_counter() - start if seeded else 0.0
    run.stream.set_position(0, 0)
    return run, FitsStore.load(run.table, run.body.model_id), seeded, seed_s


def _time_steps(config: TrainConfig, steps: int, warmup: int) -> dict:
    run, store, seeded, seed_s = _seeded_run(config)
    batches = iter(run.loader)
    timer = StepTimer(run.device, parts=True)
    per_step, updated = [], []
    pos = Position()
    for i in range(warmup + steps):
        stats = StepStats()
        with timer.step():
            with timer.part("data"):
                items = next(batches)
            stats.add(train_step(run, store, items, pos, timer))
        pos.step += 1
        times = timer.take()
        updated.append(stats.take()["fits_updated"])
        if i >= warmup:
            per_step.append(times)
    start = time.perf_counter()
    rows = store.pending_rows
    store.flush(run.table)
    flush_ms = 1000 * (time.perf_counter() - start)
    median = {key: statistics.median(t[key] for t in per_step) for key in per_step[0]}
    return {"step_ms": median["step_ms"], "parts_ms": {p: median[f"{p}_ms"] for p in PARTS},
            "smplify_share": median["smplify_ms"] / median["step_ms"],
            "samples_per_s": config.batch_size / (median["step_ms"] / 1000),
            "flush_ms": flush_ms, "flush_rows": rows, "fits_updated": statistics.mean(updated),
            "seeded": seeded, "seed_fits_per_s": seeded / seed_s if seed_s else None,
            "steps_ms": [t["step_ms"] for t in per_step]}


def count_step(config: TrainConfig, warmup: int = 1, counter: Callable = count_host_syncs) -> HostSyncs:
    """The host syncs of one training step after ``warmup`` steps, the run built as `fitloop train` builds it, its
    training samples seeded first; counted by ``counter`` (`core.host_syncs.count_host_syncs`, or
    `count_cuda_syncs` on a CUDA run), sites relative to the repository."""
    run, store, _, _ = _seeded_run(config)
    batches = iter(run.loader)
    timer = StepTimer(run.device)
    pos = Position()
    for _ in range(warmup):
        train_step(run, store, next(batches), pos, timer)
        pos.step += 1
    items = next(batches)
    with counter(REPO) as syncs:
        train_step(run, store, items, pos, timer)
    run.log.close()
    return syncs


def _sync_record(syncs: HostSyncs) -> dict:
    return {"total": syncs.total, "by_folder": {f: syncs.under(f) for f in ("training", "fitting", "fits", "core")},
            "by_kind": syncs.by_kind(), "sites": {f"{kind} {where}": n for (kind, where), n in syncs.sites.items()},
            "torch_own": sum(syncs.torch_own.values())}


SYNC_COUNT = "train-step host syncs"  # the "benchmark" of `count_syncs`'s record (`run`'s has none)


def count_syncs(*, batch: int = 8, img_res: int = 64, backbone: int = 18, body_model: str = "open-small",
                warmup: int = 1, workdir: Path | None = None, seed: int = 0) -> dict:
    """Host syncs per training step (`core.host_syncs`: the step's reads of tensor values, counted on CPU) for the
    hmr and keypoints heads, each with and without SMPLify in the loop; returns a JSON-able record."""
    with tempfile.TemporaryDirectory(prefix="fitloop-bench-syncs-", dir=workdir) as tmp:
        root = Path(tmp)
        per_set = batch * (warmup + 2)
        write_synthetic_shards(root / "data", [
            DatasetSpec("synth-h36m", "train", per_set, smpl=True, joints_3d=True, masks=True),
            DatasetSpec("synth-wild", "train", per_set, openpose=True, masks=True)],
            body_model=body_model, res=img_res, samples_per_shard=max(16, per_set // 2), seed=seed)
        result: dict = {"benchmark": SYNC_COUNT, "batch": batch, "body_model": body_model,
                        "counted": "reads of tensor values by the step "
                        "(core.host_syncs: item, tolist, numpy, bool, float, int, index, nonzero, mask indexing); "
                        "torch's own reads (Adam's host-side step counter) apart"}
        for head in ("hmr", "keypoints"):
            for smplify in (True, False):
                name = f"{head}_{'smplify' if smplify else 'no_smplify'}"
                config = resolve(TrainConfig(
                    shards=(str(root / "data" / "shards"),), fits=str(root / f"fits-{name}"),
                    run_dir=str(root / f"run-{name}"), head=head, backbone=backbone, img_res=img_res,
                    batch_size=batch, body_model=body_model, device="cpu", num_workers=0, run_smplify=smplify,
                    mix="synth-h36m=0.5;*=0.5", steps_per_epoch=warmup + 1, tensorboard=False, seed=seed,
                    eval_splits=("none",)))
                result[name] = _sync_record(count_step(config, warmup))
        return result


def run(*, batch: int = 16, steps: int = 5, warmup: int = 1, backbone: int = 50, img_res: int = 224,
        body_model: str = "open", device: str = "cpu", smplify_device: str = "cpu", amp: str = "auto",
        baseline: bool = True, workdir: Path | None = None, num_workers: int = 1, seed: int = 0) -> dict:
    """Time ``steps`` training steps (after ``warmup``) with fitloop's SMPLify and, with ``baseline``, with SPIN's
    procedure; returns a JSON-able record."""
    with tempfile.TemporaryDirectory(prefix="fitloop-bench-train-", dir=workdir) as tmp:
        root = Path(tmp)
        per_set = batch * (steps + warmup + 1)
        # checked first (`training.config.InvalidConfigError`): a bad setting is refused before any data is written
        base = resolve(TrainConfig(
            shards=(str(root / "data" / "shards"),), fits=str(root / "fits"), run_dir=str(root / "run"),
            backbone=backbone, img_res=img_res, batch_size=batch, body_model=body_model, device=device,
            smplify_device=smplify_device, amp=amp, num_workers=num_workers, mix="synth-h36m=0.3;*=0.7",
            steps_per_epoch=steps + warmup, tensorboard=False, seed=seed, eval_splits=("none",)).validated())
        write_synthetic_shards(root / "data", [
            DatasetSpec("synth-h36m", "train", per_set // 2, smpl=True, joints_3d=True),
            DatasetSpec("synth-wild", "train", per_set - per_set // 2, openpose=True)],
            body_model=body_model, res=img_res, samples_per_shard=max(16, per_set // 4), seed=seed)
        result = {"batch": batch, "backbone": f"resnet{backbone}", "img_res": img_res, "body_model": body_model,
                  "device": device, "smplify_device": smplify_device, "threads": torch.get_num_threads(),
                  "steps": steps, "warmup": warmup}
        if device == "cuda" or device.startswith("cuda"):
            result["gpu"] = torch.cuda.get_device_name(0)
        result["fitloop"] = _time_steps(base, steps, warmup)
        if baseline:
            spin = dataclasses.replace(base, run_dir=str(root / "run-spin"),
                                       smplify=SMPLifyConfig(mode="reference", iterations=100))
            result["spin_smplify"] = _time_steps(spin, steps, warmup)
            result["speedup_vs_spin_smplify"] = (result["spin_smplify"]["step_ms"]
                                                 / result["fitloop"]["step_ms"])
        try:
            import os
            result["load_average"] = list(os.getloadavg())
            result["cpus"] = os.cpu_count()
        except OSError:
            pass
        return result
