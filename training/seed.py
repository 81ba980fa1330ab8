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

from core.frames import FIT_CENTER, keypoints_in_fit_frame
from fits.schema import FitProvenance, fits_from_smplify
from fits.store import FitsStore
from fits.table import FitsTable
from fitting.smplify import SMPLify, mean_pose_start
from shards.reader import iter_shard, list_shards
from shards.sample import StoredSample


def seed_missing_fits(table: FitsTable, store: FitsStore, smplify: SMPLify, shard_dirs: Sequence, splits: Sequence[str],
                      provenance: FitProvenance, batch_size: int = 64,
                      on_batch: Callable[[int], None] | None = None) -> int:
    """Fit every sample of the shard sets' ``splits`` whose key has no fit in ``store``, offer the fits to the
    store and write them in one commit. Returns the number of fits written."""
    device = next(iter(smplify.body.buffers())).device
    pending: list[StoredSample] = []
    kept = 0

    def fit(samples: list[StoredSample]) -> int:
        kp_px = torch.as_tensor(np.stack([keypoints_in_fit_frame(s.keypoints_crop, s.meta["crop"]) for s in samples]),
                                device=device)
        pose, betas, cam_t = mean_pose_start(smplify.body, kp_px)
        center = torch.full((len(samples), 2), FIT_CENTER, device=device)
        result = smplify(kp_px, pose, betas, cam_t, center, start="mean")
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
