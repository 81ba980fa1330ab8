"""Scenes of synthetic people: shapes, colours, camera views, framing a body into an image, the Human3.6M rig.

Frames: the body model's (Y up, the body faces +Z, its left +X); the camera's (OpenCV: x right, y down, z
forward, metres), projected by `core.pinhole.pinhole`; pixels 0-based with (0, 0) the centre of the top-left
pixel. Human3.6M's world is Z up, mm in its files, metres here.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from core.pinhole import pinhole
from pipelines.adapters.h36m import CAMERA_NAMES, Camera
from pipelines.synthetic.paint import REGIONS, Silhouette

# Turns the model frame to face a camera: x stays, y and z flip (a half turn about x).
MODEL_TO_CAMERA = np.diag([1.0, -1.0, -1.0])
# Human3.6M's world is Z up; the model's Y up becomes Z, its front (+Z) becomes -Y.
MODEL_TO_H36M_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
H36M_FOCAL_PER_WIDTH = 1.145  # Human3.6M's cameras: f ~ 1145 px for 1000 px frames (~47 degrees across)
MARGIN_PX = 2.0               # a whole body keeps this far from the image border


@dataclass
class Person:
    """One synthetic person as the truth file keeps it (camera frame, metres, px).

    key: the sample key its adapter gives; picture: index of its image in the dataset's picture list; pose (72,)
    axis-angle with the camera-frame global orientation; betas (NB,); transl (3,) m; joints (49, 3) m and
    keypoints (49, 2) px canonical; outfit (4, 3) uint8 RGB in `OUTFIT` order; h36m_joints (17, 3) m and
    h36m_keypoints (17, 2) px for Human3.6M;
    vertex_box: (u0, v0, u1, v1) px, the extent of its projected mesh (the silhouette's box, unclipped); ids: the
    format's own ids (image and annotation ids, image and person index); silhouette: what the image shows of
    it, once painted.

    Whole-body people (`config.WHOLEBODY_DATASETS`) also have: full_pose (165,) SMPL-X's full pose (camera-frame
    global orientation; ``pose`` is then its global orientation and 21 body joints, SMPL's two hand joints zero,
    as the fits table stores SMPL-X bodies), expression (NE,), wholebody (161, 3) m and wholebody_keypoints
    (161, 2) px, the whole-body points of `core.wholebody` (zero where not provided), provided (161,) bool, the
    points the model gives, probes (161,) bool, the points whose visibility painting decides (hands, face,
    pupils: `paint.Body.probes`), scores (161,) in (0, 1], the confidence written for each labelled point
    (OpenPose's c, COCO-WholeBody's hand scores), and shown (161,) bool once painted: which probes the image
    shows.
    """

    key: str
    picture: int
    pose: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    joints: np.ndarray
    keypoints: np.ndarray
    outfit: np.ndarray
    vertex_box: tuple[float, float, float, float]
    ids: dict[str, Any] = field(default_factory=dict)
    h36m_joints: np.ndarray | None = None
    h36m_keypoints: np.ndarray | None = None
    silhouette: Silhouette | None = field(default=None, repr=False)
    full_pose: np.ndarray | None = None
    expression: np.ndarray | None = None
    wholebody: np.ndarray | None = None
    wholebody_keypoints: np.ndarray | None = None
    provided: np.ndarray | None = None
    probes: np.ndarray | None = None
    scores: np.ndarray | None = None
    shown: np.ndarray | None = None


def sample_betas(rng: np.random.Generator, count: int, num_betas: int, clip: float) -> np.ndarray:
    """Shapes (count, num_betas) ~ N(0, 1), clipped to ±clip."""
    return np.clip(rng.standard_normal((count, num_betas)), -clip, clip)


OUTFIT: tuple[str, ...] = ("skin", "top", "bottom", "shoes")
SKIN_TONES = np.array([[255, 224, 196], [241, 194, 150], [224, 172, 125], [198, 134, 90], [160, 105, 70],
                       [120, 80, 55], [92, 62, 45]], dtype=np.float64)


def sample_outfit(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A person's look: outfit colours (4, 3) uint8 in `OUTFIT` order, and the colour of each mesh region
    (len(paint.REGIONS), 3): skin on head and hands, and on forearms (short sleeves, 40%) and shins (shorts,
    30%); the top on arms and torso, the bottom on hips and legs, shoes on feet. Every colour's brightest channel
    is >= 60, so shading never makes a body pixel black (black means "no body" to `paint`)."""
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.05)
    top = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.35, 0.95))
    bottom = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.1, 0.7), rng.uniform(0.25, 0.8))
    shoes = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.4), rng.uniform(0.25, 0.6))
    outfit = np.stack([skin, 255 * np.array(top), 255 * np.array(bottom), 255 * np.array(shoes)])
    brightest = outfit.max(axis=1, keepdims=True)
    outfit = np.clip(np.round(outfit * np.maximum(1.0, 60.0 / brightest)), 0, 255).astype(np.uint8)
    short_sleeves, shorts = rng.random() < 0.4, rng.random() < 0.3
    wears = {"head": "skin", "hands": "skin", "forearms": "skin" if short_sleeves else "top", "upper_arms": "top",
             "torso": "top", "hips": "bottom", "shins": "skin" if shorts else "bottom", "feet": "shoes"}
    regions = np.stack([outfit[OUTFIT.index(wears[region])] for region in REGIONS])
    return outfit, regions


def view_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-from-model rotation (3, 3): the body turned by ``yaw`` about its vertical axis, faced to the
    camera, then the camera tilted by ``pitch`` (about its x) and ``roll`` (about its z); radians."""
    turn = Rotation.from_euler("y", yaw).as_matrix()
    tilt = Rotation.from_euler("zx", [roll, pitch]).as_matrix()
    return tilt @ MODEL_TO_CAMERA @ turn


def focal_for(size: tuple[int, int], fov_deg: float) -> float:
    """Focal length px giving ``fov_deg`` across the longer side of an image of ``size`` (width, height)."""
    return max(size) / 2.0 / math.tan(math.radians(fov_deg) / 2.0)


def place(vertices: np.ndarray, focal: float, principal: tuple[float, float], size: tuple[int, int],
          slot: tuple[float, float], fill: float, truncate: bool, rng: np.random.Generator) -> np.ndarray:
    """Offset (3,) m that puts a body into an image: vertices (V, 3) m, camera frame, as posed without translation.

    The body is scaled by its depth to about ``fill`` of the slot's height (or width), then centred at a random
    spot of the horizontal ``slot`` (x0, x1) px where it fits whole with `MARGIN_PX` to spare; with
    ``truncate`` the spot may lie up to 45% of the body's size beyond the slot, so the image cuts it off.
    """
    width, height = size
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    extent, middle = high - low, (low + high) / 2.0
    slot_width = slot[1] - slot[0]
    depth = max(focal * max(extent[1] / (fill * height), extent[0] / (fill * slot_width)), extent[2] / 2 + 0.5)
    offset = np.zeros(3)
    for _ in range(30):
        near = depth - extent[2] / 2.0  # the nearest point is the largest on the image
        half_w, half_h = extent[0] * focal / near / 2.0, extent[1] * focal / near / 2.0
        spare_w, spare_h = (0.45 * 2 * half_w, 0.45 * 2 * half_h) if truncate else (0.0, 0.0)
        u_range = (slot[0] + half_w + MARGIN_PX - spare_w, slot[1] - 1 - half_w - MARGIN_PX + spare_w)
        v_range = (half_h + MARGIN_PX - spare_h, height - 1 - half_h - MARGIN_PX + spare_h)
        if u_range[0] <= u_range[1] and v_range[0] <= v_range[1]:
            u, v = rng.uniform(*u_range), rng.uniform(*v_range)
            offset = np.array([(u - principal[0]) * depth / focal - middle[0],
                               (v - principal[1]) * depth / focal - middle[1], depth - middle[2]])
            pixels = pinhole(vertices + offset, focal, principal)
            inside = (pixels.min(axis=0) >= (slot[0] + MARGIN_PX, MARGIN_PX)).all() and \
                (pixels.max(axis=0) <= (slot[1] - 1 - MARGIN_PX, height - 1 - MARGIN_PX)).all()
            if truncate or inside:
                return offset
        depth *= 1.1
    return offset  # not reached for a body in front of the camera; the last try is still a valid picture


def h36m_rig(size: tuple[int, int], rng: np.random.Generator) -> dict[tuple[str, str], Camera]:
    """Four cameras per subject around a capture area, Human3.6M style (metres are mm in the files).

    Intrinsics belong to a camera (shared by every subject, as in Human3.6M): f ≈ 1.145 · width, principal
    point within 4 px of the centre, no distortion (the renderer is a pinhole). Extrinsics vary per subject:
    each camera 4.5–5.5 m from the centre of the room at one of four corners (±8°), 1.3–1.9 m high, looking at
    the middle of a standing person. Every subject S1–S11 gets a rig (metadata.xml has a slot for each), so a
    subject's cameras do not depend on which subjects are generated.
    """
    width, height = size
    intrinsics = {}
    for serial in CAMERA_NAMES:
        f = H36M_FOCAL_PER_WIDTH * width * rng.uniform(0.99, 1.01, 2)
        c = np.array([(width - 1) / 2.0, (height - 1) / 2.0]) + rng.uniform(-4, 4, 2)
        intrinsics[serial] = (f, c)
    rig = {}
    for n in range(1, 12):
        subject = f"S{n}"
        for k, serial in enumerate(CAMERA_NAMES):
            azimuth = math.radians(45.0 + 90.0 * k + rng.uniform(-8, 8))
            radius, elevation = rng.uniform(4.5, 5.5), rng.uniform(1.3, 1.9)
            centre = np.array([radius * math.cos(azimuth), radius * math.sin(azimuth), elevation])
            target = np.array([0.0, 0.0, 1.0]) + rng.uniform(-0.15, 0.15, 3)
            f, c = intrinsics[serial]
            rig[(subject, serial)] = look_at(centre, target, f.copy(), c.copy(), serial)
    return rig


def look_at(centre: np.ndarray, target: np.ndarray, f: np.ndarray, c: np.ndarray, name: str) -> Camera:
    """A level pinhole camera (no roll, no distortion) at ``centre`` (3,) m looking at ``target`` (3,) m in a Z-up
    world, with focal lengths f (2,) and principal point c (2,) px; its T is in mm, as Human3.6M's files."""
    forward = (target - centre) / np.linalg.norm(target - centre)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return Camera(name=name, R=np.stack([right, np.cross(forward, right), forward]), T=centre * 1000.0, f=f, c=c,
                  k=np.zeros(3), p=np.zeros(2))
