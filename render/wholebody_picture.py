"""Pictures of whole-body fits (the demo's ``sample_wholebody_fits.png``): per sample the stored crop with its
keypoints, the fitted whole-body mesh over it, and close-ups of the face and of a hand.

The face close-up is drawn only where the picture shows the face (`face_seen`): a person seen from behind has
no face to magnify, and its tile says "face not visible" with the reason instead of showing the back of the
head or a blank square. Whether the face is seen is the labels' call: at least `FACE_SEEN_FRACTION` of the 51
inner face landmarks (iBUG 17–67: brows, nose, eyes, mouth, which only a face turned towards the camera shows;
the jaw contour 0–16 is seen from the side too) labelled with a confidence of at least OpenPose's own face
threshold (`OPENPOSE_FACE_RENDER_THRESHOLD`). COCO-WholeBody labels face points 1.0, OpenPose writes its scores.
Where the labels show a face, the fit's own facing (`fit_faces_camera`) is checked as well: a fit turned away
from a seen face is a wrong fit, and its close-up says so on the picture rather than being hidden.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from core.wholebody import FACE_NAMES, WHOLEBODY_INDEX, WHOLEBODY_PARTS, wholebody_indices
from render.draw import draw_hands_and_face, draw_keypoints
from render.raster import render_mesh
from render.sample_picture import (
    BACKGROUND,
    TEXT,
    WARN,
    contact_sheet,
    decode_crop,
    fit_text,
    panel_camera,
    render_panel,
    scale_keypoints,
    text_font,
)

WHOLEBODY_MESH_COLOUR = (215, 200, 170)
CLOSE_UP = 3  # the close-ups of face and hand magnify the fit's picture this many times
# OpenPose draws a face keypoint when its score reaches this: `DEFINE_double(face_render_threshold, 0.4, ...)` in
# CMU-Perceptual-Computing-Lab/openpose include/openpose/flags.hpp (master).
OPENPOSE_FACE_RENDER_THRESHOLD = 0.4
FACE_INNER_NAMES: tuple[str, ...] = FACE_NAMES[17:]  # iBUG 17–67: brows, nose, eyes, mouth (no jaw contour)
FACE_SEEN_FRACTION = 0.5  # of FACE_INNER_NAMES confidently labelled: the picture shows the face
# Points that place the face: the nose tip (iBUG 30) stands out in front of the eyes' outer corners (36, 45) and
# the mouth's corners (48, 54), so (nose tip - their mean) points the way the face looks.
NOSE_TIP = FACE_NAMES[30]
FACE_PLANE = (FACE_NAMES[36], FACE_NAMES[45], FACE_NAMES[48], FACE_NAMES[54])
# A fit "faces away" past this angle between where its face looks and the camera: a profile (90°) still faces the
# camera, with slack for the nose's direction on a face turned a little further (at 90° the demo's profile faces
# were flagged).
FACES_AWAY_DEG = 105.0


def face_seen(wholebody: np.ndarray, threshold: float = OPENPOSE_FACE_RENDER_THRESHOLD) -> tuple[bool, int]:
    """(whether the picture shows the face, how many of its inner landmarks are labelled) from a sample's (161, 3)
    whole-body keypoints (px + confidence, `core.wholebody` order): seen when at least `FACE_SEEN_FRACTION` of
    the 51 inner landmarks have a confidence of ``threshold`` or more (module docstring)."""
    confident = int((np.asarray(wholebody)[wholebody_indices(FACE_INNER_NAMES), 2] >= threshold).sum())
    return confident >= FACE_SEEN_FRACTION * len(FACE_INNER_NAMES), confident


def fit_faces_camera(points: np.ndarray) -> bool:
    """Whether a fit's face looks towards the camera: from its (161, 3) whole-body points in the camera frame
    (metres, camera at the origin looking down +z, as `render.raster`), the way the face looks (the nose tip minus
    the mean of the eyes' and mouth's corners) is less than `FACES_AWAY_DEG` from the way to the camera."""
    points = np.asarray(points, dtype=np.float64)
    nose = points[WHOLEBODY_INDEX[NOSE_TIP]]
    forward = nose - points[[WHOLEBODY_INDEX[n] for n in FACE_PLANE]].mean(axis=0)
    cosine = float(forward @ -nose) / (np.linalg.norm(forward) * np.linalg.norm(nose))
    return bool(cosine > np.cos(np.radians(FACES_AWAY_DEG)))


def note_tile(size: int, lines: Sequence[str], warn: bool = False) -> Image.Image:
    """A white ``size`` px square that says ``lines`` (the first in bold colour): a close-up not drawn, and why."""
    tile = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(tile)
    px = max(11, size // 16)
    typeface = text_font(px)
    top = (size - len(lines) * (px + 4)) // 2
    for i, line in enumerate(lines):
        text = fit_text(line, typeface, size - 8)
        x = (size - typeface.getlength(text)) / 2
        draw.text((x, top + i * (px + 4)), text, fill=WARN if warn and i == 0 else TEXT, font=typeface)
    return tile


def _caption(image: Image.Image, text: str) -> Image.Image:
    """``text`` written at the top left of ``image`` (white with a black outline, as `render_panel`'s notes)."""
    draw = ImageDraw.Draw(image)
    typeface = text_font(max(11, image.size[0] // 16))
    draw.text((4, 3), fit_text(text, typeface, image.size[0] - 8), fill=(255, 255, 255), font=typeface,
              stroke_width=2, stroke_fill=(0, 0, 0))
    return image


def wholebody_sheet(samples: Sequence[Any], model: Any, full_pose: torch.Tensor, betas: torch.Tensor,
                    expression: torch.Tensor, cam_t: torch.Tensor, size: int = 200) -> Image.Image:
    """Pictures of whole-body fits, a row of four per sample: the stored crop with its keypoints (body joints,
    hands and face: `render.sample_picture.render_panel`); the fitted whole-body mesh drawn over it with the same
    keypoints; a close-up (`CLOSE_UP` times) of that picture at the face where the picture shows it (`face_seen`;
    else a tile saying "face not visible" and how many landmarks are labelled; "fit faces away" written on it
    where the fit's face is turned from the camera: `fit_faces_camera`), and one at the hand with the most labelled
    points (a tile saying "no hand labelled" where neither has one). samples: shard samples
    (`shards.sample.StoredSample`) with whole-body keypoints; model: the `fitting.wholebody_model.WholeBodyModel`
    of the fits; full_pose (B, 165), betas (B, NB), expression (B, NE), cam_t (B, 3) m: crop-frame fits (SPIN's
    fit-frame camera); size: a tile's side, px."""
    dtype = model.rows.dtype
    with torch.no_grad():
        posed = model.forward_full(full_pose.to(dtype), betas.to(dtype), expression.to(dtype))
    in_camera = (cam_t.double()[:, None, :]).numpy()
    vertices = posed.vertices.double().numpy() + in_camera
    points = posed.points.double().numpy() + in_camera
    tiles = []
    for i, sample in enumerate(samples):
        crop = decode_crop(sample)
        res = crop.size[0]
        keypoints, _ = render_panel(sample, None, None, size, crop=crop, missing="keypoints")
        pictures = {}
        for side in (size, size * CLOSE_UP):
            camera = panel_camera(sample, {"frame": "crop"}, side)
            mesh = render_mesh(crop.resize((side, side), Image.Resampling.BILINEAR), vertices[i], model.body.faces,
                               camera.focal, camera.center, colour=WHOLEBODY_MESH_COLOUR, opacity=0.8)
            radius = max(2.0, side / 110)
            mesh = draw_keypoints(mesh, scale_keypoints(sample.keypoints_crop, res, side), radius=radius)
            pictures[side] = draw_hands_and_face(mesh, scale_keypoints(sample.wholebody_crop, res, side),
                                                 radius=radius / 2)
        big = scale_keypoints(sample.wholebody_crop, res, size * CLOSE_UP)

        def close_up(names: Sequence[str], seen: np.ndarray) -> Image.Image:
            x, y = big[wholebody_indices(names)][seen, :2].mean(axis=0)
            box = (round(float(x) - size / 2), round(float(y) - size / 2))
            return pictures[size * CLOSE_UP].crop((*box, box[0] + size, box[1] + size))

        seen, confident = face_seen(sample.wholebody_crop)
        if not seen:
            face = note_tile(size, ["face not visible",
                                    f"{confident} of {len(FACE_INNER_NAMES)} landmarks labelled"])
        else:
            face_points = sample.wholebody_crop[wholebody_indices(FACE_INNER_NAMES)]
            face = close_up(FACE_INNER_NAMES, face_points[:, 2] >= OPENPOSE_FACE_RENDER_THRESHOLD)
            if not fit_faces_camera(points[i]):
                face = _caption(face, "fit faces away")
        labelled = {part: sample.wholebody_crop[wholebody_indices(WHOLEBODY_PARTS[part]), 2] > 0
                    for part in ("left_hand", "right_hand")}
        hand = max(labelled, key=lambda part: int(labelled[part].sum()))
        hand_tile = (close_up(WHOLEBODY_PARTS[hand], labelled[hand]) if labelled[hand].any()
                     else note_tile(size, ["no hand labelled"]))
        tiles += [keypoints, pictures[size], face, hand_tile]
    return contact_sheet(tiles, columns=4)
