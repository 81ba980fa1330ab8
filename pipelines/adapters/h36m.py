"""Human3.6M in its distributed layout: pose files per subject, camera parameters, pre-extracted frames.

**Poses** (NASA CDF files, read with cdflib; variable ``Pose``, one record of F frames):

* ``S<n>/MyPoseFeatures/D3_Positions_mono/<Action>.<camera>.cdf``: (1, F, 96) = 32 joints × xyz, **mm, camera
  frame** (x right, y down, z forward). SPIN reads these.
* ``S<n>/MyPoseFeatures/D2_Positions/<Action>.<camera>.cdf``: (1, F, 64) = 32 joints × xy, **px** in the camera's
  1000 × 1000(2) frames, taken as 0-based (as fitloop takes SPIN's Human3.6M files).
* or ``S<n>/MyPoseFeatures/D3_Positions/<Action>.cdf``: (1, F, 96), mm, **world frame**, one file per action for
  the four cameras; turned into each camera's frame with the camera parameters (``poses="world"``). The 2D joints
  then come from ``D2_Positions`` when present, else from projecting with the cameras' f, c, k, p.

Action names hold spaces and sub-action numbers (``Directions 1``, ``Walking``); camera names are Human3.6M's four
serials (54138969, 55011271, 58860488, 60457274 = cameras 1–4). Sequences whose action starts with ``_ALL`` are
skipped, as SPIN skips them (SPIN compares the whole name with ``_ALL``; ``_ALL 1`` is skipped here too).

**Cameras** (``cameras_file``, default ``cameras.h5`` then ``metadata.xml`` under the root), either form:

* ``cameras.h5`` of 3d-pose-baseline: ``subject<n>/camera<k>/{R, T, f, c, k, p, Name}``; ``R`` is stored
  transposed (MATLAB order) and read as ``R.T``; ``T`` (3, 1) mm is the camera centre in the world; ``Name`` the
  serial as character codes. A world point P maps to the camera as ``R (P − T)``.
* ``metadata.xml`` of the Human3.6M release: ``<w0>`` holds 300 numbers: for camera k (1–4) and subject n (1–11)
  six extrinsics at ``6·((k−1)·11 + n−1)`` (rotation angles a, b, c in radians with ``R = Rx(a)·Ry(b)·Rz(c)``,
  then T in mm), and for camera k nine intrinsics at ``264 + 9·(k−1)`` (f 2, c 2, k 3, p 2).

A camera file, found or given, must hold usable parameters (finite, f > 0, the sizes above) for every (subject,
camera) whose poses are read: else `DatasetError`, one line naming the file, subject and camera, before anything
is read (`check_cameras`). A file beside the poses that lacks a subject is a wrong or partial file, not a reason to
give its records a guessed focal length; only without any camera file do mono records go without intrinsics.

Every record of a camera with parameters carries its **intrinsics** (f, c in px: `PersonRecord.intrinsics`,
source "dataset"), which the shards store so that fits can be made in that camera (`core.frames`); the
distortion (k, p) stays in ``extra["camera_params"]`` and is not applied by fitloop's pinhole fits.

Projection with distortion is Human3.6M's own model (as 3d-pose-baseline implements it): ``x = X/Z``,
``r² = |x|²``, ``x' = x·(1 + k1 r² + k2 r⁴ + k3 r⁶ + p1 y + p2 x) + (p2, p1)·r²``, ``u = f·x' + c``.

**Frames** come from the release's **videos** or from pre-extracted images (``image_layout``). ``"video"`` reads
``S1/Videos/Directions 1.54138969.mp4`` as the release ships it (`VIDEO_LAYOUT`), decoded by OpenCV in the shard
writer's chunk work, in order, no frame written to disk (`shards.frames`): pose frame i is video frame i (0-based,
decoding order; both run at 50 Hz). A video with fewer frames than the pose file loses the records past its end
(``missing_image``), and every record of a sequence whose video and pose frame counts differ carries both
(``extra["video_frames"]``, ``extra["pose_frames"]``): the release's videos of a few sequences run a few frames
longer than their poses, and the frames are taken from the start. SPIN's evaluation script (``datasets/preprocess/
h36m.py``) reads one frame before its loop, so its image i is video frame i + 1 (SPIN_REFERENCE.md §4.3);
fitloop does not copy that. ``"spin"`` is SPIN's extraction, ``images/S1_Directions_1.54138969_000001.jpg``
(spaces in the action become ``_``; the number is the frame index + 1); ``"folders"`` is
``S1/Images/Directions 1.54138969/frame_000001.jpg``; or a format string with the fields ``subject``, ``action``,
``action_us`` (spaces → ``_``), ``camera``, ``frame`` (0-based) and ``frame1`` (1-based). ``"auto"`` (default)
takes, per sequence, SPIN's or the folders' image of its first frame where it exists, else its video where that
exists; a sequence with none of them takes the layout the subject's folders show (``S1/Videos``, then
``S1/Images``), else SPIN's, so that its ``missing_image`` rejects name the file missing from the user's layout
(a video that was not downloaded, not a JPEG of SPIN's).

**Records.** Every ``frame_step``-th frame (default 5, as SPIN) of every sequence is one person. The 17 joints
SPIN takes from the 32 (raw 11, 1, 2, 3, 6, 7, 8, 12, 24, 14, 15, 17, 18, 19, 25, 26, 27: raw 11 is a copy of the
pelvis 0, raw 24 of the thorax 13) go to the canonical slots of `core.joints.H36M_JOINTS` — exactly SPIN's
``h36m_idx → global_idx`` map. 2D confidence is 1 for all 17 (Human3.6M has no occlusion labels). The 3D joints
are metres in the camera frame, absolute by default (the depth is information; losses centre them where they
need to); ``root_centred=True`` gives SPIN's ``S`` (minus the pelvis).

**Box.** With ``box="auto"`` (default) the ground-truth box mask ``S<n>/MySegmentsMat/ground_truth_bb/
<Action>.<camera>.mat`` (MATLAB 7.3 / HDF5, ``Masks`` a cell of per-frame masks stored transposed) is used when
it exists, as SPIN does: ``scale = mask_expand·max(w, h)/200`` with ``mask_expand`` 0.9 and the box of the
pixels equal to 1. fitloop centres the box on the pixels' extent (SPIN's centre is half a pixel right and down:
it adds 1 to the maximum). Without a mask, the tight box of the 17 joints with ``bbox_expand`` 1.2, as SPIN does
for every keypoint dataset (the joints stop at the wrists, ankles and mid-head, so the box needs the margin).

**Foreground masks.** Where ``S<n>/MySegmentsMat/ground_truth_bs/<Action>.<camera>.mat`` exists (the release's
background-subtraction masks, the same MATLAB 7.3 layout as the box masks), each record carries its frame's
pixels equal to 1 as its person mask (`PersonRecord.mask`, provenance "h36m-foreground"); an empty frame gives
none. A foreground file that cannot be read costs the masks, not the people: ``extra["mask_error"]`` says why.

**Splits** as the literature uses them: train S1, S5, S6, S7, S8; test S9, S11; ``all`` both. A subject
without a folder is skipped (Human3.6M is downloaded per subject); none at all raises `DatasetError`. SPIN's
protocol 2 is ``cameras=("60457274",)`` on the test split.

**Keys** ``h36m/<subject>_<action>_<camera>_<frame + 1, 6 digits>``, e.g. ``h36m/S1_Directions_1_54138969_000001``:
the image name SPIN writes, made dot-free, so SPIN's ``h36m_train.npz`` and its fits join to the same keys.
"""
from __future__ import annotations

import math
import string
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Literal

import cdflib
import h5py
import numpy as np

from core.intrinsics import Intrinsics
from core.joints import H36M_JOINTS, to_canonical
from core.pinhole import pinhole
from pipelines.adapters.base import (
    PARSER_ERRORS,
    AnnotationFileError,
    CheckConfig,
    DatasetError,
    Output,
    RecordBuilder,
    check_split,
    display_path,
    keypoint_box,
    resolve_under,
)
from shards.frames import VideoError, video_info
from shards.masks import MASK_NAMES, LabelMap
from shards.schema import make_key

SPLIT_SUBJECTS: dict[str, tuple[str, ...]] = {
    "train": ("S1", "S5", "S6", "S7", "S8"),
    "test": ("S9", "S11"),
    "all": ("S1", "S5", "S6", "S7", "S8", "S9", "S11"),
}
CAMERA_NAMES: tuple[str, ...] = ("54138969", "55011271", "58860488", "60457274")  # cameras 1-4
NUM_RAW_JOINTS = 32
# The raw joint SPIN reads for each of the 17 (datasets/preprocess/h36m.py h36m_idx), by canonical name.
RAW_JOINTS: dict[str, int] = {
    "Pelvis (MPII)": 11, "Right Hip": 1, "Right Knee": 2, "Right Ankle": 3, "Left Hip": 6, "Left Knee": 7,
    "Left Ankle": 8, "Spine (H36M)": 12, "Neck (LSP)": 24, "Jaw (H36M)": 14, "Head (H36M)": 15,
    "Left Shoulder": 17, "Left Elbow": 18, "Left Wrist": 19, "Right Shoulder": 25, "Right Elbow": 26,
    "Right Wrist": 27,
}
RAW_INDEX = np.array([RAW_JOINTS[name] for name in H36M_JOINTS], dtype=np.int64)  # in H36M_JOINTS order
# Raw joints that are the same point as another in Human3.6M's 32-joint skeleton (copy -> original).
RAW_DUPLICATES: dict[int, int] = {0: 11, 13: 24, 16: 24, 20: 19, 23: 22, 28: 27, 31: 30}
PELVIS = H36M_JOINTS.index("Pelvis (MPII)")

IMAGE_LAYOUTS: dict[str, str] = {
    "spin": "images/{subject}_{action_us}.{camera}_{frame1:06d}.jpg",
    "folders": "{subject}/Images/{action}.{camera}/frame_{frame1:06d}.jpg",
}
VIDEO_LAYOUT = "{subject}/Videos/{action}.{camera}.mp4"   # the release's videos, one per (subject, action, camera)
PoseSource = Literal["auto", "mono", "world"]
BoxSource = Literal["auto", "mask", "keypoints"]


@dataclass(frozen=True, kw_only=True)
class H36mConfig(CheckConfig):
    """Options of the Human3.6M adapter (the checks: `CheckConfig`).

    Attributes:
        poses: "mono" (D3_Positions_mono + D2_Positions), "world" (D3_Positions + cameras), or "auto" (mono
            when the subject has it, else world).
        cameras_file: ``cameras.h5`` or ``metadata.xml`` (module docstring), absolute or relative to the root;
            default: whichever of the two lies in the root. Needed for "world"; with "mono" it only adds the
            intrinsics to ``extra["camera_params"]``.
        subjects: read these subjects instead of the split's (e.g. ("S1",)).
        cameras: keep only these camera serials (protocol 2: ("60457274",)); default all.
        frame_step: keep frames 0, step, 2·step, … of every sequence (SPIN: 5).
        image_layout: "auto", "video", "spin", "folders" or a format string (module docstring).
        box: "auto" (mask when its file exists, else joints), "mask" or "keypoints".
        mask_expand: box side = ``mask_expand ·`` the mask box's larger side (SPIN: 0.9).
        bbox_expand: box side = ``bbox_expand ·`` the joints' tight box's larger side (1.2, as SPIN's keypoint
            datasets).
        root_centred: subtract the pelvis from the 3D joints (SPIN's ``S``); default keep camera-frame positions.
    """

    poses: PoseSource = "auto"
    cameras_file: Path | None = None
    subjects: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ()
    frame_step: int = 5
    image_layout: str = "auto"
    box: BoxSource = "auto"
    mask_expand: float = 0.9
    bbox_expand: float = 1.2
    root_centred: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.poses not in ("auto", "mono", "world"):
            raise DatasetError(f"poses must be auto, mono or world, got {self.poses!r}")
        if self.box not in ("auto", "mask", "keypoints"):
            raise DatasetError(f"box must be auto, mask or keypoints, got {self.box!r}")
        if self.frame_step < 1:
            raise DatasetError(f"frame_step must be at least 1, got {self.frame_step}")
        if self.image_layout not in ("auto", "video"):
            image_pattern(self.image_layout)  # raises DatasetError on a bad pattern


@dataclass(frozen=True)
class Camera:
    """One Human3.6M camera: world → camera ``X = R (P − T)``; intrinsics f, c (px), distortion k (3), p (2).

    R (3, 3); T (3,) mm, the camera centre in the world; name: the camera's serial; file: the file it was read
    from ("" when made in memory).
    """

    name: str
    R: np.ndarray
    T: np.ndarray
    f: np.ndarray
    c: np.ndarray
    k: np.ndarray
    p: np.ndarray
    file: str = ""
    where: str = ""   # where in the file ("subject1/camera1" of cameras.h5), for messages

    def problem(self) -> str:
        """Why these parameters cannot be used ("" when they can): a value of the wrong size, not finite, or a
        focal length that is not positive (a file damaged or edited by hand)."""
        sizes = {"R": (3, 3), "T": (3,), "f": (2,), "c": (2,), "k": (3,), "p": (2,)}
        for name, shape in sizes.items():
            value = getattr(self, name)
            if value.shape != shape:
                return f"{name} has shape {value.shape}, expected {shape}"
            if not np.isfinite(value).all():
                return f"{name} = {np.array2string(value.reshape(-1), precision=6)} is not finite"
        if not (self.f > 0).all():
            return f"f = {self.f.tolist()} is not positive"
        return ""

    def to_camera(self, points_world: np.ndarray) -> np.ndarray:
        """World points (..., 3) mm -> camera frame (..., 3) mm."""
        return (points_world - self.T) @ self.R.T

    def project(self, points_camera: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3) (any unit) -> pixels (..., 2) with Human3.6M's distortion model: the ray's
        point on the plane Z = 1 is distorted, then projected by `core.pinhole.pinhole` with f, c."""
        x = pinhole(points_camera, 1.0, (0.0, 0.0))                        # (X/Z, Y/Z)
        r2 = (x ** 2).sum(-1, keepdims=True)
        radial = 1.0 + self.k[0] * r2 + self.k[1] * r2 ** 2 + self.k[2] * r2 ** 3
        tangential = self.p[0] * x[..., 1:2] + self.p[1] * x[..., 0:1]
        distorted = x * (radial + tangential) + np.array([self.p[1], self.p[0]]) * r2
        return pinhole(np.concatenate([distorted, np.ones_like(r2)], -1), self.f, self.c)

    def info(self) -> dict[str, Any]:
        """Intrinsics for ``extra["camera"]`` (json-able)."""
        return {"name": self.name, "f": self.f.tolist(), "c": self.c.tolist(), "k": self.k.tolist(),
                "p": self.p.tolist()}

    def intrinsics(self, subject: str) -> Intrinsics:
        """The pinhole part (f, c) as a record's intrinsics (source "dataset"), for ``subject``'s records. The
        distortion (k, p) is not part of them: it stays in ``extra["camera_params"]``."""
        distorted = bool(np.any(self.k) or np.any(self.p))
        where = f" in {self.file}" if self.file else ""
        return Intrinsics(float(self.f[0]), float(self.f[1]), float(self.c[0]), float(self.c[1]), source="dataset",
                          detail=f"Human3.6M camera {self.name} of {subject}{where}"
                                 + (" (its lens distortion k, p not applied)" if distorted else ""))


@dataclass(frozen=True)
class _Sequence:
    """One (subject, action, camera) sequence to read: its pose files and where its records come from."""

    subject: str
    action: str
    camera: str
    poses_3d: Path          # D3_Positions_mono/<action>.<camera>.cdf, or D3_Positions/<action>.cdf (world)
    poses_2d: Path          # D2_Positions/<action>.<camera>.cdf (may not exist)
    mask: Path              # MySegmentsMat/ground_truth_bb/<action>.<camera>.mat (may not exist)
    world: bool

    @property
    def foreground(self) -> Path:
        """MySegmentsMat/ground_truth_bs/<action>.<camera>.mat (may not exist)."""
        return self.mask.parent.with_name("ground_truth_bs") / self.mask.name

    @property
    def name(self) -> str:
        return f"{self.action}.{self.camera}"


class H36mAdapter:
    """Human3.6M from its pose CDFs, camera parameters and extracted frames; see the module docstring."""

    name = "h36m"
    splits = tuple(SPLIT_SUBJECTS)
    config_type = H36mConfig

    def read(self, root: Path, split: str, config: H36mConfig | None = None) -> Iterator[Output]:
        """Yield one `PersonRecord` or `Reject` per kept frame of every sequence (subject, action, camera order),
        or one `Reject` for a pose file that cannot be read."""
        config = config or H36mConfig()
        check_split(self, split)
        root = Path(root)
        subjects = config.subjects or SPLIT_SUBJECTS[split]
        present = [s for s in subjects if (root / s).is_dir()]
        if not present:
            raise DatasetError(f"no Human3.6M subject folder ({', '.join(subjects)}) under {root}")
        camera_file, cameras = self._cameras(root, config)
        builder = RecordBuilder(self.name, split, config, root=root)
        sequences = [seq for subject in present for seq in self._sequences(root, subject, config, cameras)]
        if camera_file is not None:
            check_cameras(camera_file, cameras, sequences)  # before anything is read: a wrong file is one line
        for sequence in sequences:
            pattern = sequence_layout(root, sequence.subject, sequence.action, sequence.camera, config.image_layout)
            yield from self._read_sequence(builder, root, sequence, cameras, pattern, config)

    # -- finding files --------------------------------------------------------------------------------------
    def _cameras(self, root: Path, config: H36mConfig) -> tuple[Path | None, dict[tuple[str, str], Camera] | None]:
        """(the camera file, its cameras), or (None, None) when there is none and none is needed."""
        path = resolve_under(root, config.cameras_file)
        if path is None:
            path = next((p for p in (root / "cameras.h5", root / "metadata.xml") if p.is_file()), None)
            if path is None:
                if config.poses == "world":
                    raise DatasetError(f"poses='world' needs camera parameters: no cameras.h5 or metadata.xml "
                                       f"in {root}; pass cameras_file")
                return None, None
        elif not path.is_file():
            raise DatasetError(f"cameras_file {path} does not exist")
        return path, load_cameras(path)

    def _sequences(self, root: Path, subject: str, config: H36mConfig,
                   cameras: dict[tuple[str, str], Camera] | None) -> list[_Sequence]:
        features = root / subject / "MyPoseFeatures"
        mono = features / "D3_Positions_mono"
        world = config.poses == "world" or (config.poses == "auto" and not mono.is_dir())
        masks = root / subject / "MySegmentsMat" / "ground_truth_bb"
        wanted = set(config.cameras) or None
        out = []
        if not world:
            for path in sorted(mono.glob("*.cdf")):
                action, _, camera = path.stem.rpartition(".")
                if action.startswith("_ALL") or (wanted and camera not in wanted):
                    continue
                out.append(_Sequence(subject, action, camera, path, features / "D2_Positions" / path.name,
                                     masks / f"{path.stem}.mat", world=False))
            return out
        if cameras is None:
            raise DatasetError(f"{subject} has no D3_Positions_mono; reading D3_Positions (world frame) needs camera "
                               f"parameters: put cameras.h5 or metadata.xml in {root} or pass cameras_file")
        # Human3.6M's four cameras when the file has none of the subject's: `check_cameras` then says so
        serials = sorted((name for (s, name) in cameras if s == subject), key=_camera_order) or list(CAMERA_NAMES)
        for path in sorted((features / "D3_Positions").glob("*.cdf")):
            action = path.stem
            if action.startswith("_ALL"):
                continue
            for camera in serials:
                if wanted and camera not in wanted:
                    continue
                stem = f"{action}.{camera}"
                out.append(_Sequence(subject, action, camera, path, features / "D2_Positions" / f"{stem}.cdf",
                                     masks / f"{stem}.mat", world=True))
        return out

    # -- one sequence -----------------------------------------------------------------------------------------
    def _read_sequence(self, builder: RecordBuilder, root: Path, seq: _Sequence,
                       cameras: dict[tuple[str, str], Camera] | None, pattern: str,
                       config: H36mConfig) -> Iterator[Output]:
        source = display_path(seq.poses_3d, root)
        camera = None if cameras is None else cameras.get((seq.subject, seq.camera))
        try:
            if not seq.action:
                raise ValueError(f"{seq.poses_3d.name} is not named <action>.<camera>.cdf")
            joints_3d = read_pose_cdf(seq.poses_3d, 3)  # (F, 32, 3) mm
        except PARSER_ERRORS as err:  # cdflib raises many types for a damaged file
            yield builder.reject(source, "*", "malformed_annotation", f"{type(err).__name__}: {err}")
            return
        if seq.world:  # world sequences are listed from the camera file, so their camera is known
            joints_3d = camera.to_camera(joints_3d)

        problem_2d, joints_2d = "", None
        if seq.poses_2d.is_file():
            try:
                joints_2d = read_pose_cdf(seq.poses_2d, 2)
            except PARSER_ERRORS as err:
                problem_2d = f"{display_path(seq.poses_2d, root)}: {type(err).__name__}: {err}"
        elif camera is not None:
            joints_2d = camera.project(joints_3d)
        else:
            problem_2d = (f"no {display_path(seq.poses_2d, root)} and no camera parameters to project the 3D "
                          f"joints with")

        masks, problem_mask = None, ""
        if config.box == "mask" or (config.box == "auto" and seq.mask.is_file()):
            try:
                masks = MaskFile(seq.mask)
            except PARSER_ERRORS as err:
                problem_mask = f"{display_path(seq.mask, root)}: {type(err).__name__}: {err}"

        foreground, problem_foreground = None, ""
        if seq.foreground.is_file():
            try:
                foreground = MaskFile(seq.foreground)
            except PARSER_ERRORS as err:
                problem_foreground = f"{display_path(seq.foreground, root)}: {type(err).__name__}: {err}"

        counts = _frame_counts(root, seq, pattern, len(joints_3d))
        try:
            for frame in range(0, len(joints_3d), config.frame_step):
                mask, mask_extra = _foreground(foreground, problem_foreground, frame, seq, root)
                yield self._person(builder, root, seq, source, frame, joints_3d[frame], joints_2d, problem_2d,
                                   masks, problem_mask, camera, pattern, config, mask, mask_extra | counts)
        finally:
            for opened in (masks, foreground):
                if opened is not None:
                    opened.close()

    def _person(self, builder: RecordBuilder, root: Path, seq: _Sequence, source: str, frame: int,
                raw_3d: np.ndarray, joints_2d: np.ndarray | None, problem_2d: str, masks: "MaskFile | None",
                problem_mask: str, camera: Camera | None, pattern: str, config: H36mConfig,
                mask: LabelMap | None = None, mask_extra: dict[str, Any] | None = None) -> Output:
        key = make_key(self.name, f"{seq.subject}_{seq.action}.{seq.camera}_{frame + 1:06d}")
        record = f"{seq.subject} {seq.name} frame {frame}"
        where = dict(source=source, record=record, key=key)
        if problem_2d:
            return builder.reject(**where, reason="malformed_annotation", message=problem_2d)
        if frame >= len(joints_2d):
            return builder.reject(**where, reason="malformed_annotation", message=(
                f"D2_Positions has {len(joints_2d)} frames, D3 has more; no 2D joints for frame {frame}"))
        if problem_mask:
            return builder.reject(**where, reason="malformed_annotation", message=problem_mask)

        ones = np.ones((len(H36M_JOINTS), 1))
        keypoints = to_canonical(np.hstack([joints_2d[frame][RAW_INDEX], ones]), "h36m")
        points = raw_3d[RAW_INDEX] / 1000.0  # mm -> m
        if config.root_centred:
            points = points - points[PELVIS]
        joints_3d = to_canonical(np.hstack([points, ones]), "h36m")

        extra: dict[str, Any] = {"subject": seq.subject, "action": seq.action, "camera": seq.camera,
                                 "frame": frame, **(mask_extra or {})}
        intrinsics = None
        if camera is not None:
            extra["camera_params"] = camera.info()
            intrinsics = camera.intrinsics(seq.subject)
        if masks is not None:
            extra["box_source"] = "mask"
            try:
                box = masks.box(frame)
            except PARSER_ERRORS as err:  # a mask file damaged past its header
                return builder.reject(**where, reason="malformed_annotation", message=(
                    f"{display_path(seq.mask, root)}: frame {frame}: {type(err).__name__}: {err}"))
            if isinstance(box, str):
                return builder.reject(**where, reason="degenerate_box", message=box)
            (x0, y0, x1, y1) = box  # inclusive pixel indices of the mask's pixels
            center = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
            scale = config.mask_expand * max(x1 - x0 + 1, y1 - y0 + 1) / 200.0
        else:
            extra["box_source"] = "keypoints"
            center, scale = keypoint_box(keypoints, config.bbox_expand) or (None, None)

        image_path = _image_path(pattern, seq.subject, seq.action, seq.camera, frame)
        return builder.person(key=key, source=source, record=record, image_root=root, image_path=image_path,
                              center=center, scale=scale, keypoints_2d=keypoints, joints_3d=joints_3d,
                              intrinsics=intrinsics, mask=mask, extra=extra,
                              image_frame=frame if pattern == VIDEO_LAYOUT else None)


def _foreground(foreground: "MaskFile | None", problem: str, frame: int, seq: _Sequence,
                root: Path) -> tuple[LabelMap | None, dict[str, Any]]:
    """The person mask of one frame from its ground_truth_bs file, and what it adds to ``extra`` (module
    docstring): none without a file or for an empty frame; a read error as ``mask_error``."""
    if problem:
        return None, {"mask_error": problem}
    if foreground is None:
        return None, {}
    try:
        pixels = foreground.frame(frame)
    except PARSER_ERRORS as err:  # a mask file damaged past its header
        return None, {"mask_error": f"{display_path(seq.foreground, root)}: frame {frame}: "
                                    f"{type(err).__name__}: {err}"}
    if isinstance(pixels, str):
        return None, {"mask_error": pixels}
    if not (pixels == 1).any():
        return None, {}
    return LabelMap.from_array(pixels == 1, MASK_NAMES, "h36m-foreground"), {}


# --- File readers ----------------------------------------------------------------------------------------------

def read_pose_cdf(path: Path, dims: int) -> np.ndarray:
    """A pose CDF's ``Pose`` as (F, 32, dims) float64 (its units: mm for 3D, px for 2D).

    Human3.6M stores one record of (F, 32·dims); readers differ on whether the record axis is kept, so any
    shape with 32·dims values per frame is accepted. ValueError when the variable has another size.
    """
    cdf = cdflib.CDF(str(path))
    pose = np.asarray(cdf.varget("Pose"), dtype=np.float64)
    width = NUM_RAW_JOINTS * dims
    if pose.size % width or (pose.ndim and pose.shape[-1] != width):
        raise ValueError(f"Pose has shape {pose.shape}; expected (1, F, {width}) for 32 joints x {dims}")
    return pose.reshape(-1, NUM_RAW_JOINTS, dims)


class MaskFile:
    """A ``ground_truth_bb`` or ``ground_truth_bs`` MATLAB 7.3 file: ``Masks`` is a cell (F × 1 references) of
    masks stored transposed.

    ``frame(frame)`` gives a frame's (H, W) mask; ``box(frame)`` the inclusive pixel box (x0, y0, x1, y1) of
    the pixels equal to 1 (SPIN's rule); either a message saying why there is none. The file stays open until
    `close`.
    """

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise OSError(f"no ground-truth box mask file {path.name}")
        self._h5 = h5py.File(path, "r")
        try:
            self._refs = np.asarray(self._h5["Masks"][()]).reshape(-1)
        except Exception:
            self._h5.close()
            raise

    def frame(self, frame: int) -> np.ndarray | str:
        if frame >= len(self._refs):
            return f"the mask file has {len(self._refs)} frames; none for frame {frame}"
        return np.asarray(self._h5[self._refs[frame]][()]).T  # MATLAB column order -> (H, W)

    def box(self, frame: int) -> tuple[int, int, int, int] | str:
        mask = self.frame(frame)
        if isinstance(mask, str):
            return mask.replace("the mask file", "the box mask file")
        ys, xs = np.nonzero(mask == 1)
        if len(xs) == 0:
            return f"the box mask of frame {frame} is empty"
        return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "MaskFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_cameras(path: Path) -> dict[tuple[str, str], Camera]:
    """Camera parameters per (subject "S1", camera serial) from ``cameras.h5`` or ``metadata.xml``.

    Raises DatasetError naming the file when it is neither form.
    """
    try:
        if path.suffix.lower() in (".h5", ".hdf5"):
            return {k: replace(c, file=path.name) for k, c in _cameras_h5(path).items()}
        if path.suffix.lower() == ".xml":
            return {k: replace(c, file=path.name) for k, c in _cameras_xml(path).items()}
    except PARSER_ERRORS as err:
        raise AnnotationFileError(path, "Human3.6M camera parameters (cameras.h5 or metadata.xml)", err) from None
    raise DatasetError(f"cameras_file {path}: expected 3d-pose-baseline's cameras.h5 or the release's metadata.xml")


def check_cameras(path: Path, cameras: dict[tuple[str, str], Camera], sequences: list[_Sequence]) -> None:
    """DatasetError naming the camera file, the subjects and the cameras when a sequence to read has no parameters
    in it or unusable ones (`Camera.problem`). A camera file that lies beside the poses is meant to hold them: a
    subject missing from it is a wrong or partial file (its records would otherwise take a guessed focal length,
    and world poses could not be read at all), not a reason to guess."""
    needed = sorted({(seq.subject, seq.camera) for seq in sequences}, key=lambda k: (_subject_order(k[0]),
                                                                                      _camera_order(k[1])))
    missing = [key for key in needed if key not in cameras]
    if missing:
        held = sorted({subject for subject, _ in cameras}, key=_subject_order)
        absent = []
        for subject in dict.fromkeys(subject for subject, _ in missing):
            if subject in held:
                absent.append(f"{subject} camera {', '.join(c for s, c in missing if s == subject)}")
            else:
                group = f" (no group subject{subject[1:]})" if path.suffix.lower() in (".h5", ".hdf5") else ""
                absent.append(f"{subject}{group}")
        raise DatasetError(f"{path}: no camera parameters for {'; '.join(absent)}, whose poses are read (the file "
                           f"has {', '.join(held)}); use a complete camera file (cameras_file=), e.g. the release's "
                           f"metadata.xml")
    for key in needed:
        problem = cameras[key].problem()
        if problem:
            raise DatasetError(f"{path}: the parameters of {key[0]} camera {key[1]} ({cameras[key].where}) cannot "
                               f"be used: {problem}; fix or replace the file (cameras_file=)")


def _subject_order(subject: str) -> tuple[int, str]:
    return (int(subject[1:]) if subject[1:].isdigit() else 1 << 30, subject)


def _cameras_h5(path: Path) -> dict[tuple[str, str], Camera]:
    cameras = {}
    with h5py.File(path, "r") as h5:
        for group in h5:
            if not group.startswith("subject"):
                continue
            subject = f"S{int(group[len('subject'):])}"
            for name in h5[group]:
                cam = h5[group][name]
                serial = "".join(chr(int(c)) for c in np.asarray(cam["Name"][()]).reshape(-1))
                cameras[(subject, serial)] = Camera(
                    name=serial, R=np.asarray(cam["R"][()], dtype=np.float64).T, where=f"{group}/{name}",
                    **{k: np.asarray(cam[k][()], dtype=np.float64).reshape(-1) for k in ("T", "f", "c", "k", "p")})
    if not cameras:
        raise ValueError("no subject<n>/camera<k> groups")
    return cameras


def _cameras_xml(path: Path) -> dict[tuple[str, str], Camera]:
    node = ElementTree.parse(path).getroot().find(".//w0")
    if node is None or not node.text:
        raise ValueError("no <w0> element")
    w0 = np.array([float(v) for v in node.text.strip().strip("[]").split()])
    if len(w0) != 300:
        raise ValueError(f"<w0> holds {len(w0)} numbers, expected 300")
    cameras = {}
    for k, serial in enumerate(CAMERA_NAMES):
        f, c, dk, dp = np.split(w0[264 + 9 * k: 264 + 9 * (k + 1)], [2, 4, 7])
        for n in range(11):
            ext = w0[6 * (k * 11 + n): 6 * (k * 11 + n) + 6]
            cameras[(f"S{n + 1}", serial)] = Camera(name=serial, R=euler_xyz(ext[:3]), T=ext[3:].copy(), f=f, c=c,
                                                    k=dk, p=dp, where=f"<w0>, camera {k + 1} and subject {n + 1}")
    return cameras


def euler_xyz(angles: np.ndarray) -> np.ndarray:
    """``Rx(a)·Ry(b)·Rz(c)`` (3, 3) for angles (a, b, c) in radians: metadata.xml's rotation."""
    a, b, c = (float(v) for v in angles)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _image_path(pattern: str, subject: str, action: str, camera: str, frame: int) -> str:
    return pattern.format(subject=subject, action=action, action_us=action.replace(" ", "_"), camera=camera,
                          frame=frame, frame1=frame + 1)


def sequence_layout(root: Path, subject: str, action: str, camera: str, layout: str) -> str:
    """The path pattern of one sequence's frames: `VIDEO_LAYOUT` for ``"video"``, the named or given pattern, or
    for ``"auto"`` the first of SPIN's images, the folders' images and the video that holds the sequence's first
    frame (module docstring); when none does, the videos' layout if the subject has a ``Videos`` folder, else the
    folders' if it has an ``Images`` folder, else SPIN's."""
    if layout == "video":
        return VIDEO_LAYOUT
    if layout != "auto":
        return image_pattern(layout)
    for pattern in (*IMAGE_LAYOUTS.values(), VIDEO_LAYOUT):
        if (root / _image_path(pattern, subject, action, camera, 0)).is_file():
            return pattern
    # None of the sequence's frames: the layout the subject's folders show, so that its records name the file that
    # is missing in the layout the user has (a video missing from S1/Videos, not a JPEG of SPIN's never extracted)
    for pattern, folder in ((VIDEO_LAYOUT, "Videos"), (IMAGE_LAYOUTS["folders"], "Images")):
        if (root / subject / folder).is_dir():
            return pattern
    return IMAGE_LAYOUTS["spin"]


def _frame_counts(root: Path, seq: _Sequence, pattern: str, pose_frames: int) -> dict[str, int]:
    """``{"video_frames", "pose_frames"}`` when a sequence's video and pose file differ in length (module
    docstring), else nothing (also when the video cannot be read: its records say why)."""
    if pattern != VIDEO_LAYOUT:
        return {}
    try:
        frames = video_info(root / _image_path(pattern, seq.subject, seq.action, seq.camera, 0)).frames
    except (OSError, VideoError):
        return {}
    return {} if frames == pose_frames else {"video_frames": frames, "pose_frames": pose_frames}


def image_pattern(layout: str) -> str:
    """The image-path format string of a layout name or a custom pattern; DatasetError when unusable."""
    pattern = IMAGE_LAYOUTS.get(layout, layout)
    fields = {"subject", "action", "action_us", "camera", "frame", "frame1"}
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(pattern) if name}
        if not names or not names <= fields:
            raise ValueError(f"fields {sorted(names - fields) or 'none'}")
        pattern.format(subject="S1", action="A 1", action_us="A_1", camera="1", frame=0, frame1=1)
    except (ValueError, IndexError, KeyError) as err:
        raise DatasetError(f"image_layout {layout!r} is not 'spin', 'folders' or a format string over "
                           f"{sorted(fields)}: {err}") from None
    return pattern


def _camera_order(serial: str) -> tuple[int, str]:
    return (CAMERA_NAMES.index(serial) if serial in CAMERA_NAMES else len(CAMERA_NAMES), serial)
