"""Checks every regressor head's tests share (tests/test_volumetric.py, test_graphcmr.py, test_training_masks.py):
a tiny batch supervised by its ground truth, Adam steps on it, and a checkpoint that round-trips into a fresh run's
network."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import default_collate

from shards.reader import ReaderConfig, ShardReader
from training.checkpoint import latest_checkpoint, load_checkpoint
from training.heads import head_of
from training.step import Batch, Targets, compute_losses, predict


def supervised_batch(shards: Path, head: str, samples: int = 8, img_res: int = 32) -> tuple[Batch, Targets]:
    """The first ``samples`` training samples of ``shards`` as the head's batch, with targets that treat every
    sample's ground-truth pose and betas as its fit (all valid)."""
    reader = ShardReader(shards, ReaderConfig(img_res=img_res, splits=("train",), shuffle_buffer=0))
    items = default_collate(list(reader)[:samples])
    batch = Batch.from_items(items, torch.device("cpu"), head=head_of(head))
    valid = torch.ones(len(batch.keys), dtype=torch.bool)
    return batch, Targets(pose=batch.gt_pose, betas=batch.gt_betas, valid=valid, has_smpl=valid,
                          has_3d=batch.has_3d, filtered=~valid)


def adam_steps(model: torch.nn.Module, body, batch: Batch, targets: Targets, steps: int, lr: float,
               weights, **losses) -> list[dict]:
    """``steps`` Adam steps of the step's losses (`training.step.compute_losses` with ``weights`` and ``losses``,
    e.g. ``mask_loss``) on one batch, float32; each step's loss terms (detached)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        pred = predict(model, body, batch.inputs, torch.autocast("cpu", enabled=False))
        loss, terms = compute_losses(pred, targets, batch, weights, body, **losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(terms)
    return history


def assert_checkpoint_round_trips(run_dir: Path, head: str, network: type, again: Path) -> dict:
    """The latest checkpoint of ``run_dir`` says it holds ``head``, and a new run set up from its config (in
    ``again``) builds a ``network`` that loads its weights exactly; returns the checkpoint."""
    from training.config import TrainConfig
    from training.loop import setup

    data = load_checkpoint(latest_checkpoint(run_dir))
    assert data["head"] == head and data["config"]["head"] == head
    run = setup(TrainConfig.from_dict(dict(data["config"], run_dir=str(again))))
    try:
        run.raw_model.load_state_dict(data["model"])
        assert isinstance(run.raw_model, network)
        for key, value in run.raw_model.state_dict().items():
            assert torch.equal(value, data["model"][key]), key
    finally:
        run.log.close()
    return data
