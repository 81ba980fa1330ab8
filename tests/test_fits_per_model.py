"""A best fit is per body model: every best view, lookup, diff, export and the seeding's improvement rule work per
model, a table holding several refuses to answer for none, old tables (file-based ids) are refused until relabelled,
and `fitloop fits seed` seeds on Dask.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from fitloop.cli import main
from fits.lookup import best_fits
from fits.schema import (
    FitProvenance,
    FitsTableError,
    MixedBodyModelsError,
    fits_batch,
    schema_of_version,
)
from fits.seeding import SeedConfig, fit_config_hash, seed_fits
from fits.table import FitsTable, best_of
from fitting.body_model import load_body_model
from fitting.priors import DEFAULT_PRIOR, load_gmm, save_gmm
from fitting.smplify import SMPLifyConfig

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
A, B = "open:aaaaaaaaaaaaaaaa", "smpl:bbbbbbbbbbbbbbbb"  # content ids of two body models
FAST = SMPLifyConfig(body_iterations=5)


def rows(keys, losses, model, *, source="loop", seconds=0, pose_value=0.0):
    n = len(keys)
    return fits_batch(keys, np.full((n, 72), pose_value), np.zeros((n, 10)),
                      FitProvenance("run", model, "cfg", source), loss=None if losses is None else losses,
                      time=T0 + timedelta(seconds=seconds))


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("per-model")
    write_synthetic_shards(root, [DatasetSpec("synth-a", "train", 6, smpl=True, joints_3d=True),
                                  DatasetSpec("synth-a", "test", 2, smpl=True, joints_3d=True)],
                           res=64, samples_per_shard=4, seed=5)
    return root / "shards"


@pytest.fixture(scope="module")
def small_id() -> str:
    return load_body_model("open-small").model_id


# --- best views ---------------------------------------------------------------------------------------------------
def test_every_best_view_is_per_body_model(tmp_path):
    table = FitsTable.create(tmp_path / "t")
    keys = ["lsp/a", "lsp/b", "lsp/c"]
    table.append(rows(keys, [5.0, 6.0, 7.0], A))                    # version 1
    table.append(rows(keys[:2], [1.0, 2.0], B, seconds=1))           # version 2: lower, but another model's
    listed = rf"2 body models, {A} \(3 rows\), {B} \(2 rows\)"
    for ask in (table.best, table.min_losses, table.best_losses, lambda: best_of(table.log()),
                lambda: best_fits(table, keys), lambda: table.diff(1, 2)):
        with pytest.raises(MixedBodyModelsError, match=listed):
            ask()
    best_a = table.best(body_model_id=A)
    assert dict(zip(best_a["key"].to_pylist(), best_a["loss"].to_pylist())) == {"lsp/a": 5.0, "lsp/b": 6.0,
                                                                                 "lsp/c": 7.0}
    assert table.min_losses(body_model_id=B)["loss"].to_pylist() == [1.0, 2.0]
    assert table.best_losses(body_model_id=A).get("lsp/a") == 5.0
    assert {k: r["loss"] for k, r in best_fits(table, keys, body_model_id=B).items()} == {"lsp/a": 1.0, "lsp/b": 2.0}
    assert table.best(version=1)["loss"].to_pylist() == [5.0, 6.0, 7.0]  # one model then: nothing to name
    diff = table.diff(1, 2, body_model_id=A)
    assert (diff["body_model_id"], diff["unchanged"], diff["improved"]) == (A, 3, 0)
    with pytest.raises(FitsTableError, match=f"these fits are of body model {B}"):
        table.append(rows(["lsp/c"], [0.5], B), best=table.best_losses(body_model_id=A))
    assert [v["body_models"] for v in table.versions()] == [{}, {A: 3}, {A: 3, B: 2}]

    version = table.compact()  # one row per key and model: B's lower fits do not replace A's
    assert table.log(version=version).num_rows == 5
    assert table.best(version=version, body_model_id=A).equals(table.best(version=2, body_model_id=A))
    assert table.versions()[-1]["body_models"] == {A: 3, B: 2}  # one file, two models: counted from the file
    table.compact()  # the first compaction's file, mixed, is no longer in the latest version: a vacuum removes it
    table.vacuum(retention_hours=0)
    after = [(v["operation"], v["body_models"]) for v in table.versions()][:5]
    assert after == [("CREATE TABLE", {}), ("WRITE", {A: 3}), ("WRITE", {A: 3, B: 2}), ("COMPACT", None),
                     ("COMPACT", {A: 3, B: 2})]  # (then Delta's VACUUM START and END)


def test_old_tables_are_refused_until_relabelled(tmp_path, capsys, small_id):
    """A table written before ids were content digests (fits schema 1) holds <name>@<file digest> ids and the
    import's fixed smpl-neutral-10: it is refused with what to do, then relabelled per old id."""
    path = tmp_path / "old"
    write_old_table(path, pa.concat_tables([rows(["lsp/a", "lsp/b"], [3.0, 4.0], "fitloop-open-small@e378763d87ac"),
                                            rows(["lsp/a"], None, "smpl-neutral-10", source="import")]), 1)

    with pytest.raises(FitsTableError, match=r"schema version 1: its fits name their body model by file .* "
                                             r"`fitloop fits relabel"):
        FitsTable.open(path)
    assert main(["fits", "versions", str(path)]) == 1
    assert "fitloop fits relabel" in capsys.readouterr().err
    assert main(["fits", "relabel", str(path)]) == 0
    listing = capsys.readouterr().out
    assert "fitloop-open-small@e378763d87ac" in listing and "smpl-neutral-10" in listing and "--map" in listing
    assert main(["fits", "relabel", str(path), "--map", "fitloop-open-small@e378763d87ac=open-small"]) == 1
    assert "['smpl-neutral-10'] are not content ids" in capsys.readouterr().err
    assert main(["fits", "relabel", str(path), "--map", "fitloop-open-small@e378763d87ac=open-small",
                 "--map", f"smpl-neutral-10={B}"]) == 0
    table = FitsTable.open(path)
    assert table.body_models() == {small_id: 2, B: 1}
    assert table.best(body_model_id=small_id)["loss"].to_pylist() == [3.0, 4.0]
    assert set(table.log(version=1)["body_model_id"].to_pylist()) == {"fitloop-open-small@e378763d87ac",
                                                                      "smpl-neutral-10"}  # history kept


def write_old_table(path: Path, fits: pa.Table, version: int) -> None:
    """A fits table as schema ``version`` (1 or 2) wrote it: the columns before the frame columns, its version in
    the schema's metadata."""
    old_schema = schema_of_version(version)
    DeltaTable.create(str(path), old_schema)
    old = fits.select(old_schema.names)
    old = old.set_column(old.schema.get_field_index("schema_version"), "schema_version",
                         pa.array(np.full(old.num_rows, version, np.int16))).cast(old_schema)
    write_deltalake(str(path), old, mode="append")


# --- seeding ------------------------------------------------------------------------------------------------------
def test_seeding_appends_per_body_model_and_the_trainer_way_fits_only_missing_keys(shard_set, tmp_path, small_id):
    table = FitsTable.create(tmp_path / "t")
    train_keys = [f"synth-a/train_{i:06d}" for i in range(6)]
    table.append(rows(train_keys, [0.0] * 6, B))  # another model's perfect fits: no reason not to seed this one
    table.append(rows(train_keys[:2], None, small_id, source="import"))  # this model: 2 unscored imports
    config = SeedConfig(body_model="open-small", smplify=FAST, batch_size=4, run_id="trainer")

    missing = seed_fits([shard_set], table.path, config, splits=("train",), missing_only=True)
    assert (missing.fitted, missing.skipped, missing.appended) == (4, 2, 4)
    seeds = table.log().filter(pa.compute.equal(table.log()["source"], "seed"))
    assert sorted(seeds["key"].to_pylist()) == train_keys[2:] and set(seeds["body_model_id"].to_pylist()) == {small_id}

    flow = seed_fits(shard_set, table.path, SeedConfig(body_model="open-small", smplify=FAST, batch_size=4))
    # all 8 samples fitted; appended: the 2 imported keys (any score beats unscored), the 2 test samples, and of
    # the 4 keys just seeded only strict improvements
    log = table.log().to_pylist()
    first = {r["key"]: r["loss"] for r in log if r["run_id"] == "trainer"}
    second = {r["key"]: r["loss"] for r in log if r["run_id"] == "seed"}
    assert flow.fitted == 8 and flow.appended == len(second)
    assert {*train_keys[:2], "synth-a/test_000000", "synth-a/test_000001"} <= set(second)
    assert all(second[k] < first[k] for k in set(second) & set(first))
    assert table.best(body_model_id=B)["loss"].to_pylist() == [0.0] * 6
    hashes = set(table.log().filter(pa.compute.equal(table.log()["source"], "seed"))["fit_config_hash"].to_pylist())
    assert hashes == {fit_config_hash(FAST, DEFAULT_PRIOR, small_id)} == {missing.fit_config_hash}


def test_seeding_again_in_other_batches_appends_no_copies(shard_set, tmp_path):
    """The same samples fitted in batches of other sizes come back with their losses moved (batch-dependent float32
    arithmetic: measured up to 3e-4 relative; 4e-5 here for FAST) and the same poses: no improvement, so a second
    seeding in other batches appends nothing (with the tie at 1e-5 a re-seed in batches of 1 appended 2 of these 8
    as "improved")."""
    table = tmp_path / "t"
    first = seed_fits(shard_set, table, SeedConfig(body_model="open-small", smplify=FAST, batch_size=8))
    assert (first.fitted, first.appended, first.versions) == (8, 8, [1])
    for size in (1, 2, 3, 5):
        again = seed_fits(shard_set, table, SeedConfig(body_model="open-small", smplify=FAST, batch_size=size))
        assert (again.fitted, again.appended, again.versions) == (8, 0, []), f"batch size {size}"
    assert FitsTable.open(table).log().num_rows == 8


def test_fit_config_hash_is_what_determines_the_fit(tmp_path, small_id):
    base = fit_config_hash(FAST, DEFAULT_PRIOR, small_id)
    renamed = tmp_path / "renamed_prior.npz"
    renamed.write_bytes(Path(DEFAULT_PRIOR).read_bytes())
    assert fit_config_hash(FAST, renamed, small_id) == base
    gmm = load_gmm(DEFAULT_PRIOR)
    save_gmm(type(gmm)(gmm.means, gmm.covars, gmm.weights[::-1].copy(), gmm.metadata), tmp_path / "other.npz")
    assert len({base, fit_config_hash(FAST, tmp_path / "other.npz", small_id),
                fit_config_hash(SMPLifyConfig(), DEFAULT_PRIOR, small_id),
                fit_config_hash(FAST, DEFAULT_PRIOR, A)}) == 4


def test_fits_seed_command_seeds_on_dask(shard_set, tmp_path, capsys, small_id):
    table = tmp_path / "t"
    keys = ["synth-a/train_000001", "synth-a/test_000000"]
    assert main(["fits", "seed", str(shard_set), str(table), "--body-model", "open-small", "--workers", "1",
                 "--batch-size", "1", "--keys", *keys, "--run-id", "cli-seed", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["fitted"], result["appended"], result["versions"], result["body_model_id"]) == (2, 2, [1], small_id)
    log = FitsTable.open(table).log()
    assert sorted(log["key"].to_pylist()) == sorted(keys) and set(log["run_id"].to_pylist()) == {"cli-seed"}
    assert main(["fits", "seed", str(shard_set), str(table), "--workers", "0", "--keys", "synth-a/nope"]) == 1
    assert "no sample with key(s) synth-a/nope" in capsys.readouterr().err


# --- SPIN interchange through the command line --------------------------------------------------------------------
def test_export_refuses_to_mix_body_models_in_one_spin_file(tmp_path, capsys):
    """Fits of two body models in one table: `fits export` (and show, diff) refuse to pick for the user, naming
    both models; named, each writes its own model's fits only."""
    npz = tmp_path / "lsp_dataset_original_train.npz"   # SPIN's LSP training file name: dataset lsp-orig
    np.savez(npz, imgname=np.array([f"images/im{i:04d}.jpg" for i in range(1, 5)]))
    rng = np.random.default_rng(0)
    first, second = (rng.normal(size=(4, 82)).astype(np.float32).astype(np.float64) for _ in range(2))
    np.save(tmp_path / "first.npy", first)
    np.save(tmp_path / "second.npy", second)
    table = tmp_path / "t"
    for fits, model in (("first.npy", "open-small"), ("second.npy", "open")):
        assert main(["fits", "import", str(table), "--spin-npz", str(npz), "--spin-fits", str(tmp_path / fits),
                     "--model", model, "--rows-match"]) == 0
    capsys.readouterr()
    small, full = load_body_model("open-small").model_id, load_body_model("open").model_id
    out = tmp_path / "lsp-orig_fits.npy"
    assert main(["fits", "export", str(table), "--spin-npz", str(npz), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "2 body models" in error and f"{small} (4 rows)" in error and f"{full} (4 rows)" in error
    assert not out.exists()
    for model, expected in (("open-small", first), (full, second)):   # a model file or a content id
        assert main(["fits", "export", str(table), "--spin-npz", str(npz), "--out", str(out), "--model", model,
                     "--overwrite"]) == 0
        assert np.array_equal(np.load(out), expected)
    assert main(["fits", "show", str(table), "lsp-orig/im0002"]) == 1
    assert "2 body models" in capsys.readouterr().err
    assert main(["fits", "show", str(table), "lsp-orig/im0002", "--model", "open", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["best"]["body_model_id"] == full and len(shown["history"]) == 2
    assert main(["fits", "diff", str(table), "0", "2"]) == 1
    capsys.readouterr()
    assert main(["fits", "diff", str(table), "0", "2", "--model", "open-small", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 4
    with pytest.raises(SystemExit):   # the body model is required
        main(["fits", "import", str(table), "--spin-npz", str(npz), "--spin-fits", str(tmp_path / "first.npy")])


def test_a_history_marks_each_models_best_by_the_tables_rule():
    from datetime import datetime, timedelta

    from fits.lookup import best_in_history
    from render.html import history_table

    t0 = datetime(2026, 12, 1)

    def row(model, loss, minutes, run="r"):
        return {"body_model_id": model, "loss": loss, "time": t0 + timedelta(minutes=minutes), "run_id": run,
                "epoch": None, "step": None}

    history = [row("open:a", None, 0), row("smpl:b", 5.0, 1), row("open:a", 3.0, 2), row("open:a", 3.0, 3),
               row("smpl:b", 1.0, 4), row("open:a", 4.0, 5)]
    # per model: the lowest scored loss (an unscored fit loses), a tie to the earlier fit
    assert best_in_history(history) == {2: "open:a", 4: "smpl:b"}
    page = history_table(history)
    assert page.count("best of open:a") == 1 and page.count("best of smpl:b") == 1
    single = [r for r in history if r["body_model_id"] == "open:a"]
    assert best_in_history(single) == {1: "open:a"}
    assert ">best<" in history_table(single) and "best of" not in history_table(single)
