"""The whole-body layout against the outside's conventions: smplx's joint names, SMPLify-X's OpenPose map,
COCO-WholeBody's and OpenPose's point counts and orders, iBUG's mirror pairs."""
import numpy as np
import pytest
from smplx.joint_names import JOINT_NAMES as SMPLX_OUTPUT_NAMES

from core import joints as J
from core import wholebody as W

# smplx's output joints: 55 kinematic, 21 vertex picks (face, feet, then fingertips left thumb … right pinky),
# 51 face landmarks, 17 contour points (with use_face_contour).
SMPLX_OUTPUT_TIPS = slice(66, 76)
SMPLX_OUTPUT_LANDMARKS = slice(76, 127)
SMPLX_OUTPUT_CONTOUR = slice(127, 144)
# SMPLify-X (vchoutas/smplify-x, smplifyx/utils.py smpl_to_openpose, model_type smplx, openpose_format coco25):
# the smplx output joint behind each OpenPose left-hand point and each face point 17-67.
SMPLIFYX_LEFT_HAND = [20, 37, 38, 39, 66, 25, 26, 27, 67, 28, 29, 30, 68, 34, 35, 36, 69, 31, 32, 33, 70]
SMPLIFYX_RIGHT_HAND = [21, 52, 53, 54, 71, 40, 41, 42, 72, 43, 44, 45, 73, 49, 50, 51, 74, 46, 47, 48, 75]
# iBUG 68-point mirror pairs (0-based): contour, brows, nostrils, eyes, outer and inner mouth.
IBUG_MIRROR_PAIRS = ([(k, 16 - k) for k in range(8)] + [(17 + k, 26 - k) for k in range(5)]
                     + [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
                        (48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)])
IBUG_CENTRAL = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)


def test_smplx_names_are_smplx_packages():
    assert W.SMPLX_JOINT_NAMES == tuple(SMPLX_OUTPUT_NAMES[:55])
    assert W.FACE_LANDMARK_NAMES == tuple(SMPLX_OUTPUT_NAMES[SMPLX_OUTPUT_LANDMARKS])
    assert W.FACE_CONTOUR_NAMES == tuple(SMPLX_OUTPUT_NAMES[SMPLX_OUTPUT_CONTOUR])
    tips = tuple(SMPLX_OUTPUT_NAMES[SMPLX_OUTPUT_TIPS])
    assert tips == tuple(f"{s}_{f}" for s in ("left", "right") for f in W.FINGERS)


def test_parents_make_smplx_tree():
    parents = np.asarray(W.SMPLX_PARENTS)
    assert len(parents) == W.NUM_SMPLX_JOINTS == 55
    assert (parents[1:] < np.arange(1, 55)).all()  # topological
    assert tuple(parents[:22]) == J.SMPL_PARENTS[:22]  # SMPL-X shares SMPL's body tree
    names = W.SMPLX_JOINT_NAMES
    for i, name in enumerate(names[25:], start=25):  # finger chains: k1 under the wrist, k2 under k1, ...
        side, finger = name.split("_")[0], name.split("_")[1].rstrip("123")
        step = int(name[-1])
        expected = f"{side}_wrist" if step == 1 else f"{side}_{finger}{step - 1}"
        assert names[parents[i]] == expected
    assert {names[parents[W.SMPLX_JOINT_INDEX[n]]] for n in ("jaw", "left_eye_smplhf", "right_eye_smplhf")} == {"head"}


def test_hand_layout_matches_smplifyx_openpose_map():
    """Each OpenPose hand point is the SMPL-X output point SMPLify-X fits it with."""
    for names, expected in ((W.LEFT_HAND_NAMES, SMPLIFYX_LEFT_HAND), (W.RIGHT_HAND_NAMES, SMPLIFYX_RIGHT_HAND)):
        source = [W.WHOLEBODY_FROM_KINEMATIC.get(n, n) for n in names]
        assert [SMPLX_OUTPUT_NAMES.index(s) for s in source] == expected


def test_layout_sizes_and_orders():
    assert W.NUM_WHOLEBODY == 49 + 2 * 21 + 68 + 2
    assert len(set(W.WHOLEBODY_NAMES)) == W.NUM_WHOLEBODY
    assert len(W.COCO_WHOLEBODY_JOINTS) == 133  # COCO-WholeBody: 17 + 6 + 68 + 21 + 21
    assert sum(len(v) for v in W.COCO_WHOLEBODY_FIELDS.values()) == 133
    assert sum(len(v) for v in W.OPENPOSE_JSON_FIELDS.values()) == 25 + 70 + 21 + 21
    idx = W.layout_to_wholebody("coco_wholebody")
    assert idx[91] == W.WHOLEBODY_INDEX["left_hand_root"] and idx[112] == W.WHOLEBODY_INDEX["right_hand_root"]
    assert idx[23 + 30] == W.WHOLEBODY_INDEX["nose4"]  # iBUG 30: nose tip
    assert W.FACE_NAMES[17:] == W.FACE_LANDMARK_NAMES


def test_to_wholebody_scatters_and_checks():
    kp = np.random.default_rng(0).random((2, 133, 3)).astype(np.float32)
    wb = W.to_wholebody(kp, "coco_wholebody")
    assert wb.shape == (2, 161, 3)
    assert np.array_equal(wb[:, W.WHOLEBODY_INDEX["left_index"]], kp[:, 91 + 8])
    assert np.array_equal(wb[:, W.WHOLEBODY_INDEX["Left Hip"]], kp[:, 11])
    untouched = np.setdiff1d(np.arange(161), W.layout_to_wholebody("coco_wholebody"))
    assert (wb[:, untouched] == 0).all()
    with pytest.raises(ValueError, match="133"):
        W.to_wholebody(kp[:, :130], "coco_wholebody")


def test_flip_follows_ibug_mirror_pairs():
    face = W.wholebody_indices(W.FACE_NAMES)
    perm = W.WHOLEBODY_FLIP_PERM
    for a, b in IBUG_MIRROR_PAIRS:
        assert perm[face[a]] == face[b] and perm[face[b]] == face[a]
    for c in IBUG_CENTRAL:
        assert perm[face[c]] == face[c]
    assert np.array_equal(perm[perm], np.arange(W.NUM_WHOLEBODY))
    assert perm[W.WHOLEBODY_INDEX["left_thumb2"]] == W.WHOLEBODY_INDEX["right_thumb2"]
    assert perm[W.WHOLEBODY_INDEX["right_pupil"]] == W.WHOLEBODY_INDEX["left_pupil"]
    assert np.array_equal(perm[:49], J.J49_FLIP_PERM)
    sp = W.SMPLX_JOINTS_FLIP_PERM
    assert W.SMPLX_JOINT_NAMES[sp[W.SMPLX_JOINT_INDEX["left_eye_smplhf"]]] == "right_eye_smplhf"
    assert sp[W.SMPLX_JOINT_INDEX["jaw"]] == W.SMPLX_JOINT_INDEX["jaw"]
