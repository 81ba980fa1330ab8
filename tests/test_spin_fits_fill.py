"""SPIN's static fits out and back in (fits/interchange.py): rows without a fit are never imported as fits.

``fits export --spin-npz --fill-missing`` writes zeros (SPIN's mean body) where a sample has no fit; its ``.keys``
file marks those rows (``<key>\\tfilled``), SPIN's ``.npy`` stays (N, 82) float64, and ``fits import`` skips the
marked rows; any all-zero row (pose and betas exactly 0: no fit is) is left out of every import, with counts.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from fitloop.cli import main
from fits.interchange import FILLED_MARK, export_spin, import_spin, keys_file
from fits.schema import FitProvenance, FitsTableError, fits_batch
from fits.table import FitsTable

MODEL = "smpl:5eed5eed5eed5eed"
ROWS = 5
KEYS = [f"lsp/im{i:04d}" for i in range(1001, 1001 + ROWS)]
FITTED = [0, 3]   # rows of KEYS with a fit in the table


@pytest.fixture
def spin_npz(tmp_path):
    """SPIN's LSP test file name (dataset lsp) with ``ROWS`` images, as SPIN names them."""
    path = tmp_path / "lsp_dataset_test.npz"
    np.savez(path, imgname=np.array([f"images/im{i:04d}.jpg" for i in range(1001, 1001 + ROWS)]))
    return path


def fitted_table(path) -> tuple[FitsTable, np.ndarray]:
    """A table with fits of the `FITTED` rows only; returns it and their (len(FITTED), 82) float32 values."""
    values = np.random.default_rng(0).normal(0, 0.3, (len(FITTED), 82)).astype(np.float32)
    table = FitsTable.create(path)
    table.append(fits_batch([KEYS[i] for i in FITTED], values[:, :72], values[:, 72:],
                            FitProvenance("r", MODEL, "c", "seed"), loss=np.ones(len(FITTED))))
    return table, values


def test_fill_missing_rows_are_marked_and_never_imported_as_fits(spin_npz, tmp_path, capsys):
    table, values = fitted_table(tmp_path / "fits")
    out = tmp_path / "p.npy"
    summary = export_spin(table, spin_npz, out, fill_missing=True)
    assert (summary["exported"], summary["filled"]) == (len(FITTED), ROWS - len(FITTED))
    array = np.load(out, allow_pickle=False)   # SPIN's layout, unchanged: N x 82 float64, zeros where filled
    assert array.shape == (ROWS, 82) and array.dtype == np.float64
    assert np.array_equal(array[FITTED], values) and not array[[i for i in range(ROWS) if i not in FITTED]].any()
    assert keys_file(out).read_text().splitlines() == [
        key if i in FITTED else f"{key}\t{FILLED_MARK}" for i, key in enumerate(KEYS)]

    again = FitsTable.create(tmp_path / "again")
    imported = import_spin(again, spin_npz, out, body_model_id=MODEL)
    assert (imported["rows"], imported["appended"], imported["skipped_filled"], imported["skipped_zero"],
            imported["rows_checked_by"]) == (ROWS, len(FITTED), ROWS - len(FITTED), 0, "keys file")
    best = again.best()
    assert sorted(best["key"].to_pylist()) == [KEYS[i] for i in FITTED]   # the filled keys have no fit
    assert main(["fits", "import", str(tmp_path / "cli"), "--spin-npz", str(spin_npz), "--spin-fits", str(out),
                 "--model", "open"]) == 0
    line = capsys.readouterr().out
    assert f"{len(FITTED)} appended" in line and f"{ROWS - len(FITTED)} row(s) the export filled" in line


def test_all_zero_rows_are_left_out_of_any_import(spin_npz, tmp_path, capsys):
    # a hand-made file (SPIN#11's placeholder H36M fits are zeros), vouched for, and an export's keys without marks
    fits = np.random.default_rng(1).normal(0, 0.3, (ROWS, 82)).astype(np.float32).astype(np.float64)
    fits[[1, 4]] = 0.0
    fits[2, :72] = 0.0   # zero pose with betas: not all zero, a fit
    npy = tmp_path / "mine.npy"
    np.save(npy, fits)
    summary = import_spin(FitsTable.create(tmp_path / "t"), spin_npz, npy, body_model_id=MODEL, rows_match=True)
    assert (summary["appended"], summary["skipped_zero"], summary["skipped_filled"]) == (3, 2, 0)
    assert sorted(FitsTable.open(tmp_path / "t").best()["key"].to_pylist()) == [KEYS[0], KEYS[2], KEYS[3]]
    keys_file(npy).write_text("".join(f"{key}\n" for key in KEYS))   # an older export's keys: no marks
    assert main(["fits", "import", str(tmp_path / "cli"), "--spin-npz", str(spin_npz), "--spin-fits", str(npy),
                 "--model", "open", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["appended"], result["skipped_zero"], result["rows_checked_by"]) == (3, 2, "keys file")


def test_a_marked_row_with_values_or_an_unknown_mark_is_refused_in_one_line(spin_npz, tmp_path, capsys):
    table, _ = fitted_table(tmp_path / "fits")
    out = tmp_path / "p.npy"
    export_spin(table, spin_npz, out, fill_missing=True)
    edited = np.load(out)
    edited[1, 5] = 0.2   # a fit written into a filled row after the export: the mark no longer tells
    np.save(out, edited)
    argv = ["fits", "import", str(tmp_path / "t"), "--spin-npz", str(spin_npz), "--spin-fits", str(out), "--model",
            "open"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "row 1 (lsp/im1002)" in err and "marked 'filled'" in err and "export the file again" in err
    assert not (tmp_path / "t").exists()   # nothing imported, no empty table left
    keys_file(out).write_text(keys_file(out).read_text().replace(f"\t{FILLED_MARK}", "\tzeros", 1))
    with pytest.raises(FitsTableError, match=r"line 2 has the mark 'zeros'"):
        import_spin(FitsTable.create(tmp_path / "t2"), spin_npz, out, body_model_id=MODEL)
