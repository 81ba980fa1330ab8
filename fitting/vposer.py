"""VPoser: the variational body-pose prior of SMPLify-X (Pavlakos et al., CVPR 2019), its V02_05 layout, and the
pose-prior energy fitloop's SMPLify uses it by.

**The network** is VPoser V02_05's as published (nghorbani/human_body_prior, ``models/vposer_model.py``), module for
module, so a V02_05 state dict loads into it unchanged (:data:`V02_05_LAYOUT` names every tensor and its shape):

* encoder ``encoder_net``: 0 flatten · 1 BatchNorm1d(63) · 2 Linear(63, 512) · 3 LeakyReLU · 4 BatchNorm1d(512) ·
  5 Dropout(0.1) · 6 Linear(512, 512) · 7 Linear(512, 512) · 8 a normal head: ``mu`` Linear(512, 32) and
  ``logvar`` Linear(512, 32), the scale being softplus(logvar) (the name is the release's; it is no log-variance).
  (The release has no nonlinearity between layers 6 and 7; kept, so a real checkpoint behaves as published.)
* decoder ``decoder_net``: 0 Linear(32, 512) · 1 LeakyReLU · 2 Dropout(0.1) · 3 Linear(512, 512) · 4 LeakyReLU ·
  5 Linear(512, 126) · 6 continuous 6D rotations (Zhou et al. 2019): per joint two 3-vectors, Gram–Schmidt, cross
  product -> the rotation matrix's three columns.

Its input is the **21 body joints** of SMPL-X's ``body_pose``, (B, 63) axis-angle radians, local to the parent,
relative to the body model's T-pose: SMPL's joints 1–21 (`core.joints.SMPL_JOINT_NAMES` order), i.e. the first 63
of SMPL's 69 body-pose values. SMPL's two hand joints (values 63–68) are not in it.

**The energy** (:class:`VAEPosePrior`). SMPLify-X optimises VPoser's latent code and penalises ‖z‖². fitloop's LM
keeps the pose itself as the unknown (one parametrisation for every prior, the angle prior and the near-start term
unchanged), so the prior is a function of the pose: the negative evidence bound at the encoder's mean,

    E(θ) = ½ ‖μ(θ)‖² + ¼ Σ_j ‖R(θ_j) − D_j(μ(θ))‖²_F / σ_j² + ½ ‖θ_free / σ_f‖²,

μ the encoder's mean (32), D the decoder (21 rotation matrices), R Rodrigues' formula; ‖ΔR‖²_F ≈ 2φ² for a rotation
error φ, so the middle term is Σ_j φ_j² / (2σ_j²): a Gaussian of σ_j per rotation axis around the decoded pose, σ_j
the prior file's (from the training poses' round trip, floored; `assets.vae_train`). θ_free: SMPL's hand slots
(values 63–68, not in VPoser) and joints the training data never moves (CMU's collars: the network sees them as
zero), each value an independent N(0, σ_f²), as the Gaussian mixture treats joints no source animates. ‖μ‖² alone
would not do: the encoder maps 63 values to 32, so a 31-dimensional family of poses has μ = 0; the reconstruction term is
what makes poses off the learned manifold expensive. The energy is "−log p" in nats up to a constant, the same scale
as the Gaussian mixture's, so SPIN's weight 4.78² applies to either. Its residuals r (E = ½‖r‖²) and their exact
Jacobian per example, written out layer by layer, are what the fast LM uses (`residuals_and_jacobian`).
"""
from __future__ import annotations

import json
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from core.errors import ModelFileError
from fitting.files import DAMAGED, looks_like, read_npz, require_file
from fitting.skeleton import matrix_to_axis_angle, right_jacobian, rodrigues, skew

VPOSER_JOINTS = 21                      # SMPL-X body joints = SMPL joints 1..21
VPOSER_POSE_DIM = 3 * VPOSER_JOINTS     # 63
HAND_SLOTS_DIM = 6                      # SMPL's body pose values 63..68 (left_hand, right_hand): not in VPoser
LATENT_DIM = 32                         # V02_05's latentD
HIDDEN = 512                            # V02_05's num_neurons
CHECKPOINT_PREFIX = "vp_model."         # V02_05 is a PyTorch Lightning .ckpt; its state_dict keys start with this
VAE_FORMAT = "fitloop-vae-pose-prior"
VAE_FORMAT_VERSION = 1


def _batchnorm(n: int) -> dict[str, tuple[int, ...]]:
    return {"weight": (n,), "bias": (n,), "running_mean": (n,), "running_var": (n,), "num_batches_tracked": ()}


def _linear(n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
    return {"weight": (n_out, n_in), "bias": (n_out,)}


def v02_05_layout(hidden: int = HIDDEN, latent: int = LATENT_DIM) -> dict[str, tuple[int, ...]]:
    """Every tensor of VPoser V02_05's state dict (without the checkpoint's ``vp_model.`` prefix) and its shape."""
    parts = {"encoder_net.1": _batchnorm(VPOSER_POSE_DIM), "encoder_net.2": _linear(VPOSER_POSE_DIM, hidden),
             "encoder_net.4": _batchnorm(hidden), "encoder_net.6": _linear(hidden, hidden),
             "encoder_net.7": _linear(hidden, hidden), "encoder_net.8.mu": _linear(hidden, latent),
             "encoder_net.8.logvar": _linear(hidden, latent), "decoder_net.0": _linear(latent, hidden),
             "decoder_net.3": _linear(hidden, hidden), "decoder_net.5": _linear(hidden, 6 * VPOSER_JOINTS)}
    return {f"{module}.{name}": shape for module, tensors in parts.items() for name, shape in tensors.items()}


V02_05_LAYOUT: dict[str, tuple[int, ...]] = v02_05_layout()


def rotation_from_6d(x: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) from VPoser's continuous 6D representation (..., 6).

    As VPoser reads it: the 6 values are a 3×2 matrix (row-major) whose columns a1, a2 give b1 = a1/‖a1‖,
    b2 = normalise(a2 − (b1·a2) b1), b3 = b1 × b2; the matrix's columns are b1, b2, b3."""
    a = x.reshape(*x.shape[:-1], 3, 2)
    b1 = F.normalize(a[..., 0], dim=-1)
    b2 = F.normalize(a[..., 1] - (b1 * a[..., 1]).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.linalg.cross(b1, b2, dim=-1)], dim=-1)


def rotation_from_6d_jacobian(x: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation matrices (N, 3, 3) from 6D vectors (N, 6) and their Jacobian (N, 3, 3, 6), in closed form.

    With n(v) = v/‖v‖ and ∂n/∂v = (I − n nᵀ)/‖v‖: b1 = n(a1); u = a2 − (b1·a2) b1, b2 = n(u); b3 = b1 × b2, so
    ∂u/∂a2 = I − b1 b1ᵀ, ∂u/∂a1 = −((b1·a2) I + b1 a2ᵀ) ∂b1/∂a1, ∂b3 = b1 × ∂b2 − b2 × ∂b1."""
    a = x.reshape(-1, 3, 2)
    a1, a2 = a[..., 0], a[..., 1]
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    n1 = a1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b1 = a1 / n1
    p1 = (eye - b1[:, :, None] * b1[:, None, :]) / n1[..., None]                    # ∂b1/∂a1 (N, 3, 3)
    dot = (b1 * a2).sum(-1, keepdim=True)
    u = a2 - dot * b1
    nu = u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b2 = u / nu
    p2 = (eye - b2[:, :, None] * b2[:, None, :]) / nu[..., None]
    du_a1 = -(dot[..., None] * eye + b1[:, :, None] * a2[:, None, :]) @ p1
    du_a2 = eye - b1[:, :, None] * b1[:, None, :]
    db2_a1, db2_a2 = p2 @ du_a1, p2 @ du_a2
    k1, k2 = skew(b1), skew(b2)
    db3_a1 = k1 @ db2_a1 - k2 @ p1
    db3_a2 = k1 @ db2_a2
    zero = torch.zeros_like(p1)
    # d[column c][row i] / d[a_col][j]; the 6 inputs are a (3, 2) row-major: input 2j + col
    per_col = torch.stack([torch.stack([p1, zero], -1), torch.stack([db2_a1, db2_a2], -1),
                           torch.stack([db3_a1, db3_a2], -1)], 2)                    # (N, 3 i, 3 c, 3 j, 2 col)
    rot = torch.stack([b1, b2, torch.linalg.cross(b1, b2, dim=-1)], dim=-1)
    return rot, per_col.reshape(-1, 3, 3, 6)


def rodrigues_jacobian(aa: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation matrices (N, 3, 3) of axis-angle vectors (N, 3) and their Jacobian (N, 3, 3, 3):
    ∂R/∂θ_k = R [J_r(θ) e_k]×, J_r SO(3)'s right Jacobian (`fitting.skeleton.right_jacobian`)."""
    rot = rodrigues(aa)
    cols = skew(right_jacobian(aa).transpose(-1, -2))                                # (N, 3 k, 3, 3)
    return rot, (rot[:, None] @ cols).permute(0, 2, 3, 1)


class _NormalHead(nn.Module):
    """VPoser's NormalDistDecoder: the posterior's mean and scale (softplus of the ``logvar`` layer)."""

    def __init__(self, n_in: int, latent: int) -> None:
        super().__init__()
        self.mu = nn.Linear(n_in, latent)
        self.logvar = nn.Linear(n_in, latent)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(h), F.softplus(self.logvar(h))


class _SixD(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return rotation_from_6d(x.reshape(x.shape[0], -1, 6))


class VPoser(nn.Module):
    """VPoser V02_05 (module docstring): ``encode`` (B, 63) axis-angle -> posterior mean, scale (B, 32);
    ``decode`` (B, 32) -> rotation matrices (B, 21, 3, 3). Call ``.eval()`` before using it as a prior (batch norm
    on its running statistics, no dropout)."""

    def __init__(self, hidden: int = HIDDEN, latent: int = LATENT_DIM) -> None:
        super().__init__()
        self.latent = latent
        self.encoder_net = nn.Sequential(
            nn.Flatten(), nn.BatchNorm1d(VPOSER_POSE_DIM), nn.Linear(VPOSER_POSE_DIM, hidden), nn.LeakyReLU(),
            nn.BatchNorm1d(hidden), nn.Dropout(0.1), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden),
            _NormalHead(hidden, latent))
        self.decoder_net = nn.Sequential(
            nn.Linear(latent, hidden), nn.LeakyReLU(), nn.Dropout(0.1), nn.Linear(hidden, hidden), nn.LeakyReLU(),
            nn.Linear(hidden, 6 * VPOSER_JOINTS), _SixD())

    def encode(self, pose: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and scale (B, 32) of body poses (B, 63) axis-angle radians."""
        return self.encoder_net(pose)

    def decode(self, z: Tensor) -> Tensor:
        """Rotation matrices (B, 21, 3, 3) of latent codes (B, 32)."""
        return self.decoder_net(z)

    def decode_axis_angle(self, z: Tensor) -> Tensor:
        """Body poses (B, 63) axis-angle radians of latent codes (B, 32)."""
        rot = self.decode(z)
        return matrix_to_axis_angle(rot.reshape(-1, 3, 3)).reshape(z.shape[0], VPOSER_POSE_DIM)

    def reconstruct(self, pose: Tensor) -> Tensor:
        """decode(μ(pose)): the encoder's mean decoded, (B, 63) axis-angle (the deterministic round trip)."""
        return self.decode_axis_angle(self.encode(pose)[0])


def _state_arrays(state: dict[str, Any], source: str) -> dict[str, Tensor]:
    """A V02_05 state dict checked against :data:`V02_05_LAYOUT` (every key, every shape, finite floats)."""
    missing = sorted(set(V02_05_LAYOUT) - set(state))
    if missing:
        raise ModelFileError(f"{source}: not a VPoser V02_05 state dict: lacks {missing[:4]}"
                             f"{' …' if len(missing) > 4 else ''} ({len(missing)} of {len(V02_05_LAYOUT)} tensors)")
    out = {}
    for key, shape in V02_05_LAYOUT.items():
        value = torch.as_tensor(np.asarray(state[key]) if not isinstance(state[key], Tensor) else state[key])
        if tuple(value.shape) != shape:
            raise ModelFileError(f"{source}: {key} has shape {tuple(value.shape)}, VPoser V02_05 has {shape}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(f"{source}: {key} holds NaN or infinite values; {DAMAGED}")
        out[key] = value
    return out


def vposer_from_state(state: dict[str, Any], source: str = "<state dict>") -> VPoser:
    """A VPoser (eval mode, float32) from a V02_05 state dict (keys without the ``vp_model.`` prefix)."""
    model = VPoser()
    model.load_state_dict(_state_arrays(state, source))
    return model.eval()


def read_vposer_checkpoint(path: str | Path) -> VPoser:
    """Read a real VPoser V02_05 checkpoint (a PyTorch Lightning ``.ckpt`` whose ``state_dict`` keys start with
    ``vp_model.``; a bare state dict, with or without the prefix, is read too) into :class:`VPoser`.

    Read with ``torch.load(weights_only=True)``: tensors, plain containers and numbers only, no code from the file
    runs. A checkpoint that needs more (a pickled class or function) is refused with one line saying what to do."""
    path = require_file(path, "VPoser checkpoint", "pass the .ckpt of VPoser V02_05 (human_body_prior)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        # what torch.load raises for a refused global (UnpicklingError), a damaged zip (RuntimeError) or a foreign file
        text = " ".join(str(err).split())
        needs = re.search(r"GLOBAL ([\w.]+)", text)
        if needs:
            raise ModelFileError(
                f"{path}: the checkpoint needs the Python global {needs.group(1)} to load, and fitloop never unpickles "
                f"code from a file; where you trust the file, save its weights alone: torch.save(torch.load(f, "
                f"weights_only=False)['state_dict'], 'vposer_weights.pt'), and pass that") from None
        with open(path, "rb") as fh:
            kind = looks_like(fh.read(256))
        raise ModelFileError(f"{path}: not a readable PyTorch checkpoint (it looks like {kind}); pass VPoser "
                             f"V02_05's .ckpt; if it is one, {DAMAGED}") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: a checkpoint holding {type(obj).__name__}, not a state dict; pass VPoser "
                             f"V02_05's .ckpt")
    prefixed = {k[len(CHECKPOINT_PREFIX):]: v for k, v in state.items()
                if isinstance(k, str) and k.startswith(CHECKPOINT_PREFIX)}
    return vposer_from_state(prefixed or state, str(path))


# --- The prior energy -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VAEPriorFile:
    """What a fitloop VAE prior file holds: the network's V02_05 state, the per-joint reconstruction scale σ_j
    (21,) rad per axis, the VPoser joints left out of the VAE (``free_joints``: no variance in the training data),
    σ_f (rad) of those and of SMPL's hand slots, and metadata (provenance, training)."""

    state: dict[str, np.ndarray]
    rec_sigma: np.ndarray
    free_joints: tuple[int, ...]
    free_sigma: float
    metadata: dict[str, Any]


class VAEPosePrior(nn.Module):
    """The VPoser energy over SMPL body poses (B, 69) (module docstring): ``forward`` gives E (B,), dimensionless,
    lower = likelier; ``residuals`` r (B, R) with E = ½‖r‖²; ``residuals_and_jacobian`` also ∂r/∂θ (B, R, 69),
    exact. Holds its network in eval mode; its parameters never take gradients.

    rec_sigma (21,): σ_j, rad per rotation axis. free_joints: VPoser joints (0–20) the network does not see (their
    input is zeroed; for a prior trained on data that never moves them, e.g. CMU's collars) and that, like SMPL's
    hand slots, get an independent N(0, free_sigma²) per value instead — the Gaussian mixture's treatment of
    unobserved joints."""

    rec_sigma: Tensor
    keep: Tensor

    def __init__(self, vposer: VPoser, rec_sigma: np.ndarray | Tensor, free_sigma: float,
                 free_joints: tuple[int, ...] = (), metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.vposer = vposer.eval()
        for p in self.vposer.parameters():
            p.requires_grad_(False)
        sigma = torch.as_tensor(np.asarray(rec_sigma, dtype=np.float32))
        if sigma.shape != (VPOSER_JOINTS,) or not bool((sigma > 0).all()) or not free_sigma > 0:
            raise ModelFileError(f"VAE prior: rec_sigma must be ({VPOSER_JOINTS},) positive and free_sigma positive, "
                                 f"got {tuple(sigma.shape)} and {free_sigma}")
        free = tuple(sorted({int(j) for j in free_joints}))
        if any(not 0 <= j < VPOSER_JOINTS for j in free):
            raise ModelFileError(f"VAE prior: free_joints must be VPoser joints 0-{VPOSER_JOINTS - 1}, got {free}")
        keep = torch.ones(VPOSER_JOINTS)
        keep[list(free)] = 0.0
        self.register_buffer("rec_sigma", sigma)
        self.register_buffer("keep", keep)
        self.free_joints = free
        # values with the independent Gaussian: the free joints' three each, then SMPL's two hand slots
        self.free_values = tuple(3 * j + a for j in free for a in range(3)) + tuple(
            range(VPOSER_POSE_DIM, VPOSER_POSE_DIM + HAND_SLOTS_DIM))
        self.free_sigma = float(free_sigma)
        self.metadata = dict(metadata or {})

    @classmethod
    def from_file(cls, path: str | Path) -> VAEPosePrior:
        """Load a fitloop VAE prior ``.npz`` (:func:`load_vae_prior`)."""
        f = load_vae_prior(path)
        return cls(vposer_from_state(f.state, str(path)), f.rec_sigma, f.free_sigma, f.free_joints, f.metadata)

    @classmethod
    def from_checkpoint(cls, path: str | Path, rec_sigma_deg: float = 5.0,
                        free_sigma_deg: float = 15.0) -> VAEPosePrior:
        """The energy of a real VPoser V02_05 checkpoint (`read_vposer_checkpoint`): σ_j = ``rec_sigma_deg`` for every
        joint (a checkpoint carries no reconstruction statistics), no free joints, SMPL's hand slots N(0, σ_f²).
        VPoser's rotations are relative to SMPL-X's T-pose (AMASS), which a fit of another model inherits."""
        return cls(read_vposer_checkpoint(path), np.full(VPOSER_JOINTS, math.radians(rec_sigma_deg)),
                   math.radians(free_sigma_deg), (), {"source": str(path), "format": "vposer-v02_05-checkpoint"})

    @property
    def dim(self) -> int:
        return VPOSER_POSE_DIM + HAND_SLOTS_DIM

    @property
    def num_residuals(self) -> int:
        return self.vposer.latent + 9 * VPOSER_JOINTS + len(self.free_values)

    def _residuals_one(self, body_pose: Tensor) -> Tensor:
        """r (R,) of one body pose (69,): the function `residuals` vmaps (and the tests differentiate)."""
        keep = self.keep.to(body_pose.dtype)
        x = body_pose[:VPOSER_POSE_DIM] * keep.repeat_interleave(3)
        mu = self.vposer.encode(x[None])[0]                                              # (1, 32)
        rec = self.vposer.decode(mu)[0]                                                  # (21, 3, 3)
        rot = rodrigues(x.reshape(VPOSER_JOINTS, 3))                                     # (21, 3, 3)
        scale = self.rec_sigma.to(body_pose.dtype) * math.sqrt(2.0)
        diff = ((rot - rec) * (keep / scale)[:, None, None]).reshape(-1)
        return torch.cat([mu[0], diff, body_pose[list(self.free_values)] / self.free_sigma])

    def _checked(self, body_pose: Tensor) -> Tensor:
        if body_pose.ndim != 2 or body_pose.shape[1] != self.dim:
            raise ValueError(f"body_pose must be (B, {self.dim}) axis-angle, got {tuple(body_pose.shape)}")
        return body_pose.to(self.rec_sigma.dtype)

    def residuals(self, body_pose: Tensor) -> Tensor:
        """Residuals (B, R) of body poses (B, 69) axis-angle radians; E = ½‖r‖²."""
        return torch.func.vmap(self._residuals_one)(self._checked(body_pose))

    def residuals_and_jacobian(self, body_pose: Tensor) -> tuple[Tensor, Tensor]:
        """Residuals (B, R) and their exact Jacobian (B, R, 69) w.r.t. the body pose.

        Written out layer by layer (eval mode: batch norm is affine, dropout the identity, LeakyReLU's slope 1 or
        0.01): ∂μ/∂θ = W_μ W_7 W_6 A_2 S_1 W_2 A_1 with S_1 the slopes at this θ; the decoder's ∂o/∂z likewise,
        taken through z (32 columns) before θ, which costs half of going through θ's 63; the 6D-to-matrix and
        Rodrigues steps in closed form (`rotation_from_6d_jacobian`, `rodrigues_jacobian`). Far faster than
        `torch.func.jacfwd` of the whole network (whose forward mode through these small ops is slow on CPU);
        `tests/test_vposer.py` checks it against autograd."""
        x = self._checked(body_pose)
        keep = self.keep.to(x.dtype)
        batch, xin = x.shape[0], x[:, :VPOSER_POSE_DIM] * keep.repeat_interleave(3)
        enc, dec = self.vposer.encoder_net, self.vposer.decoder_net
        bn1, lin2, bn2, lin6, lin7, head = enc[1], enc[2], enc[4], enc[6], enc[7], enc[8]
        lin0, lin3, lin5 = dec[0], dec[3], dec[5]
        slope = enc[3].negative_slope
        a1 = bn1.weight / torch.sqrt(bn1.running_var + bn1.eps)                          # (63,)
        a2 = bn2.weight / torch.sqrt(bn2.running_var + bn2.eps)                          # (512,)
        h1 = lin2(bn1(xin))                                                              # (B, 512)
        mu = head.mu(lin7(lin6(bn2(F.leaky_relu(h1, slope)))))                         # (B, 32)
        s1 = torch.where(h1 > 0, 1.0, slope)
        m = (head.mu.weight @ lin7.weight @ lin6.weight) * a2                           # (32, 512), constant
        d_mu = (m * s1[:, None, :]) @ (lin2.weight * (a1 * keep.repeat_interleave(3)))  # (B, 32, 63)
        g1 = lin0(mu)
        g3 = lin3(F.leaky_relu(g1, slope))
        out = lin5(F.leaky_relu(g3, slope))                                              # (B, 126)
        t1, t2 = torch.where(g1 > 0, 1.0, slope), torch.where(g3 > 0, 1.0, slope)
        d_z = lin5.weight @ (t2[..., None] * (lin3.weight @ (t1[..., None] * lin0.weight)))   # (B, 126, 32)
        d_out = (d_z @ d_mu).reshape(batch, VPOSER_JOINTS, 6, VPOSER_POSE_DIM)
        rec, d_six = rotation_from_6d_jacobian(out.reshape(batch * VPOSER_JOINTS, 6))
        rec, d_six = rec.reshape(batch, VPOSER_JOINTS, 9), d_six.reshape(batch, VPOSER_JOINTS, 9, 6)
        rot, d_rot = rodrigues_jacobian(xin.reshape(batch * VPOSER_JOINTS, 3))
        rot, d_rot = rot.reshape(batch, VPOSER_JOINTS, 9), d_rot.reshape(batch, VPOSER_JOINTS, 9, 3)
        scale = (self.rec_sigma.to(x.dtype) * math.sqrt(2.0) / keep.clamp_min(1e-30))[None, :, None]  # free: 0
        d_diff = -(d_six @ d_out)                                                        # (B, 21, 9, 63)
        for j in range(VPOSER_JOINTS):
            if j not in self.free_joints:
                d_diff[:, j, :, 3 * j:3 * j + 3] += d_rot[:, j]
        latent = mu.shape[1]
        jac = x.new_zeros(batch, self.num_residuals, self.dim)
        jac[:, :latent, :VPOSER_POSE_DIM] = d_mu
        jac[:, latent:latent + 9 * VPOSER_JOINTS, :VPOSER_POSE_DIM] = (d_diff / scale[..., None]).reshape(
            batch, 9 * VPOSER_JOINTS, VPOSER_POSE_DIM)
        free = list(self.free_values)
        jac[:, latent + 9 * VPOSER_JOINTS + torch.arange(len(free), device=x.device), free] = 1.0 / self.free_sigma
        r = torch.cat([mu, ((rot - rec) / scale).reshape(batch, -1), x[:, free] / self.free_sigma], 1)
        return r, jac

    def forward(self, body_pose: Tensor) -> Tensor:
        """Energy (B,) of body poses (B, 69) axis-angle radians: ½‖r‖², nats up to a constant."""
        return 0.5 * self.residuals(body_pose).square().sum(-1)

    def latent_norm(self, body_pose: Tensor) -> Tensor:
        """‖μ(θ)‖ (B,): SMPLify-X's quantity, the encoder's mean's norm (for evaluation)."""
        return self.vposer.encode(self._checked(body_pose)[:, :VPOSER_POSE_DIM])[0].norm(dim=-1)


def is_vae_prior_file(arrays: dict[str, np.ndarray]) -> bool:
    """Whether a loaded ``.npz`` is a fitloop VAE prior (it carries ``rec_sigma``)."""
    return "rec_sigma" in arrays


def load_vae_prior(path: str | Path) -> VAEPriorFile:
    """Read a fitloop VAE prior ``.npz``: the V02_05 tensors by their state-dict names, ``rec_sigma`` (21,),
    ``free_sigma`` (), ``free_joints`` (n,), ``metadata`` (JSON string). No pickles (``allow_pickle=False``)."""
    hint = "train one with `fitloop prior train --vae` or use fitting/data/pose_prior_vae_open.npz"
    path = require_file(path, "VAE pose-prior file", hint)
    arrays, _ = read_npz(path, "VAE pose-prior file", hint)
    if not is_vae_prior_file(arrays):
        raise ModelFileError(f"{path}: not a fitloop VAE pose prior (no rec_sigma); a Gaussian-mixture prior is read "
                             f"by MaxMixturePrior.from_file")
    try:
        metadata = json.loads(str(arrays["metadata"].reshape(-1)[0])) if "metadata" in arrays else {}
        free_sigma = float(arrays["free_sigma"])
        free_joints = tuple(int(j) for j in np.asarray(arrays.get("free_joints", np.zeros(0)), dtype=np.int64))
    except (json.JSONDecodeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: metadata, free_sigma or free_joints unreadable ({err}); {DAMAGED}") from None
    rec_sigma = np.asarray(arrays["rec_sigma"], dtype=np.float64)
    if rec_sigma.shape != (VPOSER_JOINTS,) or not np.isfinite(rec_sigma).all() or (rec_sigma <= 0).any() \
            or not (math.isfinite(free_sigma) and free_sigma > 0):
        raise ModelFileError(f"{path}: rec_sigma {rec_sigma.shape} / free_sigma {free_sigma} invalid (need "
                             f"({VPOSER_JOINTS},) positive, positive); {DAMAGED}")
    state = {k: v for k, v in arrays.items() if k in V02_05_LAYOUT}
    _state_arrays(state, str(path))
    return VAEPriorFile(state, rec_sigma, free_joints, free_sigma, metadata if isinstance(metadata, dict) else {})


def save_vae_prior(model: VPoser, rec_sigma: np.ndarray, free_sigma: float, free_joints: tuple[int, ...],
                   metadata: dict[str, Any], path: str | Path) -> None:
    """Write a fitloop VAE prior ``.npz`` atomically and byte-reproducibly (`fitting.priors.write_npz`)."""
    from fitting.priors import write_npz
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    meta = {"format": VAE_FORMAT, "format_version": VAE_FORMAT_VERSION, **metadata}
    write_npz(path, {**state, "rec_sigma": np.asarray(rec_sigma, dtype=np.float32),
                     "free_sigma": np.asarray(free_sigma, dtype=np.float64),
                     "free_joints": np.asarray(free_joints, dtype=np.int64).reshape(-1),
                     "metadata": np.array(json.dumps(meta, sort_keys=True, indent=1))})
