"""SPIN's training augmentation (SPIN_REFERENCE §5.2–5.3), applied exactly: flip, rotation, scale, colour noise.

One set of parameters (`AugmentParams`) moves every part of a sample consistently:

* **Image**: the training crop is SPIN's box (side ``200·scale``) times the augmentation ``scale``, rotated by
  ``rot`` degrees (content turns counter-clockwise on screen), mirrored when ``flip``, resampled bilinearly
  through one exact affine map (`shards.crop`), then multiplied per channel by ``noise`` and clipped to [0, 255],
  then normalised with ImageNet's mean and std.
* **2D keypoints**: the same affine map; when flipped, left and right joints swap (`J49_FLIP_PERM`; for the
  161 whole-body points `core.wholebody.WHOLEBODY_FLIP_PERM`: left hand and right hand, and the face's sides).
  Then normalised as SPIN does: ``2·(u + 0.5)/res − 1`` with u in 0-based crop px, so the crop's outer edges are
  ±1.
* **3D joints**: rotated by ``−rot`` about the camera's z axis (the image's rotation, seen in the camera frame);
  when flipped, swapped left/right and x negated.
* **SMPL pose**: the global orientation is pre-multiplied by the same z rotation; when flipped, `flip_pose`.
  Betas are unchanged.
* **Label images** (person mask, part labels: `shards.masks`): the same affine map, nearest neighbour, unknown
  (255) outside the source; when flipped, every ``left_*`` part id becomes its ``right_*`` twin's.

All functions are pure and take numpy arrays; none modifies its inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from core.joints import J49_FLIP_PERM, NUM_JOINTS, flip_pose
from core.wholebody import NUM_WHOLEBODY, WHOLEBODY_FLIP_PERM
from shards.crop import box_to_crop, transform_points, warp
from shards.masks import crop_labels, flip_labels

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """SPIN's augmentation parameters (its defaults); ``enabled=False`` gives the plain crop (evaluation).

    Attributes:
        flip_prob: probability of a horizontal flip (SPIN: 0.5).
        rot_factor: rotation = N(0, 1)·rot_factor degrees (SPIN: 30) ...
        rot_max: ... clipped to ±rot_max (SPIN: 2·rot_factor = 60) ...
        rot_zero_prob: ... and set to 0 with this probability (SPIN: 0.6).
        scale_factor: scale = 1 + N(0, 1)·scale_factor (SPIN: 0.25) ...
        scale_min, scale_max: ... clipped to this range (SPIN: 1 ± scale_factor).
        noise_factor: each channel is multiplied by U(1 − noise_factor, 1 + noise_factor) (SPIN: 0.4).
    """

    enabled: bool = True
    flip_prob: float = 0.5
    rot_factor: float = 30.0
    rot_max: float = 60.0
    rot_zero_prob: float = 0.6
    scale_factor: float = 0.25
    scale_min: float = 0.75
    scale_max: float = 1.25
    noise_factor: float = 0.4


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation: flip, rotation (degrees), scale (multiplies the box), per-channel noise."""

    flip: bool = False
    rot: float = 0.0
    scale: float = 1.0
    noise: tuple[float, float, float] = (1.0, 1.0, 1.0)


def sample_params(rng: np.random.Generator, config: AugmentConfig) -> AugmentParams:
    """Draw SPIN's augmentation (its order: flip, noise, rotation, scale, then the rotation's zeroing)."""
    if not config.enabled:
        return AugmentParams()
    flip = bool(rng.random() < config.flip_prob)
    noise = rng.uniform(1.0 - config.noise_factor, 1.0 + config.noise_factor, size=3)
    rot = float(np.clip(rng.standard_normal() * config.rot_factor, -config.rot_max, config.rot_max))
    scale = float(np.clip(1.0 + rng.standard_normal() * config.scale_factor, config.scale_min, config.scale_max))
    if rng.random() < config.rot_zero_prob:
        rot = 0.0
    return AugmentParams(flip=flip, rot=rot, scale=scale, noise=(float(noise[0]), float(noise[1]), float(noise[2])))


def training_transform(center: np.ndarray, side: float, params: AugmentParams, res: int) -> np.ndarray:
    """(3, 3) source px -> training-crop px for a box (``center`` (2,) px, ``side`` px) under ``params``."""
    return box_to_crop(center, side * params.scale, res, params.rot, params.flip)


def normalize_image(pixels: np.ndarray, noise: tuple[float, float, float]) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32: times ``noise`` per channel, clipped to [0, 255], /255, then
    ImageNet-normalised. One 256-entry table per channel does all of it (exact in float32)."""
    levels = np.arange(256, dtype=np.float32)[None, :]
    table = (np.minimum(levels * np.asarray(noise, dtype=np.float32)[:, None], 255.0) / 255.0
             - IMAGENET_MEAN[:, None]) / IMAGENET_STD[:, None]
    out = np.empty((3,) + pixels.shape[:2], dtype=np.float32)
    for c in range(3):
        np.take(table[c], pixels[:, :, c], out=out[c])
    return out


def normalize_keypoints(keypoints: np.ndarray, res: int) -> np.ndarray:
    """(J, 3) crop px + confidence -> x, y in [-1, 1] across the crop (``2·(u + 0.5)/res − 1``) + confidence."""
    out = np.array(keypoints, dtype=np.float32)
    out[:, :2] = 2.0 * (out[:, :2] + 0.5) / res - 1.0
    out[keypoints[:, 2] <= 0] = 0.0  # an absent joint stays all zeros
    return out


# The flip permutation of each keypoint layout a sample holds, by its number of points.
FLIP_PERMS: dict[int, np.ndarray] = {NUM_JOINTS: J49_FLIP_PERM, NUM_WHOLEBODY: WHOLEBODY_FLIP_PERM}


def augment_keypoints(keypoints: np.ndarray, to_crop: np.ndarray, flip: bool, res: int) -> np.ndarray:
    """(J, 3) source px + confidence -> (J, 3) normalised training-crop coordinates + confidence; J is 49
    (`core.joints`) or 161 (`core.wholebody`).

    ``to_crop`` already mirrors positions when ``flip``; this swaps the points' left/right names to match.
    """
    if len(keypoints) not in FLIP_PERMS:
        raise ValueError(f"keypoints of {len(keypoints)} points: neither the 49-joint nor the 161-point layout")
    crop = transform_points(to_crop, keypoints)
    if flip:
        crop = crop[FLIP_PERMS[len(keypoints)]]
    return normalize_keypoints(crop, res)


def _z_rotation(rot: float) -> np.ndarray:
    """Rotation about the camera's z axis that matches an image rotation of ``rot`` degrees (angle −rot)."""
    theta = math.radians(-rot)
    cs, sn = math.cos(theta), math.sin(theta)
    return np.array([[cs, -sn, 0.0], [sn, cs, 0.0], [0.0, 0.0, 1.0]])


def augment_joints_3d(joints: np.ndarray, rot: float, flip: bool) -> np.ndarray:
    """(49, 4) metres (camera frame) + confidence -> rotated about z by −rot, then mirrored (x negated, left/right
    swapped) when ``flip``."""
    out = np.array(joints, dtype=np.float64)
    out[:, :3] = out[:, :3] @ _z_rotation(rot).T
    if flip:
        out = out[J49_FLIP_PERM]
        out[:, 0] = -out[:, 0]
    return out.astype(np.float32)


def augment_pose(pose: np.ndarray, rot: float, flip: bool) -> np.ndarray:
    """(72,) SMPL axis-angle -> global orientation pre-multiplied by the z rotation, then `flip_pose` if flipped."""
    out = np.array(pose, dtype=np.float64)
    if rot != 0.0:
        orient = Rotation.from_matrix(_z_rotation(rot)) * Rotation.from_rotvec(out[:3])
        out[:3] = orient.as_rotvec()
    if flip:
        out = flip_pose(out)
    return out.astype(np.float32)


def augment_image(image: Image.Image, to_crop: np.ndarray, noise: tuple[float, float, float], res: int,
                  resample: str = "bilinear") -> np.ndarray:
    """The normalised training crop (3, res, res) float32 of an RGB ``image`` through ``to_crop`` (source px ->
    crop px, flip included)."""
    crop = warp(image, to_crop, res, resample=resample)
    return normalize_image(np.asarray(crop), noise)


def augment_labels(labels: np.ndarray, to_crop: np.ndarray, flip: bool, names: tuple[str, ...] | list[str],
                   res: int) -> np.ndarray:
    """(H, W) uint8 label image (source px) -> (res, res) uint8 in the training crop (``to_crop`` flips positions
    already; this renames left/right parts of the table ``names`` to match), 255 outside the source."""
    crop = crop_labels(labels, to_crop, res)
    return flip_labels(crop, names) if flip else crop
