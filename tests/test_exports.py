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
from PIL import Image

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
        # im1010's pose is its fit (has_fit 1), which the adapter reads as no ground truth: read back as ground
        # truth, a fit would supervise as truth and never be refined
        assert not record.has_smpl and (record.smpl_pose is None) == (key == "lsp/im1010")


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


GT_MODEL = "open:aaaaaaaaaaaaaaaa"
GT_KEYS = ("synth-gt/p0", "synth-gt/p1", "synth-gt/p2", "synth-gt/p3", "synth-gt/p4")
GT_TRUE = {"synth-gt/p0": 0, "synth-gt/p1": 1}   # key -> row of GT_SMPL: samples with ground-truth SMPL
GT_FITTED = ("synth-gt/p0", "synth-gt/p2", "synth-gt/p3")   # keys the table fits (p0 has ground truth too)
GT_SMPL = (np.random.default_rng(11).normal(0, 0.3, (3, 72)).astype(np.float32),
           np.random.default_rng(12).normal(0, 1, (3, 10)).astype(np.float32))


@pytest.fixture(scope="module")
def gt_shards(tmp_path_factory) -> Path:
    """One file of 5 samples: p0, p1 with ground-truth SMPL (has_smpl, as H36M's MoSh in SPIN's h36m_train.npz);
    p2 with a pose that is no ground truth (has_smpl false, as rows of SPIN's files with has_smpl 0); p3, p4 none."""
    root = tmp_path_factory.mktemp("export-gt")
    records = []
    for i, key in enumerate(GT_KEYS):
        name = key.split("/")[1]
        Image.new("RGB", (120, 100), (90, 90, 90)).save(root / f"{name}.png")
        keypoints = np.zeros((49, 3), np.float32)
        keypoints[25:39] = np.column_stack([rng.uniform(40, 80, (14, 2)), np.ones(14)])
        gt = GT_TRUE.get(key, 2 if key == "synth-gt/p2" else None)
        records.append(PersonRecord(
            dataset="synth-gt", split="train", key=key, source="gt.json", record=name, image_path=f"{name}.png",
            image_root=root, image_size=(120, 100), center=np.array([60.0, 50.0]), scale=0.4,
            keypoints_2d=keypoints, smpl_pose=None if gt is None else GT_SMPL[0][gt],
            smpl_betas=None if gt is None else GT_SMPL[1][gt], has_smpl=key in GT_TRUE))
    write_shards(records, root / "shards", ShardConfig(crop_res=64))
    return root / "shards"


def gt_table(path: Path) -> tuple[FitsTable, np.ndarray, np.ndarray]:
    """A table whose version 1 holds fits of `GT_FITTED` (version 0: none)."""
    table = FitsTable.create(path)
    return (table, *crop_fits(table, list(GT_FITTED), GT_MODEL))


def check_ground_truth_rows(keys: list[str], pose: np.ndarray, betas: np.ndarray, has_smpl: np.ndarray,
                            has_fit: np.ndarray, fit_pose: np.ndarray | None, fit_betas: np.ndarray | None) -> None:
    """Rows of an export of `gt_shards`: ground truth where a sample has it (has_fit 0), whatever the table fits;
    the fit (has_fit 1) where it has none; zeros and has_smpl 0 without either. No fits: ``fit_pose`` None."""
    for i, key in enumerate(keys):
        if key in GT_TRUE:
            expected = GT_SMPL[0][GT_TRUE[key]], GT_SMPL[1][GT_TRUE[key]]
            assert (has_smpl[i], has_fit[i]) == (1, 0), key
        elif fit_pose is not None and key in GT_FITTED:
            expected = fit_pose[GT_FITTED.index(key)], fit_betas[GT_FITTED.index(key)]
            assert (has_smpl[i], has_fit[i]) == (1, 1), key
        else:
            expected = np.zeros(72), np.zeros(10)
            assert (has_smpl[i], has_fit[i]) == (0, 0), key
        assert np.array_equal(pose[i], expected[0]) and np.array_equal(betas[i], expected[1]), key


def test_spin_dataset_npz_keeps_ground_truth_smpl_and_fills_the_rest_with_fits(gt_shards, tmp_path, capsys):
    """SPIN's BaseDataset and trainer read has_smpl 1 as ground truth: a sample's own ground-truth SMPL is written,
    never the table's SMPLify fit in its place, nor dropped when the table holds no fit; has_fit says which is which.
    """
    table, pose, betas = gt_table(tmp_path / "fits")
    for version, fitted in ((None, True), (0, False)):
        out = tmp_path / f"out-{version}"
        summary = export_spin_datasets(table, gt_shards, out, version=version)
        [written] = summary["files"]
        counts = {"ground_truth": 2, "fits": 2 if fitted else 0, "none": 1 if fitted else 3,
                  "fits_under_ground_truth": 1 if fitted else 0}
        assert {k: written[k] for k in counts} == counts
        sidecar = json.loads((out / "synth-gt_train.fitloop.json").read_text())
        assert sidecar["smpl"] == counts and "has_fit 0" in sidecar["smpl_rule"]
        spin = spin_base_dataset(out / "synth-gt_train.npz")
        with np.load(out / "synth-gt_train.npz") as data:   # SPIN's call; it reads its fields by name
            has_fit = data["has_fit"]
            assert has_fit.dtype == np.float64 and data["pose"].dtype == np.float64
        check_ground_truth_rows(sidecar["keys"], spin["pose"], spin["betas"], spin["has_smpl"], has_fit,
                                pose if fitted else None, betas if fitted else None)
    assert main(["fits", "export", str(tmp_path / "fits"), "--shards", str(gt_shards), "--out",
                 str(tmp_path / "cli")]) == 0
    assert ("synth-gt_train.npz: 5 rows, 2 with a fit, 2 with ground-truth SMPL (has_fit 0) kept over 1 fit(s)"
            in capsys.readouterr().out)


def test_fit_tars_keep_ground_truth_smpl_beside_the_fit(gt_shards, tmp_path):
    wds = pytest.importorskip("webdataset")
    table, pose, _ = gt_table(tmp_path / "fits")
    export_fit_tars(table, gt_shards, tmp_path / "tars")
    urls = sorted(str(p) for p in (tmp_path / "tars").glob("*.tar"))
    read = {item["__key__"]: item for item in wds.WebDataset(urls, shardshuffle=False).decode()}
    assert set(read) == set(GT_KEYS)
    for key, item in read.items():
        assert item["json"]["has_smpl"] == (key in GT_TRUE) and item["fit.json"]["has_fit"] == (key in GT_FITTED)
        if key in GT_TRUE:
            assert np.array_equal(item["smpl_pose.npy"], GT_SMPL[0][GT_TRUE[key]])
            assert np.array_equal(item["smpl_betas.npy"], GT_SMPL[1][GT_TRUE[key]])
        if key in GT_FITTED:
            i = GT_FITTED.index(key)
            assert np.array_equal(np.concatenate([item["fit_global_orient.npy"], item["fit_body_pose.npy"]]), pose[i])


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
