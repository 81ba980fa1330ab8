"""Pictures of body models: the shape space and the canonical joints, meshes by `render.raster`, joints by
`render.draw` (pixel centres at integers)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from core.pinhole import pinhole
from fitting.body_model import BodyModel
from render.draw import draw_keypoints
from render.raster import render_mesh

TILE_W, TILE_H = 300, 340
CAMERA_DISTANCE = 6.0  # m; with the focal length below a 2 m tall body fills ~85% of a tile's height
FOCAL = 0.85 * TILE_H * CAMERA_DISTANCE / 2.0


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


def render_body(model: BodyModel, betas: np.ndarray, body_pose: np.ndarray | None = None, yaw_deg: float = 0.0,
                size: tuple[int, int] = (TILE_W, TILE_H), focal: float = FOCAL) -> Image.Image:
    """One body (betas (NB,), body_pose (69,) axis-angle) seen from the front (or turned by `yaw_deg`), with its
    49 canonical joints. The camera is fixed (`CAMERA_DISTANCE`, `focal`) and aimed at the mid-height of a
    1.7 m body standing on the ground, so tiles drawn with the same settings compare in size."""
    with torch.no_grad():
        b = torch.as_tensor(betas, dtype=torch.float32)[None]
        p = torch.zeros(1, 69) if body_pose is None else torch.as_tensor(body_pose, dtype=torch.float32)[None]
        out = model(b, p, torch.zeros(1, 3))
    verts, joints = out.vertices[0].numpy(), out.joints[0].numpy()
    ground = np.array([0.0, verts[:, 1].min(), 0.0])
    aim = ground + np.array([0.0, 0.85, 0.0])  # feet on the ground, camera at hip height of a 1.7 m body
    centre = ((size[0] - 1) / 2, (size[1] - 1) / 2)  # the picture's middle, pixel centres at integers
    verts_cam = smpl_to_camera(verts - aim, CAMERA_DISTANCE, yaw_deg)
    joints_cam = smpl_to_camera(joints - aim, CAMERA_DISTANCE, yaw_deg)
    image = Image.new("RGB", size, (250, 250, 250))
    image = render_mesh(image, verts_cam, model.faces, focal, centre)
    kp = np.concatenate([pinhole(joints_cam, focal, centre), np.ones((len(joints), 1))], axis=1)
    return draw_keypoints(image, kp, radius=2.5, skeleton=False)


def shape_space_sheet(model: BodyModel, components: int = 4, sigma: float = 2.0) -> Image.Image:
    """A grid: column k varies beta_k over (-sigma, 0, +sigma) (rows); each tile a front view with joints."""
    components = min(components, model.num_betas)
    values = (-sigma, 0.0, sigma)
    sheet = Image.new("RGB", (components * TILE_W, len(values) * TILE_H + 24), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k in range(components):
        draw.text((k * TILE_W + 8, 6), f"beta[{k}]", fill=(0, 0, 0))
        for r, value in enumerate(values):
            betas = np.zeros(model.num_betas, dtype=np.float32)
            betas[k] = value
            tile = render_body(model, betas)
            ImageDraw.Draw(tile).text((6, TILE_H - 16), f"{value:+.0f} sd", fill=(60, 60, 60))
            sheet.paste(tile, (k * TILE_W, 24 + r * TILE_H))
    return sheet
