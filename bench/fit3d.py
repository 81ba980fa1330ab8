"""3D-evidence fitting benchmark (`fitloop bench fit3d`): how well `fitting.fit3d` recovers known bodies from
their 3D joints and from calibrated views, with one shape per subject.

**People.** ``subjects`` synthetic subjects of the open body model, each with its own betas ~ N(0, 1) and
``frames`` frames, placed on the floor of a Y-up world within ±0.5 m of the origin, each sequence turned to a
random heading (full circle). Poses, by source:

* ``cmu``: consecutive frames of one CMU motion-capture clip per subject (``../shared/mocap/cmu``, converted by
  `assets.bvh` through `pipelines.synthetic.poses.MocapPoses`): real motion, so the temporal term has real
  velocities to keep;
* ``lsp``: SPIN's fits to LSP (``../shared/fixtures/lsp/spin_npz/lsp-orig_fits.npy``, real single-image poses in
  SMPL's joint tree), turned upright, independent frames;
* ``prior``: sequences of the shipped pose prior's samples, slerped between key poses
  (`pipelines.synthetic.poses.PriorPoses`); what the other two fall back to when ../shared is absent.

**Evidence.** 3D: the 17 Human3.6M joints of the true body (the body model's Human3.6M regressor, the points the
fit matches them with), with Gaussian noise of ``joint_noise_mm`` per coordinate. Views: ``views`` cameras on a
ring around the origin like Human3.6M's four (4.5–5.5 m away, 1.6 m high, focal 1145 px, 1000 × 1000 px, principal
point at the centre), the same 17 joints projected with ``keypoint_noise_px`` of noise per coordinate.

**Metrics** (mm unless named): ``joint_error`` the fit's own mean distance to the given 3D joints; ``mpjpe`` /
``pa_mpjpe`` against the true body by fitloop's one evaluation (`fits.evaluate`: 14 joints, pelvis-centred,
similarity Procrustes for PA); ``joints_abs`` the mean distance of the 17 fitted to the 17 true (noise-free) joints,
absolute (a 3D fit places the body, so nothing is aligned); ``v2v`` the mean per-vertex distance of the posed
meshes, absolute; ``shape_v2v`` the mean per-vertex distance of the subject's rest (zero-pose) mesh, fitted betas
against true ones (what one shape per subject recovers, pose aside); ``betas`` the L2 norm of the betas error;
``jitter`` the mean acceleration of the fitted joints (mm/frame², second differences) minus the truth's, on
sequences; ``fits_per_s`` frames fitted per second.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core.joints import H36M_JOINTS, NUM_JOINTS, indices
from core.metrics import mpjpe, pa_mpjpe
from fits.evaluate import posed_eval_joints
from fitting.body_model import load_body_model
from fitting.fit3d import Evidence, Fit3D, Fit3DConfig, Fit3DResult, Views
from fitting.priors import DEFAULT_PRIOR, MaxMixturePrior
from pipelines.synthetic.config import DEFAULT_MOCAP_DIR
from pipelines.synthetic.poses import MocapPoses, PriorPoses

SPIN_LSP_FITS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "lsp" / "spin_npz" / "lsp-orig_fits.npy"
H36M_SLOTS = torch.as_tensor(indices(H36M_JOINTS))
# Human3.6M's cameras, roughly: four on a ring around the capture area, ~5 m away, 1.6 m up, 1000 px images.
RING_FOCAL_PX = 1145.0
RING_IMAGE_PX = 1000
RING_DISTANCE_M = 5.0
RING_HEIGHT_M = 1.6
# SPIN's LSP fits are in camera axes (y down, z forward); π about x turns them into the model's Y-up world.
UPRIGHT = np.diag([1.0, -1.0, -1.0])
SEQUENCES = ("cmu", "prior")  # sources whose frames are consecutive (linked for the temporal term)


@dataclass(frozen=True)
class Truth:
    """Known bodies: pose (F, 72) axis-angle in the world (Y up), betas (S, NB), transl (F, 3) m, subject (F,),
    previous (F,) (-1: a sequence's first frame or an independent frame), joints (F, 49, 3) the fit's slot points
    of the true bodies (world, m), and the source of the poses."""

    pose: Tensor
    betas: Tensor
    transl: Tensor
    subject: Tensor
    previous: Tensor
    joints: Tensor
    source: str


def pose_source(kind: str, rest_joints: np.ndarray, rng: np.random.Generator, max_clips: int = 20):
    """(poses of each subject: a callable (length, rng) -> (length, 72) world poses, Y up; the source's name)."""
    if kind == "cmu" and DEFAULT_MOCAP_DIR.is_dir():
        mocap = MocapPoses(DEFAULT_MOCAP_DIR, rest_joints, max_clips, rng)
        return mocap.sequence, "cmu"
    if kind == "lsp" and SPIN_LSP_FITS.is_file():
        fits = np.load(SPIN_LSP_FITS)[:, :72].astype(np.float64)

        def draw(length: int, gen: np.random.Generator) -> np.ndarray:
            poses = fits[gen.choice(len(fits), size=length, replace=False)].copy()
            orient = rotvec_matrix(poses[:, :3])
            poses[:, :3] = matrix_rotvec(UPRIGHT @ orient)
            return poses

        return draw, "lsp"
    prior = PriorPoses()
    return prior.sequence, "prior"


def rotvec_matrix(rotvec: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(rotvec).as_matrix()


def matrix_rotvec(matrix: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(matrix).as_rotvec()


def synthetic_subjects(fit: Fit3D, subjects: int, frames: int, kind: str = "cmu", seed: int = 0) -> Truth:
    """``subjects`` known subjects of ``frames`` frames each (module docstring), in the fitter's float64."""
    rng = np.random.default_rng(seed)
    rest = fit.skeleton.j_template.cpu().numpy()
    draw, source = pose_source(kind, rest, rng)
    nb = fit.skeleton.num_betas
    poses, transl = [], []
    for _ in range(subjects):
        pose = np.asarray(draw(frames, rng), dtype=np.float64)
        heading = rotvec_matrix(np.array([0.0, rng.uniform(0, 2 * math.pi), 0.0]))
        pose[:, :3] = matrix_rotvec(heading @ rotvec_matrix(pose[:, :3]))
        poses.append(pose)
        transl.append(np.tile([rng.uniform(-0.5, 0.5), 0.0, rng.uniform(-0.5, 0.5)], (frames, 1)))
    dev, dt = fit.device, fit.dtype
    pose = torch.as_tensor(np.concatenate(poses), dtype=dt, device=dev)
    betas = torch.as_tensor(rng.standard_normal((subjects, nb)), dtype=dt, device=dev)
    subject = torch.arange(subjects, device=dev).repeat_interleave(frames)
    transl_t = torch.as_tensor(np.concatenate(transl), dtype=dt, device=dev)
    # stand each person on the floor (y = 0 at the lowest joint of the first frame, Y up)
    joints = fit.slot_points(pose, betas[subject]) + transl_t[:, None]
    first = torch.arange(subjects, device=dev) * frames
    lift = -joints[first].amin(1)[:, 1].repeat_interleave(frames)
    transl_t[:, 1] += lift
    joints[..., 1] += lift[:, None]
    index = torch.arange(subjects * frames, device=dev)
    sequence = source in SEQUENCES
    previous = torch.where((index % frames > 0) & sequence, index - 1, torch.full_like(index, -1))
    return Truth(pose, betas, transl_t, subject, previous, joints, source)


def ring_cameras(count: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor,
                                                                                            Tensor]:
    """``count`` cameras evenly on a ring around the origin looking at its centre at 1 m height (module
    docstring; a little jitter in distance and angle): rotation (V, 3, 3), translation (V, 3) m (world -> camera
    ``R X + T``, camera x right, y down, z forward), focal (V, 2) px, center (V, 2) px."""
    rng = np.random.default_rng(seed)
    rotation, translation = [], []
    for v in range(count):
        angle = 2 * math.pi * v / count + math.pi / 4 + rng.uniform(-0.1, 0.1)
        distance = RING_DISTANCE_M + rng.uniform(-0.5, 0.5)
        eye = np.array([distance * math.sin(angle), RING_HEIGHT_M, distance * math.cos(angle)])
        forward = np.array([0.0, 1.0, 0.0]) - eye
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rot = np.stack([right, down, forward])
        rotation.append(rot)
        translation.append(-rot @ eye)
    focal = torch.full((count, 2), RING_FOCAL_PX, dtype=dtype)
    center = torch.full((count, 2), RING_IMAGE_PX / 2.0, dtype=dtype)
    return (torch.as_tensor(np.stack(rotation), dtype=dtype), torch.as_tensor(np.stack(translation), dtype=dtype),
            focal, center)


def observe(truth: Truth, joint_noise_mm: float | None, views: int, keypoint_noise_px: float = 0.0,
            seed: int = 1) -> Evidence:
    """Evidence of the true bodies (module docstring): 3D joints with ``joint_noise_mm`` (None: no 3D joints),
    ``views`` ring cameras' keypoints with ``keypoint_noise_px`` (0 views: none); the truth's subjects and
    sequence links."""
    gen = torch.Generator().manual_seed(seed)
    frames, dt = len(truth.pose), truth.joints.dtype
    dev = truth.joints.device
    joints_3d = None
    if joint_noise_mm is not None:
        joints_3d = torch.zeros(frames, NUM_JOINTS, 4, dtype=dt)
        noise = torch.randn(frames, len(H36M_SLOTS), 3, generator=gen, dtype=dt) * joint_noise_mm / 1000.0
        joints_3d[:, H36M_SLOTS, :3] = truth.joints[:, H36M_SLOTS].cpu() + noise
        joints_3d[:, H36M_SLOTS, 3] = 1.0
        joints_3d = joints_3d.to(dev)
    cameras = None
    if views:
        rotation, translation, focal, center = (t.to(dev) for t in ring_cameras(views, dtype=dt))
        cam = torch.einsum("vij,fpj->fvpi", rotation, truth.joints[:, H36M_SLOTS]) + translation[None, :, None]
        proj = focal[None, :, None] * cam[..., :2] / cam[..., 2:] + center[None, :, None]
        proj = proj + keypoint_noise_px * torch.randn(proj.shape, generator=gen, dtype=dt).to(dev)
        keypoints = torch.zeros(frames, views, NUM_JOINTS, 3, dtype=dt, device=dev)
        keypoints[:, :, H36M_SLOTS, :2] = proj
        keypoints[:, :, H36M_SLOTS, 2] = 1.0
        expand = (frames, views)
        cameras = Views(keypoints, rotation.expand(expand + (3, 3)), translation.expand(expand + (3,)),
                        focal.expand(expand + (2,)), center.expand(expand + (2,)))
    return Evidence(joints_3d=joints_3d, views=cameras, subject=truth.subject, previous=truth.previous)


def measure(fit: Fit3D, truth: Truth, result: Fit3DResult) -> dict[str, float]:
    """The metrics of the module docstring, one number each over all frames."""
    body = fit.body
    dt = body.mixer.dtype
    with torch.no_grad():
        true_betas = truth.betas[truth.subject]
        fitted = fit.slot_points(result.pose, result.betas) + result.transl[:, None]
        joints_abs = (fitted - truth.joints)[:, H36M_SLOTS].norm(dim=-1).mean() * 1000
        posed_fit = body(result.betas.to(dt), result.pose[:, 3:].to(dt), result.pose[:, :3].to(dt))
        posed_true = body(true_betas.to(dt), truth.pose[:, 3:].to(dt), truth.pose[:, :3].to(dt))
        v2v = ((posed_fit.vertices.double() + result.transl[:, None].cpu())
               - (posed_true.vertices.double() + truth.transl[:, None].cpu())).norm(dim=-1).mean() * 1000
        zero = torch.zeros(len(truth.betas), 69, dtype=dt)
        rest_fit = body(result.subject_betas.to(dt), zero, zero[:, :3]).vertices
        rest_true = body(truth.betas.to(dt), zero, zero[:, :3]).vertices
        shape_v2v = (rest_fit - rest_true).double().norm(dim=-1).mean() * 1000
        eval_fit = posed_eval_joints(body, result.pose, result.betas)
        eval_true = posed_eval_joints(body, truth.pose, true_betas)
        linked = (truth.previous >= 0) & (truth.previous[truth.previous.clamp_min(0)] >= 0)
        jitter = float("nan")
        if bool(linked.any()):
            def accel(points: Tensor) -> Tensor:
                p1 = truth.previous.clamp_min(0)
                p2 = truth.previous[p1].clamp_min(0)
                return (points - 2 * points[p1] + points[p2])[linked][:, H36M_SLOTS].norm(dim=-1).mean() * 1000

            jitter = float(accel(fitted) - accel(truth.joints))
    return {"joint_error": float(result.joint_error.nanmean()) if not bool(result.joint_error.isnan().all())
            else float("nan"),
            "mpjpe": float(mpjpe(eval_fit, eval_true).mean() * 1000),
            "pa_mpjpe": float(pa_mpjpe(eval_fit, eval_true).mean() * 1000),
            "joints_abs": float(joints_abs), "v2v": float(v2v), "shape_v2v": float(shape_v2v),
            "betas": float((result.subject_betas - truth.betas).norm(dim=-1).mean()), "jitter": jitter}


COLUMNS = (("joints_abs", "joints"), ("pa_mpjpe", "PA-MPJPE"), ("mpjpe", "MPJPE"), ("v2v", "v2v"),
           ("shape_v2v", "shape v2v"), ("betas", "betas err"), ("jitter", "jitter"), ("fits_per_s", "fits/s"))


def title(record: dict) -> str:
    """What `run` measured, in one line."""
    return (f"fit3d benchmark: {record['subjects']} subjects x {record['frames']} frames per pose source, "
            f"{record['model']} model, {record['threads']} thread(s); mm unless named, betas err the L2 norm")


def table(record: dict) -> str:
    """`run`'s record as its title and a markdown table, a row per pose source and condition."""
    rows = [table_row(source, name, row) for source, conditions in record["sources"].items()
            for name, row in conditions.items()]
    return "\n".join([title(record), table_header(), *rows])


def table_header() -> str:
    """The header of `table_row`'s lines (a markdown table)."""
    names = [label for _, label in COLUMNS]
    return "| poses | evidence | " + " | ".join(names) + " |\n|" + "---|" * (len(names) + 2)


def table_row(source: str, condition: str, row: dict[str, float]) -> str:
    """One markdown table line of a condition's metrics (NaN, e.g. jitter of independent frames: a dash)."""
    cells = ["–" if v != v else f"{v:.1f}" for v in (row[key] for key, _ in COLUMNS)]
    return f"| {source} | {condition} | " + " | ".join(cells) + " |"


# (name, 3D joint noise in mm or None, views, keypoint noise px, config overrides, each frame its own shape)
CONDITIONS: tuple[tuple[str, float | None, int, float, dict, bool], ...] = (
    ("3d, clean", 0.0, 0, 0.0, {}, False),
    ("3d, 10 mm", 10.0, 0, 0.0, {}, False),
    ("3d, 10 mm, shape per frame", 10.0, 0, 0.0, {}, True),
    ("3d, 10 mm, dense solver", 10.0, 0, 0.0, {"solver": "dense"}, False),
    ("3d, 10 mm, temporal 300", 10.0, 0, 0.0, {"temporal_weight": 300.0}, False),
    ("4 views, 2 px", None, 4, 2.0, {}, False),
    ("1 view, 2 px", None, 1, 2.0, {}, False),
    ("3d 10 mm + 4 views 2 px", 10.0, 4, 2.0, {}, False),
)


def run(subjects: int = 4, frames: int = 32, model: str = "open", kinds=("cmu", "lsp"), seed: int = 0,
        progress: Callable[[str], None] | None = None, h36m_regressor: str | None = None) -> dict:
    """Every condition of `CONDITIONS` on every pose source; the JSON-able record (``sources``: per source, per
    condition, the metrics of the module docstring). ``progress`` gets `table`'s lines as they are measured;
    ``h36m_regressor``: SPIN's ``J_regressor_h36m.npy`` for a real SMPL-family ``model`` file."""
    body = load_body_model(model, h36m_regressor=h36m_regressor, dtype=torch.float64)
    prior = MaxMixturePrior.from_file(DEFAULT_PRIOR)
    base = Fit3D(body, prior)
    record = {"model": body.name, "subjects": subjects, "frames": frames, "threads": torch.get_num_threads(),
              "sources": {}}
    if progress:
        progress(title(record))
        progress(table_header())
    for kind in kinds:
        truth = synthetic_subjects(base, subjects, frames, kind, seed)
        rows = {}
        for name, noise, views, px, overrides, per_frame in CONDITIONS:
            if "temporal" in name and truth.previous.max() < 0:
                continue
            fitter = Fit3D(body, prior, replace(Fit3DConfig(), **overrides))
            evidence = observe(truth, noise, views, px, seed + 1)
            if per_frame:
                evidence = replace(evidence, subject=None, previous=None)
            t0 = time.perf_counter()
            result = fitter(evidence)
            seconds = time.perf_counter() - t0
            if per_frame:  # the shape error of per-frame shapes: each frame's against its subject's
                row = measure(fitter, replace(truth, betas=truth.betas[truth.subject], subject=result.subject),
                              result)
            else:
                row = measure(fitter, truth, result)
            row["fits_per_s"] = len(truth.pose) / seconds
            rows[name] = row
            if progress:
                progress(table_row(truth.source, name, row))
        record["sources"][truth.source] = rows
    return record
