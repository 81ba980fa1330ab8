"""The volumetric head: per-joint 3D likelihood volumes read out by soft-argmax (integral regression), beside
HMR's SMPL regressor on the same ResNet features.

Sources: Pavlakos et al., CVPR 2017, "Coarse-to-Fine Volumetric Prediction for Single-Image 3D Human Pose"
(per-voxel joint likelihoods in the crop's x, y and the root-relative depth z; reference code
geopavlakos/c2f-vol-demo, Torch7); Sun et al., ECCV 2018, "Integral Human Pose Regression" (the volume's
soft-argmax, differentiable and sub-voxel; ResNet + 3 deconvolutions; L1 on the joints; 2D data supervising x, y
only; reference code JimmySuen/integral-human-pose, commit 99647e4, ``pytorch_projects/common_pytorch/``:
``loss/integral.py``, depth bins = heatmap width, depth normalised by the patch width, L1 loss;
``base_modules/deconv_head.py``, 3 × (4 × 4 stride-2 deconvolution, BN, ReLU), 1 × 1 output, N(0, 0.001) init).

**Which variant: the integral one, one volume.** Pavlakos refines depth coarse to fine (stacked hourglasses with
volumes of depth 1, 2, 4, 64 and intermediate supervision) because a 64³ volume per joint learnt from one hourglass
with a per-voxel Gaussian target trains poorly. With a soft-argmax read-out the target is the joint's coordinates,
not a volume, so one volume trains directly (Sun et al. 2018 train one 64³ volume per joint this way on
Human3.6M), and one volume is what a ResNet + deconvolution trunk gives.

Network (`VolumetricRegressor`): the ResNet's last map (B, C, R/32, R/32) for an R px crop, three 4 × 4,
stride-2 transposed convolutions of 256 channels (BatchNorm, ReLU; Sun et al. / Xiao et al.'s "simple baselines")
to (B, 256, R/4, R/4), a 1 × 1 convolution to J · D channels, D = R/4 depth bins (a cube, as the reference's
``hm_depth = hm_width``): volumes (B, J, D, R/4, R/4), J = 24 (SPIN's J24 joints, canonical slots 25–48: the
joints the datasets' 3D ground truth holds). `soft_argmax_3d` gives (B, J, 3). The SMPL parameters come from the
pooled map by HMR's iterative error feedback (`training.regressor.Regressor.regress`), so the loop, SMPLify in the
loop and the fits table read the same `RegressorOutput`; the joints ride along as ``volume_joints``.

**Frames.** x, y: the normalised crop (`training.geometry`: x right, y down, the crop's outer edges at ±1; voxel i
of n has its centre at (2i + 1)/n − 1). z: depth (camera z, forward) relative to the root, the J24 hips'
midpoint (SPIN's 3D centring, `training.losses`), divided by `DEPTH_HALF_RANGE` (1 m: the reference's 2000 mm
depth span for Human3.6M), so the volume spans ±1 m about the root.

**Losses** (`training.losses.volume_2d_loss`, `volume_3d_loss`): L1, as Sun et al. The 2D term reads x, y against
the ground-truth 2D keypoints of the J24 slots (every sample; their confidence); the 3D term reads z against the
samples' 3D joints (only samples with them; the 3D confidence). L1 is separable, so for a sample with 3D the two
together are Sun et al.'s 3D L1 on (x, y, z), and a 2D-only sample gets their x, y term.

**As evidence for SMPLify** (`camera_joints`): the crop's x, y and the root-relative depth become camera-frame 3D
joints once a root depth is chosen, by the fit frame's pinhole (`core.frames.FIT_FOCAL`, principal point at the
centre); the predicted camera's depth (``cam_t[:, 2]``) is the natural one. The result is the ``joints_3d`` that
`fitting.fit3d.Fit3D` fits (`fitting.fit3d.Evidence`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.frames import FIT_CENTER, FIT_FOCAL
from core.joints import J24_OFFSET, NUM_JOINTS
from training.losses import HIPS_3D
from training.regressor import MeanParams, Regressor, RegressorOutput

DEPTH_HALF_RANGE = 1.0      # m: the volume's depth axis spans ±1 m about the root (reference: 2000 mm in all)
NUM_VOLUME_JOINTS = NUM_JOINTS - J24_OFFSET  # 24: the J24 slots 25..48
DECONV_LAYERS = 3           # Sun et al. / the reference's deconv head: 3 × (4 × 4, stride 2, 256 channels)
DECONV_CHANNELS = 256
DECONV_KERNEL = 4
VOLUME_STRIDE = 32 // 2 ** DECONV_LAYERS    # 4: crop px per voxel side
VOLUME_TERMS = ("volume_2d", "volume_3d")  # the step's loss terms on its joints (`training.step.compute_losses`)
ROOT_SLOTS = tuple(j - J24_OFFSET for j in HIPS_3D)  # the root's joints within the J24 block: SPIN's 3D centring


def voxel_centres(n: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(n,) the centres of n equal cells across [-1, 1]: (2i + 1)/n − 1."""
    return (2 * torch.arange(n, device=device, dtype=dtype) + 1) / n - 1


def soft_argmax_3d(volumes: Tensor) -> Tensor:
    """Integral regression: logits (B, J, D, H, W) -> (B, J, 3) the expected (x, y, z) under each joint's softmax
    over its volume; x over W, y over H, z over D, each in [-1, 1] (`voxel_centres`). Computed from the marginals
    (the reference's ``softmax_integral_tensor``): never materialises a coordinate grid."""
    batch, joints, depth, height, width = volumes.shape
    prob = F.softmax(volumes.float().reshape(batch, joints, -1), dim=-1).reshape(volumes.shape)
    x = (prob.sum((2, 3)) * voxel_centres(width, volumes.device)).sum(-1)
    y = (prob.sum((2, 4)) * voxel_centres(height, volumes.device)).sum(-1)
    z = (prob.sum((3, 4)) * voxel_centres(depth, volumes.device)).sum(-1)
    return torch.stack([x, y, z], -1)


def volume_targets(keypoints: Tensor, joints_3d: Tensor) -> tuple[Tensor, Tensor]:
    """The volumetric head's targets from a batch: keypoints (B, 49, 3) normalised + confidence, joints_3d
    (B, 49, 4) camera frame, m + confidence -> (B, 24, 3) [x, y from the J24 keypoints, z root-relative /
    `DEPTH_HALF_RANGE` from the J24 3D joints] and (B, 24, 2) their confidences [2D, 3D]."""
    kp, j3d = keypoints[:, J24_OFFSET:], joints_3d[:, J24_OFFSET:]
    root = j3d[:, list(ROOT_SLOTS), 2].mean(1, keepdim=True)
    z = (j3d[..., 2] - root) / DEPTH_HALF_RANGE
    return torch.cat([kp[..., :2], z[..., None]], -1), torch.stack([kp[..., 2], j3d[..., 3]], -1)


def camera_joints(volume_joints: Tensor, root_depth: Tensor) -> Tensor:
    """The head's joints as camera-frame 3D evidence for SMPLify: volume_joints (B, 24, 3) (module docstring's
    frame), root_depth (B,) m (the root's camera z; the prediction's ``cam_t[:, 2]``) -> (B, 49, 4) the canonical
    layout's ``joints_3d`` (metres, x right, y down, z forward, + confidence): the J24 slots back-projected through
    the fit frame's pinhole (focal `FIT_FOCAL` px, a 224 px crop, principal point at its centre) at each joint's
    depth root_depth + z · `DEPTH_HALF_RANGE`, confidence 1; the OpenPose slots 0 (unused)."""
    z = root_depth[:, None] + volume_joints[..., 2] * DEPTH_HALF_RANGE               # (B, 24) m
    xy = volume_joints[..., :2] * FIT_CENTER / FIT_FOCAL * z[..., None]                # px offset · Z / f
    out = volume_joints.new_zeros(volume_joints.shape[0], NUM_JOINTS, 4)
    out[:, J24_OFFSET:] = torch.cat([xy, z[..., None], torch.ones_like(z)[..., None]], -1)
    return out


def _deconv_stack(channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(DECONV_LAYERS):
        layers += [nn.ConvTranspose2d(channels, DECONV_CHANNELS, DECONV_KERNEL, stride=2, padding=1,
                                      output_padding=0, bias=False),
                   nn.BatchNorm2d(DECONV_CHANNELS), nn.ReLU(inplace=True)]
        channels = DECONV_CHANNELS
    return nn.Sequential(*layers)


class VolumetricRegressor(Regressor):
    """The volumetric head (module docstring): `forward` images (B, 3, R, R) -> `RegressorOutput` with
    ``volume_joints`` (B, 24, 3); R a multiple of 32 (the volume's side R/4 and depth bins are fixed at build).
    Its loss terms (`VOLUME_TERMS`) are added by `training.step.compute_losses`."""

    def __init__(self, mean: MeanParams, img_res: int, depth: int = 50, iterations: int = 3):
        if mean.heads != "smpl":
            raise ValueError(f"the volumetric head predicts SMPL's 24 joints; mean parameters of heads "
                             f"{mean.heads!r} (an SMPL-X-layout body model) need the hmr head")
        if img_res % 32:
            raise ValueError(f"the volumetric head needs a crop side that is a multiple of 32, got {img_res}")
        super().__init__(mean, depth=depth, iterations=iterations)
        self.volume_depth = img_res // VOLUME_STRIDE
        self.deconv = _deconv_stack(self.feature_dim)
        self.volume = nn.Conv2d(DECONV_CHANNELS, NUM_VOLUME_JOINTS * self.volume_depth, 1)
        for m in self.deconv.modules():      # the reference's init: N(0, 0.001) deconvolutions and output layer
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.normal_(self.volume.weight, std=0.001)
        nn.init.zeros_(self.volume.bias)

    def volumes(self, feature_map: Tensor) -> Tensor:
        """The ResNet's map (B, C, R/32, R/32) -> per-joint logits (B, 24, D, R/4, R/4)."""
        maps = self.volume(self.deconv(feature_map))
        batch, _, height, width = maps.shape
        return maps.reshape(batch, NUM_VOLUME_JOINTS, self.volume_depth, height, width)

    def forward(self, x: Tensor, iterations: int | None = None) -> RegressorOutput:
        feature_map = self.feature_map(x)
        out = self.regress(self.pool(feature_map), iterations)
        out.volume_joints = soft_argmax_3d(self.volumes(feature_map))
        return out
