"""Exports of a shard set and its best fits (fits/exports.py), read back with their users' loaders.

SPIN's dataset .npz is read by `spin_base_dataset`, a faithful re-implementation of the loading code of SPIN's
``BaseDataset`` (nkolot/SPIN ``datasets/base_dataset.py``, commit 277892a91e74af004c74457cd294bd102972f9b0,
``__init__`` and the SMPL branch of ``__getitem__``; SPIN itself cannot be installed here), and by fitloop's SPIN
.npz adapter. Meshes are read by trimesh. The LSP round trip reads ../shared/fixtures and is skipped without them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fitloop.cli import main
from fits.exports import export_fit_tars, export_meshes, export_spin_datasets, spin_imgname, write_frames
from fits.interchange import spin_keys
from fits.quality import FitFilter
from fits.schema import FitProvenance, fits_batch
from fits.table import FitsTable
from fitting.body_model import load_body_model
from pipelines.adapters import iter_dataset
from shards.frames import VideoFrames, write_video
from shards.schema import PersonRecord
from shards.writer import ShardConfig, write_shards

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
LSP = FIXTURES / "lsp"
rng = np.random.default_rng(3)


def spin_base_dataset(npz: Path, ignore_3d: bool = False) -> dict[str, np.ndarray]:
    """What SPIN's BaseDataset.__init__ reads from ``npz`` (base_dataset.py, commit 277892a, lines 28–84), and per
    row the pose and betas __getitem__ takes (zeros where has_smpl is 0). ``np.float`` there is float64."""
    data = np.load(npz)  # SPIN's call: numpy's default allow_pickle=False
    out = {"imgname": data["imgname"], "scale": data["scale"], "center": data["center"]}
    try:
        pose, betas = data["pose"].astype(np.float64), data["shape"].astype(np.float64)
        has_smpl = data["has_smpl"] if "has_smpl" in data else np.ones(len(out["imgname"]))
    except KeyError:
        pose = betas = None
        has_smpl = np.zeros(len(out["imgname"]))
    if ignore_3d:
        has_smpl = np.zeros(len(out["imgname"]))
    try:
        out["pose_3d"], out["has_pose_3d"] = data["S"], 1
    except KeyError:
        out["has_pose_3d"] = 0
    try:
        keypoints_gt = data["part"]
    except KeyError:
        keypoints_gt = np.zeros((len(out["imgname"]), 24, 3))
    try:
        keypoints_openpose = data["openpose"]
    except KeyError:
        keypoints_openpose = np.zeros((len(out["imgname"]), 25, 3))
    out["keypoints"] = np.concatenate([keypoints_openpose, keypoints_gt], axis=1)
    out["has_smpl"] = has_smpl
    out["pose"] = np.stack([pose[i] if has_smpl[i] else np.zeros(72) for i in range(len(has_smpl))])
    out["betas"] = np.stack([betas[i] if has_smpl[i] else np.zeros(10) for i in range(len(has_smpl))])
    out["length"] = out["scale"].shape[0]
    return out


def crop_fits(table: FitsTable, keys: list[str], model: str, *, cam_t=None) -> tuple[np.ndarray, np.ndarray]:
    pose, betas = rng.normal(0, 0.3, (len(keys), 72)), rng.normal(0, 1, (len(keys), 10))
    table.append(fits_batch(keys, pose, betas, FitProvenance("run", model, "cfg"), loss=np.full(len(keys), 5.0),
                            cam_t=cam_t))
    return pose.astype(np.float32), betas.astype(np.float32)


@pytest.fixture(scope="module")
def lsp_shards(tmp_path_factory) -> tuple[Path, Path]:
    """SPIN's LSP test .npz through the SPIN .npz adapter into shards (the fixture's two images)."""
    if not (LSP / "spin_npz").is_dir():
        pytest.skip(f"{FIXTURES} is absent: the real-data fixtures live beside the checkout, not in it")
    npz = LSP / "spin_npz" / "lsp_dataset_test.npz"
    records = [r for r in iter_dataset("spin-npz", LSP / "lsp_dataset", "test", image_check="exists",
                                       npz_file="../spin_npz/lsp_dataset_test.npz") if isinstance(r, PersonRecord)]
    out = tmp_path_factory.mktemp("lsp-export") / "shards"
    write_shards(records, out, ShardConfig(crop_res=64))
    return out, npz


def test_spin_dataset_npz_reads_in_spins_base_dataset_and_inverts_the_adapter(lsp_shards, tmp_path):
    shards, source = lsp_shards
    table = FitsTable.create(tmp_path / "fits")
    model = "open:aaaaaaaaaaaaaaaa"
    pose, betas = crop_fits(table, ["lsp/im1010"], model)
    summary = export_spin_datasets(table, shards, tmp_path / "out")
    [written] = summary["files"]
    assert Path(written["path"]).name == "lsp_dataset_test.npz" and written["rows"] == 2 and written["fits"] == 1
    spin = spin_base_dataset(Path(written["path"]))
    original = np.load(source)
    rows = [list(original["imgname"]).index(name) for name in spin["imgname"]]
    assert sorted(spin["imgname"]) == ["images/im1010.jpg", "images/im1963.jpg"] and spin["length"] == 2
    # SPIN's 1-based LSP pixels back, to the float32 the records hold them in
    np.testing.assert_allclose(spin["center"], original["center"][rows], atol=1e-4, rtol=0)
    np.testing.assert_allclose(spin["scale"], original["scale"][rows], rtol=1e-6)
    np.testing.assert_allclose(spin["keypoints"][:, 25:], original["part"][rows], atol=1e-4, rtol=0)
    assert not spin["keypoints"][:, :25].any() and spin["has_pose_3d"] == 0
    fitted = list(spin["imgname"]).index("images/im1010.jpg")
    assert spin["has_smpl"].tolist() == [float(i == fitted) for i in range(2)]
    assert np.array_equal(spin["pose"][fitted], pose[0]) and np.array_equal(spin["betas"][fitted], betas[0])
    assert not spin["pose"][1 - fitted].any() and not spin["betas"][1 - fitted].any()
    sidecar = json.loads((tmp_path / "out" / "lsp_dataset_test.fitloop.json").read_text())
    assert sidecar["pixel_offset"] == 1.0 and sidecar["body_model_id"] == model and len(sidecar["keys"]) == 2

    # and back through fitloop's own SPIN .npz adapter: the same keys, boxes and keypoints as the first pass
    again = {r.key: r for r in iter_dataset("spin-npz", LSP / "lsp_dataset", "test", image_check="exists",
                                            npz_file=str(Path(written["path"])))}
    first = {r.key: r for r in iter_dataset("spin-npz", LSP / "lsp_dataset", "test", image_check="exists",
                                            npz_file="../spin_npz/lsp_dataset_test.npz")
             if isinstance(r, PersonRecord)}
    assert set(again) == set(first) == set(sidecar["keys"])
    for key, record in again.items():
        np.testing.assert_allclose(record.keypoints_2d, first[key].keypoints_2d, atol=1e-4, rtol=0)
        np.testing.assert_allclose(record.center, first[key].center, atol=1e-4, rtol=0)
        assert record.scale == pytest.approx(first[key].scale, rel=1e-6)
        assert record.has_smpl == (key == "lsp/im1010")


@pytest.fixture(scope="module")
def synth_shards(tmp_path_factory) -> Path:
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("export-synth")
    write_synthetic_shards(root, [DatasetSpec("synth-x", "train", 3, joints_3d=True, openpose=True),
                                  DatasetSpec("synth-x", "test", 2)], res=64, samples_per_shard=4, seed=2)
    return root / "shards"


def test_spin_dataset_npz_of_3d_samples_one_file_per_split_and_bars(synth_shards, tmp_path):
    from shards.lookup import iter_samples

    samples = {s.key: s for s in iter_samples(synth_shards)}
    table = FitsTable.create(tmp_path / "fits")
    pose, _ = crop_fits(table, sorted(samples)[:2], "open:aaaaaaaaaaaaaaaa")
    summary = export_spin_datasets(table, synth_shards, tmp_path / "out")
    assert [(Path(f["path"]).name, f["rows"], f["joints_3d"]) for f in summary["files"]] == [
        ("synth-x_test.npz", 2, False), ("synth-x_train.npz", 3, True)]
    train = spin_base_dataset(tmp_path / "out" / "synth-x_train.npz")
    keys = json.loads((tmp_path / "out" / "synth-x_train.fitloop.json").read_text())["keys"]
    for i, key in enumerate(keys):  # a dataset SPIN does not ship: pixel offset 0, arrays as stored
        assert np.array_equal(train["keypoints"][i], samples[key].keypoints_2d.astype(np.float64))
        assert np.array_equal(train["pose_3d"][i], samples[key].joints_3d[25:].astype(np.float64))
        assert train["imgname"][i] == samples[key].meta["image_path"]
    assert train["has_pose_3d"] == 1 and train["keypoints"][:, :25, 2].any()
    assert sum(e["fits"] for e in summary["files"]) == 2
    # a bar: these fits carry no quality record, so none meets it and every row has has_smpl 0
    barred = export_spin_datasets(table, synth_shards, tmp_path / "barred", fit_filter=FitFilter(max_pose_prior=1e9))
    assert barred["filtered"] == 2 and not any(f["fits"] for f in barred["files"])
    assert not spin_base_dataset(tmp_path / "barred" / "synth-x_train.npz")["has_smpl"].any()


def test_video_frames_are_named_and_extracted_spins_way(tmp_path):
    # SPIN h36m_train.py: images/<subject>_<action>.<camera>_<frame + 1:06d>.jpg; the Human3.6M adapter's key
    name = spin_imgname("S1/Videos/Directions 1.54138969.mp4", 0, "h36m")
    assert name == "images/S1_Directions_1.54138969_000001.jpg"
    assert spin_keys([name], "h36m") == ["h36m/S1_Directions_1_54138969_000001"]
    assert spin_imgname("images/im0001.jpg", None, "lsp") == "images/im0001.jpg"
    # SPIN mpi_inf_3dhp.py: <seq>/imageFrames/video_<k>/frame_<frame + 1:06d>.jpg; the test set's files stay as named
    assert (spin_imgname("S1/Seq2/imageSequence/video_4.avi", 9, "mpi-inf-3dhp")
            == "S1/Seq2/imageFrames/video_4/frame_000010.jpg")
    test_image = "mpi_inf_3dhp_test_set/TS1/imageSequence/img_000001.jpg"
    assert spin_imgname(test_image, None, "mpi-inf-3dhp") == test_image
    video = tmp_path / "S1" / "Videos" / "Walk 1.x.mp4"
    video.parent.mkdir(parents=True)
    frames = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(4)]
    write_video(video, frames, fps=25)
    wanted = [(video, spin_imgname("S1/Videos/Walk 1.x.mp4", i, "h36m"), i) for i in (2, 0)]
    assert write_frames(wanted, tmp_path / "out") == 2
    with VideoFrames(video) as reader:
        for _, name, index in wanted:
            written = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "out" / name), np.float64)
            assert np.abs(written - np.asarray(reader.frame(index), np.float64)).mean() < 2  # JPEG q95


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_meshes_read_back_in_trimesh_as_the_posed_body(tmp_path, fmt):
    trimesh = pytest.importorskip("trimesh")
    body = load_body_model("open-small")
    table = FitsTable.create(tmp_path / "fits")
    keys = ["mesh/a", "mesh/b", "mesh/c"]
    cam_t = np.array([[0.1, -0.2, 20.0], [0.0, 0.0, 30.0], [0.3, 0.1, 25.0]])
    pose, betas = crop_fits(table, keys, body.model_id, cam_t=cam_t)
    crop_fits(table, ["other/x"], "open:bbbbbbbbbbbbbbbb")  # another model's fit: not this body's
    summary = export_meshes(table, body, tmp_path / "meshes", fmt=fmt, keys=["mesh/a", "mesh/c", "mesh/z"],
                            batch_size=1)
    assert summary["written"] == 2 and summary["missing"] == ["mesh/z"]
    assert not (tmp_path / "meshes" / "mesh" / f"b.{fmt}").exists()
    for i in (0, 2):
        mesh = trimesh.load(tmp_path / "meshes" / "mesh" / f"{keys[i][5:]}.{fmt}", process=False)
        with torch.no_grad():
            expected = body(betas=torch.as_tensor(betas[i:i + 1, :body.num_betas]),
                            body_pose=torch.as_tensor(pose[i:i + 1, 3:]), global_orient=torch.as_tensor(
                                pose[i:i + 1, :3])).vertices[0].numpy() + cam_t[i].astype(np.float32)
        np.testing.assert_allclose(mesh.vertices, expected, atol=2e-6 if fmt == "obj" else 1e-6, rtol=0)
        assert np.array_equal(mesh.faces, body.faces)


def test_cli_exports_spin_dataset_and_meshes(synth_shards, tmp_path, capsys):
    body = load_body_model("open-small")
    table = FitsTable.create(tmp_path / "fits")
    from shards.lookup import iter_samples

    keys = sorted(s.key for s in iter_samples(synth_shards))
    crop_fits(table, keys, body.model_id)
    assert main(["fits", "export", str(tmp_path / "fits"), "--shards", str(synth_shards), "--format", "spin-npz",
                 "--out", str(tmp_path / "spin"), "--version", "1"]) == 0
    assert "synth-x_train.npz: 3 rows, 3 with a fit" in capsys.readouterr().out
    assert spin_base_dataset(tmp_path / "spin" / "synth-x_train.npz")["has_smpl"].all()
    assert main(["fits", "export", str(tmp_path / "fits"), "--shards", str(synth_shards), "--format", "wds",
                 "--out", str(tmp_path / "tars")]) == 0
    assert f"{len(keys)} samples, {len(keys)} with a fit" in capsys.readouterr().out
    assert main(["fits", "export", str(tmp_path / "fits"), "--meshes", str(tmp_path / "m"), "--format", "ply",
                 "--model", "open-small", "--dataset", "synth-x"]) == 0
    assert len(list((tmp_path / "m" / "synth-x").glob("*.ply"))) == len(keys)
    assert main(["fits", "export", str(tmp_path / "fits"), "--shards", str(synth_shards), "--format", "obj",
                 "--out", str(tmp_path / "x")]) == 1
    assert "--format" in capsys.readouterr().err


def test_fit_tars_read_back_in_webdataset_with_crop_keypoints_and_fit(synth_shards, tmp_path):
    wds = pytest.importorskip("webdataset")
    from shards.lookup import iter_samples

    samples = {s.key: s for s in iter_samples(synth_shards)}
    table = FitsTable.create(tmp_path / "fits")
    fitted = sorted(samples)[:3]
    cam_t = np.array([[0.0, 0.1, 20.0]] * 3)
    pose, betas = crop_fits(table, fitted, "open:aaaaaaaaaaaaaaaa", cam_t=cam_t)
    summary = export_fit_tars(table, synth_shards, tmp_path / "tars")
    assert summary["samples"] == len(samples) and summary["fits"] == 3
    urls = sorted(str(p) for p in (tmp_path / "tars").glob("*.tar"))
    read = {}
    for item in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
        read[item["__key__"]] = item
    assert set(read) == set(samples)
    for key, item in read.items():
        sample = samples[key]
        assert item["jpg"].shape[:2] == (96, 96) and item["json"]["key"] == key
        assert np.array_equal(item["keypoints_2d.npy"], sample.keypoints_2d)
        info = item["fit.json"]
        assert info["has_fit"] == (key in fitted)
        if key in fitted:
            i = fitted.index(key)
            assert np.array_equal(np.concatenate([item["fit_global_orient.npy"], item["fit_body_pose.npy"]]),
                                  pose[i])
            assert np.array_equal(item["fit_betas.npy"], betas[i]) and info["body_model_id"].startswith("open:")
            np.testing.assert_allclose(item["fit_cam_t.npy"], cam_t[i], rtol=1e-6)
        else:
            assert not item["fit_body_pose.npy"].any() and not info["has_cam_t"]
    with open(urls[0], "rb") as handle:  # reproducible: the same export gives the same bytes
        first = handle.read()
    export_fit_tars(table, synth_shards, tmp_path / "again")
    assert (tmp_path / "again" / Path(urls[0]).name).read_bytes() == first
