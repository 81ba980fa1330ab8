"""SMPLify benchmark: fitloop's fast SMPLify against SPIN's reference procedure, on synthetic people.

People: the open body model in real poses (SPIN's LSP fits, 1000 SMPL poses in the same joint tree, read from
../shared/fixtures when present; otherwise poses sampled from the shipped pose prior), random betas ~ N(0, 1)
and crop cameras (f = 5000 px, 224 px crop, person scale s ~ U(0.8, 1.1)). Keypoints: the 24 dataset joints
projected, with Gaussian pixel noise (0 and 5 px) and ~10% of joints missing. Two starts: `mean` (mean pose
facing the camera, mean shape, translation from the torso) and `noisy_true` (the true pose with 0.15 rad of
noise per joint angle, mean shape, true translation with 10% depth error), as a network would give.

Metrics: MPJPE and PA-MPJPE in mm as fitloop measures every fit against truth (`fits.evaluate`: the 14
evaluation joints from the body model's Human3.6M regressor, pelvis-centred, fit and true body posed alike);
reprojection error in px against the given (noisy) keypoints over visible joints; fits per second.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from core.camera import project
from core.frames import FIT_FOCAL, FIT_RES
from core.joints import J24_NAMES, JOINT_INDEX, indices
from fits.evaluate import ErrorSums, posed_eval_joints
from fitting.body_model import BodyModel, load_body_model
from fitting.priors import DEFAULT_PRIOR, MaxMixturePrior
from fitting.smplify import SMPLify, SMPLifyConfig, mean_pose_start

SPIN_LSP_FITS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "lsp" / "spin_npz" / "lsp-orig_fits.npy"


def synthetic_people(body: BodyModel, prior: MaxMixturePrior, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """True parameters and noise-free 2D/3D joints of `batch` synthetic people (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    if SPIN_LSP_FITS.is_file():
        fits = torch.as_tensor(np.load(SPIN_LSP_FITS), dtype=torch.float32)
        pose = fits[torch.randperm(len(fits), generator=gen)[:batch], :72].clone()
        source = "SPIN LSP fits"
    else:  # sample the prior: a component by weight, then its Gaussian
        k = torch.multinomial(prior.log_weights.exp(), batch, replacement=True, generator=gen)
        chol = torch.linalg.cholesky(torch.linalg.inv(prior.precisions.double())).float()
        body_pose = prior.means[k] + (chol[k] @ torch.randn(batch, prior.dim, 1, generator=gen))[..., 0]
        orient = torch.tensor([torch.pi, 0.0, 0.0]).expand(batch, 3) + 0.2 * torch.randn(batch, 3, generator=gen)
        pose = torch.cat([orient, body_pose], 1)
        source = "pose prior samples"
    betas = torch.randn(batch, body.num_betas, generator=gen)
    scale = 0.8 + 0.3 * torch.rand(batch, generator=gen)
    cam_t = torch.zeros(batch, 3)
    cam_t[:, 2] = 2 * FIT_FOCAL / (FIT_RES * scale)
    with torch.no_grad():
        joints = body(betas, pose[:, 3:], pose[:, :3]).joints
    # centre each person in the crop: the pelvis projects near the middle, with a little jitter
    center = torch.full((batch, 2), FIT_RES / 2)
    cam_t[:, :2] = -joints[:, JOINT_INDEX["Pelvis (MPII)"], :2] + 0.05 * torch.randn(batch, 2, generator=gen)
    keypoints = project(joints, cam_t, FIT_FOCAL, center)
    return {"pose": pose, "betas": betas, "cam_t": cam_t, "joints": joints, "keypoints": keypoints,
            "center": center, "source": source}


def observe(people: dict, noise_px: float, missing: float, seed: int) -> torch.Tensor:
    """Noisy (B, 49, 3) keypoints of the 24 dataset joints, ~`missing` of them absent (confidence 0)."""
    gen = torch.Generator().manual_seed(seed)
    batch = people["keypoints"].shape[0]
    kp = torch.zeros(batch, 49, 3)
    j24 = torch.as_tensor(indices(J24_NAMES))
    kp[:, j24, :2] = people["keypoints"][:, j24] + noise_px * torch.randn(batch, len(j24), 2, generator=gen)
    kp[:, j24, 2] = (torch.rand(batch, len(j24), generator=gen) >= missing).float()
    kp[..., :2] *= kp[..., 2:]  # absent joints carry no coordinates, as in the datasets
    return kp


def initial_estimates(body: BodyModel, people: dict, keypoints: torch.Tensor, kind: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    batch = keypoints.shape[0]
    betas = torch.zeros(batch, body.num_betas)
    if kind == "mean":
        pose, betas, cam_t = mean_pose_start(body, keypoints, FIT_FOCAL, people["center"])
    elif kind == "noisy_true":
        pose = people["pose"] + 0.15 * torch.randn(batch, 72, generator=gen)
        cam_t = people["cam_t"].clone()
        cam_t[:, 2] *= 1 + 0.1 * torch.randn(batch, generator=gen)
    else:
        raise ValueError(kind)
    return pose, betas, cam_t


def evaluate(body: BodyModel, people: dict, keypoints: torch.Tensor, pose, betas, cam_t) -> dict[str, float]:
    with torch.no_grad():
        joints = body(betas, pose[:, 3:], pose[:, :3]).joints
    visible = keypoints[..., 2] > 0
    reproj = (project(joints, cam_t, FIT_FOCAL, people["center"]) - keypoints[..., :2]).norm(dim=-1)
    errors = ErrorSums.empty()
    errors.add(["bench"] * len(pose), posed_eval_joints(body, pose, betas),
               posed_eval_joints(body, people["pose"], people["betas"]))
    result = errors.result()["all"]
    return {"reproj_px": float(reproj[visible].mean()), "mpjpe_mm": result["mpjpe_mm"],
            "pa_mpjpe_mm": result["pa_mpjpe_mm"]}


def run(batch: int = 64, model: str = "open", prior_path: Path | None = None, noise_levels=(5.0, 0.0),
        missing: float = 0.1, seed: int = 0, device: str = "cpu", modes=("reference", "fast"),
        progress: bool = True) -> dict:
    """Fit every (mode, start, noise) combination once; return the JSON-able benchmark record."""
    torch.manual_seed(seed)
    body = load_body_model(model)
    prior = MaxMixturePrior.from_file(prior_path or DEFAULT_PRIOR)
    people = synthetic_people(body, prior, batch, seed)
    result = {"device": device, "batch": batch, "threads": torch.get_num_threads(), "poses": people["source"],
              "model": body.name, "missing_fraction": missing, "modes": {}}
    for mode in modes:
        fitter = SMPLify(body, prior, SMPLifyConfig(mode=mode))
        result["modes"][mode] = {}
        for start in ("mean", "noisy_true"):
            entry: dict = {}
            for noise in noise_levels:
                keypoints = observe(people, noise, missing, seed + 1)
                pose0, betas0, cam0 = initial_estimates(body, people, keypoints, start, seed + 2)
                t0 = time.perf_counter()
                fit = fitter(keypoints, pose0, betas0, cam0, people["center"],
                             start="mean" if start == "mean" else "estimate")
                seconds = time.perf_counter() - t0
                metrics = {"fits_per_s": batch / seconds, **evaluate(body, people, keypoints, fit.pose, fit.betas, fit.cam_t),
                           "init_pa_mpjpe_mm": evaluate(body, people, keypoints, pose0, betas0, cam0)["pa_mpjpe_mm"]}
                if progress:
                    print(f"  {mode:<9} {start:<10} noise {noise:g} px: {metrics['fits_per_s']:8.1f} fits/s, "
                          f"PA-MPJPE {metrics['pa_mpjpe_mm']:.1f} mm (start {metrics['init_pa_mpjpe_mm']:.1f}), "
                          f"reproj {metrics['reproj_px']:.2f} px", flush=True)
                if noise == 5.0:
                    entry.update(metrics)
                else:
                    entry[f"noise_{noise:g}px"] = metrics
            result["modes"][mode][start] = entry
    if {"reference", "fast"} <= set(modes):
        result["modes"]["default"] = result["modes"].pop("fast")
        result["speedup"] = min(result["modes"]["default"][s]["fits_per_s"] / result["modes"]["reference"][s]["fits_per_s"]
                                for s in ("mean", "noisy_true"))
    return result
