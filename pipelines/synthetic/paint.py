"""Pictures of synthetic people: a procedural background, the bodies dressed and rasterised, a JPEG on disk.

This module runs in the render worker processes, so it imports neither torch nor the body model: a `Picture`
carries the camera-frame vertices and each body's colours; the meshes' faces, their colour regions and their
whole-body parts are set once per process (`set_meshes`: the body model's mesh and, for whole-body people, the
SMPL-X-layout one). Nothing but the background and the bodies is drawn: no keypoints, no boxes.

Whole-body people also carry probes: their hand and face keypoints (px and depth). Painting tells which of them
the picture shows (`Silhouette.visible`: the point's own part of its own body is drawn within
`PROBE_RADIUS_PX` of it, at a depth within `PROBE_DEPTH_M` of the point's, so a hand behind the torso or a face
turned away is not shown) and the box of each part's drawn pixels (`Silhouette.part_boxes`).

Every person's **exact silhouette and part labels** come back too (`Silhouette.labels`, a `shards.masks.LabelMap`
of the whole image): each drawn pixel of the person is labelled with the body segment of the face drawn there,
the open model's segmentation (Anny's bone weights summed into SMPL's 24 segments, docs/open_model.md): the
joint with the largest skinning weight, named by `SEGMENT_NAMES` (SMPL-X's jaw and eyes are "head", its fingers
"left_hand" / "right_hand"), provenance "synthetic-exact".

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
from core.joints import SMPL_JOINT_NAMES, face_joints
from core.wholebody import FINGERS, SMPLX_JOINT_NAMES, WHOLEBODY_PARTS
from render.raster import rasterize
from shards.masks import LabelMap, rle_encode

# Body regions of the mesh (the outfit's colours), by the joint that moves a face most (its dominant skinning
# weight): SMPL's 24 joints, and SMPL-X's 55 (jaw and eyes are head, every finger joint is hands).
REGIONS: tuple[str, ...] = ("head", "hands", "forearms", "upper_arms", "torso", "hips", "shins", "feet")
REGION_OF_JOINT: dict[str, str] = {
    "head": "head", "neck": "head", "left_wrist": "hands", "right_wrist": "hands", "left_hand": "hands",
    "right_hand": "hands", "left_elbow": "forearms", "right_elbow": "forearms", "left_shoulder": "upper_arms",
    "right_shoulder": "upper_arms", "spine1": "torso", "spine2": "torso", "spine3": "torso",
    "left_collar": "torso", "right_collar": "torso", "pelvis": "hips", "left_hip": "hips", "right_hip": "hips",
    "left_knee": "shins", "right_knee": "shins", "left_ankle": "feet", "right_ankle": "feet",
    "left_foot": "feet", "right_foot": "feet",
    "jaw": "head", "left_eye_smplhf": "head", "right_eye_smplhf": "head",
    **{f"{side}_{finger}{k}": "hands" for side in ("left", "right") for finger in FINGERS for k in (1, 2, 3)},
}
# Whole-body parts of the mesh (`core.wholebody.WHOLEBODY_PARTS`' names), by the same dominant joint: "face" is
# the whole head (jaw, eyes and the back of the head: skinning does not tell a face from a scalp), each hand is
# its wrist's and fingers' faces, everything else is "body".
PARTS: tuple[str, ...] = tuple(WHOLEBODY_PARTS)  # body, left_hand, right_hand, face


def part_of_joint(name: str) -> str:
    """The whole-body part (`PARTS`) of the mesh faces a joint (SMPL or SMPL-X name) moves most."""
    if name in ("head", "jaw", "left_eye_smplhf", "right_eye_smplhf"):
        return "face"
    for side in ("left", "right"):
        if name in (f"{side}_wrist", f"{side}_hand") or (name.startswith(f"{side}_") and name[:-1].endswith(FINGERS)):
            return f"{side}_hand"
    return "body"


# The part-label table of the synthetic people: 0 background, then SMPL's 24 segments named by their joint (the
# faces that joint moves most: "left_hip" is the left thigh, "left_knee" the left shin).
SEGMENT_NAMES: tuple[str, ...] = ("background",) + SMPL_JOINT_NAMES


def segment_of_joint(name: str) -> int:
    """The SMPL segment (index into `SMPL_JOINT_NAMES`) of an SMPL or SMPL-X joint's faces."""
    if name in SMPL_JOINT_NAMES:
        return SMPL_JOINT_NAMES.index(name)
    if name in ("jaw", "left_eye_smplhf", "right_eye_smplhf"):
        return SMPL_JOINT_NAMES.index("head")
    side = "left" if name.startswith("left_") else "right"
    return SMPL_JOINT_NAMES.index(f"{side}_hand")  # a finger joint


PROBE_RADIUS_PX = 1    # a probe is shown when its part is drawn in the (2r+1)² pixels around it ...
PROBE_DEPTH_M = 0.04   # ... at a depth within this of the probe's (a finger joint lies ~1 cm under the skin,
                       # the wrist's centre ~3 cm; the face is ~15 cm in front of the back of the head)
_MESHES: dict[str, Mesh] = {}  # set per process by `set_meshes`


@dataclass(frozen=True)
class Mesh:
    """A body model's mesh as the painter needs it: faces (F, 3), each face's colour region (F,) (index into
    `REGIONS`), whole-body part (F,) (index into `PARTS`) and SMPL segment (F,) (index into `SMPL_JOINT_NAMES`)."""

    faces: np.ndarray
    regions: np.ndarray
    parts: np.ndarray
    segments: np.ndarray


@dataclass
class Body:
    """One person to draw: vertices (V, 3) float32, metres, camera frame; colours (len(REGIONS), 3) RGB, the
    outfit's colour of each region (every channel of the brightest >= 60, so no drawn pixel is black); ``mesh``,
    the name `set_meshes` gave its mesh; ``probes`` (K, 3): points to test (u, v px and depth m, camera frame)
    and ``probe_parts`` (K,) the part (index into `PARTS`) each must be drawn on, or None."""

    vertices: np.ndarray
    colours: np.ndarray
    mesh: str = "body"
    probes: np.ndarray | None = None
    probe_parts: np.ndarray | None = None


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
    pixel count, and COCO's uncompressed RLE counts (column-major runs, starting with background); for a body
    with probes, ``visible`` (K,) bool, which probes the picture shows (module docstring), and ``part_boxes``,
    the inclusive pixel box of each whole-body part that shows (`PARTS` names; parts not drawn are absent);
    ``labels``: the body's exact part labels over the whole image (`SEGMENT_NAMES`; module docstring)."""

    box: tuple[int, int, int, int] | None
    area: int
    rle: list[int]
    visible: np.ndarray | None = None
    part_boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    labels: LabelMap | None = None


def mesh_of(faces: np.ndarray, skinning_weights: np.ndarray) -> Mesh:
    """The painter's `Mesh` of a body model: each face's colour region and whole-body part are those of its dominant
    joint (`core.joints.face_joints`). faces (F, 3); skinning_weights
    (V, 24) in `core.joints.SMPL_JOINT_NAMES` order or (V, 55) in `core.wholebody.SMPLX_JOINT_NAMES` order."""
    weights = np.asarray(skinning_weights, dtype=np.float64)
    names = {len(SMPL_JOINT_NAMES): SMPL_JOINT_NAMES, len(SMPLX_JOINT_NAMES): SMPLX_JOINT_NAMES}.get(weights.shape[1])
    if names is None:
        raise ValueError(f"skinning weights for {weights.shape[1]} joints: the painter knows SMPL's "
                         f"{len(SMPL_JOINT_NAMES)} and SMPL-X's {len(SMPLX_JOINT_NAMES)}")
    faces = np.asarray(faces, dtype=np.int64)
    dominant = face_joints(faces, weights)
    joint_region = np.array([REGIONS.index(REGION_OF_JOINT[name]) for name in names])
    joint_part = np.array([PARTS.index(part_of_joint(name)) for name in names])
    joint_segment = np.array([segment_of_joint(name) for name in names])
    return Mesh(faces=faces, regions=joint_region[dominant], parts=joint_part[dominant],
                segments=joint_segment[dominant])


def face_regions(faces: np.ndarray, skinning_weights: np.ndarray) -> np.ndarray:
    """(F,) region index (into `REGIONS`) of each face (`mesh_of`)."""
    return mesh_of(faces, skinning_weights).regions


def set_meshes(meshes: dict[str, Mesh]) -> None:
    """The meshes bodies name (`Body.mesh`), once per process (the worker pool's initializer)."""
    _MESHES.clear()
    _MESHES.update(meshes)


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


def draw(picture: Picture) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise ``picture``'s bodies over its background (nearest wins): the image (H, W, 3) uint8, and per pixel
    the body drawn there (H, W) (index into ``picture.bodies``, -1 for background), its whole-body part (H, W)
    (index into `PARTS`, -1) and the drawn face's depth (H, W) m (mean of its vertices' z; inf for background)."""
    return _draw(picture)[:4]


def _draw(picture: Picture) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`draw`, and per pixel the drawn face's SMPL segment (H, W) (index into `SMPL_JOINT_NAMES`, -1)."""
    width, height = picture.size
    canvas = background(picture.size, picture.background_seed)
    owner = np.full((height, width), -1, dtype=np.int64)
    part = np.full((height, width), -1, dtype=np.int64)
    segment = np.full((height, width), -1, dtype=np.int64)
    depth = np.full((height, width), np.inf)
    if not picture.bodies:
        return canvas, owner, part, depth, segment
    missing = sorted({b.mesh for b in picture.bodies} - set(_MESHES))
    if missing:
        raise RuntimeError(f"paint: no mesh {missing}; call set_meshes first (the worker initializer)")
    meshes = [_MESHES[b.mesh] for b in picture.bodies]
    starts = np.cumsum([0] + [len(b.vertices) for b in picture.bodies])
    vertices = np.concatenate([b.vertices for b in picture.bodies])
    faces = np.concatenate([m.faces + start for m, start in zip(meshes, starts)])
    colours = np.concatenate([b.colours[m.regions] for b, m in zip(picture.bodies, meshes)])
    face_body = np.concatenate([np.full(len(m.faces), i) for i, m in enumerate(meshes)])
    face_part = np.concatenate([m.parts for m in meshes])
    face_segment = np.concatenate([m.segments for m in meshes])
    pixels, face_index = rasterize(vertices, faces, colours, picture.focal, picture.principal, picture.size)
    drawn = face_index >= 0
    canvas[drawn] = pixels[drawn]
    seen = face_index[drawn]
    owner[drawn], part[drawn], segment[drawn] = face_body[seen], face_part[seen], face_segment[seen]
    depth[drawn] = np.asarray(vertices, dtype=np.float64)[faces[seen], 2].mean(axis=1)
    return canvas, owner, part, depth, segment


def paint(picture: Picture) -> list[Silhouette]:
    """Draw ``picture`` (`draw`), save it as JPEG, and return each body's `Silhouette` in the order of
    ``picture.bodies``."""
    canvas, owner, part, depth, segment = _draw(picture)
    silhouettes = [_silhouette(owner == i, body, i, owner, part, depth, segment)
                   for i, body in enumerate(picture.bodies)]
    picture.path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"exif": camera_exif(picture)} if picture.exif else {}
    Image.fromarray(canvas).save(picture.path, quality=picture.jpeg_quality, **extra)
    return silhouettes


def probes_shown(probes: np.ndarray, probe_parts: np.ndarray, body: int, owner: np.ndarray, part: np.ndarray,
                 depth: np.ndarray) -> np.ndarray:
    """(K,) bool: probe k (u, v px, depth m) shows in a picture whose pixels are ``owner``/``part``/``depth``
    (`draw`): within `PROBE_RADIUS_PX` of its pixel, body ``body``'s part ``probe_parts[k]`` is drawn at a depth
    within `PROBE_DEPTH_M` of the probe's."""
    height, width = owner.shape
    centre = np.round(np.asarray(probes, dtype=np.float64)[:, :2])
    shown = np.zeros(len(probes), dtype=bool)
    finite = np.isfinite(centre).all(axis=1)
    for dy in range(-PROBE_RADIUS_PX, PROBE_RADIUS_PX + 1):
        for dx in range(-PROBE_RADIUS_PX, PROBE_RADIUS_PX + 1):
            x, y = centre[:, 0] + dx, centre[:, 1] + dy
            inside = finite & (x >= 0) & (x < width) & (y >= 0) & (y < height)
            xi, yi = np.where(inside, x, 0).astype(np.int64), np.where(inside, y, 0).astype(np.int64)
            shown |= (inside & (owner[yi, xi] == body) & (part[yi, xi] == probe_parts)
                      & (np.abs(depth[yi, xi] - probes[:, 2]) <= PROBE_DEPTH_M))
    return shown


def paint_batch(pictures: list[Picture]) -> list[list[Silhouette]]:
    """`paint` each picture (one task for a render worker)."""
    return [paint(picture) for picture in pictures]


def _silhouette(mask: np.ndarray, body: Body | None = None, index: int = 0, owner: np.ndarray | None = None,
                part: np.ndarray | None = None, depth: np.ndarray | None = None,
                segment: np.ndarray | None = None) -> Silhouette:
    box = _box(mask)
    labels = None
    if segment is not None:
        labels = LabelMap.from_array(np.where(mask, segment + 1, 0), SEGMENT_NAMES, "synthetic-exact")
    if body is None or body.probes is None:
        return Silhouette(box, int(mask.sum()), rle_encode(mask).tolist(), labels=labels)
    visible = probes_shown(body.probes, body.probe_parts, index, owner, part, depth)
    part_boxes = {}
    for k, name in enumerate(PARTS):
        part_box = _box(mask & (part == k))
        if part_box is not None:
            part_boxes[name] = part_box
    return Silhouette(box, int(mask.sum()), rle_encode(mask).tolist(), visible=visible, part_boxes=part_boxes,
                      labels=labels)


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive pixel box (x0, y0, x1, y1) of a mask (H, W), None when empty."""
    ys, xs = np.nonzero(mask)
    return None if len(xs) == 0 else (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
