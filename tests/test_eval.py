"""`fitloop eval`: a checkpoint's network on shards under a protocol; it reproduces the trainer's own evaluation."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from fitloop.cli import main
from pipelines.adapters import iter_dataset
from pipelines.synthetic import SynthConfig, generate
from shards.writer import ShardConfig, write_shards
from training.config import TrainConfig
from training.evaluate import H36M_FRONTAL, PROTOCOLS

ACTIONS = ("Directions 1", "Walking")


@pytest.fixture(scope="module")
def h36m_shards(tmp_path_factory) -> Path:
    """Human3.6M S1 (train) and S9 (test), two actions, frames 0 and 5 of each camera: 16 + 16 samples."""
    root = tmp_path_factory.mktemp("eval")
    data = generate(root / "data", SynthConfig(seed=2, datasets=("h36m",), h36m_subjects=("S1", "S9"),
                                               h36m_actions=ACTIONS, h36m_frames=10, h36m_frame_step=5,
                                               h36m_image_size=(160, 160)))["h36m"]
    records = [r for split in ("train", "test") for r in iter_dataset("h36m", data, split)]
    write_shards(records, root / "shards", ShardConfig(crop_res=64))
    return root / "shards"


def test_eval_of_the_last_checkpoint_is_the_trainers_last_evaluation(h36m_shards, tmp_path, capsys):
    from training.loop import train

    torch.set_num_threads(1)
    config = TrainConfig(shards=(str(h36m_shards),), fits=str(tmp_path / "fits"), run_dir=str(tmp_path / "run"),
                         run_id="eval-run", head="keypoints", img_res=32, batch_size=4, epochs=1, steps_per_epoch=3,
                         num_workers=0, body_model="open-small", mix="*=1", run_smplify=False, checkpoint_every=100,
                         log_every=1, shuffle_buffer=8, tensorboard=False, lr=1e-4)
    train(config, progress=False)
    with open(tmp_path / "run" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1]
    assert main(["eval", str(checkpoint), "--shards", str(h36m_shards), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["head"] == "keypoints" and record["read"] == 32 and record["kept"] == 16   # S9 is the test split
    every = record["errors"]["all"]
    assert every["samples"] == int(last["net_samples"]) == 16
    assert every["mpjpe_mm"] == pytest.approx(float(last["net_mpjpe_mm"]), abs=0.01)
    assert every["pa_mpjpe_mm"] == pytest.approx(float(last["net_pa_mpjpe_mm"]), abs=0.01)
    # protocol 2 keeps the frontal camera's samples only; protocol 1 all four cameras' (every 5th frame both)
    assert main(["eval", str(checkpoint), "--shards", str(h36m_shards), "--protocol", "h36m-p2", "--json"]) == 0
    p2 = json.loads(capsys.readouterr().out)
    assert p2["kept"] == p2["errors"]["all"]["samples"] == len(ACTIONS) * 2
    assert main(["eval", str(checkpoint), "--shards", str(h36m_shards), "--protocol", "h36m-p1"]) == 0
    assert "16 kept by the protocol" in capsys.readouterr().out


def test_protocols_select_by_the_samples_own_metadata():
    sample = {"dataset": "h36m", "split": "test", "extra": {"subject": "S9", "camera": H36M_FRONTAL, "frame": 10}}
    assert PROTOCOLS["h36m-p2"].keep(sample) and PROTOCOLS["h36m-p1"].keep(sample)
    for change in ({"camera": "54138969"}, {"frame": 11}, {"subject": "S1"}):
        moved = {**sample, "extra": {**sample["extra"], **change}}
        assert not PROTOCOLS["h36m-p2"].keep(moved), change
    assert PROTOCOLS["h36m-p1"].keep({**sample, "extra": {**sample["extra"], "camera": "54138969"}})
    assert not PROTOCOLS["h36m-p2"].keep({**sample, "split": "train"})
    assert PROTOCOLS["mpi-inf-3dhp"].keep({"dataset": "mpi-inf-3dhp", "split": "test", "extra": {}})


def test_eval_refuses_a_file_that_is_no_checkpoint(tmp_path, capsys):
    (tmp_path / "x.pt").write_bytes(b"junk")
    assert main(["eval", str(tmp_path / "x.pt"), "--shards", str(tmp_path)]) != 0
    assert "cannot be read as a checkpoint (neither a zip archive nor a pickle" in capsys.readouterr().err
