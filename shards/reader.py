"""Read shard sets for training: shuffled streaming, SPIN's augmentation, splitting per worker and node, fixed-length
epochs; and `verify`, which checks every shard against the manifest's sha256.

`ShardReader` is a torch ``IterableDataset``; use it with a ``DataLoader`` (``batch_size``, ``num_workers``)::

    reader = ShardReader(["shards/coco", "shards/mpii"], ReaderConfig(samples_per_epoch=64_000, seed=1))
    loader = DataLoader(reader, batch_size=64, num_workers=8)
    for epoch in range(epochs):
        reader.set_epoch(epoch)      # a new shard order, sample order and augmentation per epoch
        for batch in loader: ...     # batch["img"] (64, 3, 224, 224), batch["keypoints"] (64, 49, 3), ...

**Who reads what.** Every consumer (one DataLoader worker of one node) gets an id ``rank·workers + worker`` of
``world_size·workers``. Each epoch the shard list is permuted with a seed shared by all consumers, and consumer i
takes shards i, i + n, i + 2n, ...; so every shard is read by exactly one consumer. When there are fewer shards than
consumers, every consumer reads all shards and keeps the samples whose position is i modulo n. Rank and world size
come from the arguments, else ``RANK``/``WORLD_SIZE`` (torchrun), else torch.distributed, else 0/1.

**Epochs.** With ``samples_per_epoch`` = N, each node yields N // world_size samples per epoch, shared among its
workers; a consumer whose shards run out starts another pass (a new permutation), so shares are exact whatever
the shard sizes. Without it, an epoch is one pass over each consumer's shards (lengths may then differ between
nodes, which distributed training cannot have).

**Determinism.** Order and augmentation depend only on (seed, epoch, rank, world size, workers).

**Integrity.** `check_shards` hashes a list of shards against the manifest up front (one read of each tar; the
trainer runs it before its first step). While streaming, each shard is hashed again; a shard whose sha256 differs
from the manifest's (found after its last sample) or that cannot be parsed (truncated: found at once) is *corrupt*,
and `ReaderConfig.on_corrupt` says what happens:

* ``"raise"`` (default): `ShardCorruptError`, one line naming the shard and what to do;
* ``"skip"``: a `CorruptShardWarning` naming it, the shard counted in `ShardReader.skipped`, and reading goes on with
  the next shard (a consumer with an epoch quota reads further to fill it). A checksum mismatch shows only after the
  shard's samples were read, so those were used; a parse error stops the shard where it shows.

Nothing is unpickled: arrays are ``.npy`` read with ``allow_pickle=False``, and a sample with a member the format
does not name (a ``.pyd`` or ``.pickle`` that webdataset would unpickle without ``WDS_SECURE``, or anything else) is
refused as corrupt, never skipped without a word (`shards.sample.decode_sample`).
"""
from __future__ import annotations

import io
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from core.wholebody import NUM_WHOLEBODY
from shards.augment import (
    AugmentConfig,
    AugmentParams,
    augment_image,
    augment_joints_3d,
    augment_keypoints,
    augment_labels,
    augment_pose,
    sample_params,
    training_transform,
)
from shards.crop import invert
from shards.masks import LABEL_KINDS
from shards.receipts import file_sha256
from shards.sample import SampleFormatError, StoredSample, decode_sample, split_member_name
from shards.tar import HashingReader, TarFormatError, iter_members
from shards.writer import MANIFEST, REJECTS, SHARD_SUFFIX, TMP_SUFFIX, ShardSetError, load_manifest

ON_CORRUPT = ("raise", "skip")   # what a reader does with a corrupt shard (module docstring)
_WHAT_TO_DO = ("check the set with `fitloop shards verify {dir}` and rebuild it (`fitloop preprocess`), or read "
               "without the shard: on_corrupt=\"skip\" (`fitloop train --on-corrupt-shard skip`)")


class ShardCorruptError(ShardSetError):
    """A shard does not match what its manifest says, or cannot be parsed."""

    @classmethod
    def unwrapped(cls, err: "ShardCorruptError") -> "ShardCorruptError":
        """The reader's own one-line error from one that a DataLoader worker re-raised: torch's ExceptionWrapper
        re-raises the type with ``Caught ... in DataLoader worker ...`` and the worker's traceback as message."""
        text = str(err)
        marker = f"{cls.__name__}: "
        return cls(text.rsplit(marker, 1)[-1].strip() if marker in text else text)


class CorruptShardWarning(UserWarning):
    """A corrupt shard was left out (``on_corrupt="skip"``)."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it (``bytes``: its size, None when unknown)."""

    path: Path
    sha256: str
    samples: int
    dataset: str | None
    split: str | None
    bytes: int | None = None


@dataclass(frozen=True)
class ReaderConfig:
    """How a shard set is read for training.

    Attributes:
        img_res: training crop side, px (SPIN: 224).
        augment: SPIN's augmentation; ``AugmentConfig(enabled=False)`` for evaluation.
        shuffle_shards: permute the shard order each epoch.
        shuffle_buffer: samples held for shuffling (0 = stream order). Samples are held encoded (~25 kB each).
        samples_per_epoch: samples per epoch over all nodes, or None for one pass (module docstring).
        seed: the seed every random choice derives from.
        datasets, splits: read only shards of these datasets / splits (empty = all).
        verify_checksums: hash each shard while reading and compare with the manifest.
        on_corrupt: "raise" or "skip" a corrupt shard found while reading (module docstring).
        resample: "bilinear" (default) or "nearest".
    """

    img_res: int = 224
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    shuffle_shards: bool = True
    shuffle_buffer: int = 1000
    samples_per_epoch: int | None = None
    seed: int = 0
    datasets: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    verify_checksums: bool = True
    on_corrupt: str = "raise"
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if self.on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {self.on_corrupt!r}")


def list_shards(shard_dirs: str | Path | Sequence[str | Path | ShardInfo], datasets: Sequence[str] = (),
                splits: Sequence[str] = ()) -> list[ShardInfo]:
    """The shards of one or more shard sets, in manifest order, optionally only some datasets / splits.

    Each source is a shard-set folder (its manifest is read) or a `ShardInfo` (taken as it is): a list of checked
    shards (`check_shards`) reads like the sets it came from, without the shards left out. A shard file listed
    twice (a set given twice, or through a link) is a `ShardSetError`: read twice, its samples would count double."""
    sources = [shard_dirs] if isinstance(shard_dirs, (str, Path)) else list(shard_dirs)
    shards = []
    for source in sources:
        if isinstance(source, ShardInfo):
            entries = [source]
        else:
            shard_dir = Path(source)
            entries = [ShardInfo(shard_dir / e["name"], e["sha256"], e["samples"], e["dataset"], e["split"],
                                 e.get("bytes")) for e in load_manifest(shard_dir)["shards"]]
        shards += [s for s in entries if not (datasets and s.dataset not in datasets)
                   and not (splits and s.split not in splits)]
    first: dict[Path, Path] = {}
    for shard in shards:
        path = Path(shard.path).resolve()
        if path in first:
            raise ShardSetError(f"shard {shard.path} is listed twice (the same file as {first[path]}): a shard set "
                                f"given twice, or through two paths? give each shard set once, or its samples are "
                                f"read twice")
        first[path] = Path(shard.path)
    return shards


def check_shards(shards: Sequence[ShardInfo], on_corrupt: str = "raise",
                 problems: dict[Path, str] | None = None) -> tuple[list[ShardInfo], list[str]]:
    """Check shards against their manifest before reading them: each file's presence, size and sha256 (one read of
    each; ``problems``: `shard_problems` of them when already found, e.g. split over the ranks of a distributed
    run). Returns (the intact shards, one line per corrupt shard). A corrupt shard raises `ShardCorruptError`
    naming every one and what to do (``on_corrupt="raise"``), or is left out with a `CorruptShardWarning`
    (``"skip"``)."""
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
    problems = shard_problems(shards) if problems is None else problems
    corrupt = [s for s in shards if Path(s.path) in problems]
    lines = [f"{s.path}: {problems[Path(s.path)]}" for s in corrupt]
    if lines and on_corrupt == "raise":
        dirs = " ".join(sorted({str(Path(s.path).parent) for s in corrupt}))
        raise ShardCorruptError(f"{len(lines)} of {len(shards)} shards do not match their manifest: "
                                f"{'; '.join(lines)}; " + _WHAT_TO_DO.format(dir=dirs))
    if lines:
        warnings.warn(f"left out {len(lines)} corrupt shard(s) of {len(shards)}: {'; '.join(lines)}",
                      CorruptShardWarning, stacklevel=2)
    return [s for s in shards if Path(s.path) not in problems], lines


def shard_problems(shards: Sequence[ShardInfo]) -> dict[Path, str]:
    """path -> what is wrong (`shard_problem`) for each corrupt shard of ``shards``."""
    found = {Path(s.path): shard_problem(s) for s in shards}
    return {path: problem for path, problem in found.items() if problem is not None}


def shard_problem(shard: ShardInfo) -> str | None:
    """What is wrong with one shard's file against its manifest entry (missing; size or sha256), or None. A size
    that differs is reported without reading the file."""
    path = Path(shard.path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if (shard.bytes is not None and size != shard.bytes) or file_sha256(path)[1] != shard.sha256:
        said = f", manifest says {shard.bytes}" if shard.bytes is not None else ""
        return f"sha256 mismatch ({size} bytes{said}): truncated or changed"
    return None


def iter_shard(shard: ShardInfo | Path, verify: bool = True) -> Iterator[StoredSample]:
    """The samples of one shard, in order. With ``verify`` (and a `ShardInfo`), the shard is hashed as it streams
    and a mismatch with the manifest raises `ShardCorruptError` after its last sample; a shard that cannot be
    parsed (truncated, corrupt) raises it at once. Both name the shard."""
    info = shard if isinstance(shard, ShardInfo) else None
    path = Path(shard.path if isinstance(shard, ShardInfo) else shard)
    try:
        with open(path, "rb", buffering=1 << 20) as raw:
            stream = HashingReader(raw)
            key, members = None, {}
            for name, data in iter_members(stream):
                member_key, suffix = split_member_name(name)
                if member_key != key and members:
                    yield decode_sample(key, members)
                    members = {}
                key = member_key
                members[suffix] = data
            if members:
                yield decode_sample(key, members)
            stream.drain()
    except (TarFormatError, SampleFormatError, OSError) as err:
        raise ShardCorruptError(f"shard {path.name} cannot be read ({type(err).__name__}: {err}) in {path.parent}; "
                                + _WHAT_TO_DO.format(dir=path.parent)) from None
    if verify and info is not None and stream.sha256.hexdigest() != info.sha256:
        raise ShardCorruptError(f"shard {path.name}: sha256 {stream.sha256.hexdigest()} differs from the "
                                f"manifest's {info.sha256} (truncated or changed) in {path.parent}; "
                                + _WHAT_TO_DO.format(dir=path.parent))


def distributed_rank() -> tuple[int, int]:
    """(rank, world size): torchrun's ``RANK``/``WORLD_SIZE``, else torch.distributed's, else (0, 1)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardReader(torch.utils.data.IterableDataset):
    """Training samples from shard sets (module docstring for splitting, epochs and determinism).

    Each item is a dict:
        img: (3, res, res) float32, ImageNet-normalised RGB of the augmented training crop.
        keypoints: (49, 3) float32: x, y normalised to [-1, 1] across the crop (SPIN), confidence (0 = absent).
        pose: (72,) float32 SMPL axis-angle (zeros without SMPL); betas: (10,) float32; has_smpl: bool.
        joints_3d: (49, 4) float32 metres, camera frame + confidence (zeros without); has_joints_3d: bool.
        wholebody: (161, 3) float32 whole-body keypoints (`core.wholebody`: body, hands, face), normalised and
            flipped like ``keypoints``; all zeros, confidence 0, for a sample without them (a body-only
            dataset's, or one of shard format 1 or 2), so batches of mixed sets stack; has_wholebody: bool says
            which.
        mask: (res, res) uint8 person mask in the training crop: 0 background, 1 person, 255 unknown (outside
            the original image or the stored crop); all zeros without one; has_mask: bool.
        parts: (res, res) uint8 part ids (0 background, ids into the sample's ``parts_names``, left and right
            swapped on a flip, 255 unknown); all zeros without; has_parts: bool; parts_names: the table as a JSON
            list (a string, so that batches of samples with different tables collate; "[]" without parts).
        parsing: (res, res) uint8 parsing ids (``parsing_names``), like ``parts``; has_parsing: bool.
        flip: bool; rot: float32 degrees; scale: float32 (the augmentation's, multiplying the box): what was
            applied, so a trainer can undo it.
        crop_to_image: (3, 3) float64, training-crop px -> original-image px (0-based, centres at integers).
        center: (2,) float32 px, box_scale: float32: the record's box in the original image.
        key, dataset, split: str.
    """

    def __init__(self, shard_dirs: Path | Sequence[Path], config: ReaderConfig = ReaderConfig(), *,
                 rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.shards = list_shards(shard_dirs, config.datasets, config.splits)
        if not self.shards:
            raise ShardSetError(f"no shards to read in {shard_dirs} (datasets={config.datasets}, "
                                    f"splits={config.splits})")
        env_rank, env_world = distributed_rank()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")
        self.epoch = 0
        self.skipped: list[str] = []   # corrupt shards this process left out (on_corrupt="skip"), one line each

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: shard order, sample order and augmentation change with it."""
        self.epoch = int(epoch)

    @property
    def total_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def __len__(self) -> int:
        """Samples this node yields per epoch; defined with ``samples_per_epoch`` only (a pass's share depends on
        the number of DataLoader workers, which the main process does not know)."""
        if self.config.samples_per_epoch is None:
            raise TypeError("a ShardReader has a length only with ReaderConfig.samples_per_epoch")
        return self.config.samples_per_epoch // self.world_size

    def _shard_order(self, pass_index: int) -> list[ShardInfo]:
        if not self.config.shuffle_shards:
            return list(self.shards)
        rng = np.random.default_rng([self.config.seed, self.epoch, pass_index, 0])
        return [self.shards[i] for i in rng.permutation(len(self.shards))]

    def consumer_shards(self, consumer: int, consumers: int, pass_index: int = 0) -> tuple[list[ShardInfo], bool]:
        """(shards consumer ``consumer`` of ``consumers`` reads in a pass, whether it keeps every n-th sample of
        them instead of all)."""
        order = self._shard_order(pass_index)
        if len(order) >= consumers:
            return order[consumer::consumers], False
        return order, True

    def _consumer(self) -> tuple[int, int, int]:
        """(consumer id, consumers, this worker's quota or -1) for the calling DataLoader worker."""
        worker = torch.utils.data.get_worker_info()
        worker_id, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        consumer, consumers = self.rank * workers + worker_id, self.world_size * workers
        quota = -1
        if self.config.samples_per_epoch is not None:
            per_node = self.config.samples_per_epoch // self.world_size
            quota = per_node // workers + (1 if worker_id < per_node % workers else 0)
        return consumer, consumers, quota

    def __iter__(self) -> Iterator[dict[str, Any]]:
        consumer, consumers, quota = self._consumer()
        aug_rng = np.random.default_rng([self.config.seed, self.epoch, consumer, consumers, 1])
        for stored in self.iter_stored(consumer, consumers, quota):
            yield self.make_item(stored, sample_params(aug_rng, self.config.augment))

    def iter_stored(self, consumer: int, consumers: int, quota: int = -1) -> Iterator[StoredSample]:
        """The stored samples one consumer reads this epoch, shuffled, before augmentation: one pass, or exactly
        ``quota`` samples over as many passes as needed (``quota`` >= 0)."""
        produced, pass_index = 0, 0
        while quota < 0 or produced < quota:
            shards, modulo = self.consumer_shards(consumer, consumers, pass_index)
            rng = np.random.default_rng([self.config.seed, self.epoch, consumer, consumers, pass_index, 0])
            this_pass = 0
            for stored in _shuffled(self._stream(shards, modulo, consumer, consumers), self.config.shuffle_buffer,
                                    rng):
                if 0 <= quota <= produced:
                    return
                yield stored
                produced += 1
                this_pass += 1
            if quota < 0:
                return
            if this_pass == 0:
                raise ShardSetError(f"consumer {consumer} of {consumers} has no samples to read; "
                                    f"{self.total_samples} samples in {len(self.shards)} shards")
            pass_index += 1

    def _stream(self, shards: list[ShardInfo], modulo: bool, consumer: int, consumers: int
                ) -> Iterator[StoredSample]:
        position = 0
        for shard in shards:
            read = 0
            try:
                for stored in iter_shard(shard, verify=self.config.verify_checksums):
                    if not modulo or position % consumers == consumer:
                        yield stored
                    position += 1
                    read += 1
            except ShardCorruptError as err:
                if self.config.on_corrupt == "raise":
                    raise
                self.skipped.append(f"{shard.path}: {err}")
                warnings.warn(f"skipped corrupt shard {shard.path} after {read} of its {shard.samples} samples "
                              f"({len(self.skipped)} skipped by this reader so far): {err}", CorruptShardWarning,
                              stacklevel=2)

    def make_item(self, stored: StoredSample, params: AugmentParams) -> dict[str, Any]:
        """Decode and augment one stored sample with ``params`` (the item layout: class docstring)."""
        res = self.config.img_res
        crop_meta = stored.meta["crop"]
        with Image.open(io.BytesIO(stored.jpeg)) as opened:
            image = opened.convert("RGB")
        box_center = np.asarray(crop_meta["box_center"], dtype=np.float64)
        to_crop = training_transform(box_center, float(crop_meta["box_side"]), params, res)
        return build_item(image, to_crop, stored.keypoints_crop, stored.crop_to_image, params, res,
                          meta=stored.meta, joints_3d=stored.joints_3d, smpl_pose=stored.smpl_pose,
                          smpl_betas=stored.smpl_betas, wholebody=stored.wholebody_crop,
                          labels={kind: (image, stored.label_names(kind)) for kind in LABEL_KINDS
                                  if (image := stored.labels(kind)) is not None},
                          resample=self.config.resample)


def build_item(image: Image.Image, to_crop: np.ndarray, keypoints: np.ndarray, source_to_image: np.ndarray,
               params: AugmentParams, res: int, *, meta: dict[str, Any], joints_3d: np.ndarray | None,
               smpl_pose: np.ndarray | None, smpl_betas: np.ndarray | None, wholebody: np.ndarray | None = None,
               labels: dict[str, tuple[np.ndarray, Sequence[str]]] | None = None,
               resample: str = "bilinear") -> dict[str, Any]:
    """One training item (layout: `ShardReader`) from a decoded source image: a stored crop, or the original
    image when loading SPIN's way (bench/shards.py), through the same code.

    Args:
        image: RGB source; to_crop: (3, 3) source px -> training-crop px (flip included).
        keypoints: (49, 3) source px + confidence.
        source_to_image: (3, 3) source px -> original-image px (identity for the original image).
        params: the augmentation drawn; res: training crop side, px.
        meta: the sample's json (uses key, dataset, split, center, scale, has_smpl).
        joints_3d, smpl_pose, smpl_betas: the sample's arrays or None.
        wholebody: (161, 3) source px + confidence, or None (the item then holds zeros and has_wholebody False).
        labels: kind (`shards.masks.LABEL_KINDS`) -> ((H, W) uint8 label image of the source, its table: for the
            left/right swap of a flip); a kind not given is all zeros in the item, its ``has_<kind>`` False.
    """
    labels = labels or {}
    label_items: dict[str, Any] = {}
    for kind in LABEL_KINDS:
        if kind in labels:
            source, names = labels[kind]
            label_items[kind] = torch.from_numpy(augment_labels(source, to_crop, params.flip, tuple(names), res))
        else:
            label_items[kind] = torch.zeros((res, res), dtype=torch.uint8)
        label_items[f"has_{kind}"] = torch.tensor(kind in labels)
    label_items["parts_names"] = json.dumps(list(labels["parts"][1]) if "parts" in labels else [])

    return {
        "img": torch.from_numpy(augment_image(image, to_crop, params.noise, res, resample)),
        "keypoints": torch.from_numpy(augment_keypoints(keypoints, to_crop, params.flip, res)),
        "pose": torch.from_numpy(augment_pose(smpl_pose, params.rot, params.flip) if smpl_pose is not None
                                 else np.zeros(72, np.float32)),
        "betas": torch.from_numpy(np.array(smpl_betas if smpl_betas is not None else np.zeros(10), np.float32)),
        "has_smpl": torch.tensor(bool(meta["has_smpl"])),
        "joints_3d": torch.from_numpy(augment_joints_3d(joints_3d, params.rot, params.flip) if joints_3d is not None
                                      else np.zeros((49, 4), np.float32)),
        "has_joints_3d": torch.tensor(joints_3d is not None),
        "wholebody": torch.from_numpy(augment_keypoints(wholebody, to_crop, params.flip, res) if wholebody is not None
                                      else np.zeros((NUM_WHOLEBODY, 3), np.float32)),
        "has_wholebody": torch.tensor(wholebody is not None),
        **label_items,
        "flip": torch.tensor(params.flip), "rot": torch.tensor(params.rot, dtype=torch.float32),
        "scale": torch.tensor(params.scale, dtype=torch.float32),
        "crop_to_image": torch.from_numpy(source_to_image @ invert(to_crop)),
        "center": torch.tensor(meta["center"], dtype=torch.float32),
        "box_scale": torch.tensor(meta["scale"], dtype=torch.float32),
        "key": meta["key"], "dataset": meta["dataset"], "split": meta["split"],
    }


def _shuffled(items: Iterator[StoredSample], buffer_size: int, rng: np.random.Generator) -> Iterator[StoredSample]:
    """Shuffle a stream through a buffer of ``buffer_size`` items (0 or 1: stream order)."""
    if buffer_size <= 1:
        yield from items
        return
    buffer: list[StoredSample] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        i = int(rng.integers(buffer_size))
        buffer[i], item = item, buffer[i]
        yield item
    order = rng.permutation(len(buffer))
    for i in order:
        yield buffer[i]


# --- Verification ---------------------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    """What `verify` found: ``problems`` (one line each, naming the file) is empty when the set is intact."""

    shard_dir: str
    shards_checked: int = 0
    samples_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_reject_rows(path: Path) -> dict[str, list]:
    """The dataset, split and reason columns of a rejects table; `ShardSetError` naming it when it cannot be read."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=["dataset", "split", "reason"]).to_pydict()
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, KeyError, ... for a damaged file
        raise ShardSetError(f"{path}: not a readable rejects table ({type(err).__name__}: {err}); convert the "
                            f"dataset again (fitloop preprocess --overwrite)") from None


def count_problems(manifest: dict[str, Any], rejects: dict[str, list]) -> list[str]:
    """Where the counts of a shard set do not reconcile, one line each (empty when they do): read = written +
    rejected, in total and per dataset and split; written = the samples its shards hold; rejected = the rows of its
    rejects table (``rejects``: `read_reject_rows`), per dataset and split and per reason."""
    c, problems = manifest["counts"], []
    if c["read"] != c["written"] + c["rejected"]:
        problems.append(f"{MANIFEST}: read {c['read']} is not written {c['written']} + rejected {c['rejected']}")
    samples = sum(s["samples"] for s in manifest["shards"])
    if samples != c["written"]:
        problems.append(f"{MANIFEST}: its shards hold {samples} samples, its counts say written {c['written']}")
    totals = {what: 0 for what in c}
    rows = Counter(zip(rejects["dataset"], rejects["split"]))
    for dataset, splits in manifest["by_dataset"].items():
        for split, n in splits.items():
            if n["read"] != n["written"] + n["rejected"]:
                problems.append(f"{MANIFEST}: {dataset}/{split}: read {n['read']} is not written "
                                f"{n['written']} + rejected {n['rejected']}")
            got = rows.pop((dataset, split), 0)
            if got != n["rejected"]:
                problems.append(f"{REJECTS}: {got} rows of {dataset}/{split}, the manifest counts {n['rejected']} "
                                f"rejected")
            for what in totals:
                totals[what] += n[what]
    if totals != c:
        problems.append(f"{MANIFEST}: its datasets add up to {totals}, its counts say {c}")
    for (dataset, split), n in sorted(rows.items()):
        problems.append(f"{REJECTS}: {n} rows of {dataset}/{split}, which the manifest does not count")
    if len(rejects["reason"]) != c["rejected"] or len(rejects["reason"]) != manifest["rejects"]["rows"]:
        problems.append(f"{REJECTS}: {len(rejects['reason'])} rows, the manifest counts {c['rejected']} rejected "
                        f"and {manifest['rejects']['rows']} rows")
    by_reason = dict(sorted(Counter(rejects["reason"]).items()))
    if by_reason != dict(sorted(manifest["rejects_by_reason"].items())):
        problems.append(f"{REJECTS}: rows by reason {by_reason}, the manifest says {manifest['rejects_by_reason']}")
    return problems


def verify(shard_dir: Path, deep: bool = False) -> VerifyReport:
    """Check a shard set against its manifest: every shard's presence, size and sha256, the rejects table's sha256,
    that the counts reconcile (`count_problems`), no stray ``.tar`` or leftover ``.tmp`` files. ``deep`` also
    parses every sample and counts them."""
    shard_dir = Path(shard_dir)
    report = VerifyReport(str(shard_dir))
    try:
        manifest = load_manifest(shard_dir)
    except ShardSetError as err:
        report.problems.append(str(err))
        return report
    listed = set()
    for entry in manifest["shards"]:
        path = shard_dir / entry["name"]
        listed.add(entry["name"])
        report.shards_checked += 1
        problem = shard_problem(ShardInfo(path, entry["sha256"], entry["samples"], entry["dataset"], entry["split"],
                                          entry["bytes"]))
        if problem is not None:
            report.problems.append(f"{entry['name']}: {problem}")
            continue
        if deep:
            try:
                count = sum(1 for _ in iter_shard(path, verify=False))
            except (ShardCorruptError, ValueError) as err:
                report.problems.append(f"{entry['name']}: {err}")
                continue
            report.samples_checked += count
            if count != entry["samples"]:
                report.problems.append(f"{entry['name']}: {count} samples, manifest says {entry['samples']}")
    rejects = shard_dir / manifest["rejects"]["file"]
    if not rejects.is_file():
        report.problems.append(f"{REJECTS}: missing")
    else:
        if file_sha256(rejects)[1] != manifest["rejects"]["sha256"]:
            report.problems.append(f"{REJECTS}: sha256 mismatch: truncated or changed")
        try:
            report.problems += count_problems(manifest, read_reject_rows(rejects))
        except ShardSetError as err:
            report.problems.append(str(err))
    for path in sorted(shard_dir.iterdir()):
        if path.name.endswith(SHARD_SUFFIX) and path.name not in listed:
            report.problems.append(f"{path.name}: a shard the manifest does not list")
        elif path.name.endswith(TMP_SUFFIX):
            report.problems.append(f"{path.name}: left by an interrupted write")
    return report
