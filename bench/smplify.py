"""`fitloop bench smplify`: fitloop's fast SMPLify and SPIN's reference procedure on the same cases, in one run.

The cases (`bench.smplify_cases`): people from pose sources with fixed roles (CMU subjects the pose prior never
saw, SPIN's LSP fits, samples of the prior, anyone's pose file), split into ``dev`` (for tuning) and ``test``
(for reporting) by rules no fit can move; seen by a real camera and fitted through SPIN's crop camera (``real``)
or with the real camera's intrinsics (``image``), and seen by SPIN's crop camera (``crop``); clean and noisy
keypoints; fits from the mean pose and from network-like starts at calibrated error levels. Both modes are given
the same start; from the mean pose the fast mode (by default) lifts its own start from the keypoints
(`fitting.lifter`, trained without the CMU subjects the benchmark fits), SPIN's procedure fits the mean pose.

Every cell (source × camera × keypoints × start) is fitted by the fast mode on all its ``cases`` people and by
the reference on the first ``reference_cases`` of them (the reference runs ~1 fit/s on one CPU thread); the fast
mode's figures on those same people are reported beside the reference's, so the two are compared on identical
cases. Fits of one start level are made in one batch per mode (SMPLify's fits are independent per example), and
timed: wall and CPU seconds (``time.process_time``: what counts on a shared machine), at the thread count asked
for (default 1).

The reference runs on an SMPL-sized mesh by default (``reference_meshes``, `bench.reference_mesh`): SPIN's
procedure evaluates the mesh every step, and the open model's own mesh has about twice SMPL's vertices, which
would make SPIN look twice as slow as it is. Further meshes (``full``) are fitted on the same cases and reported
as ``reference-<mesh>`` beside it. ``fixed_baseline`` also fits every case with the fast mode's fixed iteration
budget (``SMPLifyConfig.tolerance`` 0: no early exit), so the early exit's speed and accuracy are read against it
in one run; ``cuda_graph`` the fast mode with ``SMPLifyConfig.cuda_graph`` (stage 2 replayed from CUDA graphs on a
GPU: the whole budget, no early exit; `fitting.step_graph`) as ``fast-graphed``. ``batch`` adds a throughput row:
the fast mode on one call of exactly that many examples per start level (the level's cases repeated in order when
there are fewer); ``workers`` > 1 also runs that row in that many single-thread processes at once
(`bench.smplify_workers`: fits/s of the machine's cores together).

Metrics, per case, then averaged (`case_metrics`): PA-MPJPE and MPJPE (mm) of the 14 evaluation joints against the
true body as `fits.evaluate` defines them (the body model's Human3.6M regressor, pelvis-centred; the truth's
orientation is that of the camera that took the keypoints); reprojection error (fit-frame px, with the camera the
fit was made with) over the given keypoints; and **wrong-facing**: the fit's global orientation more than 90° from
the truth's about the vertical axis (`wrong_facing`).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from bench.reference_mesh import REFERENCE_MESHES, reference_body
from bench.smplify_cases import (
    CAMERAS,
    CMU_SUBJECTS,
    FIT_FRAME,
    NOISE,
    SOURCES,
    SPLITS,
    START_TARGETS_MM,
    STARTS,
    VIEW_CAMERA,
    People,
    View,
    available_sources,
    calibrate_noise,
    draws,
    load_pose_file,
    make_people,
    mean_start,
    network_start,
    observe,
    view,
)
from bench.smplify_workers import parallel_throughput
from core.camera import project
from core.errors import FitloopError
from core.metrics import mpjpe, pa_mpjpe
from fits.evaluate import EVALUATION, body_eval_joints
from fitting.body_model import BodyModel, load_body_model
from fitting.priors import MaxMixturePrior, load_pose_prior, resolve_pose_prior
from fitting.smplify import SMPLify, SMPLifyConfig, focal_per_example
from fitting.vposer import VAEPosePrior

MODES = ("fast", "reference")
FIXED = "fast-fixed"             # the fast mode without early exit (`BenchConfig.fixed_baseline`)
GRAPHED = "fast-graphed"         # the fast mode replayed from CUDA graphs, whole budget (`BenchConfig.cuda_graph`)
LIFTED = "lifted-start"          # the fast mode's own start from the mean pose, unfitted (`_lifted_starts`)
THROUGHPUT_CALLS = 2             # timed calls per start level of the throughput row (the faster one counts)
FACING_UNDEFINED_BELOW = 0.5    # the truth's hip axis within 30° of vertical: no heading to compare with
CHUNK = {"fast": 512, "reference": 32}  # examples per SMPLify call (memory; results do not depend on it)


@dataclass(frozen=True)
class BenchConfig:
    """One run of the benchmark. Defaults: the full run (about 5 CPU minutes on one thread with the SMPL-sized
    reference; 7 with the full mesh's too: measured 2026-12-03)."""

    split: str = "test"                                # "dev" for tuning, "test" for reporting
    sources: tuple[str, ...] = SOURCES
    poses_file: Path | None = None                     # adds the source "file" (`load_pose_file`)
    cases: int = 64                                    # people per source; the fast mode fits all in every cell
    reference_cases: int = 8                           # the first this many per cell are fitted by the reference
    cameras: tuple[str, ...] = CAMERAS
    noise: tuple[str, ...] = NOISE
    starts: tuple[str, ...] = STARTS
    calibration_people: int = 128                      # dev people per source the start levels are calibrated on
    modes: tuple[str, ...] = MODES
    reference_iterations: int | None = None            # None: SPIN's 100 per stage (--quick: 5, figures mean nothing)
    reference_meshes: tuple[str, ...] = ("smpl-sized",)  # the first is "the reference"; others "reference-<mesh>"
    fixed_baseline: bool = False                       # also the fast mode with a fixed budget (tolerance 0)
    batch: int | None = None                           # a throughput row at this batch size (fast mode)
    workers: int = 1                                   # > 1: the row also by this many 1-thread processes at once
    compile: bool = False                              # the fast variants with SMPLifyConfig.compile (after a warm-up)
    cuda_graph: bool = False                           # also the fast mode with SMPLifyConfig.cuda_graph (GRAPHED)
    model: str = "open"
    prior: str | Path | None = None                    # a prior file or "gmm" / "vae" (shipped ones); None: default
    device: str = "cpu"
    threads: int = 1
    seed: int = 0

    def checked(self) -> "BenchConfig":
        def bad(what: str) -> FitloopError:
            return FitloopError(f"bench smplify: {what}")
        if self.split not in SPLITS:
            raise bad(f"--split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        for name, given, allowed in (("--sources", self.sources, SOURCES), ("--cameras", self.cameras, CAMERAS),
                                     ("--keypoints", self.noise, NOISE), ("--starts", self.starts, STARTS),
                                     ("--modes", self.modes, MODES),
                                     ("--reference-mesh", self.reference_meshes, REFERENCE_MESHES)):
            unknown = [g for g in given if g not in allowed]
            if unknown or (not given and name != "--sources"):
                raise bad(f"{name} takes some of {', '.join(allowed)}; got {', '.join(given) or 'none'}")
        if not self.sources and self.poses_file is None:
            raise bad("no pose source: give --sources or --poses FILE")
        if self.cases < 1 or not 0 <= self.reference_cases <= self.cases:
            raise bad(f"need --cases >= 1 and 0 <= --reference-cases <= --cases, got {self.cases} and "
                      f"{self.reference_cases}")
        if self.calibration_people < 8:
            raise bad(f"--calibration-people must be at least 8, got {self.calibration_people}")
        if len(set(self.reference_meshes)) != len(self.reference_meshes):
            raise bad(f"--reference-mesh names a mesh twice: {', '.join(self.reference_meshes)}")
        if self.batch is not None and self.batch < 1:
            raise bad(f"--batch must be at least 1, got {self.batch}")
        if self.threads < 1:
            raise bad(f"--threads must be at least 1, got {self.threads}")
        if self.workers < 1 or (self.workers > 1 and (self.batch is None or self.device != "cpu"
                                                      or "fast" not in self.modes)):
            raise bad(f"--workers must be at least 1, and more than 1 needs --batch, the fast mode and --device "
                      f"cpu; got --workers {self.workers}, --batch {self.batch}, --device {self.device}")
        if self.poses_file is not None and not Path(self.poses_file).is_file():
            raise bad(f"--poses {self.poses_file}: no such file")
        return self


QUICK = {"cases": 3, "reference_cases": 1, "calibration_people": 16, "reference_iterations": 5}


# --- Metrics --------------------------------------------------------------------------------------------------------
def wrong_facing(fit_orient: np.ndarray, true_orient: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Whether each fit faces the other way: (N,) 1.0 wrong, 0.0 right, NaN undefined.

    The heading of a body is the direction of its hip axis (the global orientation's x axis, the body's left)
    projected on the horizontal plane (perpendicular to ``up``, the world's up direction in the camera frame). A fit
    is wrong-facing when its heading is more than 90° from the truth's: ``R_fit x̂ · h < 0``, with ``h`` the truth's
    horizontal hip axis, normalised. Undefined where the truth's hip axis is within 30° of vertical (its horizontal
    part shorter than FACING_UNDEFINED_BELOW), e.g. a person lying on the side.

    fit_orient, true_orient: (N, 3) axis-angle, both in the same camera frame; up: (N, 3) unit.
    """
    x = np.array([1.0, 0.0, 0.0])
    fit_left = Rotation.from_rotvec(fit_orient).apply(x)
    true_left = Rotation.from_rotvec(true_orient).apply(x)
    horizontal = true_left - (true_left * up).sum(-1, keepdims=True) * up
    length = np.linalg.norm(horizontal, axis=-1)
    defined = length >= FACING_UNDEFINED_BELOW
    dot = (fit_left * horizontal).sum(-1)
    return np.where(defined, (dot < 0).astype(np.float64), np.nan)


def _posed(body: BodyModel, pose: np.ndarray, betas: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation joints (N, 14, 3) and canonical joints (N, 49, 3) of bodies, one forward pass, CPU float64."""
    device = next(body.buffers()).device
    evals, joints = [], []
    with torch.no_grad():
        for s in range(0, len(pose), batch):
            p = torch.as_tensor(pose[s:s + batch], dtype=torch.float32, device=device)
            b = torch.as_tensor(betas[s:s + batch], dtype=torch.float32, device=device)
            out = body(b, p[:, 3:], p[:, :3])
            evals.append(body_eval_joints(body, out.vertices, out.joints).double().cpu())
            joints.append(out.joints.double().cpu())
    return torch.cat(evals), torch.cat(joints)


def case_metrics(body: BodyModel, truth: torch.Tensor, true_orient: np.ndarray, up: np.ndarray,
                 keypoints: np.ndarray, focal: np.ndarray, center: np.ndarray, pose: np.ndarray, betas: np.ndarray,
                 cam_t: np.ndarray) -> dict[str, np.ndarray]:
    """Per-case errors (N,) of bodies (pose (N, 72), betas, cam_t (N, 3) m in the fitting camera's frame) against
    the truth's evaluation joints (N, 14, 3): ``pa_mpjpe_mm``, ``mpjpe_mm``, ``reprojection_px`` (mean over the
    given keypoints (N, 49, 3) fit-frame px of the distance to the body's joints projected with the fitting camera,
    focal (N, 2) and center (N, 2) fit-frame px) and ``wrong_facing``."""
    evals, joints = _posed(body, pose, betas)
    as64 = {"dtype": torch.float64}
    projected = project(joints, torch.as_tensor(cam_t, **as64), torch.as_tensor(focal, **as64),
                        torch.as_tensor(center, **as64)).numpy()
    seen = keypoints[..., 2] > 0
    dist = np.linalg.norm(projected - keypoints[..., :2], axis=-1)
    return {"pa_mpjpe_mm": 1000 * pa_mpjpe(evals, truth).numpy(), "mpjpe_mm": 1000 * mpjpe(evals, truth).numpy(),
            "reprojection_px": (dist * seen).sum(-1) / np.maximum(seen.sum(-1), 1),
            "wrong_facing": wrong_facing(pose[:, :3], true_orient, up)}


def summary(per_case: dict[str, np.ndarray], start: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Averages of per-case metrics; with ``start`` (the same cases' start metrics), the share improved on it."""
    wrong = per_case["wrong_facing"]
    defined = ~np.isnan(wrong)
    out = {"cases": len(wrong),
           "pa_mpjpe_mm": float(per_case["pa_mpjpe_mm"].mean()),
           "pa_mpjpe_median_mm": float(np.median(per_case["pa_mpjpe_mm"])),
           "mpjpe_mm": float(per_case["mpjpe_mm"].mean()),
           "reprojection_px": float(per_case["reprojection_px"].mean()),
           "wrong_facing_pct": float(100 * wrong[defined].mean()) if defined.any() else None,
           "facing_defined": int(defined.sum())}
    if start is not None:
        out["improved_pct"] = float(100 * (per_case["pa_mpjpe_mm"] < start["pa_mpjpe_mm"]).mean())
    return out


# --- The run --------------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One source × camera × keypoints × start: the cases, their truth and start, then the fits' metrics."""

    source: str
    camera: str
    noise: str
    start: str
    sigma: float | None
    truth: torch.Tensor          # (N, 14, 3) evaluation joints of the true bodies
    true_orient: np.ndarray      # (N, 3)
    up: np.ndarray               # (N, 3)
    keypoints: np.ndarray        # (N, 49, 3) fit frame
    focal: np.ndarray            # (N, 2) fit-frame px: the camera fitted with
    center: np.ndarray           # (N, 2) fit-frame px
    start_pose: np.ndarray
    start_betas: np.ndarray
    start_cam_t: np.ndarray
    kind: str
    origin: list[str]
    fits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    metrics: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)


def _check_prior(prior: MaxMixturePrior | VAEPosePrior, path: Path, split: str,
                 sources: tuple[str, ...]) -> dict[str, Any]:
    """The prior's training subjects against the CMU subjects this run evaluates on: a prior that saw them makes
    the CMU figures meaningless, so that is an error; a prior that does not say (SMPLify's gmm_08.pkl) is noted."""
    meta = prior.metadata
    used = meta.get("subjects_used")
    info: dict[str, Any] = {"file": str(path), "subjects_used": used,
                            "held_out_subjects": meta.get("held_out_subjects")}
    if "cmu" not in sources:
        info["check"] = "no CMU source in this run"
    elif used is None:
        info["check"] = "unknown: the prior does not record the subjects it was trained on"
    else:
        seen = sorted(set(used) & set(CMU_SUBJECTS[split]))
        if seen:
            raise FitloopError(f"{path}: this pose prior was trained on CMU subjects {seen}, which the benchmark's "
                               f"{split} split evaluates on; train it without them (`fitloop prior train` holds "
                               f"them out by default) or leave out --sources cmu")
        info["check"] = f"ok: none of the {split} subjects {list(CMU_SUBJECTS[split])} in its training data"
    return info


def _cells_for(body: BodyModel, people: People, config: BenchConfig, sigmas: dict[str, float]) -> list[Cell]:
    d = draws(people, config.seed)
    cells = []
    views: dict[str, tuple[View, torch.Tensor]] = {}  # the real camera's people serve both of its arms
    for camera in config.cameras:
        seen_by = VIEW_CAMERA[camera]
        if seen_by not in views:
            v = view(people, seen_by, body, config.seed)
            views[seen_by] = v, _posed(body, v.pose, v.betas)[0]
        v, truth = views[seen_by]
        for noise in config.noise:
            obs = observe(v, noise, d, FIT_FRAME[camera])
            for label in config.starts:
                if label == "mean":
                    s, sigma = mean_start(body, obs), None
                else:
                    sigma = sigmas[label]
                    s = network_start(body, v.pose, obs, sigma, d.start)
                cells.append(Cell(people.source, camera, noise, label, sigma, truth, v.pose[:, :3], v.up,
                                  obs.keypoints, obs.focal, obs.center, s.pose, s.betas, s.cam_t, s.kind,
                                  people.origin))
    return cells


def _inputs(cells: list[Cell], count: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """keypoints, focal, center, start pose, betas and cam_t of the first ``count`` cases of every cell, stacked."""
    def stack(key: str) -> torch.Tensor:
        return torch.as_tensor(np.concatenate([getattr(c, key)[:count] for c in cells]), dtype=torch.float32,
                               device=device)
    return tuple(stack(k) for k in ("keypoints", "focal", "center", "start_pose", "start_betas", "start_cam_t"))


def _fit_level(fitter: SMPLify, cells: list[Cell], count: int, mode: str, device: torch.device) -> dict[str, float]:
    """Fit the first ``count`` cases of every cell (one start level) in batches; store the fits under ``mode``;
    return timing."""
    kp, focal, center, pose, betas, cam_t = _inputs(cells, count, device)
    out = {"pose": [], "betas": [], "cam_t": []}
    chunk = CHUNK[fitter.config.mode]
    wall, cpu = time.perf_counter(), time.process_time()
    for s in range(0, len(kp), chunk):
        sl = slice(s, s + chunk)
        fit = fitter(kp[sl], pose[sl], betas[sl], cam_t[sl], center[sl], start=cells[0].kind,
                     focal_length=focal[sl])
        for k in out:
            out[k].append(getattr(fit, k).double().cpu().numpy())  # .cpu() waits for a GPU to finish
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    arrays = {k: np.concatenate(v) for k, v in out.items()}
    for i, c in enumerate(cells):
        c.fits[mode] = tuple(arrays[k][i * count:(i + 1) * count] for k in ("pose", "betas", "cam_t"))
    return _rates(len(kp), wall, cpu)


def _lifted_starts(fitter: SMPLify, cells: list[Cell], count: int, device: torch.device) -> None:
    """The fast mode's own start from the mean pose (`SMPLify.lifted_start`: the lifter's pose, the translation
    from the torso), stored beside the fits as LIFTED: how near the lifter alone puts each person, before any
    fitting (on anyone's ``--poses`` too)."""
    kp, focal, center, _, betas, _ = _inputs(cells, count, device)
    pose, cam_t = fitter.lifted_start(kp, betas, center, focal_per_example(focal, kp, fitter.config.focal_length))
    arrays = [t.double().cpu().numpy() for t in (pose, betas, cam_t)]
    for i, c in enumerate(cells):
        c.fits[LIFTED] = tuple(a[i * count:(i + 1) * count] for a in arrays)


def _rates(n: int, wall: float, cpu: float) -> dict[str, float]:
    return {"fits": n, "wall_s": wall, "cpu_s": cpu, "fits_per_s": n / wall, "fits_per_cpu_s": n / max(cpu, 1e-9)}


def _batch_inputs(cells: list[Cell], batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """`_inputs` of exactly ``batch`` examples of one start level: its cases in order, repeated when there are
    fewer."""
    return tuple(t[torch.arange(batch, device=device) % len(t)]
                 for t in _inputs(cells, len(cells[0].keypoints), device))


def _warm_up(fitter: SMPLify, cells: list[Cell], starts: tuple[str, ...], device: torch.device) -> None:
    """One small call per kind of start (the first 8 cases of each start level's first cells): what a compiled
    fitter compiles before it is timed (its shapes are dynamic; later batch sizes do not recompile)."""
    for kind in dict.fromkeys(c.kind for c in cells if c.start in starts):
        level = [c for c in cells if c.kind == kind and c.start in starts]
        kp, focal, center, pose, betas, cam_t = _batch_inputs(level, 8, device)
        fitter(kp, pose, betas, cam_t, center, start=kind, focal_length=focal)


def _throughput(fitter: SMPLify, cells: list[Cell], batch: int, device: torch.device) -> dict[str, float]:
    """One SMPLify call of exactly ``batch`` examples of one start level (`_batch_inputs`), timed THROUGHPUT_CALLS
    times; the fastest call by CPU time counts."""
    kp, focal, center, pose, betas, cam_t = _batch_inputs(cells, batch, device)
    best = None
    for _ in range(THROUGHPUT_CALLS):
        wall, cpu = time.perf_counter(), time.process_time()
        fit = fitter(kp, pose, betas, cam_t, center, start=cells[0].kind, focal_length=focal)
        fit.pose.cpu()                                           # waits for a GPU to finish
        timing = _rates(batch, time.perf_counter() - wall, time.process_time() - cpu)
        best = timing if best is None or timing["cpu_s"] < best["cpu_s"] else best
    return best


def _fitters(body: BodyModel, prior: MaxMixturePrior | VAEPosePrior, config: BenchConfig,
             device: torch.device) -> list[tuple[str, SMPLify, int, dict[str, Any]]]:
    """(name, fitter, cases per cell, about) of every variant the run fits: "fast", FIXED (`fixed_baseline`), GRAPHED
    (`cuda_graph`),
    "reference" (SPIN's procedure on the first of ``reference_meshes``) and "reference-<mesh>" for the others."""
    out = []
    if "fast" in config.modes:
        fast = SMPLifyConfig(compile=config.compile)
        out.append(("fast", SMPLify(body, prior, fast), config.cases, {"mesh": "none (skeleton)"}))
        if config.fixed_baseline:
            out.append((FIXED, SMPLify(body, prior, dataclasses.replace(fast, tolerance=0.0)), config.cases,
                        {"mesh": "none (skeleton)"}))
        if config.cuda_graph:
            out.append((GRAPHED, SMPLify(body, prior, dataclasses.replace(fast, cuda_graph=True)), config.cases,
                        {"mesh": "none (skeleton)"}))
    if "reference" in config.modes:
        smplify = SMPLifyConfig(mode="reference")
        if config.reference_iterations is not None:
            smplify = dataclasses.replace(smplify, iterations=config.reference_iterations)
        for i, mesh in enumerate(config.reference_meshes if config.reference_cases else config.reference_meshes[:1]):
            ref_body = reference_body(mesh, config.model).to(device)
            out.append(("reference" if i == 0 else f"reference-{mesh}", SMPLify(ref_body, prior, smplify),
                        config.reference_cases, {"mesh": mesh, "vertices": ref_body.num_vertices}))
    return out


def _evaluate(body: BodyModel, c: Cell) -> None:
    """Per-case metrics of a cell's start and of each mode's fits (the first len(fits) cases)."""
    def metrics(pose, betas, cam_t):
        n = len(pose)
        return case_metrics(body, c.truth[:n], c.true_orient[:n], c.up[:n], c.keypoints[:n], c.focal[:n],
                            c.center[:n], pose, betas, cam_t)
    c.metrics["start"] = metrics(c.start_pose, c.start_betas, c.start_cam_t)
    for mode, (pose, betas, cam_t) in c.fits.items():
        c.metrics[mode] = metrics(pose, betas, cam_t)


def _head(per_case: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return {k: v[:count] for k, v in per_case.items()}


def _cell_record(c: Cell, reference_cases: int) -> dict[str, Any]:
    start = c.metrics["start"]
    rec: dict[str, Any] = {"source": c.source, "camera": c.camera, "frame": FIT_FRAME[c.camera],
                           "keypoints": c.noise, "start": c.start,
                           "sigma_rad": c.sigma, "cases": len(c.keypoints), "start_error": summary(start)}
    if "fast" in c.metrics:
        rec["fast"] = summary(c.metrics["fast"], start)
    if LIFTED in c.metrics:
        rec["lifted_start"] = summary(c.metrics[LIFTED])
    if "reference" in c.metrics:
        k = reference_cases
        rec["reference"] = summary(c.metrics["reference"], _head(start, k))
        rec["start_on_reference_cases"] = summary(_head(start, k))
        if "fast" in c.metrics:
            rec["fast_on_reference_cases"] = summary(_head(c.metrics["fast"], k), _head(start, k))
            rec["pa_mpjpe_ratio_fast_over_reference"] = (rec["fast_on_reference_cases"]["pa_mpjpe_mm"]
                                                         / rec["reference"]["pa_mpjpe_mm"])
    rec["per_case"] = {"origin": c.origin,
                       **{f"{name}_pa_mpjpe_mm": np.round(m["pa_mpjpe_mm"], 2).tolist()
                          for name, m in c.metrics.items()},
                       **{f"{name}_wrong_facing": [None if np.isnan(w) else int(w) for w in m["wrong_facing"]]
                          for name, m in c.metrics.items()}}
    return rec


def _pooled(cells: list[Cell], key: Callable[[Cell], tuple], names: tuple[str, ...],
            reference_cases: int) -> list[dict[str, Any]]:
    """Per-case metrics pooled over the cells that share ``key`` (e.g. keypoints × start)."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault(key(c), []).append(c)
    rows = []
    for k, group in groups.items():
        def cat(which: str, count: int | None = None) -> dict[str, np.ndarray]:
            return {m: np.concatenate([c.metrics[which][m][:count] for c in group]) for m in group[0].metrics[which]}
        row: dict[str, Any] = dict(zip(names, k))
        row["start_error"] = summary(cat("start"))
        if "fast" in group[0].metrics:
            row["fast"] = summary(cat("fast"), cat("start"))
        if LIFTED in group[0].metrics:
            row["lifted_start"] = summary(cat(LIFTED))
        if "reference" in group[0].metrics:
            start_k = cat("start", reference_cases)
            row["reference"] = summary(cat("reference"), start_k)
            row["start_on_reference_cases"] = summary(start_k)
            if "fast" in group[0].metrics:
                row["fast_on_reference_cases"] = summary(cat("fast", reference_cases), start_k)
                row["pa_mpjpe_ratio_fast_over_reference"] = (row["fast_on_reference_cases"]["pa_mpjpe_mm"]
                                                             / row["reference"]["pa_mpjpe_mm"])
        rows.append(row)
    return rows


def run(config: BenchConfig = BenchConfig(), progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns its JSON-able record."""
    config = config.checked()
    say = progress or (lambda line: None)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config, say)
    finally:
        torch.set_num_threads(threads_before)


def _run(config: BenchConfig, say: Callable[[str], None]) -> dict[str, Any]:
    wall0, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()
    device = torch.device(config.device)
    body = load_body_model(config.model).to(device)
    prior_path = resolve_pose_prior(config.prior)
    prior = load_pose_prior(prior_path)
    sources, skipped = available_sources(config.sources)
    prior_info = _check_prior(prior, prior_path, config.split, sources)
    levels = [s for s in config.starts if s != "mean"]
    targets = tuple(START_TARGETS_MM[STARTS.index(s) - 1] for s in levels)

    cells: list[Cell] = []
    about: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    plan = [(s, None) for s in sources]
    if config.poses_file is not None:
        pool = load_pose_file(Path(config.poses_file))
        plan.append(("file", pool))
    for source, pool in plan:
        split = "all" if source == "file" else config.split
        t = time.perf_counter()
        people = make_people(source, split, config.cases, body, config.seed, pool)
        about[source] = {**people.about, "split": split, "cases": len(people)}
        sigmas: dict[str, float] = {}
        if levels:
            cal_split = "all" if source == "file" else "dev"
            cal_people = (people if cal_split == split and config.calibration_people <= config.cases
                          else make_people(source, cal_split, config.calibration_people, body, config.seed, pool))
            k = config.calibration_people
            cal_people = People(cal_people.source, cal_people.split, cal_people.pose[:k], cal_people.betas[:k],
                                cal_people.origin[:k], cal_people.about)
            cal = calibrate_noise(body, cal_people, draws(cal_people, config.seed).start, targets)
            calibration[source] = {"split": cal_split, **cal, "levels": levels}
            sigmas = dict(zip(levels, cal["sigma_rad"]))
        cells += _cells_for(body, people, config, sigmas)
        say(f"{source}: {len(people)} people ({about[source]['what']}); start noise "
            + (", ".join(f"{lv} {sg:.3f} rad" for lv, sg in sigmas.items()) or "-")
            + f" [{time.perf_counter() - t:.1f} s]")

    speed: dict[str, dict[str, Any]] = {}
    throughput: dict[str, dict[str, Any]] = {}
    fitters = _fitters(body, prior, config, device)
    for name, fitter, count, about_fitter in fitters:
        speed[name] = {"config": dataclasses.asdict(fitter.config), **about_fitter}
        if count and fitter.config.compile:  # compiled once per process: outside the timed fits, its CPU time reported
            cpu = time.process_time()
            _warm_up(fitter, cells, config.starts, device)
            speed[name]["compile_cpu_s"] = time.process_time() - cpu
            say(f"{name:>16} compiled: {speed[name]['compile_cpu_s']:.1f} CPU s")
    # start level by start level, every variant in turn: a ratio compares CPU rates measured minutes apart at most,
    # not a whole run apart (this machine's rate drifts by up to 1.5x over a run)
    for label in config.starts:
        level_cells = [c for c in cells if c.start == label]
        for name, fitter, count, _ in fitters:
            if count == 0:
                continue
            timing = _fit_level(fitter, level_cells, count, name, device)
            speed[name][label] = timing
            say(f"{name:>16} {label:<6}: {timing['fits']} fits in {timing['wall_s']:.1f} s "
                f"({timing['fits_per_s']:.1f} fits/s, {timing['fits_per_cpu_s']:.1f} per CPU s)")
            if config.batch is not None and fitter.config.mode == "fast":
                rate = throughput.setdefault(name, {})[label] = _throughput(fitter, level_cells, config.batch, device)
                say(f"{name:>16} {label:<6}: batch {config.batch}: {rate['fits_per_cpu_s']:.1f} fits per CPU s")
    workers: dict[str, dict[str, Any]] = {}
    if config.workers > 1:
        inputs = {label: (_batch_inputs([c for c in cells if c.start == label], config.batch, device),
                          next(c.kind for c in cells if c.start == label)) for label in config.starts}
        workers = parallel_throughput(config.model, prior_path, inputs, config.workers, config.compile)
        for label, rate in workers.items():
            say(f"{'fast':>16} {label:<6}: batch {config.batch} in {config.workers} one-thread processes: "
                f"{rate['fits_per_s']:.1f} fits/s")
    fast = next((f for name, f, count, _ in fitters if name == "fast" and count), None)
    if fast is not None and fast.lifter is not None and "mean" in config.starts:
        _lifted_starts(fast, [c for c in cells if c.start == "mean"], config.cases, device)
    for c in cells:
        _evaluate(body, c)
    for name, levels in speed.items():      # each variant's accuracy on the cases it fitted, beside its speed
        for label in config.starts:
            if label in levels:
                levels[label]["pa_mpjpe_mm"] = float(np.concatenate(
                    [c.metrics[name]["pa_mpjpe_mm"] for c in cells if c.start == label]).mean())

    ratios, cpu_ratios = {}, {}
    if {"fast", "reference"} <= set(speed) and config.reference_cases:
        for label in config.starts:
            fast, ref = speed["fast"][label], speed["reference"][label]
            ratios[label] = fast["fits_per_s"] / ref["fits_per_s"]
            cpu_ratios[label] = fast["fits_per_cpu_s"] / ref["fits_per_cpu_s"]
    against = {name: {label: speed["fast"][label]["fits_per_cpu_s"] / levels[label]["fits_per_cpu_s"]
                      for label in config.starts if label in levels and label in speed["fast"]}
               for name, levels in speed.items() if name != "fast" and "fast" in speed}
    return {
        "benchmark": "smplify", "version": 2,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()},
        "evaluation": EVALUATION,
        "body_model": {"name": body.name, "model_id": body.model_id},
        "prior": prior_info, "sources": about, "sources_skipped": skipped, "calibration": calibration,
        "speed": speed, "speedup_fast_over_reference": ratios,
        "speedup_min": min(ratios.values()) if ratios else None,
        "speedup_fast_over_reference_per_cpu_s": cpu_ratios,
        "speedup_fast_per_cpu_s_over": against, "throughput": throughput, "throughput_workers": workers,
        "summary": _pooled(cells, lambda c: (c.noise, c.start), ("keypoints", "start"), config.reference_cases),
        "summary_by_camera": _pooled(cells, lambda c: (c.camera, c.noise, c.start), ("camera", "keypoints", "start"),
                                     config.reference_cases),
        "summary_by_source": _pooled(cells, lambda c: (c.source, c.noise, c.start), ("source", "keypoints", "start"),
                                     config.reference_cases),
        "cells": [_cell_record(c, config.reference_cases) for c in cells],
        "threads": torch.get_num_threads(), "device": str(device), "cpus": os.cpu_count(),
        "load_average_start": list(load0), "load_average_end": list(os.getloadavg()),
        "wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0,
    }
