"""The pinhole projection, the one in fitloop: ``u = fx·X/Z + cx, v = fy·Y/Z + cy``, for numpy and torch alike.

Every picture, synthetic image, dataset camera and fit in fitloop is projected by `pinhole`: `core.camera.project`
(SMPLify's batched form), `core.frames.CropCamera`, the renderer (`render.raster`), the synthetic generator, the
benchmark shards, and Human3.6M's cameras (which distort the ray on the plane Z = 1 first).

Its own module, beside `core.camera`, because that one imports torch (and the fit frame): numpy callers such as the
dataset adapters run in preprocessing workers that never import torch (seconds and hundreds of MB each), and a
tensor can only exist once torch is imported, so `pinhole` looks torch up instead of importing it.

Frames and units: camera frame x right, y down, z forward (OpenCV's); metres or any unit (only ratios count).
`pinhole` adds the principal point and nothing else: pixel conventions are the caller's. A frame with pixel centres
at integers (fitloop's stored crops, images and pictures: the centre of a ``res`` px side at ``(res - 1) / 2``)
and one with pixel corners at integers (SPIN's fit frame: ``res / 2``) differ only in the principal point.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence, TypeVar

import numpy as np

Points = TypeVar("Points")


def pinhole(points_cam: Points, focal: float | Sequence[float] | Any, center: Sequence[float] | Any) -> Points:
    """Camera-frame points (..., 3) -> pixels (..., 2): ``u = fx·X/Z + cx, v = fy·Y/Z + cy``.

    Args:
        points_cam: (..., 3), camera frame, Z > 0 in front. A torch tensor keeps its dtype, device and autograd
            graph; anything else is taken by numpy and computed in float64.
        focal: px: a scalar, (fx, fy), or an array/tensor broadcasting against (..., 2) (e.g. (B, 1, 2)).
        center: px: the principal point (cx, cy), or an array/tensor broadcasting against (..., 2).
    Returns:
        (..., 2) px, a tensor for a tensor, else a float64 array. No lens distortion.
    """
    torch = sys.modules.get("torch")  # not imported here: see the module's docstring
    if torch is not None and isinstance(points_cam, torch.Tensor):
        f = torch.as_tensor(focal, dtype=points_cam.dtype, device=points_cam.device)
        c = torch.as_tensor(center, dtype=points_cam.dtype, device=points_cam.device)
    else:
        points_cam = np.asarray(points_cam, dtype=np.float64)
        f, c = np.asarray(focal, dtype=np.float64), np.asarray(center, dtype=np.float64)
    return f * points_cam[..., :2] / points_cam[..., 2:3] + c
