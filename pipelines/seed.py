"""Seed fits: fit every sample of a shard set from SPIN's mean pose with SMPLify and append the fits to a table.

SPIN starts training from static fits made offline; fitloop makes them from the shards themselves. Each sample's
stored-crop keypoints go into SPIN's fit frame (the 224 px crop of the person box, `shards.fit_view`), SMPLify
starts from the mean pose facing the camera (global orientation π about x, body pose 0, betas 0) with the
translation estimated from the torso (`fitting.camera.translation_from_torso`), and the fits are appended with
``source="seed"``: only strict improvements on what the table already holds (`shards.fits_table.BestLosses`), so a
second run over the same shards appends nothing worse.

`seed_fits` is a plain function; a flow calls it per shard set (or per list of keys).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from fitting.smplify import SMPLifyConfig
from shards.fit_view import FIT_FOCAL, FIT_RES, keypoints_in_fit_frame
from shards.joints import JOINT_INDEX
from shards.sample import StoredSample

DEFAULT_PRIOR = Path(__file__).resolve().parents[1] / "fitting" / "data" / "pose_prior_open.npz"
# Shoulder-to-hip on each side: the similar-triangles depth of the start (SMPLify's own torso estimate).
TORSO_PAIRS = (("Right Shoulder", "Right Hip"), ("Left Shoulder", "Left Hip"))


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


def mean_pose_start(body: Any, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPIN's mean start for fit-frame keypoints (B, 49, 3): pose (B, 72) with global orientation (π, 0, 0) (upright,
    facing the camera) and body pose 0, betas (B, NB) 0, cam_t (B, 3) metres from the torso's size and place."""
    batch = keypoints.shape[0]
    pose = torch.zeros(batch, 72)
    pose[:, 0] = torch.pi
    betas = torch.zeros(batch, body.num_betas)
    with torch.no_grad():
        joints = body(betas, pose[:, 3:], pose[:, :3]).joints
    from fitting.camera import translation_from_torso

    pairs = tuple((JOINT_INDEX[a], JOINT_INDEX[b]) for a, b in TORSO_PAIRS)
    center = torch.full((batch, 2), FIT_RES / 2.0)
    return pose, betas, translation_from_torso(joints, keypoints, FIT_FOCAL, center, pairs)


def _batches(samples: Iterator[StoredSample], size: int) -> Iterator[list[StoredSample]]:
    batch: list[StoredSample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def seed_fits(shard_dir: Path, table_path: Path, config: SeedConfig = SeedConfig(), *,
              keys: Sequence[str] | None = None,
              on_batch: Callable[[int], None] | None = None) -> SeedResult:
    """Fit the samples of ``shard_dir`` (all, or only ``keys``) from the mean pose; append the improvements to the
    fits table at ``table_path`` (created when missing), one commit per batch.

    Rows carry ``source="seed"``, the body model's id, ``config_hash(config)`` and ``config.run_id``; pose is
    canonical (the stored crop is never flipped or rotated) and ``cam_t`` is in SPIN's fit frame.
    ``on_batch(n)`` is called after each batch of n samples (a progress bar).
    """
    from fitting.body_model import load_body_model
    from fitting.priors import MaxMixturePrior
    from fitting.smplify import SMPLify
    from shards.fits_schema import FitProvenance, config_hash, fits_from_smplify
    from shards.fits_table import FitsTable
    from shards.lookup import iter_samples

    if config.smplify.focal_length != FIT_FOCAL:
        raise ValueError(f"seed fits live in SPIN's fit frame (focal {FIT_FOCAL} px); SMPLifyConfig has "
                         f"{config.smplify.focal_length}")
    body = load_body_model(config.body_model)
    fitter = SMPLify(body, MaxMixturePrior.from_file(config.pose_prior), config.smplify)
    table = FitsTable.create(table_path, exist_ok=True)
    known = table.best_losses()
    provenance = FitProvenance(run_id=config.run_id, body_model_id=body.model_id,
                               fit_config_hash=config_hash(asdict(config)), source="seed")
    result, losses = SeedResult(), []
    for batch in _batches(iter_samples(shard_dir, keys), config.batch_size):
        keypoints = torch.as_tensor(np.stack([keypoints_in_fit_frame(s.keypoints_crop, s.meta["crop"])
                                              for s in batch]))
        pose, betas, cam_t = mean_pose_start(body, keypoints)
        center = torch.full((len(batch), 2), FIT_RES / 2.0)
        fit = fitter(keypoints, pose, betas, cam_t, center)
        appended = table.append(fits_from_smplify(fit, [s.key for s in batch], provenance), best=known)
        result.fitted += len(batch)
        result.appended += appended.rows
        if appended.version is not None:
            result.versions.append(appended.version)
        losses.append(fit.loss.numpy())
        if on_batch is not None:
            on_batch(len(batch))
    if losses:
        result.mean_loss = float(np.concatenate(losses).mean())
    return result
