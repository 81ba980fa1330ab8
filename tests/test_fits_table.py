"""The fits table: best-fit semantics for any order of updates, versions, crash safety, concurrency, SPIN interchange.

The crash and concurrency tests run real writer processes (``python -c``) against a table in a temporary folder.
The SPIN round trip reads ../shared/fixtures (SPIN's LSP .npz and its static fits) and is skipped without them.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fitloop.cli import main
from fits.interchange import export_spin, import_spin, spin_keys
from fits.schema import (
    FITS_SCHEMA,
    FitProvenance,
    FitsTableError,
    MixedBodyModelsError,
    check_fits,
    config_hash,
    fits_batch,
)
from fits.table import LOSS_TIE, BestLosses, FitsTable, best_of

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
SPIN_NPZ = FIXTURES / "lsp" / "spin_npz"
needs_fixtures = pytest.mark.skipif(not SPIN_NPZ.is_dir(), reason=f"SPIN fixtures not found at {SPIN_NPZ}")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SPIN_MODEL = "smpl:5eed5eed5eed5eed"  # a content id standing for SPIN's neutral SMPL (tests without the model file)
OPEN = "open:0123456789abcdef"         # a content id standing for the open model's


def batch(keys, losses, *, run="run", source="loop", epoch=0, step=0, time=T0, betas=None, pose_value=0.0):
    """Fits for ``keys`` with the given losses (None = unscored); the pose holds ``pose_value`` everywhere."""
    n = len(keys)
    loss = None if all(v is None for v in losses) else np.array([np.nan if v is None else v for v in losses])
    if loss is not None and np.isnan(loss).any():
        raise ValueError("mix scored and unscored losses through separate batches")
    return fits_batch(keys, np.full((n, 72), pose_value), np.zeros((n, 10)) if betas is None else betas,
                      FitProvenance(run, OPEN, "cfg", source, epoch, step), loss=loss, time=time)


def losses_of(best: pa.Table) -> dict:
    return dict(zip(best["key"].to_pylist(), best["loss"].to_pylist()))


# --- Schema and batches ---------------------------------------------------------------------------------------

DELTA_STATS_COLUMNS = 32  # Delta's default delta.dataSkippingNumIndexedCols: columns with file statistics


def test_schema_is_pinned():
    assert [(f.name, str(f.type), f.nullable) for f in FITS_SCHEMA] == [
        ("key", "string", False), ("dataset", "string", False),
        ("pose", "fixed_size_list<item: float>[72]", False), ("betas", "fixed_size_list<item: float>[10]", False),
        ("betas_extreme", "bool", False), ("cam_t", "fixed_size_list<item: float>[3]", True),
        ("frame", "string", False), ("intrinsics", "fixed_size_list<item: float>[4]", True),
        ("loss", "float", True), ("reprojection_loss", "fixed_size_list<item: float>[49]", True),
        ("pose_prior", "float", True), ("angle_prior", "float", True), ("shape_prior", "float", True),
        ("reprojection_torso_px", "float", True), ("reprojection_head_px", "float", True),
        ("reprojection_left_arm_px", "float", True), ("reprojection_right_arm_px", "float", True),
        ("reprojection_left_leg_px", "float", True), ("reprojection_right_leg_px", "float", True),
        ("facing", "float", True), ("candidates", "int16", True), ("candidate_spread_mm", "float", True),
        ("iterations", "int32", True), ("valid", "bool", True), ("source", "string", False),
        ("epoch", "int32", True), ("step", "int64", True), ("run_id", "string", False),
        ("body_model_id", "string", False), ("fit_config_hash", "string", False),
        ("schema_version", "int16", False), ("time", "timestamp[us, tz=UTC]", False),
        ("hand_pose", "fixed_size_list<item: float>[90]", True), ("jaw_pose", "fixed_size_list<item: float>[3]", True),
        ("eye_pose", "fixed_size_list<item: float>[6]", True), ("expression", "fixed_size_list<item: float>[10]", True),
        ("reprojection_left_hand_px", "float", True), ("reprojection_right_hand_px", "float", True),
        ("reprojection_face_px", "float", True)]
    assert FITS_SCHEMA.get_field_index("body_model_id") < DELTA_STATS_COLUMNS  # per-version model counts need them


def test_batch_derives_dataset_loss_valid_and_spin_beta_flag(tmp_path):
    rng = np.random.default_rng(0)
    betas = np.zeros((4, 10))
    betas[1, 3], betas[2, 9], betas[3, 0] = 3.0, -3.001, 2.999  # SPIN: |beta| > 3 strictly
    per_joint = np.stack([np.full(49, v) for v in (10.0, 150.0, 99.0, 1.0)])
    fits = fits_batch(["lsp/im0001", "coco/a_n0", "mpii/b", "h36m/S1_x"], rng.normal(size=(4, 72)), betas,
                      FitProvenance("r", OPEN, config_hash({"a": 1}), "seed"), reprojection_loss=per_joint,
                      cam_t=rng.normal(size=(4, 3)), iterations=np.arange(4))
    assert fits["dataset"].to_pylist() == ["lsp", "coco", "mpii", "h36m"]
    assert fits["loss"].to_pylist() == [10.0, 150.0, 99.0, 1.0]
    assert fits["valid"].to_pylist() == [True, False, True, True]
    assert fits["betas_extreme"].to_pylist() == [False, False, True, False]
    table = FitsTable.create(tmp_path / "t")
    table.append(fits)
    back = table.log().sort_by("key")
    assert back.schema == FITS_SCHEMA and back.equals(fits.sort_by("key"))


@pytest.mark.parametrize("change, message", [
    (lambda t: t.set_column(0, "key", pa.array(["lsp/im0001.jpg"])), "malformed key"),
    (lambda t: t.set_column(1, "dataset", pa.array(["coco"])), "dataset other than"),
    (lambda t: t.set_column(t.schema.get_field_index("source"), "source", pa.array(["guess"])), "source outside"),
    (lambda t: t.set_column(t.schema.get_field_index("loss"), "loss", pa.array([np.nan], pa.float32())),
     "NaN or infinite"),
    (lambda t: t.set_column(t.schema.get_field_index("frame"), "frame", pa.array(["world"])), "frame outside"),
    (lambda t: t.set_column(t.schema.get_field_index("frame"), "frame", pa.array(["image"])),
     "frame image without intrinsics"),
    (lambda t: t.set_column(4, "betas_extreme", pa.array([True])), "betas_extreme inconsistent"),
    (lambda t: t.drop_columns(["time"]), "columns"),
])
def test_check_fits_refuses_malformed_rows(change, message):
    good = batch(["lsp/im0001"], [1.0])
    with pytest.raises(FitsTableError, match=message):
        check_fits(change(good))


def test_open_refuses_what_is_not_a_fits_table(tmp_path):
    with pytest.raises(FitsTableError, match="not a Delta table"):
        FitsTable.open(tmp_path)
    from deltalake import write_deltalake
    write_deltalake(tmp_path / "other", pa.table({"key": ["a"]}))
    with pytest.raises(FitsTableError, match="not the fits schema"):
        FitsTable.open(tmp_path / "other")


# --- Best-fit semantics, for any order of updates -------------------------------------------------------------

KEYS = [f"lsp/im{i:04d}" for i in range(5)]
# (key index, loss or None = unscored); few distinct losses so that ties happen
update = st.tuples(st.integers(0, len(KEYS) - 1), st.one_of(st.none(), st.sampled_from([1.0, 2.0, 2.5, 7.0])))


def expected_best(updates):
    """Per key: the lowest scored loss, else None (only unscored fits)."""
    best = {}
    for key, loss in updates:
        scored = [v for v in (best.get(KEYS[key], "absent"), loss) if v not in (None, "absent")]
        best[KEYS[key]] = min(scored) if scored else None
    return best


@settings(max_examples=200, deadline=None)
@given(st.lists(update, min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_best_of_is_the_argmin_whatever_the_row_order(updates, rnd):
    rows = [batch([KEYS[k]], [loss], time=T0 + timedelta(seconds=i), pose_value=i)
            for i, (k, loss) in enumerate(updates)]
    log = pa.concat_tables(rows)
    best = best_of(log)
    assert losses_of(best) == expected_best(updates)
    for row in best.to_pylist():  # ties and unscored fits go to the earliest fit
        same = [i for i, (k, loss) in enumerate(updates) if KEYS[k] == row["key"] and loss == row["loss"]]
        assert row["pose"][0] == min(same)
    shuffled = list(range(len(rows)))
    rnd.shuffle(shuffled)
    assert best_of(log.take(shuffled)).equals(best)


def split(items, cuts):
    cuts = sorted({c % (len(items) + 1) for c in cuts})
    bounds = [0, *cuts, len(items)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def write_in_order(path, batches):
    """Append each batch (key index, loss) through a BestLosses filter; one commit per batch."""
    table = FitsTable.create(path)
    known = table.best_losses()
    for step, rows in enumerate(batches):
        for scored in (True, False):  # a batch's scored and unscored fits go in as two commits
            part = [(k, v) for k, v in rows if (v is not None) == scored]
            if part:
                table.append(batch([KEYS[k] for k, _ in part], [v for _, v in part], step=step,
                                   time=T0 + timedelta(seconds=step)), best=known)
    return table


def sequential_rows(batches):
    """How many rows a writer keeping strict improvements appends: the batch's best fit per key, if lower."""
    best, rows = {}, 0
    for rows_of_batch in batches:
        for scored in (True, False):
            part = {}
            for k, v in rows_of_batch:
                if (v is not None) == scored and (k not in part or (v is not None and v < part[k])):
                    part[k] = v
            for k, v in part.items():
                if k not in best or (v is not None and (best[k] is None or v < best[k])):
                    best[k], rows = v, rows + 1
    return rows


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(update, min_size=1, max_size=20), st.lists(st.integers(0, 40), max_size=4),
       st.randoms(use_true_random=False))
def test_table_keeps_only_improvements_and_its_best_is_order_free(tmp_path_factory, updates, cuts, rnd):
    batches = split(updates, cuts)
    table = write_in_order(tmp_path_factory.mktemp("order"), batches)
    assert losses_of(table.best()) == expected_best(updates)
    log = table.log()
    assert log.num_rows == sequential_rows(batches)
    for key in set(log["key"].to_pylist()):  # a key's rows improve strictly, commit after commit
        rows = table.history(key).to_pylist()
        scored = [r["loss"] for r in rows if r["loss"] is not None]
        assert scored == sorted(set(scored), reverse=True)
        assert all(r["loss"] is None for r in rows[: len(rows) - len(scored)])  # unscored only before scored
    reordered = batches[:]
    rnd.shuffle(reordered)
    other = write_in_order(tmp_path_factory.mktemp("reordered"), reordered)
    assert losses_of(other.best()) == losses_of(table.best())


def test_stale_writers_may_append_non_improvements_but_the_best_view_stays_right(tmp_path):
    table = FitsTable.create(tmp_path / "t")
    table.append(batch(["lsp/im0001"], [10.0]))
    first, second = table.best_losses(), table.best_losses()  # two writers read the same version
    table.append(batch(["lsp/im0001"], [4.0], run="a"), best=first)
    result = table.append(batch(["lsp/im0001"], [6.0], run="b"), best=second)  # stale: 6 < 10 but > 4
    assert result.rows == 1 and table.log().num_rows == 3
    assert table.best()["loss"].to_pylist() == [4.0] and table.best()["run_id"].to_pylist() == ["a"]
    assert table.append(batch(["lsp/im0001"], [np.float32(4.0)], run="c"), best=first).rows == 0  # not lower


def test_a_refit_that_differs_in_the_last_float_bits_is_no_improvement(tmp_path):
    """A sample refitted in another batch comes back with its loss moved by float32 rounding (~1e-6 relative):
    that is the same fit, not a better one, and appends nothing; a loss lower by more than LOSS_TIE does."""
    table = FitsTable.create(tmp_path / "t")
    loss = float(np.float32(37.125))
    table.append(batch(["lsp/im0001", "lsp/im0002"], [loss, loss]))
    rounded = float(np.float32(loss) * np.float32(1 - 3e-7))          # 3 float32 ulps lower
    assert rounded < loss
    known = table.best_losses()
    assert not known.improved(batch(["lsp/im0001"], [rounded])).any()
    assert known.improved(batch(["lsp/im0001"], [loss * (1 - 10 * LOSS_TIE)])).all()
    lower = float(np.float32(loss * 0.9))
    result = table.append(batch(["lsp/im0001", "lsp/im0002"], [rounded, lower], run="again"), best=known)
    assert result.rows == 1 and table.best()["loss"].to_pylist() == [loss, lower]


def test_a_diverged_fit_is_refused_or_never_an_improvement(tmp_path):
    table = FitsTable.create(tmp_path / "t")
    diverged = fits_batch(["lsp/a", "lsp/b"], np.zeros((2, 72)), np.zeros((2, 10)), FitProvenance("r", OPEN, "c"),
                          loss=[np.nan, np.inf])
    with pytest.raises(FitsTableError, match="NaN or infinite"):
        table.append(diverged)
    result = table.append(diverged, best=table.best_losses())  # SPIN: new_loss < opt_loss is False for NaN
    assert (result.version, result.rows, result.offered) == (None, 0, 2) and table.log().num_rows == 0


def test_best_losses_small_and_large_lookups_agree():
    rng = np.random.default_rng(1)
    keys = [f"coco/k{i}" for i in range(6000)]
    known = BestLosses(keys, rng.uniform(1, 2, len(keys)))
    offered = batch(keys, list(rng.uniform(0, 3, len(keys))))
    large = known.improved(offered)
    small = np.concatenate([known.improved(offered.slice(i, 100)) for i in range(0, len(keys), 100)])
    assert large.tolist() == small.tolist() and 0 < large.sum() < len(keys)
    known.record(batch(["coco/new1", "coco/new2"], [5.0, 6.0]))  # new keys: kept aside until many
    assert known.get("coco/new1") == 5.0 and known.get("coco/absent") is None and len(known) == 6002
    assert known.improved(batch(["coco/new1", "coco/new2"], [4.0, 7.0])).tolist() == [True, False]


# --- Versions, history, diff, compaction, vacuum --------------------------------------------------------------

def test_versions_time_travel_history_and_diff(tmp_path):
    table = FitsTable.create(tmp_path / "t")
    known = table.best_losses()
    table.append(batch(["lsp/a", "lsp/b", "lsp/c"], [None, None, None], source="import"), best=known)
    time.sleep(0.05)
    table.append(batch(["lsp/a", "lsp/b", "lsp/c"], [9.0, 8.0, 7.0], epoch=1), best=known)
    time.sleep(0.05)
    table.append(batch(["lsp/a", "lsp/b", "lsp/d"], [3.0, 9.0, 1.0], epoch=2), best=known)
    versions = table.versions()
    assert [(v["version"], v["rows"]) for v in versions] == [(0, 0), (1, 3), (2, 6), (3, 8)]
    assert losses_of(table.best(version=1)) == {"lsp/a": None, "lsp/b": None, "lsp/c": None}
    stamps = [datetime.fromisoformat(v["timestamp"]) for v in versions]
    between = stamps[2] + (stamps[3] - stamps[2]) / 2
    assert losses_of(table.best(timestamp=between)) == losses_of(table.best(version=2))
    assert [r["loss"] for r in table.history("lsp/a").to_pylist()] == [None, 9.0, 3.0]
    assert [r["source"] for r in table.history("lsp/a", version=1).to_pylist()] == ["import"]
    diff = table.diff(1, 3)
    assert (diff["improved"], diff["newly_scored"], diff["added"], diff["worse"]) == (3, 3, 1, 0)
    assert table.diff(2, 3)["loss_decrease"] == pytest.approx(
        {"total": 6.0, "mean": 6.0, "median": 6.0, "max": 6.0, "mean_relative": 6.0 / 9.0})
    assert table.diff(3, 2)["worse"] == 1 and table.diff(3, 2)["removed"] == 1
    with pytest.raises(FitsTableError, match="version 99"):
        table.best(version=99)


def _three_commits(path):
    """A table at versions 0 (create), 1 (losses 9) and 2 (losses 3) of keys lsp/a, lsp/b; its log folder."""
    table = FitsTable.create(path)
    table.append(batch(["lsp/a", "lsp/b"], [9.0, 9.0]))
    table.append(batch(["lsp/a", "lsp/b"], [3.0, 3.0], epoch=1))
    return path / "_delta_log"


def test_an_empty_last_commit_is_an_error_that_says_what_to_do_not_lost_fits(tmp_path, capsys):
    # deltalake itself opens such a table and reads it without version 2's fits (no error, losses 9 not 3)
    log = _three_commits(tmp_path / "t")
    last = log / f"{2:020d}.json"
    last.write_bytes(b"")
    assert DeltaTable(str(tmp_path / "t")).version() == 2
    with pytest.raises(FitsTableError,
                       match=r"00000000000000000002\.json: commit 2 .* is empty.*mv .*reads as of version 1"):
        FitsTable.open(tmp_path / "t")
    assert main(["fits", "versions", str(tmp_path / "t")]) != 0
    err = capsys.readouterr().err.strip()
    assert "is empty" in err and "Traceback" not in err and len(err.splitlines()) == 1
    last.rename(last.with_name(last.name + ".broken"))            # what the message says to do
    assert losses_of(FitsTable.open(tmp_path / "t").best()) == {"lsp/a": 9.0, "lsp/b": 9.0}


def test_a_damaged_or_missing_earlier_commit_is_an_error(tmp_path):
    log = _three_commits(tmp_path / "t")
    first = log / f"{1:020d}.json"
    text = first.read_text()
    first.write_text(text[: len(text) // 2])                        # torn in the middle of a line
    with pytest.raises(FitsTableError, match="commit 1, line .* not a JSON action.*restore it from a backup"):
        FitsTable.open(tmp_path / "t")
    first.unlink()
    with pytest.raises(FitsTableError, match="commit 1 is missing"):
        FitsTable.open(tmp_path / "t")


def test_compaction_and_vacuum_never_lose_the_latest_best(tmp_path):
    table = FitsTable.create(tmp_path / "t")
    known = table.best_losses()
    rng = np.random.default_rng(2)
    keys = [f"mpii/p{i}" for i in range(50)]
    for epoch in range(4):
        table.append(batch(keys, list(rng.uniform(0, 10, 50)), epoch=epoch), best=known)
    before, before_version = table.best(), table.versions()[-1]["version"]
    version = table.compact()
    assert table.log().num_rows == 50 and table.best().equals(before)
    last = table.versions()[-1]
    assert (last["version"], last["rows"], last["operation"]) == (version, 50, "COMPACT")
    assert table.log(version=before_version).num_rows > 50  # the log before compaction is still there
    removed = table.vacuum(retention_hours=0)
    assert removed and table.best().equals(before)
    assert sorted(Path(p).name for p in table.files()) == sorted(
        p.name for p in (tmp_path / "t").glob("*.parquet"))  # only the latest version's files remain


def test_a_version_a_vacuum_deleted_says_so_and_which_versions_can_be_read(tmp_path, capsys):
    """Reading a version whose files a vacuum deleted failed with "cannot be read ... restore it from a backup", and
    `fits versions` listed it with its rows as if readable: now each says which vacuum deleted it and what can still
    be read; a resume from such a version (`training.loop.load_store` at the checkpoint's version) says to start a new
    run."""
    from types import SimpleNamespace

    from fits.table import VacuumedVersionError
    from training.loop import Position, load_store

    path = tmp_path / "t"
    table = FitsTable.create(path)
    table.append(batch(["lsp/a", "lsp/b"], [5.0, 5.0]))                     # 1
    table.append(batch(["lsp/a"], [4.0]))                                     # 2
    table.compact()                                                           # 3
    assert main(["fits", "vacuum", str(path), "--retention-hours", "0"]) == 0  # 4, 5: VACUUM START, END
    assert capsys.readouterr().out.splitlines()[-1] == (f"version(s) that can no longer be read: 1-2; that can: "
                                                        f"0, 3-5 (fitloop fits versions {path})")
    listed = table.versions()
    assert [(v["version"], v["readable"], v["vacuumed_at"]) for v in listed] == [
        (0, True, None), (1, False, 4), (2, False, 4), (3, True, None), (4, True, None), (5, True, None)]
    assert listed[1]["rows"] == 2   # what the log records
    expected = (f"{path}: version 1 can no longer be read: the vacuum at version 4 ({listed[4]['timestamp']}) deleted "
                f"its data files (a vacuum deletes the files no version younger than its retention needs); versions "
                f"0, 3-5 can still be read (fitloop fits versions {path})")
    with pytest.raises(VacuumedVersionError) as gone:
        table.best(version=1)
    assert str(gone.value) == expected
    assert losses_of(table.best(version=3)) == {"lsp/a": 4.0, "lsp/b": 5.0}
    for argv in (["fits", "list", str(path), "--version", "1"], ["fits", "diff", str(path), "2", "3"],
                 ["fits", "export", str(path), "--version", "1", "--parquet", str(tmp_path / "x.parquet")]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.splitlines() == [f"fitloop: error: {expected.replace('version 1 ', 'version 2 ')}"
                                    if argv[1] == "diff" else f"fitloop: error: {expected}"], argv
    assert main(["fits", "versions", str(path)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[1].endswith("[cannot be read: its files were deleted by the vacuum at version 4]")
    assert "cannot be read" not in text[3] and text[-1].startswith("2 version(s) can no longer be read")
    assert main(["fits", "versions", str(path), "--json"]) == 0
    assert [v["readable"] for v in json.loads(capsys.readouterr().out)] == [True, False, False, True, True, True]
    with pytest.raises(FitsTableError, match=r"the checkpoint being resumed names fits table version 2, which can no "
                                             r"longer be read: the vacuum at version 4 .* so this run cannot resume\. "
                                             r"Start a new run instead \(`fitloop train` with a new --run-dir and "
                                             r"--fits .*\): it reads the table's current version 5"):
        resumed = Position(resumed=True, fits_version=2)
        load_store(SimpleNamespace(config=None, table=table, body=SimpleNamespace(model_id=OPEN)), resumed, False)
    # a file gone with no vacuum after its version: deleted outside fitloop, not a vacuum's doing
    table.append(batch(["lsp/c"], [3.0]))                                     # 6
    table.compact()                                                           # 7
    (added,) = set(table.files(version=6)) - set(table.files(version=5))
    (path / added.split("/")[-1]).unlink()
    with pytest.raises(FitsTableError, match=r"a data file of fits table version 6 is missing and no vacuum is "
                                             r"recorded after that version .* restore it from a backup; versions "
                                             r"0, 3-5, 7 can still be read"):
        table.log(version=6)


def test_a_fit_appended_while_compacting_survives(tmp_path):
    table = FitsTable.create(tmp_path / "t")
    table.append(batch(["lsp/a", "lsp/b"], [5.0, 5.0]))
    table.append(batch(["lsp/a"], [4.0]))
    stale = DeltaTable(str(tmp_path / "t"))  # the compaction's read ...
    table.append(batch(["lsp/b", "lsp/c"], [1.0, 2.0], run="racer"))  # ... then another writer commits
    table._compact_from(stale)  # ... then the compaction commits
    assert losses_of(table.best()) == {"lsp/a": 4.0, "lsp/b": 1.0, "lsp/c": 2.0}


# --- Crash safety and concurrency: real processes ---------------------------------------------------------------

WRITER = """
import json, sys, time
import numpy as np
import fits.table as fits_table
from fits.schema import FitProvenance, fits_batch
from fits.table import FitsTable
path, name, rows, batches, seed, start_at = sys.argv[1:]
table, rows, batches, seed = FitsTable.open(path), int(rows), int(batches), int(seed)
rng = np.random.default_rng(abs(seed))
shared = seed >= 0  # shared: every batch offers fits for the same keys; else each batch has keys of its own
known = table.best_losses() if shared else None
write_deltalake, i = fits_table.write_deltalake, 0

def traced_write(*args, **kwargs):  # say when the Delta write (parquet files, then the commit) starts and ends
    print(json.dumps({"writing": i}), flush=True)
    began = time.perf_counter()
    write_deltalake(*args, **kwargs)
    print(json.dumps({"wrote": i, "seconds": time.perf_counter() - began}), flush=True)

fits_table.write_deltalake = traced_write
time.sleep(max(0.0, float(start_at) - time.time()))  # both writers start together
while i < batches or batches < 0:
    keys = [f"proc/{'shared' if shared else name}_{j if shared else i * rows + j}" for j in range(rows)]
    loss = rng.uniform(0, 100, rows).astype(np.float32)
    fits = fits_batch(keys, rng.normal(size=(rows, 72)), np.zeros((rows, 10)),
                      FitProvenance(name, "open:0123456789abcdef", "t", "loop", 0, i), loss=loss)
    print(json.dumps({"start": i, "offered": dict(zip(keys, loss.tolist())) if shared else None}), flush=True)
    result = table.append(fits, best=known)
    print(json.dumps({"committed": i, "version": result.version, "rows": result.rows}), flush=True)
    i += 1
"""


def start_writer(path, name, rows, batches, seed, start_at=0.0):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(rows), str(batches), str(seed),
                             str(start_at)], stdout=subprocess.PIPE, text=True, env=env)


def orphans(path: Path, table: FitsTable) -> set[str]:
    """Files under the table that no version references: what a writer killed mid-commit may leave."""
    referenced = {Path(p).name for v in table.versions() for p in table.files(version=v["version"])}
    data = {p.name for p in path.iterdir() if p.is_file()} - referenced
    return data | {p.name for p in (path / "_delta_log").iterdir() if "#" in p.name or ".tmp" in p.name}


def test_a_writer_killed_mid_commit_loses_no_committed_fit(tmp_path):
    path, rows = tmp_path / "t", 40_000
    table = FitsTable.create(path)
    committed, interrupted, killed_in_write = {}, [], 0
    for attempt in range(4):  # kill writers until a kill has landed inside the Delta write, at least twice
        name = f"w{attempt}"
        writer, durations, writing = start_writer(path, name, rows, -1, -1), [], None
        while writing is None or len(durations) < 2:  # two writes to learn how long one takes, then a third
            event = json.loads(writer.stdout.readline())
            durations += [event["seconds"]] if "wrote" in event else []
            committed.update({(name, event["committed"]): event["version"]} if "committed" in event else {})
            writing = event["writing"] if "writing" in event and len(durations) >= 2 else None
        time.sleep(random.uniform(0.1, 0.6) * min(durations))  # inside that write
        writer.send_signal(signal.SIGKILL)
        events = [json.loads(line) for line in writer.stdout.read().splitlines()]
        writer.wait()
        committed.update({(name, e["committed"]): e["version"] for e in events if "committed" in e})
        interrupted.append((name, writing))
        killed_in_write += not any(e.get("wrote") == writing for e in events)
        if killed_in_write >= 2:
            break
    assert killed_in_write >= 1, "no kill landed inside a write: the test did not test a mid-commit kill"

    def batch_rows(name, i, version=None):
        where = (pc.field("run_id") == name) & (pc.field("step") == i)
        return table.log(version=version, columns=["key"], where=where).num_rows

    for (name, i), version in committed.items():  # every reported commit is there, whole, then and now
        assert batch_rows(name, i, version) == rows and batch_rows(name, i) == rows
    for name, i in interrupted:  # the batch being written when the writer died: all or nothing
        assert batch_rows(name, i) in (0, rows)
    for v in table.versions():  # every version reads back, in whole batches
        assert table.log(version=v["version"], columns=["key"]).num_rows == v["rows"] and v["rows"] % rows == 0
    total = table.log(columns=["key"]).num_rows
    assert total >= rows * len(committed)
    assert table.append(batch(["lsp/after"], [1.0])).version is not None  # writing goes on
    table.vacuum(retention_hours=0)  # and a vacuum clears whatever the killed writers left
    assert not orphans(path, table) and table.log(columns=["key"]).num_rows == total + 1


def test_two_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "t"
    FitsTable.create(path)
    start_at = time.time() + 3.0
    writers = [start_writer(path, name, 50, 30, seed, start_at) for name, seed in (("a", 1), ("b", 2))]
    outputs = [w.communicate(timeout=120)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0]
    offered, written, versions = {}, 0, []
    for output in outputs:
        for event in map(json.loads, output.splitlines()):
            if "start" in event:
                for key, loss in event["offered"].items():
                    offered[key] = min(offered.get(key, np.inf), loss)
            elif "committed" in event:
                written += event["rows"]
                versions += [event["version"]] if event["version"] is not None else []
    table = FitsTable.open(path)
    assert len(versions) == len(set(versions)) and len(table.versions()) == len(versions) + 1
    assert table.log().num_rows == written  # every committed row is there
    assert losses_of(table.best()) == offered  # and the lowest fit each key was offered is its best


# --- Readers ----------------------------------------------------------------------------------------------------

def test_the_table_reads_in_pandas_pyarrow_and_dask(tmp_path):
    import dask.dataframe as dd
    import pyarrow.dataset as ds

    table = FitsTable.create(tmp_path / "t")
    table.append(batch(["lsp/a", "lsp/b"], [1.0, 2.0]))
    table.append(batch(["lsp/a"], [0.5], epoch=1))
    frame = DeltaTable(str(tmp_path / "t")).to_pandas()
    assert sorted(frame["loss"]) == [0.5, 1.0, 2.0] and len(frame["pose"][0]) == 72
    arrow = ds.dataset(table.files(), format="parquet").to_table()
    assert arrow.num_rows == 3 and arrow.schema.field("betas").type.value_type == pa.float32()
    lazy = dd.read_parquet(table.files())
    assert lazy.groupby("key")["loss"].min().compute().to_dict() == {"lsp/a": 0.5, "lsp/b": 2.0}
    assert dd.read_parquet(table.files(version=1))["loss"].compute().sort_values().tolist() == [1.0, 2.0]


# --- SPIN interchange -------------------------------------------------------------------------------------------

@needs_fixtures
def test_spin_static_fits_import_then_export_equal(tmp_path):
    from pipelines.adapters import iter_dataset

    npz, npy = SPIN_NPZ / "lsp_dataset_original_train.npz", SPIN_NPZ / "lsp-orig_fits.npy"
    table = FitsTable.create(tmp_path / "t")
    summary = import_spin(table, npz, npy, body_model_id=SPIN_MODEL)
    assert (summary["rows"], summary["appended"], summary["max_float32_rounding"]) == (1000, 1000, 0.0)
    best = table.best()
    assert best.num_rows == 1000 and best["key"][0].as_py() == "lsp-orig/im0001"
    assert set(best["source"].to_pylist()) == {"import"} and best["loss"].null_count == 1000
    spin = np.load(npy)
    assert best["betas_extreme"].to_pylist() == (np.abs(spin[:, 72:]) > 3).any(axis=1).tolist()
    adapter = iter_dataset("spin-npz", SPIN_NPZ.parent / "lsp_dataset_original", "train",
                           npz_file="../spin_npz/lsp_dataset_original_train.npz", image_check="exists")
    assert [o.key for o in adapter] == spin_keys([str(n) for n in np.load(npz)["imgname"]], "lsp-orig")
    assert import_spin(table, npz, npy, body_model_id=SPIN_MODEL)["appended"] == 0  # importing twice: a no-op
    out = export_spin(table, npz, tmp_path / "lsp-orig_fits.npy")
    exported = np.load(tmp_path / "lsp-orig_fits.npy")
    assert out["exported"] == 1000 and exported.dtype == spin.dtype and np.array_equal(exported, spin)

    better = spin[:2].copy()  # a scored fit replaces an imported one in the export
    better[:, 3] = (better[:, 3] + 0.5).astype(np.float32)  # the table stores float32
    table.append(fits_batch(["lsp-orig/im0001", "lsp-orig/im0002"], better[:, :72], better[:, 72:],
                            FitProvenance("loop", SPIN_MODEL, "cfg"), loss=[50.0, 60.0]))
    export_spin(table, npz, tmp_path / "next.npy")
    assert np.array_equal(np.load(tmp_path / "next.npy"), np.concatenate([better, spin[2:]]))
    # fits of another body model, lower in loss: the export refuses to mix, and one model's export ignores them
    table.append(fits_batch(["lsp-orig/im0003", "lsp-orig/im0004"], np.zeros((2, 72)), np.ones((2, 10)),
                            FitProvenance("loop", "open:0123456789abcdef", "cfg"), loss=[1.0, 1.0]))
    with pytest.raises(MixedBodyModelsError, match=r"2 body models, open:0123456789abcdef \(2 rows\), "
                                                    r"smpl:5eed5eed5eed5eed \(1002 rows\)"):
        export_spin(table, npz, tmp_path / "mixed.npy")
    assert not (tmp_path / "mixed.npy").exists()
    export_spin(table, npz, tmp_path / "smpl.npy", body_model_id=SPIN_MODEL)
    assert np.array_equal(np.load(tmp_path / "smpl.npy"), np.concatenate([better, spin[2:]]))
    export_spin(table, npz, tmp_path / "old.npy", version=1)  # version 1 holds one model: none needs naming
    assert np.array_equal(np.load(tmp_path / "old.npy"), spin)
    with pytest.raises(FitsTableError, match="1000 of 1000 rows"):
        export_spin(table, SPIN_NPZ / "lsp_dataset_test.npz", tmp_path / "x.npy", body_model_id=SPIN_MODEL)


def test_spin_import_checks_shapes_and_keys(tmp_path):
    np.savez(tmp_path / "mine.npz", imgname=np.array(["a/x.jpg", "b/y.jpg", "b/y.jpg"]),
             center=np.zeros((3, 2)), scale=np.ones(3))
    np.save(tmp_path / "fits.npy", np.zeros((2, 82)))
    table = FitsTable.create(tmp_path / "t")
    with pytest.raises(FitsTableError, match="not one of SPIN's files"):
        import_spin(table, tmp_path / "mine.npz", tmp_path / "fits.npy", body_model_id=SPIN_MODEL)
    with pytest.raises(FitsTableError, match=r"shape \(2, 82\)"):
        import_spin(table, tmp_path / "mine.npz", tmp_path / "fits.npy", dataset="mine", body_model_id=SPIN_MODEL)
    with pytest.raises(FitsTableError, match="'smpl-neutral-10' is not a content id"):  # the old fixed label
        import_spin(table, tmp_path / "mine.npz", tmp_path / "fits.npy", dataset="mine",
                    body_model_id="smpl-neutral-10")
    assert spin_keys(["a/x.jpg", "b/y.jpg", "b/y.jpg"], "mine") == ["mine/x", "mine/y_n0", "mine/y_n1"]
    with pytest.raises(FitsTableError, match="stand for different images"):  # MPI-INF-3DHP-style names
        spin_keys(["S1/Seq1/video_0/frame_000001.jpg", "S1/Seq2/video_0/frame_000001.jpg"], "mpi-inf-3dhp")


# --- CLI --------------------------------------------------------------------------------------------------------

@needs_fixtures
def test_cli_import_versions_show_diff_export(tmp_path, capsys):
    import model_files

    from fitting.body_model import load_body_model

    npz, npy, table = SPIN_NPZ / "lsp_dataset_original_train.npz", SPIN_NPZ / "lsp-orig_fits.npy", tmp_path / "t"
    smpl = tmp_path / "SMPL_NEUTRAL.pkl"
    model_files.write_chumpy_pickle(smpl, model_files.smpl_arrays())
    smpl_id = load_body_model(smpl).model_id
    assert main(["fits", "import", str(table), "--spin-npz", str(npz), "--spin-fits", str(npy), "--model", str(smpl),
                 "--json"]) == 0
    imported = json.loads(capsys.readouterr().out)
    assert (imported["appended"], imported["body_model_id"]) == (1000, smpl_id)
    assert main(["fits", "versions", str(table), "--json"]) == 0
    versions = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["rows"], v["body_models"]) for v in versions] == [(0, 0, {}), (1, 1000, {smpl_id: 1000})]
    assert all(set(v) == {"version", "rows", "timestamp", "body_models", "readable", "vacuumed_at"} for v in versions)
    assert main(["fits", "show", str(table), "lsp-orig/im0007", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["best"]["source"] == "import" and len(shown["best"]["pose"]) == 72 and len(shown["history"]) == 1
    assert main(["fits", "show", str(table), "lsp-orig/nope"]) == 1
    assert main(["fits", "diff", str(table), "0", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 1000
    assert main(["fits", "export", str(table), "--spin-npz", str(npz), "--out", str(tmp_path / "o.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "o.npy"), np.load(npy))
    assert main(["fits", "export", str(table), "--parquet", str(tmp_path / "best.parquet")]) == 0
    assert pq.read_table(tmp_path / "best.parquet").num_rows == 1000
