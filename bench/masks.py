"""`fitloop bench masks`: SMPLify from keypoints alone and with the silhouette term (`fitting.silhouette_term`),
side by side in one run on the same people (issue 15's "must show").

People: bench smplify's held-out pose sources (`bench.smplify_cases`: ``synthetic``, ``cmu``, ``lsp`` where their
data is here; ``test`` split for reporting, ``dev`` for choosing weights, by the same split rule), with betas
uniform in ±2.5 σ (their shape varies widely: keypoints alone cannot tell it), seen by SPIN's crop camera; their
keypoints with bench smplify's ``noisy`` draw (5 px per coordinate, 10 % of joints dropped); their exact masks: the
true body's z-buffer coverage (`fitting.silhouette.render_silhouette`, ``face_index >= 0``) in the 224 px fit frame.
Every person is fitted from SPIN's mean start (the static fits' start: nothing known of the person) by the fast
mode with ``silhouette_weight`` 0 (keypoints alone, the baseline) and with each weight asked for.

Metrics per fit, then averaged: **PVE-PA** (mm) the mean per-vertex distance between the fitted and the true mesh
after Procrustes alignment of the meshes (shape and pose together); **betas error** ‖β_fit − β_true‖ (σ units),
and split in two: its component along the model's **size direction** (`size_direction`: the betas that grow the
body uniformly, which one view cannot tell from depth) and the rest, ``betas_error_scale_removed`` = min_t
‖β_fit − β_true − t·d‖ (the error with the best size change removed; docs/smplify.md says why both are shown);
**shape PA** (mm) the same betas error on the mesh: the mean per-vertex distance between the rest-pose (zero pose)
bodies of β_fit and β_true after Procrustes (size removed), which weighs each β by how much it moves the surface;
**PA-MPJPE** (mm) bench smplify's (`bench.smplify.case_metrics`: the 14 evaluation joints); **IoU** of the fitted
body's coverage with the mask; CPU seconds per fit (`time.process_time`, at ``threads`` torch threads, set here).
Ratios are against the baseline of the same run.

**COCO** (``coco``, where ../shared/fixtures is here; `bench.masks_coco`): the same arms on the real COCO fixture
people, their keypoints and annotated masks as the pipeline hands them over, scored by the IoU of the fit's
silhouette with the annotated mask, with pictures (``pictures``).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.masks_coco import COCO_ROOT, run_coco
from bench.renderer import BETAS_RANGE
from bench.smplify import case_metrics
from bench.smplify_cases import (
    FIT_CENTER,
    FIT_FOCAL,
    FIT_RES,
    SPLITS,
    available_sources,
    draws,
    make_people,
    mean_start,
    observe,
    rng_for,
    view,
)
from core.errors import FitloopError
from core.frames import FIT_FRAME_OFFSET
from core.metrics import procrustes_align
from fits.evaluate import body_eval_joints
from fitting.body_model import BodyModel, load_body_model
from fitting.priors import load_pose_prior, resolve_pose_prior
from fitting.silhouette import render_silhouette
from fitting.smplify import SMPLify, SMPLifyConfig

SOURCES = ("synthetic", "cmu", "lsp")


@dataclass(frozen=True)
class MasksBenchConfig:
    """One run. Defaults: the reported run (test split, 32 people per source, weights 5 and 10)."""

    split: str = "test"
    sources: tuple[str, ...] = SOURCES
    cases: int = 32                                  # people per source
    weights: tuple[float, ...] = (5.0, 10.0)         # silhouette weights fitted beside the baseline (0)
    model: str = "open-small"
    threads: int = 1
    seed: int = 0
    coco: bool = True                                # the COCO section (`bench.masks_coco`) where the fixtures are
    pictures: str | None = None                      # folder for the COCO section's pictures (None: none)

    def checked(self) -> "MasksBenchConfig":
        if self.split not in SPLITS:
            raise FitloopError(f"bench masks: --split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        if self.cases < 1 or self.threads < 1:
            raise FitloopError(f"bench masks: --cases and --threads must be at least 1, got {self.cases} and "
                               f"{self.threads}")
        if not self.weights or min(self.weights) <= 0:
            raise FitloopError(f"bench masks: --weights must be positive numbers, got {self.weights}")
        return self


@dataclass(frozen=True)
class Case:
    """People of one source as SMPLify sees them: the truth, the keypoints and masks, the mean start."""

    source: str
    pose: np.ndarray                     # (N, 72) true pose, crop camera frame
    betas: np.ndarray                    # (N, NB)
    vertices: torch.Tensor               # (N, V, 3) true mesh, model frame
    eval_joints: torch.Tensor            # (N, 14, 3) truth's evaluation joints
    up: np.ndarray
    keypoints: np.ndarray                # (N, 49, 3) fit-frame px
    focal: np.ndarray
    center: np.ndarray
    masks: torch.Tensor                  # (N, 224, 224) uint8
    start: Any


def make_case(body: BodyModel, source: str, config: MasksBenchConfig) -> Case:
    people = make_people(source, config.split, config.cases, body, config.seed)
    betas = rng_for(config.seed, source, config.split, "betas").uniform(-BETAS_RANGE, BETAS_RANGE,
                                                                        people.betas.shape)
    people = dataclasses.replace(people, betas=betas)
    seen = view(people, "crop", body, config.seed)
    obs = observe(seen, "noisy", draws(people, config.seed), frame="crop")
    pose = torch.as_tensor(seen.pose, dtype=torch.float32)
    with torch.no_grad():
        out = body(torch.as_tensor(betas, dtype=torch.float32), pose[:, 3:], pose[:, :3])
    camera = out.vertices + torch.as_tensor(seen.cam_t, dtype=torch.float32)[:, None]
    # the renderer's pixel centres are at integers, the fit frame's at half-integers
    drawn = render_silhouette(camera, torch.as_tensor(body.faces), FIT_FOCAL, (FIT_CENTER - FIT_FRAME_OFFSET,) * 2,
                              (FIT_RES, FIT_RES))
    return Case(source, seen.pose, betas, out.vertices, body_eval_joints(body, out.vertices, out.joints).double(), seen.up,
                obs.keypoints, obs.focal, obs.center, (drawn.face_index >= 0).to(torch.uint8), mean_start(body, obs))


def size_direction(body: BodyModel) -> np.ndarray:
    """(NB,) unit vector in betas space: the shape change closest (least squares over the mesh) to growing the
    mean body uniformly about its centroid, ``shapedirs · d ≈ v_template − centroid``. A single view cannot tell
    this direction from depth (a bigger body farther away projects alike), so the betas error is also reported
    without its component along it (module docstring)."""
    layer = body.layer
    dirs = layer.shapedirs[..., :body.num_betas].detach().double().reshape(-1, body.num_betas).cpu().numpy()
    template = layer.v_template.detach().double().cpu().numpy()
    d = np.linalg.lstsq(dirs, (template - template.mean(0)).reshape(-1), rcond=None)[0]
    return d / np.linalg.norm(d)


def fit_case(smplify: SMPLify, case: Case, size: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """Fit a case's people (with its masks); per-person metrics and the CPU seconds of the fits. size: (NB,) the
    body's `size_direction`."""
    f32 = {"dtype": torch.float32}
    kp = torch.as_tensor(case.keypoints, **f32)
    clock = time.process_time()
    fit = smplify(kp, torch.as_tensor(case.start.pose, **f32), torch.as_tensor(case.start.betas, **f32),
                  torch.as_tensor(case.start.cam_t, **f32), torch.as_tensor(case.center, **f32), start="mean",
                  focal_length=torch.as_tensor(case.focal, **f32), masks=case.masks)
    seconds = time.process_time() - clock
    body = smplify.body
    pose, betas, cam_t = (t.double().numpy() for t in (fit.pose, fit.betas, fit.cam_t))
    metrics = case_metrics(body, case.eval_joints, case.pose[:, :3], case.up, case.keypoints, case.focal,
                           case.center, pose, betas, cam_t)
    with torch.no_grad():
        vertices = body(fit.betas, fit.pose[:, 3:], fit.pose[:, :3]).vertices
        aligned = procrustes_align(vertices.double(), case.vertices.double())
        metrics["pve_pa_mm"] = 1000 * (aligned - case.vertices.double()).norm(dim=-1).mean(-1).numpy()
        error = betas - case.betas
        metrics["betas_error"] = np.linalg.norm(error, axis=-1)
        metrics["betas_error_along_size"] = np.abs(error @ size)
        metrics["betas_error_scale_removed"] = np.linalg.norm(error - (error @ size)[:, None] * size, axis=-1)
        rest = torch.zeros(len(betas), 69, dtype=fit.betas.dtype)
        shape_fit, shape_true = (body(torch.as_tensor(b, dtype=fit.betas.dtype), rest, rest[:, :3]).vertices.double()
                                 for b in (betas, case.betas))
        aligned = procrustes_align(shape_fit, shape_true)
        metrics["shape_pa_mm"] = 1000 * (aligned - shape_true).norm(dim=-1).mean(-1).numpy()
        drawn = render_silhouette(vertices + fit.cam_t[:, None], torch.as_tensor(body.faces), torch.as_tensor(case.focal, dtype=torch.float32),
                                  (FIT_CENTER - FIT_FRAME_OFFSET,) * 2, (FIT_RES, FIT_RES))
        mine, truth = drawn.face_index >= 0, case.masks.bool()
        metrics["iou"] = ((mine & truth).sum((1, 2)) / (mine | truth).sum((1, 2)).clamp(min=1)).numpy()
    return metrics, seconds


def summarise(per_case: dict[str, np.ndarray], seconds: float) -> dict[str, float]:
    n = len(per_case["pve_pa_mm"])
    return {"cases": n, "pve_pa_mm": float(per_case["pve_pa_mm"].mean()),
            "betas_error": float(per_case["betas_error"].mean()),
            "betas_error_along_size": float(per_case["betas_error_along_size"].mean()),
            "betas_error_scale_removed": float(per_case["betas_error_scale_removed"].mean()),
            "shape_pa_mm": float(per_case["shape_pa_mm"].mean()),
            "pa_mpjpe_mm": float(per_case["pa_mpjpe_mm"].mean()),
            "reprojection_px": float(per_case["reprojection_px"].mean()),
            "iou": float(per_case["iou"].mean()), "cpu_s_per_fit": seconds / n}


def run(config: MasksBenchConfig) -> dict[str, Any]:
    config = config.checked()
    torch.set_num_threads(config.threads)
    body = load_body_model(config.model)
    prior = load_pose_prior(resolve_pose_prior(None))
    sources, notes = available_sources(config.sources)
    if not sources:
        raise FitloopError(f"bench masks: none of the sources {config.sources} is here ({notes})")
    cases = [make_case(body, source, config) for source in sources]
    size = size_direction(body)
    arms = {"keypoints": 0.0} | {f"silhouette_{w:g}": w for w in config.weights}
    fitters = {arm: SMPLify(body, prior, SMPLifyConfig(silhouette_weight=w)) for arm, w in arms.items()}
    results: dict[str, Any] = {}
    for arm, smplify in fitters.items():
        per_source, pooled, total = {}, {}, 0.0
        for case in cases:
            metrics, seconds = fit_case(smplify, case, size)
            per_source[case.source] = summarise(metrics, seconds)
            pooled = {k: np.concatenate([pooled[k], v]) if k in pooled else v for k, v in metrics.items()}
            total += seconds
        results[arm] = {"all": summarise(pooled, total), "sources": per_source}
    base = results["keypoints"]["all"]
    for arm in arms:
        if arm != "keypoints":
            mine = results[arm]["all"]
            results[arm]["ratio_to_keypoints"] = {k: mine[k] / base[k] for k in
                                                  ("pve_pa_mm", "betas_error", "betas_error_scale_removed",
                                                                   "shape_pa_mm", "pa_mpjpe_mm", "cpu_s_per_fit")}
    coco: dict[str, Any] | str = "not asked (--no-coco)"
    if config.coco:
        coco = (run_coco(body, fitters, None if config.pictures is None else Path(config.pictures))
                if COCO_ROOT.is_dir() else f"{COCO_ROOT} is absent: the real fixtures live beside the checkout")
    return {"config": dataclasses.asdict(config), "sources_missing": notes, "torch_threads": config.threads,
            "results": results, "coco": coco}
