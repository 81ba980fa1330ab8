"""Fits are validated where they enter the table (issue 13): a fit that is no fit (a NaN or infinite pose, betas,
cam_t or loss), a fit of the wrong shape, or one of no known body model is never stored and never the best fit. A
writer that compares against the best losses (seeding, the trainer) leaves a diverged fit out and counts it; every
other write path (a plain append, import, upgrade, relabel) refuses it with one line naming the keys and the reason.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from faultcheck import expect_error

from fitloop.cli import main
from fits.schema import FitProvenance, FitsTableError, fits_batch, schema_of_version
from fits.store import FitsStore
from fits.table import FitsTable

FAULT_CLASS = "silently wrong results"

MODEL = "open:0123456789abcdef"  # a body model content id (`core.model_id`): <family>:<16 hex>
PROVENANCE = FitProvenance("run", MODEL, "cfg", "loop")
WIDTHS = {"pose": 72, "betas": 10, "cam_t": 3}


def fits(keys, losses, *, bad=None, column="pose", value=np.nan, provenance=PROVENANCE):
    """Fits of ``keys`` with ``losses``; the rows at positions ``bad`` hold ``value`` in one entry of ``column``."""
    n = len(keys)
    arrays = {"pose": np.full((n, 72), 0.1), "betas": np.zeros((n, 10)), "cam_t": np.tile([0.0, 0.0, 50.0], (n, 1))}
    for row in bad or ():
        arrays[column][row, 1] = value
    return fits_batch(keys, arrays["pose"], arrays["betas"], provenance, cam_t=arrays["cam_t"], loss=losses)


def best_losses(table: FitsTable) -> dict:
    best = table.best(body_model_id=MODEL, frame="crop")
    return dict(zip(best["key"].to_pylist(), best["loss"].to_pylist()))


@pytest.mark.parametrize("column", list(WIDTHS))
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_fit_with_a_nan_value_and_a_finite_loss_is_refused_naming_its_key(tmp_path, column, value):
    table = FitsTable.create(tmp_path / "fits")
    with pytest.raises(FitsTableError, match=rf"1 fit\(s\) have a NaN or infinite {column}, e\.g\. \['lsp/b'\]; "
                                             r"nothing was written"):
        table.append(fits(["lsp/a", "lsp/b"], [5.0, 1.0], bad=[1], column=column, value=value))
    assert table.log().num_rows == 0


def test_a_diverged_fit_never_becomes_best_nor_blocks_a_later_valid_one(tmp_path):
    table = FitsTable.create(tmp_path / "fits")
    table.append(fits(["lsp/a"], [50.0]))
    known = table.best_losses(body_model_id=MODEL, frame="crop")
    # lsp/a: a NaN pose with the batch's lowest loss, and a valid fit of the same key; lsp/c: NaN betas only
    offered = pa.concat_tables([fits(["lsp/a", "lsp/c"], [1.0, 2.0], bad=[0, 1]),
                                fits(["lsp/c"], [3.0], bad=[0], column="betas"), fits(["lsp/a"], [20.0])])
    result = table.append(offered, best=known)
    assert (result.rows, result.offered, result.diverged) == (1, 4, 3)
    assert best_losses(table) == {"lsp/a": 20.0}
    assert table.append(fits(["lsp/a", "lsp/c"], [10.0, 30.0]), best=known).rows == 2  # later valid fits land
    best = table.best(body_model_id=MODEL, frame="crop")
    assert best_losses(table) == {"lsp/a": 10.0, "lsp/c": 30.0}
    assert np.isfinite(np.stack(best["pose"].to_numpy(zero_copy_only=False))).all()


def test_the_trainers_store_never_keeps_a_diverged_fit(tmp_path):
    store = FitsStore(["lsp/a"], np.zeros((1, 72)), np.zeros((1, 10)), np.array([50.0]), body_model_id=MODEL)
    assert store.offer(fits(["lsp/a", "lsp/b"], [1.0, 1.0], bad=[0, 1])) == 0
    assert store.offer(fits(["lsp/a"], [2.0], bad=[0], column="cam_t", value=np.inf)) == 0
    assert store.pending_rows == 0
    pose, _, loss, known = store.lookup(["lsp/a", "lsp/b"])
    assert known.tolist() == [True, False] and loss[0].item() == 50.0 and (pose == 0).all()


@pytest.mark.parametrize("column, width", [("pose", 69), ("betas", 16)])
def test_a_fit_of_the_wrong_shape_is_refused_naming_its_key(tmp_path, column, width):
    table = FitsTable.create(tmp_path / "fits")
    batch = fits(["lsp/a", "lsp/b"], [1.0, 2.0])
    values = [[0.0] * len(batch[column][0]), [0.0] * width]
    batch = batch.set_column(batch.schema.get_field_index(column), column, pa.array(values, pa.list_(pa.float32())))
    with pytest.raises(FitsTableError, match=rf"{column} of fit 'lsp/b' has {width} values, the fits table holds "
                                             rf"{WIDTHS[column]}"):
        table.append(batch)
    assert table.log().num_rows == 0


@pytest.mark.parametrize("model", ["smpl-neutral-10", "open", "smpl:0123"])
def test_a_fit_of_no_known_body_model_is_refused(tmp_path, model):
    table = FitsTable.create(tmp_path / "fits")
    with pytest.raises(FitsTableError, match=rf"have a body model id that is no body model's content id "
                                             rf"\('{model}'\), e\.g\. \['lsp/a'\].*`fitloop model info`"):
        table.append(fits(["lsp/a"], [1.0], provenance=FitProvenance("run", model, "cfg", "loop")))
    assert table.log().num_rows == 0


def test_an_import_with_a_nan_row_is_one_line_naming_file_and_row(tmp_path, capsys):
    npz, npy = tmp_path / "mine.npz", tmp_path / "mine_fits.npy"
    np.savez(npz, imgname=np.array(["images/im0001.jpg", "images/im0002.jpg"]))
    values = np.zeros((2, 82))
    values[1, 5] = np.nan
    np.save(npy, values)
    expect_error(capsys, ["fits", "import", tmp_path / "fits", "--spin-npz", npz, "--spin-fits", npy, "--model",
                          "open-small", "--dataset", "mine", "--rows-match"], str(npy), "row 1 (mine/im0002)", "NaN", "nothing was")
    assert not (tmp_path / "fits").exists()


def test_an_upgrade_refuses_a_tables_diverged_fits_until_told_to_leave_them_out(tmp_path, capsys):
    schema = schema_of_version(3)
    path = tmp_path / "v3"
    DeltaTable.create(str(path), schema)
    rows = fits(["lsp/a", "lsp/b"], [5.0, 1.0], bad=[1]).select(schema.names)  # written before fits were checked
    rows = rows.set_column(rows.schema.get_field_index("schema_version"), "schema_version",
                           pa.array(np.full(2, 3, np.int16))).cast(schema)
    write_deltalake(str(path), rows, mode="append")
    expect_error(capsys, ["fits", "upgrade", path], str(path), "1 fit(s) hold a NaN", "['lsp/b']",
                 f"fitloop fits upgrade {path} --drop-diverged")
    assert len(DeltaTable(str(path)).history()) == 2  # nothing was committed
    assert main(["fits", "upgrade", str(path), "--drop-diverged"]) == 0
    assert "1 diverged fit(s) left out" in capsys.readouterr().out
    assert best_losses(FitsTable.open(path)) == {"lsp/a": 5.0}


def test_a_compaction_refuses_diverged_fits_written_before_the_checks_until_told_to_leave_them_out(tmp_path, capsys):
    path = tmp_path / "fits"
    FitsTable.create(path)
    # what an earlier fitloop let in: a NaN pose with the lowest loss, the key's valid fit beside it
    write_deltalake(str(path), fits(["lsp/a", "lsp/a", "lsp/b"], [1.0, 5.0, 2.0], bad=[0]), mode="append")
    expect_error(capsys, ["fits", "compact", path], "1 fit(s) hold a NaN", "['lsp/a']",
                 f"fitloop fits compact {path} --drop-diverged")
    assert len(DeltaTable(str(path)).history()) == 2  # nothing was committed
    assert main(["fits", "compact", str(path), "--drop-diverged"]) == 0
    best = FitsTable.open(path).best()
    assert dict(zip(best["key"].to_pylist(), best["loss"].to_pylist())) == {"lsp/a": 5.0, "lsp/b": 2.0}
    assert np.isfinite(np.stack(best["pose"].to_numpy(zero_copy_only=False))).all()


# --- samples that cannot make a fit -------------------------------------------------------------------------------
def test_unfittable_names_too_few_joints_and_positions_that_are_not_finite():
    from core.joints import J24_OFFSET, MIN_FIT_JOINTS, NUM_JOINTS
    from fits.seeding import unfittable

    keypoints = np.zeros((NUM_JOINTS, 3))
    keypoints[J24_OFFSET:J24_OFFSET + MIN_FIT_JOINTS] = [50.0, 60.0, 1.0]
    assert unfittable(keypoints) is None
    # the same joints under their OpenPose names as well count once, not twice
    keypoints[:MIN_FIT_JOINTS - 1] = [50.0, 60.0, 1.0]
    keypoints[J24_OFFSET] = 0.0
    assert f"show {MIN_FIT_JOINTS - 1} joint(s)" in unfittable(keypoints)
    keypoints[J24_OFFSET] = [np.nan, 60.0, 1.0]
    assert "not finite" in unfittable(keypoints)
    keypoints[J24_OFFSET] = [np.nan, np.nan, 0.0]  # an absent joint's position is never read
    assert "show" in unfittable(keypoints)


def test_seeding_leaves_out_samples_that_cannot_make_a_fit_instead_of_storing_a_perfect_fit(tmp_path, capsys):
    """Keypoints that show no joint made SMPLify return its start at loss 0, stored as a best fit no real fit could
    ever beat; now such samples are named and left out, and a run that fits nothing writes nothing and exits 1."""
    from faultdata import lsp_joints, write_lsp

    joints = lsp_joints(3)
    joints[1, 3:, 2] = 1.0  # person 2: 3 joints visible, the other 11 occluded
    joints[2, 5:, 2] = 1.0  # person 3: 5 visible
    write_lsp(tmp_path / "lsp", joints=joints)
    shards = tmp_path / "shards"
    assert main(["preprocess", "lsp", "--root", str(tmp_path / "lsp"), "--out", str(shards), "--no-progress",
                 "--split", "train", "--option", "occluded_confidence=0", "--option", "min_joints=0"]) == 0
    table = tmp_path / "fits"
    capsys.readouterr()
    assert main(["fits", "seed", str(shards), str(table), "--body-model", "open-small", "--workers", "0",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert (result["fitted"], result["appended"]) == (1, 1)
    assert [line.split(":")[0] for line in result["unfittable"]] == ["lsp/im0002", "lsp/im0003"]
    assert "show 3 joint(s), fewer than the 6" in result["unfittable"][0] and "2 sample(s) cannot make a fit" in err
    assert FitsTable.open(table).log()["key"].to_pylist() == ["lsp/im0001"]

    fresh = tmp_path / "fresh"
    assert main(["fits", "seed", str(shards), str(fresh), "--body-model", "open-small", "--workers", "0", "--keys",
                 "lsp/im0002", "lsp/im0003"]) == 1
    err = capsys.readouterr().err
    assert "no sample fitted, nothing written" in err and "2 that cannot make a fit" in err
    assert not fresh.exists()  # no empty table left behind
