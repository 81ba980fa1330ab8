"""A damaged fits table or a failing disk is one line naming the file and what to do (issue 13): a damaged or
missing checkpoint, a data file of the snapshot missing, truncated or damaged inside, a commit line that is not a
Delta action; and a full disk at commit time is an OS error naming the table with the advice to free space (the
commit did not happen). Never a traceback, never a silently smaller table."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from deltalake import DeltaTable
from faultcheck import expect_error

import fits.table as fits_table
from fits.schema import FitProvenance, fits_batch
from fits.table import FitsTable

FAULT_CLASS = "damaged artifacts and full disks"

MODEL = "open:0123456789abcdef"


def table_with(path, versions: int = 2) -> FitsTable:
    """A table with ``versions`` appends of two fits each (keys lsp/v<i>a, lsp/v<i>b)."""
    table = FitsTable.create(path)
    for i in range(versions):
        table.append(fits_batch([f"lsp/v{i}a", f"lsp/v{i}b"], np.zeros((2, 72)), np.zeros((2, 10)),
                                FitProvenance("r", MODEL, "c", "seed"), loss=[1.0, 2.0]))
    return table


def data_files(path) -> list:
    return sorted(path.glob("*.parquet"))


def test_a_damaged_checkpoint_names_it_and_moving_it_away_reads_the_commits(tmp_path, capsys):
    path = tmp_path / "fits"
    table_with(path)
    DeltaTable(str(path)).create_checkpoint()
    checkpoint = path / "_delta_log" / "00000000000000000002.checkpoint.parquet"
    checkpoint.write_bytes(checkpoint.read_bytes()[:40])
    expect_error(capsys, ["fits", "versions", path], str(checkpoint), "checkpoint 2 of the fits table is damaged",
                 "move it and _last_checkpoint away")
    checkpoint.rename(tmp_path / "cp.broken")
    (path / "_delta_log" / "_last_checkpoint").rename(tmp_path / "last.broken")
    assert FitsTable.open(path).log().num_rows == 4  # every fit is still there, read from the commits


def test_a_checkpoint_pointer_to_no_checkpoint_names_it(tmp_path, capsys):
    path = tmp_path / "fits"
    table_with(path)
    (path / "_delta_log" / "_last_checkpoint").write_text(json.dumps({"version": 1, "size": 3}))
    expect_error(capsys, ["fits", "versions", path], "_last_checkpoint points to checkpoint 1",
                 "delete _last_checkpoint")


@pytest.mark.parametrize("damage, fragment", [
    ("missing", "is missing"),
    ("truncated", "bytes, its commit recorded"),
])
def test_a_missing_or_truncated_data_file_names_it(tmp_path, capsys, damage, fragment):
    path = tmp_path / "fits"
    table_with(path)
    victim = data_files(path)[0]
    if damage == "missing":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:-100])
    expect_error(capsys, ["fits", "list", path], str(victim), fragment, "restore it from a backup")


def test_a_data_file_damaged_inside_names_it_when_read(tmp_path, capsys):
    path = tmp_path / "fits"
    table_with(path)
    victim = data_files(path)[-1]
    data = bytearray(victim.read_bytes())
    data[-8:] = b"\0" * 8  # same size: the footer length and magic bytes gone
    victim.write_bytes(bytes(data))
    expect_error(capsys, ["fits", "list", path], str(victim), "cannot be read", "restore it from a backup")


def test_a_commit_line_that_is_no_delta_action_names_the_log(tmp_path, capsys):
    path = tmp_path / "fits"
    table_with(path)
    commit = path / "_delta_log" / "00000000000000000002.json"
    commit.write_text(commit.read_text().rstrip("\n") + "\n" + json.dumps({"add": {"path": 7}}) + "\n")
    expect_error(capsys, ["fits", "versions", path], str(path), "Delta log does not load",
                 "restore it from a backup")


@pytest.mark.parametrize("message", [
    "Generic LocalFileSystem error: Unable to copy data to file: No space left on device (os error 28)",
    "Generic LocalFileSystem error",  # the reason lost: the disk's free space tells
])
def test_a_full_disk_at_commit_is_an_os_error_naming_the_table_with_advice(tmp_path, capsys, monkeypatch, message):
    path = tmp_path / "fits"
    table_with(path, versions=1)

    def full(*args, **kwargs):
        raise OSError(message)

    monkeypatch.setattr(fits_table, "write_deltalake", full)
    monkeypatch.setattr(fits_table.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))  # 1 MiB free
    expect_error(capsys, ["fits", "compact", path], f"{path}: No space left on device while committing",
                 "the commit did not happen", "free space")
    assert FitsTable.open(path).log().num_rows == 2


def test_another_commit_failure_is_one_line_naming_the_table(tmp_path, capsys, monkeypatch):
    path = tmp_path / "fits"
    table_with(path, versions=1)

    def fails(*args, **kwargs):
        raise fits_table.DeltaError("Generic error: something else")

    monkeypatch.setattr(fits_table, "write_deltalake", fails)
    expect_error(capsys, ["fits", "compact", path], str(path), "committing the compacted fits failed",
                 "something else", "the table is as it was")
