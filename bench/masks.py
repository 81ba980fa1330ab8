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
Ratios are against the baseline of the same run. Per arm also **per beta** (`per_beta`: the rms of β_fit − β_true
per component and the correlation of fitted with true β, which components a term moves) and, for each term arm,
the mean per-person change from the baseline with its standard error (``change_from_keypoints``, by
`paired_change`: the noise a gain must clear).

**Mask resolution** (``mask_scale`` s, default 1): the masks (and the clothed labels, their margins × s) are drawn
at s·224 px over the same crop (`render_mask_frame`: focal s·f, principal point s·112, pixel corners on the fit
frame's) and the fits read them at that resolution (`SMPLify`'s ``mask_scale``; the energy stays in fit-frame px²,
`fitting.silhouette_term`); IoU is read at s·224 px.

**Clothing** (``clothing``, on by default; DSR's terms, `fitting.dsr`): the same people dressed. Each gets a loose
garment margin uniform in `CLOTHING_MARGIN_PX` (per person, its own random stream): every background pixel within
that margin of a clothed body part (torso, upper arms, thighs, shins: the segments that are not minimally
clothed) joins that part, while head, hands and feet keep their exact outline (a background pixel nearest to them
stays background). That label image is the person's parsing (ids as part labels: the clothed parts' grown,
head/hands/feet exact) and its outline the person mask. Arms on it: ``clothed_silhouette_<w>`` (the silhouette
term against the clothed mask: bodies pulled out to fill the clothes) and ``clothed_dsr`` (silhouette weight,
DSR-MC and DSR-C weights ``dsr``: the parts' head, hands and feet tight, the body inside the clothing). Their IoU
is against the **body's** true silhouette, as for every arm.

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
from scipy import ndimage

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
from fitting.dsr import face_segments, mc_group_table
from fitting.priors import load_pose_prior, resolve_pose_prior
from fitting.silhouette import Silhouette, render_silhouette
from fitting.smplify import SMPLify, SMPLifyConfig

SOURCES = ("synthetic", "cmu", "lsp")
CLOTHING_MARGIN_PX = (3.0, 15.0)     # loose garments at the 224 px fit frame: a few px to ~15 px beyond the body


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
    clothing: bool = True                            # also the clothed people and their arms (module docstring)
    dsr: tuple[float, float, float] = (0.0, 10.0, 10.0)   # clothed_dsr's silhouette, DSR-MC and DSR-C weights
    mask_scale: int = 1                              # masks of mask_scale·224 px over the fit frame's crop

    def checked(self) -> "MasksBenchConfig":
        if self.split not in SPLITS:
            raise FitloopError(f"bench masks: --split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        if self.cases < 1 or self.threads < 1:
            raise FitloopError(f"bench masks: --cases and --threads must be at least 1, got {self.cases} and "
                               f"{self.threads}")
        if not self.weights or min(self.weights) <= 0:
            raise FitloopError(f"bench masks: --weights must be positive numbers, got {self.weights}")
        if self.mask_scale < 1:
            raise FitloopError(f"bench masks: --mask-scale must be a whole number >= 1 (mask px per fit-frame px), "
                               f"got {self.mask_scale}")
        if len(self.dsr) != 3 or min(self.dsr) < 0 or max(self.dsr[1:]) <= 0:
            raise FitloopError(f"bench masks: --dsr takes three weights SIL,MC,C (>= 0, MC or C positive), got "
                               f"{self.dsr}")
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
    masks: torch.Tensor                  # (N, s·224, s·224) uint8: the body's exact silhouette, s = mask_scale
    start: Any
    parsing: torch.Tensor | None = None  # (N, s·224, s·224) uint8 the clothed person's labels (module docstring)
    mask_scale: int = 1                  # s: mask px per fit-frame px


def clothe(parts: np.ndarray, margin: float) -> np.ndarray:
    """A loose garment over exact part labels (H, W) (0 background, 1 + SMPL segment): background pixels within
    ``margin`` px of a body pixel join its part when that part is clothed (not `fitting.dsr.MC_PARTS`); head,
    hands and feet keep their outline. Returns the clothed labels (H, W) uint8."""
    mc = mc_group_table().numpy()[parts] > 0
    distance, (row, col) = ndimage.distance_transform_edt(parts == 0, return_indices=True)
    nearest = parts[row, col]
    grown = (parts == 0) & (distance <= margin) & ~mc[row, col]
    return np.where(grown, nearest, parts).astype(np.uint8)


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
    faces = torch.as_tensor(body.faces)
    drawn = render_mask_frame(camera, faces, FIT_FOCAL, config.mask_scale)
    parsing = None
    if config.clothing:  # the body's exact part labels (each face's dominant segment), then the garment
        face_segment = face_segments(faces, body.layer.lbs_weights)
        index = drawn.face_index
        parts = torch.where(index >= 0, face_segment[index.clamp(min=0)] + 1, 0).numpy()
        margins = rng_for(config.seed, source, config.split, "clothing").uniform(*CLOTHING_MARGIN_PX, len(parts))
        margins = margins * config.mask_scale                                  # fit-frame px -> mask px
        parsing = torch.as_tensor(np.stack([clothe(p, m) for p, m in zip(parts, margins)]))
    return Case(source, seen.pose, betas, out.vertices, body_eval_joints(body, out.vertices, out.joints).double(), seen.up,
                obs.keypoints, obs.focal, obs.center, (drawn.face_index >= 0).to(torch.uint8), mean_start(body, obs),
                parsing, config.mask_scale)


def render_mask_frame(camera: torch.Tensor, faces: torch.Tensor, focal: Any, scale: int) -> Silhouette:
    """The z-buffer coverage of camera-frame meshes (N, V, 3) m in a mask of the fit frame's crop at ``scale``
    mask px per fit-frame px (scale·224 px square): focal scale·f (f: fit-frame px, as `render_silhouette` takes
    it: a number, (N, 1) or (N, 2)), principal point scale·112, both frames' pixel corners at 0
    (`core.frames.FIT_FRAME_OFFSET`); the renderer's pixel centres are at integers, hence the − offset."""
    side = scale * FIT_RES
    return render_silhouette(camera, faces, scale * torch.as_tensor(focal, dtype=camera.dtype),
                             (scale * FIT_CENTER - FIT_FRAME_OFFSET,) * 2, (side, side))


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


def fit_case(smplify: SMPLify, case: Case, size: np.ndarray,
             clothed: bool = False) -> tuple[dict[str, np.ndarray], float]:
    """Fit a case's people (with its exact masks, or ``clothed``: the clothed mask, parts and parsing); per-person
    metrics (IoU against the body's exact silhouette) and the CPU seconds of the fits. size: (NB,) the body's
    `size_direction`."""
    f32 = {"dtype": torch.float32}
    kp = torch.as_tensor(case.keypoints, **f32)
    images = {"masks": case.masks}
    if clothed:
        images = {"masks": (case.parsing > 0).to(torch.uint8), "parts": case.parsing, "parsing": case.parsing}
    clock = time.process_time()
    fit = smplify(kp, torch.as_tensor(case.start.pose, **f32), torch.as_tensor(case.start.betas, **f32),
                  torch.as_tensor(case.start.cam_t, **f32), torch.as_tensor(case.center, **f32), start="mean",
                  focal_length=torch.as_tensor(case.focal, **f32), mask_scale=case.mask_scale, **images)
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
        metrics["betas_fit"], metrics["betas_true"] = betas, case.betas
        rest = torch.zeros(len(betas), 69, dtype=fit.betas.dtype)
        shape_fit, shape_true = (body(torch.as_tensor(b, dtype=fit.betas.dtype), rest, rest[:, :3]).vertices.double()
                                 for b in (betas, case.betas))
        aligned = procrustes_align(shape_fit, shape_true)
        metrics["shape_pa_mm"] = 1000 * (aligned - shape_true).norm(dim=-1).mean(-1).numpy()
        drawn = render_mask_frame(vertices + fit.cam_t[:, None], torch.as_tensor(body.faces), case.focal,
                                  case.mask_scale)
        mine, truth = drawn.face_index >= 0, case.masks.bool()
        metrics["iou"] = ((mine & truth).sum((1, 2)) / (mine | truth).sum((1, 2)).clamp(min=1)).numpy()
    return metrics, seconds


def per_beta(fitted: np.ndarray, true: np.ndarray) -> dict[str, list[float | None]]:
    """Per betas component, over people (N, NB) of fitted and true betas: ``rms`` the root mean square of
    β_fit − β_true (σ units) and ``correlation`` Pearson's r of β_fit with β_true (None where either does not vary
    over the people: r is undefined). Which components the silhouette term moves (docs/smplify.md)."""
    error = fitted - true
    rms = np.sqrt(np.mean(error**2, axis=0))
    a, b = fitted - fitted.mean(0), true - true.mean(0)
    spread = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    defined = spread > 0
    r = np.divide((a * b).sum(0), spread, out=np.zeros_like(spread), where=defined)
    return {"rms": [float(v) for v in rms], "correlation": [float(v) if d else None for v, d in zip(r, defined)]}


PAIRED_METRICS = ("pve_pa_mm", "betas_error", "betas_error_scale_removed", "shape_pa_mm")


def paired_change(arm: np.ndarray, base: np.ndarray) -> dict[str, float | None]:
    """An arm's per-person metric (N,) against the baseline's on the same people: the mean change and its
    standard error (sample std of the per-person differences / √N; None for one person), the noise a gain must
    clear."""
    diff = arm - base
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
    return {"mean": float(diff.mean()), "se": se}


def summarise(per_case: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
    n = len(per_case["pve_pa_mm"])
    return {"cases": n, "pve_pa_mm": float(per_case["pve_pa_mm"].mean()),
            "betas_error": float(per_case["betas_error"].mean()),
            "betas_error_along_size": float(per_case["betas_error_along_size"].mean()),
            "betas_error_scale_removed": float(per_case["betas_error_scale_removed"].mean()),
            "shape_pa_mm": float(per_case["shape_pa_mm"].mean()),
            "pa_mpjpe_mm": float(per_case["pa_mpjpe_mm"].mean()),
            "reprojection_px": float(per_case["reprojection_px"].mean()),
            "iou": float(per_case["iou"].mean()), "cpu_s_per_fit": seconds / n,
            "per_beta": per_beta(per_case["betas_fit"], per_case["betas_true"])}


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
    # arm -> (its config, whether it sees the clothed people)
    arms = {"keypoints": (SMPLifyConfig(), False)}
    arms |= {f"silhouette_{w:g}": (SMPLifyConfig(silhouette_weight=w), False) for w in config.weights}
    if config.clothing:
        arms |= {f"clothed_silhouette_{w:g}": (SMPLifyConfig(silhouette_weight=w), True) for w in config.weights}
        sil, mc, clothed = config.dsr
        arms["clothed_dsr"] = (SMPLifyConfig(silhouette_weight=sil, mc_weight=mc, clothed_weight=clothed), True)
    fitters = {arm: SMPLify(body, prior, fit_config) for arm, (fit_config, _) in arms.items()}
    results: dict[str, Any] = {}
    people: dict[str, dict[str, np.ndarray]] = {}                   # arm -> its per-person metrics, all sources
    for arm, smplify in fitters.items():
        per_source, pooled, total = {}, {}, 0.0
        for case in cases:
            metrics, seconds = fit_case(smplify, case, size, arms[arm][1])
            per_source[case.source] = summarise(metrics, seconds)
            pooled = {k: np.concatenate([pooled[k], v]) if k in pooled else v for k, v in metrics.items()}
            total += seconds
        results[arm] = {"all": summarise(pooled, total), "sources": per_source}
        people[arm] = pooled
    base = results["keypoints"]["all"]
    for arm in arms:
        if arm != "keypoints":
            mine = results[arm]["all"]
            results[arm]["ratio_to_keypoints"] = {k: mine[k] / base[k] for k in
                                                  ("pve_pa_mm", "betas_error", "betas_error_scale_removed",
                                                   "shape_pa_mm", "pa_mpjpe_mm", "iou", "cpu_s_per_fit")}
            results[arm]["change_from_keypoints"] = {k: paired_change(people[arm][k], people["keypoints"][k])
                                                     for k in PAIRED_METRICS}
    coco: dict[str, Any] | str = "not asked (--no-coco)"
    if config.coco:  # the arms of exact person masks: COCO's people carry no parsing
        exact = {arm: fitters[arm] for arm, (_, clothed) in arms.items() if not clothed}
        coco = (run_coco(body, exact, None if config.pictures is None else Path(config.pictures))
                if COCO_ROOT.is_dir() else f"{COCO_ROOT} is absent: the real fixtures live beside the checkout")
    return {"config": dataclasses.asdict(config), "sources_missing": notes, "torch_threads": config.threads,
            "results": results, "coco": coco}
