"""How well the open model's shape space covers real skeletons: segment gaps, shape fits and 3D-joint floors.

Run ``python -m assets.shape_coverage [--model fitting/data/open_body.npz] [--cmu ../shared/mocap/cmu]
[--json OUT]``; it prints the tables of docs/open_model.md ("Real skeletons").

Real skeletons measured (never copied into the repository):

* **Human3.6M's published skeleton** (`H36M_BONES_MM`): the bone lengths of Human3.6M's angle representation
  as used by Jain et al.'s ``exp2xyz.m`` and Martinez et al.'s ``forward_kinematics.py``
  (una-dinosauria/human-motion-prediction, ``_some_variables``), one subject's skeleton. Its hips sit on the
  pelvis's horizontal line (a purely lateral offset), its shoulders at the thorax's height.
* **The CMU mocap subjects** in ``../shared/mocap/cmu/mb`` (Hahne's MotionBuilder-friendly BVH release, one
  skeleton per subject; the Daz release retargets every subject onto one Daz figure and says nothing about
  them). BVH offsets are in the ASF's units: CMU's FAQ (mocap.cs.cmu.edu/faqs.php) converts them to metres
  with ``(1.0 / 0.45) * 2.54 / 100`` (`CMU_UNIT_M`).

Like with like: the CMU joints are kinematic joint centres placed by the mocap solver, so they are compared with
the model's kinematic joints (``J_regressor``: hips, knees, ankles, balls of the feet, shoulders, elbows, wrists
via `assets.bvh.SKELETON_MAPS`); Human3.6M's joints with the model's ``h36m_regressor`` rows. Each mocap solver
places joints by its own conventions (Human3.6M's hips are 266 mm apart, CMU's 151–200 mm, anatomical
femoral-head centres ~185 mm), so a gap that every subject of one source shares is a *definition* offset, and
only the spread around it is body shape.

Three measurements:

1. `segment_table`: per segment (`SEGMENTS`), the model's mean-shape value and the 2.3–97.7% range over
   betas ~ N(0, I) (±2σ), next to the references'.
2. `fit_segments`: the smallest betas whose segments best match a reference's (Gauss–Newton, least squares in
   mm) over the segments that source defines like the model (`H36M_FIT_SEGMENTS`, `CMU_FIT_SEGMENTS`), with the
   residual and the betas' norm: how far out in the shape space the skeleton lies (for betas ~ N(0, I) in 10
   dimensions, |β| is 3.1 ± 0.7 and exceeds 4.8 in 1% of bodies).
3. `fit_clip`: the floors. A CMU subject's own clips (BVH forward kinematics, `cmu_clip_joints`) fitted with
   the model's kinematic joints (`FIT_JOINTS`), pose and translation per frame, with (a) the mean shape and
   (b) one free shape per subject; MPJPE and PA-MPJPE (mm) over the fitted joints.

Units: metres in arrays, millimetres in reports. Frames: SMPL's (Y up, the body faces +Z, its left is +X), which
both CMU releases share.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from assets.bvh import convert_clip, detect_skeleton, forward_kinematics, local_rotations, parse_bvh
from core.errors import FitloopError
from core.joints import H36M_JOINTS, SMPL_JOINT_INDEX, SMPL_JOINT_NAMES, SMPL_PARENTS
from core.metrics import pa_mpjpe

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "fitting" / "data" / "open_body.npz"
DEFAULT_CMU = REPO_ROOT.parent / "shared" / "mocap" / "cmu"
CMU_UNIT_M = 2.54 / 100.0 / 0.45  # CMU ASF/BVH length unit -> metres (CMU's FAQ)

# Human3.6M's skeleton (mm): pelvis -> hip lateral offset, thigh, shin, pelvis -> spine -> thorax, thorax -> shoulder
# lateral offset, upper arm, forearm (exp2xyz.m's offsets, symmetric to 0.01 mm).
H36M_BONES_MM = {"hip_offset": 132.95, "thigh": 442.89, "shin": 454.21, "spine": 233.38, "thorax": 257.08,
                 "neck": 121.13, "head": 115.00, "shoulder_offset": 151.03, "upper_arm": 278.88, "forearm": 251.73}

# Segments, by SMPL joint names: (a, b) is |a − b| averaged over both sides when a and b are left-side joints;
# "torso" is the distance between the mid-hips and the mid-shoulders.
SEGMENTS: dict[str, tuple[str, str] | None] = {
    "hip width": ("left_hip", "right_hip"), "shoulder width": ("left_shoulder", "right_shoulder"),
    "thigh": ("left_hip", "left_knee"), "shin": ("left_knee", "left_ankle"),
    "upper arm": ("left_shoulder", "left_elbow"), "forearm": ("left_elbow", "left_wrist"), "torso": None,
}
# The segments each source defines like the model does, so that a shape fit on them measures body shape. Left out:
# Human3.6M's hip width (its hips sit on the pelvis's horizontal line, 266 mm apart: wider than any hip-joint
# centres, e.g. CMU's 151–200 mm); CMU's forearm (Hahne's BVH collapses CMU's wrist bone, so its wrist joint is the
# start of that bone: 139–204 mm, shorter than adult forearms, ANSUR II radiale–stylion 268 ± 15 mm in men) and its
# torso (CMU's hips hang 10 cm below the root and its shoulders sit low: 367–414 mm, against Human3.6M's 490).
H36M_FIT_SEGMENTS: tuple[str, ...] = ("shoulder width", "thigh", "shin", "upper arm", "forearm", "torso")
CMU_FIT_SEGMENTS: tuple[str, ...] = ("hip width", "shoulder width", "thigh", "shin", "upper arm")
# The kinematic joints a CMU clip is fitted on: the limb joints, whose positions mean the same thing on a mocap
# skeleton and on the model (the torso and head joints are placed differently by each: see assets/bvh.py).
FIT_JOINTS: tuple[str, ...] = tuple(f"{side}_{part}" for side in ("left", "right")
                                    for part in ("hip", "knee", "ankle", "foot", "shoulder", "elbow", "wrist"))
# The model's Human3.6M rows standing for the SMPL names of `SEGMENTS`.
H36M_AS_SMPL = {f"{side}_{part}": f"{side.title()} {part.title()}" for side in ("left", "right")
                for part in ("hip", "knee", "ankle", "shoulder", "elbow", "wrist")}


class CoverageError(FitloopError):
    """A model file or mocap folder this measurement cannot read."""


# --- Segments ------------------------------------------------------------------------------------------------
def segment_lengths(joints: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Segment lengths (`SEGMENTS`) from joint positions ``joints[name]`` (..., 3), in the joints' units."""
    def length(a: str, b: str) -> np.ndarray:
        return np.linalg.norm(np.asarray(joints[a]) - np.asarray(joints[b]), axis=-1)

    out = {}
    for name, pair in SEGMENTS.items():
        if pair is None:
            mid = {k: 0.5 * (np.asarray(joints[f"left_{k}"]) + np.asarray(joints[f"right_{k}"]))
                   for k in ("hip", "shoulder")}
            out[name] = np.linalg.norm(mid["shoulder"] - mid["hip"], axis=-1)
        elif pair[0].startswith("left_") and pair[1].startswith("left_"):
            mirror = [p.replace("left_", "right_") for p in pair]
            out[name] = 0.5 * (length(*pair) + length(*mirror))
        else:
            out[name] = length(*pair)
    return out


def h36m_reference_joints() -> dict[str, np.ndarray]:
    """Human3.6M's published skeleton at rest (`H36M_BONES_MM`), metres, SMPL frame, by SMPL joint name."""
    b = {k: v / 1000.0 for k, v in H36M_BONES_MM.items()}
    thorax = b["spine"] + b["thorax"]
    left = {"left_hip": [b["hip_offset"], 0.0, 0.0], "left_knee": [b["hip_offset"], -b["thigh"], 0.0],
            "left_ankle": [b["hip_offset"], -b["thigh"] - b["shin"], 0.0],
            "left_shoulder": [b["shoulder_offset"], thorax, 0.0],
            "left_elbow": [b["shoulder_offset"] + b["upper_arm"], thorax, 0.0],
            "left_wrist": [b["shoulder_offset"] + b["upper_arm"] + b["forearm"], thorax, 0.0]}
    joints = {k: np.asarray(v) for k, v in left.items()}
    joints.update({k.replace("left_", "right_"): v * np.array([-1.0, 1.0, 1.0]) for k, v in joints.items()})
    return joints


# --- CMU skeletons and clips ---------------------------------------------------------------------------------
def cmu_clips(cmu_dir: Path) -> dict[str, list[Path]]:
    """Subject -> its clips in the MotionBuilder release (``mb/``), from ``CLIPS.tsv``; CoverageError if absent."""
    index = Path(cmu_dir) / "CLIPS.tsv"
    if not index.is_file():
        raise CoverageError(f"{index}: no CMU clip index; pass --cmu with the folder holding CLIPS.tsv and mb/")
    clips: dict[str, list[Path]] = {}
    with open(index, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["file"].startswith("mb/"):
                clips.setdefault(row["subject"], []).append(Path(cmu_dir) / row["file"])
    return clips


def cmu_rest_joints(path: Path) -> dict[str, np.ndarray]:
    """A CMU BVH's reference-pose joints (frame 0, Hahne's T-pose) by SMPL name, metres (`SkeletonMap.points`)."""
    clip = parse_bvh(path)
    smap = detect_skeleton(clip.skeleton)
    local, root = local_rotations(clip)
    _, pos = forward_kinematics(clip.skeleton, local[:1], root[:1])
    return {smpl: pos[0, clip.skeleton.index(bvh)] * CMU_UNIT_M for smpl, bvh in smap.points.items()}


def cmu_clip_joints(paths: list[Path], frames: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """``frames`` evenly spaced motion frames (not the T-pose frame 0) over a subject's clips: the BVH joints
    standing for SMPL's (F, 24, 3) metres (NaN where none does), and per clip the frames taken (indices)."""
    moves = []
    for path in paths:
        clip = parse_bvh(path)
        smap = detect_skeleton(clip.skeleton)
        local, root = local_rotations(clip)
        _, pos = forward_kinematics(clip.skeleton, local[1:], root[1:])
        points = np.full((len(pos), len(SMPL_JOINT_NAMES), 3), np.nan)
        for smpl, bvh in smap.points.items():
            points[:, SMPL_JOINT_INDEX[smpl]] = pos[:, clip.skeleton.index(bvh)] * CMU_UNIT_M
        moves.append((clip, points))
    total = sum(len(p) for _, p in moves)
    take = np.unique(np.linspace(0, total - 1, frames).round().astype(int))
    starts = np.cumsum([0] + [len(p) for _, p in moves])
    joints, picked = [], []
    for (clip, points), start in zip(moves, starts):
        mine = take[(take >= start) & (take < start + len(points))] - start
        joints.append(points[mine])
        picked.append(mine)
    return np.concatenate(joints), picked


# --- The model's joints as functions of the betas ------------------------------------------------------------
@dataclass(frozen=True)
class LinearJoints:
    """Rest joints linear in the betas: ``joints(β) = mean + dirs @ β`` (metres; mean (J, 3), dirs (J, 3, K))."""

    names: tuple[str, ...]
    mean: np.ndarray
    dirs: np.ndarray

    def at(self, betas: np.ndarray) -> dict[str, np.ndarray]:
        """Joint name -> position (..., 3) for betas (..., K)."""
        positions = self.mean + np.einsum("jdk,...k->...jd", self.dirs, np.asarray(betas, dtype=np.float64))
        return {n: positions[..., i, :] for i, n in enumerate(self.names)}


def load_model(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an open-model file (float64 where float); CoverageError naming the file if it is unusable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise CoverageError(f"{path}: cannot read the model file ({err}); build it with `fitloop model build-open`") \
            from None
    missing = {"v_template", "shapedirs", "J_regressor", "h36m_regressor"} - set(arrays)
    if missing:
        raise CoverageError(f"{path}: not an open-model file (no {', '.join(sorted(missing))})")
    return {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in arrays.items()}


def kinematic_joints(arrays: dict[str, np.ndarray]) -> LinearJoints:
    """The model's 24 kinematic rest joints (``J_regressor`` on the shaped template)."""
    r = arrays["J_regressor"]
    return LinearJoints(SMPL_JOINT_NAMES, r @ arrays["v_template"], np.einsum("jv,vdk->jdk", r, arrays["shapedirs"]))


def h36m_joints(arrays: dict[str, np.ndarray]) -> LinearJoints:
    """The model's Human3.6M limb joints on the rest body (``h36m_regressor``), under SMPL names."""
    rows = arrays["h36m_regressor"][[H36M_JOINTS.index(n) for n in H36M_AS_SMPL.values()]]
    return LinearJoints(tuple(H36M_AS_SMPL), rows @ arrays["v_template"],
                        np.einsum("jv,vdk->jdk", rows, arrays["shapedirs"]))


def segment_table(joints: LinearJoints, samples: int = 20000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per segment (mm): the mean shape's value and the 2.3/97.7 percentiles (±2σ) over betas ~ N(0, I)."""
    betas = np.random.default_rng(seed).standard_normal((samples, joints.dirs.shape[-1]))
    mean, spread = segment_lengths(joints.at(np.zeros(joints.dirs.shape[-1]))), segment_lengths(joints.at(betas))
    return {k: {"mean": 1000 * float(mean[k]), "lo": 1000 * float(np.percentile(spread[k], 2.275)),
                "hi": 1000 * float(np.percentile(spread[k], 97.725))} for k in SEGMENTS}


def fit_segments(joints: LinearJoints, target_mm: dict[str, float], segments: tuple[str, ...] | None = None,
                 iterations: int = 30, ridge: float = 1e-4) -> dict:
    """Betas whose ``segments`` (default: all of ``target_mm``) best match ``target_mm`` (least squares in mm;
    Gauss–Newton with a ``ridge`` of ridge·‖β‖², small enough only to pick the smallest betas among equally good
    ones: with fewer segments than betas, the smallest betas that fit).

    Returns betas (K,), the fitted segments, the mean shape's and the fit's residual for every segment of
    ``target_mm`` (mm, model − target), their RMS over the fitted segments, the betas' norm and largest |β_k|.
    """
    names = list(target_mm)
    fitted = list(segments or names)
    unknown = sorted(set(fitted) - set(names))
    if unknown:
        raise CoverageError(f"fit_segments: no target for segment(s) {', '.join(unknown)}")
    target = np.array([target_mm[n] for n in names])
    use = np.array([n in fitted for n in names])
    k = joints.dirs.shape[-1]

    def residual(betas: np.ndarray) -> np.ndarray:
        seg = segment_lengths(joints.at(betas))
        return np.array([1000 * seg[n] for n in names]) - target

    betas = np.zeros(k)
    for _ in range(iterations):
        r = residual(betas)[use]
        jac = np.stack([(residual(betas + 1e-4 * e)[use] - r) / 1e-4 for e in np.eye(k)], axis=1)
        betas = betas - np.linalg.solve(jac.T @ jac + ridge * np.eye(k), jac.T @ r + ridge * betas)
    r0, r1 = residual(np.zeros(k)), residual(betas)
    return {"betas": betas, "segments": fitted,
            "mean_residual_mm": dict(zip(names, r0)), "fit_residual_mm": dict(zip(names, r1)),
            "mean_rms_mm": float(np.sqrt(np.mean(r0[use] ** 2))), "fit_rms_mm": float(np.sqrt(np.mean(r1[use] ** 2))),
            "betas_norm": float(np.linalg.norm(betas)), "betas_max_abs": float(np.abs(betas).max())}


# --- Fitting posed joints ------------------------------------------------------------------------------------
def posed_joints(rest: torch.Tensor, pose: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
    """Forward kinematics of SMPL's tree: rest joints (B, 24, 3), axis-angle pose (B, 72), translation (B, 3) ->
    posed joints (B, 24, 3), as smplx's ``lbs`` places them."""
    from smplx.lbs import batch_rigid_transform, batch_rodrigues

    rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(len(pose), -1, 3, 3)
    posed, _ = batch_rigid_transform(rot, rest, torch.as_tensor(SMPL_PARENTS))
    return posed + transl[:, None]


def fit_clip(joints: LinearJoints, targets: np.ndarray, init_pose: np.ndarray, free_shape: bool,
             betas: np.ndarray | None = None, iterations: int = 300) -> dict:
    """Fit pose and translation per frame (and, if ``free_shape``, one set of betas for all frames) so that the
    model's kinematic `FIT_JOINTS` meet ``targets`` (F, 24, 3) metres, by L-BFGS on the squared distances.

    init_pose (F, 72) axis-angle; betas (K,) the start (default zeros; held fixed unless free_shape). Returns
    the pose (F, 72), translation (F, 3), betas (K,), and per frame the MPJPE and PA-MPJPE (mm) over FIT_JOINTS.
    """
    idx = [SMPL_JOINT_INDEX[n] for n in FIT_JOINTS]
    target = torch.as_tensor(targets[:, idx], dtype=torch.float64)
    if not torch.isfinite(target).all():
        raise CoverageError("fit_clip: the targets lack some of the fitted joints")
    mean = torch.as_tensor(joints.mean, dtype=torch.float64)
    dirs = torch.as_tensor(joints.dirs, dtype=torch.float64)
    start = np.zeros(dirs.shape[-1]) if betas is None else betas
    b = torch.tensor(start, dtype=torch.float64, requires_grad=free_shape)
    pose = torch.tensor(init_pose, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        rest = (mean + dirs @ b).expand(len(pose), -1, -1)
        offset = (target.mean(1) - posed_joints(rest, pose, torch.zeros(len(pose), 3, dtype=torch.float64))[:, idx].mean(1))
    transl = offset.clone().requires_grad_(True)
    params = [pose, transl] + ([b] if free_shape else [])
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def model_joints() -> torch.Tensor:
        rest = (mean + dirs @ b).expand(len(pose), -1, -1)
        return posed_joints(rest, pose, transl)[:, idx]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (model_joints() - target).square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = model_joints()
        per_frame = 1000 * (pred - target).norm(dim=-1).mean(-1)
        pa = 1000 * pa_mpjpe(pred, target)
        per_joint = 1000 * (pred - target).norm(dim=-1).mean(0)
    return {"pose": pose.detach().numpy(), "transl": transl.detach().numpy(), "betas": b.detach().numpy(),
            "mpjpe_mm": per_frame.numpy(), "pa_mpjpe_mm": pa.numpy(),
            "per_joint_mm": dict(zip(FIT_JOINTS, per_joint.numpy().tolist()))}


def cmu_floors(arrays: dict[str, np.ndarray], clips: dict[str, list[Path]], frames: int = 48) -> dict[str, dict]:
    """Per CMU subject: the floors of fitting its own clips with the mean shape and with a free shape (see
    `fit_clip`), MPJPE/PA-MPJPE means (mm), the free betas' norm and largest |β_k|, the worst joints."""
    joints = kinematic_joints(arrays)
    rest = joints.mean
    out = {}
    for subject, paths in sorted(clips.items(), key=lambda kv: int(kv[0])):
        targets, picked = cmu_clip_joints(paths, frames)
        init = np.concatenate([convert_clip(parse_bvh(p), rest).poses[mine] for p, mine in zip(paths, picked)])
        mean_fit = fit_clip(joints, targets, init.astype(np.float64), free_shape=False)
        free_fit = fit_clip(joints, targets, mean_fit["pose"], free_shape=True)
        out[subject] = {
            "frames": int(len(targets)), "clips": len(paths),
            "mean_shape": {"mpjpe_mm": float(mean_fit["mpjpe_mm"].mean()),
                           "pa_mpjpe_mm": float(mean_fit["pa_mpjpe_mm"].mean()),
                           "per_joint_mm": mean_fit["per_joint_mm"]},
            "free_shape": {"mpjpe_mm": float(free_fit["mpjpe_mm"].mean()),
                           "pa_mpjpe_mm": float(free_fit["pa_mpjpe_mm"].mean()),
                           "per_joint_mm": free_fit["per_joint_mm"],
                           "betas": free_fit["betas"].tolist(),
                           "betas_norm": float(np.linalg.norm(free_fit["betas"])),
                           "betas_max_abs": float(np.abs(free_fit["betas"]).max())},
        }
    return out


# --- The report ------------------------------------------------------------------------------------------------
def measure(model_path: Path, cmu_dir: Path | None, frames: int = 48) -> dict:
    """Every measurement of this module on one model file; ``cmu_dir`` None skips the CMU parts."""
    arrays = load_model(model_path)
    kin, h36m = kinematic_joints(arrays), h36m_joints(arrays)
    h36m_ref = {k: 1000 * float(v) for k, v in segment_lengths(h36m_reference_joints()).items()}
    report = {"model": str(model_path),
              "segments": {"kinematic": segment_table(kin), "h36m": segment_table(h36m)},
              "h36m": {"reference_mm": h36m_ref, **_plain(fit_segments(h36m, h36m_ref, H36M_FIT_SEGMENTS))}}
    if cmu_dir is not None:
        clips = cmu_clips(cmu_dir)
        report["cmu_segments"] = {}
        for subject, paths in sorted(clips.items(), key=lambda kv: int(kv[0])):
            ref = {k: 1000 * float(v) for k, v in segment_lengths(cmu_rest_joints(paths[0])).items()}
            report["cmu_segments"][subject] = {"reference_mm": ref, **_plain(fit_segments(kin, ref, CMU_FIT_SEGMENTS))}
        report["cmu_floors"] = cmu_floors(arrays, clips, frames)
    return report


def _plain(fit: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in fit.items()}


def format_report(report: dict) -> str:
    """The report as text tables (mm)."""
    lines = [f"model: {report['model']}", "", "segment (mm)     kinematic mean [±2σ]     h36m rows mean [±2σ]"
             "   H36M published   CMU subjects (min–max)"]
    cmu = report.get("cmu_segments", {})
    for seg in SEGMENTS:
        k, h = report["segments"]["kinematic"][seg], report["segments"]["h36m"][seg]
        values = [c["reference_mm"][seg] for c in cmu.values()]
        span = f"{min(values):.0f}–{max(values):.0f}" if values else "-"
        lines.append(f"{seg:15s} {k['mean']:5.0f} [{k['lo']:4.0f}, {k['hi']:4.0f}]       {h['mean']:5.0f} "
                     f"[{h['lo']:4.0f}, {h['hi']:4.0f}]     {report['h36m']['reference_mm'][seg]:5.0f}"
                     f"            {span}")
    lines += ["", "segment fits: mean-shape RMS -> best RMS (mm) over the fitted segments, |β|, max |β_k|; residuals "
              "per segment (mm, model − reference, in SEGMENTS order; (unfitted) in brackets)"]
    for name, fit in [("H36M", report["h36m"])] + [(f"CMU {s}", f) for s, f in cmu.items()]:
        resid = " ".join(f"{v:+.0f}" if seg in fit["segments"] else f"({v:+.0f})"
                         for seg, v in fit["fit_residual_mm"].items())
        lines.append(f"{name:7s} {fit['mean_rms_mm']:5.1f} -> {fit['fit_rms_mm']:5.1f}  |β| {fit['betas_norm']:4.1f}"
                     f"  max {fit['betas_max_abs']:3.1f}   [{resid}]")
    floors = report.get("cmu_floors")
    if floors:
        lines += ["", "CMU floors (kinematic limb joints, mm): mean shape MPJPE / PA | free shape MPJPE / PA, |β|, "
                  "max |β_k|"]
        for subject, f in floors.items():
            m, fr = f["mean_shape"], f["free_shape"]
            lines.append(f"subject {subject:>2s} ({f['frames']} frames, {f['clips']} clips)  {m['mpjpe_mm']:5.1f} / "
                         f"{m['pa_mpjpe_mm']:5.1f} | {fr['mpjpe_mm']:5.1f} / {fr['pa_mpjpe_mm']:5.1f}, "
                         f"{fr['betas_norm']:4.1f}, {fr['betas_max_abs']:3.1f}")
        mean = lambda key, kind: np.mean([f[kind][key] for f in floors.values()])  # noqa: E731
        lines.append(f"mean                                 {mean('mpjpe_mm', 'mean_shape'):5.1f} / "
                     f"{mean('pa_mpjpe_mm', 'mean_shape'):5.1f} | {mean('mpjpe_mm', 'free_shape'):5.1f} / "
                     f"{mean('pa_mpjpe_mm', 'free_shape'):5.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assets.shape_coverage", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="open-model .npz (default: %(default)s)")
    parser.add_argument("--cmu", type=Path, default=DEFAULT_CMU, help="CMU mocap folder with CLIPS.tsv and mb/")
    parser.add_argument("--no-cmu", action="store_true", help="only the Human3.6M and segment tables")
    parser.add_argument("--frames", type=int, default=48, help="frames per CMU subject for the floors")
    parser.add_argument("--json", type=Path, help="also write the full report here")
    args = parser.parse_args(argv)
    try:
        report = measure(args.model, None if args.no_cmu else args.cmu, args.frames)
    except FitloopError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
