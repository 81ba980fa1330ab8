"""Check a whole shard set: the manifest's checksums, then every sample's schema and every image, naming the sample.

`shards.reader.verify` checks the set against its manifest (each shard's size and sha256, the rejects table,
stray and half-written files). `verify_set` adds a pass over every sample of every shard, also of a shard whose
checksum failed, so that a damaged shard says *which* sample is bad where the damage shows:

* the tar parses to its end (a truncated shard names the last sample read whole);
* the members are known suffixes, the required ones present, arrays ``.npy`` of the documented shape, finite;
* the json member has every field, of the right type, its key/dataset/split match the member name and the
  manifest, its flags match the members present, and its crop is self-consistent (the two affine maps invert each
  other, the box centre maps onto ``box_center``, the box side onto ``box_side``);
* its ``intrinsics`` (format 2 on) parse, name a known source and give a plausible camera for its image: a diagonal
  field of view in (1°, 170°), the principal point inside the image, and a ``fov-guess`` equal to the guess
  (`core.intrinsics`); a format-1 sample has none (unknown: readers guess);
* ``keypoints_crop`` is ``keypoints_2d`` through ``image_to_crop`` (absent joints all zeros), and so is
  ``wholebody_crop`` ``wholebody_2d`` (format 3 on; the json's ``has_wholebody`` says whether they are there);
* its label images (format 4 on; the json's ``has_mask``, ``has_parts`` and ``has_parsing`` say whether they are
  there) decode as 1-channel PNGs of ``res`` × ``res`` px, with ids in their table (0/1 for the mask,
  ``<kind>_names`` for parts and parsing) or 255 (unknown), and a known provenance (`shards.masks.PROVENANCES`);
* its box has at least `shards.crop.MIN_BOX_INSIDE` of its area inside the image (else the crop is black);
* the JPEG decodes in full, RGB, ``res`` × ``res`` px;
* the manifest's sample count per shard, and keys unique over the set;
* the counts reconcile: read = written + rejected, against the shards and the rejects table
  (`shards.reader.count_problems`);
* the samples are the manifest's (`manifest_problems`, `sample_manifest_problems`): its ``config_sha256`` is the
  hash of its ``config`` (`config_hash`), each sample's crop has the config's ``crop_res`` and ``crop_margin``,
  its JPEG the quantization tables of the config's ``jpeg_quality``, its json the manifest's
  ``sample_format_version`` and ``schema_version``; and the manifest's ``has_*`` counts are the samples' flags,
  counted in the same pass. A shard copied in from another set (its sha256 and size updated in the manifest)
  is named sample by sample;
* confidences: those of the annotated joints (``keypoints_2d`` slots 25–48) and of ``joints_3d`` lie in [0, 1]
  (`shards.schema.PersonRecord`); detector scores (OpenPose slots 0–24, whole-body points) are raw, so only
  negative ones are refused (OpenPose writes scores above 1 now and then).

A byte changed inside a member always fails the shard's sha256. Whether a sample check also fails depends on
where the byte is: in a json number or an array it usually breaks a consistency check; in a JPEG's entropy-coded
data the image often still decodes (with wrong pixels), and then only the shard-level checksum tells. The report
says so rather than guess which sample holds the change.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from core.intrinsics import PLAUSIBLE_FOV_DEG, Intrinsics, fov_guess
from core.joints import J24_OFFSET, JOINT_NAMES
from shards.crop import box_problem, from_affine_rows, transform_points
from shards.lookup import raw_samples
from shards.masks import LABEL_KINDS, MASK_NAMES, PROVENANCES, UNKNOWN, MaskError, decode_png, describe_image_error
from shards.reader import ShardCorruptError
from shards.reader import verify as verify_checksums
from shards.sample import _ARRAYS, SampleFormatError, StoredSample, decode_sample  # _ARRAYS: suffix -> shape
from shards.schema import KEY_PATTERN
from shards.writer import MANIFEST, ShardConfig, ShardSetError, ShardWriteError, config_hash, load_manifest

KEYPOINT_TOLERANCE_PX = 1e-2   # float32 keypoints of images up to ~10^4 px round to ~10^-3 px
MATRIX_TOLERANCE = 1e-6
# The flags a sample's json sets and the manifest counts over the set (`shards.writer.finalize_manifest`); a flag
# a sample's format does not store reads False, a count a manifest's format does not have reads 0.
FLAG_COUNTS = ("has_smpl", "has_joints_3d", "has_wholebody") + tuple(f"has_{kind}" for kind in LABEL_KINDS)
CONFIDENCE_RANGE = (0.0, 1.0)  # of an annotated joint (shards.schema.PersonRecord.keypoints_2d, joints_3d)

# json field -> the check its value must pass (a type, or a predicate with a description).
_NUMBER = (int, float)


def _is_pair(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(isinstance(x, _NUMBER) and math.isfinite(x) for x in v)


def _is_rows(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 2 and all(isinstance(r, list) and len(r) == 3 for r in v)
            and all(isinstance(x, _NUMBER) and math.isfinite(x) for r in v for x in r))


def _positive(v: Any) -> bool:
    return isinstance(v, _NUMBER) and not isinstance(v, bool) and math.isfinite(v) and v > 0


META_FIELDS: dict[str, tuple[Any, str]] = {
    "key": (lambda v: isinstance(v, str) and bool(KEY_PATTERN.match(v)), "a sample key"),
    "dataset": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "split": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "source": (lambda v: isinstance(v, str), "a string"),
    "record": (lambda v: isinstance(v, str), "a string"),
    "image_path": (lambda v: isinstance(v, str), "a string"),
    "image_root": (lambda v: isinstance(v, str), "a string"),
    "image_size": (lambda v: v is None or (_is_pair(v) and all(isinstance(x, int) and x > 0 for x in v)),
                   "null or [width, height] px"),
    "center": (_is_pair, "[x, y] px"),
    "scale": (_positive, "a positive number"),
    "box_side_px": (_positive, "a positive number"),
    "crop": (lambda v: isinstance(v, dict), "an object"),
    "has_smpl": (lambda v: isinstance(v, bool), "true or false"),
    "has_joints_3d": (lambda v: isinstance(v, bool), "true or false"),
    "extra": (lambda v: isinstance(v, dict), "an object"),
    "schema_version": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "sample_format_version": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
}
CROP_FIELDS: dict[str, tuple[Any, str]] = {
    "res": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 8, "an integer >= 8"),
    "margin": (lambda v: _positive(v) and v >= 1.0, "a number >= 1"),
    "box_side": (_positive, "a positive number"),
    "box_center": (_is_pair, "[x, y] px"),
    "image_to_crop": (_is_rows, "2 rows of 3 numbers"),
    "crop_to_image": (_is_rows, "2 rows of 3 numbers"),
}


def check_meta_fields(meta: Any) -> list[str]:
    """What is wrong with the fields of a sample's json (empty when nothing): each present and of its type, the
    crop's too; what `fitloop shards show` and `render` need before they print or draw a sample."""
    if not isinstance(meta, dict):
        return ["json is not an object"]
    problems = [f"json field {name!r} is missing" for name in META_FIELDS if name not in meta]
    problems += [f"json field {name!r} is {meta[name]!r}, expected {what}"
                 for name, (ok, what) in META_FIELDS.items() if name in meta and not ok(meta[name])]
    frame = meta.get("image_frame")  # schema 5 on; absent (older samples) or null for an image file
    if frame is not None and not (isinstance(frame, int) and not isinstance(frame, bool) and frame >= 0):
        problems.append(f"json field 'image_frame' is {frame!r}, expected null or a frame index >= 0")
    crop = meta.get("crop")
    if problems or not isinstance(crop, dict):
        return problems
    problems += [f"json crop.{name} is missing" for name in CROP_FIELDS if name not in crop]
    problems += [f"json crop.{name} is {crop[name]!r}, expected {what}"
                 for name, (ok, what) in CROP_FIELDS.items() if name in crop and not ok(crop[name])]
    return problems


def check_meta(meta: Any) -> list[str]:
    """What is wrong with a sample's json (empty when nothing): fields, types, and the crop's own consistency."""
    problems = check_meta_fields(meta)
    if problems:
        return problems
    crop = meta["crop"]
    to_crop, to_image = from_affine_rows(crop["image_to_crop"]), from_affine_rows(crop["crop_to_image"])
    if not np.allclose(to_crop @ to_image, np.eye(3), atol=MATRIX_TOLERANCE):
        problems.append("json crop.image_to_crop and crop.crop_to_image are not inverses")
    centre = transform_points(to_crop, np.asarray(meta["center"], dtype=np.float64))
    if not np.allclose(centre, crop["box_center"], atol=1e-4):
        problems.append(f"json center {meta['center']} maps to {centre.round(4).tolist()} in the crop, not "
                        f"box_center {crop['box_center']}")
    side = math.sqrt(abs(np.linalg.det(to_crop[:2, :2]))) * meta["box_side_px"]
    if not math.isclose(side, crop["box_side"], rel_tol=1e-6):
        problems.append(f"json box_side_px {meta['box_side_px']} is {side:.4f} crop px, crop.box_side says "
                        f"{crop['box_side']}")
    if not math.isclose(crop["box_side"] * crop["margin"], crop["res"], rel_tol=1e-6):
        problems.append(f"json crop.box_side × margin = {crop['box_side'] * crop['margin']:.4f}, res is {crop['res']}")
    if not math.isclose(meta["box_side_px"], 200.0 * meta["scale"], rel_tol=1e-6):
        problems.append(f"json box_side_px {meta['box_side_px']} is not 200 × scale {meta['scale']}")
    if meta["image_size"]:
        box = box_problem(meta["center"], meta["box_side_px"], tuple(meta["image_size"]))
        if box:  # the crop shows black or a speck of the picture
            problems.append(f"json {box}")
    if meta["sample_format_version"] >= 2:
        problems += check_intrinsics(meta.get("intrinsics"), meta["image_size"])
    if meta["sample_format_version"] >= 3 and not isinstance(meta.get("has_wholebody"), bool):
        problems.append(f"json field 'has_wholebody' is {meta.get('has_wholebody')!r}, expected true or false "
                        f"(sample format 3 stores it)")
    for flag in (f"has_{kind}" for kind in LABEL_KINDS):
        if meta["sample_format_version"] >= 4 and not isinstance(meta.get(flag), bool):
            problems.append(f"json field {flag!r} is {meta.get(flag)!r}, expected true or false (sample format 4 "
                            f"stores it)")
    return problems


def check_intrinsics(value: Any, size: list[int] | None) -> list[str]:
    """What is wrong with a sample's json ``intrinsics`` for an image of ``size`` [width, height] (module
    docstring); empty when nothing."""
    if value is None:
        return ["json field 'intrinsics' is missing (sample format 2 stores them)"]
    try:
        intrinsics = Intrinsics.from_json(value)
    except ValueError as err:
        return [f"json intrinsics: {err}"]
    if not size:
        return ["json image_size is null (sample format 2 stores it with the intrinsics)"]
    problems = []
    fov = intrinsics.diagonal_fov_deg(tuple(size))
    if not PLAUSIBLE_FOV_DEG[0] < fov < PLAUSIBLE_FOV_DEG[1]:
        problems.append(f"json intrinsics fx={intrinsics.fx:g}, fy={intrinsics.fy:g} give a {fov:.2f}° diagonal "
                        f"field of view of the {size[0]}x{size[1]} image, outside {PLAUSIBLE_FOV_DEG}")
    if not (-0.5 <= intrinsics.cx <= size[0] - 0.5 and -0.5 <= intrinsics.cy <= size[1] - 0.5):
        problems.append(f"json intrinsics principal point ({intrinsics.cx:g}, {intrinsics.cy:g}) lies outside the "
                        f"{size[0]}x{size[1]} image")
    if intrinsics.source == "fov-guess":
        guess = fov_guess(tuple(size))
        if (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy) != (guess.fx, guess.fy, guess.cx, guess.cy):
            problems.append(f"json intrinsics say fov-guess but are not the guess for a {size[0]}x{size[1]} image "
                            f"({guess.fx:g}, {guess.cx:g}, {guess.cy:g})")
    return problems


def check_sample(key: str, members: dict[str, bytes], shard_entry: dict[str, Any] | None = None,
                 manifest: dict[str, Any] | None = None) -> list[str]:
    """What is wrong with one sample's members (suffix -> bytes); empty when it passes every check (module
    docstring). ``shard_entry`` is the manifest's entry of its shard (its dataset and split must match);
    ``manifest`` the set's manifest (the sample's crop, JPEG quality and versions must be its config's:
    `sample_manifest_problems`). The JPEG is decoded whenever it is present, whatever else fails."""
    return _check_sample(key, members, shard_entry, manifest)[0]


def _check_sample(key: str, members: dict[str, bytes], shard_entry: dict[str, Any] | None,
                  manifest: dict[str, Any] | None) -> tuple[list[str], dict[str, Any] | None]:
    """(`check_sample`'s problems, the sample's json when it is well formed (`check_meta`), else None)."""
    problems: list[str] = []  # an unknown member is decode_sample's to name
    res, meta = None, None
    try:
        sample = decode_sample(key, members)
    except SampleFormatError as err:
        problems.append(str(err).replace(f"sample {key!r}", "").strip(" :") or str(err))
        sample = None
    if sample is not None:
        meta_problems = check_meta(sample.meta)
        problems += meta_problems
        if not meta_problems:
            meta = sample.meta
            res = meta["crop"]["res"]
            problems += _check_consistency(key, sample, shard_entry)
            if manifest is not None:
                problems += sample_manifest_problems(meta, manifest)
    if "jpg" in members:
        quality = None if manifest is None else manifest["config"].get("jpeg_quality")
        problems += _check_image(members["jpg"], res, quality if isinstance(quality, int) else None)
    return problems, meta


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """What is wrong with a loaded manifest's config (one line each, empty when nothing): ``config_sha256`` is not
    the hash of ``config`` (one of them was changed after writing), a setting out of `ShardConfig`'s range, a shard
    holding more samples than ``samples_per_shard``."""
    config, problems = manifest["config"], []
    stated, actual = manifest.get("config_sha256"), config_hash(config)
    if stated != actual:
        problems.append(f"{MANIFEST}: config_sha256 {str(stated)[:16]}... is not the hash of its config "
                        f"{json.dumps(config, sort_keys=True)} ({actual[:16]}...): the config or its hash was changed "
                        f"after the set was written")
    known = {f.name for f in dataclasses.fields(ShardConfig)}
    try:
        ShardConfig(**{name: value for name, value in config.items() if name in known})
    except ShardWriteError as err:
        problems.append(f"{MANIFEST}: config {err}")
    except TypeError as err:  # a setting of the wrong type, compared with a number
        problems.append(f"{MANIFEST}: config {json.dumps(config, sort_keys=True)} is not a shard config ({err})")
    limit = config.get("samples_per_shard")
    if isinstance(limit, int):
        problems += [f"{entry['name']}: {entry['samples']} samples, the manifest's config says samples_per_shard "
                     f"{limit}" for entry in manifest["shards"] if entry["samples"] > limit]
    return problems


def sample_manifest_problems(meta: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Where a sample's well-formed json (`check_meta`) contradicts its set's manifest (empty when nowhere): the
    stored crop's ``res`` and ``margin`` against the config's ``crop_res`` and ``crop_margin``, and its
    ``sample_format_version`` and ``schema_version`` against the manifest's (the writer stamps both with the same
    values). The JPEG's quality is `_check_image`'s."""
    config, crop, problems = manifest["config"], meta["crop"], []
    if "crop_res" in config and crop["res"] != config["crop_res"]:
        problems.append(f"json crop.res {crop['res']}, the manifest's config says crop_res {config['crop_res']}")
    if "crop_margin" in config and not math.isclose(crop["margin"], config["crop_margin"], rel_tol=1e-9):
        problems.append(f"json crop.margin {crop['margin']:g}, the manifest's config says crop_margin "
                        f"{config['crop_margin']:g}")
    for name in ("sample_format_version", "schema_version"):
        if name in manifest and meta[name] != manifest[name]:
            problems.append(f"json {name} {meta[name]}, the manifest says {manifest[name]}")
    return problems


def unusable(sample: StoredSample, picture: bool = False) -> list[str]:
    """Why `fitloop shards show` (``picture``: `render`) cannot use a decoded sample, by this module's own checks
    (empty when it can): json fields missing or of the wrong type, stored intrinsics that do not parse; for a
    picture also label images that do not match the json and a JPEG that does not decode (or not at ``crop.res``)."""
    problems = check_meta_fields(sample.meta)
    if sample.meta.get("intrinsics") is not None:  # none: format 1, guessed from the image size
        try:
            Intrinsics.from_json(sample.meta["intrinsics"])
        except ValueError as err:
            problems.append(f"json intrinsics: {err}")
    if picture and not problems:
        problems = _check_labels(sample) + _check_image(sample.jpeg, sample.meta["crop"]["res"])
    return problems


def _check_consistency(key: str, sample, shard_entry: dict[str, Any] | None) -> list[str]:
    """A decoded sample with a well-formed json: names, flags against members, finite arrays, keypoints."""
    meta, problems = sample.meta, []
    if meta["key"] != key:
        problems.append(f"json key {meta['key']!r} differs from the member name")
    if not key.startswith(meta["dataset"] + "/"):
        problems.append(f"json dataset {meta['dataset']!r} is not the key's prefix")
    if shard_entry is not None:
        for name in ("dataset", "split"):
            if shard_entry.get(name) is not None and meta[name] != shard_entry[name]:
                problems.append(f"json {name} {meta[name]!r}, the shard holds {name} {shard_entry[name]!r}")
    if meta["has_smpl"] != (sample.smpl_pose is not None and sample.smpl_betas is not None):
        problems.append(f"json has_smpl is {meta['has_smpl']} but smpl_pose/smpl_betas are "
                        f"{'present' if sample.smpl_pose is not None else 'absent'}")
    if meta["has_joints_3d"] != (sample.joints_3d is not None):
        problems.append(f"json has_joints_3d is {meta['has_joints_3d']} but joints_3d.npy is "
                        f"{'present' if sample.joints_3d is not None else 'absent'}")
    has_wholebody = bool(meta.get("has_wholebody", False))  # formats 1 and 2: none
    if has_wholebody != (sample.wholebody_crop is not None):
        problems.append(f"json has_wholebody is {has_wholebody} but wholebody_crop.npy is "
                        f"{'present' if sample.wholebody_crop is not None else 'absent'}")
    for suffix, (name, _) in _ARRAYS.items():
        array = getattr(sample, name)
        if array is not None and (array.dtype.kind != "f" or not np.isfinite(array).all()):
            problems.append(f"{suffix} holds {'non-finite values' if array.dtype.kind == 'f' else array.dtype}")
    problems += _check_labels(sample)
    if problems:
        return problems
    problems = _check_confidences(sample)
    problems += _check_keypoints(sample, sample.keypoints_2d, sample.keypoints_crop, "keypoints")
    if sample.wholebody_crop is not None:
        problems += _check_keypoints(sample, sample.wholebody_2d, sample.wholebody_crop, "wholebody")
    return problems


def _check_labels(sample) -> list[str]:
    """The label images against the json: flags, provenance, size (``crop.res``) and ids in their table."""
    meta, problems = sample.meta, []
    res = meta["crop"]["res"]
    for name in LABEL_KINDS:
        png = getattr(sample, f"{name}_png")
        flag = meta["sample_format_version"] >= 4 and bool(meta.get(f"has_{name}"))  # formats before 4: none
        if flag != (png is not None):
            problems.append(f"json has_{name} is {flag} but {name}.png is {'present' if png is not None else 'absent'}")
            continue
        if png is None:
            continue
        provenance = meta.get(f"{name}_provenance")
        if provenance not in PROVENANCES:
            problems.append(f"json {name}_provenance is {provenance!r}, not one of {', '.join(PROVENANCES)}")
        names = MASK_NAMES if name == "mask" else meta.get(f"{name}_names")
        if not (isinstance(names, list) or names == MASK_NAMES) or len(names) < 2 or names[0] != "background":
            problems.append(f"json {name}_names is {names!r}, expected a list of names, 'background' first")
            continue
        try:
            labels = decode_png(png)
        except MaskError as err:
            problems.append(f"{name}.png: {err}")
            continue
        if labels.shape != (res, res):
            problems.append(f"{name}.png is {labels.shape[1]}×{labels.shape[0]} px, json crop.res says {res}")
        ids = np.unique(labels)
        bad = ids[(ids >= len(names)) & (ids != UNKNOWN)]
        if len(bad):
            problems.append(f"{name}.png holds id(s) {bad.tolist()}, its table has {len(names)} (and {UNKNOWN}: "
                            f"unknown)")
    return problems


def _check_confidences(sample) -> list[str]:
    """Confidences out of range (module docstring): an annotated joint's (``keypoints_2d`` slots 25–48) or a 3D
    joint's outside `CONFIDENCE_RANGE`; a detector's score (slots 0–24, whole-body points) below 0."""
    low, high = CONFIDENCE_RANGE
    problems = []
    conf = sample.keypoints_2d[:, 2]
    annotated = np.arange(len(conf)) >= J24_OFFSET
    bad = np.flatnonzero((conf < low) | (annotated & (conf > high)))
    if len(bad):
        more = f" (and {len(bad) - 1} more joint(s))" if len(bad) > 1 else ""
        problems.append(f"keypoints_2d.npy confidence {conf[bad[0]]:g} of joint {JOINT_NAMES[bad[0]]!r}{more}: an "
                        f"annotated joint's lies in [{low:g}, {high:g}], a detection's (OpenPose slots) is >= {low:g}")
    if sample.joints_3d is not None:
        conf = sample.joints_3d[:, 3]
        bad = np.flatnonzero((conf < low) | (conf > high))
        if len(bad):
            more = f" (and {len(bad) - 1} more joint(s))" if len(bad) > 1 else ""
            problems.append(f"joints_3d.npy confidence {conf[bad[0]]:g} of joint {JOINT_NAMES[bad[0]]!r}{more}: "
                            f"outside [{low:g}, {high:g}]")
    if sample.wholebody_2d is not None and (sample.wholebody_2d[:, 2] < low).any():
        problems.append(f"wholebody_2d.npy holds {int((sample.wholebody_2d[:, 2] < low).sum())} confidence(s) "
                        f"below {low:g}")
    return problems


def _check_keypoints(sample, image_kp: np.ndarray, crop_kp: np.ndarray, what: str) -> list[str]:
    """``<what>_crop`` against ``<what>_2d`` (both (J, 3) px + confidence) through the sample's crop map."""
    present = image_kp[:, 2] > 0
    expected = transform_points(sample.image_to_crop, image_kp[:, :2].astype(np.float64))
    got = crop_kp.astype(np.float64)
    problems = []
    if not np.array_equal(got[:, 2], np.where(present, image_kp[:, 2], 0.0)):
        problems.append(f"{what}_crop.npy confidences differ from {what}_2d.npy's")
    error = np.abs(got[present, :2] - expected[present]).max(initial=0.0)
    if error > KEYPOINT_TOLERANCE_PX:
        problems.append(f"{what}_crop.npy is {error:.3g} px off {what}_2d.npy through image_to_crop")
    if np.any(got[~present] != 0.0):
        problems.append(f"{what}_crop.npy has values for absent joints")
    return problems


def _check_image(jpeg: bytes, res: int | None, quality: int | None = None) -> list[str]:
    """A JPEG member that does not decode in full, is not RGB, not ``res`` px square, or (``quality``: the
    manifest's ``jpeg_quality``) was not encoded at that quality: its quantization tables (read from its header,
    no extra decoding) differ from those PIL writes at ``quality``."""
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            fmt, mode, size = image.format, image.mode, image.size
            tables = _tables(getattr(image, "quantization", None))
            image.load()  # decodes every pixel: truncated or broken entropy data that libjpeg cannot skip fails
    except Exception as err:  # PIL raises many types for bad bytes (OSError, UnidentifiedImageError, SyntaxError)
        return [f"jpg does not decode ({describe_image_error(err)})"]
    problems = []
    if fmt != "JPEG" or mode != "RGB":
        problems.append(f"jpg is {fmt} {mode}, expected JPEG RGB")
    if res is not None and size != (res, res):
        problems.append(f"jpg is {size[0]}×{size[1]} px, json crop.res says {res}")
    if quality is not None and fmt == "JPEG" and 1 <= quality <= 100 and tables != _quality_tables(quality):
        found = next((q for q in range(1, 101) if _quality_tables(q) == tables), None)
        said = f"those of JPEG quality {found}" if found is not None else "not those of any JPEG quality PIL writes"
        problems.append(f"jpg's quantization tables are {said}, the manifest's config says jpeg_quality {quality}")
    return problems


def _tables(quantization: Any) -> tuple[tuple[int, ...], ...] | None:
    """A JPEG's quantization tables (PIL's ``image.quantization``: table id -> 64 values) as a comparable tuple."""
    if not isinstance(quantization, dict):
        return None
    return tuple(tuple(int(v) for v in quantization[i]) for i in sorted(quantization))


@functools.lru_cache(maxsize=None)
def _quality_tables(quality: int) -> tuple[tuple[int, ...], ...] | None:
    """The quantization tables PIL writes for an RGB JPEG at ``quality`` (what `shards.writer.crop_record` uses);
    read back from a tiny image encoded here, so they are this PIL's and libjpeg's own."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as image:
        return _tables(image.quantization)


@dataclass
class SetReport:
    """What `verify_set` found; ``problems`` (one line each, naming the file and, where it can, the sample) is
    empty when the set is intact."""

    shard_dir: str
    shards_checked: int = 0
    samples_checked: int = 0
    images_decoded: int = 0
    bad_samples: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_set(shard_dir: Path, samples: bool = True,
               progress: Callable[[int], None] | None = None) -> SetReport:
    """Check the shard set in ``shard_dir``: the manifest's checksums and files (`shards.reader.verify`) and its
    config (`manifest_problems`), then, with ``samples``, every sample of every listed shard against its own
    members and the manifest, and the manifest's ``has_*`` counts against the samples' flags (module docstring).
    ``progress`` is called with 1 after each sample is checked (e.g. a progress bar's ``update``)."""
    shard_dir = Path(shard_dir)
    base = verify_checksums(shard_dir)
    report = SetReport(str(shard_dir), shards_checked=base.shards_checked, problems=list(base.problems))
    try:
        manifest = load_manifest(shard_dir)
    except ShardSetError:
        return report  # already a problem of the base report
    report.problems += manifest_problems(manifest)
    if not samples:
        return report
    failed_checksum = {p.split(":", 1)[0] for p in base.problems}
    seen: dict[str, str] = {}
    tally = _Tally()
    for entry in manifest["shards"]:
        path = shard_dir / entry["name"]
        if not path.is_file():
            tally.complete = False
            continue
        before = len(report.bad_samples)
        count = _scan_shard(path, entry, report, seen, manifest, tally, progress)
        if count is None:
            tally.complete = False
        elif count != entry["samples"]:
            report.problems.append(f"{entry['name']}: {count} samples, manifest says {entry['samples']}")
        if entry["name"] in failed_checksum and len(report.bad_samples) == before and count == entry["samples"]:
            report.problems.append(f"{entry['name']}: every sample passes its checks, so the change the checksum "
                                   f"found cannot be located (e.g. pixels inside a JPEG); re-create the shard")
    if tally.complete:  # else a shard or a json that cannot be read is named above, and the counts would differ
        report.problems += [f"{MANIFEST}: {flag} {manifest.get(flag, 0)}, the samples' json flags count "
                            f"{tally.flags[flag]}" for flag in FLAG_COUNTS
                            if manifest.get(flag, 0) != tally.flags[flag]]
    return report


@dataclass
class _Tally:
    """The samples' ``has_*`` flags counted while they are checked; ``complete`` while every sample of every
    listed shard was read with a well-formed json."""

    flags: Counter = field(default_factory=Counter)
    complete: bool = True

    def add(self, meta: dict[str, Any] | None) -> None:
        if meta is None:
            self.complete = False
            return
        for flag in FLAG_COUNTS:
            self.flags[flag] += int(meta.get(flag) is True)  # a flag a sample's format does not store: False


def _scan_shard(path: Path, entry: dict[str, Any], report: SetReport, seen: dict[str, str], manifest: dict[str, Any],
                tally: _Tally, progress: Callable[[int], None] | None = None) -> int | None:
    """Check each sample of one shard into ``report`` (and its flags into ``tally``); the number of samples, or
    None when the tar breaks off."""
    count, last = 0, None

    def check(key: str, members: dict[str, bytes], problems: list[str], meta: dict[str, Any] | None) -> None:
        nonlocal count, last
        count += 1
        report.samples_checked += 1
        tally.add(meta)
        if key in seen:
            problems.append(f"key also in {seen[key]}")
        seen.setdefault(key, path.name)
        if "jpg" in members and not any(p.startswith("jpg does not decode") for p in problems):
            report.images_decoded += 1
        if problems:
            report.bad_samples.append(key)
            report.problems += [f"{path.name}: sample {key}: {p}" for p in problems]
        last = key
        if progress is not None:
            progress(1)

    try:
        for key, members in raw_samples(path, hint=False):
            check(key, members, *_check_sample(key, members, entry, manifest))
    except ShardCorruptError as err:
        pending = getattr(err, "pending", None)
        if pending is not None and not check_sample(*pending, entry):
            check(*pending, *_check_sample(*pending, entry, manifest))  # every member of it was read: a whole sample
        after = f"after sample {last} ({count} read whole)" if last else "before its first sample"
        report.problems.append(f"{path.name}: the tar breaks off {after}: {err}")
        return None
    return count


def report_json(report: SetReport) -> str:
    """The report as JSON (``ok`` included)."""
    from dataclasses import asdict

    return json.dumps(asdict(report) | {"ok": report.ok}, indent=2)
