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

**The image frame.** A sample also carries its original image's intrinsics (`core.intrinsics`), and a fit can be
made in that camera instead (``frame="image"`` in the fits table). The pixel maps between original-image px, stored
crop px and fit-frame px are axis-aligned affine maps (a scale and a shift; stored crops are never rotated), and a
pinhole camera followed by such a map is again a pinhole camera (`camera_through`): focal lengths times the scale,
the principal point through the map. So every camera can be written in every pixel frame **exactly**:

* the image camera in fit-frame px (`image_camera_in_fit_frame`): what SMPLify fits an image-frame fit with, on the
  same fit-frame keypoints as a crop-frame fit, so the losses of both frames are in the same px and compare;
* the fit frame's camera in original-image px (`fit_camera_in_image`): SPIN's crop camera drawn on the image.

What is *not* exact is moving a fit from one camera to the other. The fit frame's camera (f = 5000 px on a 224 px
crop) looks straight at the person box from ~20× farther away than a real camera does; a real camera sees an
off-centre person obliquely and with more perspective. A body that reprojects onto the keypoints in one camera is a
different 3D placement in the other: another depth, another translation, and (for a person off the optical axis)
another global orientation. `move_translation` gives the standard conversion (the one CLIFF and 4DHumans use for a
crop camera in the full image): it keeps the root joint's pixel and the px per metre at the root's depth, and
changes neither pose nor shape; the other joints then move by the difference in perspective. fitloop stores each
fit in the frame it was made in (the fits table's ``frame`` column) and never converts silently.
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


def _affine(rows: Any) -> np.ndarray:
    """(3, 3) float64 affine map from the two rows a sample's json stores (``crop.image_to_crop``); the reader
    of `shards.crop.to_affine_rows`'s rows, here because core imports nothing above it."""
    m = np.eye(3)
    m[:2] = np.asarray(rows, dtype=np.float64).reshape(2, 3)
    return m


def image_to_fit_frame(crop_meta: dict[str, Any], fit_res: int = FIT_RES) -> np.ndarray:
    """(3, 3) affine map original-image px (centres at integers) -> fit-frame px (corners at integers): the
    sample's ``image_to_crop`` followed by `stored_to_fit_frame`. Exact (float64)."""
    return stored_to_fit_frame(crop_meta, fit_res) @ _affine(crop_meta["image_to_crop"])


@dataclass(frozen=True)
class PixelCamera:
    """A pinhole camera in some pixel frame (which frame: the caller's): focal (fx, fy) px, center (cx, cy) px."""

    focal: tuple[float, float]
    center: tuple[float, float]

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3) metres (z > 0 in front) to pixels (..., 2), float64 (`core.pinhole`)."""
        return pinhole(points_cam, self.focal, self.center)


def camera_through(affine: np.ndarray, camera: PixelCamera) -> PixelCamera:
    """The camera whose pixels are ``camera``'s pixels mapped by ``affine`` (3, 3): exact for an axis-aligned map
    (a per-axis scale a > 0 and a shift b: focal a·f, principal point a·c + b). ValueError for a map that rotates,
    shears or mirrors (no pinhole camera with axis-aligned focal lengths does that)."""
    a = np.asarray(affine, dtype=np.float64)
    if a[0, 1] != 0.0 or a[1, 0] != 0.0 or not (a[0, 0] > 0 and a[1, 1] > 0):
        raise ValueError(f"camera_through needs an axis-aligned, unmirrored pixel map, got {a[:2].tolist()}")
    fx, fy = camera.focal
    cx, cy = camera.center
    return PixelCamera((a[0, 0] * fx, a[1, 1] * fy), (a[0, 0] * cx + a[0, 2], a[1, 1] * cy + a[1, 2]))


def image_camera_in_fit_frame(intrinsics: Any, crop_meta: dict[str, Any], fit_res: int = FIT_RES) -> PixelCamera:
    """The original image's camera (`core.intrinsics.Intrinsics`: fx, fy, cx, cy in image px) written in the
    sample's fit-frame px (module docstring): a point it projects to image px u lands at fit-frame px
    ``image_to_fit_frame(crop_meta) @ u``, exactly. What SMPLify fits an image-frame fit with."""
    return camera_through(image_to_fit_frame(crop_meta, fit_res), PixelCamera(intrinsics.focal, intrinsics.center))


def fit_frame_camera(fit_focal: float = FIT_FOCAL, fit_res: int = FIT_RES) -> PixelCamera:
    """SPIN's fit-frame camera in fit-frame px: focal ``fit_focal`` (5000), principal point the crop centre (112)."""
    return PixelCamera((fit_focal, fit_focal), (fit_res / 2.0, fit_res / 2.0))


def fit_camera_in_image(crop_meta: dict[str, Any], fit_focal: float = FIT_FOCAL,
                        fit_res: int = FIT_RES) -> PixelCamera:
    """SPIN's fit-frame camera written in original-image px: focal 5000·(box side in image px)/224, principal
    point the box centre. Exact; a crop-frame fit projected with it lands on the original image."""
    return camera_through(np.linalg.inv(image_to_fit_frame(crop_meta, fit_res)), fit_frame_camera(fit_focal, fit_res))


def move_translation(cam_t: np.ndarray, root: np.ndarray, source: PixelCamera, target: PixelCamera) -> np.ndarray:
    """A fit's translation (3,) m for another camera, keeping the root joint's pixel and the px per metre at its
    depth (module docstring: exact for the root, approximate for the rest of the body; pose and shape unchanged).

    Args:
        cam_t: (3,) m, the fit's translation with camera ``source``. root: (3,) m, the root joint (e.g. the
            pelvis) of the posed body before translation (`pose_fit` with zero translation).
        source, target: the two cameras, written in one pixel frame (e.g. both in fit-frame px).
    Returns:
        (3,) m, float64: the translation with camera ``target``. The depth scales by the ratio of the focal
        lengths (their geometric mean where fx ≠ fy).
    """
    point = np.asarray(root, dtype=np.float64).reshape(3) + np.asarray(cam_t, dtype=np.float64).reshape(3)
    pixel = source.project(point)
    ratio = float(np.sqrt(target.focal[0] * target.focal[1] / (source.focal[0] * source.focal[1])))
    depth = point[2] * ratio
    moved = np.array([(pixel[0] - target.center[0]) * depth / target.focal[0],
                      (pixel[1] - target.center[1]) * depth / target.focal[1], depth])
    return moved - np.asarray(root, dtype=np.float64).reshape(3)


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
