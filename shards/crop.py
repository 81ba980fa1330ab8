"""Crop geometry: SPIN's person box, the exact affine map image → crop and back, and warping an image through it.

Pixel convention (as `shards.schema`): **0-based, pixel centres at integers**. Pixel (0, 0) is the centre of the
top-left pixel, so an image of width W spans [-0.5, W - 0.5]. Every matrix here is a 3×3 homogeneous float64
affine map between such coordinates: ``dst = M @ [x, y, 1]``.

A crop of ``res`` px maps SPIN's box (a square of side ``side = 200·scale`` px centred on ``center``) onto its
full extent: the box's edges land on the crop's edges (-0.5 and res - 0.5), its centre on the crop's centre
``(res - 1) / 2``. A rotation ``rot`` (degrees) turns the content counter-clockwise on screen, as SPIN's
``imrotate(rot)`` does; SPIN's keypoint transform uses the same map (its ``get_transform`` with ``-rot``).

SPIN rounds the crop corners and keypoints to integers (``int(pt + 1)``, ``astype(int)``), which moves a keypoint
by up to a few px against its pixels. Nothing here rounds: keypoints and pixels go through the same float matrix.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

SPIN_BOX_PX = 200.0  # SPIN's box side is 200·scale px

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC}


# Least share of a person box's area that must lie inside its image. A box mostly beside the image, or far larger
# than it (a COCO bbox of 1e6 px), crops to black or to a speck of picture; a person cut by the image border keeps
# well over a third of SPIN's box inside, so 0.25 leaves real boxes alone: in the real excerpts of
# ../shared/fixtures the least is 0.47 (an MPII person), in the demo's synthetic datasets 0.58 (`box_inside` over
# every record whose image is present).
MIN_BOX_INSIDE = 0.25


def box_inside(center: np.ndarray, side: float, size: tuple[int, int]) -> float:
    """Share of the square box (``side`` px, centred on ``center`` (x, y) px) inside the image of ``size`` (width,
    height) px, which spans [-0.5, W - 0.5] x [-0.5, H - 0.5]; 0 for a box that is not finite or not positive."""
    c = np.asarray(center, dtype=np.float64).reshape(2)
    if not (np.isfinite(c).all() and math.isfinite(side) and side > 0):
        return 0.0
    half, inside = side / 2.0, 1.0
    for axis in (0, 1):
        low, high = max(c[axis] - half, -0.5), min(c[axis] + half, size[axis] - 0.5)
        inside *= max(high - low, 0.0) / side
    return inside


def box_problem(center: np.ndarray, side: float, size: tuple[int, int]) -> str:
    """Why the square box cannot be cropped from the image (`box_inside` < `MIN_BOX_INSIDE`), or ""."""
    inside = box_inside(center, side, size)
    if inside >= MIN_BOX_INSIDE:
        return ""
    where = np.round(np.asarray(center, dtype=np.float64), 1).tolist()
    return (f"box centred at {where} with side {side:.4g} px has {100 * inside:.3g}% of its area in the "
            f"{size[0]}x{size[1]} image, under {100 * MIN_BOX_INSIDE:.0f}%: beside the image or far larger than it")


def box_side(scale: float) -> float:
    """Side in px of SPIN's person box for ``scale`` (``200·scale``)."""
    return SPIN_BOX_PX * float(scale)


def box_to_crop(center: np.ndarray, side: float, res: int, rot: float = 0.0, flip: bool = False) -> np.ndarray:
    """The map from source px to the px of a ``res``×``res`` crop of a square box.

    Args:
        center: (2,) box centre (x, y), px in the source frame.
        side: box side, px in the source frame (``box_side(scale)``, times any margin or augmentation scale).
        res: crop side, px.
        rot: degrees; the content turns counter-clockwise on screen by ``rot`` (SPIN's convention).
        flip: mirror the crop left/right after the rotation (``u -> res - 1 - u``).
    Returns:
        (3, 3) float64, source px -> crop px.
    """
    if not side > 0 or res < 1:
        raise ValueError(f"a crop needs side > 0 and res >= 1, got side={side}, res={res}")
    c = np.asarray(center, dtype=np.float64).reshape(2)
    k = res / float(side)
    theta = math.radians(-rot)  # y points down: this matrix turns the picture counter-clockwise for rot > 0
    cs, sn = math.cos(theta), math.sin(theta)
    linear = k * np.array([[cs, -sn], [sn, cs]])
    half = (res - 1) / 2.0
    m = np.eye(3)
    m[:2, :2] = linear
    m[:2, 2] = half - linear @ c
    if flip:
        m = np.array([[-1.0, 0.0, res - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
    return m


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse of a (3, 3) affine map (crop px -> source px for a `box_to_crop` matrix)."""
    m = np.asarray(m, dtype=np.float64)
    linear_inv = np.linalg.inv(m[:2, :2])
    out = np.eye(3)
    out[:2, :2] = linear_inv
    out[:2, 2] = -linear_inv @ m[:2, 2]
    return out


def transform_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (3, 3) affine map to points (..., 2) px, or (..., C>2) whose first two columns are x, y px (the
    other columns, e.g. a confidence, are copied). Returns float64; the input is not modified."""
    p = np.asarray(points, dtype=np.float64)
    out = p.copy()
    out[..., :2] = p[..., :2] @ m[:2, :2].T + m[:2, 2]
    return out


def to_affine_rows(m: np.ndarray) -> list[list[float]]:
    """The top two rows of a (3, 3) affine map as nested lists, for json (float64 values survive exactly)."""
    return [[float(v) + 0.0 for v in row] for row in np.asarray(m)[:2]]  # + 0.0: no "-0.0" in the json


def from_affine_rows(rows: list[list[float]]) -> np.ndarray:
    """(3, 3) float64 affine map from the two json rows `to_affine_rows` wrote."""
    m = np.eye(3)
    m[:2] = np.asarray(rows, dtype=np.float64).reshape(2, 3)
    return m


def warp(image: Image.Image, m: np.ndarray, res: int, resample: str = "bilinear",
         antialias: bool = True, fill: int | tuple[int, ...] = 0) -> Image.Image:
    """The ``res``×``res`` image whose pixel u shows source position ``invert(m) @ u``; ``fill`` (default black)
    outside the source.

    Args:
        image: the source (any PIL mode; RGB in fitloop).
        m: (3, 3) source px -> output px (`box_to_crop`).
        res: output side, px.
        resample: "nearest", "bilinear" (default) or "bicubic".
        antialias: when the output shrinks the source, widen the filter so the warp never samples below Nyquist.
        fill: the value of output pixels outside the source (a label image's "unknown", `shards.masks.UNKNOWN`).

    An unrotated map whose box lies inside the source goes through PIL's separable ``resize`` (a mirror is a
    transpose after it), which is 2–3× faster than the general affine warp and antialiases any shrink. Otherwise
    PIL's affine warp samples each output pixel, and with ``antialias`` a shrink of 2× or more first averages
    whole n×n pixel blocks of the region needed (``Image.reduce``). Either way the geometry is the exact map.
    """
    fast = _resize_if_axis_aligned(image, m, res, resample, antialias)
    if fast is not None:
        return fast
    inv = invert(m)
    shrink = math.sqrt(abs(np.linalg.det(inv[:2, :2])))  # source px per output px
    if antialias and shrink >= 2.0:
        image, to_reduced = _reduce_region(image, inv, res, int(shrink))
        inv = to_reduced @ inv
    # PIL's AFFINE samples output pixel (i, j) at the source position data·(i + 0.5, j + 0.5) in coordinates where
    # pixel centres sit at half-integers; shift our integer-centre map into that convention.
    pil = _CORNER_FROM_CENTRE @ inv @ _CENTRE_FROM_CORNER
    data = (pil[0, 0], pil[0, 1], pil[0, 2], pil[1, 0], pil[1, 1], pil[1, 2])
    return image.transform((res, res), Image.Transform.AFFINE, data, resample=_RESAMPLE[resample], fillcolor=fill)


_CORNER_FROM_CENTRE = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
_CENTRE_FROM_CORNER = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])


def _resize_if_axis_aligned(image: Image.Image, m: np.ndarray, res: int, resample: str,
                            antialias: bool) -> Image.Image | None:
    """The warp as ``resize(box=...)`` (+ a left/right mirror), or None when ``m`` rotates, mirrors vertically,
    or needs pixels outside the image (``resize`` cannot pad) or when the shrink must not be antialiased."""
    if m[0, 1] != 0.0 or m[1, 0] != 0.0 or m[1, 1] <= 0.0 or m[0, 0] == 0.0 or not antialias:
        return None
    mirror = m[0, 0] < 0.0
    if mirror:  # undo the mirror in the map, resize, then mirror the pixels
        m = np.array([[-1.0, 0.0, res - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
    inv = _CORNER_FROM_CENTRE @ invert(m) @ _CENTRE_FROM_CORNER  # output corner coords -> source corner coords
    x0, y0 = inv[0, 2], inv[1, 2]
    x1, y1 = inv[0, 0] * res + x0, inv[1, 1] * res + y0
    width, height = image.size
    if x0 < 0.0 or y0 < 0.0 or x1 > width or y1 > height:
        return None
    out = image.resize((res, res), _RESAMPLE[resample], box=(x0, y0, x1, y1))
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else out


def _reduce_region(image: Image.Image, inv: np.ndarray, res: int, n: int) -> tuple[Image.Image, np.ndarray]:
    """Block-average (n×n) the part of ``image`` the output needs; returns it and the map source px -> its px."""
    corners = transform_points(inv, np.array([[-0.5, -0.5], [res - 0.5, -0.5], [-0.5, res - 0.5],
                                              [res - 0.5, res - 0.5]]))
    width, height = image.size
    # Integer pixel-edge bounds of the needed region plus one block of context for the bilinear taps, clipped.
    x0 = max(0, int(math.floor(corners[:, 0].min() + 0.5)) - n)
    y0 = max(0, int(math.floor(corners[:, 1].min() + 0.5)) - n)
    x1 = min(width, int(math.ceil(corners[:, 0].max() + 0.5)) + n)
    y1 = min(height, int(math.ceil(corners[:, 1].max() + 0.5)) + n)
    if x1 <= x0 or y1 <= y0:  # the output lies wholly outside the image: any 1×1 region keeps it black
        x0, y0, x1, y1 = 0, 0, 1, 1
    reduced = image.reduce(n, box=(x0, y0, x1, y1))
    # Reduced pixel j averages source pixels x0 + n·j … x0 + n·j + n - 1: its centre is x0 + n·j + (n - 1)/2.
    # (A last, partial block at a clipped edge is averaged over fewer pixels; only that edge column moves.)
    to_reduced = np.array([[1.0 / n, 0.0, -(x0 + (n - 1) / 2.0) / n],
                           [0.0, 1.0 / n, -(y0 + (n - 1) / 2.0) / n],
                           [0.0, 0.0, 1.0]])
    return reduced, to_reduced
