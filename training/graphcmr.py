"""GraphCMR's regressor (Kolotouros et al., CVPR 2019, "Convolutional Mesh Regression for Single-Image Human Shape
Reconstruction"; nkolot/GraphCMR at commit eaee920, files named below): image features on a coarse template
mesh, a graph CNN regressing its 3D vertices and the camera, then SMPL parameters regressed from those vertices.

Structure (``models/graph_cnn.py``, ``graph_layers.py``, ``smpl_param_regressor.py``, ``layers.py``, ``cmr.py``):

* the ResNet trunk (`training.resnet.ResNet`, torchvision names, so ImageNet weights load) gives a feature f
  (2048 for ResNet-50); every vertex of the coarse template (`fitting.mesh_sampling`: D · the body model's
  template, centred on its bounding box and divided by its largest |coordinate|, GraphCMR's ``Mesh.ref_vertices``)
  gets [its 3 coordinates, f];
* GraphLinear(3 + F, 2C), GraphResBlock(2C, C), then ``layers`` GraphResBlock(C, C) (C: ``channels``, GraphCMR's
  defaults 5 and 256, ``utils/train_options.py``); a GraphResBlock is pre-activation GroupNorm(c/8), ReLU,
  GraphLinear to c/2, GroupNorm, ReLU, graph convolution (Kipf and Welling: ``Â X W`` with ``Â`` the coarse
  adjacency with self-loops, row-normalised: `fitting.mesh_sampling.normalized_adjacency`), GroupNorm, ReLU,
  GraphLinear to c_out, plus the input (through a GraphLinear where the widths differ);
* shape: GraphResBlock(C, 64), GraphResBlock(64, 32), GroupNorm, ReLU, GraphLinear(32, 3): the coarse vertices
  (B, Vc, 3), in the body model's output frame (metres; the fits' global orientation applied, no translation),
  upsampled by U to the full mesh (B, V, 3) (``Mesh.upsample``);
* camera: GroupNorm, ReLU, GraphLinear(C, 1), ReLU, Linear(Vc, 3): weak perspective [s, tx, ty];
* SMPL parameters: [coarse vertices detached (GraphCMR detaches them), template] (B, Vc · 6) -> FCBlock(1024)
  (Linear, BatchNorm, ReLU) -> 2 FCResBlock(1024) (relu(x + BN(L(relu(BN(L(x))))))) -> the pose and betas.

Layout: vertex-major (B, N, C) throughout (GraphCMR's is (B, C, N)); a GraphLinear is a per-vertex linear map, as
GraphCMR's, with its initialisation (weights and bias uniform in ±1/(in·out)); the graph convolution's is
GraphCMR's (uniform ±6/√(in + out)). Sparse products are gathers and index-adds of the matrices' nonzeros, so they
run on any device and under autocast.

Differences, each so the head fits the loop as the others do (`training.heads`): the pose is regressed in SPIN's
6D (Zhou et al., CVPR 2019), not GraphCMR's 3 × 3 + SVD, whose gradient is undefined at repeated singular values
(which an identity start has); the pose, betas and camera are deltas from the mean parameters, their last layers
Xavier-uniform with gain 0.01 (an untrained network predicts the mean body, so SMPLify in the loop starts from a
body); GraphCMR's camera has no such offset. The parametric branch's keypoint losses also reach the camera
(GraphCMR projects that branch with the camera detached).

Losses (``train/trainer.py``): GraphCMR trains the graph's mesh with an L1 per-vertex loss against the target mesh
and 2D / 3D keypoint losses on the joints regressed from that mesh, and the parametric branch with the same plus
pose (rotation-matrix MSE) and betas. Here the parametric branch's losses are the step's (SPIN's, against the
chosen fits: `training.step.compute_losses`), and `mesh_losses` adds the graph's: ``graph_shape`` (L1 of the
upsampled mesh against the target fit's mesh, the examples whose fit supervises) and ``graph_keypoints_2d`` /
``graph_keypoints_3d`` (its joints by the body model's regressors, projected with the predicted camera).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import FitloopError
from fitting.body_model import BodyModel
from fitting.mesh_sampling import MeshSampling, committed_path, load_sampling, normalized_adjacency, sampling_digest
from training.checkpoint import CheckpointError
from training.geometry import project_normalised, rot6d_to_rotmat
from training.losses import keypoint_2d_loss, keypoint_3d_loss, shape_loss
from training.regressor import NUM_SMPL_JOINTS, MeanParams, RegressorOutput
from training.resnet import ResNet

GRAPH_LAYERS = 5      # GraphCMR's --num_layers default (utils/train_options.py)
GRAPH_CHANNELS = 256  # GraphCMR's --num_channels default
PARAM_WIDTH = 1024    # SMPLParamRegressor's width
MESH_TERMS = ("graph_shape", "graph_keypoints_2d", "graph_keypoints_3d")  # `mesh_losses`' terms
SAMPLING_DIGEST_KEY = "mesh_sampling_digest"  # a checkpoint's: `check_checkpoint_sampling`


class SparseRows(nn.Module):
    """A fixed sparse matrix (R, N) applied to x (B, N, C) -> (B, R, C) by its nonzeros (non-persistent buffers:
    rebuilt from the sampling file, not stored in checkpoints; a checkpoint holds their digest,
    `check_checkpoint_sampling`)."""

    def __init__(self, matrix: sp.spmatrix):
        super().__init__()
        coo = sp.coo_matrix(matrix)
        self.rows = int(coo.shape[0])
        self.register_buffer("row", torch.as_tensor(coo.row, dtype=torch.long), persistent=False)
        self.register_buffer("col", torch.as_tensor(coo.col, dtype=torch.long), persistent=False)
        self.register_buffer("val", torch.as_tensor(coo.data, dtype=torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        picked = x[:, self.col] * self.val.to(x.dtype)[None, :, None]
        return x.new_zeros(x.shape[0], self.rows, x.shape[2]).index_add_(1, self.row, picked)


class GraphLinear(nn.Linear):
    """GraphCMR's GraphLinear (a 1 × 1 convolution over vertices) on (B, N, C), with its initialisation."""

    def reset_parameters(self) -> None:
        bound = 1.0 / (self.in_features * self.out_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)


class GraphConvolution(nn.Module):
    """``Â X W + b`` on (B, N, C): Â the row-normalised adjacency (`SparseRows`)."""

    def __init__(self, channels_in: int, channels_out: int, adjacency: SparseRows):
        super().__init__()
        bound = 6.0 / math.sqrt(channels_in + channels_out)
        self.weight = nn.Parameter(torch.empty(channels_in, channels_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels_out).uniform_(-bound, bound))
        self.adjacency = adjacency

    def forward(self, x: Tensor) -> Tensor:
        return self.adjacency(x @ self.weight) + self.bias


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(channels // 8, channels)


def _channels_last(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    return norm(x.transpose(1, 2)).transpose(1, 2)


class GraphResBlock(nn.Module):
    """GraphCMR's GraphResBlock (module docstring) on (B, N, C_in) -> (B, N, C_out)."""

    def __init__(self, channels_in: int, channels_out: int, adjacency: SparseRows):
        super().__init__()
        mid = channels_out // 2
        self.pre_norm, self.norm1, self.norm2 = _group_norm(channels_in), _group_norm(mid), _group_norm(mid)
        self.lin1 = GraphLinear(channels_in, mid)
        self.conv = GraphConvolution(mid, mid, adjacency)
        self.lin2 = GraphLinear(mid, channels_out)
        self.skip = GraphLinear(channels_in, channels_out) if channels_in != channels_out else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.lin1(F.relu(_channels_last(self.pre_norm, x)))
        y = self.conv(F.relu(_channels_last(self.norm1, y)))
        y = self.lin2(F.relu(_channels_last(self.norm2, y)))
        return (x if self.skip is None else self.skip(x)) + y


class FCResBlock(nn.Module):
    """GraphCMR's FCResBlock: relu(x + BN(L(relu(BN(L(x)))))) on (B, W)."""

    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                                    nn.Linear(width, width), nn.BatchNorm1d(width))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.layers(x))


def reference_vertices(template: np.ndarray, sampling: MeshSampling) -> np.ndarray:
    """GraphCMR's ``Mesh.ref_vertices``: the template (V, 3) centred on its bounding box, divided by its largest
    |coordinate|, downsampled by D -> (Vc, 3), unitless."""
    template = np.asarray(template, np.float64)
    centred = template - 0.5 * (template.max(0) + template.min(0))
    return np.asarray(sampling.down @ (centred / np.abs(centred).max()), np.float32)


class GraphCMR(ResNet):
    """GraphCMR (module docstring): `forward` images (B, 3, H, W) -> `RegressorOutput` with ``vertices`` (B, V, 3)
    the graph's upsampled mesh; ``template`` (V, 3) the body model's, metres."""

    def __init__(self, mean: MeanParams, sampling: MeshSampling, template: np.ndarray, depth: int = 50,
                 layers: int = GRAPH_LAYERS, channels: int = GRAPH_CHANNELS):
        super().__init__(depth, num_classes=None)
        if mean.heads != "smpl":
            raise ValueError(f"the graphcmr head predicts SMPL's 24 joints; mean parameters of heads {mean.heads!r} "
                             f"(an SMPL-X-layout body model) need the hmr head")
        if len(template) != sampling.num_vertices:
            raise ValueError(f"mesh sampling {sampling.source} is for {sampling.num_vertices} vertices, the body "
                             f"model has {len(template)}")
        self.heads = "smpl"
        self.sampling_digest = sampling_digest(sampling)   # saved with a checkpoint: `check_checkpoint_sampling`
        coarse = sampling.num_coarse
        num_betas = int(mean.betas.shape[0])
        self.adjacency = SparseRows(normalized_adjacency(sampling.adjacency))
        self.upsample = SparseRows(sampling.up)
        self.register_buffer("ref_vertices", torch.as_tensor(reference_vertices(template, sampling)),
                             persistent=False)
        blocks = [GraphLinear(3 + self.feature_dim, 2 * channels), GraphResBlock(2 * channels, channels, self.adjacency)]
        blocks += [GraphResBlock(channels, channels, self.adjacency) for _ in range(layers)]
        self.graph = nn.Sequential(*blocks)
        self.shape_blocks = nn.Sequential(GraphResBlock(channels, 64, self.adjacency),
                                          GraphResBlock(64, 32, self.adjacency))
        self.shape_norm, self.shape_out = _group_norm(32), GraphLinear(32, 3)
        self.camera_norm, self.camera_lin = _group_norm(channels), GraphLinear(channels, 1)
        self.deccam = nn.Linear(coarse, 3)
        self.param_net = nn.Sequential(nn.Linear(coarse * 6, PARAM_WIDTH), nn.BatchNorm1d(PARAM_WIDTH), nn.ReLU(),
                                       FCResBlock(PARAM_WIDTH), FCResBlock(PARAM_WIDTH))
        self.decpose = nn.Linear(PARAM_WIDTH, NUM_SMPL_JOINTS * 6)
        self.decshape = nn.Linear(PARAM_WIDTH, num_betas)
        for layer in (self.decpose, self.decshape, self.deccam):
            nn.init.xavier_uniform_(layer.weight, gain=0.01)
            nn.init.zeros_(layer.bias)
        self.register_buffer("init_pose", torch.as_tensor(mean.pose6d, dtype=torch.float32)[None])
        self.register_buffer("init_shape", torch.as_tensor(mean.betas, dtype=torch.float32)[None])
        self.register_buffer("init_cam", torch.as_tensor(mean.cam, dtype=torch.float32)[None])

    def forward(self, x: Tensor) -> RegressorOutput:
        feats = self.features(x)                                                     # (B, F)
        batch = feats.shape[0]
        ref = self.ref_vertices.to(feats.dtype)[None].expand(batch, -1, -1)           # (B, Vc, 3)
        h = self.graph(torch.cat([ref, feats[:, None].expand(-1, ref.shape[1], -1)], -1))   # (B, Vc, C)
        coarse = self.shape_out(F.relu(_channels_last(self.shape_norm, self.shape_blocks(h))))  # (B, Vc, 3) m
        camera_map = F.relu(self.camera_lin(F.relu(_channels_last(self.camera_norm, h))))[..., 0]  # (B, Vc)
        cam = self.init_cam + self.deccam(camera_map)
        params = self.param_net(torch.cat([coarse.detach(), ref], -1).reshape(batch, -1))
        pose = self.init_pose + self.decpose(params)
        shape = self.init_shape + self.decshape(params)
        rotmat = rot6d_to_rotmat(pose.float().reshape(batch, NUM_SMPL_JOINTS, 6))
        return RegressorOutput(rotmat=rotmat, betas=shape.float(), camera=cam.float(), pose6d=pose.float(),
                               vertices=self.upsample(coarse.float()))


def build(mean: MeanParams, config: Any) -> GraphCMR:
    """The head's network for a `training.config.TrainConfig`: its body model's template, its mesh sampling
    (``config.mesh_sampling``, default the committed file of an open model), backbone and graph sizes."""
    from fitting.body_model import load_body_model

    path = config.mesh_sampling or committed_path(config.body_model)
    if path is None:
        raise FitloopError(f"the graphcmr head needs mesh sampling matrices for body model {config.body_model}: "
                           f"pass --mesh-sampling (GraphCMR's data/mesh_downsampling.npz for a real SMPL, or one "
                           f"built with `fitloop model sampling --model {config.body_model} --out FILE`)")
    body = load_body_model(config.body_model)
    template = body.layer.v_template.detach().cpu().double().numpy()
    try:
        return GraphCMR(mean, load_sampling(path), template, depth=config.backbone, layers=config.graph_layers,
                        channels=config.graph_channels)
    except ValueError as err:
        raise FitloopError(f"graphcmr head with {path}: {err}") from None


def check_checkpoint_sampling(data: dict[str, Any], model: nn.Module, path: Any, config: Any) -> None:
    """Refuse a checkpoint (``data``, read from ``path``) whose graph was trained with other mesh sampling matrices
    than ``model`` was built with from ``config``: the matrices are not in the checkpoint, only their digest, and
    the file its config names may since have been rebuilt or replaced (same sizes: the weights would load and
    compute nonsense). Checkpoints without a digest (before it was saved) and other heads pass."""
    saved, built = data.get(SAMPLING_DIGEST_KEY), getattr(model, "sampling_digest", None)
    if saved and built and saved != built:
        source = config.mesh_sampling or committed_path(config.body_model)
        raise CheckpointError(f"{path}: its graph was trained with mesh sampling matrices {saved[:12]}, and "
                              f"{source} holds other ones ({built[:12]}): pass --mesh-sampling with a file of the "
                              f"matrices it was trained with (`fitloop model sampling` builds the same file again "
                              f"from the same model file and --vertices)")


def mesh_joints(body: BodyModel, vertices: Tensor) -> Tensor:
    """The 49 canonical joints (B, 49, 3) of a free-form mesh (B, V, 3) in the body model's topology: its
    kinematic joints by the model's J_regressor on it (GraphCMR's ``SMPL.get_joints``), then the model's keypoint
    regressor and mixer. At rest these are the body's joints; for a posed body they differ from its skeleton's
    (posed by the kinematic chain) by a few cm, as in GraphCMR."""
    layer_joints = torch.einsum("jv,bvd->bjd", body.layer.J_regressor.to(vertices), vertices)
    return body.canonical_joints(vertices, layer_joints)[0]


def mesh_losses(mesh: Tensor, cam_t: Tensor, target_vertices: Tensor, valid: Tensor, keypoints: Tensor,
                joints_3d: Tensor, has_3d: Tensor, body: BodyModel, openpose_weight: float,
                gt_weight: float) -> dict[str, Tensor]:
    """GraphCMR's losses of the graph's mesh (module docstring): mesh (B, V, 3) m model frame, cam_t (B, 3) m the
    predicted camera's translation, target_vertices (B, V, 3), valid (B,) bool; keypoints (B, 49, 3) normalised,
    joints_3d (B, 49, 4), has_3d (B,) as `training.losses`."""
    joints = mesh_joints(body, mesh)
    return dict(zip(MESH_TERMS, (shape_loss(mesh, target_vertices, valid),
                                 keypoint_2d_loss(project_normalised(joints, cam_t), keypoints, openpose_weight,
                                                  gt_weight),
                                 keypoint_3d_loss(joints, joints_3d, has_3d))))
