"""A synthetic SMPL-X file in the real layout whose hands and face have a shape (tests/model_files.py's
`smplx_arrays` puts every finger joint at its wrist and the 51 landmarks on random triangles of the whole body).

Here each hand's 15 joints are laid out along five fingers (MANO order: index, middle, pinky, ring, thumb), the
fingertip vertices smplx names (`VERTEX_IDS['smplx']`) are skinned to their finger's last joint beyond it, jaw and
eyes sit on the head, SPIN's vertex-picked nose, eyes, ears, toes and heels on the head and feet, the 51 landmarks are small triangles on a face plane in front of the head (the mouth's on the
jaw), and the expression directions move only the landmark vertices. Still a blob, not a human: for fitting tests
and measurements of hands and face, not for how a real SMPL-X looks.
"""
from __future__ import annotations

import model_files
import numpy as np
import smplx.vertex_ids

from core.wholebody import FACE_LANDMARK_NAMES, FINGERTIP_VERTEX_KEYS, MANO_FINGERS, SMPLX_JOINT_INDEX, SMPLX_PARENTS

SHAPE_SPACE = 300  # real SMPL-X: 300 shape directions, then 100 expression directions
# Finger bases relative to the left wrist (m; left is +X) and their directions; the right hand mirrors x.
FINGER_BASES = {"index": (0.09, 0.0, 0.03), "middle": (0.095, 0.0, 0.01), "ring": (0.09, 0.0, -0.01),
                "pinky": (0.08, 0.0, -0.03), "thumb": (0.03, -0.01, 0.04)}
FINGER_DIRECTIONS = {"thumb": (0.7, 0.0, 0.7)}
SEGMENTS = (0.035, 0.025, 0.02, 0.018)  # base -> joint 2 -> joint 3 -> tip
# smplx's body vertex picks (`fitting.body_model.VERTEX_PICKS`): the joint each is skinned to and its offset (m)
BODY_VERTEX_PICKS = {
    "nose": ("head", (0.0, 0.0, 0.11)), "reye": ("head", (-0.03, 0.03, 0.09)), "leye": ("head", (0.03, 0.03, 0.09)),
    "rear": ("head", (-0.075, 0.0, 0.0)), "lear": ("head", (0.075, 0.0, 0.0)),
    "LBigToe": ("left_foot", (0.02, -0.02, 0.08)), "LSmallToe": ("left_foot", (0.06, -0.02, 0.06)),
    "LHeel": ("left_ankle", (0.0, -0.06, -0.05)), "RBigToe": ("right_foot", (-0.02, -0.02, 0.08)),
    "RSmallToe": ("right_foot", (-0.06, -0.02, 0.06)), "RHeel": ("right_ankle", (0.0, -0.06, -0.05)),
}
MOUTH_FROM = FACE_LANDMARK_NAMES.index("right_mouth_1")  # landmarks from here on are on the jaw


def _face_template() -> np.ndarray:
    """(51, 2) x, y (m, on the face plane, head-relative) of SMPL-X's landmarks: brows, nose, eyes, mouth, lips."""
    brows = [(-0.05 + 0.011 * k, 0.05) for k in range(10)]
    nose = [(0.0, 0.03 - 0.012 * k) for k in range(4)] + [(-0.016 + 0.008 * k, -0.02) for k in range(5)]
    eyes = [(-0.045 + 0.006 * k, 0.025 + 0.004 * (k % 2)) for k in range(6)]
    eyes += [(0.015 + 0.006 * k, 0.025 + 0.004 * (k % 2)) for k in range(6)]
    mouth = [(-0.03 + 0.005 * k, -0.05 - 0.002 * (k % 3)) for k in range(12)]
    lips = [(-0.02 + 0.005 * k, -0.055) for k in range(8)]
    points = np.array(brows + nose + eyes + mouth + lips, dtype=np.float64)
    assert len(points) == len(FACE_LANDMARK_NAMES)
    return points


def wholebody_smplx_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    arrays = model_files.smplx_arrays(seed)
    rng = np.random.default_rng(seed + 1)
    num_vertices = arrays["v_template"].shape[0]
    owner = arrays["weights"].argmax(1)
    joints = arrays["J_regressor"] @ arrays["v_template"]                     # (55, 3) rest joints
    ids = smplx.vertex_ids.vertex_ids["smplx"]
    special = np.zeros(num_vertices, dtype=bool)                                # tips and landmark vertices

    # hands: finger joints along the fingers; tips beyond the last joint, skinned to it
    position = joints.copy()
    tips: dict[int, np.ndarray] = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        wrist = joints[SMPLX_JOINT_INDEX[f"{side}_wrist"]]
        for finger in MANO_FINGERS:
            base = np.array(FINGER_BASES[finger]) * [sign, 1, 1]
            direction = np.array(FINGER_DIRECTIONS.get(finger, (1.0, 0.0, 0.0))) * [sign, 1, 1]
            direction /= np.linalg.norm(direction)
            at = wrist + base
            for k in (1, 2, 3):
                position[SMPLX_JOINT_INDEX[f"{side}_{finger}{k}"]] = at
                at = at + SEGMENTS[k - 1] * direction
            tip_vertex = ids[FINGERTIP_VERTEX_KEYS[f"{side}_{finger}"]]
            tips[tip_vertex] = at + 0 * direction
            owner[tip_vertex] = SMPLX_JOINT_INDEX[f"{side}_{finger}3"]
            special[tip_vertex] = True
    head = joints[SMPLX_JOINT_INDEX["head"]]
    position[SMPLX_JOINT_INDEX["jaw"]] = head + [0.0, -0.04, 0.03]
    position[SMPLX_JOINT_INDEX["left_eye_smplhf"]] = head + [0.03, 0.03, 0.08]
    position[SMPLX_JOINT_INDEX["right_eye_smplhf"]] = head + [-0.03, 0.03, 0.08]

    # face: 51 small triangles on a plane 10 cm in front of the head
    free = np.flatnonzero(~special)[: 3 * len(FACE_LANDMARK_NAMES)]
    special[free] = True
    template = _face_template()
    faces = arrays["f"].copy()
    v_template = arrays["v_template"].copy()
    for k, (x, y) in enumerate(template):
        tri = free[3 * k: 3 * k + 3]
        centre = head + [x, y, 0.1]
        v_template[tri] = centre + rng.normal(scale=0.002, size=(3, 3))
        owner[tri] = SMPLX_JOINT_INDEX["jaw" if k >= MOUTH_FROM else "head"]
        faces[k] = tri
    for vertex, at in tips.items():
        v_template[vertex] = at
    # SPIN's vertex-picked body joints (nose, eyes, ears, toes, heels: smplx's ids) on the head and feet
    for key, (joint, offset) in BODY_VERTEX_PICKS.items():
        vertex = ids[key]
        owner[vertex] = SMPLX_JOINT_INDEX[joint]
        v_template[vertex] = joints[SMPLX_JOINT_INDEX[joint]] + offset
        special[vertex] = True

    # every other vertex near its joint's new place; the joint regressor = the mean of its ordinary vertices
    regressor = np.zeros_like(arrays["J_regressor"])
    for j in range(len(SMPLX_PARENTS)):
        members = np.flatnonzero((owner == j) & ~special)
        spread = 0.005 if j >= SMPLX_JOINT_INDEX["jaw"] else 0.02
        offsets = rng.normal(scale=spread, size=(len(members), 3))
        v_template[members] = position[j] + offsets - offsets.mean(0)
        regressor[j, members] = 1.0 / len(members)
    weights = np.zeros_like(arrays["weights"])
    weights[np.arange(num_vertices), owner] = 1.0
    shapedirs = arrays["shapedirs"].copy()
    shapedirs[:, :, SHAPE_SPACE:] = 0.0
    landmark_vertices = free
    shapedirs[landmark_vertices, :, SHAPE_SPACE:] = rng.normal(scale=0.004, size=(len(free), 3, 100))
    arrays.update(v_template=v_template, J_regressor=regressor, weights=weights, f=faces, shapedirs=shapedirs,
                  lmk_faces_idx=np.arange(len(FACE_LANDMARK_NAMES)), lmk_bary_coords=np.full((51, 3), 1 / 3))
    return arrays
