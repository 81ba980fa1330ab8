"""A small software renderer for pictures of bodies: flat-shaded meshes and 2D skeletons, no OpenGL.

Meshes are drawn with the painter's algorithm (triangles sorted far to near, each filled by PIL), which is exact
for the non-intersecting surfaces of a body seen from outside and costs ~0.1 s for 27k triangles. Cameras are
pinhole, in the camera frame of OpenCV: x right, y down, z forward, pixels with (0, 0) at the top-left corner of
the top-left pixel. SMPL-frame bodies (Y up, facing +Z) are turned to face such a camera by `smpl_to_camera`.
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


def smpl_to_camera(points: np.ndarray, distance: float, yaw_deg: float = 0.0) -> np.ndarray:
    """SMPL-frame points (..., 3) (Y up, facing +Z) to a camera `distance` m in front, looking at the body.

    The body is turned by `yaw_deg` about its vertical axis first (0: facing the camera).
    """
    yaw = np.deg2rad(yaw_deg)
    rot_y = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    p = points @ rot_y.T
    # The camera sits on the body's +Z axis looking back: camera z = -Z, y (down) = -Y, so x = y × z = +X
    # (the subject's left, +X, appears on the right of the image, as for a person facing you).
    return np.stack([p[..., 0], -p[..., 1], distance - p[..., 2]], axis=-1)


def project(points_cam: np.ndarray, focal: float | tuple[float, float], center: tuple[float, float]) -> np.ndarray:
    """Pinhole projection of camera-frame points (..., 3) in metres to pixels (..., 2)."""
    fx, fy = (focal, focal) if np.isscalar(focal) else focal
    z = points_cam[..., 2:3]
    return np.concatenate([fx * points_cam[..., :1] / z + center[0], fy * points_cam[..., 1:2] / z + center[1]], -1)


def render_mesh(image: Image.Image, vertices_cam: np.ndarray, faces: np.ndarray, focal: float | tuple[float, float],
                center: tuple[float, float], colour: tuple[int, int, int] = (200, 200, 215),
                opacity: float = 0.85) -> Image.Image:
    """Draw a flat-shaded mesh over `image` (returns a new RGB image).

    vertices_cam (V, 3) metres in the camera frame (z > 0 in front); faces (F, 3) vertex indices.
    Light comes from the camera; back faces are culled.
    """
    tri = vertices_cam[faces]                                   # (F, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    centroids = tri.mean(axis=1)
    view = -centroids / (np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12)
    facing = (normals * view).sum(axis=1)
    # Winding differs between mesh conventions; keep whichever side faces the camera on most triangles.
    if np.median(facing[np.abs(facing) > 1e-3]) < 0:
        facing = -facing
    keep = (facing > 0) & (tri[:, :, 2] > 1e-3).all(axis=1)
    order = np.flatnonzero(keep)[np.argsort(-centroids[keep, 2])]  # far to near
    pixels = project(tri[order], focal, center)
    shade = 0.35 + 0.65 * facing[order]
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    base = np.asarray(colour, dtype=np.float64)
    alpha = int(round(255 * opacity))
    for poly, s in zip(pixels, shade):
        fill = tuple(int(c) for c in np.clip(base * s, 0, 255)) + (alpha,)
        draw.polygon([tuple(p) for p in poly], fill=fill)
    out = image.convert("RGBA")
    out.alpha_composite(layer)
    return out.convert("RGB")


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
