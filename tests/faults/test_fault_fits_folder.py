"""A fits table is made only in a new or empty folder (issue 13): ``--fits`` (or `fits seed` / `fits import`'s
table) pointed at a shard set, a run folder or a file is refused with one line naming it, and nothing is written
into it; a folder that already is a fits table is opened."""
from __future__ import annotations

import pytest
from faultcheck import expect_error

from fits.schema import FitsTableError
from fits.table import FitsTable

FAULT_CLASS = "silently wrong results"

SHARD_SET = ("shard-000000.tar", "manifest.json")  # what `fitloop preprocess` writes into its --out


def test_a_shard_set_is_refused_as_a_table_folder_and_left_as_it_was(tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    for name in SHARD_SET:
        (shards / name).write_text("x")
    expect_error(capsys, ["fits", "import", shards, "--spin-npz", tmp_path / "a.npz", "--spin-fits",
                          tmp_path / "a.npy", "--model", "open-small"],
                 f"{shards} is a folder that is not a fits table (manifest.json, shard-000000.tar)",
                 "give a new or empty folder")
    assert sorted(p.name for p in shards.iterdir()) == sorted(SHARD_SET)


def test_a_file_and_a_damaged_table_folder_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FitsTableError, match="file is a file, not a fits table folder"):
        FitsTable.create(tmp_path / "file", exist_ok=True)
    (tmp_path / "broken" / "_delta_log").mkdir(parents=True)
    with pytest.raises(FitsTableError, match="has a _delta_log that does not open as a Delta table"):
        FitsTable.create(tmp_path / "broken", exist_ok=True)
    assert list((tmp_path / "broken" / "_delta_log").iterdir()) == []


def test_a_new_or_empty_folder_or_an_existing_table_is_taken(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "new" / "fits", tmp_path / "empty"):
        FitsTable.create(path)
        assert FitsTable.create(path, exist_ok=True).log().num_rows == 0
