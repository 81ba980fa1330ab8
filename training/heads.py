"""The regressor a run trains, by name (`TrainConfig.head`, ``fitloop train --head``): a small registry.

Every head maps some of a reader item's tensors (`shards.reader.ShardReader`'s layout) to a
`training.regressor.RegressorOutput` (rotations, betas, weak-perspective camera), so the step, the losses, SMPLify
in the loop, the fits table and checkpoints work the same for each. A head names the item keys its network reads,
in the order of its ``forward``'s arguments, and builds its network from the mean parameters and the config.
A checkpoint records the head it holds (``head``); a resume or a load with another refuses.

=============  ==================================================================================================
``hmr``        SPIN's ResNet + HMR iterative error feedback on the image (`training.regressor.Regressor`), the
               default; the only head with SMPL-X-layout (whole-body) heads.
``keypoints``  Pavlakos et al. 2018's PosePrior (2D keypoints -> pose, camera) and ShapePrior (mask -> shape)
               (`training.keypoint_regressor.KeypointRegressor`); no pixels, learns on CPU in minutes.
``graphcmr``   Kolotouros et al. 2019's graph CNN on the image's ResNet features: a coarse mesh's vertices and
               the camera, then the parameters from the vertices (`training.graphcmr.GraphCMR`); its mesh adds
               GraphCMR's per-vertex and keypoint losses (`training.graphcmr.mesh_losses`).
``volumetric`` Pavlakos et al. 2017 / Sun et al. 2018: per-joint volumes by soft-argmax (24 J24 joints, crop x, y
               and root-relative depth) beside HMR's regressor on the same ResNet
               (`training.volumetric.VolumetricRegressor`); its joints add L1 2D and depth losses.
=============  ==================================================================================================

A new head is one more `Head` in `HEADS`; loss terms of its own are named in ``terms`` and added by the step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from training import graphcmr
from training.keypoint_regressor import KeypointRegressor
from training.regressor import MeanParams, Regressor
from training.volumetric import VOLUME_TERMS, VolumetricRegressor


@dataclass(frozen=True)
class Head:
    """A regressor design: ``inputs`` the reader item keys its network reads (its forward's arguments, in order);
    ``build(mean, config)`` its network (config: a `training.config.TrainConfig`); ``whole_body``: whether it has
    SMPL-X-layout heads for an SMPL-X-layout body model; ``terms``: the loss terms of its own that the step adds
    (`training.step.compute_losses`) and the run logs."""

    name: str
    inputs: tuple[str, ...]
    build: Callable[[MeanParams, Any], nn.Module]
    whole_body: bool
    summary: str
    terms: tuple[str, ...] = ()

    def arguments(self, items: Mapping[str, Tensor], device: torch.device,
                  rows: Tensor | None = None) -> tuple[Tensor, ...]:
        """The network's arguments from a collated reader batch (or any mapping with those keys), on ``device``;
        rows: the examples to keep ((B,) bool or (N,) long; None: all)."""
        values = tuple(items[key] for key in self.inputs)
        if rows is not None:
            values = tuple(v[rows.to(v.device)] for v in values)
        return tuple(v.to(device, non_blocking=True) for v in values)


def _hmr(mean: MeanParams, config: Any) -> nn.Module:
    return Regressor(mean, depth=config.backbone, iterations=config.ief_iterations)


def _keypoints(mean: MeanParams, config: Any) -> nn.Module:
    return KeypointRegressor(mean)


def _volumetric(mean: MeanParams, config: Any) -> nn.Module:
    return VolumetricRegressor(mean, img_res=config.img_res, depth=config.backbone, iterations=config.ief_iterations)


HEADS: dict[str, Head] = {head.name: head for head in (
    Head("hmr", ("img",), _hmr, True, "SPIN's ResNet + HMR regressor on the image (default)"),
    Head("keypoints", ("keypoints", "mask", "has_mask"), _keypoints, False,
         "Pavlakos 2018: keypoints -> pose and camera, mask -> shape"),
    Head("graphcmr", ("img",), graphcmr.build, False,
         "Kolotouros 2019: ResNet features on a coarse mesh, graph CNN -> vertices, vertices -> parameters",
         graphcmr.MESH_TERMS),
    Head("volumetric", ("img",), _volumetric, False,
         "Pavlakos 2017 / Sun 2018: ResNet -> per-joint 3D volumes (soft-argmax) + HMR's regressor",
         VOLUME_TERMS),
)}
DEFAULT_HEAD = "hmr"


def head_of(name: str) -> Head:
    """The registered head ``name``; ValueError naming the known ones."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}: one of {', '.join(HEADS)}")
    return HEADS[name]
