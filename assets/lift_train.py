"""Train the keypoint-to-pose lifter (`fitting.lifter.PoseLifter`) that starts SMPLify's fits without an estimate.

**Poses**: `assets.prior_train.training_poses`'s — the pose prior's clips with its held-out subjects never read
(so `fitloop bench smplify`'s CMU people are people the lifter never saw), glitches rejected, ~10 fps, walking
capped, mirrored — each drawn by its weight.

**Views**, drawn afresh for every batch from one seeded generator (nothing is stored): the body turned to any
heading about its vertical, the camera pitched −10°…30° and rolled ±5°; betas ~ N(0, 1); the pelvis at a depth of
2.5–40 body-model metres (log-uniform: strong perspective to nearly orthographic, SPIN's crop camera) and off the
optical axis by up to ±15 % of it; a pinhole projection. **Keypoints**: OpenPose's, the dataset joints or both
(a third each), SMPLify's ignored joints never; every joint dropped at a rate drawn per example from 0–25 %; then
Gaussian noise with a standard deviation drawn per example from 0–4 % of the keypoints' box side.

**Loss**: Σ ‖R̂_j − R_j‖²_F over the 24 rotations plus ``joint_weight`` × the mean squared error (m²) of the 24
kinematic joints relative to the pelvis (`fitting.skeleton.Skeleton.posed`: forward kinematics of the rotations
with the true betas). Adam with a
one-cycle learning-rate schedule. Deterministic for a seed and a thread count.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from assets.prior_train import TrainConfig, clip_errors, provenance, resolve_held_out, training_poses
from core.joints import J24_NAMES, NUM_JOINTS, OPENPOSE_NAMES, SMPLIFY_IGNORED, indices
from core.threads import torch_threads
from fitting.body_model import OPEN_MODELS, load_body_model
from fitting.lifter import LIFTED_JOINTS, PoseLifter, lifter_input, save_pose_lifter
from fitting.skeleton import Skeleton, matrix_to_axis_angle, rodrigues


@dataclass(frozen=True)
class LiftTrainConfig:
    """Everything that decides a trained lifter besides the poses' `TrainConfig`; stored in its metadata."""

    steps: int = 5000
    batch_size: int = 512
    lr: float = 1e-3
    hidden: int = 512
    blocks: int = 2
    joint_weight: float = 10.0          # on the joints' squared error in m² (a 10 cm error weighs 0.1)
    mix_limbs: float = 0.3              # each limb group (`LIMB_GROUPS`) taken from another pose with this chance
    pose_jitter_deg: float = 8.0        # N(0, this²) added to every body-pose value
    max_drop: float = 0.25              # per-example keypoint drop rate, drawn from [0, max_drop)
    max_noise: float = 0.04             # per-example noise std, drawn from [0, max_noise) × the box side
    pitch_deg: tuple[float, float] = (-10.0, 30.0)
    roll_deg: float = 5.0
    depth_m: tuple[float, float] = (2.5, 40.0)
    seed: int = 0
    threads: int = 1


# SMPL's body joints (1-23) by kinematic chain: the legs, the arms (collar to hand), the spine to the head
LIMB_GROUPS: tuple[tuple[int, ...], ...] = ((1, 4, 7, 10), (2, 5, 8, 11), (13, 16, 18, 20, 22), (14, 17, 19, 21, 23),
                                            (3, 6, 9, 12, 15))


class ViewSampler:
    """Draws training batches (module docstring): lifter inputs (B, 49, 3), true poses (B, 72), betas (B, NB)."""

    def __init__(self, poses: np.ndarray, weights: np.ndarray, skeleton: Skeleton, config: LiftTrainConfig):
        self.poses = torch.as_tensor(poses, dtype=torch.float32)
        self.weights = torch.as_tensor(weights / weights.sum(), dtype=torch.float64)
        self.skeleton, self.config = skeleton, config
        self.num_betas = skeleton.j_dirs.shape[-1]
        ignored = torch.zeros(NUM_JOINTS)
        ignored[list(indices(SMPLIFY_IGNORED))] = 1
        op, gt = torch.zeros(NUM_JOINTS), torch.zeros(NUM_JOINTS)
        op[list(indices(OPENPOSE_NAMES))] = 1
        gt[list(indices(J24_NAMES))] = 1
        self.sets = torch.stack([op, gt, (op + gt).clamp(max=1)]) * (1 - ignored)    # (3, 49)
        self.group_columns = [torch.tensor([3 * (j - 1) + k for j in group for k in range(3)]) for group in LIMB_GROUPS]

    def __call__(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        c = self.config

        def uniform(lo: float, hi: float, *shape: int) -> Tensor:
            return lo + (hi - lo) * torch.rand(*(shape or (n,)), generator=gen)

        idx = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        heading = uniform(0.0, 2 * math.pi)
        pitch = torch.deg2rad(uniform(*c.pitch_deg))
        roll = torch.deg2rad(uniform(-c.roll_deg, c.roll_deg))
        # model frame (Y up) -> camera frame (y down): turn about the body's vertical, flip, pitch, roll
        orient = (_about(2, roll) @ _about(0, pitch) @ _about(0, torch.full((n,), math.pi)) @ _about(1, heading))
        body_pose = self.poses[idx].clone()
        if c.mix_limbs > 0:       # new combinations of the data's limbs, each local to its parent
            for cols in self.group_columns:
                donor = torch.multinomial(self.weights, n, replacement=True, generator=gen)
                swap = torch.rand(n, generator=gen) < c.mix_limbs
                body_pose[:, cols] = torch.where(swap[:, None], self.poses[donor[:, None], cols], body_pose[:, cols])
        if c.pose_jitter_deg > 0:
            body_pose = body_pose + math.radians(c.pose_jitter_deg) * torch.randn(body_pose.shape, generator=gen)
        pose = torch.cat([matrix_to_axis_angle(orient), body_pose], 1)
        betas = torch.randn(n, self.num_betas, generator=gen)
        with torch.no_grad():
            joints = self.skeleton(pose, betas).points[:, :NUM_JOINTS]
        depth = torch.exp(uniform(math.log(c.depth_m[0]), math.log(c.depth_m[1])))
        offset = uniform(-0.15, 0.15, n, 2) * depth[:, None]
        cam = joints + torch.cat([offset, depth[:, None]], 1)[:, None]
        xy = cam[..., :2] / cam[..., 2:]
        seen = self.sets[torch.randint(0, 3, (n,), generator=gen)]
        seen = seen * (torch.rand(n, NUM_JOINTS, generator=gen) >= uniform(0.0, c.max_drop)[:, None]).float()
        x = lifter_input(xy, seen)
        noise = torch.randn(n, NUM_JOINTS, 2, generator=gen) * uniform(0.0, c.max_noise)[:, None, None]
        x[..., :2] = x[..., :2] + noise * seen[..., None]
        return x, pose, betas


def _about(axis: int, angle: Tensor) -> Tensor:
    aa = torch.zeros(len(angle), 3)
    aa[:, axis] = angle
    return rodrigues(aa)


def fit_lifter(sampler: ViewSampler, config: LiftTrainConfig, progress=None) -> tuple[PoseLifter, dict[str, Any]]:
    """Train a lifter on the sampler's views; returns it (eval mode) and a report (loss every 500 steps)."""
    with torch_threads(config.threads):
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        model = PoseLifter(config.hidden, config.blocks)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps, pct_start=0.05)
        skeleton = sampler.skeleton
        history, t0, run = [], time.perf_counter(), {"rot": 0.0, "joint_mm": 0.0}
        for step in range(config.steps):
            x, pose, betas = sampler(config.batch_size, gen)
            target = rodrigues(pose.reshape(-1, 3)).reshape(-1, LIFTED_JOINTS, 3, 3)
            rot = model(x)
            rot_loss = (rot - target).square().sum((-1, -2)).mean()
            with torch.no_grad():                                        # the tree's joints, model frame, m
                true = skeleton.posed(skeleton.slot_rotations(target), betas).pos
            pred = skeleton.posed(skeleton.slot_rotations(rot), betas).pos
            joint_sq = ((pred - pred[:, :1]) - (true - true[:, :1])).square().sum(-1).mean()
            loss = rot_loss + config.joint_weight * joint_sq
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            run["rot"] += float(rot_loss.detach())
            run["joint_mm"] += 1000 * float(joint_sq.detach().sqrt())
            if (step + 1) % 500 == 0 or step + 1 == config.steps:
                count = (step % 500) + 1
                history.append({"step": step + 1, **{k: round(v / count, 4) for k, v in run.items()}})
                run = {k: 0.0 for k in run}
                if progress is not None:
                    progress(step + 1, history[-1])
        model.eval()
        return model, {"history": history, "time_train_s": round(time.perf_counter() - t0, 2)}


def train_lifter(sources: list[Path], out: Path, *, kind: str = "bvh", model: Path | None = None,
                 fps: float = 10.0, walk_share: float = 0.10, mirror: bool = True,
                 held_out_subjects: tuple[int, ...] | None = None, config: LiftTrainConfig = LiftTrainConfig(),
                 progress=None) -> dict[str, Any]:
    """Train the lifter on ``sources`` (as `assets.prior_train.train_prior` reads them) with the body model
    ``model`` (default the open model), write it to ``out`` (`fitting.lifter.save_pose_lifter`), return a report."""
    poses_config = TrainConfig(seed=config.seed, fps=fps, walk_share=walk_share, mirror=mirror,
                               held_out_subjects=resolve_held_out(kind, held_out_subjects))
    t0 = time.perf_counter()
    tp = training_poses(sources, kind=kind, config=poses_config, model=model)
    body = load_body_model(model if model is not None else OPEN_MODELS["open"])
    sampler = ViewSampler(tp.poses, tp.weights, Skeleton(body), config)
    t_load = time.perf_counter() - t0
    lifter, report = fit_lifter(sampler, config, progress)
    metadata = {"what": "2D keypoints (SPIN's 49) -> SMPL-layout pose (global orientation in the camera frame, 23 "
                        "body joints), Martinez et al. 2017's MLP; fitting.lifter",
                "train_config": asdict(config), "poses": provenance(tp, kind),
                "body_model": str(model) if model is not None else "open", "training": report}
    save_pose_lifter(lifter, metadata, out)
    return {"out": str(out), "samples": len(tp.poses), "clip_errors": clip_errors(tp), "time_load_s": round(t_load, 2),
            **report}
