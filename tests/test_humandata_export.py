"""mmhuman3d's HumanData .npz export (fits/humandata_export.py), read back as mmhuman3d reads it.

mmhuman3d cannot be installed here (it needs mmcv), so `humandata_load` re-implements ``HumanData.load``
(open-mmlab/mmhuman3d ``mmhuman3d/data/data_structures/human_data.py``, commit 91448cd, ``load`` and
``_HumanData_SUPPORTED_KEYS``) and `dataset_row` the row ``HumanImageDataset.prepare_raw_data`` builds
(``mmhuman3d/data/datasets/human_image_dataset.py``, commit 40300c1). Keypoint slots are pinned to indices counted
in mmhuman3d's ``HUMAN_DATA`` list (``core/conventions/keypoints_mapping/human_data.py``, commit 436abc6).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import test_exports
from test_exports import check_ground_truth_rows, crop_fits, gt_table

from fitloop.cli import main
from fits.humandata_export import HUMAN_DATA_KEYPOINTS, export_humandata
from fits.quality import FitFilter
from fits.schema import FitsTableError
from fits.table import FitsTable
from fitting.safe_pickle import loads
from shards.lookup import iter_samples

MODEL = "open:aaaaaaaaaaaaaaaa"
# human_data.py _HumanData_SUPPORTED_KEYS: each key's 'type' (load casts a non-0-d value of a key to it)
SUPPORTED_TYPES = {"image_path": list, "bbox_xywh": np.ndarray, "config": str, "keypoints2d": np.ndarray,
                   "keypoints3d": np.ndarray, "smpl": dict, "smplx": dict, "meta": dict,
                   "keypoints2d_mask": np.ndarray, "keypoints3d_mask": np.ndarray, "misc": dict}
ATTRIBUTES = ("__key_strict__", "__temporal_len__", "__keypoints_compressed__")
# Slots in mmhuman3d's HUMAN_DATA list, counted in its source, and the canonical joint (core.joints) each holds.
PINNED = {"right_ankle": (8, 25), "left_ankle": (7, 30), "nose": (55, 44), "left_eye": (57, 45),
          "right_hip_extra": (144, 27), "headtop": (147, 38), "head_extra": (152, 43), "nose_openpose": (153, 0),
          "right_heel_openpose": (177, 24)}


synth_shards = test_exports.synth_shards  # the module fixture: synth-x train (3, 3D joints), test (2)
gt_shards = test_exports.gt_shards  # 5 samples, 2 with ground-truth SMPL (test_exports.GT_TRUE)


def humandata_load(npz: Path) -> tuple[dict, dict]:
    """HumanData.load (commit 91448cd): (the dict it updates itself with, the attributes it sets)."""
    attributes = {}
    with np.load(npz, allow_pickle=True) as npz_file:
        data = dict(npz_file)
        for key, value in list(data.items()):
            if isinstance(value, np.ndarray) and len(value.shape) == 0:
                value = value.item()
            elif key in SUPPORTED_TYPES and type(value) != SUPPORTED_TYPES[key]:  # noqa: E721 (as mmhuman3d)
                value = SUPPORTED_TYPES[key](value)
            if value is None:
                data.pop(key)
            elif key in ATTRIBUTES:
                attributes[key] = value
                data.pop(key)
            elif key == "bbox_xywh" and value.shape[1] == 4:
                data[key] = np.hstack([value, np.ones([value.shape[0], 1])])
            else:
                data[key] = value
    return data, attributes


def dataset_row(data: dict, idx: int) -> dict:
    """HumanImageDataset.prepare_raw_data (commit 40300c1) of row ``idx``, convention 'human_data'."""
    x, y, w, h, _ = data["bbox_xywh"][idx]
    smpl = data.get("smpl", {})
    return {"image_path": data["image_path"][idx], "center": np.array([x + w / 2, y + h / 2]),
            "scale": np.array([max(w, h)] * 2), "keypoints2d": data["keypoints2d"][idx],
            "has_smpl": int(data["has_smpl"][idx]) if "has_smpl" in data else int("smpl" in data),
            "smpl_body_pose": smpl["body_pose"][idx], "smpl_global_orient": smpl["global_orient"][idx],
            "smpl_betas": smpl["betas"][idx]}


def test_human_data_convention_is_mmhuman3ds_list():
    assert len(HUMAN_DATA_KEYPOINTS) == 190
    for name, (slot, _) in PINNED.items():
        assert HUMAN_DATA_KEYPOINTS[slot] == name
    assert HUMAN_DATA_KEYPOINTS[-2:] == ("left_hand", "right_hand") and HUMAN_DATA_KEYPOINTS[0] == "pelvis"


def test_humandata_loads_in_mmhuman3d_with_the_tables_fits_and_the_shards_keypoints(synth_shards, tmp_path):
    samples = {s.key: s for s in iter_samples(synth_shards)}
    table = FitsTable.create(tmp_path / "fits")
    fitted = sorted(samples)[:3]
    pose, betas = crop_fits(table, fitted, MODEL)
    summary = export_humandata(table, synth_shards, tmp_path / "out", allow_pickle=True)
    assert [(Path(f["path"]).name, f["rows"], f["joints_3d"]) for f in summary["files"]] == [
        ("synth-x_test.npz", 2, False), ("synth-x_train.npz", 3, True)]
    assert sum(f["fits"] for f in summary["files"]) == 3 and summary["body_model_id"] == MODEL
    for file in summary["files"]:
        path = Path(file["path"])
        data, attributes = humandata_load(path)
        keys = json.loads(path.with_name(f"{path.stem}.fitloop.json").read_text())["keys"]
        assert attributes == {"__key_strict__": False, "__temporal_len__": len(keys),
                              "__keypoints_compressed__": False}
        assert data["config"] == "synth-x" and isinstance(data["image_path"], list)
        assert set(data["smpl"]) == {"global_orient", "body_pose", "betas"}
        mask = data["keypoints2d_mask"]
        assert mask.shape == (190,) and mask.dtype == np.uint8 and mask.sum() == 49
        for i, key in enumerate(keys):
            sample, row = samples[key], dataset_row(data, i)
            assert row["image_path"] == sample.meta["image_path"]
            np.testing.assert_allclose(row["center"], sample.meta["center"], atol=1e-4, rtol=0)
            np.testing.assert_allclose(row["scale"], sample.meta["scale"] * 200, rtol=1e-6)
            for slot, joint in PINNED.values():
                assert np.array_equal(row["keypoints2d"][slot], sample.keypoints_2d[joint])
            assert not row["keypoints2d"][mask == 0].any()
            assert np.array_equal(np.sort(row["keypoints2d"][mask == 1].ravel()),
                                  np.sort(sample.keypoints_2d.astype(np.float64).ravel()))
            if file["joints_3d"]:
                for slot, joint in PINNED.values():
                    assert np.array_equal(data["keypoints3d"][i, slot], sample.joints_3d[joint])
            assert row["has_smpl"] == (key in fitted)
            if key in fitted:
                j = fitted.index(key)
                assert np.array_equal(row["smpl_global_orient"], pose[j, :3])
                assert np.array_equal(row["smpl_body_pose"], pose[j, 3:].reshape(23, 3))
                assert np.array_equal(row["smpl_betas"], betas[j])
            else:
                assert not row["smpl_body_pose"].any() and not row["smpl_betas"].any()


def test_only_the_smpl_dict_is_pickled_and_it_is_plain(synth_shards, tmp_path):
    table = FitsTable.create(tmp_path / "fits")
    crop_fits(table, sorted(s.key for s in iter_samples(synth_shards))[:2], MODEL)
    with pytest.raises(FitsTableError, match="allow-pickle"):
        export_humandata(table, synth_shards, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    export_humandata(table, synth_shards, tmp_path / "out", allow_pickle=True)
    path = tmp_path / "out" / "synth-x_train.npz"
    pickled = []
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            try:
                npz[key]
            except ValueError:
                pickled.append(key)
    assert pickled == ["smpl"]
    with zipfile.ZipFile(path) as archive:  # the pickle itself, through fitloop's allow-list unpickler
        stream = archive.open("smpl.npy")
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        header = read_header[np.lib.format.read_magic(stream)](stream)
        assert header[2] == np.dtype(object) and header[0] == ()
        smpl = loads(stream.read(), "smpl.npy").item()
    assert sorted(smpl) == ["betas", "body_pose", "global_orient"]
    assert all(type(v) is np.ndarray and v.dtype == np.float32 for v in smpl.values())
    assert smpl["body_pose"].shape == (3, 23, 3) and smpl["betas"].shape == (3, 10)


def test_cli_refuses_without_allow_pickle_and_writes_with_it(synth_shards, tmp_path, capsys):
    table = FitsTable.create(tmp_path / "fits")
    keys = sorted(s.key for s in iter_samples(synth_shards))
    crop_fits(table, keys, MODEL)
    args = ["fits", "export", str(tmp_path / "fits"), "--shards", str(synth_shards), "--format", "humandata",
            "--out", str(tmp_path / "hd")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "allow_pickle=True" in err and "--allow-pickle" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "hd").exists()
    assert main(args + ["--allow-pickle"]) == 0
    assert "synth-x_train.npz: 3 rows, 3 with a fit, 3D keypoints" in capsys.readouterr().out
    assert humandata_load(tmp_path / "hd" / "synth-x_test.npz")[0]["has_smpl"].tolist() == [1, 1]
    assert main(["fits", "export", str(tmp_path / "fits"), "--shards", str(synth_shards), "--format", "wds",
                 "--out", str(tmp_path / "t"), "--allow-pickle"]) == 1
    assert "--allow-pickle goes with --format humandata" in capsys.readouterr().err
    # a bar: these fits have no quality record, so none meets it and no row has a fit
    barred = export_humandata(table, synth_shards, tmp_path / "barred", allow_pickle=True,
                              fit_filter=FitFilter(max_pose_prior=1e9))
    assert barred["filtered"] == len(keys) and not any(f["fits"] for f in barred["files"])


def test_humandata_keeps_ground_truth_smpl_and_fills_the_rest_with_fits(gt_shards, tmp_path, capsys):
    """mmhuman3d reads has_smpl 1 as ground truth (its converters write it for MoSh): a sample's ground-truth SMPL
    is written, not the table's fit, and kept without fits; has_fit (a key HumanData.load keeps) says which."""
    table, pose, betas = gt_table(tmp_path / "fits")
    for version, fitted in ((None, True), (0, False)):
        summary = export_humandata(table, gt_shards, tmp_path / f"out-{version}", allow_pickle=True, version=version)
        [written] = summary["files"]
        assert (written["ground_truth"], written["fits"]) == (2, 2 if fitted else 0)
        path = Path(written["path"])
        data, _ = humandata_load(path)
        sidecar = json.loads(path.with_name(f"{path.stem}.fitloop.json").read_text())
        assert sidecar["smpl"] == {k: written[k] for k in ("ground_truth", "fits", "none", "fits_under_ground_truth")}
        rows = [dataset_row(data, i) for i in range(len(sidecar["keys"]))]
        check_ground_truth_rows(
            sidecar["keys"], np.stack([np.concatenate([r["smpl_global_orient"], r["smpl_body_pose"].ravel()])
                                       for r in rows]),
            np.stack([r["smpl_betas"] for r in rows]), np.array([r["has_smpl"] for r in rows]), data["has_fit"],
            pose if fitted else None, betas if fitted else None)
    assert main(["fits", "export", str(tmp_path / "fits"), "--shards", str(gt_shards), "--format", "humandata",
                 "--allow-pickle", "--out", str(tmp_path / "cli"), "--version", "0"]) == 0
    assert "synth-gt_train.npz: 5 rows, 0 with a fit, 2 with ground-truth SMPL (has_fit 0)" in capsys.readouterr().out
