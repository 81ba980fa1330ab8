"""Train a Gaussian-mixture pose prior (SMPLify's format: K components, full covariance, 69-dim body pose).

Sources are either a directory of BVH clips (converted to the body model's joint rotations by `assets.bvh`) or
AMASS-style ``.npz`` files (``poses`` field: SMPL's, SMPL-H's or SMPL-X's full pose, `POSE_WIDTHS`; the body pose is
SMPL's 21 body joints, with SMPL's two hand slots unobserved for SMPL-H and SMPL-X). The steps, each a plain
function:

1. **Poses.** BVH: convert each clip relative to the model's T-pose, drop frame 0 (a rest frame in both CMU
   releases), reject frames with an anatomically impossible joint rotation (:data:`ROTATION_LIMITS_DEG`; the CMU
   data has marker glitches, such as a foot spun 180° for hundreds of frames), and keep every n-th frame so the
   rate is about ``fps`` (consecutive 30 fps frames are near-duplicates). AMASS: the same subsampling, from the
   file's ``mocap_framerate``.
2. **Weights.** One per frame; if walking frames (category ``walk`` in the folder's ``CLIPS.tsv``) carry more
   than ``walk_share`` of the total, they are scaled down to exactly that share.
3. **Mirror** (default on): every pose is added again mirrored left/right (`core.joints.flip_pose`), with the
   same weight, so the prior is symmetric and has no handedness of the few subjects.
4. **EM.** Weighted k-means++ seeding and Lloyd iterations, then EM for a full-covariance mixture with
   (``cov_floor_deg``)² added to every covariance's diagonal (at least :data:`MIN_COV_FLOOR_DEG`; a mixture whose
   covariances come out ill-conditioned anyway is refused, `fitting.priors.covariance_problem`). Deterministic
   for a seed. The floor (default 5°)
   is wider than EM needs for stability on purpose: CMU's skeleton makes knees, elbows and toes exact hinges
   (one degree of freedom), so the mocap poses have ~0.5° of spread off the hinge axis, while a body model's
   joints are ball joints and fitted poses have several degrees of play there; a 1.8° floor made such poses
   look far less likely than their actual plausibility (docs/pose_prior.md has the numbers). Dimensions with no
   variance in the data (joints that no source animates: the collars and hands for CMU) are left out of EM and
   given mean 0 and an independent standard deviation of ``unobserved_std_deg``: the prior then neither forbids
   nor pulls those joints, instead of pinning them to the rest pose with the covariance floor.

**Held-out subjects.** The CMU subjects in :data:`CMU_HELD_OUT_SUBJECTS` are left out of the default prior
entirely (by subject, not clip: a subject's clips share a body and a style), so that `fitloop bench smplify` can
fit poses the prior never saw; :data:`CMU_DEV_SUBJECTS` are for tuning SMPLify, :data:`CMU_TEST_SUBJECTS` for
reporting. The prior's metadata records the clips and subjects it was trained on and those held out.

`train_prior` runs the whole thing and writes the mixture with its provenance (`fitting.priors.save_gmm`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.linalg import solve_triangular

from assets import bvh
from core.errors import FitloopError
from core.joints import SMPL_JOINT_NAMES, flip_pose
from fitting.body_model import OPEN_MODELS
from fitting.files import DAMAGED, read_npz
from fitting.priors import MAX_COVARIANCE_CONDITION, GaussianMixture, covariance_problem, save_gmm

BODY_DIM = 69
DEFAULT_MODEL = OPEN_MODELS["open"]
CMU_ACKNOWLEDGMENT = ("The data used in this project was obtained from mocap.cs.cmu.edu. "
                      "The database was created with funding from NSF EIA-0196217.")
CMU_BVH_CREDIT = ("BVH conversion by Bruce Hahne (cgspeed.com): the 2010 MotionBuilder-friendly and the "
                  "Daz-friendly releases.")
CMU_LICENSE = "CMU: free for all uses, do not resell the data; Hahne places no additional restrictions"
# How a BVH clip is known to be CMU's: the nearest CREDITS.md above its real path (symlinks followed) names CMU's
# database, as ../shared/mocap/cmu/CREDITS.md does; it names Hahne's site where the BVH files are his conversions.
CMU_MARK, HAHNE_MARK = "mocap.cs.cmu.edu", "cgspeed.com"
REPO_ROOT = Path(__file__).resolve().parents[1]

# The smallest covariance floor `train_prior` takes (degrees). The floor is the covariances' smallest eigenvalue,
# (floor in rad)², and their largest is the widest pose variation, ~1.6 rad² in the CMU clips: 0.5° keeps the
# condition number at ~2e4, under the 1e5 that SMPLify's float32 solve can use (MAX_COVARIANCE_CONDITION), with room
# for wider data. Nothing is gained below it: CMU's hinges (knees, elbows) have ~0.5° of spread off their axis, and
# fitted bodies far more; with no floor the hinge directions get zero variance and the prior scores nonsense.
MIN_COV_FLOOR_DEG = 0.5
FLOOR_WHY = (f"a smaller floor leaves the covariances too ill-conditioned for SMPLify's float32 fit (condition "
             f"number above {MAX_COVARIANCE_CONDITION:.0e}); the default is 5")

# The full-pose widths an AMASS-style ``poses`` array may have, and what each is. SMPL-H's and SMPL-X's first 66
# values are the global orientation and SMPL's body joints 1-21 (their trees share SMPL's first 22 joints); SMPL's
# joints 22-23 are its hands, where SMPL-H has the left index finger's first two joints and SMPL-X its jaw and left
# eye: those have no SMPL joint. `bench.smplify_cases.load_pose_file` reads the same widths.
POSE_WIDTHS = {72: "SMPL", 156: "SMPL-H (AMASS: body joints used, fingers left out)",
               165: "SMPL-X (body joints used; jaw, eyes and fingers left out)"}
SMPL_BODY_VALUES = 66

# AMASS's poses are relative to the T-pose of the model they were fitted with; fitloop has no conversion from it to
# the open model's (the BVH path converts its clips to the open model's T-pose, `assets.bvh`).
AMASS_REST = ("the T-pose of the body model the AMASS poses were fitted with (SMPL, SMPL-H or SMPL-X), as read: not "
              "converted to the open model's T-pose (fitting/data/open_body.npz), which fitloop's BVH priors and fits "
              "use")
AMASS_REST_WARNING = ("AMASS poses are relative to SMPL's T-pose and were used as they are, not converted to the open "
                      "model's T-pose (fitting/data/open_body.npz): the prior carries the rest-pose differences "
                      "between the two models (its metadata's rest_pose says so)")

# CMU subjects never used to train the default prior (docs/pose_prior.md). Two splits, by subject, each with one
# subject of each BVH release: dev (tuning SMPLify) and test (the benchmark's report). Together 20 % of the 133
# clips' frames (21.8 % of the frames the prior would use at 10 fps).
CMU_DEV_SUBJECTS: tuple[int, ...] = (9, 14)    # 9: run, walk (MotionBuilder release); 14: jump up to grab, reach (Daz)
CMU_TEST_SUBJECTS: tuple[int, ...] = (2, 94)   # 2: walk, run, jump, punch, bend and lift, swordplay, wash (MB);
                                               # 94: Indian dance (Daz)
CMU_HELD_OUT_SUBJECTS: tuple[int, ...] = tuple(sorted(CMU_DEV_SUBJECTS + CMU_TEST_SUBJECTS))

# Largest plausible local rotation angle per joint (degrees, relative to the T-pose), used to reject glitched
# mocap frames. Ankles/feet: ~50° of plantar flexion plus inversion; wrists: flexion plus forearm twist; hips,
# knees, elbows near their full anatomical range; shoulders: an arm overhead (90°) with the upper arm's twist.
# Measured on the 133 CMU clips: the glitches (a foot or hand spun round, an arm flipped) sit at 150-180° for
# ankles and wrists and 175-180° for shoulders, far above the bulk (99th percentile: ankles 47°, wrists 65-72°);
# climbing and dance clips hold real shoulder rotations up to ~170°.
ROTATION_LIMITS_DEG: dict[str, float] = {
    "left_hip": 160, "right_hip": 160, "left_knee": 165, "right_knee": 165, "left_ankle": 90, "right_ankle": 90,
    "left_foot": 90, "right_foot": 90, "spine1": 90, "spine2": 90, "spine3": 90, "neck": 90, "head": 90,
    "left_collar": 90, "right_collar": 90, "left_shoulder": 170, "right_shoulder": 170, "left_elbow": 165,
    "right_elbow": 165, "left_wrist": 120, "right_wrist": 120, "left_hand": 90, "right_hand": 90,
}


class PriorTrainingError(FitloopError):
    """The training sources are missing, empty or unreadable."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained prior; stored in its metadata."""

    components: int = 8
    seed: int = 0
    fps: float = 10.0  # subsample frames to about this rate
    walk_share: float = 0.10  # walking frames carry at most this share of the total weight
    mirror: bool = True
    cov_floor_deg: float = 5.0  # (this many degrees)² is added to every covariance diagonal
    unobserved_std_deg: float = 15.0
    max_iter: int = 500
    tol: float = 1e-6  # stop when the mean log-likelihood per sample improves by less (nats)
    kmeans_iter: int = 30
    held_out_subjects: tuple[int, ...] = CMU_HELD_OUT_SUBJECTS  # BVH clips of these subjects are never read


@dataclass
class PoseSet:
    """Training poses (N, 69) float64 body pose, weights (N,), and what was read and rejected."""

    poses: np.ndarray
    weights: np.ndarray
    walk: np.ndarray  # (N,) bool
    clips: list[dict[str, Any]] = field(default_factory=list)
    folder: Path | None = None  # the BVH folder read (None for AMASS files)


# --- Sources ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class ClipEntry:
    """One clip of a BVH folder: path relative to the folder, category (``CLIPS.tsv``; "walk"/"unknown" without
    one) and CMU subject number (``CLIPS.tsv``'s ``subject``, else the ``SS`` of a ``SS_TT.bvh`` name; None if
    neither says)."""

    file: str
    category: str
    subject: int | None


def clip_subject(file: str) -> int | None:
    """The CMU subject of a clip named ``SS_TT.bvh`` (e.g. ``mb/02_05.bvh`` -> 2), None for other names."""
    head = Path(file).stem.split("_")[0]
    return int(head) if head.isdigit() else None


def _subject_of(row: dict[str, str]) -> int | None:
    given = (row.get("subject") or "").strip()
    return int(given) if given.isdigit() else clip_subject(row["file"])


def clip_table(directory: Path) -> list[ClipEntry]:
    """Every clip of a BVH folder, sorted by path: ``CLIPS.tsv``'s rows whose file exists when the folder has
    one (columns ``file``, ``category``, optional ``subject``), else every ``*.bvh`` below it."""
    table = directory / "CLIPS.tsv"
    if table.is_file():
        with table.open(newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows and {"file", "category"} <= set(rows[0]):
            return sorted(ClipEntry(r["file"], r["category"], _subject_of(r)) for r in rows
                          if (directory / r["file"]).is_file())
    return sorted(ClipEntry(p.relative_to(directory).as_posix(), "walk" if "walk" in p.stem.lower() else "unknown",
                            clip_subject(p.name)) for p in directory.rglob("*.bvh"))


def plausible_frames(poses: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Mask (F,) of frames whose every joint rotation is within :data:`ROTATION_LIMITS_DEG`, and per-joint counts
    of the frames each joint rejects. ``poses`` (F, 72) axis-angle radians."""
    angles = np.degrees(np.linalg.norm(poses.reshape(len(poses), -1, 3), axis=-1))
    keep = np.ones(len(poses), dtype=bool)
    counts = {}
    for j, name in enumerate(SMPL_JOINT_NAMES[1:], start=1):
        bad = angles[:, j] > ROTATION_LIMITS_DEG[name]
        if bad.any():
            counts[name] = int(bad.sum())
        keep &= ~bad
    return keep, counts


def load_bvh_poses(directory: Path, rest_joints: np.ndarray, config: TrainConfig) -> PoseSet:
    """Convert, clean and subsample every clip of a BVH folder (see module docstring), except those of
    ``config.held_out_subjects``. Unreadable clips are recorded in ``clips`` with their error, not fatal; a folder
    without any usable clip is. Held-out clips are recorded with ``held_out: True`` and never read."""
    entries = clip_table(directory)
    if not entries:
        raise PriorTrainingError(f"{directory}: no .bvh files found; pass the folder that holds the clips "
                                 f"(for CMU: ../shared/mocap/cmu)")
    poses, walk, clips = [], [], []
    for entry in entries:
        rel, category = entry.file, entry.category
        record: dict[str, Any] = {"file": rel, "category": category, "subject": entry.subject}
        if entry.subject in config.held_out_subjects:
            clips.append({**record, "held_out": True})
            continue
        try:
            clip = bvh.parse_bvh(directory / rel)
            conv = bvh.convert_clip(clip, rest_joints, drop_first=True)
        except (bvh.BvhError, KeyError) as err:
            reason = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
            record["error"] = reason.removeprefix(f"{directory / rel}: ")
            clips.append(record)
            continue
        step = frame_step(clip.frame_time, config.fps)
        keep, rejected = plausible_frames(conv.poses)
        picked = np.flatnonzero(keep)[::step]
        record.update(skeleton=conv.skeleton, frames=len(conv.poses), rejected=int((~keep).sum()),
                      rejected_by_joint=rejected, step=step, used=len(picked))
        clips.append(record)
        poses.append(conv.poses[picked, 3:].astype(np.float64))
        walk.append(np.full(len(picked), category == "walk"))
    if not poses or sum(len(p) for p in poses) == 0:
        held = sum(1 for c in clips if c.get("held_out"))
        failed = [c for c in clips if "error" in c]
        why = []
        if held:
            why.append(f"{held} of {len(clips)} clips belong to held-out subjects "
                       f"{', '.join(map(str, config.held_out_subjects))} (--hold-out none uses them)")
        if failed:
            why.append(f"{len(failed)} unreadable clip{'s' * (len(failed) > 1)}, {describe_clip_errors(failed)}")
        raise PriorTrainingError(f"{directory}: no usable frames in any clip; "
                                 f"{'; '.join(why) or 'every frame rejected as implausible'}; fix or replace the "
                                 f"clips, or pass another folder")
    x = np.concatenate(poses)
    return PoseSet(x, np.ones(len(x)), np.concatenate(walk), clips, directory)


def frame_step(frame_time: float, fps: float) -> int:
    """Keep every n-th frame of a clip with frames ``frame_time`` s apart to get about ``fps`` frames a second."""
    return max(1, round(min(1.0 / max(frame_time * fps, 1e-12), 1e12)))


def describe_clip_errors(failed: list[dict[str, Any]], shown: int = 3) -> str:
    """``file: reason`` of the first ``shown`` unreadable clips (records with an ``error``), and how many more."""
    text = "; ".join(f"{c['file']}: {c['error']}" for c in failed[:shown])
    return text + (f"; and {len(failed) - shown} more" if len(failed) > shown else "")


def clip_errors(tp: TrainingPoses) -> list[dict[str, str]]:
    """The clips left out as unreadable, for a training report: ``[{"file": ..., "reason": ...}]``."""
    return [{"file": c["file"], "reason": c["error"]} for c in tp.data.clips if "error" in c]


def more_poses(tp: TrainingPoses, *ways: str) -> str:
    """What to do about too few training poses: ``ways``, then a higher --fps where clips were subsampled and
    mirroring if it was off ("give more clips, a higher --fps than 10 (more frames per clip) or ...")."""
    ways += (f"a higher --fps than {tp.config.fps:g} (more frames per clip)",) * any(
        c.get("step", 1) > 1 for c in tp.data.clips)
    ways += ("no --no-mirror (mirrored copies double the poses)",) * (not tp.config.mirror)
    return "give " + (f"{', '.join(ways[:-1])} or {ways[-1]}" if len(ways) > 1 else ways[0])


def smpl_full_pose(poses: np.ndarray) -> np.ndarray:
    """SMPL's full pose (N, 72) of full poses (N, W) of a width in :data:`POSE_WIDTHS`, axis-angle radians: SMPL's
    as is; SMPL-H's and SMPL-X's global orientation and 21 body joints (their first 66 values) with SMPL's two hand
    joints at rest (zero): their fingers, jaw and eyes have no SMPL joint."""
    if poses.ndim != 2 or poses.shape[1] not in POSE_WIDTHS:
        raise ValueError(f"poses of shape {poses.shape}; expected (N, W) with W in {sorted(POSE_WIDTHS)}")
    if poses.shape[1] == 72:
        return poses
    return np.concatenate([poses[:, :SMPL_BODY_VALUES], np.zeros((len(poses), 72 - SMPL_BODY_VALUES))], axis=1)


def load_amass_poses(files: list[Path], config: TrainConfig) -> PoseSet:
    """Body poses (N, 69) from AMASS-style ``.npz`` files (`smpl_full_pose` of ``poses``: SMPL's columns 3:72, or
    SMPL-H's and SMPL-X's 3:66 with SMPL's hand slots zero, unobserved as for BVH), subsampled to about ``fps``.

    Frames are taken as is (no plausibility filter: AMASS poses are already fits of a body model), relative to the
    T-pose of the model they were fitted with, not converted to the open model's. Files without
    ``mocap_framerate`` are used at every frame.
    """
    poses, clips = [], []
    for path in files:
        record: dict[str, Any] = {"file": str(path)}
        data, _ = read_npz(path, "AMASS-style pose file")
        try:
            p = np.asarray(data["poses"], dtype=np.float64)
            rate = float(data["mocap_framerate"]) if "mocap_framerate" in data else None
        except (KeyError, TypeError, ValueError) as err:
            raise PriorTrainingError(f"{path}: not an AMASS-style .npz with a numeric `poses` array ({err})") from None
        if p.ndim != 2 or p.shape[1] not in POSE_WIDTHS:
            raise PriorTrainingError(f"{path}: `poses` has shape {p.shape}; expected (F, W) axis-angle with "
                                     + ", ".join(f"W = {w} ({layout.split(' (')[0]})"
                                                 for w, layout in POSE_WIDTHS.items())
                                     + "; convert other layouts to one of these")
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise PriorTrainingError(f"{path}: mocap_framerate is {rate}; expected frames per second (> 0)")
        if not np.isfinite(p).all():
            raise PriorTrainingError(f"{path}: `poses` holds NaN or infinite values (frame "
                                     f"{int(np.argwhere(~np.isfinite(p))[0, 0])}); {DAMAGED}")
        step = max(1, round(min(rate / config.fps, 1e12))) if rate else 1
        picked = smpl_full_pose(p[::step])[:, 3:]
        record.update(layout=POSE_WIDTHS[p.shape[1]].split(" (")[0], frames=len(p), step=step, used=len(picked))
        clips.append(record)
        poses.append(picked)
    x = np.concatenate(poses) if poses else np.zeros((0, BODY_DIM))
    if len(x) == 0:
        raise PriorTrainingError("no frames in the AMASS files given")
    return PoseSet(x, np.ones(len(x)), np.zeros(len(x), dtype=bool), clips)


def cap_walk_share(weights: np.ndarray, walk: np.ndarray, share: float) -> tuple[np.ndarray, float]:
    """Scale walking frames' weights so they carry at most ``share`` of the total; returns (weights, factor)."""
    w_walk, w_other = weights[walk].sum(), weights[~walk].sum()
    if w_walk == 0 or w_walk <= share * (w_walk + w_other) or w_other == 0:
        return weights.copy(), 1.0
    factor = share * w_other / ((1.0 - share) * w_walk)
    out = weights.copy()
    out[walk] *= factor
    return out, float(factor)


# --- EM for a weighted full-covariance Gaussian mixture -----------------------------------------------------------
def _log_gaussians(x: np.ndarray, means: np.ndarray, covars: np.ndarray) -> np.ndarray:
    """log N(x_i | μ_k, Σ_k): (N, D), (K, D), (K, D, D) -> (N, K)."""
    n, d = x.shape
    out = np.empty((n, len(means)))
    for k in range(len(means)):
        chol = np.linalg.cholesky(covars[k])
        z = solve_triangular(chol, (x - means[k]).T, lower=True)
        out[:, k] = -0.5 * np.einsum("dn,dn->n", z, z) - np.log(np.diag(chol)).sum() - 0.5 * d * math.log(2 * math.pi)
    return out


def _kmeans(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator, iters: int) -> np.ndarray:
    """Weighted k-means++ seeding then Lloyd iterations; returns labels (N,)."""
    centers = [x[rng.choice(len(x), p=w / w.sum())]]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = w * d2
        centers.append(x[rng.choice(len(x), p=p / p.sum())])
        d2 = np.minimum(d2, ((x - centers[-1]) ** 2).sum(1))
    c = np.stack(centers)
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        dist = (x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None]
        new = dist.argmin(1)
        for j in range(k):
            m = new == j
            if m.any():  # an emptied cluster keeps its centre
                c[j] = np.average(x[m], axis=0, weights=w[m])
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def fit_gmm(x: np.ndarray, w: np.ndarray, k: int, *, seed: int, reg_covar: float, max_iter: int, tol: float,
            kmeans_iter: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Weighted EM for a K-component full-covariance mixture. x (N, D), w (N,) >= 0 sample weights.

    Returns means (K, D), covars (K, D, D), weights (K,) and a report (iterations, converged, mean log-lik).
    """
    n, d = x.shape
    if n < k * 2:
        raise PriorTrainingError(f"only {n} poses for {k} components; give more data or fewer --components")
    rng = np.random.default_rng(seed)
    wn = w / w.sum()
    resp = np.zeros((n, k))
    resp[np.arange(n), _kmeans(x, w, k, rng, kmeans_iter)] = 1.0
    eye = np.eye(d)
    history = []
    converged = False
    for it in range(max_iter + 1):
        # M-step (from the k-means labels on the first pass)
        rw = resp * wn[:, None]
        nk = rw.sum(0) + 1e-12
        weights = nk / nk.sum()
        means = (rw.T @ x) / nk[:, None]
        covars = np.empty((k, d, d))
        for j in range(k):
            diff = x - means[j]
            covars[j] = (rw[:, j, None] * diff).T @ diff / nk[j] + reg_covar * eye
            covars[j] = 0.5 * (covars[j] + covars[j].T)
        if it == max_iter:
            break
        # E-step
        logp = _log_gaussians(x, means, covars) + np.log(weights)
        lse = np.logaddexp.reduce(logp, axis=1)
        resp = np.exp(logp - lse[:, None])
        history.append(float(wn @ lse))
        if len(history) > 1 and history[-1] - history[-2] < tol:
            converged = True
            break
    return means, covars, weights, {"iterations": len(history), "converged": converged,
                                    "mean_log_likelihood": history[-1] if history else None}


# --- The whole run ------------------------------------------------------------------------------------------------
def _rest_pose(model: Path | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Rest joints of the body model the rotations are relative to, and how they were obtained."""
    path = model if model is not None else (DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None)
    if path is None:
        return bvh.STANDARD_TPOSE_JOINTS, {
            "source": "standard T-pose (assets.bvh.STANDARD_TPOSE_JOINTS: approximate SMPL-like joints); "
                      "no body-model file was available"}
    path = Path(path)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise PriorTrainingError(f"{path}: cannot read the body model ({err.strerror}); pass --model PATH") from None
    try:
        shown = path.resolve().relative_to(Path(__file__).resolve().parents[1]).as_posix()
    except ValueError:
        shown = str(path)
    return bvh.rest_joints_from_model(path), {"source": shown, "sha256": digest}


@dataclass
class TrainingPoses:
    """The poses a prior is trained on, after every step before the model's own training (module docstring, steps
    1–3): ``poses`` (N, 69) float64 body pose, with the mirrored copies when ``config.mirror``; ``weights`` (N,);
    ``data`` what was read (unmirrored), ``walk_factor`` the walking frames' weight factor, ``rest_info`` how the
    BVH rotations' rest pose was obtained (None for AMASS)."""

    poses: np.ndarray
    weights: np.ndarray
    data: PoseSet
    walk_factor: float
    rest_info: dict[str, Any] | None
    config: TrainConfig


def training_poses(sources: list[Path], *, kind: str = "bvh", config: TrainConfig, model: Path | None = None
                   ) -> TrainingPoses:
    """Read, clean, subsample, weight and mirror the training poses of a prior (steps 1–3), for the Gaussian
    mixture here and the VAE (`assets.vae_train`) alike. ``kind``, ``sources`` and ``model`` as in `train_prior`."""
    sources = [Path(s) for s in sources]
    rest_info: dict[str, Any] | None = None
    if kind == "bvh":
        if len(sources) != 1:
            raise PriorTrainingError(f"--bvh takes one folder of .bvh clips; got {len(sources)} paths")
        if not sources[0].is_dir():
            what = "is a file, not a folder" if sources[0].exists() else "does not exist"
            raise PriorTrainingError(f"--bvh {sources[0]}: {what}; pass the folder that holds the .bvh clips "
                                     f"(for CMU: ../shared/mocap/cmu)")
        rest_joints, rest_info = _rest_pose(model)
        data = load_bvh_poses(sources[0], rest_joints, config)
    elif kind == "amass":
        missing = [str(s) for s in sources if not s.is_file()]
        if not sources or missing:
            raise PriorTrainingError(f"--amass takes existing .npz files; missing: "
                                     f"{', '.join(missing) or 'none given'}")
        data = load_amass_poses(sources, config)
        rest_info = {"source": AMASS_REST, "converted": False}
    else:
        raise PriorTrainingError(f"unknown source kind {kind!r}; use 'bvh' or 'amass'")
    weights, walk_factor = cap_walk_share(data.weights, data.walk, config.walk_share)
    x, w = data.poses, weights
    if config.mirror:
        flipped = flip_pose(np.concatenate([np.zeros((len(x), 3)), x], axis=1))[:, 3:]
        x, w = np.concatenate([x, flipped]), np.concatenate([w, w])
    return TrainingPoses(x, w, data, walk_factor, rest_info, config)


def resolve_held_out(kind: str, held_out_subjects: tuple[int, ...] | None) -> tuple[int, ...]:
    """The CMU subjects to hold out: the default :data:`CMU_HELD_OUT_SUBJECTS` for BVH, none for AMASS (whose
    files carry no subject numbers: holding some out there is an error)."""
    if held_out_subjects is None:
        return CMU_HELD_OUT_SUBJECTS if kind == "bvh" else ()
    if kind != "bvh" and held_out_subjects:
        raise PriorTrainingError("held-out subjects are CMU subject numbers of BVH clips; AMASS files have none "
                                 "(leave the files of those subjects out of the list instead)")
    return tuple(sorted(set(held_out_subjects)))


def shown_folder(path: Path) -> str:
    """A folder as metadata names it: relative to the repository where it is beside it (``../shared/mocap/cmu``),
    else absolute; the same wherever the command ran. Beside it as given (``..`` folded, links not followed: a
    checkout whose ../shared is a link to another disk still names ``../shared``), or once links are followed."""
    for candidate in (Path(os.path.abspath(path)), path.resolve()):
        if candidate.is_relative_to(REPO_ROOT.parent):
            return os.path.relpath(candidate, REPO_ROOT)
    return str(path.resolve())


def _credits_above(folder: Path) -> Path | None:
    """The nearest CREDITS.md in ``folder`` (a resolved path) or above it; None if there is none."""
    return next((d / "CREDITS.md" for d in (folder, *folder.parents) if (d / "CREDITS.md").is_file()), None)


def _mentions(path: Path, mark: str) -> bool:
    try:
        return mark in path.read_text(errors="replace")
    except OSError:
        return False


def _clips(n: int) -> str:
    return f"{n} BVH clip{'s' * (n != 1)}"


def bvh_source(data: PoseSet, used_clips: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``source`` of a prior trained on a BVH folder's ``used_clips``, labelled by what was read; CMU's
    acknowledgment and terms (and Hahne's credit for his conversions) only where the clips are CMU's.

    A clip is CMU's when the nearest CREDITS.md above its real path (symlinks followed) names CMU's database
    (:data:`CMU_MARK`), as ../shared/mocap/cmu's does: a copy of that folder, or a folder of links into it, is
    recognised; clips of one's own are labelled by their folder and count only."""
    folder = data.folder
    assert folder is not None, "a BVH PoseSet records its folder"
    found = {c["file"]: _credits_above((folder / c["file"]).resolve().parent) for c in used_clips}
    cmu_credits = {f for f in set(found.values()) if f is not None and _mentions(f, CMU_MARK)}
    cmu = [name for name, f in found.items() if f in cmu_credits]
    total, held = len(data.clips), any(c.get("held_out") for c in data.clips)
    less_held = " less the clips of the held-out subjects" if held else ""
    shown = shown_folder(folder)
    if not cmu:
        return {"source": f"{_clips(len(used_clips))} of {shown} ({total} in the folder{less_held}); not CMU's "
                          f"database as far as fitloop can tell (no CREDITS.md naming {CMU_MARK} above them): their "
                          f"origin and terms are not recorded"}
    if len(cmu) == len(used_clips) and _credits_above(folder.resolve()) in cmu_credits:   # CMU's own folder
        tables = " and CLIPS.tsv" if (folder / "CLIPS.tsv").is_file() else ""
        source = (f"CMU Graphics Lab Motion Capture Database, {total}-clip BVH subset ({shown}, see its "
                  f"CREDITS.md{tables}){less_held}; BVH files and converted poses are not redistributed")
    else:
        others = len(used_clips) - len(cmu)
        source = (f"{_clips(len(used_clips))} of {shown}: {len(cmu)} of the CMU Graphics Lab Motion "
                  f"Capture Database (see {', '.join(sorted(shown_folder(f) for f in cmu_credits))})"
                  + (f", {others} of an origin not recorded" if others else "")
                  + "; BVH files and converted poses are not redistributed")
    meta = {"source": source, "acknowledgment": CMU_ACKNOWLEDGMENT}
    if all(_mentions(f, HAHNE_MARK) for f in cmu_credits):
        meta["bvh_conversion_credit"] = CMU_BVH_CREDIT
    return {**meta, "license": CMU_LICENSE}


def provenance(tp: TrainingPoses, kind: str) -> dict[str, Any]:
    """What a prior trained on ``tp`` records about its data: source, rest pose, clips and subjects used and held
    out, frames read, rejected and used, walking share, categories (the metadata every fitloop prior carries)."""
    data, weights = tp.data, tp.weights[:len(tp.data.poses)]
    used_clips = [c for c in data.clips if "error" not in c and not c.get("held_out")]
    metadata: dict[str, Any] = {
        "kind": kind, "rest_pose": tp.rest_info,
        "clips": len(used_clips), "clip_errors": [c for c in data.clips if "error" in c],
        "clips_used": [c["file"] for c in used_clips],
        "frames_read": int(sum(c.get("frames", 0) for c in data.clips)),
        "frames_rejected_implausible": int(sum(c.get("rejected", 0) for c in data.clips)),
        "rotation_limits_deg": ROTATION_LIMITS_DEG if kind == "bvh" else None,
        "frames_used": len(data.poses), "samples_with_mirror": len(tp.poses),
        "walk_frames": int(data.walk.sum()), "walk_weight_factor": tp.walk_factor,
        "walk_share_after": float(weights[data.walk].sum() / weights.sum()),
    }
    if kind == "amass":
        metadata["source"] = [Path(c["file"]).name for c in data.clips]
        metadata["layouts"] = {Path(c["file"]).name: c["layout"] for c in data.clips}
    if kind == "bvh":
        cats: dict[str, int] = {}
        by_subject: dict[str, int] = {}
        for c in used_clips:
            cats[c["category"]] = cats.get(c["category"], 0) + c["used"]
            by_subject[str(c["subject"])] = by_subject.get(str(c["subject"]), 0) + c["used"]
        metadata.update({
            "subjects_used": sorted({c["subject"] for c in used_clips if c["subject"] is not None}),
            "subjects_unknown_clips": [c["file"] for c in used_clips if c["subject"] is None],
            "held_out_subjects": list(tp.config.held_out_subjects),
            "clips_held_out": [c["file"] for c in data.clips if c.get("held_out")],
            "frames_used_by_subject": dict(sorted(by_subject.items(), key=lambda kv: (len(kv[0]), kv[0]))),
            **bvh_source(data, used_clips),
            "frames_used_by_category": dict(sorted(cats.items())),
            "skeletons": {s: sum(1 for c in used_clips if c.get("skeleton") == s) for s in bvh.SKELETON_MAPS},
        })
    return metadata


def train_prior(sources: list[Path], out: Path, *, kind: str = "bvh", components: int = 8, seed: int = 0,
                model: Path | None = None, fps: float = 10.0, walk_share: float = 0.10, mirror: bool = True,
                cov_floor_deg: float = 5.0, held_out_subjects: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Train a pose prior from ``sources`` and write it to ``out`` (fitloop ``.npz``); return a report (dict).

    ``kind="bvh"``: ``sources`` is one folder of BVH clips; ``kind="amass"``: ``.npz`` files with ``poses``.
    ``model``: body-model ``.npz`` whose T-pose the BVH rotations are made relative to (default: the open model
    at fitting/data/open_body.npz if present, else an approximate standard T-pose; recorded either way).
    ``held_out_subjects``: CMU subjects whose BVH clips are not used (default :data:`CMU_HELD_OUT_SUBJECTS` for
    BVH; AMASS files have no CMU subject numbers, nothing is held out there).
    """
    if not MIN_COV_FLOOR_DEG <= cov_floor_deg <= 180.0:
        raise PriorTrainingError(f"the covariance floor must be from {MIN_COV_FLOOR_DEG:g} to 180 degrees, got "
                                 f"{cov_floor_deg:g}: {FLOOR_WHY}")
    config = TrainConfig(components=components, seed=seed, fps=fps, walk_share=walk_share, mirror=mirror,
                         cov_floor_deg=cov_floor_deg, held_out_subjects=resolve_held_out(kind, held_out_subjects))
    t0 = time.perf_counter()
    tp = training_poses(sources, kind=kind, config=config, model=model)
    t_load = time.perf_counter() - t0
    x, w = tp.poses, tp.weights
    if len(x) < 2 * config.components:
        raise PriorTrainingError(f"only {len(x)} poses for {config.components} components; "
                                 f"{more_poses(tp, 'more clips', 'fewer --components')}")

    mean = np.average(x, axis=0, weights=w)
    var = np.average((x - mean) ** 2, axis=0, weights=w)
    observed = var > 1e-10
    means_o, covars_o, mix_weights, em = fit_gmm(
        x[:, observed], w, config.components, seed=config.seed, reg_covar=math.radians(config.cov_floor_deg) ** 2,
        max_iter=config.max_iter, tol=config.tol, kmeans_iter=config.kmeans_iter)
    k, d = config.components, x.shape[1]
    means = np.zeros((k, d))
    means[:, observed] = means_o
    covars = np.zeros((k, d, d))
    idx = np.flatnonzero(observed)
    covars[:, idx[:, None], idx[None, :]] = covars_o
    unobserved = np.flatnonzero(~observed)
    covars[:, unobserved, unobserved] = math.radians(config.unobserved_std_deg) ** 2
    problem = covariance_problem(covars)
    if problem:   # poses far wider than rotations (AMASS files are not checked for plausibility), or a tiny floor
        raise PriorTrainingError(f"{problem}: SMPLify cannot fit with it; nothing written: raise --cov-floor-deg "
                                 f"(it was {config.cov_floor_deg:g}) or check that the poses are axis-angle radians")
    t_total = time.perf_counter() - t0

    unobserved_joints = sorted({SMPL_JOINT_NAMES[1 + i // 3] for i in unobserved},
                               key=SMPL_JOINT_NAMES.index)
    metadata: dict[str, Any] = {
        "what": "Gaussian-mixture pose prior over the SMPL body pose: 23 joints x axis-angle (radians), local "
                "rotations relative to the body model's T-pose (fitting/priors.py MaxMixturePrior)",
        "dims": d, "components": k, "config": asdict(config), **provenance(tp, kind),
        "unobserved_joints": unobserved_joints, "em": em,
    }
    save_gmm(GaussianMixture(means, covars, mix_weights, metadata), out)
    return {**{k_: v for k_, v in metadata.items() if k_ not in ("clip_errors",)},
            "clip_errors": clip_errors(tp), "out": str(out),
            "time_load_s": round(t_load, 2), "time_total_s": round(t_total, 2)}


def summarize(report: dict[str, Any]) -> str:
    """A few human-readable lines of a training report."""
    em = report["em"]
    held = (f"; {len(report['clips_held_out'])} of held-out subjects {report['held_out_subjects']} not read"
            if report.get("clips_held_out") else "")
    return (f"wrote {report['out']}: {report['components']} components over {report['dims']} dims\n"
            f"clips: {report['clips']} ({len(report['clip_errors'])} unreadable{held}); "
            f"frames read {report['frames_read']}, rejected as implausible {report['frames_rejected_implausible']}, "
            f"used {report['frames_used']} "
            f"({report['samples_with_mirror']} samples with mirroring)\n"
            f"walk frames {report['walk_frames']}, weight factor {report['walk_weight_factor']:.3f}, "
            f"share {report['walk_share_after']:.3f}\n"
            f"EM: {em['iterations']} iterations, converged={em['converged']}, mean log-likelihood "
            f"{em['mean_log_likelihood']:.2f}\n"
            f"rest pose: {json.dumps(report['rest_pose'])}\n"
            f"time: {report['time_load_s']} s loading, {report['time_total_s']} s total")
