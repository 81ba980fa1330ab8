"""Writers of Human3.6M's native files: pose CDFs, camera parameters and ground-truth box masks.

Layout (under the dataset root; pipelines/adapters/h36m.py reads it):

    cameras.h5                       3d-pose-baseline's form: subject<n>/camera<k>/{R (stored transposed), T, f, c,
                                     k, p, Name}
    metadata.xml                     the release's form: <w0> with 300 numbers (angles in radians, T in mm)
    S<n>/MyPoseFeatures/D3_Positions/<Action>.cdf               Pose (1, F, 96), mm, world frame (Z up)
    S<n>/MyPoseFeatures/D3_Positions_mono/<Action>.<cam>.cdf    Pose (1, F, 96), mm, camera frame
    S<n>/MyPoseFeatures/D2_Positions/<Action>.<cam>.cdf         Pose (1, F, 64), px, 0-based
    S<n>/MySegmentsMat/ground_truth_bb/<Action>.<cam>.mat       MATLAB 7.3 (HDF5): Masks, F × 1 cell of masks
    S<n>/MySegmentsMat/ground_truth_bs/<Action>.<cam>.mat       the same layout: foreground masks

The 32 raw joints: the 17 that SPIN reads are the body model's Human3.6M joints (`BodyModel.h36m_joints`); the
copies Human3.6M keeps (`RAW_DUPLICATES`) repeat them; the toes and hand ends it has and SPIN ignores are the
model's big toes and SMPL hand joints, so a reader of those finds plausible points, not zeros.
Box masks: 1 inside the box of the projected mesh (the silhouette's box, every frame), 0 elsewhere.
Foreground masks: the exact silhouette of the frames that have an image (every ``h36m_frame_step``-th), where the
release has a background subtraction's; frames without an image are empty (nothing was drawn).
"""
from __future__ import annotations

from pathlib import Path

import cdflib.cdfwrite
import h5py
import numpy as np
from scipy.spatial.transform import Rotation

from core.joints import JOINT_INDEX, SMPL_JOINT_INDEX
from pipelines.adapters.h36m import CAMERA_NAMES, NUM_RAW_JOINTS, RAW_DUPLICATES, RAW_INDEX, Camera

# Raw joints outside SPIN's 17 and not copies: (where the point comes from, its name there).
RAW_EXTRAS: dict[int, tuple[str, str]] = {
    4: ("canonical", "OP RBigToe"), 5: ("canonical", "OP RBigToe"), 9: ("canonical", "OP LBigToe"),
    10: ("canonical", "OP LBigToe"), 21: ("kinematic", "left_hand"), 22: ("kinematic", "left_hand"),
    29: ("kinematic", "right_hand"), 30: ("kinematic", "right_hand"),
}
MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: fitloop synth HDF5 schema 1.00 ."


def raw_joints(h36m: np.ndarray, joints: np.ndarray, kinematic: np.ndarray) -> np.ndarray:
    """Human3.6M's 32 raw joints (..., 32, 3) from the model's 17 Human3.6M joints (..., 17, 3), canonical joints
    (..., 49, 3) and SMPL kinematic joints (..., 24, 3), all in one frame and unit."""
    out = np.zeros(h36m.shape[:-2] + (NUM_RAW_JOINTS, 3))
    out[..., RAW_INDEX, :] = h36m
    for raw, (kind, name) in RAW_EXTRAS.items():
        out[..., raw, :] = joints[..., JOINT_INDEX[name], :] if kind == "canonical" else \
            kinematic[..., SMPL_JOINT_INDEX[name], :]
    for copy, original in RAW_DUPLICATES.items():
        out[..., copy, :] = out[..., original, :]
    return out


def write_pose_cdf(path: Path, values: np.ndarray) -> None:
    """``Pose`` as Human3.6M stores it: one record (1, F, 32·dims), float32, from values (F, 32, dims)."""
    frames = values.shape[0]
    data = np.asarray(values, dtype=np.float32).reshape(1, frames, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()  # cdflib refuses to overwrite
    cdf = cdflib.cdfwrite.CDF(str(path), cdf_spec={"Majority": "row_major"})
    try:
        cdf.write_var({"Variable": "Pose", "Data_Type": cdflib.cdfwrite.CDF.CDF_FLOAT, "Num_Elements": 1,
                       "Rec_Vary": True, "Dim_Sizes": [frames, data.shape[2]]}, var_attrs={}, var_data=data)
    finally:
        cdf.close()


def write_box_masks(path: Path, boxes: np.ndarray, size: tuple[int, int]) -> None:
    """A ground_truth_bb file (`write_masks`): per frame 1 inside the inclusive pixel box (x0, y0, x1, y1) of
    ``boxes`` (F, 4), 0 elsewhere, in an image of ``size`` (width, height)."""
    width, height = size
    masks = []
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.int64):
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[max(y0, 0):max(y1 + 1, 0), max(x0, 0):max(x1 + 1, 0)] = 1
        masks.append(mask)
    write_masks(path, masks)


def write_masks(path: Path, masks: list[np.ndarray]) -> None:
    """A MySegmentsMat file: per frame an (H, W) uint8 mask, stored transposed (MATLAB order) in ``#refs#`` and
    referenced by ``Masks`` (F, 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as h5:
        refs = h5.create_group("#refs#")
        handles = []
        for i, mask in enumerate(masks):
            data = refs.create_dataset(f"m{i}", data=mask.T, compression="gzip", compression_opts=4)
            data.attrs["MATLAB_class"] = np.bytes_("uint8")
            handles.append(data.ref)
        cell = h5.create_dataset("Masks", data=np.array(handles, dtype=h5py.ref_dtype).reshape(-1, 1))
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
    stamp_matlab73(path)


def stamp_matlab73(path: Path) -> None:
    """Write MATLAB's 7.3 header into the 512-byte user block of the HDF5 file at ``path`` (made with
    ``userblock_size=512``), so that MATLAB and scipy see a .mat."""
    with open(path, "r+b") as fh:
        fh.write(MATLAB_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


def write_cameras_h5(path: Path, rig: dict[tuple[str, str], Camera]) -> None:
    """3d-pose-baseline's cameras.h5: subject<n>/camera<k>/{R, T, f, c, k, p, Name}, R stored transposed."""
    with h5py.File(path, "w") as h5:
        for (subject, serial), cam in sorted(rig.items(), key=lambda item: (int(item[0][0][1:]), item[0][1])):
            group = h5.create_group(f"subject{int(subject[1:])}/camera{CAMERA_NAMES.index(serial) + 1}")
            group["R"] = cam.R.T
            group["T"] = cam.T.reshape(3, 1)
            for name in ("f", "c", "k", "p"):
                group[name] = getattr(cam, name).reshape(-1, 1)
            group["Name"] = np.array([ord(ch) for ch in serial], dtype=np.uint16).reshape(-1, 1)


def write_metadata_xml(path: Path, rig: dict[tuple[str, str], Camera]) -> None:
    """The release's metadata.xml camera block: ``<w0>[300 numbers]</w0>`` (subjects S1–S11, cameras 1–4)."""
    w0 = np.zeros(300)
    for k, serial in enumerate(CAMERA_NAMES):
        for n in range(11):
            cam = rig[(f"S{n + 1}", serial)]
            angles = Rotation.from_matrix(cam.R).as_euler("XYZ")  # intrinsic x, y, z: R = Rx·Ry·Rz
            w0[6 * (k * 11 + n): 6 * (k * 11 + n) + 6] = np.concatenate([angles, cam.T])
        cam = rig[("S1", serial)]
        w0[264 + 9 * k: 264 + 9 * (k + 1)] = np.concatenate([cam.f, cam.c, cam.k, cam.p])
    numbers = " ".join(repr(float(v)) for v in w0)
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<metadata>\n  <w0>[{numbers}]</w0>\n</metadata>\n',
                    encoding="utf-8")


def mesh_boxes(vertex_boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Inclusive pixel boxes (F, 4) of the pixels whose centres lie in continuous boxes (F, 4) (u0, v0, u1, v1),
    clipped to the image; a box that covers no pixel centre gives an empty (x1 < x0) box."""
    width, height = size
    low = np.ceil(vertex_boxes[:, :2]).astype(np.int64)
    high = np.floor(vertex_boxes[:, 2:]).astype(np.int64)
    low = np.maximum(low, 0)
    high = np.minimum(high, np.array([width - 1, height - 1]))
    return np.concatenate([low, high], axis=1)

