"""The trainer under torchrun: two CPU processes (Gloo) train a tiny run, and every rank's record (tests/ddp_train.py)
shows the distributed contract: disjoint samples per epoch, the same initial and final weights on both ranks,
different dropout streams and augmentation draws, fits written once (seed fits by rank 0 only, each loop fit by the rank that made it),
and each rank's fits store equal to the table's best view without reading back its own writes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch

from fits.store import FitsStore
from fits.table import FitsTable
from fitting.smplify import SMPLifyConfig
from training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
WORLD = 2


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A 2-process run: 2 datasets × 8 training samples in shards of 2 (each rank reads half of each dataset's
    shards), batch 2, 2 steps per epoch, 2 epochs; an empty fits table (rank 0 seeds it)."""
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("ddp")
    write_synthetic_shards(root, [DatasetSpec("synth-h36m", "train", 8, smpl=True, joints_3d=True),
                                  DatasetSpec("synth-wild", "train", 8, smpl=True, joints_3d=True),
                                  DatasetSpec("synth-h36m", "test", 2, smpl=True, joints_3d=True)],
                           res=48, samples_per_shard=2, seed=4)
    config = TrainConfig(shards=(str(root / "shards"),), fits=str(root / "fits"), run_dir=str(root / "run"),
                         run_id="ddp-run", backbone=18, img_res=32, batch_size=2, epochs=2, steps_per_epoch=2,
                         num_workers=0, body_model="open-small", mix="synth-h36m=0.5;*=0.5",
                         smplify=SMPLifyConfig(body_iterations=5), checkpoint_every=100, log_every=1,
                         shuffle_buffer=4, tensorboard=False, device="cpu")
    (root / "config.json").write_text(config.to_json())
    (root / "out").mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(WORLD), str(REPO / "tests" / "ddp_train.py"), str(root / "config.json"),
                           str(root / "out")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((root / "out" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    weights = [torch.load(root / "out" / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return root, config, ranks, weights


def test_ranks_train_disjoint_samples_with_their_own_dropout_and_the_same_weights(ddp_run):
    _, config, ranks, weights = ddp_run
    for epoch in range(config.epochs):
        keys = [[k for b in r["batches"] if b["epoch"] == epoch for k in b["keys"]] for r in ranks]
        assert [len(k) for k in keys] == [config.steps_per_epoch * config.batch_size] * WORLD
        assert not set(keys[0]) & set(keys[1]), f"epoch {epoch}: both ranks trained on {set(keys[0]) & set(keys[1])}"
    assert ranks[0]["initial_weights"] == ranks[1]["initial_weights"]   # one initialisation
    assert ranks[0]["rng"] != ranks[1]["rng"]                           # dropout: seed + rank
    # augmentation: drawn per rank (training.data: seeded by (seed, epoch, rank·W + worker)), not per sample, so
    # ranks that shared a seed would draw the same scales, rotations and flips batch by batch
    draws = [[b["augment"] for b in r["batches"]] for r in ranks]
    assert all(a != b for a, b in zip(*draws)), draws
    for name, value in weights[0].items():                              # DDP kept them in step
        torch.testing.assert_close(weights[1][name], value, rtol=0, atol=0, msg=name)
    assert [r["summary"]["step"] for r in ranks] == [config.epochs * config.steps_per_epoch] * WORLD


def test_fits_are_written_once_and_every_store_is_the_tables_best_view(ddp_run):
    root, config, ranks, _ = ddp_run
    table = FitsTable.open(root / "fits")
    log = table.log()
    seeds = log.filter(pc.equal(log["source"], "seed"))
    assert seeds.num_rows == 16 == len(set(seeds["key"].to_pylist()))          # rank 0 seeded, once per key
    loop = log.filter(pc.equal(log["source"], "loop"))
    made = list(zip(*(loop[c].to_pylist() for c in ("key", "epoch", "step"))))
    assert len(made) == len(set(made))                                          # each loop fit written once
    trained = [{(k, b["epoch"]) for b in r["batches"] for k in b["keys"]} for r in ranks]
    assert all(((k, e) in trained[0]) != ((k, e) in trained[1]) for k, e, _ in made)  # by the rank that trained it
    checkpoints = sorted(p.name for p in (root / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-000000000.pt", "step-000000002.pt", "step-000000004.pt"]  # rank 0: step 0, epoch ends
    metrics = (root / "run" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 1 + config.epochs                                # header, seed, each epoch: once
    best = FitsStore.load(table, _body_id(log))
    truth = dict(zip(*best.view().log(columns=["key", "loss"]).to_pydict().values()))
    by_rank = [sum(((k, e) in trained[r]) for k, e, _ in made) for r in range(WORLD)]
    for r, record in enumerate(ranks):
        assert record["store_version"] == record["summary"]["fits_version"] == table.versions()[-1]["version"]
        assert record["store"] == truth
        # read once at the start, after rank 0 seeded (the 16 seed fits), then only the other rank's new rows
        assert record["summary"]["fits_rows_read"] == 16 + by_rank[1 - r]


def _body_id(log) -> str:
    (body_model_id,) = set(log["body_model_id"].to_pylist())
    return body_model_id
