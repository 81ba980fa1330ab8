"""`fitloop fits …` on bad input: a version or time the table lacks, an export over an existing output, a filter
that selects nothing, a path that is no table. Each is one line naming the table or file, the reason and what to
do (exit 1), never a traceback; an export writes over nothing unless --overwrite."""
from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fitloop.cli import main
from fits.schema import FitProvenance, FitsTableError, fits_batch
from fits.table import FitsTable

MODEL = "open:0123456789abcdef"   # the fits' body model (a content id: nothing to load)
OTHER = "smpl:5eed5eed5eed5eed"   # one the table holds no fit of


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A shard set of 3 samples, keys synth-x/..."""
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("fits-errors")
    write_synthetic_shards(root, [DatasetSpec("synth-x", "train", 3)], res=32, samples_per_shard=4, seed=1)
    return root / "shards"


@pytest.fixture(scope="module")
def keys(shards) -> list[str]:
    from shards.lookup import iter_samples

    return sorted(s.key for s in iter_samples(shards))


@pytest.fixture(scope="module")
def table(keys, tmp_path_factory) -> Path:
    """A fits table of versions 0 (created) and 1 (a crop-frame fit of MODEL per key)."""
    path = tmp_path_factory.mktemp("fits-errors-table") / "fits"
    fits = FitsTable.create(path)
    time.sleep(0.01)  # version 1 strictly after version 0
    fits.append(fits_batch(keys, np.zeros((len(keys), 72)), np.zeros((len(keys), 10)),
                           FitProvenance("run", MODEL, "cfg"), loss=np.full(len(keys), 2.0)))
    return path


def error_line(capsys) -> str:
    """What the last command printed on stderr: one line, no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("version", ["-1", "99"])
def test_a_version_the_table_lacks_names_those_it_has(table, shards, keys, tmp_path, capsys, version):
    expected = f"{table}: no version {version}; its versions are 0-1 (fitloop fits versions {table})"
    for argv in (["fits", "list", str(table)], ["fits", "show", str(table), keys[0]],
                 ["fits", "export", str(table), "--parquet", str(tmp_path / "x.parquet")],
                 ["fits", "diff", str(table), "0"],
                 ["shards", "show", str(shards), keys[0], "--fits", str(table)]):
        argv = argv + (["--version", version] if argv[1] != "diff" else [version])
        assert main(argv) == 1, argv
        assert error_line(capsys) == f"fitloop: error: {expected}", argv
    assert not (tmp_path / "x.parquet").exists()
    with pytest.raises(FitsTableError, match="its versions are 0-1"):
        from fits.store import FitsStore

        FitsStore.load(FitsTable.open(table), MODEL, version=int(version))


def test_a_time_before_the_first_commit_names_it(table, tmp_path, capsys):
    first = FitsTable.open(table).versions()[0]["timestamp"]
    assert main(["fits", "export", str(table), "--parquet", str(tmp_path / "x.parquet"), "--timestamp",
                 "1990-01-01T00:00:00"]) == 1
    err = error_line(capsys)
    assert f"{table}: no version as of 1990-01-01T00:00:00+00:00: its first commit (version 0) is at {first}" in err
    assert not (tmp_path / "x.parquet").exists()
    assert main(["fits", "list", str(table), "--timestamp", first]) == 0  # the first commit's own time: version 0
    assert f"at {first}, version 0 (its latest is 1) holds no fits" in capsys.readouterr().out
    stamps = [datetime.fromisoformat(v["timestamp"]) for v in FitsTable.open(table).versions()]
    assert FitsTable.open(table).best(timestamp=stamps[0] + (stamps[1] - stamps[0]) / 2).num_rows == 0


def test_export_refuses_an_existing_output_unless_overwrite(table, shards, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    parquet = ["fits", "export", str(table), "--parquet", str(notes)]
    assert main(parquet) == 1
    assert f"--parquet {notes}: the file exists; give a new file, or pass --overwrite" in error_line(capsys)
    assert notes.read_text() == "mine"
    assert main(parquet + ["--overwrite"]) == 0 and pq.read_table(notes).num_rows == 3
    folder = tmp_path / "best.parquet"
    folder.mkdir()
    assert main(["fits", "export", str(table), "--parquet", str(folder), "--overwrite"]) == 1
    assert "a folder is there, where this export writes a file" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.parquet", "notes.txt"]  # no stray .tmp

    out = tmp_path / "spin"
    export = ["fits", "export", str(table), "--shards", str(shards), "--out", str(out)]
    assert main(export) == 0
    written = out / "synth-x_train.npz"
    os.utime(written, (0, 0))
    assert main(export) == 1
    assert f"--out {out}: the folder holds" in error_line(capsys) and written.stat().st_mtime == 0
    assert main(export + ["--overwrite"]) == 0 and written.stat().st_mtime > 0
    for option in ("--smplifyx", "--meshes"):  # refused before the table is read or a model loaded
        assert main(["fits", "export", str(table), option, str(out), "--model", "open"]) == 1
        assert "pass --overwrite" in error_line(capsys)
        assert main(["fits", "export", str(table), option, str(notes), "--model", "open", "--overwrite"]) == 1
        assert "a file is there, where this export writes a folder" in error_line(capsys)
    npy = ["fits", "export", str(table), "--spin-npz", str(written), "--dataset", "synth-x", "--out", str(notes)]
    assert main(npy) == 1 and "the file exists" in error_line(capsys)


def test_a_filter_that_selects_nothing_says_what_the_table_holds(table, tmp_path, capsys):
    holds = f"{table} at version 1 holds 3 rows, of body models {MODEL} (3); frames crop (3); datasets synth-x (3)"
    assert main(["fits", "list", str(table), "--model", OTHER]) == 0
    assert capsys.readouterr().out.strip() == (f"{table}: 0 best fits: no best fit of body model {OTHER}, any "
                                               f"frame: {holds}")
    out = tmp_path / "x.parquet"
    assert main(["fits", "export", str(table), "--parquet", str(out), "--model", OTHER, "--frame", "crop"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"wrote 0 best fits to {out}" and pq.read_table(out).num_rows == 0
    assert captured.err.strip() == (f"fitloop: note: no best fit of body model {OTHER}, the crop frame: {holds}")
    assert main(["fits", "list", str(table), "--frame", "image", "--version", "0"]) == 0
    assert "no best fit of any body model, the image frame: " \
           f"{table} at version 0 (its latest is 1) holds no fits" in capsys.readouterr().out


def test_a_path_without_a_table_names_the_commands_that_make_one(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["fits", "versions", str(missing)]) == 1
    err = error_line(capsys)
    assert f"{missing} is not a Delta table (nothing is there): make one with `fitloop fits seed SHARDS {missing}`" \
           in err and "FitsTable.create" not in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.txt").write_text("")
    assert main(["fits", "list", str(tmp_path / "other")]) == 1
    assert "a folder of other files, no _delta_log): give the folder of a fits table" in error_line(capsys)

