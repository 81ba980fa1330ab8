"""Drawing over pictures: 2D keypoints and their skeleton, left blue and right red (PIL).

Meshes are drawn by `render.raster`, fitloop's one renderer. Pixels are 0-based with their centres at integers,
as there and in every fitloop record: a marker for a keypoint at (x, y) px is centred on pixel (x, y).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from core.joints import JOINT_INDEX

# Limbs drawn for a 49-joint skeleton, by canonical name (J24 joints; OpenPose feet where present).
SKELETON: tuple[tuple[str, str], ...] = (
    ("Right Ankle", "Right Knee"), ("Right Knee", "Right Hip"), ("Left Ankle", "Left Knee"),
    ("Left Knee", "Left Hip"), ("Right Hip", "Left Hip"), ("Right Wrist", "Right Elbow"),
    ("Right Elbow", "Right Shoulder"), ("Left Wrist", "Left Elbow"), ("Left Elbow", "Left Shoulder"),
    ("Right Shoulder", "Left Shoulder"), ("Neck (LSP)", "Top of Head (LSP)"), ("Thorax (MPII)", "Neck (LSP)"),
    ("Pelvis (MPII)", "Thorax (MPII)"), ("Nose", "Left Eye"), ("Nose", "Right Eye"), ("Left Eye", "Left Ear"),
    ("Right Eye", "Right Ear"), ("OP LAnkle", "OP LBigToe"), ("OP LAnkle", "OP LHeel"),
    ("OP RAnkle", "OP RBigToe"), ("OP RAnkle", "OP RHeel"),
)
LEFT_COLOUR, RIGHT_COLOUR, CENTRE_COLOUR = (60, 130, 255), (255, 80, 60), (80, 220, 120)


def _side_colour(name: str) -> tuple[int, int, int]:
    if name.startswith(("Left", "OP L")):
        return LEFT_COLOUR
    if name.startswith(("Right", "OP R")):
        return RIGHT_COLOUR
    return CENTRE_COLOUR


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
                draw.line([tuple(keypoints[i, :2]), tuple(keypoints[j, :2])], fill=_side_colour(a), width=width)
    for name, idx in JOINT_INDEX.items():
        if visible[idx]:
            x, y = keypoints[idx, :2]
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=_side_colour(name),
                         outline=(0, 0, 0))
    return out
