"""What every dataset adapter shares: the `Adapter` protocol, the checks a person passes, and the reject policy.

An adapter parses its format into candidate persons (canonical 49-joint keypoints in 0-based px, a box, ids) and
hands each to `RecordBuilder.person`, which runs the checks below, in this order, and returns a `PersonRecord` or
a `Reject` naming the first check that failed:

1. ``nan_keypoints``: an annotated joint (confidence > 0), the box centre or the scale is not finite.
2. ``too_few_joints``: fewer than ``min_joints`` annotated joints (slots 25–48; OpenPose detections in slots
   0–24 are not annotations and never count).
3. ``missing_required_joints``: a joint named in ``require_joints`` is not annotated.
4. ``degenerate_box``: no box, or a box side (200·scale) under ``min_box_side_px``.
5. ``missing_image`` / ``corrupt_image`` / ``image_size_mismatch``: the image file, checked once per file.
6. ``degenerate_box``: less than `shards.crop.MIN_BOX_INSIDE` of the box lies in the image (`shards.crop.box_problem`):
   a box beside the image, or one far larger than it (a bbox of 1e6 px), would crop black or a speck.
7. ``keypoints_out_of_image``: an annotated joint lies outside the image by more than ``out_of_image_margin_px``
   (policy ``out_of_image``: "reject" the person, "drop_joint" to zero the joint's confidence, or "keep").

A person with whole-body keypoints (hands and face: `core.wholebody`, 161 points) has them checked too: a
present point that is not finite is a ``nan_keypoints`` reject naming it, and a present point outside the image
follows the same ``out_of_image`` policy. Which of the 49 slots count as annotations is the builder's
``annotated`` (the J24 slots 25–48; the OpenPose slots 0–24 for an adapter of detector output, whose detections
are all it has).

Annotation checks come first so a bad record costs no image I/O; the image is opened only for records that could
become samples. Errors in the files an adapter is pointed at (a missing annotation file, an unknown split, wrong
options) raise `DatasetError` before anything is read; an annotation file that exists but cannot be read as its
format (truncated, another format, a text file under a format's name) raises `AnnotationFileError`, naming the file
and why, also before anything is read: a split whose one file is unreadable is not an empty split. A record that
cannot be parsed within a readable file is one ``malformed_annotation`` reject and the run goes on; so is a record
whose image name is absolute or climbs out of the image folder (`image_path_under`: nothing outside the image
root is read). Records whose ids repeat an earlier record's (two persons with one key, a COCO image id given to two
images) are ``duplicate_record`` rejects (`unique_keys`), never a crop of the wrong picture.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterable, Iterator, Literal, Mapping, Protocol, Sequence

import numpy as np
from PIL import Image

from core.errors import FitloopError
from core.intrinsics import Intrinsics
from core.joints import J24_OFFSET, JOINT_NAMES, MIN_FIT_JOINTS, NUM_JOINTS, indices
from core.wholebody import NUM_WHOLEBODY, WHOLEBODY_NAMES
from pipelines.adapters.label_files import DEFAULT_LABELS_DIR, LABELS_FILE, LabelFolder
from shards.crop import box_problem
from shards.frames import VideoError, VideoFrames, video_info
from shards.masks import LabelMap, MaskError
from shards.schema import PersonRecord, Reject

Output = PersonRecord | Reject
ImageCheck = Literal["exists", "header", "decode"]
OutOfImagePolicy = Literal["reject", "drop_joint", "keep"]


class DatasetError(FitloopError):
    """The dataset's files or the adapter's options are wrong; nothing was read."""


class AnnotationFileError(DatasetError):
    """An annotation file exists but cannot be read as its format: damaged, truncated, or another kind of file."""

    def __init__(self, path: Path, what: str, err: BaseException | str) -> None:
        reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        super().__init__(f"{path}: not {what} ({reason}); check the file (a download cut short? another "
                         f"format under this name?) or point the adapter at the right one")


# FFmpeg, OpenCV's video back end, prints a line to stderr for every damaged macroblock it meets (thousands for one
# damaged video) and "moov atom not found" for a file that is no video, and OpenCV adds its own "[ERROR:0@...]"
# lines for a video it cannot open; the rejects already say which video is bad and why, so both logs are silenced
# here, before any video is opened (OpenCV reads the levels once per process: its own at import, FFmpeg's at its
# first capture; processes started later inherit them). Set OPENCV_FFMPEG_LOGLEVEL (16: FFmpeg's errors) or
# OPENCV_LOG_LEVEL (ERROR) to see them. OpenCV gives no error flag for a frame decoded from damaged data.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")

# Parsers of binary formats (scipy.io, h5py, cdflib) raise many exception types for damaged bytes, some of their
# own (scipy's MatReadError is a plain Exception): reading a whole annotation file catches all of them, and the
# one line says which file and what the parser said.
PARSER_ERRORS = (Exception,)


@dataclass(frozen=True, kw_only=True)
class CheckConfig:
    """The checks every adapter runs on a person (module docstring), and how annotations become confidences.

    Every adapter's config extends this one, so these options mean the same for every dataset.

    Attributes:
        min_joints: fewest annotated joints a person may have. 6 by default (`core.joints.MIN_FIT_JOINTS`,
            which seeding also asks of a sample): SMPLify's camera stage needs the 4 torso joints (hips and
            shoulders) and a pose needs a few joints more to say anything; people with fewer (COCO's many
            1–5-keypoint annotations of distant or cut-off people) cannot supervise a fit. It is deliberately
            looser than SPIN's training selection (all 12 limb joints for COCO, all 16 for MPII): a shard is a
            faithful conversion that a training filter can narrow but never widen, so reproduce SPIN with
            ``require_joints`` at conversion time, or filter when you load.
        require_joints: canonical joint names (core.joints.JOINT_NAMES) that must all be annotated;
            `SPIN_LIMB_JOINTS` reproduces SPIN's COCO selection.
        occluded_confidence: confidence given to joints annotated as occluded (COCO v=1, LSP flag 1, MPII
            is_visible=0). 1.0 as SPIN does: the annotator placed them; set 0 to train on visible joints only.
        out_of_image: what an annotated joint outside the image does: "reject" the person (default), "drop_joint"
            (confidence 0, its name recorded in extra["dropped_out_of_image"]), or "keep" it.
        out_of_image_margin_px: how far outside the image (0-based px; the image spans [-0.5, W - 0.5]) a joint
            may lie before it counts as outside. 2 px absorbs annotation-tool rounding at the border.
        min_box_side_px: smallest person box side (200·scale) in px; smaller boxes are degenerate.
        image_check: "exists" (is a file; size unknown unless the annotation states it), "header" (open with
            PIL, read the size, PIL's verify; cheap), or "decode" (decode every pixel: catches truncated files,
            costs a full decode per image).
        labels_dir: a folder of label PNGs (a parsing or part labels per person or per image, with their table:
            `pipelines.adapters.label_files`), absolute or relative to the dataset root. None: the dataset's
            ``fitloop_parts`` folder when it holds a table (the synthetic generator writes it), else none.
    """

    min_joints: int = MIN_FIT_JOINTS
    require_joints: tuple[str, ...] = ()
    occluded_confidence: float = 1.0
    out_of_image: OutOfImagePolicy = "reject"
    out_of_image_margin_px: float = 2.0
    min_box_side_px: float = 8.0
    image_check: ImageCheck = "header"
    labels_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.min_joints < 0:
            raise DatasetError(f"min_joints must be >= 0, got {self.min_joints}")
        try:
            indices(self.require_joints)
        except KeyError as err:
            raise DatasetError(f"require_joints: {err.args[0]}") from None
        if not 0.0 <= self.occluded_confidence <= 1.0:
            raise DatasetError(f"occluded_confidence must lie in [0, 1], got {self.occluded_confidence}")
        for name, allowed in (("out_of_image", OutOfImagePolicy), ("image_check", ImageCheck)):
            if getattr(self, name) not in typing.get_args(allowed):
                raise DatasetError(f"{name} must be one of {typing.get_args(allowed)}, got {getattr(self, name)!r}")


# SPIN keeps a COCO person only if all 12 limb joints (shoulders to ankles) are annotated (datasets/preprocess).
SPIN_LIMB_JOINTS: tuple[str, ...] = JOINT_NAMES[J24_OFFSET:J24_OFFSET + 12]
_ANNOTATED = slice(J24_OFFSET, NUM_JOINTS)  # slots that hold annotations; 0–24 hold OpenPose detections
DETECTED = slice(0, J24_OFFSET)             # the OpenPose slots: what an adapter of detector output counts


class Adapter(Protocol):
    """A dataset format: ``read`` yields one `PersonRecord` or `Reject` per person record it reads."""

    name: str                 # registry name; also the records' ``dataset`` (spin-npz: the file's dataset)
    splits: tuple[str, ...]   # the splits ``read`` accepts
    config_type: type         # a frozen dataclass extending CheckConfig

    def read(self, root: Path, split: str, config: Any) -> Iterator[Output]:
        ...


def check_split(adapter: Adapter, split: str) -> None:
    if split not in adapter.splits:
        raise DatasetError(f"{adapter.name} has no split {split!r}; its splits are {', '.join(adapter.splits)}")


def display_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies under it (POSIX), else absolute: for messages and lineage."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def resolve_under(root: Path, path: Path | None) -> Path | None:
    """An option path: as given when absolute, else relative to the dataset root."""
    if path is None:
        return None
    path = Path(path)
    return path if path.is_absolute() else root / path


def image_path_under(folder: PurePosixPath, name: Any) -> str:
    """``folder / name`` as a POSIX path relative to the image root, for an image ``name`` an annotation gives.

    ValueError when ``name`` is empty, absolute (``/x.jpg``, ``C:\\x.jpg``) or climbs out with ``..``: an
    annotation never makes fitloop read a file outside the image root.
    """
    text = str(name)
    path = PurePosixPath(text.replace("\\", "/"))
    if not text.strip() or path.is_absolute() or ".." in path.parts or PureWindowsPath(text).drive:
        raise ValueError(f"image name {text!r} is not a path inside the image folder (absolute, empty, or "
                         f"with '..')")
    return (folder / path).as_posix()


def unique_keys(outputs: Iterable[Output]) -> Iterator[Output]:
    """``outputs`` with every record whose key an earlier record of them already had turned into a
    ``duplicate_record`` reject naming both records: one key is one person, so a repeated id is an annotation
    error, and the first record is the one kept."""
    first: dict[str, str] = {}
    for item in outputs:
        if isinstance(item, PersonRecord):
            if item.key in first:
                item = Reject(dataset=item.dataset, split=item.split, source=item.source, record=item.record,
                              reason="duplicate_record", key=item.key, message=(
                                  f"its ids give key {item.key}, as {first[item.key]} already did; fix the ids in "
                                  f"{item.source}"))
            else:
                first[item.key] = f"{item.record} of {item.source}"
        yield item


def image_folder(root: Path, image_dir: Path) -> tuple[Path, PurePosixPath]:
    """(image_root, folder) such that image ``name`` is ``image_root / folder / name``; once per run.

    Relative to the dataset root when the image folder lies under it (so records read ``images/x.jpg``, as SPIN's
    do), else relative to the image folder itself.
    """
    relative = display_path(image_dir, root)
    if Path(relative).is_absolute():
        return image_dir, PurePosixPath(".")
    return root, PurePosixPath(relative)


def keypoint_box(keypoints_2d: np.ndarray, expand: float) -> tuple[np.ndarray, float] | None:
    """SPIN's box for keypoint datasets: the tight box of annotated joints, ``scale = expand·max(w, h)/200``.

    Args:
        keypoints_2d: (49, 3) px + confidence; only annotated slots (25–48) with confidence > 0 count.
        expand: 1.2 in SPIN.
    Returns:
        (center (2,) px, scale), or None when no joint is annotated.
    """
    return points_box(keypoints_2d[_ANNOTATED], expand)


def points_box(points: np.ndarray, expand: float) -> tuple[np.ndarray, float] | None:
    """SPIN's keypoint box over any (N, 3) px + confidence points: the tight box of those with confidence > 0,
    ``scale = expand·max(w, h)/200``; (center (2,) px, scale), or None when none is present."""
    present = points[points[:, 2] > 0, :2]
    if len(present) == 0:
        return None
    low, high = present.min(axis=0), present.max(axis=0)
    return (low + high) / 2.0, float(expand * (high - low).max() / 200.0)


def joint_confidence(annotated: np.ndarray, occluded: np.ndarray, occluded_confidence: float) -> np.ndarray:
    """Per-joint confidence: 1 for annotated visible joints, ``occluded_confidence`` for annotated occluded
    ones, 0 for joints not annotated. Both masks are boolean (J,)."""
    return np.where(annotated, np.where(occluded, occluded_confidence, 1.0), 0.0)


def occluded_names(occluded: np.ndarray, dataset_joints: Sequence[str]) -> list[str]:
    """Canonical names of the joints flagged occluded, for ``extra["occluded"]``."""
    return [name for name, flag in zip(dataset_joints, occluded) if flag]


@dataclass
class _ImageInfo:
    size: tuple[int, int] | None
    reason: str = ""
    message: str = ""
    frames: int | None = None   # a video's frame count (`shards.frames.video_info`)


class RecordBuilder:
    """Turns an adapter's candidate persons into records or rejects for one (dataset, split, config) run.

    It caches each image's check, so a multi-person image is opened once.
    """

    def __init__(self, dataset: str, split: str, config: CheckConfig, annotated: slice = _ANNOTATED, *,
                 root: Path | None = None) -> None:
        """``annotated``: the canonical slots that hold this source's keypoints, for ``min_joints`` and the image
        bounds: the J24 annotations (25–48) by default, `DETECTED` (0–24) for OpenPose output. ``root``: the
        dataset root a relative ``config.labels_dir`` lies under. DatasetError when the label folder's table
        cannot be read."""
        self.dataset = dataset
        self.split = split
        self.config = config
        self.annotated = annotated
        self._required = indices(config.require_joints)
        self._images: dict[Path, _ImageInfo] = {}
        self.labels: LabelFolder | None = None
        folder = resolve_under(Path(root or "."), config.labels_dir or DEFAULT_LABELS_DIR)
        if config.labels_dir is not None or (root is not None and (folder / LABELS_FILE).is_file()):
            try:
                self.labels = LabelFolder.open(folder)
            except ValueError as err:
                raise DatasetError(str(err)) from None

    def reject(self, source: str, record: str, reason: str, message: str, key: str = "") -> Reject:
        return Reject(dataset=self.dataset, split=self.split, source=source, record=record, reason=reason,
                      message=message, key=key)

    def person(self, *, key: str, source: str, record: str, image_root: Path, image_path: str,
               center: np.ndarray | None, scale: float | None, keypoints_2d: np.ndarray,
               expected_size: tuple[int, int] | None = None, joints_3d: np.ndarray | None = None,
               smpl_pose: np.ndarray | None = None, smpl_betas: np.ndarray | None = None,
               has_smpl: bool = False, intrinsics: Intrinsics | None = None,
               wholebody: np.ndarray | None = None, mask: LabelMap | None = None,
               extra: Mapping[str, Any] | None = None, image_frame: int | None = None) -> Output:
        """Check one candidate (module docstring) and build its record.

        Args:
            keypoints_2d: (49, 3) x, y in 0-based px of the original image + confidence; not modified.
            center: (2,) px or None when the source gives no box; scale: box side / 200.
            expected_size: (width, height) the annotation states, checked against the file when it is opened.
            intrinsics: the dataset's camera of the image (source "dataset"), when it has calibrated ones.
            wholebody: (161, 3) whole-body keypoints (`core.wholebody`), px + confidence, or None; not modified.
            image_frame: the frame of a video ``image_path`` (`shards.frames`), or None for an image file; a frame
                the video does not have is a ``missing_image`` reject.
            mask: the person's mask from the annotation (`shards.masks.LabelMap`), or None. A parsing or part
                labels (and a mask where this is None) come from ``config.labels_dir`` when it holds a file for the
                person; a file there that cannot be used is a ``malformed_annotation`` reject naming it.
            The rest: as in `PersonRecord`.
        """
        where = dict(source=source, record=record, key=key)
        kp = np.array(keypoints_2d, dtype=np.float64)  # our copy: the caller's array is never touched
        if kp.shape != (NUM_JOINTS, 3):
            raise ValueError(f"{self.dataset} adapter bug: keypoints_2d has shape {kp.shape}, not (49, 3)")
        wb = None if wholebody is None else np.array(wholebody, dtype=np.float64)
        if wb is not None and wb.shape != (NUM_WHOLEBODY, 3):
            raise ValueError(f"{self.dataset} adapter bug: wholebody has shape {wb.shape}, not (161, 3)")
        center = None if center is None else np.asarray(center, dtype=np.float64)
        problem = _non_finite(kp, center, scale, joints_3d, smpl_pose, smpl_betas, wb)
        if problem:
            return self.reject(**where, reason="nan_keypoints", message=problem)
        kp[kp[:, 2] <= 0] = 0.0  # absent joints are all zeros, whatever placeholder the source used
        if wb is not None:
            wb[wb[:, 2] <= 0] = 0.0
        problem = self._joint_problem(kp)
        if problem:
            return self.reject(**where, reason=problem[0], message=problem[1])
        if center is None or scale is None:
            return self.reject(**where, reason="degenerate_box", message="the record gives no person box")
        if 200.0 * scale < self.config.min_box_side_px:
            return self.reject(**where, reason="degenerate_box", message=(
                f"box side {200.0 * scale:.2f} px < min_box_side_px={self.config.min_box_side_px}"))

        info = self._image(image_root / image_path, expected_size, image_frame)
        if info.reason:
            return self.reject(source=image_path, record=record, key=key, reason=info.reason, message=info.message)
        extra = dict(extra or {})
        size = info.size or expected_size
        if size is not None:
            problem = box_problem(center, 200.0 * scale, size)
            if problem:
                return self.reject(**where, reason="degenerate_box", message=problem)
            outside = _outside(kp, size, self.config.out_of_image_margin_px, self.annotated)
            wb_outside = (np.zeros(0, bool) if wb is None
                          else _outside(wb, size, self.config.out_of_image_margin_px, slice(None)))
            if (outside.any() or wb_outside.any()) and self.config.out_of_image == "reject":
                points = "; ".join([f"{JOINT_NAMES[i]} ({kp[i, 0]:.1f}, {kp[i, 1]:.1f})"
                                    for i in np.flatnonzero(outside)]
                                   + [f"whole-body {WHOLEBODY_NAMES[i]} ({wb[i, 0]:.1f}, {wb[i, 1]:.1f})"
                                      for i in np.flatnonzero(wb_outside)])
                return self.reject(**where, reason="keypoints_out_of_image", message=(
                    f"outside the {size[0]}x{size[1]} image by more than {self.config.out_of_image_margin_px} px: "
                    f"{points}"))
            if wb_outside.any() and self.config.out_of_image == "drop_joint":
                wb[wb_outside] = 0.0
                extra["dropped_out_of_image_wholebody"] = [WHOLEBODY_NAMES[i] for i in np.flatnonzero(wb_outside)]
            if outside.any() and self.config.out_of_image == "drop_joint":
                kp[outside] = 0.0
                extra["dropped_out_of_image"] = [JOINT_NAMES[i] for i in np.flatnonzero(outside)]
                problem = self._joint_problem(kp)
                if problem:
                    return self.reject(**where, reason=problem[0], message=(
                        f"{problem[1]}, once the joints outside the image were dropped"))

        labels: dict[str, LabelMap | None] = {}
        if self.labels is not None:
            try:
                found, mask, label_extra = self.labels.labels_for(key, image_path, mask, size)
            except MaskError as err:
                return self.reject(**where, reason="malformed_annotation", message=str(err))
            labels[self.labels.kind] = found
            extra.update(label_extra)
        if mask is not None and size is not None and mask.size != (size[1], size[0]):
            return self.reject(**where, reason="image_size_mismatch", message=(
                f"its mask is {mask.size[1]}x{mask.size[0]} px, the image {size[0]}x{size[1]}"))
        try:  # the sample's json keeps it, finite numbers only
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as err:
            return self.reject(**where, reason="malformed_annotation", message=f"its metadata {extra}: {err}")
        return PersonRecord(
            dataset=self.dataset, split=self.split, key=key, source=source, record=record,
            image_path=image_path, image_frame=image_frame, image_root=image_root, image_size=info.size,
            center=center, scale=scale,
            keypoints_2d=kp, joints_3d=joints_3d, smpl_pose=smpl_pose, smpl_betas=smpl_betas, has_smpl=has_smpl,
            intrinsics=intrinsics, wholebody=wb, mask=mask, parts=labels.get("parts"),
            parsing=labels.get("parsing"), extra=extra)

    def _joint_problem(self, kp: np.ndarray) -> tuple[str, str] | None:
        """(reason, message) when the annotated joints fail ``min_joints`` or ``require_joints``, else None."""
        count = int((kp[self.annotated, 2] > 0).sum())
        if count < self.config.min_joints:
            return "too_few_joints", f"{count} annotated joints, fewer than min_joints={self.config.min_joints}"
        missing = [JOINT_NAMES[i] for i in self._required if kp[i, 2] <= 0]
        if missing:
            return "missing_required_joints", f"required joints not annotated: {', '.join(missing)}"
        return None

    def _image(self, path: Path, expected_size: tuple[int, int] | None, frame: int | None = None) -> _ImageInfo:
        """The image's size, or why it fails: the file is checked once (``image_check``), the size the
        annotation states on every call (two annotations of one image may disagree); for a video's ``frame``, the
        video once (its frame count, by decoding) and the frame on every call."""
        if path not in self._images:
            self._images[path] = self._check_image(path) if frame is None else self._check_video(path)
        info = self._images[path]
        if not info.reason and frame is not None and info.frames is not None and frame >= info.frames:
            return _ImageInfo(None, "missing_image", f"{path.name} has {info.frames} frames (0-{info.frames - 1}), "
                                                     f"no frame {frame}")
        if not info.reason and info.size is not None and expected_size is not None \
                and tuple(expected_size) != info.size:
            return _ImageInfo(None, "image_size_mismatch",
                              f"{path.name} is {info.size[0]}x{info.size[1]}, the annotation says "
                              f"{expected_size[0]}x{expected_size[1]}")
        return info

    def _check_video(self, path: Path) -> _ImageInfo:
        """A video's size and frame count (the container's, `shards.frames.video_info`: a stated size of 0 px is
        refused there), and that its first frame decodes. Its later frames are decoded at crop time only (a frame
        that does not decode then is a reject there); a frame whose data is damaged may decode to garbage without a
        word from OpenCV (docs/datasets.md, Human3.6M)."""
        if not path.is_file():
            return _ImageInfo(None, "missing_image", f"no video file at {path}")
        if self.config.image_check == "exists":
            return _ImageInfo(None)
        try:
            video = video_info(path)
            with VideoFrames(path) as frames:
                frames.frame(0)
        except VideoError as err:
            return _ImageInfo(None, "corrupt_image", str(err))
        return _ImageInfo(video.size, frames=video.frames)

    def _check_image(self, path: Path) -> _ImageInfo:
        if not path.is_file():
            return _ImageInfo(None, "missing_image", f"no image file at {path}")
        if self.config.image_check == "exists":
            return _ImageInfo(None)
        try:
            with Image.open(path) as image:
                size = image.size
                if self.config.image_check == "decode":
                    image.load()
                else:
                    image.verify()
        except Exception as err:  # PIL raises many types for bad bytes (UnidentifiedImageError, OSError, ...)
            return _ImageInfo(None, "corrupt_image", f"{path.name}: {type(err).__name__}: {err}")
        return _ImageInfo((int(size[0]), int(size[1])))


def _non_finite(kp: np.ndarray, center: np.ndarray | None, scale: float | None, joints_3d: np.ndarray | None,
                smpl_pose: np.ndarray | None, smpl_betas: np.ndarray | None,
                wholebody: np.ndarray | None = None) -> str:
    """What is NaN or infinite among the values a record keeps ("" when nothing is); absent joints may be."""
    def bad_joints(joints: np.ndarray, names: Sequence[str] = JOINT_NAMES) -> list[str]:
        conf = joints[:, -1]
        bad = ~np.isfinite(conf) | ((conf > 0) & ~np.isfinite(joints[:, :-1]).all(axis=1))
        return [names[i] for i in np.flatnonzero(bad)]

    problems = []
    kp = _as_stored(kp)
    joints_3d = None if joints_3d is None else _as_stored(joints_3d)
    center = None if center is None else _as_stored(center)
    scale = None if scale is None else float(_as_stored(np.float64(200.0 * scale)) / 200.0)
    smpl_pose = None if smpl_pose is None else _as_stored(smpl_pose)
    smpl_betas = None if smpl_betas is None else _as_stored(smpl_betas)
    for what, joints in (("2D keypoints", kp), ("3D joints", joints_3d)):
        names = [] if joints is None else bad_joints(np.asarray(joints, dtype=np.float64))
        if names:
            problems.append(f"{what} {', '.join(names)}")
    if wholebody is not None:
        names = bad_joints(_as_stored(wholebody), WHOLEBODY_NAMES)
        if names:
            problems.append(f"whole-body keypoints {', '.join(names)}")
    if (center is not None and not np.isfinite(center).all()) or (scale is not None and not np.isfinite(scale)):
        problems.append(f"box center={None if center is None else center.tolist()}, scale={scale}")
    for name, value in (("SMPL pose", smpl_pose), ("SMPL betas", smpl_betas)):
        if value is not None and not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            problems.append(name)
    return "non-finite (or beyond float32, as shards store them) " + "; ".join(problems) if problems else ""


def _as_stored(values: Any) -> np.ndarray:
    """``values`` as the float32 a shard stores them in, back in float64: what overflows float32 is infinite."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)



def _outside(kp: np.ndarray, size: tuple[int, int], margin: float, annotated: slice = _ANNOTATED) -> np.ndarray:
    """(J,) bool: present points of the ``annotated`` slots (49-joint: 25–48 by default) farther than ``margin``
    px outside the image."""
    low, high = -0.5 - margin, np.array(size, dtype=np.float64) - 0.5 + margin
    outside = (kp[:, 2] > 0) & ((kp[:, :2] < low) | (kp[:, :2] > high)).any(axis=1)
    counted = np.zeros(len(kp), dtype=bool)
    counted[annotated] = True  # detections are not annotations (unless they are all the source has)
    return outside & counted


# --- Options from the command line or a flow -> a typed config ---------------------------------------------------

def make_config(config_type: type, options: Mapping[str, Any]) -> Any:
    """Build ``config_type`` from ``options``, converting strings (as a CLI passes them) to the field types.

    Unknown option names raise `DatasetError` listing the known ones.
    """
    hints = typing.get_type_hints(config_type)
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise DatasetError(f"unknown option(s) {', '.join(unknown)} for {config_type.__name__}; "
                           f"known: {', '.join(sorted(known))}")
    try:
        return config_type(**{name: _coerce(value, hints[name], name) for name, value in options.items()})
    except (TypeError, ValueError, KeyError) as err:
        raise DatasetError(f"bad options for {config_type.__name__}: {err}") from None


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() == "none" and type(None) in args):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), name)
    if origin is Literal:
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        return tuple(_coerce(item.strip() if isinstance(item, str) else item, args[0], name)
                     for item in items if item != "")
    if hint is Path:
        return Path(value)
    if hint is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name}: {value!r} is not a boolean")
        return value.lower() in ("true", "1", "yes")
    if hint in (int, float) and isinstance(value, str):
        return hint(value)
    return value
