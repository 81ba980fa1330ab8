"""A training run folder used by another run: a new run there is refused without --overwrite, and a resume refuses
a checkpoint of another run than the folder's (issue 13; `training.run_folder`). Each refusal is one line that names
the folder, the runs and what to do, before anything is written. (Killed runs and their resume:
test_fault_kills.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from faultcheck import expect_error

from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.run_folder import RUN_FILE, RunFolderError, check_new_run, claim, resume_point

FAULT_CLASS = "a run folder used by another run, or a checkpoint of another run"


def config_of(run_id: str, run_dir: Path) -> TrainConfig:
    return TrainConfig(shards=("shards",), fits="fits", run_dir=str(run_dir), run_id=run_id)


def used_folder(run_dir: Path, owner: str, checkpoint_of: str | None = None, step: int = 3) -> Path:
    """A run folder claimed by run ``owner`` with one checkpoint (of run ``checkpoint_of``, default the owner)."""
    claim(run_dir, config_of(owner, run_dir))
    run_id = checkpoint_of or owner
    save_checkpoint(run_dir, {"step": step, "epoch": 0, "batch": step, "run_id": run_id, "fits_version": 1,
                              "config": config_of(run_id, run_dir).to_dict(), "world_size": 1})
    return run_dir


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def test_a_new_run_in_a_used_folder_is_refused_without_overwrite(tmp_path, capsys):
    run_dir = used_folder(tmp_path / "run", "run-a")
    before = snapshot(run_dir)
    expect_error(capsys, ["train", "--shards", tmp_path / "s", "--fits", tmp_path / "f", "--run-dir", run_dir],
                 str(run_dir), "holds run run-a", "checkpoints", "--resume", "--overwrite", "another --run-dir")
    assert snapshot(run_dir) == before and not (tmp_path / "f").exists()


def test_a_folder_an_earlier_fitloop_trained_in_counts_as_used(tmp_path, capsys):
    """A run folder from before run.json (a config and checkpoints only) is another run's too."""
    run_dir = used_folder(tmp_path / "run", "old")
    (run_dir / RUN_FILE).unlink()
    expect_error(capsys, ["train", "--shards", "s", "--fits", "f", "--run-dir", run_dir],
                 "holds an earlier run", "--overwrite")


def test_a_resume_refuses_a_checkpoint_of_another_run_naming_both(tmp_path, capsys):
    run_dir = used_folder(tmp_path / "run", "run-a", checkpoint_of="run-b")
    before = snapshot(run_dir)
    expect_error(capsys, ["train", "--run-dir", run_dir, "--resume"],
                 "step-000000003.pt is a checkpoint of run run-b", "belongs to run run-a", "--overwrite")
    assert snapshot(run_dir) == before
    with pytest.raises(RunFolderError, match="run run-b.*run run-a"):  # the library, as the flows call it
        resume_point(run_dir)


def test_a_damaged_run_file_is_one_line_naming_it(tmp_path, capsys):
    run_dir = used_folder(tmp_path / "run", "run-a")
    (run_dir / RUN_FILE).write_text('{"format": "fitloop-run", "run_')
    expect_error(capsys, ["train", "--run-dir", run_dir, "--resume"], str(run_dir / RUN_FILE), "unreadable",
                 "--overwrite")


def test_a_run_stopped_before_its_first_checkpoint_needs_its_config(tmp_path, capsys):
    run_dir = tmp_path / "run"
    claim(run_dir, config_of("run-a", run_dir))
    assert resume_point(run_dir).checkpoint is None  # it starts over, with its config
    (run_dir / "config.json").unlink()
    expect_error(capsys, ["train", "--run-dir", run_dir, "--resume"], str(run_dir / "config.json"), "missing",
                 "run run-a", "--overwrite")


@pytest.mark.parametrize("make", ["missing", "empty", "file", "start killed"])
def test_resume_or_start_where_there_is_no_run_folder(tmp_path, capsys, make):
    run_dir = tmp_path / "run"
    if make == "empty":
        run_dir.mkdir()
    elif make == "start killed":  # between config.json and run.json: neither a run to resume nor a free folder
        claim(run_dir, config_of("run-a", run_dir))
        (run_dir / RUN_FILE).unlink()
        expect_error(capsys, ["train", "--run-dir", run_dir, "--resume"], str(run_dir), "no checkpoint",
                     "start it again with --overwrite")
        return
    elif make == "file":
        run_dir.write_text("not a folder")
        expect_error(capsys, ["train", "--shards", "s", "--fits", "f", "--run-dir", run_dir], str(run_dir),
                     "is a file", "--run-dir")
        return
    expect_error(capsys, ["train", "--run-dir", run_dir, "--resume"], str(run_dir), "no checkpoint to resume",
                 "without --resume")


def test_overwrite_deletes_only_the_old_runs_files_and_claims_the_folder(tmp_path):
    run_dir = used_folder(tmp_path / "run", "run-a")
    for name in ("metrics.csv", "train_log.csv", "curves.png"):
        (run_dir / name).write_text("old")
    (run_dir / "notes.txt").write_text("mine")
    check_new_run(run_dir, overwrite=True)
    claim(run_dir, config_of("run-b", run_dir), overwrite=True)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "notes.txt", "run.json"]
    assert json.loads((run_dir / RUN_FILE).read_text())["run_id"] == "run-b"
    with pytest.raises(RunFolderError, match="belongs to run run-b"):  # a second start racing the first
        claim(run_dir, config_of("run-c", run_dir))


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("run-folder-shards")
    write_synthetic_shards(root, [DatasetSpec("synth-wild", "train", 4, openpose=True)], res=32, samples_per_shard=4,
                           seed=5)
    return root / "shards"


def test_a_start_refused_by_its_inputs_leaves_no_run_folder(tmp_path, capsys, tiny_shards):
    """A start that its inputs refuse — a --fits folder holding another Delta table, a --mix that does not parse —
    writes no run folder, so the next start with the inputs mended is not refused as another run's folder."""
    import pyarrow as pa
    from deltalake import write_deltalake

    other = tmp_path / "other-table"
    write_deltalake(str(other), pa.table({"a": [1, 2]}))
    run_dir = tmp_path / "run"
    args = ["train", "--shards", tiny_shards, "--run-dir", run_dir, "--body-model", "open-small", "--backbone", "18",
            "--img-res", "32", "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "1", "--num-workers", "0",
            "--no-seed-fits", "--no-smplify", "--no-tensorboard", "--no-progress", "--eval-splits", "none"]
    expect_error(capsys, [*args, "--fits", other], str(other), "not the fits schema's")
    assert not run_dir.exists()
    expect_error(capsys, [*args, "--fits", tmp_path / "fits", "--mix", "foo"], "mix 'foo'",
                 "is not 'dataset[,dataset...]=share'")
    assert not run_dir.exists() and not (tmp_path / "fits").exists()
    from fitloop.cli import main

    (tmp_path / "fits").mkdir()                  # an empty folder is a place for a new table, as it always was
    assert main([str(a) for a in [*args, "--fits", tmp_path / "fits"]]) == 0      # mended: it starts
    assert (run_dir / RUN_FILE).is_file()


def test_eval_splits_the_sets_do_not_hold_are_refused_not_a_run_without_evaluation(tmp_path, capsys, tiny_shards):
    """--eval-splits vall (a typo) turned evaluation off with one word in the run's first line; the default's
    absence (sets without val or test) stays the usual case."""
    args = ["train", "--shards", tiny_shards, "--run-dir", tmp_path / "run", "--fits", tmp_path / "fits",
            "--body-model", "open-small", "--backbone", "18", "--img-res", "32", "--batch-size", "2", "--epochs", "1",
            "--steps-per-epoch", "1", "--num-workers", "0", "--no-tensorboard", "--no-progress"]
    expect_error(capsys, [*args, "--eval-splits", "vall"], "--eval-splits vall", "hold no such split",
                 "(they hold train)", "'none'")
    assert not (tmp_path / "run").exists()


def test_weights_that_are_no_longer_finite_are_not_saved(tmp_path, capsys, tiny_shards, monkeypatch):
    """A run that diverges (here: every Adam step leaves a NaN weight) stops in one line at its checkpoint instead
    of saving NaN weights that a resume, predict and eval would read as a network (eval printed MPJPE nan)."""
    import torch

    step = torch.optim.Adam.step

    def diverging(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", diverging)
    from fitloop.cli import main

    run_dir = tmp_path / "run"
    capsys.readouterr()
    assert main([str(a) for a in ["train", "--shards", tiny_shards, "--run-dir", run_dir, "--fits", tmp_path / "fits",
                                  "--body-model", "open-small", "--backbone", "18", "--img-res", "32", "--batch-size",
                                  "2", "--epochs", "1", "--steps-per-epoch", "1", "--num-workers", "0", "--no-smplify",
                                  "--no-tensorboard", "--no-progress", "--eval-splits", "none"]]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("fitloop: error: step 1: training diverged")
    assert "step-000000000.pt, holds finite weights). Start again with a lower --lr (--overwrite" in last
    assert [p.name for p in (run_dir / "checkpoints").glob("*.pt")] == ["step-000000000.pt"]   # the start only


@pytest.mark.parametrize("option, value, said", [("--device", "bogus", "not a device torch knows"),
                                                 ("--smplify-device", "bogus", "not a device torch knows"),
                                                 ("--device", "meta", "not on 'meta' devices")])
def test_a_device_torch_cannot_use_is_refused_before_the_run(tmp_path, capsys, tiny_shards, option, value, said):
    """--device bogus was torch's RuntimeError from deep in the start (an internal error); --device cuda on a
    machine without a GPU trained on the CPU without a word (core.devices.parse_device, its own tests in
    tests/test_predict_eval_errors.py, covers that case)."""
    expect_error(capsys, ["train", "--shards", tiny_shards, "--run-dir", tmp_path / "run", "--fits", tmp_path / "f",
                          "--body-model", "open-small", "--backbone", "18", "--img-res", "32", option, value],
                 option, value, said)
    assert not (tmp_path / "run").exists()
