"""Seed fits for training samples that have none: SPIN's static fits, made from the shards by SMPLify from the mean.

SPIN starts from fits made offline (``data/static_fits``); a key without a fit would otherwise be supervised by
nothing until the loop's first fit of it. Each missing sample's keypoints go into the fit frame (the unaugmented
training crop, `training.geometry`), SMPLify starts from the mean pose facing the camera (global orientation π
about x, body pose 0, betas 0) with the translation estimated from the torso, and the fits become ``source="seed"``
rows of the fits table. The row's loss is SMPLify's own (its camera, the unaugmented keypoints): the number loop
fits are compared with.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from fitting.camera import CROP_FOCAL, translation_from_torso
from fitting.smplify import SMPLify
from shards.augment import AugmentParams, augment_keypoints, training_transform
from shards.fits_schema import FitProvenance, fits_from_smplify
from shards.fits_table import FitsTable
from shards.joints import JOINT_INDEX
from shards.reader import iter_shard, list_shards
from shards.sample import StoredSample
from training.fits_store import FitsStore
from training.geometry import FIT_CENTER, fit_frame_px

TORSO_PAIRS = ((JOINT_INDEX["Right Shoulder"], JOINT_INDEX["Right Hip"]),
               (JOINT_INDEX["Left Shoulder"], JOINT_INDEX["Left Hip"]))


def unaugmented_keypoints(sample: StoredSample, res: int = 224) -> np.ndarray:
    """A stored sample's keypoints (49, 3) normalised across its unaugmented training crop (the reader's frame
    for flip = rot = 0, scale = 1)."""
    crop = sample.meta["crop"]
    to_crop = training_transform(np.asarray(crop["box_center"], np.float64), float(crop["box_side"]),
                                 AugmentParams(), res)
    return augment_keypoints(sample.keypoints_crop, to_crop, False, res)


def mean_start(smplify: SMPLify, keypoints_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPIN's mean start for fit-frame keypoints (B, 49, 3): pose (B, 72) upright facing the camera, betas 0,
    cam_t (B, 3) from the torso's size and place."""
    batch = keypoints_px.shape[0]
    pose = keypoints_px.new_zeros(batch, 72)
    pose[:, 0] = torch.pi
    betas = keypoints_px.new_zeros(batch, smplify.body.num_betas)
    with torch.no_grad():
        joints = smplify.body(betas, pose[:, 3:], pose[:, :3]).joints
    center = torch.full((batch, 2), FIT_CENTER, dtype=keypoints_px.dtype, device=keypoints_px.device)
    return pose, betas, translation_from_torso(joints, keypoints_px, CROP_FOCAL, center, TORSO_PAIRS)


def seed_missing_fits(table: FitsTable, store: FitsStore, smplify: SMPLify, shard_dirs: Sequence, splits: Sequence[str],
                      provenance: FitProvenance, batch_size: int = 64,
                      on_batch: Callable[[int], None] | None = None) -> int:
    """Fit every sample of the shard sets' ``splits`` whose key has no fit in ``store``, offer the fits to the
    store and write them in one commit. Returns the number of fits written."""
    device = next(iter(smplify.body.buffers())).device
    pending: list[StoredSample] = []
    kept = 0

    def fit(samples: list[StoredSample]) -> int:
        kp = torch.as_tensor(np.stack([unaugmented_keypoints(s) for s in samples]), device=device)
        kp_px = fit_frame_px(kp)
        pose, betas, cam_t = mean_start(smplify, kp_px)
        center = torch.full((len(samples), 2), FIT_CENTER, device=device)
        result = smplify(kp_px, pose, betas, cam_t, center)
        if on_batch is not None:
            on_batch(len(samples))
        return store.offer(fits_from_smplify(result, [s.key for s in samples], provenance))

    for shard in list_shards(shard_dirs, (), splits):
        for sample in iter_shard(shard, verify=False):
            if sample.key not in store:
                pending.append(sample)
            if len(pending) == batch_size:
                kept += fit(pending)
                pending = []
    if pending:
        kept += fit(pending)
    store.flush(table)
    return kept
