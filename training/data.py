"""Training data: shard sets mixed by dataset groups in fixed shares (SPIN's MixedDataset), resumable mid-epoch.

**Mix.** ``"h36m=0.3;lsp-orig,mpii,lspet,coco,*=0.6;mpi-inf-3dhp=0.1"``: groups separated by ``;``, each a
comma-separated list of dataset names (``*``: every dataset no other group names) and its share. Within a group
samples come in proportion to the datasets' sizes (one `ShardReader` over the group's shards), as SPIN splits its
60% in-the-wild share. Groups without shards are dropped and the other shares renormalised.

**Epoch layout.** An epoch is ``steps`` batches per node. Batch i of a node is made by *virtual consumer*
``i mod W`` (W = DataLoader workers, 1 without workers); each virtual consumer reads its share of every group's
shards (`ShardReader`'s split over ``rank·W + v`` of ``world·W`` consumers) and draws its samples' groups as an
exact largest-remainder split of the shares, shuffled with a seed of (seed, epoch, consumer). Everything depends
only on (seed, epoch, rank, world size, W).

**Resume.** `MixedShardStream.set_position(epoch, batch)` starts the epoch at batch ``batch``: every virtual
consumer skips the samples of its batches before it without decoding them (the group draws and augmentation
draws are still consumed, so what follows is unchanged), and worker w plays virtual consumer (w + batch) mod W, so
the DataLoader's round-robin over its workers delivers batch ``batch`` first, then ``batch + 1``, ...
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from core.errors import FitloopError
from shards.augment import sample_params
from shards.reader import ReaderConfig, ShardReader, distributed_rank, list_shards

ANY_DATASET = "*"


@dataclass(frozen=True)
class MixGroup:
    """A group of datasets and its share of each batch stream."""

    name: str
    share: float
    datasets: tuple[str, ...]


def parse_mix(text: str) -> tuple[MixGroup, ...]:
    """Parse ``"a,b=0.6;c=0.4"`` (module docstring). Shares must be positive; a dataset may be in one group."""
    groups, seen = [], set()
    for part in (p.strip() for p in text.split(";") if p.strip()):
        names, sep, share = part.rpartition("=")
        if not sep or not names.strip():
            raise ValueError(f"mix entry {part!r} is not 'dataset[,dataset...]=share'")
        datasets = tuple(d.strip() for d in names.split(",") if d.strip())
        try:
            value = float(share)
        except ValueError:
            raise ValueError(f"mix entry {part!r}: share {share!r} is not a number") from None
        if not value > 0:
            raise ValueError(f"mix entry {part!r}: share must be > 0")
        twice = seen & set(datasets)
        if twice:
            raise ValueError(f"mix: dataset(s) {sorted(twice)} named in two groups")
        seen |= set(datasets)
        groups.append(MixGroup(name="+".join(datasets), share=value, datasets=datasets))
    if not groups:
        raise ValueError("mix is empty")
    return tuple(groups)


class TrainingDataError(FitloopError, ValueError):
    """The shards cannot give what the run asks for (no training split, no dataset of the mix): one line, what to do."""


def resolve_mix(groups: Sequence[MixGroup], present: Sequence[str]) -> tuple[MixGroup, ...]:
    """The groups with the datasets actually present (``*`` expanded), empty groups dropped, shares summing to 1."""
    named = {d for g in groups for d in g.datasets if d != ANY_DATASET}
    resolved = []
    for group in groups:
        members = [d for d in group.datasets if d != ANY_DATASET and d in present]
        if ANY_DATASET in group.datasets:
            members += [d for d in present if d not in named and d not in members]
        if members:
            resolved.append(MixGroup(group.name, group.share, tuple(sorted(members))))
    if not resolved:
        raise TrainingDataError(f"no dataset of the mix {[g.datasets for g in groups]} is in the shards "
                         f"(datasets present: {sorted(present)}); pass a mix that names them")
    total = sum(g.share for g in resolved)
    return tuple(replace(g, share=g.share / total) for g in resolved)


def group_counts(shares: Sequence[float], total: int) -> np.ndarray:
    """Split ``total`` samples by ``shares`` (summing to 1): floors plus the largest remainders."""
    raw = np.asarray(shares, dtype=np.float64) * total
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts


class MixedShardStream(torch.utils.data.IterableDataset):
    """Training items (`shards.reader.ShardReader` layout) mixed by groups; see the module docstring.

    Args:
        shard_dirs: shard sets; reader: `ReaderConfig` for every group (its ``datasets`` are set per group and its
            ``samples_per_epoch`` is not used); mix: the groups; batch_size, steps: per node per epoch.
        rank, world_size: this node (default: torchrun's environment).
    """

    def __init__(self, shard_dirs: Sequence[Path], reader: ReaderConfig, mix: Sequence[MixGroup], batch_size: int,
                 steps: int, *, rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        env_rank, env_world = distributed_rank()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        present = sorted({s.dataset for s in list_shards(shard_dirs, (), reader.splits) if s.dataset})
        if not present:
            raise TrainingDataError(f"the shards hold no sample of the training split(s) {', '.join(reader.splits)}: "
                                    "convert a dataset's training split, or name the splits to train on "
                                    "(--train-splits)")
        self.mix = resolve_mix(mix, present)
        self.readers = [ShardReader(shard_dirs, replace(reader, datasets=g.datasets, samples_per_epoch=None),
                                    rank=self.rank, world_size=self.world_size) for g in self.mix]
        self.augment = reader.augment
        self.seed = reader.seed
        self.batch_size, self.steps = batch_size, steps
        self.epoch, self.start_batch = 0, 0

    @property
    def total_samples(self) -> int:
        return sum(r.total_samples for r in self.readers)

    def set_position(self, epoch: int, batch: int = 0) -> None:
        """Start the next iteration at batch ``batch`` of epoch ``epoch``."""
        if not 0 <= batch <= self.steps:
            raise ValueError(f"batch {batch} is outside the epoch's {self.steps} batches")
        self.epoch, self.start_batch = int(epoch), int(batch)
        for reader in self.readers:
            reader.set_epoch(epoch)

    def __len__(self) -> int:
        """Samples this node yields from the position on."""
        return (self.steps - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        worker_id, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        virtual = (worker_id + self.start_batch) % workers
        yield from self.consumer_items(virtual, workers)

    def consumer_items(self, virtual: int, workers: int) -> Iterator[dict[str, Any]]:
        """The items virtual consumer ``virtual`` of ``workers`` yields from the position on."""
        batches = len(range(virtual, self.steps, workers))
        skip = len(range(virtual, self.start_batch, workers)) * self.batch_size
        total = batches * self.batch_size
        if total <= skip:
            return
        consumer, consumers = self.rank * workers + virtual, self.world_size * workers
        counts = group_counts([g.share for g in self.mix], total)
        rng = np.random.default_rng([self.seed, self.epoch, consumer, consumers, 2])
        labels = rng.permutation(np.repeat(np.arange(len(self.mix)), counts))
        streams = [reader.iter_stored(consumer, consumers, int(count))
                   for reader, count in zip(self.readers, counts)]
        aug_rng = np.random.default_rng([self.seed, self.epoch, consumer, consumers, 1])
        for position, group in enumerate(labels):
            stored = next(streams[group])
            params = sample_params(aug_rng, self.augment)
            if position >= skip:
                yield self.readers[group].make_item(stored, params)


def train_sample_count(shard_dirs: Sequence[Path], splits: Sequence[str]) -> int:
    """Samples in the given splits of the shard sets (from their manifests)."""
    return sum(s.samples for s in list_shards(shard_dirs, (), splits))
