"""OpenPose keypoint files (``openpose --image_dir images --write_json keypoints [--hand --face]``): one JSON file
per image, one record per detected person.

Format (OpenPose's ``--write_json`` output, `OPENPOSE_JSON_SUFFIX`): ``<image stem>_keypoints.json`` holding
``{"version": ..., "people": [{"pose_keypoints_2d": [...], "face_keypoints_2d": [...],
"hand_left_keypoints_2d": [...], "hand_right_keypoints_2d": [...], ...}, ...]}``; each array is flat ``x, y, c``
triples in the image's pixels (0-based), ``c`` the detector's confidence and 0 for a point not found. The body is
BODY_25 (75 values), the face 70 points (68 iBUG + 2 pupils), each hand 21; an array OpenPose did not compute
(no ``--face``/``--hand``) is empty. The field -> point names table is `core.wholebody.OPENPOSE_JSON_FIELDS`.
OpenPose before 1.3 wrote the same arrays without ``_2d`` (``pose_keypoints``, ``face_keypoints``,
``hand_left_keypoints``, ``hand_right_keypoints``: its 1.3.0 release notes, "Renamed `*_keypoints` by
`*_keypoints_2d`"); they are read alike (`PRE_1_3_FIELDS`). Its default body model was then COCO's 18 points (54
values), which is rejected as any body other than BODY_25.

Each person becomes a record with

* the 49-joint keypoints: BODY_25 in the OpenPose slots 0–24 with their raw confidences, as SPIN keeps OpenPose
  detections; since detections are all this source has, they are what ``min_joints``, ``require_joints`` and
  the image bounds count (``require_joints`` then names ``OP ...`` joints);
* the 161-point whole-body keypoints: body, hands, face and pupils, raw confidences (0 = absent);
* a box: SPIN's keypoint box (`points_box`) around every detected point, ``bbox_expand`` × its longer side.

Layout: the split ``S`` reads ``<root>/S/keypoints/*_keypoints.json`` with images in ``<root>/S/images``; the
``train`` split also reads a flat ``<root>/keypoints`` + ``<root>/images`` when ``<root>/train`` is not there (a
folder as OpenPose's users have it). ``json_dir`` and ``image_dir`` override both (then say the split). A JSON
file's image is the file of the same stem in the image folder (`IMAGE_SUFFIXES`, in that order).

Records and rejects: the record is ``<json file> person <i>`` (OpenPose's order in ``people``); a file that is not
OpenPose JSON (unparseable, no ``people`` list) is one ``malformed_annotation`` reject for the whole file (record
``*``); a person whose array has the wrong length (an 18-point COCO-model body is 54 values, not BODY_25's 75)
or non-numbers is a ``malformed_annotation`` reject naming the field; a NaN among detected points a
``nan_keypoints`` one. Keys: ``openpose/<image stem>_p<i>`` (`openpose_key`: a stem's characters that a key cannot
hold are escaped, not merged, so ``clip.0001`` and ``clip_0001`` keep apart).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from core.joints import to_canonical
from core.wholebody import OPENPOSE_JSON_FIELDS
from pipelines.adapters.base import (
    DETECTED,
    CheckConfig,
    DatasetError,
    Output,
    RecordBuilder,
    check_split,
    display_path,
    image_folder,
    image_path_under,
    points_box,
    resolve_under,
)
from pipelines.adapters.wholebody_parts import part_points, parts_to_wholebody
from shards.schema import KEY_PATTERN, make_key

OPENPOSE_JSON_SUFFIX = "_keypoints.json"  # OpenPose's --write_json names: <image stem>_keypoints.json
BODY_FIELD = "pose_keypoints_2d"           # BODY_25: the 49-joint keypoints' OpenPose slots
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")  # what OpenPose's --image_dir reads
# The fields' names in OpenPose before 1.3 (module docstring): the same flat x, y, c arrays.
PRE_1_3_FIELDS = {field: field.removesuffix("_2d") for field in OPENPOSE_JSON_FIELDS}
_KEY_CHAR = re.compile(r"[A-Za-z0-9_-]")  # what a sample key's id holds (`shards.schema.KEY_PATTERN`), '/' aside
_ESCAPE = "_x"  # then two hex digits: one UTF-8 byte of a character a key cannot hold


def openpose_key(stem: str, index: int | None = None) -> str:
    """The sample key of person ``index`` of image ``stem`` (``openpose/<stem>_p<index>``; without ``index``, the
    key of the whole file's reject). Distinct stems give distinct keys: a character a key cannot hold ('.', ' ',
    'é', ...) becomes ``_x`` and the hex of each of its UTF-8 bytes (``clip.0001`` -> ``clip_x2e0001``), and a '_'
    followed by 'x' is escaped too (``_x5f``) so that no stem reads as another's escape; other stems stay as they
    are (`shards.schema.make_key` would merge '.' and '_' into one key, and strip a leading '_')."""
    out = []
    for i, char in enumerate(stem):
        if _KEY_CHAR.fullmatch(char) and not (char == "_" and stem[i + 1:i + 2] == "x"):
            out.append(char)
        else:
            out += [f"{_ESCAPE}{byte:02x}" for byte in char.encode("utf-8", "surrogateescape")]
    key = f"openpose/{''.join(out)}" + ("" if index is None else f"_p{index}")
    if not KEY_PATTERN.match(key):  # an empty stem without an index: no key
        raise ValueError(f"cannot build a sample key from image stem {stem!r} (got {key!r})")
    return key


def stem_keys(stems: list[str]) -> dict[str, str]:
    """The key of each image stem of a folder (person index aside: ``openpose/<body>``): `shards.schema.make_key`'s,
    what fitloop has always given (every run of other characters one '_', ends stripped), wherever that is the
    only stem with it; the stems that would share one key (``clip.0001`` and ``clip_0001``) get `openpose_key`'s
    escaped keys instead, which never collide. So existing shard sets and fits tables keep their keys, and no two
    images merge."""
    escaped: set[str] = set()
    while True:
        keys = {stem: openpose_key(stem) if stem in escaped or not _legacy_ok(stem) else make_key("openpose", stem)
                for stem in stems}
        shared = {key for key, n in Counter(keys.values()).items() if n > 1}
        if not shared:
            return keys
        escaped |= {stem for stem, key in keys.items() if key in shared}


def _legacy_ok(stem: str) -> bool:
    try:
        make_key("openpose", stem)
    except ValueError:  # nothing left of it (a stem of '.' alone)
        return False
    return True


@dataclass(frozen=True, kw_only=True)
class OpenPoseConfig(CheckConfig):
    """Options of the OpenPose adapter (the checks: `CheckConfig`; ``min_joints`` counts detected BODY_25 joints).

    Attributes:
        json_dir: the folder of ``*_keypoints.json`` files, absolute or relative to the root (default: module
            docstring's layout).
        image_dir: the folder of the images OpenPose ran on (default: beside ``keypoints``, ``images``).
        bbox_expand: box side = ``bbox_expand`` × the longer side of the detected points' tight box (SPIN: 1.2).
    """

    json_dir: Path | None = None
    image_dir: Path | None = None
    bbox_expand: float = 1.2


class OpenPoseAdapter:
    """OpenPose per-image JSON keypoint files; see the module docstring."""

    name = "openpose"
    splits = ("train", "val", "test")
    config_type = OpenPoseConfig

    def read(self, root: Path, split: str, config: OpenPoseConfig | None = None) -> Iterator[Output]:
        """Yield one `PersonRecord` or `Reject` per person of every ``*_keypoints.json`` (files sorted by name), or
        one reject per file that is not OpenPose JSON. `DatasetError` when the folders are missing or hold no
        keypoint file."""
        config = config or OpenPoseConfig()
        check_split(self, split)
        root = Path(root)
        json_dir, image_dir = self._folders(root, split, config)
        files = sorted(json_dir.glob(f"*{OPENPOSE_JSON_SUFFIX}"))
        if not files:
            raise DatasetError(f"no *{OPENPOSE_JSON_SUFFIX} files in {json_dir}; run OpenPose with --write_json "
                               f"{json_dir}, or pass json_dir")
        builder = RecordBuilder(self.name, split, config, annotated=DETECTED, root=root)
        image_root, folder = image_folder(root, image_dir)
        images = _image_index(image_dir)
        keys = stem_keys([path.name[:-len(OPENPOSE_JSON_SUFFIX)] or "_" for path in files])
        for path in files:
            yield from self._file(builder, root, path, image_root, folder, images, config, keys)

    def _folders(self, root: Path, split: str, config: OpenPoseConfig) -> tuple[Path, Path]:
        base = root / split
        if not base.is_dir() and split == "train" and config.json_dir is None:
            base = root  # the flat layout OpenPose's users have: root/keypoints, root/images
        json_dir = resolve_under(root, config.json_dir) or base / "keypoints"
        image_dir = resolve_under(root, config.image_dir) or json_dir.parent / "images"
        if not json_dir.is_dir():
            flat = f" (train: or {root / 'keypoints'} and {root / 'images'})" if split == "train" else ""
            raise DatasetError(f"OpenPose keypoint folder {json_dir} does not exist; split {split} reads "
                               f"{root / split / 'keypoints'} and {root / split / 'images'}{flat}, or pass json_dir")
        if not image_dir.is_dir():
            raise DatasetError(f"OpenPose image folder {image_dir} does not exist; pass image_dir")
        return json_dir, image_dir

    def _file(self, builder: RecordBuilder, root: Path, path: Path, image_root: Path, folder: PurePosixPath,
              images: dict[str, str], config: OpenPoseConfig, keys: dict[str, str]) -> Iterator[Output]:
        source = display_path(path, root)
        stem = path.name[:-len(OPENPOSE_JSON_SUFFIX)]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            people = data["people"]
            if not isinstance(people, list):
                raise TypeError(f"'people' is a {type(people).__name__}, not a list")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:  # JSONDecodeError: ValueError
            yield builder.reject(source, "*", "malformed_annotation",
                                 f"not an OpenPose keypoints file ({type(err).__name__}: {err}); each person of it "
                                 f"is lost: check the file", keys[stem or "_"])  # "_keypoints.json": no stem
            return
        for i, person in enumerate(people):
            yield self._person(builder, source, stem, f"{keys[stem or '_']}_p{i}", i, person, image_root, folder,
                               images, config)

    def _person(self, builder: RecordBuilder, source: str, stem: str, key: str, index: int, person: Any,
                image_root: Path, folder: PurePosixPath, images: dict[str, str], config: OpenPoseConfig) -> Output:
        record = f"person {index}"
        try:
            if not isinstance(person, dict):
                raise TypeError(f"the person is a {type(person).__name__}, not an object")
            if BODY_FIELD not in person and PRE_1_3_FIELDS[BODY_FIELD] not in person:
                raise ValueError(f"the person has no {BODY_FIELD} (nor {PRE_1_3_FIELDS[BODY_FIELD]}, its name before "
                                 f"OpenPose 1.3); it has {', '.join(sorted(map(str, person))) or 'no field'}")
            parts = {}
            for field, names in OPENPOSE_JSON_FIELDS.items():
                name = PRE_1_3_FIELDS[field] if field not in person and PRE_1_3_FIELDS[field] in person else field
                parts[field] = part_points(person.get(name, []), name, names, empty_ok=field != BODY_FIELD)
        except (TypeError, ValueError) as err:
            return builder.reject(source, record, "malformed_annotation", f"{type(err).__name__}: {err}", key)
        if stem not in images:
            return builder.reject(source, record, "missing_image", (
                f"no image {stem}{'|'.join(IMAGE_SUFFIXES)} in {image_root / folder} for {source}"), key)
        wholebody = parts_to_wholebody(parts, OPENPOSE_JSON_FIELDS)
        keypoints = to_canonical(parts[BODY_FIELD], "openpose")
        with np.errstate(invalid="ignore"):
            box = points_box(np.where(np.isfinite(wholebody), wholebody, 0.0), config.bbox_expand)
        center, scale = box or (None, None)
        return builder.person(
            key=key, source=source, record=record, image_root=image_root,
            image_path=image_path_under(folder, images[stem]), center=center, scale=scale,
            keypoints_2d=keypoints, wholebody=wholebody,
            extra={"person_index": index, "openpose_parts": [f for f, p in parts.items() if p is not None]})


def _image_index(image_dir: Path) -> dict[str, str]:
    """image stem -> file name in ``image_dir``, the first of `IMAGE_SUFFIXES` where two files share a stem."""
    found: dict[str, str] = {}
    rank = {suffix: i for i, suffix in enumerate(IMAGE_SUFFIXES)}
    for path in sorted(image_dir.iterdir(), key=lambda p: (p.stem, rank.get(p.suffix, len(rank)))):
        if path.suffix in rank and path.is_file() and path.stem not in found:
            found[path.stem] = path.name
    return found
