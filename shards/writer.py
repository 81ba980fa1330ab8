"""Write person records to webdataset shards: one sample per person, a rejects table and a manifest per shard set.

A shard set is one folder:

* ``<dataset>-<split>-<nnnnnn>.tar``: the samples (`shards.sample` gives the layout), ``samples_per_shard`` at
  most, one dataset and split per shard. Tars are deterministic (members sorted per sample, mtime 0, uid/gid 0,
  mode 0444): the same records and config give the same bytes.
* ``rejects.parquet``: one row per record that did not become a sample (`shards.schema.REJECT_COLUMNS`): the
  adapter's rejects and images that fail to decode at crop time.
* ``manifest.json``: what is in the set (`finalize_manifest`); written last, and only when every shard it names
  is on disk with the size and sha256 its chunk reported, so a folder without one is not a finished shard set.
* ``.chunks/``: while a set is unfinished, one receipt per finished chunk (``<shard name>.json``: its
  `ChunkResult` and the digest of its inputs, `chunk_digest`); removed once the manifest is written.

Every file is written as ``<name>.tmp`` and renamed into place, so a killed run never leaves a half-written file
under a final name. A set is written into a new or empty folder, or one holding a fitloop set (finished, to replace
with ``overwrite``; unfinished, to resume); fitloop removes only the files it writes there (`is_set_file`) and
refuses a folder that holds anything else (`check_out_dir`). Read = written + rejected holds for every dataset and
split, and the manifest records it.

The unit of work is a chunk (`write_chunk`: records -> one shard + its rejects -> a `ChunkResult`), so a flow can
write chunks in parallel and call `finalize_manifest` once; `write_shards` does both in one process.

**Resume.** Writing into a folder that holds an unfinished set (a ``.chunks/`` folder, no manifest) continues it:
`plan_chunks` keeps every chunk whose receipt names the same input digest and whose shard still has the
recorded size and sha256, and hands the rest back to be written. A retried or re-run conversion therefore rewrites
only what the failed attempt did not finish; the tars are deterministic, so the set is the one an uninterrupted
run writes.

**One run per folder.** A run holds an exclusive lock on ``<out>/.writing.lock`` (`writing_lock`, ``flock``) while
it writes, so a second run into the same folder is refused at its start with one line naming the first (pid and
host) instead of failing half-way when the first renames a file it was about to write. The operating system
releases the lock of a killed process, so a run killed with SIGKILL is resumed by the next; the file is removed
when a run ends (a killed run's stays behind, unlocked, and is taken over).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tarfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from core.errors import FitloopError, naming_file
from core.intrinsics import EXIF_IFD, resolve_intrinsics
from core.killpoint import kill_point
from shards.crop import box_problem, box_to_crop, warp
from shards.frames import VideoFrames
from shards.masks import LABEL_KINDS
from shards.receipts import CHUNKS_DIR, chunk_digest, file_sha256, read_receipt, write_receipt
from shards.sample import READABLE_SAMPLE_FORMATS, SAMPLE_FORMAT_VERSION, encode_sample
from shards.schema import REJECT_COLUMNS, SCHEMA_VERSION, PersonRecord, Reject

MANIFEST = "manifest.json"
MIN_CROP_RES = 8  # px: the smallest stored crop (`ShardConfig.crop_res`)
LOCK = ".writing.lock"  # held by the run writing the set (`writing_lock`); never one of the set's files
REJECTS = "rejects.parquet"
SHARD_SUFFIX = ".tar"
TMP_SUFFIX = ".tmp"
# A shard's file name, as `iter_chunks` names it: ``<dataset>-<split>-<nnnnnn>.tar``.
SHARD_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*-[A-Za-z0-9_-]+-[0-9]{6}\.tar$")


class ShardSetError(FitloopError):
    """A shard set is missing, unfinished, or does not match its manifest."""


class ShardWriteError(ShardSetError):
    """The shard set cannot be written as asked (an existing set in the way, duplicate keys, bad config)."""


@dataclass(frozen=True)
class ShardConfig:
    """How records become shards; the resolved config is saved in the manifest.

    Attributes:
        crop_res: side of the stored crop, px. 320 at ``crop_margin`` 1.5 keeps the box at 213 px, close to the
            224 px a training crop shows it at.
        crop_margin: the stored crop covers ``crop_margin`` × the person box (side 200·scale) around its centre,
            so scale and rotation augmentation have context: 1.5 covers a scale of 1.25 at any rotation up to
            ±8°, or any scale up to 1.06 at ±45°, and SPIN's rotation is 0 with p = 0.6. Beyond the stored
            crop the reader sees black, as SPIN does beyond the image.
        jpeg_quality: JPEG quality of the stored crop (PIL's default chroma subsampling).
        samples_per_shard: most samples in one shard.
        antialias: box-filter a region first when the crop shrinks the image by 2× or more (`shards.crop.warp`).
    """

    crop_res: int = 320
    crop_margin: float = 1.5
    jpeg_quality: int = 90
    samples_per_shard: int = 1000
    antialias: bool = True

    def __post_init__(self) -> None:
        """`ShardWriteError` naming the first setting out of range, alone (a caller that has only some of them, a
        flow's parameters, passes the line on)."""
        checks = ((self.crop_res >= MIN_CROP_RES, "crop_res", f"an integer >= {MIN_CROP_RES} (the stored crop's side, "
                                                              f"px)"),
                  (1.0 <= self.crop_margin < float("inf"), "crop_margin",
                   "a finite number >= 1 (crop side / person box side)"),
                  (1 <= self.jpeg_quality <= 100, "jpeg_quality", "an integer in [1, 100]"),
                  (self.samples_per_shard >= 1, "samples_per_shard", "an integer >= 1"))
        for ok, name, what in checks:
            if not ok:
                raise ShardWriteError(f"{name}: {getattr(self, name)!r} must be {what}")


def _empty_counts() -> dict[str, int]:
    return {"read": 0, "written": 0, "rejected": 0}


@dataclass
class ChunkResult:
    """What one `write_chunk` call did; plain json-able values, so a flow can pass it between processes.

    Attributes:
        shard: the shard's file name, or None when the chunk held no sample (only rejects).
        sha256, bytes, samples: the shard file's digest, size and sample count.
        counts: dataset -> split -> {"read", "written", "rejected"} for every record of the chunk.
        rejects: reject rows (`Reject.to_row`), the adapter's and this chunk's crop-time ones.
        keys: the keys written, in order (for the duplicate check across chunks; not kept in the manifest).
        has_smpl, has_joints_3d, has_wholebody, has_mask, has_parts, has_parsing: samples with ground-truth
            SMPL, with 3D joints, with whole-body keypoints, with a person mask, with part labels, with a parsing.
        sources: distinct {dataset, split, source, image_root} of the samples written (annotation file and image
            folder; a reject's source is in its row).
    """

    shard: str | None = None
    sha256: str | None = None
    bytes: int = 0
    samples: int = 0
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    has_smpl: int = 0
    has_joints_3d: int = 0
    has_wholebody: int = 0
    has_mask: int = 0
    has_parts: int = 0
    has_parsing: int = 0
    sources: list[dict[str, str]] = field(default_factory=list)

    def count(self, dataset: str, split: str, what: str) -> None:
        entry = self.counts.setdefault(dataset, {}).setdefault(split, _empty_counts())
        entry["read"] += 1
        entry[what] += 1


def crop_record(record: PersonRecord, image: Image.Image, config: ShardConfig) -> tuple[bytes, np.ndarray]:
    """The stored crop of one person: (JPEG bytes, (3, 3) original-image px -> crop px).

    The crop is ``config.crop_res`` px square, centred on the box centre, covering ``crop_margin`` × the box side,
    unrotated; outside the image it is black.
    """
    side = record.box_side_px * config.crop_margin
    image_to_crop = box_to_crop(record.center.astype(np.float64), side, config.crop_res)
    crop = warp(image, image_to_crop, config.crop_res, antialias=config.antialias)
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=config.jpeg_quality)
    return buffer.getvalue(), image_to_crop


def exif_tags(image: Image.Image) -> dict[int, Any]:
    """An opened image's EXIF tags, number -> value: the main IFD's and the Exif IFD's (0x8769, where the focal
    length tags live); empty when it has none or they do not parse."""
    try:
        exif = image.getexif()
        return {**dict(exif), **dict(exif.get_ifd(EXIF_IFD))}
    except Exception:  # a damaged EXIF block must not cost the sample: its intrinsics fall back to the guess
        return {}


class _ImageCache:
    """The last decoded image and its EXIF tags: records of one image come together, so each image is decoded
    once. Frames of a video (``frame`` not None) come from the open video's reader (`shards.frames.VideoFrames`:
    in order, one pass per sequence); a video has no EXIF."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.frame: int | None = None
        self.image: Image.Image | None = None
        self.exif: dict[int, Any] = {}
        self.video: VideoFrames | None = None

    def get(self, path: Path, frame: int | None = None) -> Image.Image:
        if (path, frame) != (self.path, self.frame):
            self.path, self.image = None, None
            if frame is None:
                with Image.open(path) as opened:
                    exif = exif_tags(opened)
                    image = opened.convert("RGB")  # decodes every pixel: a truncated file fails here
            else:
                if self.video is None or self.video.path != path:
                    self.close()
                    self.video = VideoFrames(path)
                image, exif = self.video.frame(frame), {}
            self.path, self.frame, self.image, self.exif = path, frame, image, exif
        return self.image

    def close(self) -> None:
        if self.video is not None:
            self.video.close()
            self.video = None


class _HashingFile:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.sha256, self.bytes = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.bytes


def tar_member(name: str, size: int) -> tarfile.TarInfo:
    """The header of a reproducible tar member: mtime 0, read-only, no owner (webdataset's writer does the same)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_chunk(records: list[PersonRecord | Reject], out_dir: Path, shard_name: str,
                config: ShardConfig, digest: str | None = None) -> ChunkResult:
    """Write the persons among ``records`` to ``out_dir/<shard_name>.tar``; table the rejects; leave a receipt.

    Args:
        records: adapter outputs, in order; `Reject`s pass through to the result. At most
            ``config.samples_per_shard`` persons, keys unique.
        out_dir: the shard set's folder (created if missing); absolute when the chunk runs in another process.
        shard_name: the shard's name without ``.tar``; no '/'.
        config: crop and encoding options.
        digest: `chunk_digest` of ``records`` and ``config``, when the caller has it (computed here otherwise).
    Returns:
        The chunk's `ChunkResult`, also saved as ``out_dir/.chunks/<shard_name>.json`` with ``digest`` once the
        shard is in place (what `plan_chunks` resumes from). No shard is written when no record becomes a
        sample. A person whose image cannot be read now becomes a ``missing_image``/``corrupt_image`` reject and
        the chunk goes on.
    Raises:
        ShardWriteError: too many persons, or a key twice.
    """
    persons = [r for r in records if isinstance(r, PersonRecord)]
    if len(persons) > config.samples_per_shard:
        raise ShardWriteError(f"chunk {shard_name} has {len(persons)} persons, samples_per_shard is "
                              f"{config.samples_per_shard}")
    if "/" in shard_name or not shard_name:
        raise ShardWriteError(f"shard name {shard_name!r} must be a plain file name")
    duplicates = [k for k, n in Counter(p.key for p in persons).items() if n > 1]
    if duplicates:
        raise ShardWriteError(f"chunk {shard_name}: key(s) {', '.join(duplicates[:5])} occur more than once")

    result = ChunkResult()
    sources: dict[tuple[str, ...], None] = {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / (shard_name + SHARD_SUFFIX)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    cache = _ImageCache()
    try:
        with naming_file(tmp), open(tmp, "wb") as raw:
            hashing = _HashingFile(raw)
            with tarfile.open(fileobj=hashing, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for item in records:
                    if isinstance(item, Reject):
                        result.count(item.dataset, item.split, "rejected")
                        result.rejects.append(item.to_row())
                        continue
                    members = _sample_members(item, cache, config)
                    if isinstance(members, Reject):
                        result.count(item.dataset, item.split, "rejected")
                        result.rejects.append(members.to_row())
                        continue
                    for suffix in sorted(members):
                        data = members[suffix]
                        tar.addfile(tar_member(f"{item.key}.{suffix}", len(data)), io.BytesIO(data))
                    result.count(item.dataset, item.split, "written")
                    sources[(item.dataset, item.split, item.source, str(item.image_root))] = None
                    result.keys.append(item.key)
                    result.samples += 1
                    result.has_smpl += int(item.has_smpl)
                    result.has_joints_3d += int(item.joints_3d is not None)
                    result.has_wholebody += int(item.wholebody is not None)
                    result.has_mask += int(item.mask is not None)
                    result.has_parts += int(item.parts is not None)
                    result.has_parsing += int(item.parsing is not None)
                    kill_point("shards.sample")
            raw.flush()
            os.fsync(raw.fileno())
        cache.close()
        if result.samples:
            with naming_file(final):
                os.replace(tmp, final)
            result.shard, result.sha256, result.bytes = final.name, hashing.sha256.hexdigest(), hashing.bytes
        else:
            tmp.unlink()
    except BaseException:
        cache.close()
        tmp.unlink(missing_ok=True)
        raise
    result.sources = [dict(zip(("dataset", "split", "source", "image_root"), s)) for s in sources]
    write_receipt(out_dir, shard_name, digest or chunk_digest(records, config), asdict(result))
    kill_point("shards.chunk")
    return result


def _sample_members(record: PersonRecord, cache: _ImageCache, config: ShardConfig) -> dict[str, bytes] | Reject:
    """The sample's members, or a reject when its image cannot be read now or its box lies mostly outside it."""
    path = record.image_root / record.image_path
    reason = ""
    try:
        image = cache.get(path, record.image_frame)
    except FileNotFoundError as err:
        reason, message = "missing_image", f"{path}: {err}"
    except Exception as err:  # PIL raises many types for bad bytes (OSError, UnidentifiedImageError, SyntaxError)
        reason, message = "corrupt_image", f"{path.name} failed to decode at crop time: {type(err).__name__}: {err}"
    if reason:
        return Reject(dataset=record.dataset, split=record.split, source=record.image_path, record=record.record,
                      reason=reason, message=message, key=record.key)
    problem = box_problem(record.center, record.box_side_px, image.size)  # the adapter may not have had the size
    if problem:
        return Reject(dataset=record.dataset, split=record.split, source=record.source, record=record.record,
                      reason="degenerate_box", message=problem, key=record.key)
    for name in LABEL_KINDS:
        labels = getattr(record, name)
        if labels is not None and labels.size != (image.height, image.width):
            return Reject(dataset=record.dataset, split=record.split, source=record.source, record=record.record,
                          reason="image_size_mismatch", key=record.key, message=(
                              f"its {name} is {labels.size[1]}x{labels.size[0]} px, {path.name} is "
                              f"{image.width}x{image.height}"))
    jpeg, image_to_crop = crop_record(record, image, config)
    intrinsics = resolve_intrinsics(record.intrinsics, cache.exif, image.size)
    return encode_sample(record, jpeg, image_to_crop, config.crop_res, config.crop_margin, intrinsics, image.size)


# --- The shard set --------------------------------------------------------------------------------------------

def write_shards(records: Iterable[PersonRecord | Reject], out_dir: Path, config: ShardConfig = ShardConfig(), *,
                 inputs: list[dict[str, Any]] | None = None, overwrite: bool = False,
                 on_item: Callable[[PersonRecord | Reject], None] | None = None,
                 on_chunk: Callable[[ChunkResult, bool], None] | None = None) -> dict[str, Any]:
    """Write a whole shard set in this process: chunks per (dataset, split), then the manifest.

    Args:
        records: adapter outputs (`pipelines.adapters.iter_dataset`), any mix of datasets and splits.
        out_dir: the shard set's folder: new, empty, or holding an unfinished set to resume (module docstring);
            a finished set only with ``overwrite``.
        config: crop, encoding and shard size.
        inputs: what was read (e.g. ``[{"dataset", "split", "root", "options"}]``), kept in the manifest.
        overwrite: replace the shard set in ``out_dir`` (its ``.tar`` files, rejects, receipts and manifest).
        on_item: called after each record is taken from ``records`` (a progress bar).
        on_chunk: called after each chunk with its `ChunkResult` and whether it was kept from an earlier attempt.
    Returns:
        The manifest (as written to ``out_dir/manifest.json``).
    """
    out_dir = Path(out_dir).resolve()
    with writing_lock(out_dir):
        prepare_out_dir(out_dir, overwrite)
        results = []
        for name, chunk, digest, kept in plan_chunks(records, out_dir, config, on_item=on_item):
            results.append(kept or write_chunk(chunk, out_dir, name, config, digest))
            if on_chunk is not None:
                on_chunk(results[-1], kept is not None)
        return finalize_manifest(out_dir, results, config, inputs=inputs)


def plan_chunks(records: Iterable[PersonRecord | Reject], out_dir: Path, config: ShardConfig, *,
                on_item: Callable[[PersonRecord | Reject], None] | None = None,
                ) -> Iterator[tuple[str, list[PersonRecord | Reject], str, ChunkResult | None]]:
    """The chunks of `iter_chunks`, each as (shard name, records, `chunk_digest`, kept): ``kept`` is the result of
    the same chunk finished by an earlier attempt at ``out_dir`` (`finished_chunk`), None when it is to be written.

    Records whose ``image_root`` is relative are given the absolute one, so a chunk reads the same files in any
    process (a Dask worker's working folder is not this one's)."""
    absolute = (_absolute_root(item) for item in records)
    for name, chunk in iter_chunks(absolute, config.samples_per_shard, on_item=on_item):
        digest = chunk_digest(chunk, config)
        yield name, chunk, digest, finished_chunk(out_dir, name, digest)


def _absolute_root(item: PersonRecord | Reject) -> PersonRecord | Reject:
    if isinstance(item, PersonRecord) and not Path(item.image_root).is_absolute():
        return dataclasses.replace(item, image_root=Path(item.image_root).resolve())
    return item


def finished_chunk(out_dir: Path, shard_name: str, digest: str) -> ChunkResult | None:
    """The result of chunk ``shard_name`` as an earlier attempt finished it, when its receipt names ``digest`` and
    its shard (if it has one) is in ``out_dir`` with the recorded size and sha256; else None."""
    recorded = read_receipt(out_dir, shard_name, digest)
    if recorded is None:
        return None
    try:
        result = ChunkResult(**recorded)
    except TypeError:  # a receipt from another version of ChunkResult
        return None
    if not _sound(result):  # a damaged receipt: the chunk is written again
        return None
    if result.shard is not None:
        path = Path(out_dir) / result.shard
        if not path.is_file() or file_sha256(path) != (result.bytes, result.sha256):
            return None
    return result


def _sound(result: ChunkResult) -> bool:
    """Whether a `ChunkResult` read back from a receipt has every field of the kind `finalize_manifest` uses."""
    def counts(v: Any) -> bool:
        return isinstance(v, dict) and all(isinstance(s, dict) and all(_counts(c) for c in s.values())
                                           for s in v.values())

    return ((result.shard is None or (isinstance(result.shard, str) and bool(SHARD_NAME.match(result.shard))))
            and (result.sha256 is None or isinstance(result.sha256, str))
            and _count(result.bytes) and _count(result.samples) and counts(result.counts)
            and _count(result.has_smpl) and _count(result.has_joints_3d) and _count(result.has_wholebody)
            and isinstance(result.rejects, list)
            and all(isinstance(r, dict) and set(REJECT_COLUMNS) <= set(r) for r in result.rejects)
            and isinstance(result.keys, list) and all(isinstance(k, str) for k in result.keys)
            and isinstance(result.sources, list) and all(isinstance(x, dict) for x in result.sources))


def iter_chunks(records: Iterable[PersonRecord | Reject], samples_per_shard: int, *,
                on_item: Callable[[PersonRecord | Reject], None] | None = None,
                ) -> Iterator[tuple[str, list[PersonRecord | Reject]]]:
    """Group records into shard-sized chunks: (shard name, records) per (dataset, split), in input order.

    A chunk holds at most ``samples_per_shard`` persons; rejects ride along with the chunk open for their group,
    so every record lands in exactly one chunk. Shard names are ``<dataset>-<split>-<nnnnnn>``. A full chunk is
    yielded as soon as the next person of its group arrives, so chunks can be written while records are read.
    """
    open_chunks: dict[tuple[str, str], list[PersonRecord | Reject]] = {}
    persons: Counter[tuple[str, str]] = Counter()  # persons in each open chunk
    shard_index: Counter[tuple[str, str]] = Counter()

    def close(group: tuple[str, str]) -> tuple[str, list[PersonRecord | Reject]]:
        name = f"{group[0]}-{group[1]}-{shard_index[group]:06d}"
        shard_index[group] += 1
        persons[group] = 0
        return name, open_chunks.pop(group)

    for item in records:
        group = (item.dataset, item.split)
        if isinstance(item, PersonRecord):
            if persons[group] == samples_per_shard:
                yield close(group)
            persons[group] += 1
        open_chunks.setdefault(group, []).append(item)
        if on_item is not None:
            on_item(item)
    for group in sorted(open_chunks):
        yield close(group)


def check_out_dir(out_dir: Path, overwrite: bool) -> bool:
    """Whether ``out_dir`` can take a shard set, without changing anything: True when it holds an unfinished set
    to resume (and not ``overwrite``).

    fitloop writes a shard set into a new or empty folder, or into one that holds a fitloop shard set: a finished
    one (``manifest.json``) to replace with ``overwrite``, or an unfinished one (``.chunks/``) to resume. It removes
    only files it writes itself (`is_set_file`), so `ShardWriteError` names the first other file it finds there
    (even with ``overwrite``), as it does for a finished set without ``overwrite`` and a file in the folder's
    place."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ShardWriteError(f"{out_dir} is a file, not a folder; choose a folder for the shard set")
    if not out_dir.is_dir():
        return False
    check_not_locked(out_dir)
    entries = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK)
    finished, unfinished = MANIFEST in entries, (out_dir / CHUNKS_DIR).is_dir()
    if not finished and not unfinished:
        if entries:
            raise ShardWriteError(f"{out_dir} holds {_named(entries)} but no fitloop shard set (no {MANIFEST}, no "
                                  f"{CHUNKS_DIR}/); a shard set goes into a new or empty folder: choose another "
                                  f"folder, or move those files away")
        return False
    foreign = [name for name in entries if not is_set_file(name)]
    if foreign:
        raise ShardWriteError(f"{out_dir} holds {_named(foreign)}, not written by fitloop for its shard set; "
                              f"fitloop removes only its own files: move {'it' if len(foreign) == 1 else 'them'} "
                              f"away, or choose another folder")
    if finished and not overwrite:
        raise ShardWriteError(f"{out_dir} already holds a shard set ({MANIFEST}); choose another folder, or "
                              f"overwrite it (fitloop preprocess --overwrite)")
    return unfinished and not finished and not overwrite


def is_set_file(name: str) -> bool:
    """Whether a file name in a shard-set folder is one fitloop writes there: the manifest, the rejects table, the
    receipts folder, a shard (`SHARD_NAME`), or one of those being written (``.tmp``)."""
    base = name.removesuffix(TMP_SUFFIX)
    return base in (MANIFEST, REJECTS, CHUNKS_DIR) or bool(SHARD_NAME.match(base))


def _named(names: list[str]) -> str:
    return repr(names[0]) + (f" and {len(names) - 1} more" if len(names) > 1 else "")


# The folders this process holds (`writing_lock`): resolved folder -> [lock file descriptor, holding thread, depth].
_HELD: dict[Path, list[int]] = {}
_HELD_GUARD = threading.Lock()
LOCK_TRIES = 5  # 50 ms apart


def config_hash(config: dict[str, Any]) -> str:
    """The ``config_sha256`` of a manifest (`finalize_manifest`; `shards.verify` checks it): the sha256 (hex) of
    the resolved `ShardConfig` as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


@contextmanager
def writing_lock(out_dir: Path) -> Iterator[None]:
    """Hold the shard-set folder ``out_dir`` (made if missing) for one writing run: an exclusive ``flock`` on
    `LOCK` in it, so that a run in another process (here or on another machine of a shared filesystem that honours
    ``flock``) is refused with `ShardWriteError` instead of writing the same files. Re-entrant in the holding
    thread (a flow holds the folder while its task writes it); another thread of this process is refused too.
    The lock dies with the process; the file is removed on leaving, and the folder too when this call made it and
    it is empty (a run refused before writing leaves nothing behind)."""
    out_dir = Path(out_dir).resolve()
    me = threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(out_dir)
        if held is not None and held[1] == me:
            held[2] += 1
    if held is None:
        made = not out_dir.exists()
        fd = _lock(out_dir)
        with _HELD_GUARD:
            _HELD[out_dir] = held = [fd, me, 1, made]
    elif held[1] != me:
        raise _busy(out_dir, f"pid {os.getpid()} on host {socket.gethostname()}, this process")
    try:
        yield
    finally:
        with _HELD_GUARD:
            held[2] -= 1
            last = held[2] == 0
            if last:
                del _HELD[out_dir]
        if last:
            try:
                (out_dir / LOCK).unlink(missing_ok=True)  # before the lock goes: see `_lock` for who may still wait
                if held[3]:
                    with contextlib.suppress(OSError):  # not empty: the run wrote there
                        out_dir.rmdir()
            finally:
                os.close(held[0])


def _lock(out_dir: Path) -> int:
    """A descriptor of ``out_dir/LOCK`` holding its exclusive ``flock``, the holder (pid, host) written in it."""
    path = out_dir / LOCK
    tries = 0
    while True:
        out_dir.mkdir(parents=True, exist_ok=True)  # again each try: a holder that made it removes it empty
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # that holder removed it between the two: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            tries += 1
            if tries < LOCK_TRIES:  # a probe (`check_not_locked`) holds it for an instant; a run, for its length
                os.close(fd)
                time.sleep(0.05)
                continue
            error = _held_elsewhere(out_dir, fd)
            os.close(fd)
            raise error from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the file a run removed as it ended, locked after it let go: not the lock any more, take the new one
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        locked = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (locked.st_dev, locked.st_ino):
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def _held_elsewhere(out_dir: Path, fd: int) -> ShardWriteError:
    pid, host = (os.pread(fd, 300, 0).decode(errors="replace").split() + ["?", "?"])[:2]
    return _busy(out_dir, f"pid {pid} on host {host}")


def _busy(out_dir: Path, holder: str) -> ShardWriteError:
    return ShardWriteError(f"another run ({holder}) is writing {out_dir}; wait for it or choose another output "
                           f"folder")


def check_not_locked(out_dir: Path) -> None:
    """`ShardWriteError` when another run holds ``out_dir`` (`writing_lock`), so that it is refused before any
    work; changes nothing. Passes when this thread holds it."""
    out_dir = Path(out_dir).resolve()
    with _HELD_GUARD:
        held = _HELD.get(out_dir)
    if held is not None:
        if held[1] != threading.get_ident():
            raise _busy(out_dir, f"pid {os.getpid()} on host {socket.gethostname()}, this process")
        return
    try:
        fd = os.open(out_dir / LOCK, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _held_elsewhere(out_dir, fd) from None
    finally:
        os.close(fd)  # releases the probe's lock, if it got it


def prepare_out_dir(out_dir: Path, overwrite: bool) -> bool:
    """Make ``out_dir`` ready for a shard set (`check_out_dir` says when it cannot): ``overwrite`` removes the set
    already there; an unfinished set is kept to resume, less its half-written ``.tmp`` files. Only fitloop's own
    files are removed (`check_out_dir` refuses a folder with others). Returns True when resuming."""
    out_dir = Path(out_dir)
    resuming = check_out_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in out_dir.iterdir():
        if not is_set_file(path.name):  # appeared since the check: not ours to remove
            continue
        if path.name == CHUNKS_DIR:
            if overwrite:
                shutil.rmtree(path)
        elif overwrite or path.name.endswith(TMP_SUFFIX):  # a .tmp is left by a killed run of ours
            path.unlink()
    (out_dir / CHUNKS_DIR).mkdir(exist_ok=True)
    return resuming


def finalize_manifest(out_dir: Path, chunk_results: list[ChunkResult], config: ShardConfig, *,
                      inputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write ``rejects.parquet`` and ``manifest.json`` for the chunks written to ``out_dir``; return the manifest.

    Manifest fields: ``format``, ``sample_format_version``, ``schema_version``, ``fitloop_version``,
    ``created_utc``, ``config`` (resolved) and ``config_sha256``, ``inputs``, ``sources``, ``counts`` (read, written,
    rejected), ``by_dataset`` (dataset -> split -> counts), ``rejects_by_reason``, ``has_smpl``,
    ``has_joints_3d``, ``has_wholebody``, ``has_mask``, ``has_parts``, ``has_parsing``, ``shards`` (name, sha256, bytes, samples, dataset, split per shard) and ``rejects`` (file,
    rows, sha256).

    Before the manifest is written, every shard a chunk reported is checked on disk (present, with the size and
    sha256 the chunk reported) and ``.tar`` files no chunk reported (left by an earlier attempt with other inputs)
    are removed; after it, the receipts folder goes.

    Raises:
        ShardWriteError: a key written by two chunks, counts that do not reconcile (read = written + rejected), or a
            shard that is not on disk as its chunk reported it.
    """
    from core import __version__

    out_dir = Path(out_dir)
    verify_chunks(out_dir, chunk_results)
    seen: dict[str, str] = {}
    for result in chunk_results:
        for key in result.keys:
            if key in seen:
                raise ShardWriteError(f"key {key!r} is in both {seen[key]} and {result.shard}")
            seen[key] = str(result.shard)

    by_dataset: dict[str, dict[str, dict[str, int]]] = {}
    for result in chunk_results:
        for dataset, splits in result.counts.items():
            for split, counts in splits.items():
                total = by_dataset.setdefault(dataset, {}).setdefault(split, _empty_counts())
                for what, n in counts.items():
                    total[what] += n
    by_dataset = {d: dict(sorted(s.items())) for d, s in sorted(by_dataset.items())}
    totals = _empty_counts()
    for splits in by_dataset.values():
        for counts in splits.values():
            if counts["read"] != counts["written"] + counts["rejected"]:
                raise ShardWriteError(f"counts do not reconcile: {counts}")
            for what in totals:
                totals[what] += counts[what]

    reject_rows = [row for result in chunk_results for row in result.rejects]
    if len(reject_rows) != totals["rejected"]:
        raise ShardWriteError(f"{len(reject_rows)} reject rows for {totals['rejected']} rejected records")
    rejects_sha = write_rejects(out_dir / REJECTS, reject_rows)
    kill_point("shards.rejects")

    shards = []
    for result in chunk_results:
        if result.shard is None:
            continue
        groups = [(d, s) for d, splits in result.counts.items() for s, c in splits.items() if c["written"]]
        dataset, split = groups[0] if len(groups) == 1 else (None, None)  # a flow may mix; write_shards never does
        shards.append({"name": result.shard, "sha256": result.sha256, "bytes": result.bytes,
                       "samples": result.samples, "dataset": dataset, "split": split})
    shards.sort(key=lambda s: s["name"])
    sources = sorted({tuple(s.items()) for result in chunk_results for s in result.sources})
    config_dict = asdict(config)
    manifest = {
        "format": "fitloop-shards", "sample_format_version": SAMPLE_FORMAT_VERSION,
        "schema_version": SCHEMA_VERSION, "fitloop_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config_dict,
        "config_sha256": config_hash(config_dict),
        "inputs": inputs or [], "sources": [dict(s) for s in sources],
        "counts": totals, "by_dataset": by_dataset,
        "rejects_by_reason": dict(sorted(Counter(r["reason"] for r in reject_rows).items())),
        "has_smpl": sum(r.has_smpl for r in chunk_results),
        "has_joints_3d": sum(r.has_joints_3d for r in chunk_results),
        "has_wholebody": sum(r.has_wholebody for r in chunk_results),  # sets before format 3: absent (0)
        "has_mask": sum(r.has_mask for r in chunk_results),  # sets before format 4: absent (0)
        "has_parts": sum(r.has_parts for r in chunk_results),
        "has_parsing": sum(r.has_parsing for r in chunk_results),
        "shards": shards,
        "rejects": {"file": REJECTS, "rows": len(reject_rows), "sha256": rejects_sha},
    }
    listed = {s["name"] for s in shards}
    for stray in out_dir.glob("*" + SHARD_SUFFIX):
        if stray.name not in listed and SHARD_NAME.match(stray.name):
            stray.unlink()
    _write_atomic(out_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    shutil.rmtree(out_dir / CHUNKS_DIR, ignore_errors=True)
    return manifest


def verify_chunks(out_dir: Path, chunk_results: list[ChunkResult]) -> None:
    """`ShardWriteError` unless every shard of ``chunk_results`` is a file in ``out_dir`` with the size and sha256
    its chunk reported (a chunk written on a Dask worker lands on the worker's filesystem)."""
    for result in chunk_results:
        if result.shard is None:
            continue
        path = Path(out_dir) / result.shard
        if not path.is_file():
            raise ShardWriteError(f"{path}: reported written by its chunk but not there; when chunks run on Dask "
                                  f"workers, they and this process must see {out_dir} at the same absolute path")
        if file_sha256(path) != (result.bytes, result.sha256):
            raise ShardWriteError(f"{path}: not the file its chunk wrote (size or sha256 differ); another run "
                                  f"may be writing into {out_dir}: one run per folder, then write it again")


def write_rejects(path: Path, rows: list[dict[str, Any]]) -> str:
    """Write reject rows as parquet with exactly `REJECT_COLUMNS` (also when empty); return the file's sha256."""
    table = pa.table({column: pa.array([row[column] for row in rows],
                                       type=pa.int32() if column == "schema_version" else pa.string())
                      for column in REJECT_COLUMNS})
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    data = buffer.getvalue().to_pybytes()
    _write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with naming_file(tmp), open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    with naming_file(path):
        os.replace(tmp, path)


def load_manifest(shard_dir: Path) -> dict[str, Any]:
    """The manifest of a shard set; `ShardSetError` when it is missing or not a fitloop shard set this reads."""
    path = Path(shard_dir) / MANIFEST
    if not Path(shard_dir).is_dir():
        raise ShardSetError(f"{shard_dir} is not a folder")
    if not path.is_file():
        raise ShardSetError(f"{shard_dir} has no {MANIFEST}: not a shard set, or its writing did not finish")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ShardSetError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "fitloop-shards":
        raise ShardSetError(f"{path} is not a fitloop shard manifest")
    if manifest.get("sample_format_version") not in READABLE_SAMPLE_FORMATS:
        raise ShardSetError(f"{path}: sample format {manifest.get('sample_format_version')}, this fitloop reads "
                            f"{', '.join(map(str, READABLE_SAMPLE_FORMATS))}; convert the dataset again with "
                            f"fitloop preprocess")
    problem = manifest_problem(manifest)
    if problem:
        raise ShardSetError(f"{path}: {problem}: the manifest is damaged; convert the dataset again (fitloop "
                            f"preprocess --overwrite)")
    return manifest


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _counts(v: Any) -> bool:
    return isinstance(v, dict) and all(_count(v.get(k)) for k in ("read", "written", "rejected"))


def _file_name(v: Any) -> bool:
    """A plain file name in the set's folder: no folder part, so a manifest never points outside its set."""
    return isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\\" not in v


def _optional_name(v: Any) -> bool:
    return v is None or isinstance(v, str)


# Manifest field -> (check, what it must be): what every reader of a manifest relies on (`manifest_problem`).
MANIFEST_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "counts": (_counts, "an object of read, written and rejected counts"),
    "by_dataset": (lambda v: isinstance(v, dict) and all(isinstance(s, dict) and all(_counts(c) for c in s.values())
                                                         for s in v.values()),
                   "dataset -> split -> counts"),
    "rejects_by_reason": (lambda v: isinstance(v, dict) and all(_count(n) for n in v.values()), "reason -> count"),
    "shards": (lambda v: isinstance(v, list), "a list of shards"),
    "rejects": (lambda v: isinstance(v, dict) and _file_name(v.get("file")) and _count(v.get("rows"))
                and isinstance(v.get("sha256"), str), "an object of file, rows and sha256"),
    "config": (lambda v: isinstance(v, dict) and all(isinstance(v.get(k), (int, float)) and v.get(k) > 0
                                                     for k in ("crop_res", "crop_margin")),
               "the shard config (crop_res, crop_margin, ...)"),
    "has_smpl": (_count, "a count"),
    "has_joints_3d": (_count, "a count"),
    "schema_version": (_count, "an integer"),
    "created_utc": (lambda v: isinstance(v, str), "a time"),
}
SHARD_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: _file_name(v) and v.endswith(SHARD_SUFFIX), "a .tar file name"),
    "sha256": (lambda v: isinstance(v, str) and len(v) == 64, "a sha256"),
    "bytes": (_count, "a size"),
    "samples": (_count, "a count"),
    "dataset": (_optional_name, "a dataset name or null"),
    "split": (_optional_name, "a split name or null"),
}


def manifest_problem(manifest: dict[str, Any]) -> str:
    """What makes a parsed manifest unusable (a field missing or of the wrong kind, a shard listed twice), or ""."""
    for name, (ok, what) in MANIFEST_FIELDS.items():
        if name not in manifest:
            return f"field {name!r} is missing"
        if not ok(manifest[name]):
            return f"field {name!r} is {str(manifest[name])[:60]!r}, not {what}"
    seen: set[str] = set()
    for i, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict):
            return f"shards[{i}] is not an object"
        for name, (ok, what) in SHARD_FIELDS.items():
            if name not in entry:
                return f"shards[{i}] has no {name!r}"
            if not ok(entry[name]):
                return f"shards[{i}].{name} is {str(entry[name])[:60]!r}, not {what}"
        if entry["name"] in seen:
            return f"shard {entry['name']} is listed twice"
        seen.add(entry["name"])
    return ""
