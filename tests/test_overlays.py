"""The network's meshes over held-out crops (`training.overlays`): the camera is the one training projects with,
the grid is written as a PNG and, with the ``tensorboard`` extra installed, as an image read back from the event
file by TensorBoard's own EventAccumulator."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.joints import JOINT_INDEX
from fitting.body_model import load_body_model
from fitting.priors import MaxMixturePrior
from shards.augment import AugmentConfig, normalize_image
from shards.reader import ReaderConfig, ShardReader
from training.config import TrainConfig
from training.geometry import project_normalised
from training.heads import head_of
from training.overlays import OVERLAY_SAMPLES, crop_camera, crop_image, first_items, overlay_grid
from training.regressor import mean_params_from_prior
from training.run_log import OVERLAYS_TAG, RunLog, overlay_path
from training.step import predict

RES = 32
PELVIS = JOINT_INDEX["OP MidHip"]   # the kinematic pelvis: inside the body, so drawn wherever the body is


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> dict:
    """The first `OVERLAY_SAMPLES` of 6 synthetic held-out crops (5 people per shard: the batch spans shards)."""
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("overlays")
    write_synthetic_shards(root, [DatasetSpec("synth-h36m", "test", 10, smpl=True, joints_3d=True)], res=64,
                           samples_per_shard=5, seed=4)
    reader = ShardReader([root / "shards"], ReaderConfig(img_res=RES, augment=AugmentConfig(enabled=False),
                                                         shuffle_shards=False, shuffle_buffer=0, splits=("test",)))
    loader = torch.utils.data.DataLoader(reader, batch_size=3, num_workers=0)
    return first_items(loader, OVERLAY_SAMPLES)


@pytest.fixture(scope="module")
def network():
    config = TrainConfig(body_model="open-small", backbone=18, img_res=RES)
    body = load_body_model("open-small")
    torch.manual_seed(0)
    model = head_of("hmr").build(mean_params_from_prior(MaxMixturePrior.from_file(config.pose_prior),
                                                        body.num_betas), config)
    return model, body


def test_first_items_takes_the_first_examples_across_batches(held_out):
    assert len(held_out["img"]) == len(held_out["key"]) == OVERLAY_SAMPLES
    assert held_out["key"] == sorted(held_out["key"]) and len(set(held_out["key"])) == OVERLAY_SAMPLES


def test_the_crop_camera_is_the_projection_training_fits_with(held_out, network):
    """SPIN's training projection (normalised, crop edges at ±1: `project_normalised`) put in crop px with centres
    at integers, ``(k + 1)·res/2 - 0.5``, is the crop camera the overlays draw with; and a crop round-trips."""
    model, body = network
    with torch.no_grad():
        pred = predict(model.eval(), body, head_of("hmr").arguments(held_out, torch.device("cpu")),
                       contextlib.nullcontext())
    normalised = project_normalised(pred.joints, pred.cam_t).double().numpy()
    drawn = crop_camera(RES).project((pred.joints + pred.cam_t[:, None]).double().numpy())
    np.testing.assert_allclose(drawn, (normalised + 1.0) * RES / 2 - 0.5, atol=1e-6)
    pixels = np.random.default_rng(0).integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    restored = crop_image(torch.from_numpy(normalize_image(pixels, (1.0, 1.0, 1.0))))
    assert np.array_equal(np.asarray(restored), pixels)


def test_the_grid_draws_each_crops_mesh_and_is_written_as_png(held_out, network, tmp_path):
    model, body = network
    model.train()
    grid = overlay_grid(model, body, held_out, torch.device("cpu"), contextlib.nullcontext(), head_of("hmr"), RES)
    assert model.training   # put back
    gap, columns, rows = 4, 4, 2
    assert grid.size == (columns * RES + (columns - 1) * gap, rows * RES + (rows - 1) * gap)
    with torch.no_grad():
        pred = predict(model.eval(), body, head_of("hmr").arguments(held_out, torch.device("cpu")),
                       contextlib.nullcontext())
    pelvis = np.rint(crop_camera(RES).project((pred.joints + pred.cam_t[:, None])[:, PELVIS].double().numpy()))
    cells = np.asarray(grid).astype(int)
    for i, img in enumerate(held_out["img"]):
        r, c = divmod(i, columns)
        cell = cells[r * (RES + gap):r * (RES + gap) + RES, c * (RES + gap):c * (RES + gap) + RES]
        mesh = (cell != np.asarray(crop_image(img)).astype(int)).any(axis=-1)
        assert 0.02 < mesh.mean() < 0.9, i   # a body in the crop, the crop around it
        u, v = pelvis[i].astype(int)
        assert mesh[v, u], i                 # where the network's pelvis projects
    log = RunLog(tmp_path, tensorboard=False)
    path = log.log_overlays(12, grid)
    assert path == overlay_path(tmp_path, 12) == tmp_path / "overlays" / "step_0000012.png"
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(grid))
    assert RunLog(tmp_path / "rank1", tensorboard=False, enabled=False).log_overlays(12, grid) is None


def test_tensorboard_holds_each_evaluations_grid(held_out, network, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    model, body = network
    grid = overlay_grid(model, body, held_out, torch.device("cpu"), contextlib.nullcontext(), head_of("hmr"), RES)
    log = RunLog(tmp_path, tensorboard=True)
    assert log.writer is not None
    for step in (0, 3):
        log.log_overlays(step, grid)
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={IMAGES: 0})
    events.Reload()
    images = events.Images(OVERLAYS_TAG)
    assert [e.step for e in images] == [0, 3]
    for event in images:
        assert (event.width, event.height) == grid.size
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")),
                              np.asarray(grid))
    assert Path(overlay_path(tmp_path, 3)).is_file()
