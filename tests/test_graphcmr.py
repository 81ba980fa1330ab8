"""The graphcmr head (issue 16; training.graphcmr): GraphCMR's layers against their definitions, the head's start
at the mean body, its mesh's joints as the body model's, GraphCMR's losses, a tiny batch it learns, and a
`fitloop train --head graphcmr` run whose checkpoint round-trips."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fits.seeding import SeedConfig, seed_fits
from fitting.body_model import load_body_model
from fitting.mesh_sampling import committed_path, load_sampling, normalized_adjacency, sampling_digest
from fitting.priors import DEFAULT_PRIOR, MaxMixturePrior
from fitting.smplify import SMPLifyConfig
from tests.head_checks import adam_steps, assert_checkpoint_round_trips, supervised_batch
from training.config import LossWeights, TrainConfig
from training.geometry import rot6d_to_rotmat
from training.graphcmr import GraphCMR, GraphConvolution, SparseRows, mesh_joints, reference_vertices
from training.heads import head_of
from training.regressor import mean_params_from_prior
from training.step import compute_losses, predict

TEST_SMPLIFY = SMPLifyConfig(body_iterations=5)
SMALL = dict(depth=18, layers=1, channels=32)   # test sizes; GraphCMR's are ResNet-50, 5 blocks, 256 channels


@pytest.fixture(scope="module")
def body():
    return load_body_model("open-small")


@pytest.fixture(scope="module")
def sampling():
    return load_sampling(committed_path("open-small"))


@pytest.fixture(scope="module")
def mean():
    return mean_params_from_prior(MaxMixturePrior.from_file(DEFAULT_PRIOR))


def test_sparse_rows_and_graph_convolution_are_the_matrix_products(sampling):
    torch.manual_seed(0)
    x = torch.randn(2, sampling.num_coarse, 5, dtype=torch.float64)
    up = SparseRows(sampling.up).double()
    expected = np.stack([sampling.up @ xi for xi in x.numpy()])
    assert np.allclose(up(x).numpy(), expected, atol=1e-6)      # the matrices are float32 buffers
    a_hat = SparseRows(normalized_adjacency(sampling.adjacency))
    conv = GraphConvolution(5, 4, a_hat).double()
    reference = np.stack([normalized_adjacency(sampling.adjacency) @ (xi @ conv.weight.detach().numpy())
                          for xi in x.numpy()]) + conv.bias.detach().numpy()
    assert np.allclose(conv(x).detach().numpy(), reference, atol=1e-5)


def test_reference_vertices_are_graphcmrs_normalised_template(body, sampling):
    template = body.layer.v_template.double().numpy()
    ref = reference_vertices(template, sampling)
    assert ref.shape == (sampling.num_coarse, 3) and np.abs(ref).max() <= 1 + 1e-6
    assert np.isclose(np.abs(ref).max(), 1.0, atol=0.05)       # the extreme vertex (a hand or the head) is kept
    centred = template - 0.5 * (template.max(0) + template.min(0))
    assert np.allclose(ref, (centred / np.abs(centred).max())[sampling.down.indices], atol=1e-6)


def test_the_head_starts_at_the_mean_parameters_and_upsamples_its_mesh(body, sampling, mean):
    torch.manual_seed(0)
    model = GraphCMR(mean, sampling, body.layer.v_template.double().numpy(), **SMALL).eval()
    out = model(torch.randn(3, 3, 32, 32))
    start = rot6d_to_rotmat(torch.as_tensor(mean.pose6d).reshape(1, 24, 6)).expand(3, -1, -1, -1)
    assert torch.allclose(out.rotmat, start, atol=0.05) and torch.allclose(out.betas, torch.zeros(3, 10), atol=0.05)
    assert torch.allclose(out.camera, torch.as_tensor(mean.cam)[None].expand(3, -1), atol=0.05)
    assert out.vertices.shape == (3, body.num_vertices, 3)
    with pytest.raises(ValueError, match="13492 vertices, the body model has 1229"):
        GraphCMR(mean, load_sampling(committed_path("open")), body.layer.v_template.numpy(), **SMALL)


def test_the_head_runs_under_bfloat16_autocast(body, sampling, mean):
    """The training loop's CUDA autocast, exercised on the CPU: the sparse products and GroupNorms mix dtypes."""
    model = GraphCMR(mean, sampling, body.layer.v_template.double().numpy(), **SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32))
    assert out.vertices.dtype == out.rotmat.dtype == torch.float32 and torch.isfinite(out.vertices).all()
    (out.vertices.sum() + out.rotmat.sum()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_mesh_has_the_body_models_joints_at_rest_and_near_them_posed(body):
    """GraphCMR's ``SMPL.get_joints``: the joint regressor on the mesh, which is the body's own joints at rest; a
    posed body's kinematic joints come from its skeleton, a few cm from the regressor on the posed mesh."""
    torch.manual_seed(1)
    betas = torch.randn(2, 10)
    rest = body(betas, torch.zeros(2, 69), torch.zeros(2, 3))
    assert torch.allclose(mesh_joints(body, rest.vertices), rest.joints, atol=1e-5)
    pose = 0.3 * torch.randn(2, 72)
    posed = body(betas, pose[:, 3:], pose[:, :3])
    gap = (mesh_joints(body, posed.vertices) - posed.joints).norm(dim=-1)
    assert 0 < gap.mean() < 0.03 and gap.max() < 0.1


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("graphcmr")
    write_synthetic_shards(root, [DatasetSpec("synth-h36m", "train", 8, smpl=True, joints_3d=True),
                                  DatasetSpec("synth-h36m", "test", 4, smpl=True, joints_3d=True)],
                           res=64, samples_per_shard=4, seed=4)
    return root / "shards"


def test_the_graph_losses_are_zero_at_the_truth_and_the_head_learns_a_tiny_batch(body, sampling, mean, shards):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    batch, targets = supervised_batch(shards, "graphcmr")
    model = GraphCMR(mean, sampling, body.layer.v_template.double().numpy(), **SMALL)
    pred = predict(model, body, batch.inputs, torch.autocast("cpu", enabled=False))
    truth = body(batch.gt_betas, batch.gt_pose[:, 3:], batch.gt_pose[:, :3]).vertices
    _, at_truth = compute_losses(type(pred)(**{**pred.__dict__, "mesh": truth}), targets, batch, LossWeights(), body)
    assert at_truth["graph_shape"] == pytest.approx(0, abs=1e-7)
    history = adam_steps(model, body, batch, targets, 25, 1e-3, LossWeights())
    terms = history[-1]
    shape, total = [t["graph_shape"] for t in history], [t["total"] for t in history]
    assert {"graph_shape", "graph_keypoints_2d", "graph_keypoints_3d"} <= set(terms)
    # measured: total 85 -> 49, the graph's mesh 0.242 -> 0.189 m mean L1 (it starts at ~0: GraphCMR's init)
    assert total[-1] < 0.7 * total[0] and shape[-1] < 0.9 * shape[0]


def test_fitloop_train_head_graphcmr_runs_and_its_checkpoint_round_trips(shards, tmp_path, capsys):
    from fitloop.cli import main

    torch.set_num_threads(1)
    seed_fits([shards], tmp_path / "fits", SeedConfig(body_model="open-small", smplify=TEST_SMPLIFY),
              splits=("train",), missing_only=True)
    args = ["train", "--shards", str(shards), "--fits", str(tmp_path / "fits"), "--run-dir", str(tmp_path / "run"),
            "--head", "graphcmr", "--backbone", "18", "--graph-layers", "1", "--graph-channels", "32",
            "--body-model", "open-small", "--img-res", "32", "--batch-size", "4", "--epochs", "1",
            "--steps-per-epoch", "2", "--num-workers", "0", "--mix", "*=1", "--smplify-iters", "5",
            "--log-every", "1", "--no-tensorboard"]
    assert main(args + ["--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["head"], printed["graph_layers"], printed["loss"]["graph_shape"]) == ("graphcmr", 1, 1.0)
    assert main(args) == 0
    rows = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "graph_shape" in header and len(rows) == 3
    assert all(float(r.split(",")[header.index("graph_shape")]) > 0 for r in rows[1:])
    data = assert_checkpoint_round_trips(tmp_path / "run", "graphcmr", GraphCMR, tmp_path / "again")
    assert data["config"]["graph_channels"] == 32
    assert data["mesh_sampling_digest"] == sampling_digest(load_sampling(committed_path("open-small")))


def test_the_head_without_sampling_matrices_says_what_to_pass(tmp_path, capsys):
    from fitloop.cli import main

    config = TrainConfig(shards=(str(tmp_path),), fits=str(tmp_path / "f"), head="graphcmr", body_model="x.npz")
    with pytest.raises(Exception, match="--mesh-sampling"):
        head_of("graphcmr").build(None, config)
    assert sp.issparse(load_sampling(committed_path("open")).up)
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--shards", str(tmp_path), "--fits", str(tmp_path / "f"),
                 "--head", "graphcmr", "--graph-channels", "20"]) == 1
    assert "graph_channels a multiple of 16" in capsys.readouterr().err


def test_fitloop_predict_reads_a_graphcmr_checkpoint(tmp_path, capsys, mean):
    from PIL import Image

    from fitloop.cli import main
    from training.checkpoint import save_checkpoint

    config = TrainConfig(body_model="open-small", head="graphcmr", backbone=18, img_res=64, graph_layers=1,
                         graph_channels=32)
    torch.manual_seed(0)
    model = head_of("graphcmr").build(mean, config)
    ckpt = save_checkpoint(tmp_path / "run", {"model": model.state_dict(), "step": 1, "head": "graphcmr",
                                              "body_model_id": load_body_model("open-small").model_id,
                                              "config": config.to_dict()})
    Image.fromarray(np.full((300, 200, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    assert main(["predict", str(tmp_path / "a.jpg"), "--checkpoint", str(ckpt), "--bbox", "20,20,160,260",
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["head"] == "graphcmr" and len(record["pose"]) == 72
    assert (tmp_path / "out" / "a.obj").read_text().count("\nv ") == 1229


def test_a_graphcmr_checkpoint_refuses_other_sampling_matrices_of_the_same_size(tmp_path, capsys, mean):
    """The matrices are rebuilt from the file a checkpoint's config names, not stored: a checkpoint records their
    digest, and predict and a resume refuse a file that now holds others (here the up-sampling weights of one
    vertex changed: the weights would load and the mesh come out wrong). The same matrices in another file pass."""
    from PIL import Image

    from fitloop.cli import main
    from fitting.mesh_sampling import save_sampling
    from training.checkpoint import CheckpointError, save_checkpoint
    from training.graphcmr import SAMPLING_DIGEST_KEY, check_checkpoint_sampling

    same, other = tmp_path / "same.npz", tmp_path / "other.npz"
    sampling = load_sampling(committed_path("open-small"))
    save_sampling(same, sampling)
    up = sp.csr_matrix(sampling.up, copy=True)
    row = next(r for r in range(up.shape[0]) if up.indptr[r + 1] - up.indptr[r] == 3)   # a barycentric row
    up.data[up.indptr[row]:up.indptr[row + 1]] = up.data[up.indptr[row]:up.indptr[row + 1]][::-1]
    save_sampling(other, dataclasses.replace(sampling, up=up))
    config = TrainConfig(body_model="open-small", head="graphcmr", backbone=18, img_res=64, graph_layers=1,
                         graph_channels=32, mesh_sampling=str(same))
    torch.manual_seed(0)
    model = head_of("graphcmr").build(mean, config)
    ckpt = save_checkpoint(tmp_path / "run", {"model": model.state_dict(), "step": 1, "head": "graphcmr",
                                              "body_model_id": load_body_model("open-small").model_id,
                                              "config": config.to_dict(),
                                              SAMPLING_DIGEST_KEY: model.sampling_digest})
    args = ["predict", str(tmp_path / "a.jpg"), "--checkpoint", str(ckpt), "--bbox", "20,20,160,260",
            "--out", str(tmp_path / "out")]
    Image.fromarray(np.full((300, 200, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    assert main(args) == 0
    capsys.readouterr()
    save_sampling(same, dataclasses.replace(sampling, up=up))     # the file the config names, rebuilt other
    assert main(args) == 1
    err = capsys.readouterr().err
    assert str(ckpt) in err and str(same) in err and model.sampling_digest[:12] in err and "--mesh-sampling" in err
    assert "Traceback" not in err
    save_sampling(tmp_path / "copy.npz", sampling)                # the matrices it was trained with, elsewhere
    assert main(args + ["--mesh-sampling", str(tmp_path / "copy.npz")]) == 0
    rebuilt = head_of("graphcmr").build(mean, dataclasses.replace(config, mesh_sampling=str(other)))
    with pytest.raises(CheckpointError, match="other ones"):      # the check a resume makes (training.loop.restore)
        check_checkpoint_sampling(torch.load(ckpt, weights_only=True), rebuilt, ckpt,
                                  dataclasses.replace(config, mesh_sampling=str(other)))
    check_checkpoint_sampling({}, rebuilt, ckpt, config)          # a checkpoint from before the digest: not checked
