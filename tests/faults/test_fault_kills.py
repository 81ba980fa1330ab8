"""Every writer killed (SIGKILL) part-way, then run again: nothing it committed is lost, and the result equals an
uninterrupted run's (issue 13).

The writers: preprocess (shards, receipts, rejects, manifest), fits seeding, fits import, compaction and the
trainer (seeding, fits write-back, checkpoints). Each is killed in a subprocess at a named point
(`core.killpoint`: ``FITLOOP_FAULT_KILL_AFTER=<site>:<n>``, the same each time, unlike a kill by timer), the case
asserts that it died of the kill (so the point was reached), checks what was committed by then, runs the command
again in this process (a restart, or ``--resume`` for the trainer) and compares the result with the same command
run uninterrupted: the same shard bytes; the same keys and fits (SMPLify's, to float noise between processes:
`FIT_POSE_ATOL`). The inputs are tiny (6 synthetic LSP people, 16 synthetic samples), so the file runs in about a
minute.
"""
from __future__ import annotations

import csv
import json
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from faultcheck import expect_error, run_cli

from core.killpoint import KILL_AFTER_ENV
from fitloop.cli import main as fitloop
from fits.schema import FitProvenance, fits_batch
from fits.table import FitsTable
from training.checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint

FAULT_CLASS = "a writer killed (SIGKILL) part-way: nothing committed lost, a restart ends as an uninterrupted run"

# Two processes' BLAS may round differently and SMPLify's iterations carry that to ~2e-4 rad (tests/test_training.py);
# a restart that lost or repeated work moves poses by tenths of a radian.
FIT_POSE_ATOL = 1e-3
FIT_LOSS_RTOL = 1e-3
WEIGHTS_ATOL, WEIGHTS_RTOL = 1e-4, 1e-3
METRIC_VALUES = ("epoch", "step", "fits_pa_mpjpe_mm", "fits_mpjpe_mm", "fits_samples")
MODEL_ID = "open:0123456789abcdef"  # a content id (`fitting.body_model.MODEL_ID_PATTERN`) for hand-made rows


def killed_at(argv: list, site: str, n: int) -> None:
    """Run `fitloop ARGV` in a subprocess with a kill at the n-th ``site``; assert the kill is what ended it."""
    result = run_cli(argv, env={KILL_AFTER_ENV: f"{site}:{n}"})
    assert result.returncode == -signal.SIGKILL, (
        f"`fitloop {' '.join(map(str, argv))}` was not killed at {site}:{n} (exit {result.returncode}):\n"
        f"{result.stderr[-3000:]}")


@contextmanager
def one_thread():
    """Runs compared with each other use one torch thread, as the subprocesses do (OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def best_fits(table: Path) -> dict[str, tuple[np.ndarray, np.ndarray, float | None]]:
    """key -> (pose, betas, loss) of the table's best view."""
    return {row["key"]: (np.asarray(row["pose"]), np.asarray(row["betas"]), row["loss"])
            for row in FitsTable.open(table).best().to_pylist()}


def assert_same_fits(got: dict, want: dict, *, exact: bool = False) -> None:
    assert sorted(got) == sorted(want)
    for key, (pose, betas, loss) in want.items():
        if exact:
            assert np.array_equal(got[key][0], pose) and np.array_equal(got[key][1], betas), key
            assert got[key][2] == loss, key
            continue
        np.testing.assert_allclose(got[key][0], pose, atol=FIT_POSE_ATOL, err_msg=key)
        np.testing.assert_allclose(got[key][1], betas, atol=FIT_POSE_ATOL, err_msg=key)
        assert got[key][2] == pytest.approx(loss, rel=FIT_LOSS_RTOL), key


def committed_rows(table: Path) -> set[tuple]:
    """Every row of the latest version, as (key, source, run_id, epoch, step, loss, pose bytes)."""
    log = FitsTable.open(table).log()
    return {(r["key"], r["source"], r["run_id"], r["epoch"], r["step"], r["loss"],
             np.asarray(r["pose"], np.float32).tobytes()) for r in log.to_pylist()}


# --- preprocess ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lsp_root(tmp_path_factory) -> Path:
    from pipelines.synthetic import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("synth"), SynthConfig.with_people(6, datasets=("lsp",)))["lsp"]


def preprocess_argv(root: Path, out: Path) -> list:
    return ["preprocess", "lsp", "--root", root, "--out", out, "--samples-per-shard", "2", "--no-progress"]


@pytest.fixture(scope="module")
def preprocessed(lsp_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("preprocessed") / "shards"
    assert fitloop([str(a) for a in preprocess_argv(lsp_root, out)]) == 0
    return json.loads((out / "manifest.json").read_text())


def _set_of(manifest: dict) -> dict:
    """What a shard set holds, without when it was written: shards (name, sha256, bytes, samples), counts, rejects."""
    return {k: manifest[k] for k in ("shards", "counts", "by_dataset", "rejects_by_reason", "rejects")}


@pytest.mark.parametrize("site, n", [("shards.sample", 3), ("shards.chunk", 1), ("shards.rejects", 1)])
def test_preprocess_killed_then_run_again_writes_the_uninterrupted_set(lsp_root, preprocessed, tmp_path, site, n):
    out = tmp_path / "shards"
    killed_at(preprocess_argv(lsp_root, out), site, n)
    assert not (out / "manifest.json").exists()  # unfinished: no reader takes it for a shard set
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert finished, "a kill after the first chunk leaves its shard"
    assert fitloop([str(a) for a in preprocess_argv(lsp_root, out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert _set_of(manifest) == _set_of(preprocessed)
    # the shards finished before the kill were kept (a resume), not written again; no temporary file is left
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == finished
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [s["name"] for s in preprocessed["shards"]] + ["manifest.json", "rejects.parquet"])


# --- a synthetic shard set for the fits writers and the trainer ---------------------------------------------------
MIX = "synth-h36m=0.5;*=0.5"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_shards(root, [DatasetSpec("synth-h36m", "train", 8, smpl=True, joints_3d=True),
                                  DatasetSpec("synth-wild", "train", 8, smpl=True, joints_3d=True, openpose=True)],
                           res=64, samples_per_shard=4, seed=3)
    return root / "shards"


# --- fits seeding -------------------------------------------------------------------------------------------------
def seed_argv(shards: Path, table: Path, keys: list[str]) -> list:
    return ["fits", "seed", shards, table, "--body-model", "open-small", "--batch-size", "3", "--workers", "0",
            "--keys", *keys]


def test_seeding_killed_before_its_commit_then_run_again_ends_with_the_uninterrupted_fits(shards, tmp_path):
    """Killed after both its batches, before its one commit (kills after a commit: the import and trainer cases)."""
    from fits.seeding import shard_samples

    keys = [sample.key for _, sample in zip(range(6), shard_samples(shards))]
    whole, table = tmp_path / "whole", tmp_path / "fits"
    with one_thread():
        assert fitloop([str(a) for a in seed_argv(shards, whole, keys)]) == 0
    killed_at(seed_argv(shards, table, keys), "seed.batch", 2)
    assert not table.exists()  # one commit per seed run, which makes the table: all of it or nothing
    with one_thread():
        assert fitloop([str(a) for a in seed_argv(shards, table, keys)]) == 0
    assert_same_fits(best_fits(table), best_fits(whole))
    assert len(committed_rows(table)) == 6


# --- fits import --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spin_files(tmp_path_factory) -> tuple[Path, Path]:
    """A SPIN-style .npz (imgname) and its N x 82 fits .npy."""
    folder = tmp_path_factory.mktemp("spin")
    names = np.array([f"images/im{i:04d}.jpg" for i in range(12)])
    np.savez(folder / "mine_train.npz", imgname=names, center=np.zeros((12, 2)), scale=np.ones(12))
    fits = np.random.default_rng(0).normal(0, 0.2, (12, 82)).astype(np.float32)
    np.save(folder / "mine_fits.npy", fits)
    return folder / "mine_train.npz", folder / "mine_fits.npy"


def import_argv(table: Path, npz: Path, npy: Path) -> list:
    return ["fits", "import", table, "--spin-npz", npz, "--spin-fits", npy, "--model", "open-small", "--dataset",
            "mine", "--rows-match"]


def test_import_killed_after_its_commit_then_run_again_appends_nothing_twice(spin_files, tmp_path):
    npz, npy = spin_files
    whole, table = tmp_path / "whole", tmp_path / "fits"
    assert fitloop([str(a) for a in import_argv(whole, npz, npy)]) == 0
    killed_at(import_argv(table, npz, npy), "fits.commit", 1)
    rows = committed_rows(table)
    assert len(rows) == 12
    assert fitloop([str(a) for a in import_argv(table, npz, npy)]) == 0
    assert committed_rows(table) == rows  # the committed fits kept, and not appended again
    assert_same_fits(best_fits(table), best_fits(whole), exact=True)


# --- compaction ---------------------------------------------------------------------------------------------------
def three_versions(path: Path) -> None:
    """A table of 3 appends: 8 keys, then better fits of 4 of them and worse of 2, then 2 new keys."""
    table = FitsTable.create(path)
    rng = np.random.default_rng(1)
    for run, keys, loss in (("a", [f"d/k{i}" for i in range(8)], 10.0 + np.arange(8)),
                            ("b", [f"d/k{i}" for i in (0, 2, 4, 6, 1, 3)], np.array([1, 2, 3, 4, 50, 60.0])),
                            ("c", ["d/k8", "d/k9"], np.array([7.0, 8.0]))):
        provenance = FitProvenance(run_id=run, body_model_id=MODEL_ID, fit_config_hash="0" * 16, source="seed")
        table.append(fits_batch(keys, rng.normal(0, 0.1, (len(keys), 72)), rng.normal(0, 1, (len(keys), 10)),
                                provenance, loss=loss))


@pytest.mark.parametrize("site", ["fits.compact", "fits.compacted"])
def test_compaction_killed_then_run_again_keeps_every_best_fit(tmp_path, site):
    whole, table = tmp_path / "whole", tmp_path / "fits"
    three_versions(whole)
    shutil.copytree(whole, table)
    before = best_fits(table)
    assert fitloop(["fits", "compact", str(whole)]) == 0
    killed_at(["fits", "compact", table], site, 1)
    assert_same_fits(best_fits(table), before, exact=True)  # killed before or after its commit: nothing lost
    assert fitloop(["fits", "compact", str(table)]) == 0
    assert_same_fits(best_fits(table), before, exact=True)
    assert_same_fits(best_fits(whole), before, exact=True)
    assert FitsTable.open(table).log().num_rows == len(before)  # compacted: one row per key
    assert fitloop(["fits", "vacuum", str(table), "--retention-hours", "0"]) == 0  # what a kill left goes
    assert_same_fits(best_fits(table), before, exact=True)


# --- the trainer --------------------------------------------------------------------------------------------------
def train_argv(shards: Path, fits: Path, run_dir: Path, run_id: str, *extra: str) -> list:
    """A 3-step run on the synthetic set that seeds its own fits (commit 1), saves a checkpoint at step 0, writes
    back at step 2 (commit 2) and checkpoints there, then writes back and checkpoints at the epoch end (step 3)."""
    return ["train", "--shards", shards, "--fits", fits, "--run-dir", run_dir, "--run-id", run_id, "--backbone",
            "18", "--img-res", "32", "--batch-size", "4", "--epochs", "1", "--steps-per-epoch", "3",
            "--num-workers", "0", "--body-model", "open-small", "--mix", MIX, "--smplify-iters", "5",
            "--checkpoint-every", "2", "--log-every", "1", "--shuffle-buffer", "8", "--ignore-3d", "synth-wild",
            "--no-tensorboard", "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, fits table) of the uninterrupted run."""
    root = tmp_path_factory.mktemp("trained")
    with one_thread():
        assert fitloop([str(a) for a in train_argv(shards, root / "fits", root / "run", "whole")]) == 0
    return root / "run", root / "fits"


def _metric_values(run_dir: Path) -> list[list[float]]:
    """metrics.csv's epoch, step and fits errors per row (not the fits version: a killed run's write-backs take
    version numbers too; not the wall time)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [[float(row[c]) for c in METRIC_VALUES] for row in csv.DictReader(f)]


def resume_and_compare(run_dir: Path, fits: Path, trained: tuple[Path, Path], rows: set, capsys, start: str,
                       run_id: str) -> None:
    """`fitloop train --resume` in this process; it must start at ``start`` and end as the uninterrupted run: the
    same fits, weights and metrics, every row committed before the kill kept, every checkpoint of ``run_id``."""
    whole_run, whole_fits = trained
    capsys.readouterr()
    with one_thread():
        assert fitloop(["train", "--run-dir", str(run_dir), "--resume", "--no-progress"]) == 0
    assert start in capsys.readouterr().err
    assert rows <= committed_rows(fits)
    assert_same_fits(best_fits(fits), best_fits(whole_fits))
    final, whole = load_checkpoint(latest_checkpoint(run_dir)), load_checkpoint(latest_checkpoint(whole_run))
    assert final["step"] == whole["step"] == 3
    for name, value in whole["model"].items():
        torch.testing.assert_close(final["model"][name], value, atol=WEIGHTS_ATOL, rtol=WEIGHTS_RTOL)
    np.testing.assert_allclose(_metric_values(run_dir), _metric_values(whole_run), rtol=1e-3, atol=1e-3)
    assert {load_checkpoint(p)["run_id"] for p in checkpoint_dir(run_dir).glob("*.pt")} == {run_id}


def test_training_killed_before_its_first_checkpoint_resumes_from_its_start(shards, trained, tmp_path, capsys):
    """Killed right after its seed commit, before the step-0 checkpoint: --resume starts it over (same run id and
    config); its seeding appends nothing more, and it ends as the uninterrupted run."""
    fits, run_dir = tmp_path / "fits", tmp_path / "run"
    killed_at(train_argv(shards, fits, run_dir, "killed"), "fits.commit", 1)
    assert latest_checkpoint(run_dir) is None
    rows = committed_rows(fits)
    assert {row[1] for row in rows} == {"seed"} and len(rows) == 16
    resume_and_compare(run_dir, fits, trained, rows, capsys, "stopped before its first checkpoint", "killed")
    assert len([r for r in committed_rows(fits) if r[1] == "seed"]) == 16  # seeded once


def test_a_new_run_over_an_old_one_killed_after_its_first_write_back_resumes_itself(shards, trained, tmp_path,
                                                                                    capsys):
    """The issue's two cases. A run killed between its first fits write-back and its first checkpoint could not be
    resumed, and started again ended with other fits; a run started again (without --resume) in a used folder,
    killed, then resumed, loaded the old run's latest checkpoint and said "resuming". Now the new run is refused
    without --overwrite; with it the old run's files go, the run saves a checkpoint at step 0, and the resume
    continues the new run from there to the uninterrupted run's result."""
    whole_run, _ = trained
    run_dir, fits = tmp_path / "run", tmp_path / "fits"
    shutil.copytree(whole_run, run_dir)  # run "whole", finished at step 3
    argv = [str(a) for a in train_argv(shards, fits, run_dir, "again")]
    capsys.readouterr()
    assert fitloop(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds run whole" in err and "--resume" in err and "--overwrite" in err
    assert not fits.exists()  # refused before anything was written
    killed_at(argv + ["--overwrite"], "fits.commit", 2)  # after its first write-back, before that checkpoint
    assert [load_checkpoint(p)["step"] for p in checkpoint_dir(run_dir).glob("*.pt")] == [0]
    rows = committed_rows(fits)
    assert {row[1] for row in rows} == {"seed", "loop"}
    resume_and_compare(run_dir, fits, trained, rows, capsys, "resuming from step-000000000.pt", "again")
    assert set(pc.unique(FitsTable.open(fits).log()["run_id"]).to_pylist()) == {"again"}


def test_a_malformed_kill_request_is_one_line_not_a_silent_run(tmp_path, capsys, monkeypatch):
    """A kill point asked for by a name no writer has would let a kill case pass without killing anything."""
    three_versions(tmp_path / "fits")
    monkeypatch.setenv(KILL_AFTER_ENV, "fits.compat:1")
    expect_error(capsys, ["fits", "compact", tmp_path / "fits"], KILL_AFTER_ENV, "'fits.compat:1'", "fits.compact",
                 "unset it")
