"""The canonical joint layouts, named once; every index map and flip permutation is derived from the names.

fitloop uses SPIN's 49-joint layout for every 2D and 3D keypoint array it stores or fits:

* indices 0–24: the 25 OpenPose BODY_25 joints, in OpenPose order, prefixed ``OP``;
* indices 25–48: the 24 "ground-truth" joints (``J24``), a superset of what the datasets annotate: the 14 LSP
  joints, MPII pelvis and thorax, H36M spine, jaw and head, nose, eyes and ears.

The OpenPose hips are the body model's kinematic hips; the J24 hips are "surface" hips, lower and more lateral,
where annotators click. A dataset's own joint order is written here as the list of canonical names its joints
map to; :func:`dataset_to_canonical` turns that into an index map. Nobody types a joint index by hand elsewhere.

Left/right: a name containing ``Left``/``Right`` (or ``OP L``/``OP R``, ``left_``/``right_``) mirrors to the
other side; :func:`flip_permutation` derives the permutation a horizontal flip applies.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

# --- The 49-joint canonical layout (SPIN constants.JOINT_NAMES) -------------------------------------------
OPENPOSE_NAMES: tuple[str, ...] = (
    "OP Nose", "OP Neck", "OP RShoulder", "OP RElbow", "OP RWrist", "OP LShoulder", "OP LElbow", "OP LWrist",
    "OP MidHip", "OP RHip", "OP RKnee", "OP RAnkle", "OP LHip", "OP LKnee", "OP LAnkle", "OP REye", "OP LEye",
    "OP REar", "OP LEar", "OP LBigToe", "OP LSmallToe", "OP LHeel", "OP RBigToe", "OP RSmallToe", "OP RHeel",
)
J24_NAMES: tuple[str, ...] = (
    "Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle",
    "Right Wrist", "Right Elbow", "Right Shoulder", "Left Shoulder", "Left Elbow", "Left Wrist",
    "Neck (LSP)", "Top of Head (LSP)", "Pelvis (MPII)", "Thorax (MPII)", "Spine (H36M)", "Jaw (H36M)",
    "Head (H36M)", "Nose", "Left Eye", "Right Eye", "Left Ear", "Right Ear",
)
JOINT_NAMES: tuple[str, ...] = OPENPOSE_NAMES + J24_NAMES
NUM_JOINTS = len(JOINT_NAMES)  # 49
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINT_NAMES)}
J24_OFFSET = len(OPENPOSE_NAMES)  # 25: J24 joint k sits at canonical index 25 + k
# The fewest joints a person's keypoints must show for a fit to say anything about the body: SMPLify's camera stage
# needs the 4 torso joints (hips and shoulders), and a pose a few joints more. The conversion's default floor
# (`pipelines.adapters.base.CheckConfig.min_joints`) and the seeding's (`fits.seeding.unfittable`).
MIN_FIT_JOINTS = 6


def joints_shown(present):
    """How many joints keypoints show, from their presence (..., 49) bool (numpy or torch, no host sync): the more
    complete of the two layouts, the OpenPose slots or the dataset's J24, so a joint under both names counts once."""
    openpose, j24 = present[..., :J24_OFFSET].sum(-1), present[..., J24_OFFSET:].sum(-1)
    return openpose * (openpose >= j24) + j24 * (openpose < j24)

# --- The 24 kinematic joints of SMPL (and of the open model, which shares SMPL's tree) ----------------------
SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand",
    "right_hand",
)
SMPL_PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
SMPL_JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}

# Which canonical joints are the body model's kinematic joints (SPIN's JOINT_MAP, by name). The others come
# from vertices: a vertex pick or a regressor row, per body model (fitting/body_model.py).
CANONICAL_FROM_KINEMATIC: dict[str, str] = {
    "OP Neck": "neck", "OP RShoulder": "right_shoulder", "OP RElbow": "right_elbow",
    "OP RWrist": "right_wrist", "OP LShoulder": "left_shoulder", "OP LElbow": "left_elbow",
    "OP LWrist": "left_wrist", "OP MidHip": "pelvis", "OP RHip": "right_hip", "OP RKnee": "right_knee",
    "OP RAnkle": "right_ankle", "OP LHip": "left_hip", "OP LKnee": "left_knee", "OP LAnkle": "left_ankle",
    "Right Ankle": "right_ankle", "Right Knee": "right_knee", "Left Knee": "left_knee",
    "Left Ankle": "left_ankle", "Right Wrist": "right_wrist", "Right Elbow": "right_elbow",
    "Right Shoulder": "right_shoulder", "Left Shoulder": "left_shoulder", "Left Elbow": "left_elbow",
    "Left Wrist": "left_wrist",
}
# Canonical joints that are the same point on the body under two names (an OpenPose and a J24 name). A body
# model computes each point once; the later name copies the earlier.
CANONICAL_ALIASES: dict[str, str] = {
    "Nose": "OP Nose", "Left Eye": "OP LEye", "Right Eye": "OP REye", "Left Ear": "OP LEar",
    "Right Ear": "OP REar",
}

# --- Dataset joint orders, each written as the canonical names its joints map to -----------------------------
LSP_JOINTS: tuple[str, ...] = J24_NAMES[:14]
MPII_JOINTS: tuple[str, ...] = (  # r-ankle … l-wrist, MPII ids 0–15; upper neck is LSP's neck (SPIN)
    "Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle", "Pelvis (MPII)",
    "Thorax (MPII)", "Neck (LSP)", "Top of Head (LSP)", "Right Wrist", "Right Elbow", "Right Shoulder",
    "Left Shoulder", "Left Elbow", "Left Wrist",
)
COCO_JOINTS: tuple[str, ...] = (
    "Nose", "Left Eye", "Right Eye", "Left Ear", "Right Ear", "Left Shoulder", "Right Shoulder", "Left Elbow",
    "Right Elbow", "Left Wrist", "Right Wrist", "Left Hip", "Right Hip", "Left Knee", "Right Knee",
    "Left Ankle", "Right Ankle",
)
# The 17-joint Human3.6M order (pelvis, R leg, L leg, spine, thorax, neck/nose, head, L arm, R arm), mapped as
# SPIN maps them: H36M's thorax fills the LSP neck slot and its neck/nose the "Jaw (H36M)" slot.
H36M_JOINTS: tuple[str, ...] = (
    "Pelvis (MPII)", "Right Hip", "Right Knee", "Right Ankle", "Left Hip", "Left Knee", "Left Ankle",
    "Spine (H36M)", "Neck (LSP)", "Jaw (H36M)", "Head (H36M)", "Left Shoulder", "Left Elbow", "Left Wrist",
    "Right Shoulder", "Right Elbow", "Right Wrist",
)
OPENPOSE_JOINTS: tuple[str, ...] = OPENPOSE_NAMES
# The 17 MPI-INF-3DHP joints SPIN keeps (pelvis, L leg, R leg, spine, neck, head, head top, L arm, R arm; SPIN
# datasets/preprocess/mpi_inf_3dhp.py joints_idx / joints_17_idx), mapped as SPIN maps them (constants
# ``H36M_TO_J17`` slots [14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6]): the neck fills the LSP neck
# slot, the head the "Jaw (H36M)" slot and the head top the "Head (H36M)" slot (mmhuman3d PR#153 calls that head
# pair inconsistent; it is kept so SPIN's files and fitloop's agree). The native names and their order are
# pipelines/adapters/mpi_inf_3dhp.py's.
MPI_INF_3DHP_JOINTS: tuple[str, ...] = (
    "Pelvis (MPII)", "Left Hip", "Left Knee", "Left Ankle", "Right Hip", "Right Knee", "Right Ankle",
    "Spine (H36M)", "Neck (LSP)", "Jaw (H36M)", "Head (H36M)", "Left Shoulder", "Left Elbow", "Left Wrist",
    "Right Shoulder", "Right Elbow", "Right Wrist",
)

DATASET_JOINTS: dict[str, tuple[str, ...]] = {
    "lsp": LSP_JOINTS, "mpii": MPII_JOINTS, "coco": COCO_JOINTS, "h36m": H36M_JOINTS, "openpose": OPENPOSE_JOINTS,
    "mpi-inf-3dhp": MPI_INF_3DHP_JOINTS,
}

# Evaluation subsets (SPIN eval.py): 14 LSP-style joints with the H36M head, and 17 with pelvis/spine/jaw.
EVAL_J14: tuple[str, ...] = J24_NAMES[:12] + ("Neck (LSP)", "Head (H36M)")
EVAL_J17: tuple[str, ...] = EVAL_J14 + ("Pelvis (MPII)", "Spine (H36M)", "Jaw (H36M)")

# Body parts over the 24 dataset joints, each J24 joint in exactly one: what a fit's quality record measures its
# reprojection by (`fitting.quality`), and the fits table's columns reprojection_<part>_px are named after.
BODY_PARTS: dict[str, tuple[str, ...]] = {
    "torso": ("Right Hip", "Left Hip", "Right Shoulder", "Left Shoulder", "Neck (LSP)", "Pelvis (MPII)",
              "Thorax (MPII)", "Spine (H36M)"),
    "head": ("Top of Head (LSP)", "Jaw (H36M)", "Head (H36M)", "Nose", "Left Eye", "Right Eye", "Left Ear",
             "Right Ear"),
    "left_arm": ("Left Elbow", "Left Wrist"),
    "right_arm": ("Right Elbow", "Right Wrist"),
    "left_leg": ("Left Knee", "Left Ankle"),
    "right_leg": ("Right Knee", "Right Ankle"),
}

# Joints SPIN's SMPLify ignores in its body stage (hips of both kinds, and the OpenPose neck).
SMPLIFY_IGNORED: tuple[str, ...] = ("OP Neck", "OP RHip", "OP LHip", "Right Hip", "Left Hip")


def name_indices(names: Sequence[str], index: dict[str, int], where: str) -> np.ndarray:
    """Indices of ``names`` in a layout (``index``: name -> position), as int64; KeyError naming an unknown name
    and ``where`` the layout's names are."""
    out = []
    for name in names:
        if name not in index:
            raise KeyError(f"unknown joint name {name!r}; the names are in {where}")
        out.append(index[name])
    return np.asarray(out, dtype=np.int64)


def scatter_points(keypoints: np.ndarray, idx: np.ndarray, size: int, what: str) -> np.ndarray:
    """(..., K, C) points into a (..., size, C) layout at positions ``idx`` (K,); the others are 0 (absent)."""
    if keypoints.shape[-2] != len(idx):
        raise ValueError(f"{what} keypoints have {keypoints.shape[-2]} points, the {what} layout has {len(idx)}")
    out = np.zeros(keypoints.shape[:-2] + (size, keypoints.shape[-1]), dtype=keypoints.dtype)
    out[..., idx, :] = keypoints
    return out


def indices(names: Sequence[str]) -> np.ndarray:
    """Canonical (49-layout) indices of ``names``, as int64. Raises KeyError naming an unknown joint."""
    return name_indices(names, JOINT_INDEX, "core.joints.JOINT_NAMES")


def dataset_to_canonical(dataset: str) -> np.ndarray:
    """For dataset joint j (in the dataset's own order), its canonical index: ``canon[:, idx] = data``."""
    if dataset not in DATASET_JOINTS:
        raise KeyError(f"no joint order for dataset {dataset!r}; known: {sorted(DATASET_JOINTS)}")
    return indices(DATASET_JOINTS[dataset])


def to_canonical(keypoints: np.ndarray, dataset: str) -> np.ndarray:
    """Scatter a dataset's (..., J, C) keypoints into the (..., 49, C) canonical layout; missing joints are 0.

    The last channel is the confidence when C = 3 (x, y, conf) or 4 (x, y, z, conf); absent joints get
    coordinates and confidence 0, which every consumer reads as "not annotated".
    """
    return scatter_points(keypoints, dataset_to_canonical(dataset), NUM_JOINTS, dataset)


_MIRROR = [
    (re.compile(r"\bLeft\b"), "Right"), (re.compile(r"\bRight\b"), "Left"),
    (re.compile(r"^OP L"), "OP R"), (re.compile(r"^OP R"), "OP L"),
    (re.compile(r"^left_"), "right_"), (re.compile(r"^right_"), "left_"),
]


def mirror_name(name: str) -> str:
    """The name of the joint on the other side of the body ('Left Knee' -> 'Right Knee'); itself if central."""
    for pattern, replacement in _MIRROR:
        if pattern.search(name):
            return pattern.sub(replacement, name, count=1)
    return name


def flip_permutation(names: Sequence[str]) -> np.ndarray:
    """Permutation p with ``flipped[..., i, :] = x[..., p[i], :]`` for a horizontal flip of joints ``names``."""
    index = {name: i for i, name in enumerate(names)}
    try:
        return np.asarray([index[mirror_name(name)] for name in names], dtype=np.int64)
    except KeyError as err:
        raise ValueError(f"joint list is not closed under left/right mirroring: {err} has no mirror") from None


J49_FLIP_PERM: np.ndarray = flip_permutation(JOINT_NAMES)
J24_FLIP_PERM: np.ndarray = flip_permutation(J24_NAMES)
SMPL_JOINTS_FLIP_PERM: np.ndarray = flip_permutation(SMPL_JOINT_NAMES)
# Axis-angle pose (…, 72): permute joints, then negate the y and z components of every rotation.
SMPL_POSE_FLIP_PERM: np.ndarray = (3 * SMPL_JOINTS_FLIP_PERM[:, None] + np.arange(3)).reshape(-1)
POSE_FLIP_SIGN: np.ndarray = np.tile(np.array([1.0, -1.0, -1.0], dtype=np.float32), len(SMPL_JOINT_NAMES))


def flip_pose(pose: np.ndarray) -> np.ndarray:
    """Mirror SMPL axis-angle poses (..., 72) about the body's sagittal plane (camera x -> -x)."""
    return pose[..., SMPL_POSE_FLIP_PERM] * POSE_FLIP_SIGN.astype(pose.dtype)


def face_joints(faces: np.ndarray, skinning_weights: np.ndarray) -> np.ndarray:
    """Each face's dominant joint (F,) int64: the joint with the largest skinning weight summed over the face's three
    vertices. faces (F, 3); skinning_weights (V, J), any joint layout. The one rule for a face's part: the
    synthetic painter's colour regions and labels (`pipelines.synthetic.paint.mesh_of`) and DSR's segments
    (`fitting.dsr.face_segments`)."""
    weights = np.asarray(skinning_weights, dtype=np.float64)
    return weights[np.asarray(faces, dtype=np.int64)].sum(axis=1).argmax(axis=1)
