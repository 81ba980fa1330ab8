"""Whole-body (SMPL-X) fits in the fits table (schema 5) and their SMPLify-X-layout export."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from core.frames import FIT_CENTER, FIT_FOCAL
from fitloop.cli import main
from fits.schema import (
    FITS_SCHEMA_VERSION,
    WHOLEBODY_COLUMNS,
    WHOLEBODY_PARAMETERS,
    FitProvenance,
    FitsTableError,
    WholeBodyFit,
    check_fits,
    fits_batch,
    schema_of_version,
)
from fits.smplifyx_export import SMPLIFYX_RESULT_SHAPES, export_smplifyx, read_result, result_path
from fits.table import FitsTable

SMPLX_MODEL = "smplx:0123456789abcdef"
SMPL_MODEL = "open:aaaaaaaaaaaaaaaa"
# smplx.SMPLX's parameter widths with use_pca=False (what SMPLify-X's result arrays hold, per person)
SMPLX_WIDTHS = {"global_orient": 3, "body_pose": 63, "left_hand_pose": 45, "right_hand_pose": 45, "jaw_pose": 3,
                "leye_pose": 3, "reye_pose": 3, "expression": 10, "betas": 10}


def wholebody_batch(keys, *, model=SMPLX_MODEL, loss=5.0, seed=0, frame="crop"):
    rng = np.random.default_rng(seed)
    n = len(keys)
    pose = rng.normal(0, 0.3, (n, 72)).astype(np.float32)
    pose[:, 66:] = 0.0
    whole = WholeBodyFit(hand_pose=rng.normal(0, 0.3, (n, 90)), jaw_pose=rng.normal(0, 0.1, (n, 3)),
                         eye_pose=rng.normal(0, 0.1, (n, 6)), expression=rng.normal(0, 1, (n, 10)),
                         part_reprojection=np.tile([1.5, np.nan, 3.0], (n, 1)))
    intrinsics = np.tile([1100.0, 1100.0, 500.0, 400.0], (n, 1)) if frame == "image" else None
    return fits_batch(keys, pose, rng.normal(0, 1, (n, 10)), FitProvenance("run", model, "cfg", "seed", frame=frame),
                      cam_t=rng.normal(0, 1, (n, 3)) + [0, 0, 40], loss=np.full(n, loss), intrinsics=intrinsics,
                      wholebody=whole), whole, pose


def test_wholebody_columns_round_trip_and_body_only_fits_are_null(tmp_path):
    table = FitsTable.create(tmp_path / "t")
    fits, whole, _ = wholebody_batch(["coco/a", "coco/b"])
    table.append(fits)
    body = fits_batch(["coco/c"], np.zeros((1, 72)), np.zeros((1, 10)),
                      FitProvenance("run", SMPLX_MODEL, "cfg", "seed"), loss=[4.0])
    table.append(body)
    log = table.best(body_model_id=SMPLX_MODEL).sort_by("key")
    hand = np.array(log["hand_pose"].to_pylist()[:2], np.float32)
    np.testing.assert_array_equal(hand, np.asarray(whole.hand_pose, np.float32))
    np.testing.assert_array_equal(np.array(log["expression"].to_pylist()[:2], np.float32),
                                  np.asarray(whole.expression, np.float32))
    assert log["reprojection_left_hand_px"].to_pylist()[:2] == [1.5, 1.5]
    assert log["reprojection_right_hand_px"].to_pylist()[:2] == [None, None]  # NaN: not measurable -> null
    assert all(log[name][2].as_py() is None for name in WHOLEBODY_COLUMNS)       # the body-only fit
    assert log["schema_version"].to_pylist() == [FITS_SCHEMA_VERSION] * 3


def test_partial_or_foreign_wholebody_fits_are_refused():
    fits, _, _ = wholebody_batch(["coco/a", "coco/b"])
    partial = fits.set_column(fits.schema.get_field_index("jaw_pose"), fits.schema.field("jaw_pose"),
                              pa.array([[0.0, 0.0, 0.0], None], fits.schema.field("jaw_pose").type))
    with pytest.raises(FitsTableError, match=r"some whole-body parameters but not all.*coco/b"):
        check_fits(partial)
    smpl, _, _ = wholebody_batch(["coco/a"], model=SMPL_MODEL)
    with pytest.raises(FitsTableError, match="without SMPL-X's tree"):
        check_fits(smpl)
    nan, _, _ = wholebody_batch(["coco/a"])
    bad = np.full((1, 90), np.nan)
    nan = nan.set_column(nan.schema.get_field_index("hand_pose"), nan.schema.field("hand_pose"),
                         pa.FixedSizeListArray.from_arrays(pa.array(bad.reshape(-1), pa.float32()), 90))
    with pytest.raises(FitsTableError, match="NaN or infinite hand_pose"):
        check_fits(nan)
    with pytest.raises(FitsTableError, match=r"expression must have shape \(1, 10\)"):
        fits_batch(["coco/a"], np.zeros((1, 72)), np.zeros((1, 10)), FitProvenance("r", SMPLX_MODEL, "c"),
                   wholebody=WholeBodyFit(np.zeros((1, 90)), np.zeros((1, 3)), np.zeros((1, 6)), np.zeros((1, 20))))


def test_a_version_4_table_is_upgraded_to_body_only_fits(tmp_path, capsys):
    fits, _, _ = wholebody_batch(["coco/a", "coco/b"])
    body = fits.drop_columns(list(WHOLEBODY_COLUMNS))
    old_schema = schema_of_version(4)
    path = tmp_path / "v4"
    DeltaTable.create(str(path), old_schema)
    old = body.set_column(body.schema.get_field_index("schema_version"), "schema_version",
                          pa.array(np.full(2, 4, np.int16))).cast(old_schema)
    write_deltalake(str(path), old, mode="append")
    with pytest.raises(FitsTableError, match="schema version 4.*`fitloop fits upgrade"):
        FitsTable.open(path)
    assert main(["fits", "upgrade", str(path)]) == 0
    assert "are body-only fits (schema version 5)" in capsys.readouterr().out
    log = FitsTable.open(path).log().sort_by("key")
    assert all(log[name].null_count == 2 for name in WHOLEBODY_COLUMNS)
    assert log.drop_columns([*WHOLEBODY_COLUMNS, "schema_version"]).equals(
        fits.sort_by("key").drop_columns([*WHOLEBODY_COLUMNS, "schema_version"]))


@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_export_writes_smplifyx_result_arrays(tmp_path, fmt):
    table = FitsTable.create(tmp_path / "t")
    fits, whole, pose = wholebody_batch(["coco/a_n0", "coco/b_n1"])
    table.append(fits)
    table.append(fits_batch(["coco/c"], np.zeros((1, 72)), np.zeros((1, 10)),
                            FitProvenance("run", SMPLX_MODEL, "cfg", "seed"), loss=[4.0]))
    summary = export_smplifyx(table, tmp_path / "out", fmt=fmt)
    assert (summary["written"], summary["body_only"], summary["frame"]) == (2, 1, "crop")
    assert not result_path(tmp_path / "out", "coco/c", fmt).exists()
    result = read_result(result_path(tmp_path / "out", "coco/b_n1", fmt))
    for name, shape in SMPLIFYX_RESULT_SHAPES.items():
        assert result[name].shape == shape, name
    for name, width in SMPLX_WIDTHS.items():
        assert result[name].shape == (1, width), name
    np.testing.assert_array_equal(result["body_pose"][0], pose[1, 3:66])
    np.testing.assert_array_equal(result["global_orient"][0], pose[1, :3])
    hands = np.asarray(whole.hand_pose, np.float32)[1]
    np.testing.assert_array_equal(result["left_hand_pose"][0], hands[:45])
    np.testing.assert_array_equal(result["right_hand_pose"][0], hands[45:])
    eyes = np.asarray(whole.eye_pose, np.float32)[1]
    np.testing.assert_array_equal(result["leye_pose"][0], eyes[:3])
    np.testing.assert_array_equal(result["reye_pose"][0], eyes[3:])
    np.testing.assert_array_equal(result["camera_rotation"][0], np.eye(3))
    np.testing.assert_array_equal(result["focal_length"], [[FIT_FOCAL, FIT_FOCAL]])
    np.testing.assert_array_equal(result["camera_center"], [[FIT_CENTER, FIT_CENTER]])
    assert (result["key"], result["body_model_id"], result["frame"]) == ("coco/b_n1", SMPLX_MODEL, "crop")
    if fmt == "npz":
        with np.load(result_path(tmp_path / "out", "coco/b_n1", fmt), allow_pickle=False) as data:
            assert set(data.files) >= set(SMPLIFYX_RESULT_SHAPES)  # loads without pickles


def test_export_of_image_frame_fits_carries_their_intrinsics_and_cli(tmp_path, capsys):
    table = FitsTable.create(tmp_path / "t")
    table.append(wholebody_batch(["lsp/a"], frame="image")[0])
    assert main(["fits", "export", str(table.path), "--smplifyx", str(tmp_path / "out"), "--format", "json"]) == 0
    assert "wrote 1 whole-body fits" in capsys.readouterr().out
    result = read_result(tmp_path / "out" / "lsp" / "a.json")
    np.testing.assert_array_equal(result["focal_length"], [[1100.0, 1100.0]])
    np.testing.assert_array_equal(result["camera_center"], [[500.0, 400.0]])


def test_export_with_only_body_fits_says_what_to_do(tmp_path):
    table = FitsTable.create(tmp_path / "t")
    table.append(fits_batch(["coco/c"], np.zeros((1, 72)), np.zeros((1, 10)),
                            FitProvenance("run", SMPLX_MODEL, "cfg", "seed"), loss=[4.0]))
    with pytest.raises(FitsTableError, match="none of the 1 best fits is a whole-body fit.*seed SMPL-X fits"):
        export_smplifyx(table, tmp_path / "out")
    assert set(WHOLEBODY_PARAMETERS) == {"hand_pose", "jaw_pose", "eye_pose", "expression"}
