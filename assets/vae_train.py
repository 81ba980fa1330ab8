"""Train a VPoser-architecture VAE pose prior (`fitting.vposer`) on the poses the Gaussian mixture is trained on.

The poses are `assets.prior_train.training_poses`'s: the same clips, held-out subjects, glitch rejection, ~10 fps
subsampling, walking cap and left/right mirroring, relative to the same body model's T-pose. VPoser's input is the
first 63 values (SMPL joints 1–21). Joints the data never moves (CMU's collars; `free_joints_of`) are left out of
the network (their input is zero in training and zeroed by the prior) and, like SMPL's two hand slots, get the
mixture's independent spread for joints no source animates (``unobserved_std_deg``, 15°).

**Objective** (per pose θ, weighted by its frame weight): the evidence bound of a VAE whose decoder is Gaussian on
each joint's rotation with σ_train per axis,

    L(θ) = Σ_j ‖R(θ_j) − D_j(z)‖²_F / (4 σ_train²) + KL(q(z|θ) ‖ N(0, I)),   z ~ q(z|θ) (reparametrised),

(‖ΔR‖²_F ≈ 2φ² for a rotation error φ, so the first term is Σ_j φ_j² / (2σ_train²)). V02_05 trained on AMASS
meshes (an L1 loss on the vertices plus a geodesic rotation loss, KL weight 0.005); without a mesh in the loop, the
rotation term stands in for both, and σ_train = 5° is the Gaussian mixture's covariance floor (the same argument:
CMU's hinges are exact, a body model's joints are not). For the same reason every training pose gets fresh
N(0, (5°)²) noise on each value per batch (``input_noise_deg``): the data convolved with the floor, as the
mixture's covariances are. Without it the encoder's input batch norm scales CMU's near-zero hinge twists up by
~100, and any real pose with a few degrees of knee or elbow twist (SPIN's LSP fits) lands far out in the latent
space (median ‖μ‖ 62 instead of ~6; its round trip off by 65° per joint). Adam (lr 1e-3, weight decay 1e-5:
V02_05's), batch 128, a cosine learning-rate decay over the epochs. After training, σ_j (the energy's per-joint scale) is the RMS rotation
error per axis of the deterministic round trip D(μ(θ)) over the training poses, floored at σ_train.

Deterministic for a seed and a thread count (`torch.manual_seed` for the initial weights and dropout; the shuffle,
input noise and reparametrisation noise from one seeded generator; BLAS with another thread count may change the
last bits).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from assets.prior_train import TrainConfig, clip_errors, more_poses, provenance, resolve_held_out, training_poses
from core.errors import FitloopError
from core.joints import SMPL_JOINT_NAMES
from core.threads import torch_threads
from fitting.skeleton import rodrigues
from fitting.vposer import HIDDEN, LATENT_DIM, VPOSER_JOINTS, VPOSER_POSE_DIM, VPoser, save_vae_prior


@dataclass(frozen=True)
class VAETrainConfig:
    """Everything that decides a trained VAE prior besides the poses' own `TrainConfig`; stored in its metadata."""

    epochs: int = 30
    batch_size: int = 128                # V02_05's
    lr: float = 1e-3                     # V02_05's Adam
    weight_decay: float = 1e-5           # V02_05's
    sigma_train_deg: float = 5.0         # the decoder's rotation scale per axis (the mixture's covariance floor)
    input_noise_deg: float = 5.0         # N(0, this²) added to every training value (the same floor, see above)
    seed: int = 0
    threads: int = 1


def rotation_error_sq(pose: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """‖R(θ_j) − R̂_j‖²_F per joint (B, 21): poses (B, 63) axis-angle radians against rotations (B, 21, 3, 3)."""
    target = rodrigues(pose.reshape(-1, VPOSER_JOINTS, 3))
    return (target - rot).square().sum((-1, -2))


def vae_loss(model: VPoser, pose: torch.Tensor, weight: torch.Tensor, sigma: float,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted mean negative evidence bound of a batch (module docstring); pose (B, 63), weight (B,)."""
    mu, scale = model.encode(pose)
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
    rot = model.decode(mu + scale * eps)
    rec = rotation_error_sq(pose, rot).sum(-1) / (4 * sigma**2)
    kl = (0.5 * (mu.square() + scale.square() - 1) - torch.log(scale.clamp_min(1e-12))).sum(-1)
    w = weight / weight.sum()
    return (w * (rec + kl)).sum(), {"rec": float((w * rec.detach()).sum()), "kl": float((w * kl.detach()).sum())}


def free_joints_of(poses: np.ndarray) -> tuple[int, ...]:
    """VPoser joints (0–20) that never move in ``poses`` (N, ≥63) (all three values' variance < 1e-10: CMU's
    collars), which the VAE leaves out (`fitting.vposer.VAEPosePrior`'s free joints)."""
    var = poses[:, :VPOSER_POSE_DIM].var(axis=0).reshape(VPOSER_JOINTS, 3)
    return tuple(int(j) for j in np.flatnonzero((var < 1e-10).all(axis=1)))


def round_trip_sigma(model: VPoser, poses: np.ndarray, floor: float, free_joints: tuple[int, ...] = (),
                     chunk: int = 4096) -> tuple[np.ndarray, dict]:
    """σ_j (21,) rad per axis: RMS of φ_j/√3 over ``poses`` (N, ≥63) for the deterministic round trip D(μ(θ)),
    floored at ``floor``; and the round trip's mean and 95th-percentile joint angle error (degrees) over the
    joints not in ``free_joints`` (whose input is zeroed, as the prior does)."""
    keep = np.ones(VPOSER_JOINTS, dtype=bool)
    keep[list(free_joints)] = False
    mask = torch.as_tensor(np.repeat(keep, 3), dtype=torch.float32)
    errs = []
    with torch.no_grad():
        for i in range(0, len(poses), chunk):
            x = torch.as_tensor(poses[i:i + chunk, :VPOSER_POSE_DIM], dtype=torch.float32) * mask
            errs.append(rotation_error_sq(x, model.decode(model.encode(x)[0])).numpy())
    err2 = np.concatenate(errs).astype(np.float64)[:, keep]       # (N, kept) ‖ΔR‖²_F ≈ 2φ²
    phi = np.degrees(np.sqrt(err2 / 2))
    sigma = np.full(VPOSER_JOINTS, floor)
    sigma[keep] = np.maximum(np.sqrt((err2 / 2).mean(0) / 3), floor)
    return sigma, {"mean_deg": float(phi.mean()), "p95_deg": float(np.percentile(phi, 95)),
                   "per_joint_mean_deg": [round(float(v), 3) for v in phi.mean(0)]}


def fit_vae(poses: np.ndarray, weights: np.ndarray, config: VAETrainConfig,
            free_joints: tuple[int, ...] = ()) -> tuple[VPoser, dict[str, Any]]:
    """Train VPoser on body poses (N, ≥63) axis-angle radians with sample weights (N,); returns the model (eval
    mode) and a report (loss per epoch, time). Every batch's poses get fresh N(0, input_noise²) noise on every
    value but the ``free_joints``' (which stay zero). Runs on ``config.threads`` CPU threads."""
    if len(poses) < config.batch_size:
        raise FitloopError(f"only {len(poses)} training poses for batch size {config.batch_size}; give more data")
    with torch_threads(config.threads):
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        model = VPoser(HIDDEN, LATENT_DIM)
        x = torch.as_tensor(poses[:, :VPOSER_POSE_DIM], dtype=torch.float32)
        w = torch.as_tensor(weights, dtype=torch.float32)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps = config.epochs * (len(x) // config.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
        sigma = math.radians(config.sigma_train_deg)
        keep = torch.ones(VPOSER_JOINTS)
        keep[list(free_joints)] = 0.0
        noise = math.radians(config.input_noise_deg) * keep.repeat_interleave(3)
        history = []
        t0 = time.perf_counter()
        for _ in range(config.epochs):
            model.train()
            order = torch.randperm(len(x), generator=gen)
            total, parts, n = 0.0, {"rec": 0.0, "kl": 0.0}, 0
            for i in range(0, len(x) - config.batch_size + 1, config.batch_size):  # full batches (batch norm)
                idx = order[i:i + config.batch_size]
                batch = x[idx] + noise * torch.randn(len(idx), VPOSER_POSE_DIM, generator=gen)
                loss, part = vae_loss(model, batch, w[idx], sigma, gen)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach())
                parts = {k: parts[k] + part[k] for k in parts}
                n += 1
            history.append({"loss": round(total / n, 4), **{k: round(v / n, 4) for k, v in parts.items()}})
        model.eval()
        return model, {"epochs": history, "time_train_s": round(time.perf_counter() - t0, 2)}


def train_vae_prior(sources: list[Path], out: Path, *, kind: str = "bvh", model: Path | None = None,
                    fps: float = 10.0, walk_share: float = 0.10, mirror: bool = True,
                    held_out_subjects: tuple[int, ...] | None = None,
                    config: VAETrainConfig = VAETrainConfig()) -> dict[str, Any]:
    """Train the VAE prior on ``sources`` (as `assets.prior_train.train_prior` reads them) and write it to ``out``
    (`fitting.vposer.save_vae_prior`); return a report (dict)."""
    poses_config = TrainConfig(seed=config.seed, fps=fps, walk_share=walk_share, mirror=mirror,
                               held_out_subjects=resolve_held_out(kind, held_out_subjects))
    t0 = time.perf_counter()
    tp = training_poses(sources, kind=kind, config=poses_config, model=model)
    t_load = time.perf_counter() - t0
    if len(tp.poses) < config.batch_size:
        raise FitloopError(f"only {len(tp.poses)} training poses for batch size {config.batch_size}; "
                           f"{more_poses(tp, 'more clips')}")
    free = free_joints_of(tp.poses)
    vae, report = fit_vae(tp.poses, tp.weights, config, free)
    floor = math.radians(config.sigma_train_deg)
    rec_sigma, round_trip = round_trip_sigma(vae, tp.poses, floor, free)
    free_sigma = math.radians(poses_config.unobserved_std_deg)
    metadata: dict[str, Any] = {
        "what": "VAE pose prior (VPoser V02_05 architecture) over SMPL joints 1-21 (SMPL-X body_pose, axis-angle "
                "radians, local, relative to the body model's T-pose); SMPL's hand slots and the free joints "
                "N(0, free_sigma^2) "
                "(fitting/vposer.py VAEPosePrior)",
        "dims": VPOSER_POSE_DIM, "latent_dim": LATENT_DIM, "hidden": HIDDEN,
        "config": {**asdict(config), "poses": asdict(poses_config)}, **provenance(tp, kind),
        "training": {"epochs": report["epochs"]}, "round_trip_train": round_trip,   # no times: same run, same bytes
        "rec_sigma_deg": [round(math.degrees(s), 3) for s in rec_sigma],
        "free_joints": [SMPL_JOINT_NAMES[1 + j] for j in free], "free_sigma_deg": poses_config.unobserved_std_deg,
    }
    save_vae_prior(vae, rec_sigma, free_sigma, free, metadata, out)
    return {**{k: v for k, v in metadata.items() if k not in ("clip_errors", "clips_used", "clips_held_out")},
            "clip_errors": clip_errors(tp), "out": str(out), "time_load_s": round(t_load, 2),
            "time_train_s": report["time_train_s"],
            "time_total_s": round(time.perf_counter() - t0, 2)}


def summarize_vae(report: dict[str, Any]) -> str:
    """A few human-readable lines of a VAE training report."""
    last = report["training"]["epochs"][-1]
    rt = report["round_trip_train"]
    return (f"wrote {report['out']}: VAE pose prior, {report['dims']} -> {report['latent_dim']} latent\n"
            f"clips: {report['clips']} ({len(report['clip_errors'])} unreadable); "
            f"frames used {report['frames_used']} "
            f"({report['samples_with_mirror']} samples with mirroring); held out subjects "
            f"{report.get('held_out_subjects', [])}\n"
            f"training: {len(report['training']['epochs'])} epochs, last loss {last['loss']:.2f} (rec {last['rec']:.2f}, "
            f"KL {last['kl']:.2f}), {report['time_train_s']} s on {report['config']['threads']} thread(s)\n"
            f"round trip on the training poses: mean {rt['mean_deg']:.2f} deg, 95th percentile {rt['p95_deg']:.2f} deg "
            f"per joint\n"
            f"time: {report['time_load_s']} s loading, {report['time_total_s']} s total")
