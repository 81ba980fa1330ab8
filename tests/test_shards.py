"""Shards: exact crop geometry, write -> read round trips, checksums, rejects, augmentation, splitting, the CLI.

Synthetic records carry their own images (written to tmp_path) so the pixels a keypoint lands on can be checked;
the fixture tests read ../shared/fixtures (skipped with a reason when absent).
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from core.joints import J49_FLIP_PERM, JOINT_INDEX, NUM_JOINTS
from fitloop.cli import main
from shards import writer as shard_writer
from shards.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    AugmentParams,
    augment_joints_3d,
    augment_keypoints,
    augment_pose,
    training_transform,
)
from shards.crop import box_to_crop, invert, transform_points, warp
from shards.reader import ReaderConfig, ShardCorruptError, ShardReader, iter_shard, list_shards, verify
from shards.sample import decode_npy, encode_npy
from shards.schema import REJECT_COLUMNS, PersonRecord, Reject
from shards.writer import ShardConfig, ShardWriteError, crop_record, write_chunk, write_shards

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"real dataset fixtures not found at {FIXTURES}")

WRIST = JOINT_INDEX["Right Wrist"]
KNEE = JOINT_INDEX["Left Knee"]


# --- Synthetic records with images whose pixels we know --------------------------------------------------------

def blob_image(size: tuple[int, int], points: list[tuple[float, float]], sigma: float = 5.0) -> np.ndarray:
    """(H, W, 3) uint8: a grey background with a white Gaussian blob at each (x, y) (0-based, centres at ints)."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    value = np.zeros((height, width))
    for x, y in points:
        value = np.maximum(value, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)))
    grey = 40 + 200 * value
    return np.repeat(grey[:, :, None], 3, axis=2).round().astype(np.uint8)


def blob_centroid(gray: np.ndarray, near: np.ndarray, radius: float) -> np.ndarray:
    """Intensity-weighted centroid (x, y) of the pixels within ``radius`` of ``near``, background removed."""
    yy, xx = np.mgrid[0:gray.shape[0], 0:gray.shape[1]]
    weight = np.clip(gray.astype(np.float64) - np.median(gray), 0, None)
    weight *= (xx - near[0]) ** 2 + (yy - near[1]) ** 2 < radius ** 2
    return np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()


def make_record(root: Path, name: str, *, size=(640, 480), wrist=(402.3, 233.7), knee=(300.6, 380.2),
                center=(350.0, 280.0), scale=1.6, smpl=False, split="train", dataset="synth") -> PersonRecord:
    """A person whose right wrist and left knee are drawn into its own PNG as blobs; other joints on a ring."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    keypoints = np.zeros((NUM_JOINTS, 3), np.float32)
    for j in range(25, NUM_JOINTS):  # annotated ring of joints, not drawn
        angle = 2 * np.pi * j / 24
        keypoints[j] = (center[0] + 90 * np.cos(angle), center[1] + 120 * np.sin(angle), 1.0)
    keypoints[WRIST] = (*wrist, 1.0)
    keypoints[KNEE] = (*knee, 1.0)
    keypoints[JOINT_INDEX["Nose"]] = 0.0  # one absent joint
    path = root / "images" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(blob_image(size, [wrist, knee])).save(path)
    extra = dict(joints_3d=np.concatenate([rng.normal(size=(NUM_JOINTS, 3)), np.ones((NUM_JOINTS, 1))], axis=1),
                 smpl_pose=rng.normal(scale=0.3, size=72), smpl_betas=rng.normal(size=10), has_smpl=True) \
        if smpl else {}
    return PersonRecord(dataset=dataset, split=split, key=f"{dataset}/{name}", source="synthetic.json", record=name,
                        image_path=f"images/{name}.png", image_root=root, image_size=size, center=center,
                        scale=scale, keypoints_2d=keypoints, extra={"note": name}, **extra)


@pytest.fixture()
def records(tmp_path: Path) -> list[PersonRecord]:
    return [make_record(tmp_path / "data", f"p{i:02d}", smpl=i % 2 == 0, wrist=(380.0 + 7.3 * i, 230.4 + 3.1 * i))
            for i in range(12)]


# --- Crop geometry ------------------------------------------------------------------------------------------------

def test_crop_transform_round_trip_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        center = rng.uniform(-100, 2000, 2)
        side, res = rng.uniform(5, 3000), int(rng.integers(16, 512))
        m = box_to_crop(center, side, res, rot=rng.uniform(-180, 180), flip=bool(rng.integers(2)))
        points = rng.uniform(-500, 3000, (49, 2))
        back = transform_points(invert(m), transform_points(m, points))
        assert np.abs(back - points).max() < 1e-4
    # The box's centre lands on the crop's centre and its edges on the crop's edges (0-based px, centres at ints).
    m = box_to_crop(np.array([100.0, 50.0]), 200.0, 224)
    corners = transform_points(m, np.array([[0.0, -50.0], [200.0, 150.0], [100.0, 50.0]]))
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [223.5, 223.5], [111.5, 111.5]], atol=1e-12)


@pytest.mark.parametrize("side,res,rot,flip", [
    (300.0, 300, 0.0, False),   # 1:1, resize path
    (260.0, 224, 0.0, True),    # shrink + mirror, resize path
    (300.0, 224, 33.0, False),  # rotated: affine path
    (1200.0, 160, 10.0, True),  # 7.5x shrink: block average then affine
    (150.0, 224, -45.0, True),  # enlarge, rotated, mirrored
])
def test_drawn_keypoint_lands_on_its_transformed_position(side, res, rot, flip):
    wrist = np.array([402.3, 233.7])
    sigma = max(8.0, 2.5 * side / res)  # at least 2.5 px wide in the crop, so 8-bit pixels can locate it
    image = Image.fromarray(blob_image((800, 600), [tuple(wrist)], sigma=sigma))
    m = box_to_crop(np.array([400.0, 260.0]), side, res, rot, flip)
    crop = np.asarray(warp(image, m, res))[:, :, 0]
    expected = transform_points(m, wrist[None])[0]
    found = blob_centroid(crop, expected, radius=3.5 * sigma * res / side + 3)
    assert np.abs(found - expected).max() < 0.05  # SPIN's integer crop corners moved points by up to a few px


# --- Write -> read ------------------------------------------------------------------------------------------------

def test_write_then_read_returns_the_same_arrays(records, tmp_path):
    config = ShardConfig(samples_per_shard=5, crop_res=256, crop_margin=1.4)
    manifest = write_shards(records, tmp_path / "set", config)
    assert [s["samples"] for s in manifest["shards"]] == [5, 5, 2]
    by_key = {r.key: r for r in records}
    seen = []
    for shard in list_shards(tmp_path / "set"):
        for stored in iter_shard(shard):
            record = by_key[stored.key]
            seen.append(stored.key)
            np.testing.assert_array_equal(stored.keypoints_2d, record.keypoints_2d)
            for name in ("joints_3d", "smpl_pose", "smpl_betas"):
                expected, got = getattr(record, name), getattr(stored, name)
                assert (got is None) == (expected is None)
                if expected is not None:
                    np.testing.assert_array_equal(got, expected)
            meta = stored.meta
            assert (meta["dataset"], meta["split"], meta["record"], meta["source"]) == \
                   (record.dataset, record.split, record.record, record.source)
            assert meta["image_path"] == record.image_path and meta["image_size"] == list(record.image_size)
            assert meta["has_smpl"] == record.has_smpl and meta["extra"] == {"note": record.record}
            np.testing.assert_array_equal(np.float32(meta["center"]), record.center)
            # Keypoints in crop px are the original ones through the stored transform, and back.
            np.testing.assert_allclose(stored.keypoints_crop[:, :2],
                                       transform_points(stored.image_to_crop, record.keypoints_2d)[:, :2]
                                       * (record.keypoints_2d[:, 2:] > 0), atol=1e-3)
            annotated = record.keypoints_2d[:, 2] > 0
            np.testing.assert_allclose(transform_points(stored.crop_to_image, stored.keypoints_crop)[annotated, :2],
                                       record.keypoints_2d[annotated, :2], atol=2e-3)
            # The JPEG is the crop within JPEG tolerance.
            with Image.open(record.image_root / record.image_path) as opened:
                direct, _ = crop_record(record, opened.convert("RGB"), config)
            decoded = np.asarray(Image.open(io.BytesIO(stored.jpeg)), dtype=np.float64)
            assert decoded.shape == (256, 256, 3)
            assert np.abs(decoded - np.asarray(Image.open(io.BytesIO(direct)), dtype=np.float64)).max() == 0
            raw = np.asarray(warp(Image.open(record.image_root / record.image_path).convert("RGB"),
                                  stored.image_to_crop, 256), dtype=np.float64)
            assert np.abs(decoded - raw).mean() < 2.0
    assert sorted(seen) == sorted(by_key)


def test_shards_are_deterministic_and_webdataset_readable(records, tmp_path, monkeypatch):
    first = write_shards(records, tmp_path / "a", ShardConfig(samples_per_shard=6))
    second = write_shards(records, tmp_path / "b", ShardConfig(samples_per_shard=6))
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]
    for shard in first["shards"]:
        path = tmp_path / "a" / shard["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        with tarfile.open(path) as tar:
            members = tar.getmembers()
        assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o444 for m in members)
        assert all("." not in m.name.rsplit("/", 1)[1].split(".", 1)[0] for m in members)
    monkeypatch.setenv("WDS_SECURE", "1")  # webdataset refuses pickles; nothing in a shard needs one
    webdataset = pytest.importorskip("webdataset")
    url = str(tmp_path / "a" / first["shards"][0]["name"])
    samples = list(webdataset.WebDataset(url, shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [r.key for r in records[:6]]
    assert {"jpg", "json", "keypoints_2d.npy", "keypoints_crop.npy"} <= set(samples[0])
    np.testing.assert_array_equal(samples[0]["keypoints_2d.npy"], records[0].keypoints_2d)
    assert samples[0]["json"]["key"] == records[0].key


def test_manifest_reconciles_and_records_config_and_sources(records, tmp_path):
    config = ShardConfig(samples_per_shard=4, jpeg_quality=80)
    rejects = [Reject("synth", "train", "synthetic.json", f"r{i}", "too_few_joints", "3 joints") for i in range(3)]
    manifest = write_shards(records[:2] + rejects + records[2:], tmp_path / "set", config,
                            inputs=[{"dataset": "synth", "root": "/data/synth"}])
    assert manifest["counts"] == {"read": 15, "written": 12, "rejected": 3}
    assert manifest["by_dataset"] == {"synth": {"train": {"read": 15, "written": 12, "rejected": 3}}}
    assert manifest["rejects_by_reason"] == {"too_few_joints": 3}
    assert manifest["config"]["jpeg_quality"] == 80 and manifest["config"]["samples_per_shard"] == 4
    assert manifest["has_smpl"] == 6 and manifest["inputs"][0]["root"] == "/data/synth"
    assert manifest["sources"] == [{"dataset": "synth", "split": "train", "source": "synthetic.json",
                                    "image_root": str(tmp_path / "data")}]
    for field in ("schema_version", "sample_format_version", "fitloop_version", "created_utc", "config_sha256"):
        assert field in manifest
    assert json.loads((tmp_path / "set" / "manifest.json").read_text()) == manifest


def test_rejects_parquet_has_the_schema_columns(records, tmp_path):
    rejects = [Reject("synth", "train", "a.json", "r1", "crowd", "iscrowd=1", key="synth/r1")]
    write_shards(rejects + records[:1], tmp_path / "set")
    table = pq.read_table(tmp_path / "set" / "rejects.parquet")
    assert tuple(table.column_names) == REJECT_COLUMNS
    assert table.to_pylist()[0] == rejects[0].to_row()
    write_shards(records[:1], tmp_path / "empty")  # no rejects: the table still has the columns
    assert tuple(pq.read_table(tmp_path / "empty" / "rejects.parquet").column_names) == REJECT_COLUMNS


def test_an_image_that_fails_to_decode_at_crop_time_is_a_reject(records, tmp_path):
    broken = records[3]
    path = broken.image_root / broken.image_path
    path.write_bytes(path.read_bytes()[:200])  # a truncated PNG: the header reads, the pixels do not
    missing = records[4]
    (missing.image_root / missing.image_path).unlink()
    manifest = write_shards(records, tmp_path / "set")
    assert manifest["counts"] == {"read": 12, "written": 10, "rejected": 2}
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "set" / "rejects.parquet").to_pylist()}
    assert rows[broken.key]["reason"] == "corrupt_image" and rows[broken.key]["record"] == broken.record
    assert rows[missing.key]["reason"] == "missing_image"


def test_duplicate_keys_and_existing_sets_are_refused(records, tmp_path):
    with pytest.raises(ShardWriteError, match="more than once"):
        write_shards([records[0], records[0]], tmp_path / "dup")
    write_shards(records[:2], tmp_path / "set")
    with pytest.raises(ShardWriteError, match="already holds a shard set"):
        write_shards(records[:2], tmp_path / "set")
    assert write_shards(records[:3], tmp_path / "set", overwrite=True)["counts"]["written"] == 3


def test_a_failed_chunk_leaves_no_half_shard(records, tmp_path, monkeypatch):
    calls = []

    def failing_encode(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real_encode(*args, **kwargs)

    real_encode = shard_writer.encode_sample
    monkeypatch.setattr(shard_writer, "encode_sample", failing_encode)
    with pytest.raises(RuntimeError, match="killed"):
        write_chunk(records[:5], tmp_path / "set", "synth-train-000000", ShardConfig())
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == []


# --- Resume: a failed run's finished chunks are kept ------------------------------------------------------------

def _failing_after(records, n: int):
    """The records, then an I/O error where the (n+1)-th would come (a flaky disk under the adapter)."""
    yield from records[:n]
    raise OSError("read error (simulated)")


def _spy_writes(monkeypatch) -> list[str]:
    written: list[str] = []
    real = shard_writer.write_chunk

    def spy(records, out_dir, shard_name, config, digest=None):
        written.append(shard_name)
        return real(records, out_dir, shard_name, config, digest)

    monkeypatch.setattr(shard_writer, "write_chunk", spy)
    return written


def test_a_failed_run_resumes_keeping_its_verified_chunks(records, tmp_path, monkeypatch):
    config = ShardConfig(samples_per_shard=4)
    reference = write_shards(records, tmp_path / "reference", config)
    assert len(reference["shards"]) == 3
    out = tmp_path / "set"
    with pytest.raises(OSError, match="simulated"):  # chunks 0 and 1 are full (and written) before the 10th record
        write_shards(_failing_after(records, 9), out, config)
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in out.glob("*.tar")) == ["synth-train-000000.tar", "synth-train-000001.tar"]

    written = _spy_writes(monkeypatch)
    manifest = write_shards(records, out, config)  # the retry: same records, same folder
    assert written == ["synth-train-000002"]
    assert [(s["name"], s["sha256"]) for s in manifest["shards"]] == \
           [(s["name"], s["sha256"]) for s in reference["shards"]]
    assert manifest["counts"] == reference["counts"] and verify(out).ok
    assert not (out / shard_writer.CHUNKS_DIR).exists()


def test_resume_rewrites_changed_shards_and_chunks_of_other_inputs(records, tmp_path, monkeypatch):
    config = ShardConfig(samples_per_shard=4)
    records = records + [make_record(tmp_path / "data", f"p{i:02d}") for i in range(12, 16)]  # 4 chunks
    out = tmp_path / "set"
    with pytest.raises(OSError):
        write_shards(_failing_after(records, 13), out, config)  # chunks 0, 1 and 2 written
    damaged = out / "synth-train-000001.tar"
    damaged.write_bytes(damaged.read_bytes()[:-1024])  # truncated on disk since
    changed = list(records)
    changed[0] = make_record(tmp_path / "data", "p00", wrist=(390.0, 250.0))  # same key, another person
    written = _spy_writes(monkeypatch)
    manifest = write_shards(changed, out, config)
    assert written == ["synth-train-000000", "synth-train-000001", "synth-train-000003"]  # chunk 2 is kept
    fresh = write_shards(changed, tmp_path / "fresh", config)
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in fresh["shards"]]
    assert verify(out).ok


def test_shards_of_an_earlier_attempt_that_this_run_does_not_write_are_removed(records, tmp_path):
    config = ShardConfig(samples_per_shard=4)
    out = tmp_path / "set"
    other = [make_record(tmp_path / "data", f"q{i}", split="val") for i in range(5)]
    with pytest.raises(OSError):
        write_shards(_failing_after(other, 5), out, config)
    assert (out / "synth-val-000000.tar").is_file()
    write_shards(records, out, config)
    assert sorted(p.name for p in out.glob("*.tar")) == [f"synth-train-00000{i}.tar" for i in range(3)]
    assert verify(out).ok  # no stray shard


def test_a_folder_with_tars_but_no_shard_set_is_refused_even_to_overwrite(records, tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "mine.tar").write_bytes(b"not fitloop's")
    for overwrite in (False, True):  # --overwrite replaces a shard set, never files fitloop did not write
        with pytest.raises(ShardWriteError, match="'mine.tar' but no fitloop shard set"):
            write_shards(records[:2], out, overwrite=overwrite)
    assert (out / "mine.tar").read_bytes() == b"not fitloop's" and sorted(p.name for p in out.iterdir()) == ["mine.tar"]


def test_the_manifest_needs_every_shard_on_disk_as_its_chunk_wrote_it(records, tmp_path):
    config = ShardConfig(samples_per_shard=4)
    results = [shard_writer.write_chunk(records[i:i + 4], tmp_path / "worker", f"synth-train-{i // 4:06d}", config)
               for i in (0, 4)]
    elsewhere = tmp_path / "client"  # what a client sees when its workers write to another filesystem
    elsewhere.mkdir()
    with pytest.raises(ShardWriteError, match="synth-train-000000.tar: reported written by its chunk but not "
                                              "there.*same absolute path"):
        shard_writer.finalize_manifest(elsewhere, results, config)
    assert not (elsewhere / "manifest.json").exists()
    theirs = tmp_path / "worker" / "synth-train-000001.tar"
    data = bytearray(theirs.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: another writer's file
    theirs.write_bytes(bytes(data))
    with pytest.raises(ShardWriteError, match="synth-train-000001.tar: not the file its chunk wrote"):
        shard_writer.finalize_manifest(tmp_path / "worker", results, config)
    assert not (tmp_path / "worker" / "manifest.json").exists()


# --- Integrity ----------------------------------------------------------------------------------------------------

def test_a_truncated_or_changed_shard_is_caught_by_its_checksum(records, tmp_path):
    write_shards(records, tmp_path / "set", ShardConfig(samples_per_shard=5))
    assert verify(tmp_path / "set").ok
    truncated = tmp_path / "set" / "synth-train-000001.tar"
    data = truncated.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    changed = tmp_path / "set" / "synth-train-000002.tar"
    with tarfile.open(changed) as tar:
        jpeg_at = next(m.offset_data for m in tar.getmembers() if m.name.endswith(".jpg"))
    flipped = bytearray(changed.read_bytes())
    flipped[jpeg_at + 1000] ^= 0xFF  # inside a JPEG: the tar still parses, only the hash can tell
    changed.write_bytes(bytes(flipped))

    report = verify(tmp_path / "set")
    assert not report.ok and len(report.problems) == 2
    assert "synth-train-000001.tar" in report.problems[0] and "synth-train-000002.tar" in report.problems[1]
    shards = {s.path.name: s for s in list_shards(tmp_path / "set")}
    with pytest.raises(ShardCorruptError, match="synth-train-000001.tar"):
        list(iter_shard(shards["synth-train-000001.tar"]))
    with pytest.raises(ShardCorruptError, match="synth-train-000002.tar.*differs from the manifest"):
        list(iter_shard(shards["synth-train-000002.tar"]))
    assert main(["shards", "verify", str(tmp_path / "set")]) == 1


def test_npy_members_refuse_pickles():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        decode_npy(buffer.getvalue())
    array = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(decode_npy(encode_npy(array)), array)


# --- Augmentation -------------------------------------------------------------------------------------------------

def test_flip_twice_is_identity_and_swaps_left_and_right():
    rng = np.random.default_rng(1)
    keypoints = np.concatenate([rng.uniform(0, 224, (NUM_JOINTS, 2)), np.ones((NUM_JOINTS, 1))], axis=1)
    flip = box_to_crop(np.array([111.5, 111.5]), 224.0, 224, flip=True)  # mirror in place
    once = transform_points(flip, keypoints)[J49_FLIP_PERM]
    twice = transform_points(flip, once)[J49_FLIP_PERM]
    np.testing.assert_allclose(twice, keypoints, atol=1e-9)
    left, right = JOINT_INDEX["Left Wrist"], JOINT_INDEX["Right Wrist"]
    normalised = augment_keypoints(keypoints, flip, True, 224)
    np.testing.assert_allclose(normalised[right, 0], -(2 * (keypoints[left, 0] + 0.5) / 224 - 1), atol=1e-6)
    np.testing.assert_allclose(normalised[right, 1], 2 * (keypoints[left, 1] + 0.5) / 224 - 1, atol=1e-6)

    joints = np.concatenate([rng.normal(size=(NUM_JOINTS, 3)), np.ones((NUM_JOINTS, 1))], axis=1)
    np.testing.assert_allclose(augment_joints_3d(augment_joints_3d(joints, 0.0, True), 0.0, True), joints, atol=1e-6)
    assert np.allclose(augment_joints_3d(joints, 0.0, True)[right, 0], -joints[left, 0], atol=1e-6)
    pose = rng.normal(scale=0.4, size=72)
    np.testing.assert_allclose(augment_pose(augment_pose(pose, 0.0, True), 0.0, True), pose, atol=1e-6)
    mirrored = augment_pose(pose, 0.0, True)  # SMPL joints 1, 2 are the left and right hips
    np.testing.assert_allclose(mirrored[3:6], pose[6:9] * [1, -1, -1], atol=1e-6)
    mirror = np.diag([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(Rotation.from_rotvec(mirrored[:3]).as_matrix(),
                               mirror @ Rotation.from_rotvec(pose[:3]).as_matrix() @ mirror, atol=1e-6)
    # A rotation and its inverse cancel on the pose's global orientation.
    np.testing.assert_allclose(augment_pose(augment_pose(pose, 25.0, False), -25.0, False), pose, atol=1e-5)


def test_augmented_item_shows_each_keypoint_on_its_pixels(tmp_path):
    """Write -> read with SPIN's augmentation: the drawn wrist and knee are where the item's keypoints say, under
    flip (their names swapped), rotation and scale, and crop_to_image takes them back to the original pixels."""
    records = [make_record(tmp_path / "data", f"p{i}", wrist=(402.3 - 9 * i, 233.7 + 5 * i)) for i in range(6)]
    write_shards(records, tmp_path / "set")
    augment = AugmentConfig(rot_zero_prob=0.3, noise_factor=0.0)
    reader = ShardReader(tmp_path / "set", ReaderConfig(augment=augment, seed=5), rank=0, world_size=1)
    by_key = {r.key: r for r in records}
    flips = set()
    for item in reader:
        gray = (item["img"][0].numpy() * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
        flipped = bool(item["flip"])
        flips.add(flipped)
        record = by_key[item["key"]]
        for joint in (WRIST, KNEE):
            slot = J49_FLIP_PERM[joint] if flipped else joint
            u = (item["keypoints"][slot, :2].numpy() + 1) * 224 / 2 - 0.5
            sigma_crop = 5.0 * 224 / (200 * record.scale * float(item["scale"]))
            found = blob_centroid(gray, u, radius=3.5 * sigma_crop + 2)
            assert np.abs(found - u).max() < 0.35, (item["key"], joint, found, u)
            back = transform_points(item["crop_to_image"].numpy(), u[None])[0]
            np.testing.assert_allclose(back, record.keypoints_2d[joint, :2], atol=1e-3)
    assert flips == {True, False}


@pytest.mark.parametrize("rot,flip", [(30.0, False), (-50.0, True), (0.0, True)])
def test_3d_joints_and_pose_move_with_the_image(rot, flip):
    """Projecting the augmented 3D joints equals augmenting the projected 2D joints (principal point at the crop
    centre), and the augmented pose's global orientation turns the body as the 3D joints were turned."""
    rng = np.random.default_rng(2)
    joints = np.concatenate([rng.normal(scale=0.5, size=(NUM_JOINTS, 3)) + [0, 0, 5], np.ones((NUM_JOINTS, 1))], 1)
    res, focal = 224, 500.0
    centre = (res - 1) / 2

    def project(j3d):
        return np.column_stack([focal * j3d[:, :2] / j3d[:, 2:3] + centre, j3d[:, 3]])

    to_crop = box_to_crop(np.array([centre, centre]), float(res), res, rot, flip)  # rotation/mirror in place
    from_image = augment_keypoints(project(joints), to_crop, flip, res)
    from_3d = augment_keypoints(project(augment_joints_3d(joints, rot, flip)), np.eye(3), False, res)
    np.testing.assert_allclose(from_image, from_3d, atol=1e-5)

    pose = rng.normal(scale=0.4, size=72)
    vectors = rng.normal(size=(NUM_JOINTS, 3))  # body points in the model frame, turned by the global orientation
    body = np.column_stack([Rotation.from_rotvec(pose[:3]).apply(vectors), np.ones(NUM_JOINTS)])
    turned = Rotation.from_rotvec(augment_pose(pose, rot, False)[:3]).apply(vectors)
    np.testing.assert_allclose(turned, augment_joints_3d(body, rot, False)[:, :3], atol=1e-5)


def test_training_transform_scales_and_rotates_the_box():
    params = AugmentParams(flip=False, rot=90.0, scale=2.0)
    m = training_transform(np.array([50.0, 50.0]), 100.0, params, 100)
    # The box doubled: its old top-left corner is a quarter in; rotated 90° counter-clockwise it goes bottom-left.
    np.testing.assert_allclose(transform_points(m, np.array([[0.0, 0.0]]))[0], [24.5, 74.5], atol=1e-9)


# --- Reading for training -----------------------------------------------------------------------------------------

@pytest.fixture()
def shard_set(tmp_path: Path) -> tuple[Path, list[str]]:
    records = [make_record(tmp_path / "data", f"p{i:02d}", size=(160, 120), center=(80.0, 60.0), scale=0.5,
                           wrist=(90.0, 50.0), knee=(70.0, 80.0)) for i in range(23)]
    write_shards(records, tmp_path / "set", ShardConfig(samples_per_shard=3, crop_res=64))  # 8 shards
    return tmp_path / "set", [r.key for r in records]


def keys_of(reader: ShardReader, consumer: int, consumers: int, quota: int = -1) -> list[str]:
    return [s.key for s in reader.iter_stored(consumer, consumers, quota)]


def test_reader_order_is_deterministic_for_a_seed(shard_set):
    directory, keys = shard_set
    config = ReaderConfig(seed=3, shuffle_buffer=5, img_res=32)
    first = [(i["key"], bool(i["flip"]), float(i["rot"])) for i in ShardReader(directory, config, rank=0,
                                                                                 world_size=1)]
    again = [(i["key"], bool(i["flip"]), float(i["rot"])) for i in ShardReader(directory, config, rank=0,
                                                                                 world_size=1)]
    assert first == again and sorted(k for k, _, _ in first) == sorted(keys)
    other = ShardReader(directory, ReaderConfig(seed=4, shuffle_buffer=5, img_res=32), rank=0, world_size=1)
    assert [i["key"] for i in other] != [k for k, _, _ in first]
    epoch1 = ShardReader(directory, config, rank=0, world_size=1)
    epoch1.set_epoch(1)
    assert [i["key"] for i in epoch1] != [k for k, _, _ in first]


@pytest.mark.parametrize("world,workers", [(2, 3), (3, 1), (4, 4)])  # 8 shards: shard split, and sample split
def test_worker_and_node_splitting_reads_each_sample_once(shard_set, world, workers):
    directory, keys = shard_set
    readers = [ShardReader(directory, ReaderConfig(seed=1), rank=r, world_size=world) for r in range(world)]
    consumers = world * workers
    shares = [keys_of(readers[r], r * workers + w, consumers) for r in range(world) for w in range(workers)]
    everything = [k for share in shares for k in share]
    assert sorted(everything) == sorted(keys)  # every sample once: none twice, none lost
    if consumers <= 8:  # whole shards per consumer: each shard's samples stay together
        shard_of = {k: s.path.name for s in list_shards(directory) for k in (x.key for x in iter_shard(s))}
        owners = {}
        for index, share in enumerate(shares):
            for key in share:
                assert owners.setdefault(shard_of[key], index) == index


def test_dataloader_workers_and_fixed_length_epochs(shard_set, monkeypatch):
    directory, keys = shard_set
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = ReaderConfig(seed=2, samples_per_epoch=50, img_res=32)  # 25 per node from 23 samples: resampling
    reader = ShardReader(directory, config)
    assert (reader.rank, reader.world_size, len(reader)) == (1, 2, 25)
    loader = torch.utils.data.DataLoader(reader, batch_size=5, num_workers=2)
    batches = list(loader)
    got = [k for b in batches for k in b["key"]]
    assert len(got) == 25 and set(got) <= set(keys)
    assert batches[0]["img"].shape == (5, 3, 32, 32) and batches[0]["keypoints"].shape == (5, 49, 3)
    assert batches[0]["pose"].shape == (5, 72) and batches[0]["crop_to_image"].dtype == torch.float64
    # One pass without a fixed length: the two nodes together read every sample once.
    plain = ReaderConfig(seed=2, img_res=32)
    both = [k for r in (0, 1) for k in (i["key"] for i in ShardReader(directory, plain, rank=r, world_size=2))]
    assert sorted(both) == sorted(keys)


# --- The commands on the real fixtures ------------------------------------------------------------------------------

@needs_fixtures
def test_preprocess_lsp_fixture_and_stats(tmp_path, capsys):
    out = tmp_path / "lsp"
    assert main(["preprocess", "lsp", "--root", str(FIXTURES / "lsp" / "lsp_dataset"), "--out", str(out),
                 "--no-progress"]) == 0
    assert "read 2000 = written 2 + rejected 1998" in capsys.readouterr().out
    assert main(["shards", "stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["samples"], stats["rejected"], stats["read"]) == (2, 1998, 2000)
    assert stats["by_dataset"] == {"lsp": 2} and stats["by_split"] == {"test": 2, "train": 0}
    assert stats["rejects_by_reason"] == {"missing_image": 1998} and stats["consistent"]
    table = pq.read_table(out / "rejects.parquet")
    assert tuple(table.column_names) == REJECT_COLUMNS and table.num_rows == 1998
    assert main(["shards", "verify", str(out)]) == 0
    assert main(["shards", "ls", str(out), "--keys"]) == 0
    assert "lsp/im1010" in capsys.readouterr().out
    item = next(iter(ShardReader(out, ReaderConfig(augment=AugmentConfig(enabled=False), shuffle_buffer=0,
                                                   shuffle_shards=False))))
    assert item["key"] == "lsp/im1010" and item["img"].shape == (3, 224, 224)
    annotated = item["keypoints"][:, 2] > 0
    assert annotated.sum() == 14 and item["keypoints"][annotated, :2].abs().max() < 1.0  # inside the crop


@needs_fixtures
def test_preprocess_coco_fixture_keeps_keys_and_counts(tmp_path, capsys):
    out = tmp_path / "coco"
    assert main(["preprocess", "coco", "--root", str(FIXTURES / "coco"), "--out", str(out), "--split", "val",
                 "--option", "annotation_file=test_coco.json", "--no-progress", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert counts["read"] == counts["written"] + counts["rejected"] and counts["written"] > 0
    keys = [s.key for shard in list_shards(out) for s in iter_shard(shard)]
    assert "coco/000000000785_a442619" in keys and all("." not in k for k in keys)


def test_preprocess_with_a_bad_root_says_what_it_expects(tmp_path, capsys):
    assert main(["preprocess", "lsp", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "joints.mat" in err and "nowhere" in err
    assert main(["preprocess", "lsp", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "joints.mat" in capsys.readouterr().err


def test_preprocess_help_lists_every_registered_adapter(capsys):
    from pipelines.adapters import ADAPTERS

    with pytest.raises(SystemExit):
        main(["preprocess", "--help"])
    listed = capsys.readouterr().out.split("the dataset's format:")[1].split("\n\n")[0]
    assert "".join(listed.split()).split(",") == sorted(ADAPTERS)  # names hold no spaces; argparse wraps at hyphens
    assert "h36m" in ADAPTERS
    with pytest.raises(SystemExit):
        main(["preprocess", "h3.6m", "--root", ".", "--out", "x"])
    assert f"invalid choice: 'h3.6m' (choose from {', '.join(map(repr, sorted(ADAPTERS)))})" in capsys.readouterr().err
