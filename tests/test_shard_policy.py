"""A corrupt shard, checked up front (`shards.reader.check_shards`) and found while reading (`ReaderConfig.on_corrupt`):
"raise" gives one line naming the shard and what to do, also from a DataLoader worker; "skip" warns, counts the
shard and reads on. Two kinds of damage: a truncated shard (its tar breaks mid-way, seen at once) and a changed
byte inside an array member (the tar parses and the sample decodes; only the sha256 tells, after the shard's last
sample)."""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from shards.augment import AugmentConfig
from shards.reader import (
    CorruptShardWarning,
    ReaderConfig,
    ShardCorruptError,
    ShardReader,
    check_shards,
    iter_shard,
    list_shards,
)


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Path:
    """8 samples in 4 shards of 2."""
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("policy")
    write_synthetic_shards(root, [DatasetSpec("synth", "train", 8)], res=32, samples_per_shard=2, seed=1)
    return root / "shards"


@pytest.fixture()
def damaged(intact, tmp_path) -> tuple[Path, dict[str, list[str]]]:
    """A copy with shard 1 truncated inside its second sample and a byte of an array in shard 2 changed; returns the
    folder and every shard's keys."""
    shards = tmp_path / "shards"
    shutil.copytree(intact, shards)
    listed = list_shards(shards)
    keys = {s.path.name: [x.key for x in iter_shard(s)] for s in listed}
    truncated, changed = listed[1].path, listed[2].path
    with tarfile.open(truncated) as tar:
        last = tar.getmembers()[-1]                  # the second sample's last member: its first one came whole
    truncated.write_bytes(truncated.read_bytes()[:last.offset_data + last.size // 2])
    with tarfile.open(changed) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".keypoints_2d.npy"))
    data = bytearray(changed.read_bytes())
    data[member.offset_data + member.size - 4] ^= 0xFF   # the lowest mantissa byte of the last float32
    changed.write_bytes(bytes(data))
    return shards, keys


def _reader(shards: Path, on_corrupt: str) -> ShardReader:
    return ShardReader(shards, ReaderConfig(img_res=32, augment=AugmentConfig(enabled=False), shuffle_shards=False,
                                            shuffle_buffer=0, on_corrupt=on_corrupt), rank=0, world_size=1)


def test_check_shards_names_every_corrupt_shard_or_leaves_them_out(intact, damaged):
    shards, _ = damaged
    listed = list_shards(shards)
    assert check_shards(list_shards(intact)) == (list_shards(intact), [])
    with pytest.raises(ShardCorruptError) as err:
        check_shards(listed)
    message = str(err.value)
    assert "\n" not in message and message.startswith("2 of 4 shards do not match their manifest")
    assert str(listed[1].path) in message and str(listed[2].path) in message and "fitloop shards verify" in message
    with pytest.warns(CorruptShardWarning, match="left out 2 corrupt shard"):
        kept, problems = check_shards(listed, "skip")
    assert kept == [listed[0], listed[3]] and len(problems) == 2
    with pytest.raises(ValueError, match="on_corrupt"):
        ReaderConfig(on_corrupt="ignore")


def test_the_reader_raises_on_a_corrupt_shard_in_one_line(damaged):
    shards, _ = damaged
    with pytest.raises(ShardCorruptError) as err:
        list(_reader(shards, "raise"))
    message = str(err.value)
    assert "\n" not in message and "synth-train-000001.tar" in message and "fitloop shards verify" in message


def test_the_reader_skips_corrupt_shards_warns_counts_and_reads_on(damaged):
    shards, keys = damaged
    reader = _reader(shards, "skip")
    with pytest.warns(CorruptShardWarning) as warned:
        read = [item["key"] for item in reader]
    names = sorted(keys)
    assert len(reader.skipped) == 2 and len(warned) == 2
    assert "synth-train-000001.tar" in reader.skipped[0] and "synth-train-000002.tar" in reader.skipped[1]
    # intact shards whole; the truncated one up to its damage; the changed one whole (its checksum shows after)
    assert read == keys[names[0]] + keys[names[1]][:1] + keys[names[2]] + keys[names[3]]


def test_a_corrupt_shard_found_in_a_dataloader_worker_keeps_its_one_line(damaged):
    shards, _ = damaged
    loader = torch.utils.data.DataLoader(_reader(shards, "raise"), batch_size=2, num_workers=1)
    with pytest.raises(ShardCorruptError) as err:
        list(loader)
    assert "Traceback" in str(err.value)                          # torch's wrapping of the worker's error
    line = str(ShardCorruptError.unwrapped(err.value))
    assert "\n" not in line and line.startswith("shard synth-train-000001.tar cannot be read")
    assert "fitloop shards verify" in line
