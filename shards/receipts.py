"""Receipts of finished chunks: what an unfinished shard set has done already, so that a retry resumes it.

While a shard set is written, every finished chunk leaves ``<set>/.chunks/<shard name>.json``::

    {"digest": "<chunk_digest of the chunk's records and config>", "result": {<the chunk's ChunkResult>}}

written after its shard is in place (`shards.writer.write_chunk`). A later attempt at the same set keeps a chunk
when its receipt names the digest of the records it would write now and its shard still has the size and sha256
the receipt records (`shards.writer.plan_chunks`); everything else is written again. The folder goes once the
manifest is written.

The digest covers everything a chunk's bytes depend on: the shard format and schema versions, the config, every
field of every record (arrays by dtype, shape and bytes) and the size and modification time of each image file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from core.errors import naming_file
from shards.masks import LabelMap
from shards.sample import SAMPLE_FORMAT_VERSION
from shards.schema import SCHEMA_VERSION, PersonRecord, Reject

CHUNKS_DIR = ".chunks"
RECEIPT_SUFFIX = ".json"


def chunk_digest(records: Iterable[PersonRecord | Reject], config: Any) -> str:
    """sha256 (hex) of what a chunk's output depends on (module docstring); ``config`` is a dataclass
    (`shards.writer.ShardConfig`)."""
    digest = hashlib.sha256(json.dumps({"sample_format_version": SAMPLE_FORMAT_VERSION,
                                        "schema_version": SCHEMA_VERSION, "config": dataclasses.asdict(config)},
                                       sort_keys=True).encode())
    stamps: dict[Path, bytes] = {}
    for item in records:
        digest.update(type(item).__name__.encode() + b"\0")
        for f in dataclasses.fields(item):
            _update(digest, f.name, getattr(item, f.name))
        if isinstance(item, PersonRecord):
            path = Path(item.image_root) / item.image_path
            if path not in stamps:
                stamps[path] = _file_stamp(path)
            digest.update(stamps[path])
    return digest.hexdigest()


def _update(digest: Any, name: str, value: Any) -> None:
    digest.update(name.encode() + b"\0")
    if isinstance(value, np.ndarray):
        digest.update(f"{value.dtype.str}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, LabelMap):  # its repr elides long arrays: hash every run
        for f in dataclasses.fields(value):
            _update(digest, f.name, getattr(value, f.name))
    else:  # strings, numbers, paths, tuples and the json-able `extra`
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    digest.update(b"\0")


def _file_stamp(path: Path) -> bytes:
    try:
        stat = os.stat(path)
    except OSError:
        return b"missing\0"
    return f"{stat.st_size}:{stat.st_mtime_ns}\0".encode()


def receipt_path(out_dir: Path, shard_name: str) -> Path:
    return Path(out_dir) / CHUNKS_DIR / (shard_name + RECEIPT_SUFFIX)


def write_receipt(out_dir: Path, shard_name: str, digest: str, result: dict[str, Any]) -> None:
    """Record a finished chunk (``result``: its `ChunkResult` as a dict), atomically."""
    path = receipt_path(out_dir, shard_name)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with naming_file(tmp), open(tmp, "w") as f:
        json.dump({"digest": digest, "result": result}, f)
        f.flush()
        os.fsync(f.fileno())
    with naming_file(path):
        os.replace(tmp, path)


def read_receipt(out_dir: Path, shard_name: str, digest: str) -> dict[str, Any] | None:
    """The recorded result of chunk ``shard_name`` when its receipt names ``digest``; None when there is no
    receipt, it is unreadable, or it was written from other inputs."""
    try:
        receipt = json.loads(receipt_path(out_dir, shard_name).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(receipt, dict) or receipt.get("digest") != digest or not isinstance(receipt.get("result"),
                                                                                           dict):
        return None
    return receipt["result"]


def file_sha256(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in 1 MiB blocks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
