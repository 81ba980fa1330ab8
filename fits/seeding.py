"""Seed fits: fit every sample of a shard set from SPIN's mean pose with SMPLify and append the fits to a table.

SPIN starts training from static fits made offline; fitloop makes them from the shards themselves. Each sample's
stored-crop keypoints go into SPIN's fit frame (the 224 px crop of the person box, `core.frames`), SMPLify
starts from the mean pose facing the camera (global orientation π about x, body pose 0, betas 0) with the
translation estimated from the torso (`core.camera.translation_from_torso`), and the fits are appended with
``source="seed"``: only strict improvements on what the table already holds (`fits.table.BestLosses`), so a
second run over the same shards appends nothing worse.

`seed_fits` is a plain function; a flow calls it per shard set (or per list of keys).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from core.frames import FIT_FOCAL, FIT_RES, keypoints_in_fit_frame
from fitting.priors import DEFAULT_PRIOR
from fitting.smplify import SMPLifyConfig, mean_pose_start
from shards.lookup import iter_samples


@dataclass(frozen=True)
class SeedConfig:
    """How seed fits are made; its hash is every row's ``fit_config_hash``.

    Attributes:
        body_model: ``"open"`` or a path to a real SMPL file (`fitting.body_model.load_body_model`).
        pose_prior: the max-mixture pose prior file (`fitting.priors.MaxMixturePrior.from_file`).
        smplify: SMPLify's settings (SPIN's weights; ``focal_length`` must be the fit frame's 5000 px).
        batch_size: samples fitted per SMPLify call.
        run_id: the run every row names.
    """

    body_model: str = "open"
    pose_prior: str = str(DEFAULT_PRIOR)
    smplify: SMPLifyConfig = field(default_factory=SMPLifyConfig)
    batch_size: int = 64
    run_id: str = "seed"


@dataclass
class SeedResult:
    """What `seed_fits` did: samples fitted, rows appended (improvements), the versions committed, mean loss."""

    fitted: int = 0
    appended: int = 0
    versions: list[int] = field(default_factory=list)
    mean_loss: float = float("nan")


def keypoint_batches(shard_dir: Path, size: int, keys: Sequence[str] | None = None,
                     ) -> Iterator[tuple[list[str], np.ndarray]]:
    """(keys, fit-frame keypoints (B, 49, 3)) of a shard set's samples, ``size`` at a time, in manifest order.

    Only the stored keypoints and crop numbers are read; no image is decoded."""
    batch_keys: list[str] = []
    batch_kp: list[np.ndarray] = []
    for sample in iter_samples(shard_dir, keys):
        batch_keys.append(sample.key)
        batch_kp.append(keypoints_in_fit_frame(sample.keypoints_crop, sample.meta["crop"]))
        if len(batch_keys) == size:
            yield batch_keys, np.stack(batch_kp)
            batch_keys, batch_kp = [], []
    if batch_keys:
        yield batch_keys, np.stack(batch_kp)


@lru_cache(maxsize=2)
def _fitter(config: SeedConfig) -> tuple[Any, Any, Any]:
    """The body model, SMPLify and fits provenance for `config`, built once per process (a Dask worker keeps them
    between batches)."""
    from fits.schema import FitProvenance, config_hash
    from fitting.body_model import load_body_model
    from fitting.priors import MaxMixturePrior
    from fitting.smplify import SMPLify

    body = load_body_model(config.body_model)
    fitter = SMPLify(body, MaxMixturePrior.from_file(config.pose_prior), config.smplify)
    provenance = FitProvenance(run_id=config.run_id, body_model_id=body.model_id,
                               fit_config_hash=config_hash(asdict(config)), source="seed")
    return body, fitter, provenance


def fit_batch(keys: list[str], keypoints: np.ndarray, config: SeedConfig, threads: int | None = None) -> Any:
    """Fit one batch from the mean pose; returns its rows for the fits table (`fits.schema.FITS_SCHEMA`).

    A plain function, so it runs the same here or on a Dask worker; ``threads`` caps torch's threads there."""
    from fits.schema import fits_from_smplify

    if threads is not None:
        torch.set_num_threads(threads)
    body, fitter, provenance = _fitter(config)
    kp = torch.as_tensor(keypoints, dtype=torch.float32)
    pose, betas, cam_t = mean_pose_start(body, kp, FIT_FOCAL)
    fit = fitter(kp, pose, betas, cam_t, torch.full((len(keys), 2), FIT_RES / 2.0), start="mean")
    return fits_from_smplify(fit, keys, provenance)


def seed_fits(shard_dir: Path, table_path: Path, config: SeedConfig = SeedConfig(), *,
              keys: Sequence[str] | None = None, client: Any = None,
              on_batch: Callable[[int], None] | None = None) -> SeedResult:
    """Fit the samples of ``shard_dir`` (all, or only ``keys``) from the mean pose and append the improvements to
    the fits table at ``table_path`` (created when missing) in one commit: one seed run is one table version.

    client: a `distributed.Client` to fit the batches on (one batch per task, ``config.batch_size`` samples; each
    worker builds its model once); None fits them here. Rows carry ``source="seed"``, the body model's id,
    ``config_hash(config)`` and ``config.run_id``; pose is canonical (the stored crop is never flipped or rotated)
    and ``cam_t`` is in SPIN's fit frame. ``on_batch(n)`` is called after each batch of n samples.
    """
    import pyarrow as pa

    from fits.table import FitsTable

    if config.smplify.focal_length != FIT_FOCAL:
        raise ValueError(f"seed fits live in SPIN's fit frame (focal {FIT_FOCAL} px); SMPLifyConfig has "
                         f"{config.smplify.focal_length}")
    table = FitsTable.create(table_path, exist_ok=True)
    known = table.best_losses()
    batches = keypoint_batches(Path(shard_dir), config.batch_size, keys)
    if client is None:
        parts = []
        for batch_keys, keypoints in batches:
            parts.append(fit_batch(batch_keys, keypoints, config))
            if on_batch is not None:
                on_batch(len(batch_keys))
    else:
        from distributed import as_completed

        futures = [client.submit(fit_batch, k, kp, config, 1, pure=False) for k, kp in batches]
        for future in as_completed(futures):
            if on_batch is not None:
                on_batch(future.result().num_rows)
        parts = client.gather(futures)
    result = SeedResult(fitted=sum(p.num_rows for p in parts))
    if not parts:
        return result
    fits = pa.concat_tables(parts)
    appended = table.append(fits, best=known)
    result.appended = appended.rows
    result.versions = [] if appended.version is None else [appended.version]
    result.mean_loss = float(np.mean(fits["loss"].to_numpy()))
    return result
