"""MPII Human Pose, from any of the three files people have: the release .mat, the hourglass .h5, the json.

Formats (all MATLAB 1-based pixels; fitloop subtracts 1):

* **Release struct** ``mpii_human_pose_v1_u12_1.mat``: ``RELEASE.annolist(i).image.name``,
  ``.annorect(r)`` with ``objpos``, ``scale`` (person height / 200), head box ``x1 y1 x2 y2`` and
  ``annopoints.point(k).{x, y, id, is_visible}``; ``RELEASE.img_train(i)``. Evaluation kits ship subsets of it
  (``detections.mat``: ``annolist(j)`` holds one person, ``RELEASE_img_index(j)`` / ``RELEASE_person_index(j)``
  say which, and there are no image names: give ``names_file``).
* **Stacked-hourglass HDF5** ``train.h5`` / ``valid.h5`` (princeton-vl/pose-hg-train; SPIN reads train.h5):
  ``imgname``, ``part`` (N, 16, 2), ``visible``, ``center``, ``scale``, ``index`` / ``person`` (0-based image and
  annorect indices), ``normalize``. Its box is the release box moved and enlarged: ``center.y = objpos.y + 15·s``,
  ``scale = 1.25·s``. Its joint coordinates are the release's truncated to integers (so < 1 px off);
  unannotated joints are (0, 0).
* **mmpose / HRNet json** ``mpii_train.json`` / ``mpii_val.json`` (HRNet: ``train.json`` / ``valid.json``):
  a list of ``{image, joints (16, 2), joints_vis (16), center, scale}`` with the release's box and joints;
  ``joints_vis`` says annotated (not visible), unannotated joints are (-1, -1).

**Box convention.** fitloop stores every MPII box in the hourglass/SPIN convention (``objpos + (0, 15·s)``,
``1.25·s``): that is the box SPIN crops MPII with, and the release's own box (side = person height, centred on a
rough torso point) cuts off feet and heads. Release and json boxes are converted; 0-based like everything else.

**Occlusion.** The release and the h5 flag occluded joints (is_visible = 0); they get ``occluded_confidence``
and are listed in ``extra["occluded"]``. The json does not say.

**Splits.** "train" / "val" are the pose-hg split every paper uses (22,246 / 2,958 people, both inside the
release's img_train): train.h5/valid.h5, mpii_train/val.json; from the release .mat they need ``split_file`` (or a
train.h5/valid.h5 found beside it) to pick the people. "trainval" is every person in img_train images (.mat only).
MPII's test annotations are withheld, so there is no test split.

**Keys** ``mpii/<image stem>_p<annorect index, 0-based>``, the same from the .mat and the .h5. The json has no
person index, so its keys are ``mpii/<image stem>_n<k>``: the k-th person of that image in file order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import h5py
import numpy as np
import scipy.io

from core.joints import MPII_JOINTS, to_canonical
from pipelines.adapters.base import (
    PARSER_ERRORS,
    AnnotationFileError,
    CheckConfig,
    DatasetError,
    Output,
    RecordBuilder,
    check_split,
    display_path,
    image_folder,
    image_path_under,
    joint_confidence,
    occluded_names,
    resolve_under,
)
from shards.schema import make_key

NUM_MPII_JOINTS = len(MPII_JOINTS)  # 16
MpiiFormat = Literal["auto", "mat", "h5", "json"]

# Where each format's files are looked for (under the root), and their usual names per split.
ANNOTATION_DIRS = (".", "annot", "annotations")
RELEASE_MAT = "mpii_human_pose_v1_u12_1.mat"
DEFAULT_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "mat": {"train": (RELEASE_MAT,), "val": (RELEASE_MAT,), "trainval": (RELEASE_MAT,)},
    "h5": {"train": ("train.h5",), "val": ("valid.h5",)},
    "json": {"train": ("mpii_train.json", "train.json"), "val": ("mpii_val.json", "valid.json")},
}
SUFFIX_FORMAT = {".mat": "mat", ".h5": "h5", ".json": "json"}

# The hourglass (and SPIN) box from the release's: y shifted down by 15·scale px, side enlarged 1.25x.
HG_CENTER_SHIFT_Y = 15.0
HG_SCALE_FACTOR = 1.25
MATLAB_OFFSET = 1.0  # 1-based MATLAB pixels -> 0-based


@dataclass(frozen=True, kw_only=True)
class MpiiConfig(CheckConfig):
    """Options of the MPII adapter (the checks: `CheckConfig`).

    Attributes:
        format: which file to look for under the root when ``annotation_file`` is not given: "mat", "h5",
            "json", or "auto" (the first found of the release .mat, the .h5, the json: the .mat has the most:
            float joints, occlusion, head boxes).
        annotation_file: the file to read, absolute or relative to the root; its suffix says the format.
        image_dir: folder of the images. Default ``<root>/images``.
        names_file: for a release subset without image names (``detections.mat``): a file that names the
            release's images, the release .mat itself or a pose-hg .h5 (``index`` → ``imgname``).
        split_file: for "train"/"val" from the full release .mat: the pose-hg .h5 of that split, whose
            (``index``, ``person``) pairs pick the people. Default: ``train.h5``/``valid.h5`` found under the root.
    """

    format: MpiiFormat = "auto"
    annotation_file: Path | None = None
    image_dir: Path | None = None
    names_file: Path | None = None
    split_file: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format not in ("auto", "mat", "h5", "json"):
            raise DatasetError(f"format must be auto, mat, h5 or json, got {self.format!r}")


@dataclass
class _Person:
    """One MPII person, normalised: 0-based px, hourglass/SPIN box."""

    record: str
    image_name: str
    person: int | None            # annorect index (0-based) where the format has it
    joints: np.ndarray            # (16, 2) px
    annotated: np.ndarray         # (16,) bool
    occluded: np.ndarray          # (16,) bool
    center: np.ndarray | None     # (2,) px
    scale: float | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Unreadable:
    """A record that a reader could not parse, and why (a whole file raises `AnnotationFileError`)."""

    record: str
    message: str


class MpiiAdapter:
    """MPII Human Pose from the release .mat, the hourglass .h5 or the mmpose/HRNet json (module docstring)."""

    name = "mpii"
    splits = ("train", "val", "trainval")
    config_type = MpiiConfig

    def read(self, root: Path, split: str, config: MpiiConfig | None = None) -> Iterator[Output]:
        """Yield one `PersonRecord` or `Reject` per person of the chosen file and split, in file order."""
        config = config or MpiiConfig()
        check_split(self, split)
        root = Path(root)
        path, fmt = self._annotation_file(root, split, config)
        if fmt != "mat" and split == "trainval":
            raise DatasetError("split 'trainval' is read from the release .mat only; read 'train' and 'val'")
        builder = RecordBuilder(self.name, split, config, root=root)
        source = display_path(path, root)
        image_root, image_dir = image_folder(root, resolve_under(root, config.image_dir) or root / "images")
        if fmt == "mat":
            people = _read_mat(path, split, root, config)
        elif fmt == "h5":
            people = _read_h5(path)
        else:
            people = _read_json(path)

        seen: dict[str, int] = {}  # persons per image so far, for keys of formats without a person index
        for person in people:
            if isinstance(person, _Unreadable):
                yield builder.reject(source, person.record, "malformed_annotation", person.message)
                continue
            try:
                image_path = image_path_under(image_dir, person.image_name)
            except ValueError as err:
                yield builder.reject(source, person.record, "malformed_annotation", str(err))
                continue
            stem = Path(person.image_name).stem
            if person.person is not None:
                key = make_key(self.name, stem, f"p{person.person}")
            else:
                key = make_key(self.name, stem, f"n{seen.get(stem, 0)}")
                seen[stem] = seen.get(stem, 0) + 1
            conf = joint_confidence(person.annotated, person.occluded, config.occluded_confidence)
            joints = np.where(person.annotated[:, None], person.joints, 0.0)
            extra = {"image": person.image_name, "person": person.person,
                     "occluded": occluded_names(person.occluded & person.annotated, MPII_JOINTS), **person.extra}
            yield builder.person(
                key=key, source=source, record=person.record, image_root=image_root,
                image_path=image_path,
                center=person.center, scale=person.scale,
                keypoints_2d=to_canonical(np.column_stack([joints, conf]), "mpii"), extra=extra)

    def _annotation_file(self, root: Path, split: str, config: MpiiConfig) -> tuple[Path, str]:
        """The annotation file to read and its format: given, or the first found under the root."""
        if config.annotation_file is not None:
            path = resolve_under(root, config.annotation_file)
            fmt = SUFFIX_FORMAT.get(path.suffix.lower())
            if fmt is None or config.format not in ("auto", fmt):
                raise DatasetError(f"{path}: expected a .mat, .h5 or .json file"
                                   + ("" if config.format == "auto" else f" of format {config.format}"))
            if not path.is_file():
                raise DatasetError(f"MPII annotation file {path} does not exist")
            return path, fmt
        formats = ("mat", "h5", "json") if config.format == "auto" else (config.format,)
        tried = []
        for fmt in formats:
            for name in DEFAULT_FILES[fmt].get(split, ()):
                for folder in ANNOTATION_DIRS:
                    path = root / folder / name
                    tried.append(str(path))
                    if path.is_file():
                        return path, fmt
        raise DatasetError(f"no MPII annotation file for split {split!r} under {root}; looked for "
                           f"{', '.join(tried)}. Pass annotation_file")


# --- Readers: each yields a _Person per person, or _Unreadable for a record it cannot parse; a file it cannot ---
# --- read at all raises AnnotationFileError when the first person is asked for -----------------------------------

def _read_h5(path: Path) -> Iterator[_Person | _Unreadable]:
    """People of a pose-hg HDF5 file, in row order."""
    try:
        with h5py.File(path, "r") as h5:
            columns = {name: h5[name][()] for name in h5.keys()}
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in columns["imgname"]]
        part, center, scale = columns["part"], columns["center"], columns["scale"]
        count = len(names)
        if part.shape != (count, NUM_MPII_JOINTS, 2) or center.shape != (count, 2) or scale.shape != (count,):
            raise ValueError(f"shapes part {part.shape}, center {center.shape}, scale {scale.shape} for "
                             f"{count} names; expected (N, 16, 2), (N, 2), (N,)")
    except PARSER_ERRORS as err:
        raise AnnotationFileError(path, "a pose-hg MPII .h5", err) from None
    visible = columns.get("visible")
    for row in range(count):
        annotated = ~np.all(part[row] == 0, axis=1)  # (0, 0) marks an unannotated joint
        occluded = np.zeros(NUM_MPII_JOINTS, bool) if visible is None else annotated & (visible[row] == 0)
        extra: dict[str, Any] = {}
        if "index" in columns:
            extra["release_image_index"] = int(columns["index"][row]) + 1  # 1-based, as in the release
        if "normalize" in columns:
            extra["hg_normalize"] = float(columns["normalize"][row])
        yield _Person(
            record=f"row {row} ({names[row]})", image_name=names[row],
            person=int(columns["person"][row]) if "person" in columns else None,
            joints=part[row] - MATLAB_OFFSET, annotated=annotated, occluded=occluded,
            center=center[row] - MATLAB_OFFSET, scale=float(scale[row]), extra=extra)


def _read_json(path: Path) -> Iterator[_Person | _Unreadable]:
    """People of an mmpose/HRNet MPII json, in list order."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise ValueError(f"the top level is a {type(entries).__name__}, not a list of people")
    except (OSError, ValueError) as err:
        raise AnnotationFileError(path, "an mmpose/HRNet MPII json", err) from None
    for i, entry in enumerate(entries):
        try:
            image_name = str(entry["image"])
            joints = np.asarray(entry["joints"], dtype=np.float64).reshape(NUM_MPII_JOINTS, 2)
            annotated = np.asarray(entry["joints_vis"], dtype=np.float64).reshape(NUM_MPII_JOINTS) > 0
            center, scale = _release_box(np.asarray(entry["center"], dtype=np.float64), float(entry["scale"]))
        except (KeyError, TypeError, ValueError) as err:
            yield _Unreadable(f"entry {i}", f"cannot read the entry: {type(err).__name__}: {err}")
            continue
        yield _Person(record=f"entry {i} ({image_name})", image_name=image_name, person=None,
                      joints=joints - MATLAB_OFFSET, annotated=annotated,
                      occluded=np.zeros(NUM_MPII_JOINTS, bool), center=center, scale=scale)


def _read_mat(path: Path, split: str, root: Path, config: MpiiConfig) -> Iterator[_Person | _Unreadable]:
    """People of the release struct (``RELEASE``) or of a release subset (``annolist`` + ``RELEASE_*_index``)."""
    try:
        mat = _load_mat(path)
        if "RELEASE" in mat:
            release = mat["RELEASE"]
            annolist, img_train = _items(release.annolist), np.atleast_1d(release.img_train).astype(int)
            subset = None
        elif {"annolist", "RELEASE_img_index", "RELEASE_person_index"} <= set(mat):
            annolist = _items(mat["annolist"])
            subset = (np.atleast_1d(mat["RELEASE_img_index"]).astype(int),
                      np.atleast_1d(mat["RELEASE_person_index"]).astype(int))
        else:
            raise ValueError(f"neither a RELEASE struct nor annolist + RELEASE_img_index/RELEASE_person_index "
                             f"(variables: {sorted(k for k in mat if not k.startswith('__'))})")
    except PARSER_ERRORS as err:
        raise AnnotationFileError(path, "an MPII release .mat", err) from None

    if subset is not None:
        yield from _subset_people(path, annolist, *subset, root, config)
        return
    if split == "trainval":
        chosen = None
    else:
        split_file = resolve_under(root, config.split_file) or _find_split_file(root, split)
        chosen = _hg_people(split_file)
    for i, (annotation, train) in enumerate(zip(annolist, img_train)):
        if not train:
            continue
        rects = _items(getattr(annotation, "annorect", None))
        try:
            image_name = str(annotation.image.name)
        except AttributeError:
            yield from (_Unreadable(f"annolist({i + 1}).annorect({r + 1})", "annolist entry has no image.name")
                        for r in range(len(rects)) if chosen is None or (i, r) in chosen)
            continue
        for r, rect in enumerate(rects):
            if chosen is None or (i, r) in chosen:
                yield _release_person(rect, f"annolist({i + 1}).annorect({r + 1})", image_name, r)


def _subset_people(path: Path, annolist: list[Any], image_index: np.ndarray, person_index: np.ndarray, root: Path,
                   config: MpiiConfig) -> Iterator[_Person | _Unreadable]:
    """People of a release subset (the file at ``path``): annolist(j) holds one person, RELEASE_*_index(j)
    (1-based) say which."""
    names_file = resolve_under(root, config.names_file)
    if names_file is None:
        raise DatasetError(f"{path}: an MPII release subset without image names (RELEASE_img_index only); pass "
                           f"names_file: the release mpii_human_pose_v1_u12_1.mat or a pose-hg .h5")
    names = _image_names(names_file)
    for j, annotation in enumerate(annolist):
        image, person = int(image_index[j]), int(person_index[j])
        record = f"annolist({j + 1}) (RELEASE image {image}, person {person})"
        if image not in names:
            yield _Unreadable(record, f"RELEASE image {image} is not named in {names_file}")
            continue
        rects = _items(getattr(annotation, "annorect", None))
        if len(rects) != 1:
            yield _Unreadable(record, f"expected one annorect, found {len(rects)}")
            continue
        yield _release_person(rects[0], record, names[image], person - 1)


def _release_person(rect: Any, record: str, image_name: str, person: int) -> _Person | _Unreadable:
    """One ``annorect`` as a person: joints from ``annopoints.point``, the box from ``objpos``/``scale``."""
    joints = np.zeros((NUM_MPII_JOINTS, 2))
    annotated = np.zeros(NUM_MPII_JOINTS, bool)
    occluded = np.zeros(NUM_MPII_JOINTS, bool)
    try:
        annopoints = getattr(rect, "annopoints", None)
        for point in _items(getattr(annopoints, "point", None)):
            joint = int(_number(point.id))
            if not 0 <= joint < NUM_MPII_JOINTS:
                raise ValueError(f"joint id {joint} outside 0..15")
            joints[joint] = _number(point.x), _number(point.y)
            annotated[joint] = True
            visible = _number(getattr(point, "is_visible", None))
            occluded[joint] = visible is not None and visible == 0  # empty is_visible: not stated
        objpos, scale = getattr(rect, "objpos", None), _number(getattr(rect, "scale", None))
        center = None
        if objpos is not None and not isinstance(objpos, np.ndarray) and scale is not None:
            center, scale = _release_box(np.array([_number(objpos.x), _number(objpos.y)], float), scale)
        extra: dict[str, Any] = {}
        if all(hasattr(rect, name) for name in ("x1", "y1", "x2", "y2")):
            extra["head_box"] = [_number(getattr(rect, name)) - MATLAB_OFFSET for name in ("x1", "y1", "x2", "y2")]
    except (TypeError, ValueError, AttributeError) as err:
        return _Unreadable(record, f"cannot read the annorect: {type(err).__name__}: {err}")
    return _Person(record=record, image_name=image_name, person=person, joints=joints - MATLAB_OFFSET,
                   annotated=annotated, occluded=occluded, center=center, scale=scale, extra=extra)


# --- Helpers -------------------------------------------------------------------------------------------------

def _release_box(objpos: np.ndarray, scale: float) -> tuple[np.ndarray | None, float | None]:
    """The release's (objpos, scale), 1-based, as fitloop's box: hourglass/SPIN convention, 0-based px.

    A centre of (-1, -1) is the json's "no box" and gives (None, None).
    """
    if objpos.shape != (2,):
        raise ValueError(f"center has shape {objpos.shape}, expected (2,)")
    if np.all(objpos == -1):
        return None, None
    center = objpos - MATLAB_OFFSET + np.array([0.0, HG_CENTER_SHIFT_Y * scale])
    return center, HG_SCALE_FACTOR * scale


def _load_mat(path: Path) -> dict[str, Any]:
    return scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)


def _items(value: Any) -> list[Any]:
    """A MATLAB struct array as loaded with squeeze_me: one struct, an array of them, or empty -> a list."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return list(value.flat)
    return [value]


def _number(value: Any) -> float | None:
    """A MATLAB scalar as loaded: a number, a string such as '1', or an empty array (None)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return None
        value = value.flat[0]
    return float(value)


def _image_names(path: Path) -> dict[int, str]:
    """Release image index (1-based) -> image name, from the release .mat or a pose-hg .h5."""
    if not path.is_file():
        raise DatasetError(f"names_file {path} does not exist")
    try:
        if path.suffix.lower() == ".h5":
            with h5py.File(path, "r") as h5:
                index, names = h5["index"][()], h5["imgname"][()]
            return {int(i) + 1: (n.decode() if isinstance(n, bytes) else str(n)) for i, n in zip(index, names)}
        annolist = _items(_load_mat(path)["RELEASE"].annolist)
        return {i + 1: str(a.image.name) for i, a in enumerate(annolist)}
    except PARSER_ERRORS as err:
        raise DatasetError(f"names_file {path} names no MPII images ({type(err).__name__}: {err}); expected "
                           f"the release .mat or a pose-hg .h5 with index and imgname") from None


def _hg_people(path: Path) -> set[tuple[int, int]]:
    """(image index, annorect index), both 0-based, of the people in a pose-hg .h5."""
    if not path.is_file():
        raise DatasetError(f"split_file {path} does not exist")
    try:
        with h5py.File(path, "r") as h5:
            return {(int(i), int(p)) for i, p in zip(h5["index"][()], h5["person"][()])}
    except PARSER_ERRORS as err:
        raise DatasetError(f"split_file {path} is not a pose-hg .h5 with index and person: {err}") from None


def _find_split_file(root: Path, split: str) -> Path:
    for name in DEFAULT_FILES["h5"][split]:
        for folder in ANNOTATION_DIRS:
            if (root / folder / name).is_file():
                return root / folder / name
    raise DatasetError(f"the release .mat does not mark the {split!r} people of the pose-hg split that "
                       f"papers use; pass split_file (pose-hg {DEFAULT_FILES['h5'][split][0]}) or read "
                       f"split 'trainval'")
