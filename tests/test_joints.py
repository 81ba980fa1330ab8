import numpy as np
import pytest

from core import joints as J

# SPIN's constants.py, typed out by hand there; here they are derived from names, and checked against SPIN's.
SPIN_J24_FLIP = [5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18, 19, 21, 20, 23, 22]
SPIN_OP_FLIP = [0, 1, 5, 6, 7, 2, 3, 4, 8, 12, 13, 14, 9, 10, 11, 16, 15, 18, 17, 22, 23, 24, 19, 20, 21]
SPIN_SMPL_FLIP = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22]
SPIN_COCO_TO_J24 = [19, 20, 21, 22, 23, 9, 8, 10, 7, 11, 6, 3, 2, 4, 1, 5, 0]
SPIN_MPII_TO_J24 = [0, 1, 2, 3, 4, 5, 14, 15, 12, 13, 6, 7, 8, 9, 10, 11]


def test_layout_sizes_and_unique_names():
    assert J.NUM_JOINTS == 49 and len(set(J.JOINT_NAMES)) == 49
    assert J.JOINT_NAMES[J.J24_OFFSET] == "Right Ankle"


def test_flip_permutations_match_spin():
    assert J.J24_FLIP_PERM.tolist() == SPIN_J24_FLIP
    assert J.J49_FLIP_PERM.tolist() == SPIN_OP_FLIP + [25 + i for i in SPIN_J24_FLIP]
    assert J.SMPL_JOINTS_FLIP_PERM.tolist() == SPIN_SMPL_FLIP


def test_flip_is_an_involution():
    for perm in (J.J49_FLIP_PERM, J.J24_FLIP_PERM, J.SMPL_JOINTS_FLIP_PERM):
        assert (perm[perm] == np.arange(len(perm))).all()
    pose = np.random.default_rng(0).normal(size=(4, 72)).astype(np.float32)
    np.testing.assert_array_equal(J.flip_pose(J.flip_pose(pose)), pose)
    flipped = J.flip_pose(pose)
    # left hip (joint 1) of the flipped pose is the right hip (joint 2) with y and z negated
    np.testing.assert_array_equal(flipped[:, 3:6], pose[:, 6:9] * np.array([1, -1, -1], np.float32))


def test_dataset_maps_match_spin():
    assert (J.dataset_to_canonical("coco") - 25).tolist() == SPIN_COCO_TO_J24
    assert (J.dataset_to_canonical("mpii") - 25).tolist() == SPIN_MPII_TO_J24
    assert (J.dataset_to_canonical("lsp") - 25).tolist() == list(range(14))


def test_to_canonical_scatters_and_checks_shape():
    coco = np.arange(17 * 3, dtype=np.float32).reshape(17, 3) + 1
    canon = J.to_canonical(coco, "coco")
    assert canon.shape == (49, 3)
    np.testing.assert_array_equal(canon[J.JOINT_INDEX["Left Shoulder"]], coco[5])
    assert (canon[J.JOINT_INDEX["OP Nose"]] == 0).all()  # not annotated by COCO: zero confidence
    with pytest.raises(ValueError, match="16 points, the coco layout has 17"):
        J.to_canonical(np.zeros((16, 3)), "coco")
    with pytest.raises(KeyError, match="unknown joint"):
        J.indices(["Left Antenna"])


def test_every_central_joint_mirrors_to_itself():
    for name in J.JOINT_NAMES:
        mirrored = J.mirror_name(name)
        assert mirrored in J.JOINT_INDEX
        if "Left" not in name and "Right" not in name and not name.startswith(("OP L", "OP R")):
            assert mirrored == name
