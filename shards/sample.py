"""One sample of a shard: the tar members a person becomes, how each is encoded, and how they are read back.

A sample is the members ``<key>.<suffix>`` of a webdataset tar, where ``key`` is the record's key
(``coco/000000000785_a442619``: it holds one ``/`` and never a ``.``, so webdataset's split at the first dot of
the base name recovers it):

=====================  ===========================================================================================
suffix                 content
=====================  ===========================================================================================
``jpg``                the stored crop, pre-encoded JPEG, RGB, ``res``×``res`` px, covering ``margin`` × the box
``json``               metadata: dataset, split, lineage (source, record, image path and root), image size, box,
                       the crop's affine maps to and from original-image px, the original image's ``intrinsics``
                       (fx, fy, cx, cy px and their ``source``: `core.intrinsics`), flags, the record's ``extra``
``keypoints_2d.npy``   (49, 3) float32: x, y in **original-image** px (0-based) + confidence, as the record has them
``keypoints_crop.npy`` (49, 3) float32: the same joints in **stored-crop** px + confidence
``joints_3d.npy``      (49, 4) float32, metres, camera frame + confidence (only when the record has them)
``smpl_pose.npy``      (72,) float32 axis-angle, global orientation first (only when the record has it)
``smpl_betas.npy``     (10,) float32 (only when the record has them)
``wholebody_2d.npy``   (161, 3) float32: whole-body keypoints (`core.wholebody`: body, hands, face) in
                       **original-image** px + confidence (only when the record has them)
``wholebody_crop.npy`` (161, 3) float32: the same points in **stored-crop** px + confidence, through the crop map
                       of ``keypoints_crop`` (only with ``wholebody_2d.npy``)
``mask.png``           1-channel 8-bit PNG, ``res``×``res``: the person mask in the stored crop, 0 background,
                       1 person, 255 unknown (outside the original image) (only when the record has a mask)
``parts.png``          1-channel 8-bit PNG, ``res``×``res``: body-part ids in the stored crop, 0 background, ids
                       into the json's ``parts_names``, 255 unknown (only when the record has part labels)
``parsing.png``        the same for a clothing or semantic parsing, ids into ``parsing_names`` (only when the
                       record has one)
=====================  ===========================================================================================

The json's ``image_frame`` is the frame of a video ``image_path`` (`shards.frames`; record schema 5 on), null for
an image file. The json says ``has_mask``, ``has_parts`` and ``has_parsing``, and for each present label image its provenance
(``<kind>_provenance``: `shards.masks.PROVENANCES`) and, for parts and parsing, the table ``<kind>_names`` (id ->
name, "background" first). Label images are warped from the original image with the crop's
map, nearest neighbour (`shards.masks.crop_labels`).

Arrays are ``.npy`` written and read with ``allow_pickle=False``; nothing in a shard is a pickle.

Format versions: 2 added ``intrinsics`` to the json and always fills ``image_size`` (the writer decodes the image);
3 added the optional whole-body members and the json flag ``has_wholebody``; 4 added the optional ``mask.png``,
``parts.png`` and ``parsing.png`` and the json flags ``has_mask``, ``has_parts`` and ``has_parsing`` (a sample of an
older format has none: its flags read False). Format 1 samples still read: their
intrinsics are unknown, and `StoredSample.intrinsics` gives the guess from the image size
(`core.intrinsics.fov_guess`), or raises where the size is unknown too. Format 1 and 2 samples have no whole-body
keypoints (`StoredSample.wholebody_crop` is None, as for a body-only dataset's format 3 sample).
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.intrinsics import Intrinsics, fov_guess
from core.joints import NUM_JOINTS
from core.wholebody import NUM_WHOLEBODY
from shards.crop import from_affine_rows, invert, to_affine_rows, transform_points
from shards.masks import LABEL_KINDS, MASK_NAMES, crop_labels, decode_png, encode_png
from shards.schema import SCHEMA_VERSION, PersonRecord

# Bump when a member is added, removed or changes meaning; readers check it.
SAMPLE_FORMAT_VERSION = 4
# 1: written before samples stored their intrinsics; 2: before the whole-body members; 3: before the label
# images (module docstring)
READABLE_SAMPLE_FORMATS = (1, 2, 3, 4)

_ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {  # suffix -> (StoredSample field, shape)
    "keypoints_2d.npy": ("keypoints_2d", (NUM_JOINTS, 3)),
    "keypoints_crop.npy": ("keypoints_crop", (NUM_JOINTS, 3)),
    "joints_3d.npy": ("joints_3d", (NUM_JOINTS, 4)),
    "smpl_pose.npy": ("smpl_pose", (72,)),
    "smpl_betas.npy": ("smpl_betas", (10,)),
    "wholebody_2d.npy": ("wholebody_2d", (NUM_WHOLEBODY, 3)),
    "wholebody_crop.npy": ("wholebody_crop", (NUM_WHOLEBODY, 3)),
}
REQUIRED_SUFFIXES: tuple[str, ...] = ("jpg", "json", "keypoints_2d.npy", "keypoints_crop.npy")
WHOLEBODY_SUFFIXES: tuple[str, ...] = ("wholebody_2d.npy", "wholebody_crop.npy")  # both or neither (format 3 on)
LABEL_SUFFIXES: dict[str, str] = {f"{kind}.png": f"{kind}_png" for kind in LABEL_KINDS}  # format 4 on
KNOWN_SUFFIXES = frozenset(REQUIRED_SUFFIXES) | frozenset(_ARRAYS) | frozenset(LABEL_SUFFIXES)
# Suffixes webdataset decodes with pickle (its "pyd"/"pickle" handlers) and torch's pickled files: never read.
PICKLE_SUFFIXES = ("pyd", "pickle", "pkl", "pth", "pt")


class SampleFormatError(ValueError):
    """A sample's members are missing, malformed, or of another format version."""


def encode_npy(array: np.ndarray) -> bytes:
    """``.npy`` bytes of a numeric array (never a pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


_NPY_HEADER = re.compile(rb"\{'descr': '([<>|][fiub][1248])', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \}")


def decode_npy(data: bytes, what: str = "npy member") -> np.ndarray:
    """The (read-only) array in ``.npy`` bytes; ValueError "<what> is not a valid .npy array (why)" for bytes that
    are not one (numpy's own message would point at ``allow_pickle``) or for an object array (a pickle: never
    loaded).

    The headers `encode_npy` writes (version 1, a plain numeric dtype, C order) are parsed here directly: numpy's
    own parser evaluates the header with ``ast.literal_eval``, which costs more than the array. Anything else goes
    to ``np.load(allow_pickle=False)``.
    """
    if not data.startswith(b"\x93NUMPY"):  # np.load would try it as a pickle
        if not data:
            raise ValueError(f"{what} is not a valid .npy array (it is empty)")
        pickle = " (a Python pickle? fitloop never loads one)" if data[:1] == b"\x80" else ""
        raise ValueError(f"{what} is not a valid .npy array (it begins {data[:12]!r}, not with numpy's "
                         f"b'\\x93NUMPY'){pickle}")
    try:
        if data[:8] == b"\x93NUMPY\x01\x00":
            header_end = 10 + int.from_bytes(data[8:10], "little")
            match = _NPY_HEADER.match(data, 10, header_end)
            if match:
                shape = tuple(int(n) for n in match.group(2).split(b",") if n.strip())
                return np.frombuffer(data, dtype=np.dtype(match.group(1).decode()), offset=header_end).reshape(shape)
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:  # a cut or damaged header or body; an object array
        if "allow_pickle" in str(err):
            raise ValueError(f"{what} is not a valid .npy array of numbers: it holds Python objects, stored as a "
                             f"pickle, which fitloop never loads") from None
        raise ValueError(f"{what} is not a valid .npy array ({err})") from None


def decode_json(data: bytes) -> dict[str, Any]:
    """The object in a sample's json member; SampleFormatError saying what is wrong: not UTF-8, not valid JSON, or
    not a JSON object."""
    try:
        meta = json.loads(data)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as utf8:
            raise SampleFormatError(f"json member is not UTF-8 text ({utf8})") from None
        raise SampleFormatError(f"json member is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise SampleFormatError(f"json member is not a JSON object but {type(meta).__name__} {str(meta)[:40]}")
    return meta


def split_member_name(name: str) -> tuple[str, str]:
    """(key, suffix) of a tar member name, webdataset's way: the suffix starts at the base name's first dot."""
    folder, slash, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    if not dot:
        raise SampleFormatError(f"tar member {name!r} has no suffix")
    return folder + slash + stem, suffix


def encode_sample(record: PersonRecord, jpeg: bytes, image_to_crop: np.ndarray, res: int,
                  margin: float, intrinsics: Intrinsics, image_size: tuple[int, int]) -> dict[str, bytes]:
    """The members (suffix -> bytes) of one person's sample.

    Args:
        record: the person; its arrays are copied, never modified.
        jpeg: the encoded crop, ``res``×``res`` px.
        image_to_crop: (3, 3) original-image px -> stored-crop px (`shards.crop.box_to_crop`).
        res, margin: the stored crop's side in px and how many box sides it covers.
        intrinsics: the original image's camera (`core.intrinsics.resolve_intrinsics`).
        image_size: (width, height) px of the original image as decoded.
    """
    crop_to_image = invert(image_to_crop)
    keypoints_crop = points_in_crop(image_to_crop, record.keypoints_2d)
    meta = {
        "key": record.key, "schema_version": SCHEMA_VERSION, "sample_format_version": SAMPLE_FORMAT_VERSION,
        "dataset": record.dataset, "split": record.split, "source": record.source, "record": record.record,
        "image_path": record.image_path, "image_frame": record.image_frame, "image_root": str(record.image_root),
        "image_size": [int(image_size[0]), int(image_size[1])], "intrinsics": intrinsics.to_json(),
        "center": [float(v) for v in record.center], "scale": record.scale, "box_side_px": record.box_side_px,
        "crop": {"res": res, "margin": margin, "box_side": res / margin, "box_center": [(res - 1) / 2.0] * 2,
                 "image_to_crop": to_affine_rows(image_to_crop), "crop_to_image": to_affine_rows(crop_to_image)},
        "has_smpl": record.has_smpl, "has_joints_3d": record.joints_3d is not None,
        "has_wholebody": record.wholebody is not None, "extra": dict(record.extra),
    }
    for kind in LABEL_KINDS:
        labels = getattr(record, kind)
        meta[f"has_{kind}"] = labels is not None
        if labels is not None:
            meta[f"{kind}_provenance"] = labels.provenance
            if kind != "mask":
                meta[f"{kind}_names"] = list(labels.names)
    members = {"jpg": jpeg, "json": json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8"),
               "keypoints_2d.npy": encode_npy(record.keypoints_2d),
               "keypoints_crop.npy": encode_npy(keypoints_crop)}
    for suffix, value in (("joints_3d.npy", record.joints_3d), ("smpl_pose.npy", record.smpl_pose),
                          ("smpl_betas.npy", record.smpl_betas)):
        if value is not None:
            members[suffix] = encode_npy(value)
    if record.wholebody is not None:
        members["wholebody_2d.npy"] = encode_npy(record.wholebody)
        members["wholebody_crop.npy"] = encode_npy(points_in_crop(image_to_crop, record.wholebody))
    for kind in LABEL_KINDS:
        labels = getattr(record, kind)
        if labels is not None:
            members[f"{kind}.png"] = encode_png(crop_labels(labels.array(), image_to_crop, res))
    return members


def points_in_crop(image_to_crop: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(J, 3) original-image px + confidence -> (J, 3) float32 stored-crop px + confidence (``image_to_crop``:
    (3, 3)); an absent point (confidence 0) stays all zeros in every frame."""
    crop = transform_points(image_to_crop, points).astype(np.float32)
    crop[points[:, 2] <= 0] = 0.0
    return crop


@dataclass(frozen=True, eq=False)
class StoredSample:
    """One sample as read from a shard (module docstring), arrays decoded, the JPEG still encoded.

    Attributes:
        key: the sample key; meta: the json member as a dict; jpeg: the crop's bytes.
        keypoints_2d: (49, 3) original-image px + confidence; keypoints_crop: (49, 3) stored-crop px + conf.
        joints_3d: (49, 4) or None; smpl_pose: (72,) or None; smpl_betas: (10,) or None.
        wholebody_2d: (161, 3) original-image px + confidence, wholebody_crop: (161, 3) stored-crop px +
            confidence (`core.wholebody` order), or None: a body-only dataset's sample, or one of format 1 or 2.
        mask_png, parts_png, parsing_png: the label images' PNG bytes (module docstring), or None; `labels`
            decodes them.
    """

    key: str
    meta: dict[str, Any]
    jpeg: bytes
    keypoints_2d: np.ndarray
    keypoints_crop: np.ndarray
    joints_3d: np.ndarray | None = None
    smpl_pose: np.ndarray | None = None
    smpl_betas: np.ndarray | None = None
    wholebody_2d: np.ndarray | None = None
    wholebody_crop: np.ndarray | None = None
    mask_png: bytes | None = None
    parts_png: bytes | None = None
    parsing_png: bytes | None = None

    def labels(self, kind: str) -> np.ndarray | None:
        """(res, res) uint8 label image ``kind`` (`shards.masks.LABEL_KINDS`) in the stored crop: 0 background,
        ids into `label_names` (1 = the person, for the mask), 255 unknown; None when the sample has none."""
        png = getattr(self, f"{kind}_png")
        return None if png is None else decode_png(png)

    def label_names(self, kind: str) -> tuple[str, ...]:
        """The table (id -> name) of label image ``kind``: `shards.masks.MASK_NAMES` for the mask, the json's
        ``<kind>_names`` otherwise (empty without that image)."""
        return MASK_NAMES if kind == "mask" else tuple(self.meta.get(f"{kind}_names", ()))

    @property
    def has_true_smpl(self) -> bool:
        """Whether the sample carries ground-truth SMPL: its json says ``has_smpl`` and its pose and betas are
        stored (what evaluation measures fits against, and what exports keep over any fit)."""
        return bool(self.meta.get("has_smpl")) and self.smpl_pose is not None and self.smpl_betas is not None

    @property
    def image_to_crop(self) -> np.ndarray:
        """(3, 3) original-image px -> stored-crop px."""
        return from_affine_rows(self.meta["crop"]["image_to_crop"])

    @property
    def crop_to_image(self) -> np.ndarray:
        """(3, 3) stored-crop px -> original-image px."""
        return from_affine_rows(self.meta["crop"]["crop_to_image"])

    @property
    def intrinsics(self) -> Intrinsics:
        """The original image's camera (fx, fy, cx, cy px, `core.intrinsics`): as stored, or for a format-1 sample
        (none stored: unknown) the guess from its image size; SampleFormatError when the size is unknown too."""
        stored = self.meta.get("intrinsics")
        if stored is not None:
            try:
                return Intrinsics.from_json(stored)
            except ValueError as err:
                raise SampleFormatError(f"sample {self.key!r}: json intrinsics: {err}") from None
        size = self.meta.get("image_size")
        if not size:
            raise SampleFormatError(f"sample {self.key!r} has neither intrinsics nor an image size (a shard set of "
                                    f"format 1 written without opening images); convert the dataset again with "
                                    f"fitloop preprocess")
        return fov_guess(tuple(size), why="intrinsics unknown (shard format 1)")


def decode_sample(key: str, members: dict[str, bytes]) -> StoredSample:
    """A `StoredSample` from its members (suffix -> bytes); SampleFormatError naming the key when malformed: a
    member missing or of another shape, or one the format does not have (a pickle, above all: never loaded)."""
    missing = [s for s in REQUIRED_SUFFIXES if s not in members]
    if missing:
        raise SampleFormatError(f"sample {key!r} lacks member(s) {', '.join(missing)}")
    unknown = sorted(set(members) - KNOWN_SUFFIXES)
    pickles = [s for s in unknown if s.rsplit(".", 1)[-1] in PICKLE_SUFFIXES]
    if pickles:
        raise SampleFormatError(f"sample {key!r} has member(s) {', '.join(f'{key}.{s}' for s in pickles)}: Python "
                                f"pickles, which can run code when loaded; fitloop writes none and reads none "
                                f"(webdataset refuses them with WDS_SECURE): the shard was not written by fitloop "
                                f"or was tampered with")
    if unknown:
        raise SampleFormatError(f"sample {key!r} has member(s) {', '.join(unknown)}, which sample format "
                                f"{SAMPLE_FORMAT_VERSION} does not have")
    try:
        meta = decode_json(members["json"])
        arrays = {field: decode_npy(members[suffix], f"{suffix} member") for suffix, (field, _) in _ARRAYS.items()
                  if suffix in members}
    except ValueError as err:
        raise SampleFormatError(f"sample {key!r}: {err}") from None
    if meta.get("sample_format_version") not in READABLE_SAMPLE_FORMATS:
        raise SampleFormatError(f"sample {key!r} has format version {meta.get('sample_format_version')}, this "
                                f"reader reads {', '.join(map(str, READABLE_SAMPLE_FORMATS))}")
    wholebody = [s for s in WHOLEBODY_SUFFIXES if s in members]
    if wholebody and meta.get("sample_format_version", 0) < 3:
        raise SampleFormatError(f"sample {key!r} of format {meta.get('sample_format_version')} has member(s) "
                                f"{', '.join(wholebody)}, which formats before 3 do not have")
    if len(wholebody) not in (0, len(WHOLEBODY_SUFFIXES)):
        raise SampleFormatError(f"sample {key!r} has {wholebody[0]} without "
                                f"{next(s for s in WHOLEBODY_SUFFIXES if s not in members)}")
    labels = [s for s in LABEL_SUFFIXES if s in members]
    if labels and meta.get("sample_format_version", 0) < 4:
        raise SampleFormatError(f"sample {key!r} of format {meta.get('sample_format_version')} has member(s) "
                                f"{', '.join(labels)}, which formats before 4 do not have")
    for suffix, (field, shape) in _ARRAYS.items():
        if field in arrays and arrays[field].shape != shape:
            raise SampleFormatError(f"sample {key!r}: {suffix} has shape {arrays[field].shape}, expected {shape}")
    return StoredSample(key=key, meta=meta, jpeg=members["jpg"], **arrays,
                        **{field: members[s] for s, field in LABEL_SUFFIXES.items() if s in members})
