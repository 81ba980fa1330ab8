"""DSR's semantic losses on the network's predicted mesh (issue 15, item 4; `training.dsr_loss`).

Checked against the outside's picture of a person: the z-buffer rasteriser (`render.raster`, the synthetic
generator's renderer) draws each mesh into its exact part labels (the drawn face's SMPL segment,
`fitting.dsr.face_segments`, the generator's rule). DSR-MC of that mesh is low and lowest at the truth; DSR-C is 0
inside a larger region and grows outside it; gradients reach the vertices; samples without labels add nothing; part
tables are mapped by name or refused; and a run with all three image losses trains on synthetic shards with parts.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from core.errors import FitloopError
from core.frames import FIT_RES
from core.joints import SMPL_JOINT_NAMES
from fits.seeding import SeedConfig, seed_fits
from fitting.body_model import load_body_model
from fitting.dsr import MC_PARTS, face_segments
from fitting.smplify import SMPLifyConfig
from render.raster import rasterize
from shards.masks import UNKNOWN
from shards.reader import ReaderConfig, ShardReader
from training.config import TrainConfig
from training.dsr_loss import (
    PartLabelError,
    clothed_region,
    dsr_c_loss,
    dsr_mc_loss,
    minimally_clothed_regions,
    smpl_part_ids,
)
from training.mask_loss import MaskConsistency, grid_res, mask_camera

SMPL_TABLE = json.dumps(["background", *SMPL_JOINT_NAMES])


@pytest.fixture(scope="module")
def body():
    return load_body_model("open-small")


@pytest.fixture(scope="module")
def picture(body):
    return MaskConsistency.from_faces(body.faces, skinning_weights=body.layer.lbs_weights)


@pytest.fixture(scope="module")
def people(body):
    """Six synthetic people (model-frame vertices, cam_t) and their exact 224 px SMPL-segment labels."""
    from bench.synthetic_shards import sample_people

    found = sample_people(body, 6, np.random.default_rng(5))
    focal, center = mask_camera(FIT_RES)
    segment = np.concatenate([face_segments(body.faces, body.layer.lbs_weights).numpy() + 1, [0]])
    labels = [segment[rasterize(v + t, body.faces, np.zeros((len(body.faces), 3)), focal, (center, center),
                                (FIT_RES, FIT_RES))[1]] for v, t in zip(found["vertices"], found["cam_t"])]
    return (torch.tensor(found["vertices"], dtype=torch.float32), torch.tensor(found["cam_t"], dtype=torch.float32),
            torch.from_numpy(np.stack(labels).astype(np.uint8)))


def _losses(picture, vertices, cam_t, parts, region, has):
    drawn = picture.draw(vertices, cam_t, parts=True)
    return float(dsr_mc_loss(drawn.parts, parts, has)), float(dsr_c_loss(drawn.mask, region, has))


def test_a_mesh_drawn_into_its_own_labels_has_the_lowest_losses(picture, people):
    vertices, cam_t, parts = people
    region, has = (parts > 0).to(torch.uint8), torch.ones(6, dtype=torch.bool)
    mc, c = _losses(picture, vertices, cam_t, parts, region, has)
    assert mc < 0.12 and c < 0.02                                        # measured: 0.079 and 0.005
    for dx in (0.01, 0.03):                                              # m, sideways
        shifted_mc, shifted_c = _losses(picture, vertices, cam_t + torch.tensor([dx, 0.0, 0.0]), parts, region, has)
        assert shifted_mc > mc + 0.05 and shifted_c > c + 0.02
    for scale in (0.96, 1.04):
        assert _losses(picture, vertices * scale, cam_t, parts, region, has)[0] > mc + 0.05
    # a hand drawn where the image shows the other hand is a miss: swapping left and right labels costs
    swap = torch.arange(256)
    for i, name in enumerate(SMPL_JOINT_NAMES):
        if name.startswith("left_"):
            j = SMPL_JOINT_NAMES.index("right_" + name[5:])
            swap[i + 1], swap[j + 1] = j + 1, i + 1
    assert _losses(picture, vertices, cam_t, swap[parts.long()].to(torch.uint8), region, has)[0] > mc + 0.1


def test_dsr_c_is_zero_inside_a_larger_region_and_grows_outside_it(picture, people):
    vertices, cam_t, parts = people
    has = torch.ones(6, dtype=torch.bool)
    loose = (F.max_pool2d((parts > 0).float()[:, None], 17, 1, 8)[:, 0] > 0).to(torch.uint8)   # 8 px wider
    drawn = picture.draw(vertices, cam_t)
    assert float(dsr_c_loss(drawn.mask, loose, has)) == 0.0
    outside = [float(dsr_c_loss(picture.draw(vertices, cam_t + torch.tensor([dx, 0.0, 0.0])).mask, loose, has))
               for dx in (0.15, 0.3)]  # m: ~15 and ~30 px at 224
    assert 0 < outside[0] < outside[1]
    # one-sided: a body that fills only part of the region costs nothing (a thin body in loose clothes)
    assert float(dsr_c_loss(picture.draw(vertices * 0.9, cam_t).mask, loose, has)) == 0.0


def test_gradients_reach_the_vertices_and_move_the_mesh_back(picture, people):
    vertices, cam_t, parts = people
    region, has = (parts > 0).to(torch.uint8), torch.ones(6, dtype=torch.bool)
    moved = (vertices + torch.tensor([0.02, 0.0, 0.0])).requires_grad_(True)
    drawn = picture.draw(moved, cam_t, parts=True)
    (dsr_mc_loss(drawn.parts, parts, has) + dsr_c_loss(drawn.mask, region, has)).backward()
    grad = moved.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert float(grad[..., 0].sum()) > 0                # descent moves the shifted bodies back (−x)
    for loss in (lambda d: dsr_mc_loss(d.parts, parts, has), lambda d: dsr_c_loss(d.mask, region, has)):
        one = vertices.clone().requires_grad_(True)
        loss(picture.draw(one + torch.tensor([0.02, 0.0, 0.0]), cam_t, parts=True)).backward()
        assert one.grad.abs().sum() > 0                 # each term alone reaches the vertices


def test_samples_without_labels_contribute_nothing(picture, people):
    vertices, cam_t, parts = people
    has = torch.tensor([True, True, True, False, False, False])
    garbage = parts.clone()
    garbage[3:] = 7                                                       # labels of samples said to have none
    drawn = picture.draw(vertices, cam_t, parts=True)
    first = picture.draw(vertices[:3], cam_t[:3], parts=True)
    assert float(dsr_mc_loss(drawn.parts, garbage, has)) == pytest.approx(
        float(dsr_mc_loss(first.parts, parts[:3], has[:3])), abs=1e-6)
    region = (garbage > 0).to(torch.uint8)
    assert float(dsr_c_loss(drawn.mask, region, has)) == pytest.approx(
        float(dsr_c_loss(first.mask, region[:3], has[:3])), abs=1e-6)
    none = torch.zeros(6, dtype=torch.bool)
    moved = vertices.clone().requires_grad_(True)
    drawn = picture.draw(moved, cam_t, parts=True)
    total = dsr_mc_loss(drawn.parts, garbage, none) + dsr_c_loss(drawn.mask, region, none)
    assert float(total.detach()) == 0.0 and total.requires_grad                 # graph kept: backward works
    total.backward()


def test_only_fully_known_cells_weigh_in_dsr_mc():
    # 8 px labels at a 4 px grid: cells of 2 × 2. A hand beside a forearm (unknown to DSR-MC), on a background.
    hand, forearm = 1 + SMPL_JOINT_NAMES.index("left_wrist"), 1 + SMPL_JOINT_NAMES.index("left_elbow")
    labels = torch.zeros(1, 8, 8, dtype=torch.uint8)
    labels[0, 2:6, 3:5] = hand
    labels[0, 2:6, 5] = forearm                                           # cuts cells of column 2 in half
    labels[0, 0, :] = UNKNOWN
    fraction, weight = minimally_clothed_regions(labels, 4, sigma=1e-3)
    assert weight[0, 0].eq(0).all()                                       # the row with unknown pixels
    assert weight[0, 1:3, 2].eq(0).all() and weight[0, 1:3, 1].eq(1).all()   # the cut's cells / the hand's own
    left_hand = list(MC_PARTS).index("left_hand")                        # its channel (group − 1)
    assert torch.allclose(fraction[0, left_hand, 1:3, 1], torch.tensor([0.5, 0.5]), atol=0.01)   # col 3 of 2-3
    assert fraction[0, left_hand, 1:3, 0].max() < 0.01 and fraction[0, 0].max() < 0.01   # no hand; no head


def test_part_tables_are_mapped_by_name_and_unknown_names_refused():
    names = ["background", "head", "left_wrist", "pelvis"]                # a table of its own order
    parts = torch.tensor([[[0, 1, 2, 3, UNKNOWN]]], dtype=torch.uint8).expand(2, 1, 5)
    mapped = smpl_part_ids(parts, [json.dumps(names), "[]"], ["a", "b"])
    expected = [0] + [1 + SMPL_JOINT_NAMES.index(n) for n in names[1:]] + [UNKNOWN]
    assert mapped[0, 0].tolist() == expected and mapped.dtype == torch.uint8
    assert mapped[1, 0].tolist() == [0, 1, 2, 3, UNKNOWN]                 # "[]": no table, no parts (all zeros)
    same = smpl_part_ids(parts[:1], [SMPL_TABLE], ["c"])
    assert torch.equal(same, parts[:1])                                   # SMPL's own table: unchanged
    with pytest.raises(PartLabelError) as err:
        smpl_part_ids(parts, [json.dumps(["background", "torso", "head"]), SMPL_TABLE], ["coco/17", "x"])
    message = str(err.value)
    assert "sample coco/17" in message and "torso" in message and "\n" not in message
    assert isinstance(err.value, FitloopError)


def test_the_clothed_region_is_the_parsing_else_the_mask():
    mask = torch.tensor([[[0, 1, 1, UNKNOWN]]], dtype=torch.uint8).expand(3, 1, 4)
    parsing = torch.tensor([[[0, 2, 5, 1]]], dtype=torch.uint8).expand(3, 1, 4)
    region, has = clothed_region(mask, torch.tensor([True, True, False]), parsing, torch.tensor([True, False, False]))
    assert region[0, 0].tolist() == [0, 1, 1, 1] and region[1, 0].tolist() == [0, 1, 1, UNKNOWN]
    assert has.tolist() == [True, True, False]


# --- a run on synthetic shards with part labels --------------------------------------------------------------------
@pytest.fixture(scope="module")
def parts_shards(tmp_path_factory):
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("parts")
    write_synthetic_shards(root, [DatasetSpec("synth-h36m", "train", 8, smpl=True, joints_3d=True, masks=True,
                                              parts=True),
                                  DatasetSpec("synth-wild", "train", 4, smpl=True, joints_3d=True, masks=True)],
                           res=64, samples_per_shard=4, seed=3)
    return root / "shards"


def test_the_reader_gives_smpl_part_labels_that_the_ground_truth_matches(body, parts_shards):
    from core.frames import fit_frame_px
    from training.geometry import estimate_translation

    reader = ShardReader(parts_shards, ReaderConfig(img_res=64, splits=("train",), shuffle_buffer=0))
    items = default_collate(list(reader))
    has = items["has_parts"]
    assert has.sum() == 8 and set(items["parts_names"][i] for i in range(12) if has[i]) == {SMPL_TABLE}
    assert all(items["parts_names"][i] == "[]" for i in range(12) if not has[i])
    segments = smpl_part_ids(items["parts"], items["parts_names"], items["key"])
    out = body(items["betas"][has], items["pose"][has][:, 3:], items["pose"][has][:, :3])
    cam_t = estimate_translation(out.joints, fit_frame_px(items["keypoints"][has]))
    picture = MaskConsistency.from_faces(body.faces, grid_res(64), skinning_weights=body.layer.lbs_weights)
    own = float(dsr_mc_loss(picture.draw(out.vertices, cam_t, parts=True).parts, segments[has], has[has]))
    moved = float(dsr_mc_loss(picture.draw(out.vertices, cam_t + torch.tensor([0.03, 0.0, 0.0]), parts=True).parts,
                              segments[has], has[has]))
    assert own < 0.3 and moved > own + 0.1


def test_a_run_with_the_three_image_losses_logs_them(parts_shards, tmp_path):
    from training.loop import train

    smplify = SMPLifyConfig(body_iterations=5)
    seed_fits([parts_shards], tmp_path / "fits", SeedConfig(body_model="open-small", smplify=smplify),
              splits=("train",), missing_only=True)
    torch.set_num_threads(1)
    config = TrainConfig(shards=(str(parts_shards),), fits=str(tmp_path / "fits"), run_dir=str(tmp_path / "run"),
                         run_id="dsr-run", head="keypoints", img_res=32, batch_size=6, epochs=1, steps_per_epoch=2,
                         num_workers=0, body_model="open-small", mix="*=1", smplify=smplify, checkpoint_every=100,
                         log_every=1, shuffle_buffer=12, tensorboard=False, lr=1e-4)
    config = dataclasses.replace(config, loss=dataclasses.replace(config.loss, mask=1.0, dsr_mc=0.5, dsr_c=0.5))
    assert train(config, progress=False)["step"] == 2
    rows = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    header = rows[0].split(",")
    for term in ("mask", "dsr_mc", "dsr_c"):
        assert term in header and f"{term}_samples" in header
    values = [dict(zip(header, r.split(","))) for r in rows[1:]]
    assert all(0 < float(v["dsr_mc"]) < 1 and 0 <= float(v["dsr_c"]) < 1 for v in values)
    assert all(float(v["dsr_c_samples"]) == 1.0 and 0 <= float(v["dsr_mc_samples"]) <= 1 for v in values)


def test_the_command_line_sets_the_dsr_weights(tmp_path, capsys):
    from fitloop.cli import main

    base = ["train", "--run-dir", str(tmp_path / "run"), "--shards", str(tmp_path), "--fits", str(tmp_path / "f")]
    assert main(base + ["--dsr-mc-weight", "0.2", "--dsr-c-weight", "0.3", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)["loss"]
    assert (printed["dsr_mc"], printed["dsr_c"], printed["mask"]) == (0.2, 0.3, 0.0)
    assert main(base + ["--dsr-c-weight", "-1"]) == 1
    assert "loss.dsr_c >= 0" in capsys.readouterr().err


def test_dsr_mc_refuses_a_body_model_without_smpl_segments(body):
    weights = torch.rand(body.layer.lbs_weights.shape[0], 55)
    with pytest.raises(ValueError, match="24 segments"):
        MaskConsistency.from_faces(body.faces, skinning_weights=weights)
