"""The whole-body keypoint layout (body, hands, face), named once; every map and flip is derived from the names.

fitloop's whole-body canonical layout extends SPIN's 49 body joints (`core.joints.JOINT_NAMES`, indices 0–48)
with 21 points per hand and 70 face points, 161 in all:

* 49–69: the left hand, 70–90: the right hand, each in the 21-point order that OpenPose, COCO-WholeBody and
  MANO-based fitters share: the hand's root (the wrist), then thumb, index, middle, ring, pinky, four points
  each from the base to the tip. Names are smplx's (``left_thumb1``–``left_thumb3`` are SMPL-X's kinematic finger
  joints, ``left_thumb`` the tip vertex); the thumb's first point is its carpometacarpal joint;
* 91–158: the 68 face points of the iBUG / Multi-PIE layout (jaw contour 0–16, brows 17–26, nose 27–35, eyes
  36–47, mouth 48–67) under smplx's landmark names; 17–67 are SMPL-X's 51 face landmarks in its own order;
* 159–160: the pupils OpenPose's face detector adds (its points 68 and 69).

A keypoint file's own order is written as the list of whole-body names its points map to
(:data:`WHOLEBODY_LAYOUTS`); :func:`layout_to_wholebody` turns that into an index map. Left/right mirroring
follows `core.joints.mirror_name` (``left_``/``right_`` prefixes, ``Left``/``Right`` words), so the flip
permutation is derived too. Face sides are the subject's: ``right_eye1`` (iBUG 36) is the outer corner of the
subject's right eye, on the image's left in a frontal view.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from core.joints import COCO_JOINTS, JOINT_NAMES, OPENPOSE_NAMES, flip_permutation, name_indices, scatter_points

# --- SMPL-X's kinematic tree (smplx.joint_names.JOINT_NAMES[:55], parents from the model's kintree_table) ------
SMPLX_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "jaw", "left_eye_smplhf",
    "right_eye_smplhf",
    "left_index1", "left_index2", "left_index3", "left_middle1", "left_middle2", "left_middle3",
    "left_pinky1", "left_pinky2", "left_pinky3", "left_ring1", "left_ring2", "left_ring3",
    "left_thumb1", "left_thumb2", "left_thumb3",
    "right_index1", "right_index2", "right_index3", "right_middle1", "right_middle2", "right_middle3",
    "right_pinky1", "right_pinky2", "right_pinky3", "right_ring1", "right_ring2", "right_ring3",
    "right_thumb1", "right_thumb2", "right_thumb3",
)
SMPLX_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)
SMPLX_JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}
NUM_SMPLX_JOINTS = len(SMPLX_JOINT_NAMES)  # 55
NUM_BODY_JOINTS = 21  # SMPL-X body_pose: joints 1–21 (no hands, jaw, eyes)
FINGERS: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")  # OpenPose / COCO-WholeBody order
# SMPL-X orders each hand's 15 joints index, middle, pinky, ring, thumb (MANO's order): its hand_pose (B, 45)
# follows that order, not FINGERS'.
MANO_FINGERS: tuple[str, ...] = ("index", "middle", "pinky", "ring", "thumb")


def _hand(side: str) -> tuple[str, ...]:
    points = [f"{side}_hand_root"]
    for finger in FINGERS:
        points += [f"{side}_{finger}1", f"{side}_{finger}2", f"{side}_{finger}3", f"{side}_{finger}"]
    return tuple(points)


LEFT_HAND_NAMES: tuple[str, ...] = _hand("left")    # 21: root, thumb1-3, thumb tip, index1-3, index tip, ...
RIGHT_HAND_NAMES: tuple[str, ...] = _hand("right")
# The 68 iBUG face points under smplx's names (smplx.joint_names: its 51 landmarks, then the 17 contour points
# it adds with use_face_contour), put back in iBUG order: contour first.
FACE_CONTOUR_NAMES: tuple[str, ...] = (
    tuple(f"right_contour_{k}" for k in range(1, 9)) + ("contour_middle",)
    + tuple(f"left_contour_{k}" for k in range(8, 0, -1)))
FACE_LANDMARK_NAMES: tuple[str, ...] = (  # SMPL-X's 51 landmarks = iBUG 17–67 (lmk_faces_idx order)
    "right_eye_brow1", "right_eye_brow2", "right_eye_brow3", "right_eye_brow4", "right_eye_brow5",
    "left_eye_brow5", "left_eye_brow4", "left_eye_brow3", "left_eye_brow2", "left_eye_brow1",
    "nose1", "nose2", "nose3", "nose4", "right_nose_2", "right_nose_1", "nose_middle", "left_nose_1", "left_nose_2",
    "right_eye1", "right_eye2", "right_eye3", "right_eye4", "right_eye5", "right_eye6",
    "left_eye4", "left_eye3", "left_eye2", "left_eye1", "left_eye6", "left_eye5",
    "right_mouth_1", "right_mouth_2", "right_mouth_3", "mouth_top", "left_mouth_3", "left_mouth_2", "left_mouth_1",
    "left_mouth_5", "left_mouth_4", "mouth_bottom", "right_mouth_4", "right_mouth_5",
    "right_lip_1", "right_lip_2", "lip_top", "left_lip_2", "left_lip_1", "left_lip_3", "lip_bottom", "right_lip_3",
)
FACE_NAMES: tuple[str, ...] = FACE_CONTOUR_NAMES + FACE_LANDMARK_NAMES  # 68, iBUG order
PUPIL_NAMES: tuple[str, ...] = ("right_pupil", "left_pupil")  # OpenPose face points 68, 69

WHOLEBODY_NAMES: tuple[str, ...] = JOINT_NAMES + LEFT_HAND_NAMES + RIGHT_HAND_NAMES + FACE_NAMES + PUPIL_NAMES
NUM_WHOLEBODY = len(WHOLEBODY_NAMES)  # 161
WHOLEBODY_INDEX: dict[str, int] = {name: i for i, name in enumerate(WHOLEBODY_NAMES)}

# Whole-body points that are the same point on a body model as an earlier one: a hand's root is its wrist.
WHOLEBODY_ALIASES: dict[str, str] = {"left_hand_root": "OP LWrist", "right_hand_root": "OP RWrist"}

# Parts, for per-part weights and errors. "body" is the 49 SPIN joints (feet included).
WHOLEBODY_PARTS: dict[str, tuple[str, ...]] = {
    "body": JOINT_NAMES, "left_hand": LEFT_HAND_NAMES, "right_hand": RIGHT_HAND_NAMES,
    "face": FACE_NAMES + PUPIL_NAMES,
}

# --- Keypoint file layouts, each written as the whole-body names its points map to ----------------------------
COCO_WHOLEBODY_FEET: tuple[str, ...] = (  # COCO-WholeBody foot_kpts order
    "OP LBigToe", "OP LSmallToe", "OP LHeel", "OP RBigToe", "OP RSmallToe", "OP RHeel")
# COCO-WholeBody (Jin et al. ECCV 2020) annotation: keypoints (17 body), foot_kpts (6), face_kpts (68),
# lefthand_kpts (21), righthand_kpts (21); the 133-point order its evaluation and mmpose use.
COCO_WHOLEBODY_JOINTS: tuple[str, ...] = (
    COCO_JOINTS + COCO_WHOLEBODY_FEET + FACE_NAMES + LEFT_HAND_NAMES + RIGHT_HAND_NAMES)
COCO_WHOLEBODY_FIELDS: dict[str, tuple[str, ...]] = {  # the annotation's per-part arrays, in the 133 order
    "keypoints": COCO_JOINTS, "foot_kpts": COCO_WHOLEBODY_FEET, "face_kpts": FACE_NAMES,
    "lefthand_kpts": LEFT_HAND_NAMES, "righthand_kpts": RIGHT_HAND_NAMES,
}
# OpenPose's per-person JSON arrays (`--hand --face` output), each flat x, y, c triples.
OPENPOSE_JSON_FIELDS: dict[str, tuple[str, ...]] = {
    "pose_keypoints_2d": OPENPOSE_NAMES, "face_keypoints_2d": FACE_NAMES + PUPIL_NAMES,
    "hand_left_keypoints_2d": LEFT_HAND_NAMES, "hand_right_keypoints_2d": RIGHT_HAND_NAMES,
}
# The 137 OpenPose points as SMPLify-X reads them: body, left hand, right hand, face (70, OpenPose's order).
OPENPOSE_WHOLEBODY_JOINTS: tuple[str, ...] = (
    OPENPOSE_NAMES + LEFT_HAND_NAMES + RIGHT_HAND_NAMES + FACE_NAMES + PUPIL_NAMES)
WHOLEBODY_LAYOUTS: dict[str, tuple[str, ...]] = {
    "coco_wholebody": COCO_WHOLEBODY_JOINTS, "openpose_wholebody": OPENPOSE_WHOLEBODY_JOINTS,
}

# --- Where a SMPL-X-layout model's whole-body points come from ------------------------------------------------
# Hand points that are SMPL-X kinematic joints (a hand's root is its wrist).
WHOLEBODY_FROM_KINEMATIC: dict[str, str] = {
    name: (name.replace("_hand_root", "_wrist") if name.endswith("_hand_root") else name)
    for name in LEFT_HAND_NAMES + RIGHT_HAND_NAMES if not name.endswith(FINGERS)
}
# Fingertips are vertices: smplx's vertex_ids keys (``lthumb`` … ``rpinky``) per whole-body tip name.
FINGERTIP_VERTEX_KEYS: dict[str, str] = {
    f"{side}_{finger}": f"{side[0]}{finger}" for side in ("left", "right") for finger in FINGERS}


def wholebody_indices(names: Sequence[str]) -> np.ndarray:
    """Whole-body (161-layout) indices of ``names``, as int64. Raises KeyError naming an unknown point."""
    return name_indices(names, WHOLEBODY_INDEX, "core.wholebody.WHOLEBODY_NAMES")


def layout_to_wholebody(layout: str) -> np.ndarray:
    """For point j of a keypoint layout (its own order), its whole-body index: ``wb[:, idx] = data``."""
    if layout not in WHOLEBODY_LAYOUTS:
        raise KeyError(f"no whole-body layout {layout!r}; known: {sorted(WHOLEBODY_LAYOUTS)}")
    return wholebody_indices(WHOLEBODY_LAYOUTS[layout])


def to_wholebody(keypoints: np.ndarray, layout: str) -> np.ndarray:
    """Scatter a layout's (..., K, C) keypoints into the (..., 161, C) whole-body layout; missing points are 0.

    As `core.joints.to_canonical`: the last channel is the confidence, and an absent point has coordinates and
    confidence 0.
    """
    return scatter_points(keypoints, layout_to_wholebody(layout), NUM_WHOLEBODY, layout)


WHOLEBODY_FLIP_PERM: np.ndarray = flip_permutation(WHOLEBODY_NAMES)
SMPLX_JOINTS_FLIP_PERM: np.ndarray = flip_permutation(SMPLX_JOINT_NAMES)
