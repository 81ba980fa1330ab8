"""Pictures of synthetic people: a procedural background, the bodies dressed and rasterised, a JPEG on disk.

This module runs in the render worker processes, so it imports neither torch nor the body model: a `Picture`
carries the camera-frame vertices and each body's colours; the mesh's faces and their body regions are set once
per process (`set_mesh`). Nothing but the background and the bodies is drawn: no keypoints, no boxes.

Bodies are drawn by `render.raster.rasterize`, fitloop's one renderer (flat shading, a colour per face), into
one z-buffer, so people who overlap hide each other correctly. A face's colour is its region's in the person's
outfit: skin (head, neck, hands, and forearms or shins when sleeves or trousers are short), top, bottom, shoes.

Pixels: 0-based, pixel (0, 0) is the centre of the top-left pixel, as in every fitloop record; a pixel is drawn
when its centre lies in a projected triangle, so projected keypoints and pixels agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.intrinsics import EXIF_IFD, EXIF_TAGS
from core.joints import SMPL_JOINT_NAMES
from render.raster import rasterize

# Body regions of the mesh, by the SMPL joint that moves a face most (its dominant skinning weight).
REGIONS: tuple[str, ...] = ("head", "hands", "forearms", "upper_arms", "torso", "hips", "shins", "feet")
REGION_OF_JOINT: dict[str, str] = {
    "head": "head", "neck": "head", "left_wrist": "hands", "right_wrist": "hands", "left_hand": "hands",
    "right_hand": "hands", "left_elbow": "forearms", "right_elbow": "forearms", "left_shoulder": "upper_arms",
    "right_shoulder": "upper_arms", "spine1": "torso", "spine2": "torso", "spine3": "torso",
    "left_collar": "torso", "right_collar": "torso", "pelvis": "hips", "left_hip": "hips", "right_hip": "hips",
    "left_knee": "shins", "right_knee": "shins", "left_ankle": "feet", "right_ankle": "feet",
    "left_foot": "feet", "right_foot": "feet",
}
_FACES: np.ndarray | None = None         # (F, 3), set per process by `set_mesh`
_FACE_REGIONS: np.ndarray | None = None  # (F,) index into REGIONS


@dataclass
class Body:
    """One person to draw: vertices (V, 3) float32, metres, camera frame; colours (len(REGIONS), 3) RGB, the
    outfit's colour of each region (every channel of the brightest >= 60, so no drawn pixel is black)."""

    vertices: np.ndarray
    colours: np.ndarray


@dataclass
class Picture:
    """One image to write: path, (width, height) px, pinhole focal (fx, fy) and principal point (cx, cy) px,
    the background's seed, and its bodies; with ``exif`` the JPEG carries its focal length in EXIF (`camera_exif`)."""

    path: Path
    size: tuple[int, int]
    focal: tuple[float, float]
    principal: tuple[float, float]
    background_seed: int
    bodies: list[Body] = field(default_factory=list)
    jpeg_quality: int = 90
    exif: bool = False


SENSOR_WIDTH_MM = 36.0  # the virtual sensor of `camera_exif`: a full-frame sensor's long side spans the image's


def camera_exif(picture: Picture) -> Image.Exif:
    """The EXIF a camera with the picture's focal length writes: ``FocalLength`` (mm) and
    ``FocalPlaneX/YResolution`` (px per cm, ``FocalPlaneResolutionUnit`` 3) of a virtual sensor whose
    `SENSOR_WIDTH_MM` span the image's longer side, and ``PixelX/YDimension``, in the Exif IFD (0x8769);
    `core.intrinsics.intrinsics_from_exif` gives the focal length back in px. No 35 mm-equivalent tag: it is a
    whole number of mm, and the truth is exact."""
    width, height = picture.size
    pitch_mm = SENSOR_WIDTH_MM / max(width, height)
    exif = Image.Exif()
    ifd = exif.get_ifd(EXIF_IFD)
    ifd[EXIF_TAGS["FocalLength"]] = picture.focal[0] * pitch_mm
    ifd[EXIF_TAGS["FocalPlaneXResolution"]] = 10.0 / pitch_mm
    ifd[EXIF_TAGS["FocalPlaneYResolution"]] = 10.0 / pitch_mm * picture.focal[1] / picture.focal[0]
    ifd[EXIF_TAGS["FocalPlaneResolutionUnit"]] = 3
    ifd[EXIF_TAGS["PixelXDimension"]] = width
    ifd[EXIF_TAGS["PixelYDimension"]] = height
    return exif


@dataclass(frozen=True)
class Silhouette:
    """What the picture shows of one body: inclusive pixel box (x0, y0, x1, y1) (None if nothing shows), its
    pixel count, and COCO's uncompressed RLE counts (column-major runs, starting with background)."""

    box: tuple[int, int, int, int] | None
    area: int
    rle: list[int]


def face_regions(faces: np.ndarray, skinning_weights: np.ndarray) -> np.ndarray:
    """(F,) region index of each face: the region of the SMPL joint with the largest summed skinning weight over
    the face's three vertices. faces (F, 3); skinning_weights (V, 24) in `SMPL_JOINT_NAMES` order."""
    dominant = np.asarray(skinning_weights, dtype=np.float64)[faces].sum(axis=1).argmax(axis=1)
    joint_region = np.array([REGIONS.index(REGION_OF_JOINT[name]) for name in SMPL_JOINT_NAMES])
    return joint_region[dominant]


def set_mesh(faces: np.ndarray, regions: np.ndarray) -> None:
    """The mesh's faces (F, 3) and their regions (F,), once per process (the worker pool's initializer)."""
    global _FACES, _FACE_REGIONS
    _FACES = np.asarray(faces, dtype=np.int64)
    _FACE_REGIONS = np.asarray(regions, dtype=np.int64)


def background(size: tuple[int, int], seed: int) -> np.ndarray:
    """A procedural background (H, W, 3) uint8 for ``seed``: a two-colour gradient, soft blotches, a few
    rectangles (walls, furniture, signs) and grain. Deterministic; no image files."""
    width, height = size
    rng = np.random.default_rng(seed)
    low, high = rng.uniform(20, 235, 3).astype(np.float32), rng.uniform(20, 235, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    along_x = np.cos(angle) * np.arange(width, dtype=np.float32) / width
    along_y = np.sin(angle) * np.arange(height, dtype=np.float32) / height
    t = along_y[:, None] + along_x[None, :]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = low + t[..., None] * (high - low)
    grid = rng.integers(0, 256, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3), dtype=np.uint8)
    blotches = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), dtype=np.float32)
    image += blotches * np.float32(80.0 / 255.0) - np.float32(40.0)  # +-40 of soft colour variation
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas, "RGBA")
    for _ in range(int(rng.integers(2, 9))):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        w, h = rng.uniform(0.05, 0.6) * width, rng.uniform(0.05, 0.6) * height
        fill = tuple(int(v) for v in rng.integers(0, 256, 3)) + (int(rng.integers(90, 256)),)
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
    grain = rng.integers(-8, 9, (height, width, 3), dtype=np.int16)
    return np.clip(np.asarray(canvas, dtype=np.int16) + grain, 0, 255).astype(np.uint8)


def paint(picture: Picture) -> list[Silhouette]:
    """Draw ``picture`` (its bodies over the background, nearest wins), save it as JPEG, and return each body's
    `Silhouette` in the order of ``picture.bodies``."""
    if _FACES is None or _FACE_REGIONS is None:
        raise RuntimeError("paint: call set_mesh first (the worker initializer)")
    width, height = picture.size
    canvas = background(picture.size, picture.background_seed)
    silhouettes = []
    if picture.bodies:
        count, num_vertices = len(picture.bodies), len(picture.bodies[0].vertices)
        vertices = np.concatenate([b.vertices for b in picture.bodies])
        faces = np.concatenate([_FACES + i * num_vertices for i in range(count)])
        colours = np.concatenate([b.colours[_FACE_REGIONS] for b in picture.bodies])
        pixels, face_index = rasterize(vertices, faces, colours, picture.focal, picture.principal, picture.size)
        drawn = face_index >= 0
        canvas[drawn] = pixels[drawn]
        body_index = np.where(drawn, face_index // len(_FACES), -1)
        silhouettes = [_silhouette(body_index == i) for i in range(count)]
    picture.path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"exif": camera_exif(picture)} if picture.exif else {}
    Image.fromarray(canvas).save(picture.path, quality=picture.jpeg_quality, **extra)
    return silhouettes


def paint_batch(pictures: list[Picture]) -> list[list[Silhouette]]:
    """`paint` each picture (one task for a render worker)."""
    return [paint(picture) for picture in pictures]


def _silhouette(mask: np.ndarray) -> Silhouette:
    ys, xs = np.nonzero(mask)
    box = None if len(xs) == 0 else (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    return Silhouette(box, int(mask.sum()), rle_counts(mask))


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of an (H, W) bool mask: run lengths in column-major order, background first."""
    flat = np.asarray(mask, dtype=np.uint8).T.reshape(-1)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs
