"""MPI-INF-3DHP in its released layout: per-sequence MATLAB annotations, camera calibrations and AVI videos
(train), per-sequence HDF5 annotations and JPEG frames (test).

**Train** (``train``; subjects S1–S8, sequences Seq1–Seq2, the release's 14 cameras 0–13):

* ``S<n>/Seq<m>/annot.mat`` (MATLAB v5, read with scipy.io): ``annot2`` a 14 × 1 cell, camera k's (F, 28·2)
  joints in px; ``annot3`` the same cell of (F, 28·3) joints in **mm in camera k's frame** (x right, y down,
  z forward); ``univ_annot3`` the same scaled to a universal skeleton; ``frames`` (F, 1) the frame numbers;
  ``cameras`` (1, 14) the camera of each cell (0–13). The 28 joints are `TRAIN_JOINTS`.
* ``S<n>/Seq<m>/camera.calibration`` (text, "Skeletool Camera Calibration File V1.0"): per camera a block
  ``name <k>`` / ``sensor`` / ``size <w> <h>`` / ``animated`` / ``intrinsic`` (a 4 × 4 matrix, row-major,
  f and c in px) / ``extrinsic`` (4 × 4 world → camera, translation in mm) / ``radial``. Every record of a
  camera with a block carries its intrinsics (source "dataset"); a calibration that cannot be read costs the
  intrinsics, not the people (``extra["calibration_error"]`` says why).
* ``S<n>/Seq<m>/imageSequence/video_<k>.avi``: camera k's frames, decoded by OpenCV in the shard writer
  (`shards.frames`); annotation frame i is video frame i (0-based). SPIN extracts them to JPEGs first
  (``imageFrames/video_<k>/frame_%06d.jpg``) and pairs them with the annotations through an **unsorted** glob
  (SPIN_REFERENCE §4.4.1); fitloop pairs by frame index, so file-system order cannot shift a label.

The cameras read are SPIN's ``(0, 1, 2, 4, 5, 6, 7, 8)`` (`SPIN_CAMERAS`: the chest-height and the tilted
ones; 3 and 9–13 are ceiling or knee height), configurable. Every ``frame_step``-th frame (default 10, as SPIN)
is one person. SPIN counts its step among the frames whose 17 joints lie in the 2048² image (``counter % 10 ==
1``); fitloop steps over all frames, so a key names the same frame whatever the other frames hold, and a frame
with a joint outside the image is a ``keypoints_out_of_image`` reject (the builder's check, against the
video's real size) instead of moving the sampling.

**Test** (``test``; ``mpi_inf_3dhp_test_set/TS1..TS6``):

* ``TS<n>/annot_data.mat`` (MATLAB 7.3 = HDF5, read with h5py, so every array reads transposed): ``annot2``
  (N, 1, 17, 2) px, ``annot3`` (N, 1, 17, 3) mm camera frame, ``univ_annot3`` (N, 1, 17, 3),
  ``valid_frame`` (N, 1), ``activity_annotation`` (N, 1). The 17 joints are `TEST_JOINTS`.
* ``TS<n>/imageSequence/img_<i + 1, 6 digits>.jpg`` for frame i.

Only frames with ``valid_frame`` = 1 are people (``frame_step`` default 1: all of them, as SPIN's test file);
an invalid frame is an ``invalid_frame`` reject, so read = written + rejected still counts every frame. The
test set ships no per-sequence calibration file beside the annotations: its intrinsics are the release's
``test_util/camera_calibration`` values (`TEST_CAMERAS`: TS1–TS4 the studio camera, TS5–TS6 the outdoor one),
given in mm on the sensor and turned into px for the image's actual size (so a resized copy of the frames
keeps its camera).

**Joints.** Of the 28 (train) or 17 (test) native joints, the 17 SPIN keeps go to the canonical slots of
`core.joints.MPI_INF_3DHP_JOINTS`, through `NATIVE_NAMES` (canonical name → native name); the index lists are
derived (`TRAIN_INDEX`, `TEST_INDEX`) and equal SPIN's ``joints_idx`` / ``joints_17_idx`` (tests/
test_mpi_inf_3dhp.py). 2D confidence is 1 for all 17 (the dataset has no occlusion labels). The 3D joints
are metres in the camera frame, ``annot3`` by default for both splits (the metric joints the 2D joints are the
projection of); ``joints_3d="univ_annot3"`` gives SPIN's test-set 3D (the benchmark's; SPIN's train file uses
``annot3``, its test file ``univ_annot3``: SPIN_REFERENCE §4.4.2). Absolute by default; ``root_centred=True``
subtracts the pelvis, as SPIN's ``S``.

**Box**: the tight box of the 17 joints with ``bbox_expand`` 1.2, as SPIN.

**Keys** ``mpi-inf-3dhp/S1_Seq1_c0_000001`` (subject, sequence, camera, frame + 1) and
``mpi-inf-3dhp/TS1_000001`` (sequence, the image's number): every part of where a frame lives is in its key,
so keys never collide. SPIN's image names do (``S1/Seq1/imageFrames/video_0/frame_000001.jpg`` has the stem of
every other sequence's first frame: docs/fits_table.md), which is why its fits file is refused by name and
these keys are not SPIN's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import h5py
import numpy as np
import scipy.io
from PIL import Image

from core.intrinsics import Intrinsics
from core.joints import MPI_INF_3DHP_JOINTS, to_canonical
from pipelines.adapters.base import (
    PARSER_ERRORS,
    CheckConfig,
    DatasetError,
    Output,
    RecordBuilder,
    check_split,
    display_path,
    keypoint_box,
)
from shards.schema import make_key

NAME = "mpi-inf-3dhp"
TRAIN_SUBJECTS: tuple[str, ...] = tuple(f"S{n}" for n in range(1, 9))
TRAIN_SEQUENCES: tuple[str, ...] = ("Seq1", "Seq2")
TEST_SEQUENCES: tuple[str, ...] = tuple(f"TS{n}" for n in range(1, 7))
TEST_FOLDER = "mpi_inf_3dhp_test_set"
NUM_CAMERAS = 14
SPIN_CAMERAS: tuple[int, ...] = (0, 1, 2, 4, 5, 6, 7, 8)  # SPIN datasets/preprocess/mpi_inf_3dhp.py vid_list

# The release's joint orders (util/mpii_get_joint_set.m in the MPI-INF-3DHP download: 'all' = the 28 of the
# training annotations, 'relevant' = the 17 of the test set).
TRAIN_JOINTS: tuple[str, ...] = (
    "spine3", "spine4", "spine2", "spine", "pelvis", "neck", "head", "head_top", "left_clavicle", "left_shoulder",
    "left_elbow", "left_wrist", "left_hand", "right_clavicle", "right_shoulder", "right_elbow", "right_wrist",
    "right_hand", "left_hip", "left_knee", "left_ankle", "left_foot", "left_toe", "right_hip", "right_knee",
    "right_ankle", "right_foot", "right_toe",
)
TEST_JOINTS: tuple[str, ...] = (
    "head_top", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "pelvis",
    "spine", "head",
)
# The native joint each canonical slot of MPI_INF_3DHP_JOINTS takes (SPIN's choice, core/joints.py).
NATIVE_NAMES: dict[str, str] = {
    "Pelvis (MPII)": "pelvis", "Left Hip": "left_hip", "Left Knee": "left_knee", "Left Ankle": "left_ankle",
    "Right Hip": "right_hip", "Right Knee": "right_knee", "Right Ankle": "right_ankle", "Spine (H36M)": "spine",
    "Neck (LSP)": "neck", "Jaw (H36M)": "head", "Head (H36M)": "head_top", "Left Shoulder": "left_shoulder",
    "Left Elbow": "left_elbow", "Left Wrist": "left_wrist", "Right Shoulder": "right_shoulder",
    "Right Elbow": "right_elbow", "Right Wrist": "right_wrist",
}
TRAIN_INDEX = np.array([TRAIN_JOINTS.index(NATIVE_NAMES[n]) for n in MPI_INF_3DHP_JOINTS], dtype=np.int64)
TEST_INDEX = np.array([TEST_JOINTS.index(NATIVE_NAMES[n]) for n in MPI_INF_3DHP_JOINTS], dtype=np.int64)
PELVIS = MPI_INF_3DHP_JOINTS.index("Pelvis (MPII)")

VIDEO_LAYOUT = "{subject}/{sequence}/imageSequence/video_{camera}.avi"
TEST_IMAGE_LAYOUT = TEST_FOLDER + "/{sequence}/imageSequence/img_{frame1:06d}.jpg"


@dataclass(frozen=True)
class SensorCamera:
    """A camera as the test set's ``.calib`` files give it: focal length and principal-point offset from the
    sensor's centre in mm, the sensor's size in mm and the frame size in px it was calibrated at."""

    focal_mm: float
    offset_mm: tuple[float, float]
    sensor_mm: tuple[float, float]
    size_px: tuple[int, int]
    name: str

    def intrinsics(self, size: tuple[int, int], sequence: str) -> Intrinsics:
        """f, c in px for frames of ``size`` (width, height) px: ``f = focal · size / sensor``, ``c = size / 2 +
        offset · size / sensor`` per axis. The pixel aspect the files state (1.00044 and 0.99324) and the outdoor
        camera's lens distortion are not applied (fitloop fits a pinhole)."""
        px_per_mm = np.asarray(size, dtype=np.float64) / np.asarray(self.sensor_mm)
        f = self.focal_mm * px_per_mm
        c = np.asarray(size, dtype=np.float64) / 2.0 + np.asarray(self.offset_mm) * px_per_mm
        return Intrinsics(float(f[0]), float(f[1]), float(c[0]), float(c[1]), source="dataset",
                          detail=f"MPI-INF-3DHP test {sequence}: the release's {self.name} camera "
                                 f"(test_util/camera_calibration), {size[0]}x{size[1]} px")


# mpi_inf_3dhp_test_set/test_util/camera_calibration/*.calib of the release (as quoted by e.g. isarandi/posepile
# and the MATLAB evaluation's readers): TS1-TS4 were filmed in the studio, TS5-TS6 outdoors with another camera.
# (The release's MATLAB evaluation script uses f = 7.320339203 mm for TS1-TS4, 0.06 % less than the .calib.)
STUDIO_CAMERA = SensorCamera(7.32506, (-0.0322884, 0.0929296), (10.0, 10.0), (2048, 2048), "studio")
OUTDOOR_CAMERA = SensorCamera(8.770747185, (-0.104908645, 0.104899704), (10.0, 5.625), (1920, 1080), "outdoor")
TEST_CAMERAS: dict[str, SensorCamera] = {
    "TS1": STUDIO_CAMERA, "TS2": STUDIO_CAMERA, "TS3": STUDIO_CAMERA, "TS4": STUDIO_CAMERA,
    "TS5": OUTDOOR_CAMERA, "TS6": OUTDOOR_CAMERA,
}
JointSource = Literal["annot3", "univ_annot3"]


@dataclass(frozen=True, kw_only=True)
class MpiInf3dhpConfig(CheckConfig):
    """Options of the MPI-INF-3DHP adapter (the checks: `CheckConfig`).

    Attributes:
        subjects: train subjects to read (default S1–S8); a missing folder is skipped.
        sequences: train sequences (Seq1, Seq2) or test sequences (TS1–TS6) to read; default all of the split's.
        cameras: train cameras (0–13) to read; default SPIN's `SPIN_CAMERAS`.
        frame_step: keep frames 0, step, 2·step, …; default 10 for train (SPIN), 1 for test; 0 = the split's
            default.
        joints_3d: "annot3" (metric, camera frame; default) or "univ_annot3" (SPIN's test-set 3D).
        bbox_expand: box side = ``bbox_expand ·`` the joints' tight box's larger side (SPIN: 1.2).
        root_centred: subtract the pelvis from the 3D joints (SPIN's ``S``); default keep camera-frame positions.
    """

    subjects: tuple[str, ...] = ()
    sequences: tuple[str, ...] = ()
    cameras: tuple[int, ...] = SPIN_CAMERAS
    frame_step: int = 0
    joints_3d: JointSource = "annot3"
    bbox_expand: float = 1.2
    root_centred: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frame_step < 0:
            raise DatasetError(f"frame_step must be >= 1 (0: the split's default), got {self.frame_step}")
        if self.joints_3d not in ("annot3", "univ_annot3"):
            raise DatasetError(f"joints_3d must be annot3 or univ_annot3, got {self.joints_3d!r}")
        bad = [c for c in self.cameras if not 0 <= int(c) < NUM_CAMERAS]
        if bad:
            raise DatasetError(f"cameras must be among 0-{NUM_CAMERAS - 1}, got {bad}")


@dataclass(frozen=True)
class CameraCalibration:
    """One camera block of a ``camera.calibration`` file: size (w, h) px, K (4, 4) px, extrinsic (4, 4) world mm
    → camera mm."""

    size: tuple[int, int]
    K: np.ndarray
    extrinsic: np.ndarray

    def intrinsics(self, detail: str) -> Intrinsics:
        return Intrinsics(float(self.K[0, 0]), float(self.K[1, 1]), float(self.K[0, 2]), float(self.K[1, 2]),
                          source="dataset", detail=detail)


def read_calibration(path: Path) -> dict[int, CameraCalibration]:
    """A ``camera.calibration`` file's cameras by number (module docstring). ValueError naming the line when a
    block is incomplete or a matrix does not hold 16 numbers."""
    cameras: dict[int, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="strict").splitlines(), 1):
        words = line.split()
        if not words or (number == 1 and "Calibration" in line):
            continue
        key, values = words[0], words[1:]
        if key == "name":
            current = cameras.setdefault(int(values[0]), {})
        elif current is None:
            raise ValueError(f"line {number}: {key!r} before any 'name' line")
        elif key in ("intrinsic", "extrinsic"):
            if len(values) != 16:
                raise ValueError(f"line {number}: {key} holds {len(values)} numbers, not 16 (a 4x4 matrix)")
            current[key] = np.array([float(v) for v in values]).reshape(4, 4)
        elif key == "size":
            current[key] = (int(values[0]), int(values[1]))
    out = {}
    for k, block in cameras.items():
        missing = [f for f in ("size", "intrinsic", "extrinsic") if f not in block]
        if missing:
            raise ValueError(f"camera {k} has no {', '.join(missing)} line")
        out[k] = CameraCalibration(block["size"], block["intrinsic"], block["extrinsic"])
    if not out:
        raise ValueError("no camera block ('name <k>' lines)")
    return out


def read_train_annotations(path: Path) -> dict[str, Any]:
    """``annot.mat``'s cells per camera: {"annot2": {k: (F, 28, 2)}, "annot3": {k: (F, 28, 3)}, "univ_annot3":
    {...}} for every camera k of ``cameras``. ValueError (or scipy's errors) for a file not in that layout."""
    mat = scipy.io.loadmat(str(path))
    missing = [f for f in ("annot2", "annot3", "univ_annot3", "cameras") if f not in mat]
    if missing:
        raise ValueError(f"no {', '.join(missing)} variable")
    cameras = [int(c) for c in np.asarray(mat["cameras"]).reshape(-1)]
    out: dict[str, Any] = {}
    for field, dims in (("annot2", 2), ("annot3", 3), ("univ_annot3", 3)):
        cells = np.asarray(mat[field]).reshape(-1)
        if len(cells) != len(cameras):
            raise ValueError(f"{field} has {len(cells)} cells for {len(cameras)} cameras")
        out[field] = {}
        for camera, cell in zip(cameras, cells):
            values = np.asarray(cell, dtype=np.float64)
            if values.ndim != 2 or values.shape[1] != len(TRAIN_JOINTS) * dims:
                raise ValueError(f"{field} of camera {camera} has shape {values.shape}, not (F, "
                                 f"{len(TRAIN_JOINTS) * dims})")
            out[field][camera] = values.reshape(len(values), len(TRAIN_JOINTS), dims)
    for camera in cameras:
        lengths = {field: len(out[field][camera]) for field in out}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"camera {camera}'s cells differ in frames: {lengths}")
    return out


def read_test_annotations(path: Path) -> dict[str, np.ndarray]:
    """``annot_data.mat`` (HDF5): {"annot2": (N, 17, 2), "annot3", "univ_annot3": (N, 17, 3), "valid_frame":
    (N,) bool, "activity_annotation": (N,) int (0 when absent)}. ValueError (or h5py's errors) otherwise."""
    with h5py.File(path, "r") as h5:
        missing = [f for f in ("annot2", "annot3", "univ_annot3", "valid_frame") if f not in h5]
        if missing:
            raise ValueError(f"no {', '.join(missing)} dataset")
        out = {"valid_frame": np.asarray(h5["valid_frame"][()]).reshape(-1) > 0}
        frames = len(out["valid_frame"])
        for field, dims in (("annot2", 2), ("annot3", 3), ("univ_annot3", 3)):
            values = np.asarray(h5[field][()], dtype=np.float64)
            if values.size != frames * len(TEST_JOINTS) * dims:
                raise ValueError(f"{field} has shape {values.shape}; expected ({frames}, 1, 17, {dims}) for "
                                 f"{frames} frames")
            out[field] = values.reshape(frames, len(TEST_JOINTS), dims)
        activity = np.asarray(h5["activity_annotation"][()]).reshape(-1) if "activity_annotation" in h5 else None
        out["activity_annotation"] = (activity if activity is not None and len(activity) == frames
                                      else np.zeros(frames)).astype(np.int64)
    return out


class MpiInf3dhpAdapter:
    """MPI-INF-3DHP from its release's files; see the module docstring."""

    name = NAME
    splits = ("train", "test")
    config_type = MpiInf3dhpConfig

    def read(self, root: Path, split: str, config: MpiInf3dhpConfig | None = None) -> Iterator[Output]:
        """Yield one `PersonRecord` or `Reject` per kept frame (train: subject, sequence, camera, frame order;
        test: sequence, frame order), or one `Reject` per annotation file that cannot be read."""
        config = config or MpiInf3dhpConfig()
        check_split(self, split)
        root = Path(root)
        builder = RecordBuilder(self.name, split, config, root=root)
        if split == "train":
            yield from self._read_train(builder, root, config)
        else:
            yield from self._read_test(builder, root, config)

    # -- train ----------------------------------------------------------------------------------------------------
    def _read_train(self, builder: RecordBuilder, root: Path, config: MpiInf3dhpConfig) -> Iterator[Output]:
        subjects = config.subjects or TRAIN_SUBJECTS
        sequences = config.sequences or TRAIN_SEQUENCES
        present = [(s, q) for s in subjects for q in sequences if (root / s / q).is_dir()]
        if not present:
            raise DatasetError(f"no MPI-INF-3DHP sequence folder (<subject>/<sequence> among "
                               f"{', '.join(subjects)} x {', '.join(sequences)}) under {root}")
        step = config.frame_step or 10
        for subject, sequence in present:
            folder = root / subject / sequence
            source = display_path(folder / "annot.mat", root)
            try:
                annotations = read_train_annotations(folder / "annot.mat")
            except PARSER_ERRORS as err:  # scipy raises many types for a damaged or missing file
                yield builder.reject(source, f"{subject} {sequence}", "malformed_annotation",
                                     f"{source}: not MPI-INF-3DHP's annot.mat ({type(err).__name__}: {err})")
                continue
            calibration, problem = {}, ""
            try:
                calibration = read_calibration(folder / "camera.calibration")
            except PARSER_ERRORS as err:
                problem = (f"{display_path(folder / 'camera.calibration', root)}: {type(err).__name__}: {err}")
            for camera in config.cameras:
                yield from self._read_camera(builder, root, subject, sequence, int(camera), annotations,
                                             calibration, problem, source, step, config)

    def _read_camera(self, builder: RecordBuilder, root: Path, subject: str, sequence: str, camera: int,
                     annotations: dict[str, Any], calibration: dict[int, CameraCalibration], problem: str,
                     source: str, step: int, config: MpiInf3dhpConfig) -> Iterator[Output]:
        if camera not in annotations["annot2"]:
            yield builder.reject(source, f"{subject} {sequence} camera {camera}", "malformed_annotation",
                                 f"{source}: its cameras list has no camera {camera}")
            return
        joints_2d, joints_3d = annotations["annot2"][camera], annotations[config.joints_3d][camera]
        intrinsics, extra = None, {}
        if camera in calibration:
            intrinsics = calibration[camera].intrinsics(
                f"MPI-INF-3DHP {subject}/{sequence}/camera.calibration camera {camera}")
        else:
            extra["calibration_error"] = problem or f"camera.calibration has no camera {camera}"
        image_path = VIDEO_LAYOUT.format(subject=subject, sequence=sequence, camera=camera)
        for frame in range(0, len(joints_2d), step):
            key = make_key(self.name, f"{subject}_{sequence}_c{camera}_{frame + 1:06d}")
            yield self._person(builder, root, key, source, f"{subject} {sequence} camera {camera} frame {frame}",
                               joints_2d[frame][TRAIN_INDEX], joints_3d[frame][TRAIN_INDEX], image_path, frame,
                               intrinsics, {"subject": subject, "sequence": sequence, "camera": camera,
                                            "frame": frame, **extra}, config)

    # -- test -----------------------------------------------------------------------------------------------------
    def _read_test(self, builder: RecordBuilder, root: Path, config: MpiInf3dhpConfig) -> Iterator[Output]:
        sequences = config.sequences or TEST_SEQUENCES
        unknown = [s for s in sequences if s not in TEST_CAMERAS]
        if unknown:
            raise DatasetError(f"test sequences are {', '.join(TEST_SEQUENCES)}; got {', '.join(unknown)}")
        present = [s for s in sequences if (root / TEST_FOLDER / s).is_dir()]
        if not present:
            raise DatasetError(f"no {TEST_FOLDER}/TS1..TS6 folder under {root}")
        step = config.frame_step or 1
        for sequence in present:
            path = root / TEST_FOLDER / sequence / "annot_data.mat"
            source = display_path(path, root)
            try:
                annotations = read_test_annotations(path)
            except PARSER_ERRORS as err:  # h5py raises OSError, KeyError, ... for a damaged or missing file
                yield builder.reject(source, sequence, "malformed_annotation",
                                     f"{source}: not MPI-INF-3DHP's test annot_data.mat ({type(err).__name__}: "
                                     f"{err})")
                continue
            intrinsics = _test_intrinsics(root, sequence, annotations["valid_frame"])
            for frame in range(0, len(annotations["valid_frame"]), step):
                key = make_key(self.name, f"{sequence}_{frame + 1:06d}")
                record = f"{sequence} frame {frame}"
                if not annotations["valid_frame"][frame]:
                    yield builder.reject(source, record, "invalid_frame",
                                         f"{source}: valid_frame is 0 for frame {frame}", key=key)
                    continue
                image_path = TEST_IMAGE_LAYOUT.format(sequence=sequence, frame1=frame + 1)
                yield self._person(builder, root, key, source, record,
                                   annotations["annot2"][frame][TEST_INDEX],
                                   annotations[config.joints_3d][frame][TEST_INDEX], image_path, None, intrinsics,
                                   {"sequence": sequence, "frame": frame,
                                    "activity": int(annotations["activity_annotation"][frame])}, config)

    # -- one person -----------------------------------------------------------------------------------------------
    def _person(self, builder: RecordBuilder, root: Path, key: str, source: str, record: str, points_2d: np.ndarray,
                points_3d_mm: np.ndarray, image_path: str, frame: int | None, intrinsics: Intrinsics | None,
                extra: dict[str, Any], config: MpiInf3dhpConfig) -> Output:
        ones = np.ones((len(MPI_INF_3DHP_JOINTS), 1))
        keypoints = to_canonical(np.hstack([points_2d, ones]), NAME)
        points = points_3d_mm / 1000.0  # mm -> m
        if config.root_centred:
            points = points - points[PELVIS]
        joints_3d = to_canonical(np.hstack([points, ones]), NAME)
        center, scale = keypoint_box(keypoints, config.bbox_expand) or (None, None)
        return builder.person(key=key, source=source, record=record, image_root=root, image_path=image_path,
                              center=center, scale=scale, keypoints_2d=keypoints, joints_3d=joints_3d,
                              intrinsics=intrinsics, extra={**extra, "joints_3d": config.joints_3d},
                              image_frame=frame)


def _test_intrinsics(root: Path, sequence: str, valid: np.ndarray) -> Intrinsics | None:
    """The test sequence's intrinsics for the size of its first valid frame's image (module docstring); None
    when that image cannot be opened (its records then say why)."""
    first = np.flatnonzero(valid)
    if not len(first):
        return None
    try:
        with Image.open(root / TEST_IMAGE_LAYOUT.format(sequence=sequence, frame1=int(first[0]) + 1)) as image:
            size = image.size
    except OSError:
        return None
    return TEST_CAMERAS[sequence].intrinsics(size, sequence)
