"""The fit frame, named once: its constants, both ways into it, and the camera that maps a fit into a stored crop.

The two entries: `keypoints_in_fit_frame` takes a sample's stored-crop keypoints (seeding, pictures) and
`fit_frame_px` takes the reader's normalised keypoints (the trainer's loop); on an unaugmented sample they agree.

A fit in the fits table (`fits.schema`) is canonical SMPL (never flipped or rotated) in SPIN's crop camera:
the **fit frame** is the 224 px training crop of the person box (SPIN's box, side 200·scale, centred on the box),
seen by a pinhole camera with focal length 5000 px and its principal point at the crop centre; the body's
vertices in camera coordinates are the model's output plus ``cam_t`` (x right, y down, z forward, metres; the
camera rotation is part of the global orientation). SMPLify in SPIN receives the keypoints as ``0.5·res·(k + 1)``
from keypoints normalised with the crop edges at ±1, which puts the crop's edges at 0 and 224 px and its centre at
112: pixel *corners* at integers (`FIT_FRAME_OFFSET`).

A shard's **stored crop** (`shards.crop`) is larger: ``res`` px covering ``margin`` × the box, the box centred at
``box_center`` with side ``box_side`` px, and its pixels have their *centres* at integers. With k = box_side / 224
the two frames are related by::

    u_stored = box_center + k · (u_fit - 112)            (u_fit: fit-frame px, corners at integers)

so the fit's camera in stored-crop px has focal length 5000·k and its principal point at ``box_center``
(`fit_camera`). `shards.crop` already maps stored-crop px to original-image px, so the same fit lands in the
original image with focal 5000·(200·scale)/224 and its principal point at the box centre, as SPIN's evaluation
converts it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.pinhole import pinhole

FIT_FOCAL = 5000.0                # px: SPIN's fixed, fake focal length of the fit frame
FIT_RES = 224                     # px: the fit frame's side (SPIN's training crop)
FIT_CENTER = FIT_RES / 2.0        # px: the fit frame's principal point (112, 112)
FIT_FRAME_OFFSET = 0.5            # fit-frame px (corners at integers) = centre-at-integer px + 0.5


@dataclass(frozen=True)
class CropCamera:
    """A pinhole camera in the pixels of a square picture (pixel centres at integers, as `shards.crop`).

    Attributes:
        focal: px. center: (x, y) px, the principal point. res: the picture's side, px.
    """

    focal: float
    center: tuple[float, float]
    res: int

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3) metres (z > 0 in front) to pixels (..., 2), float64 (`core.pinhole`)."""
        return pinhole(points_cam, self.focal, self.center)

    def resized(self, res: int) -> "CropCamera":
        """The same camera for the picture resized to ``res`` px (pixel centres stay at integers)."""
        s = res / self.res
        cx, cy = self.center
        return CropCamera(self.focal * s, ((cx + 0.5) * s - 0.5, (cy + 0.5) * s - 0.5), res)


def fit_scale(crop_meta: dict[str, Any], fit_res: int = FIT_RES) -> float:
    """k: stored-crop px per fit-frame px (``box_side / fit_res``) for a sample's ``meta["crop"]``."""
    return float(crop_meta["box_side"]) / fit_res


def fit_camera(crop_meta: dict[str, Any], fit_focal: float = FIT_FOCAL, fit_res: int = FIT_RES) -> CropCamera:
    """The camera that draws a stored fit into its sample's stored crop.

    Args:
        crop_meta: the ``crop`` entry of a sample's json: ``res``, ``box_side`` (px), ``box_center`` (x, y px).
        fit_focal, fit_res: the fit frame's focal length and side in px (SPIN: 5000 and 224).
    Returns:
        `CropCamera` in stored-crop px: focal ``fit_focal·k``, principal point ``box_center``, k = box_side/fit_res.
        Project ``vertices + cam_t`` of the fit with it.
    """
    k = fit_scale(crop_meta, fit_res)
    cx, cy = (float(v) for v in crop_meta["box_center"])
    return CropCamera(fit_focal * k, (cx, cy), int(crop_meta["res"]))


def stored_to_fit_frame(crop_meta: dict[str, Any], fit_res: int = FIT_RES) -> np.ndarray:
    """(3, 3) affine map stored-crop px (centres at integers) -> fit-frame px (corners at integers, SMPLify's
    keypoint frame): ``u_fit = (u_stored - box_center) / k + fit_res / 2``."""
    k = fit_scale(crop_meta, fit_res)
    cx, cy = (float(v) for v in crop_meta["box_center"])
    return np.array([[1.0 / k, 0.0, fit_res / 2.0 - cx / k],
                     [0.0, 1.0 / k, fit_res / 2.0 - cy / k],
                     [0.0, 0.0, 1.0]])


def keypoints_in_fit_frame(keypoints_crop: np.ndarray, crop_meta: dict[str, Any],
                           fit_res: int = FIT_RES) -> np.ndarray:
    """(49, 3) stored-crop keypoints (x, y px, confidence) -> the fit frame SMPLify takes (absent joints stay all
    zeros); float32, the input is not modified."""
    kp = np.asarray(keypoints_crop, dtype=np.float64)
    m = stored_to_fit_frame(crop_meta, fit_res)
    out = kp.copy()
    out[:, :2] = kp[:, :2] @ m[:2, :2].T + m[:2, 2]
    out[kp[:, 2] <= 0] = 0.0
    return out.astype(np.float32)


def fit_frame_px(keypoints: Tensor) -> Tensor:
    """Normalised keypoints (B, 49, 3) -> fit-frame px (B, 49, 3): SPIN's ``0.5·224·(k + 1)``, confidence kept."""
    return torch.cat([FIT_CENTER * (keypoints[..., :2] + 1.0), keypoints[..., 2:]], -1)



@dataclass(frozen=True)
class PosedFit:
    """One fit posed by a body model, in the fit's camera frame (metres): vertices (V, 3), joints (49, 3)."""

    vertices: np.ndarray
    joints: np.ndarray


def pose_fit(model: Any, pose: np.ndarray, betas: np.ndarray, cam_t: np.ndarray) -> PosedFit:
    """Evaluate ``model`` (`fitting.body_model.BodyModel`) at one fit and move it into the camera frame.

    Args:
        pose: (72,) axis-angle radians, global orientation first (camera rotation included).
        betas: (10,) shape; padded with zeros or cut to the model's number of betas.
        cam_t: (3,) metres, camera-frame translation.
    """
    b = np.zeros(model.num_betas, dtype=np.float32)
    given = np.asarray(betas, dtype=np.float32).reshape(-1)[:model.num_betas]
    b[:len(given)] = given
    p = torch.as_tensor(np.asarray(pose, dtype=np.float32).reshape(1, 72))
    with torch.no_grad():
        out = model(torch.as_tensor(b)[None], p[:, 3:], p[:, :3])
    t = np.asarray(cam_t, dtype=np.float64).reshape(1, 3)
    return PosedFit(out.vertices[0].double().numpy() + t, out.joints[0].double().numpy() + t)
