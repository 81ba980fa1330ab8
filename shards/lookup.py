"""Find samples in a shard set by key or by a seeded random pick, decoding only the samples asked for.

The manifest lists shards, not keys, so a lookup reads shards in order until it has every key asked for. A key's
prefix is its dataset and every shard holds one dataset (`shards.writer`), so only that dataset's shards are read.
Samples that are not asked for are skipped undecoded (their tar members are read and dropped).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from shards.reader import ShardCorruptError, list_shards
from shards.sample import SampleFormatError, StoredSample, decode_sample, split_member_name
from shards.tar import HashingReader, TarFormatError, iter_members
from shards.writer import ShardSetError


class SampleNotFoundError(ShardSetError):
    """A key asked for is in no shard of the set."""


def raw_samples(path: Path, hint: bool = True) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, members) of each sample of one shard, in order, undecoded; ShardCorruptError naming the shard when the
    tar cannot be parsed (truncated, corrupt), after the samples read whole. A sample is yielded when the next
    one's first member has been read, so the error carries the members read since the last yield as ``pending``
    ((key, members), or None): they may be a whole sample. ``hint``: the message suggests `fitloop shards verify`.
    """
    key, members = None, {}
    try:
        with open(path, "rb", buffering=1 << 20) as raw:
            for name, data in iter_members(HashingReader(raw)):
                member_key, suffix = split_member_name(name)
                if member_key != key and members:
                    yield key, members
                    members = {}
                key = member_key
                members[suffix] = data
            if members:
                yield key, members
    except (TarFormatError, SampleFormatError, OSError) as err:
        error = ShardCorruptError(f"shard {path.name} cannot be read ({type(err).__name__}: {err})"
                                  + (f"; run `fitloop shards verify {path.parent}`" if hint else ""))
        error.pending = (key, members) if members else None
        raise error from None


def shard_keys(path: Path) -> Iterator[str]:
    """The keys of one shard's samples, in order (`fitloop shards ls --keys`), each sample decoded (a sample the
    format refuses, a pickle member above all, is damage, not a key). Where the shard is damaged, the samples before
    come first, at a break the last one too when all its members were read (`verify` counts it "read whole"), then
    the `ShardCorruptError` naming the shard (and the sample)."""
    try:
        for key, members in raw_samples(path):
            decode_in(path, key, members)
            yield key
    except ShardCorruptError as err:
        pending = getattr(err, "pending", None)  # only raw_samples's errors carry it
        if pending is not None and _whole(*pending):
            yield pending[0]
        raise


def decode_in(path: Path, key: str, members: dict[str, bytes],
              check: Callable[[StoredSample], list[str]] | None = None) -> StoredSample:
    """`decode_sample`, with a sample that does not decode as a `ShardCorruptError` naming its shard; so is one that
    ``check`` finds problems with (sample -> problems: `shards.verify.unusable`)."""
    try:
        sample = decode_sample(key, members)
    except SampleFormatError as err:
        raise ShardCorruptError(f"shard {path.name}: {err}; run `fitloop shards verify {path.parent}`") from None
    problems = [] if check is None else check(sample)
    if problems:
        raise ShardCorruptError(f"shard {path.name}: sample {key!r}: {'; '.join(problems)}; run `fitloop shards "
                                f"verify {path.parent}`")
    return sample


def iter_samples(shard_dir: Path, keys: Sequence[str] | None = None,
                 check: Callable[[StoredSample], list[str]] | None = None) -> Iterator[StoredSample]:
    """The samples of a shard set in manifest order: all, or only those whose key is in ``keys`` (then
    SampleNotFoundError at the end for keys no shard holds). Checksums are not verified here (`fitloop shards
    verify` does that); ``check``: `decode_in`'s. With ``keys``, reading stops once all are found: a shard that
    breaks off after them still gives them, the last one too when its members were read whole (`verify` counts it
    so)."""
    wanted = None if keys is None else set(keys)
    datasets = None if wanted is None else {k.split("/", 1)[0] for k in wanted}
    found: set[str] = set()
    broken = None  # the first shard that breaks off: a key not found may lie behind the break
    for shard in list_shards(shard_dir):
        if wanted is not None and (len(found) == len(wanted)
                                   or (shard.dataset is not None and shard.dataset not in datasets)):
            continue
        try:
            for key, members in raw_samples(shard.path):
                if wanted is None or key in wanted:
                    found.add(key)
                    yield decode_in(shard.path, key, members, check)
                    if found == wanted:
                        break
        except ShardCorruptError as err:
            if wanted is None or not hasattr(err, "pending"):  # every sample asked for; or decode_in's: no break
                raise
            if err.pending is not None and err.pending[0] in wanted and _whole(*err.pending):
                found.add(err.pending[0])
                yield decode_in(shard.path, *err.pending, check)
            broken = broken or err
    if wanted is not None and found != wanted:
        missing = sorted(wanted - found)
        said = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        if broken is not None:
            raise ShardCorruptError(f"{shard_dir}: no sample with key(s) {said} in the samples read: {broken}")
        raise SampleNotFoundError(f"{shard_dir}: no sample with key(s) {said} (list them with `fitloop shards ls DIR "
                                  f"--keys`)")


def _whole(key: str, members: dict[str, bytes]) -> bool:
    """Whether the members read before a shard breaks off are a whole sample: they pass every check of `fitloop
    shards verify`, which counts such a sample as read whole."""
    from shards.verify import check_sample  # shards.verify reads shards through this module

    return not check_sample(key, members)


def find_samples(shard_dir: Path, keys: Sequence[str],
                 check: Callable[[StoredSample], list[str]] | None = None) -> list[StoredSample]:
    """The samples with these keys, in the order asked; SampleNotFoundError naming any key that is absent;
    ``check``: `decode_in`'s."""
    by_key = {s.key: s for s in iter_samples(shard_dir, keys, check)}
    return [by_key[k] for k in keys]


def pick_samples(shard_dir: Path, n: int, seed: int = 0,
                 check: Callable[[StoredSample], list[str]] | None = None) -> list[StoredSample]:
    """``n`` samples drawn without replacement (all when the set holds fewer), the same ones for the same seed and
    set, in manifest order; ``check``: `decode_in`'s."""
    shards = list_shards(shard_dir)
    total = sum(s.samples for s in shards)
    chosen = set(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False).tolist())
    out, start = [], 0
    for shard in shards:
        positions = {p - start for p in chosen if start <= p < start + shard.samples}
        start += shard.samples
        if not positions:
            continue
        for position, (key, members) in enumerate(raw_samples(shard.path)):
            if position in positions:
                out.append(decode_in(shard.path, key, members, check))
    return out
