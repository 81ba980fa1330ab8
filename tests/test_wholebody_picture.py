"""The whole-body picture's face close-up (render.wholebody_picture): drawn where the picture shows the face, a
"face not visible" tile for a person seen from behind; the fit's facing from its nose and face corners."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from core.frames import fit_camera
from core.wholebody import FACE_NAMES, NUM_WHOLEBODY, wholebody_indices
from fitting.body_model import load_body_model
from fitting.wholebody_model import WholeBodyModel
from render.wholebody_picture import (
    FACE_INNER_NAMES,
    OPENPOSE_FACE_RENDER_THRESHOLD,
    face_seen,
    fit_faces_camera,
    note_tile,
    wholebody_sheet,
)
from shards.sample import StoredSample

RES = 64      # px of the stored crop
SIZE = 48     # px of a tile
DEPTH = 40.0  # m from the camera to the body: SPIN's 5000 px focal puts a body in a crop's box at about this


@pytest.fixture(scope="module")
def model() -> WholeBodyModel:
    return WholeBodyModel(load_body_model("open-smplx-small", dtype=torch.float64))


def facing(turn: float) -> torch.Tensor:
    """A full pose (1, 165): the body turned ``turn`` rad about the vertical from facing the camera. The model's
    body faces +z, up +y; the camera frame is OpenCV's (y down, looking down +z): a half turn about x faces it."""
    pose = torch.zeros(1, 165, dtype=torch.float64)
    upright = torch.tensor([math.pi, 0.0, 0.0], dtype=torch.float64)
    turned = torch.tensor([0.0, turn, 0.0], dtype=torch.float64)
    rotation = Rotation.from_rotvec(upright.numpy()) * Rotation.from_rotvec(turned.numpy())
    pose[0, :3] = torch.as_tensor(rotation.as_rotvec())
    return pose


def posed_points(model: WholeBodyModel, pose: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = model.forward_full(pose, torch.zeros(1, model.num_betas, dtype=torch.float64),
                                 torch.zeros(1, model.num_expression, dtype=torch.float64))
    return out.points[0].numpy() + np.array([0.0, 0.0, DEPTH])


def test_a_face_is_seen_when_half_its_inner_landmarks_reach_openposes_threshold():
    points = np.zeros((NUM_WHOLEBODY, 3))
    inner = wholebody_indices(FACE_INNER_NAMES)
    points[inner, 2] = 1.0
    assert face_seen(points) == (True, 51)
    points[inner[:26], 2] = OPENPOSE_FACE_RENDER_THRESHOLD - 0.01  # 25 of 51 left: under half
    assert face_seen(points) == (False, 25)
    points[inner[0], 2] = OPENPOSE_FACE_RENDER_THRESHOLD          # 26 of 51: half or more
    assert face_seen(points) == (True, 26)
    back = np.zeros((NUM_WHOLEBODY, 3))                            # seen from behind: only the jaw's contour
    back[wholebody_indices(FACE_NAMES[:17]), 2] = 1.0
    assert face_seen(back) == (False, 0)


@pytest.mark.parametrize("turn, faces", [(0.0, True), (math.radians(60), True), (math.radians(90), True),
                                         (math.radians(125), False), (math.pi, False)])
def test_a_fit_faces_the_camera_up_to_a_profile_and_a_little_past_it(model, turn, faces):
    assert fit_faces_camera(posed_points(model, facing(turn))) is faces
    assert fit_faces_camera(posed_points(model, facing(-turn))) is faces


def sample_of(model: WholeBodyModel, pose: torch.Tensor, face_labelled: bool) -> StoredSample:
    """A stored sample whose crop is grey and whose whole-body keypoints are the posed model's points projected
    with the fit-frame camera; its face's inner landmarks labelled or not (as a painter labels a face it sees)."""
    crop = {"res": RES, "box_side": float(RES), "box_center": [(RES - 1) / 2, (RES - 1) / 2]}
    camera = fit_camera(crop)
    points = posed_points(model, pose)
    xy = camera.project(points)
    wholebody = np.column_stack([xy, np.where(model.provided, 1.0, 0.0)]).astype(np.float32)
    wholebody[wholebody_indices(FACE_NAMES + ("right_pupil", "left_pupil")), 2] = 0.0
    if face_labelled:
        wholebody[wholebody_indices(FACE_INNER_NAMES), 2] = 1.0
    jpeg = io.BytesIO()
    Image.new("RGB", (RES, RES), (128, 128, 128)).save(jpeg, "JPEG")
    return StoredSample(key=f"t/{face_labelled}", meta={"crop": crop}, jpeg=jpeg.getvalue(),
                        keypoints_2d=np.zeros((49, 3), np.float32), keypoints_crop=np.zeros((49, 3), np.float32),
                        wholebody_crop=wholebody)


def tile(sheet: Image.Image, row: int, column: int) -> np.ndarray:
    x, y = column * (SIZE + 4), row * (SIZE + 4)
    return np.asarray(sheet.crop((x, y, x + SIZE, y + SIZE)))


def test_the_face_close_up_shows_a_seen_face_and_says_so_for_a_person_seen_from_behind(model):
    front, back = facing(0.0), facing(math.pi)
    samples = [sample_of(model, front, True), sample_of(model, back, False)]
    pose = torch.cat([front, back])
    zeros = torch.zeros(2, model.num_betas, dtype=torch.float64)
    cam_t = torch.tensor([[0.0, 0.0, DEPTH]] * 2, dtype=torch.float64)
    sheet = wholebody_sheet(samples, model, pose, zeros, torch.zeros(2, model.num_expression, dtype=torch.float64),
                            cam_t, size=SIZE)
    assert sheet.size == (4 * SIZE + 3 * 4, 2 * SIZE + 4)
    not_visible = np.asarray(note_tile(SIZE, ["face not visible", f"0 of {len(FACE_INNER_NAMES)} landmarks labelled"]))
    np.testing.assert_array_equal(tile(sheet, 1, 2), not_visible)
    seen = tile(sheet, 0, 2)
    assert (seen != 255).all(axis=2).mean() > 0.9  # the magnified face and crop: no blank, no white note
