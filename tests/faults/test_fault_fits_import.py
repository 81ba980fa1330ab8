"""`fits import` checks that the fits' rows are the dataset's, not merely as many (issue 13): SPIN's
``<name>_fits.npy`` belongs to one .npz (`fits.interchange.SPIN_FITS_FILES`), and a file `fits export` wrote
carries its keys (``<file>.keys``); another dataset's fits of the same row count are refused with one line naming
the file, the first differing row and what to do."""
from __future__ import annotations

import numpy as np
import pytest
from faultcheck import expect_error

from fits.interchange import export_spin, import_spin, keys_file
from fits.schema import FitProvenance, FitsTableError, fits_batch
from fits.table import FitsTable

FAULT_CLASS = "silently wrong results"

MODEL = "smpl:5eed5eed5eed5eed"
ROWS = 4


def spin_npz(path, first: int):
    """A SPIN .npz with ``ROWS`` images numbered from ``first`` (SPIN's LSP files: images/im0001.jpg ...)."""
    np.savez(path, imgname=np.array([f"images/im{i:04d}.jpg" for i in range(first, first + ROWS)]))
    return path


def test_spins_fits_of_another_dataset_with_as_many_rows_are_refused(tmp_path, capsys):
    # LSP's training fits given with LSP's test set: both 1000 rows in SPIN's files, here ROWS
    train = spin_npz(tmp_path / "lsp_dataset_original_train.npz", 1)
    test = spin_npz(tmp_path / "lsp_dataset_test.npz", 1001)
    npy = tmp_path / "lsp-orig_fits.npy"
    np.save(npy, np.full((ROWS, 82), 0.1))  # not all zeros: an all-zero row is no fit (export --fill-missing)
    argv = ["fits", "import", tmp_path / "fits", "--spin-fits", npy, "--model", "open-small", "--spin-npz"]
    expect_error(capsys, argv + [test], str(npy), "row-aligned with lsp_dataset_original_train.npz",
                 "row 0 of lsp_dataset_test.npz is lsp/im1001", "give lsp_dataset_original_train.npz")
    assert not (tmp_path / "fits").exists()  # refused: nothing imported, and no empty table left behind
    table = FitsTable.create(tmp_path / "t")
    summary = import_spin(table, train, npy, body_model_id=MODEL)
    assert (summary["appended"], summary["rows_checked_by"]) == (ROWS, "spin file name")
    argv[2] = tmp_path / "t"  # refused into an existing table: the table and its fits stay
    expect_error(capsys, argv + [test], str(npy), "row-aligned with lsp_dataset_original_train.npz")
    assert FitsTable.open(tmp_path / "t").log().num_rows == ROWS


def test_exported_fits_carry_their_keys_and_another_datasets_are_refused_at_the_first_differing_row(tmp_path,
                                                                                                       capsys):
    train = spin_npz(tmp_path / "a.npz", 1)
    other = tmp_path / "b.npz"  # same count, one image differs (row 2)
    np.savez(other, imgname=np.array(["images/im0001.jpg", "images/im0002.jpg", "images/im0099.jpg",
                                      "images/im0004.jpg"]))
    table = FitsTable.create(tmp_path / "t")
    keys = [f"lsp/im{i:04d}" for i in range(1, ROWS + 1)]
    table.append(fits_batch(keys, np.full((ROWS, 72), 0.1), np.zeros((ROWS, 10)),
                            FitProvenance("r", MODEL, "c", "seed"), loss=np.ones(ROWS)))
    out = tmp_path / "export" / "fits.npy"
    export_spin(table, train, out, dataset="lsp")
    assert keys_file(out).read_text().splitlines() == keys
    expect_error(capsys, ["fits", "import", tmp_path / "t2", "--spin-npz", other, "--spin-fits", out, "--model",
                          "open-small", "--dataset", "lsp"],
                 str(out), "first difference at row 2: 'lsp/im0003' there, 'lsp/im0099' in b.npz",
                 "give the .npz these fits were exported from")
    summary = import_spin(FitsTable.create(tmp_path / "t3"), train, out, body_model_id=MODEL, dataset="lsp")
    assert (summary["appended"], summary["rows_checked_by"]) == (ROWS, "keys file")


def test_a_fits_file_without_name_or_keys_is_refused_unless_vouched_for(tmp_path, capsys):
    npz = spin_npz(tmp_path / "a.npz", 1)
    np.save(tmp_path / "mine.npy", np.zeros((ROWS, 82)))
    expect_error(capsys, ["fits", "import", tmp_path / "t", "--spin-npz", npz, "--spin-fits", tmp_path / "mine.npy",
                          "--model", "open-small", "--dataset", "lsp"],
                 "mine.npy: nothing tells whether its", "mine.npy.keys", "--rows-match")
    assert not (tmp_path / "t").exists()
    summary = import_spin(FitsTable.create(tmp_path / "t"), npz, tmp_path / "mine.npy", body_model_id=MODEL,
                          dataset="lsp", rows_match=True)
    assert summary["rows_checked_by"] == "unchecked"


@pytest.mark.parametrize("rows", [ROWS - 1, ROWS + 1])
def test_a_keys_file_of_another_length_is_refused(tmp_path, rows):
    npz = spin_npz(tmp_path / "a.npz", 1)
    npy = tmp_path / "f.npy"
    np.save(npy, np.full((ROWS, 82), 0.1))  # not all zeros: an all-zero row is no fit (export --fill-missing)
    keys_file(npy).write_text("".join(f"lsp/im{i:04d}\n" for i in range(1, rows + 1)))
    with pytest.raises(FitsTableError, match=rf"lists {rows} keys; first difference at row {min(rows, ROWS)}"):
        import_spin(FitsTable.create(tmp_path / "t"), npz, npy, body_model_id=MODEL, dataset="lsp")


def test_a_spin_npz_that_is_not_there_says_so(tmp_path, capsys):
    np.save(tmp_path / "mine.npy", np.zeros((ROWS, 82)))
    expect_error(capsys, ["fits", "import", tmp_path / "t", "--spin-npz", tmp_path / "gone.npz", "--spin-fits",
                          tmp_path / "mine.npy", "--model", "open-small", "--dataset", "lsp"],
                 "gone.npz: no such file", "SPIN's dataset .npz")
    assert not (tmp_path / "t").exists()
