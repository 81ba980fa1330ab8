"""Drawing over pictures: 2D keypoints and their skeleton, left blue and right red; whole-body hands (their bones)
and face points in colours of their own (PIL).

Meshes are drawn by `render.raster`, fitloop's one renderer. Pixels are 0-based with their centres at integers,
as there and in every fitloop record: a marker for a keypoint at (x, y) px is centred on pixel (x, y).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from core.joints import JOINT_INDEX
from core.wholebody import FACE_NAMES, FINGERS, PUPIL_NAMES, WHOLEBODY_INDEX

# Limbs drawn for a 49-joint skeleton, by canonical name: the dataset (J24) joints' limbs, then OpenPose BODY_25's
# own 24 limbs over its slots 0–24 (`POSE_BODY_25_PAIRS_RENDER_GPU` in CMU-Perceptual-Computing-Lab/openpose
# include/openpose/pose/poseParametersRender.hpp), so a sample with detections only (`fitloop preprocess
# openpose`) is drawn with its skeleton too. A limb is drawn when both its joints are present.
J24_SKELETON: tuple[tuple[str, str], ...] = (
    ("Right Ankle", "Right Knee"), ("Right Knee", "Right Hip"), ("Left Ankle", "Left Knee"),
    ("Left Knee", "Left Hip"), ("Right Hip", "Left Hip"), ("Right Wrist", "Right Elbow"),
    ("Right Elbow", "Right Shoulder"), ("Left Wrist", "Left Elbow"), ("Left Elbow", "Left Shoulder"),
    ("Right Shoulder", "Left Shoulder"), ("Neck (LSP)", "Top of Head (LSP)"), ("Thorax (MPII)", "Neck (LSP)"),
    ("Pelvis (MPII)", "Thorax (MPII)"), ("Nose", "Left Eye"), ("Nose", "Right Eye"), ("Left Eye", "Left Ear"),
    ("Right Eye", "Right Ear"),
)
BODY_25_SKELETON: tuple[tuple[str, str], ...] = (
    ("OP Neck", "OP MidHip"), ("OP Neck", "OP RShoulder"), ("OP Neck", "OP LShoulder"),
    ("OP RShoulder", "OP RElbow"), ("OP RElbow", "OP RWrist"), ("OP LShoulder", "OP LElbow"),
    ("OP LElbow", "OP LWrist"), ("OP MidHip", "OP RHip"), ("OP RHip", "OP RKnee"), ("OP RKnee", "OP RAnkle"),
    ("OP MidHip", "OP LHip"), ("OP LHip", "OP LKnee"), ("OP LKnee", "OP LAnkle"), ("OP Neck", "OP Nose"),
    ("OP Nose", "OP REye"), ("OP REye", "OP REar"), ("OP Nose", "OP LEye"), ("OP LEye", "OP LEar"),
    ("OP LAnkle", "OP LBigToe"), ("OP LBigToe", "OP LSmallToe"), ("OP LAnkle", "OP LHeel"),
    ("OP RAnkle", "OP RBigToe"), ("OP RBigToe", "OP RSmallToe"), ("OP RAnkle", "OP RHeel"),
)
SKELETON: tuple[tuple[str, str], ...] = J24_SKELETON + BODY_25_SKELETON
LEFT_COLOUR, RIGHT_COLOUR, CENTRE_COLOUR = (60, 130, 255), (255, 80, 60), (80, 220, 120)


def _side_colour(name: str) -> tuple[int, int, int]:
    if name.startswith(("Left", "OP L")):
        return LEFT_COLOUR
    if name.startswith(("Right", "OP R")):
        return RIGHT_COLOUR
    return CENTRE_COLOUR


def limb_colour(a: str, b: str) -> tuple[int, int, int]:
    """A limb's colour: its first joint's side, else its second's (a limb from the neck to a shoulder is the
    shoulder's side), else the centre's."""
    colour = _side_colour(a)
    return colour if colour != CENTRE_COLOUR else _side_colour(b)


def draw_keypoints(image: Image.Image, keypoints: np.ndarray, radius: float = 3.0, min_conf: float = 0.0,
                   skeleton: bool = True) -> Image.Image:
    """Draw (49, 3) canonical keypoints (x px, y px, confidence) and their skeleton; left blue, right red.

    Joints with confidence <= `min_conf` are not drawn. Returns a new RGB image.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    visible = keypoints[:, 2] > min_conf
    if skeleton:
        width = max(1, int(round(radius * 0.6)))
        for a, b in SKELETON:
            i, j = JOINT_INDEX[a], JOINT_INDEX[b]
            if visible[i] and visible[j]:
                draw.line([tuple(keypoints[i, :2]), tuple(keypoints[j, :2])], fill=limb_colour(a, b), width=width)
    for name, idx in JOINT_INDEX.items():
        if visible[idx]:
            x, y = keypoints[idx, :2]
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=_side_colour(name),
                         outline=(0, 0, 0))
    return out


# Hand bones, by whole-body name: each finger a chain from the hand's root (the wrist) through its three joints
# to its tip (core.wholebody's 21-point hand).
HAND_BONES: dict[str, tuple[tuple[str, str], ...]] = {
    side: tuple(pair for finger in FINGERS for pair in zip(
        (f"{side}_hand_root", f"{side}_{finger}1", f"{side}_{finger}2", f"{side}_{finger}3"),
        (f"{side}_{finger}1", f"{side}_{finger}2", f"{side}_{finger}3", f"{side}_{finger}")))
    for side in ("left", "right")
}
# Distinct from the body's left blue / right red / centre green, and from each other.
HAND_COLOURS = {"left": (0, 200, 230), "right": (255, 170, 0)}
FACE_COLOUR = (240, 60, 220)


def draw_hands_and_face(image: Image.Image, wholebody: np.ndarray, radius: float = 1.5,
                        min_conf: float = 0.0) -> Image.Image:
    """Draw the hands (bones and points; left cyan, right orange) and face points (magenta) of (161, 3) whole-body
    keypoints (`core.wholebody` order: x px, y px, confidence); the body slots are left to `draw_keypoints`.

    Points with confidence <= ``min_conf`` are not drawn, nor bones touching them. Returns a new RGB image.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    visible = wholebody[:, 2] > min_conf
    width = max(1, int(round(radius * 0.8)))

    def point(name: str, colour: tuple[int, int, int]) -> None:
        i = WHOLEBODY_INDEX[name]
        if visible[i]:
            x, y = wholebody[i, :2]
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)

    for side, bones in HAND_BONES.items():
        for a, b in bones:
            i, j = WHOLEBODY_INDEX[a], WHOLEBODY_INDEX[b]
            if visible[i] and visible[j]:
                draw.line([tuple(wholebody[i, :2]), tuple(wholebody[j, :2])], fill=HAND_COLOURS[side], width=width)
        for name in {n for bone in bones for n in bone}:
            point(name, HAND_COLOURS[side])
    for name in FACE_NAMES + PUPIL_NAMES:
        point(name, FACE_COLOUR)
    return out

