"""Synthetic whole-body people and the errors of whole-body fits: the pieces of SMPLify-X's benchmark (fast against
reference on the same inputs), as reusable functions.

**Body poses** come from the pose sources of `fitloop bench smplify` (`bench.smplify_cases`), split by the same
fixed rules, so that the benchmark is not tuned on what it reports (`SOURCES`, `SPLITS`, `body_poses`):

* ``cmu``: CMU motion capture of subjects the shipped pose prior never saw (dev: `CMU_DEV_SUBJECTS`, test:
  `CMU_TEST_SUBJECTS`), converted to joint rotations relative to this model's T-pose (`assets.bvh`; SMPL's two
  hand joints, which SMPL-X does not have, placed at SMPL-X's middle-finger knuckles, `SMPL_HAND_STAND_INS`);
* ``lsp``: SPIN's fits of the LSP training images (dev: rows 0–499, test: 500–999);
* ``synthetic``: draws from the GMM prior the fits use (its marginal over the 21 body joints: a component by its
  weight, then its Gaussian): the prior's own distribution, the easy case; dev and test are different streams.

A SMPL pose (72 values: global orientation, 23 joints) becomes an SMPL-X body pose by its first 21 joints (values
3–66, the same joints in the same order; SMPL's hand joints 22–23 are dropped, SMPL-X's hands are MANO's). Its
global orientation keeps its tilt from upright (the swing off the world's vertical; bending, leaning) and loses
its heading; every person then faces the camera within ±`YAW` rad (hands and face must be seen).

`synthetic_people(model, n, seed, source=, split=)`: people of an SMPL-X-layout model (`fitting.wholebody_model`)
in a `IMAGE_SIZE` px square image seen by SMPLify-X's camera (f = 5000 px, centre at the image's centre), each
* body pose from the source, turned to face the camera as above, betas N(0, 1);
* hands curled by random MANO poses: every finger joint flexed by U(0, `CURL`) rad about the axis that curls a
  finger lying along ±X towards the palm (−Y) (−z for the left hand, +z for the right: mirror images, checked by
  tests/test_bench_smplifyx.py), plus N(0, `HAND_NOISE`) on every value;
* jaw opened by U(0, `JAW_OPEN`) rad about x, expression N(0, 1), eyes 0;
* stood at the depth that makes it about `PERSON_HEIGHT_PX` tall, near the image centre;
* keypoints: the whole-body points SMPLify-X reads from OpenPose (BODY_25, both hands, the 51 face landmarks the
  model has), projected, with `noise_px` px Gaussian noise per coordinate and a `missing` share of them dropped
  (confidence 0); all other points confidence 0.
Every person is drawn from its own random stream (seed, source, split, index): the first k people of a draw of
n > k are the people of a draw of k, and a person is the same in every run that draws it.
`bench_people` draws a split's people of several sources, interleaved (source by source, person by person), so
that the first k people of the benchmark (those the reference fits) cover every source.

`fit_errors(model, fit, truth)`: body PA-MPJPE on the 14 LSP joints (mm), each hand's PA-MPJPE after moving it to
its wrist (mm; 21 points: wrist, finger joints, tips), and face landmark reprojection against the noise-free
projections (px).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import Tensor

from bench.smplify_cases import (
    SPLITS,
    BenchCaseError,
    PosePool,
    available_sources,
    cmu_pool,
    draw_indices,
    lsp_pool,
    rng_for,
)
from core.camera import project
from core.joints import LSP_JOINTS, OPENPOSE_NAMES
from core.metrics import pa_mpjpe
from core.wholebody import (
    FACE_LANDMARK_NAMES,
    LEFT_HAND_NAMES,
    NUM_WHOLEBODY,
    RIGHT_HAND_NAMES,
    SMPLX_JOINT_NAMES,
    wholebody_indices,
)
from fitting.smplifyx import SMPLIFYX_FOCAL, SMPLifyX, SMPLifyXResult, body_gmm_term
from fitting.wholebody_model import BODY_POSE_DIM, FULL_POSE_DIM, POSE_SLICES, WholeBodyModel

IMAGE_SIZE = 1000            # px, square
PERSON_HEIGHT_PX = 800.0     # the body's rest height in the image, about
YAW = 0.5                    # rad, heading spread about the camera's vertical
CURL = 1.0                   # rad, largest flexion per finger joint
HAND_NOISE = 0.1             # rad, per hand-pose value
JAW_OPEN = 0.25              # rad
NOISE_PX = 5.0               # the must-show's keypoint noise, px per coordinate
MISSING = 0.1                # the must-show's share of missing keypoints
GIVEN = OPENPOSE_NAMES + LEFT_HAND_NAMES + RIGHT_HAND_NAMES + FACE_LANDMARK_NAMES  # what OpenPose gives SMPLify-X
MANO_CURL_AXIS = 2           # z: a finger along ±X curls towards −Y about it
SOURCES = ("cmu", "lsp", "synthetic")
SMPL_BODY_JOINTS = 21        # SMPL's joints 1-21 are SMPL-X's body joints (both: smplx joint_names.py order)
# SMPL's hand joints (22 left_hand, 23 right_hand) for the BVH conversion's rest skeleton: SMPL-X has none, its
# middle-finger knuckles stand in (only the wrists' rotations depend on them, through the forearm-to-hand bone).
SMPL_HAND_STAND_INS = ("left_middle1", "right_middle1")
_SOURCE_STREAM = {name: i for i, name in enumerate(SOURCES)}


@dataclass
class People:
    """A batch of synthetic people: parameters (full_pose (B, 165), betas, expression, cam_t (B, 3)), their
    model-frame whole-body points (B, 161, 3) m, the noise-free projections (B, 161, 2) px and the keypoints
    (B, 161, 3) px + confidence; the camera (centre (B, 2), focal (B, 2) px); where each body pose came from
    (``origin``: "source:record", B strings)."""

    full_pose: Tensor
    betas: Tensor
    expression: Tensor
    cam_t: Tensor
    points: Tensor
    clean: Tensor
    keypoints: Tensor
    center: Tensor
    focal: Tensor
    origin: tuple[str, ...] = ()

    def subset(self, index: Tensor | slice) -> People:
        """The people at ``index`` (a slice or a 1-D index tensor)."""
        picked = range(len(self.origin))[index] if isinstance(index, slice) else index.tolist()
        return People(*(getattr(self, f)[index] for f in _TENSOR_FIELDS),
                      origin=tuple(self.origin[i] for i in picked) if self.origin else ())


_TENSOR_FIELDS = ("full_pose", "betas", "expression", "cam_t", "points", "clean", "keypoints", "center", "focal")


@dataclass(frozen=True)
class BodyPoses:
    """Body poses of one source and split: body (N, 63) axis-angle radians (SMPL-X's 21 body joints), tilt (N, 3)
    axis-angle: the world-frame global orientation without its heading (Y up; 0 = upright, facing +Z), origin
    (N strings), and a json-able description of the source."""

    body: np.ndarray
    tilt: np.ndarray
    origin: list[str]
    about: dict[str, Any] = field(default_factory=dict)


def smpl_rest_joints(model: WholeBodyModel) -> np.ndarray:
    """The model's rest joints (24, 3) m in SMPL's joint order (`SMPL_HAND_STAND_INS` for SMPL's hand joints):
    the T-pose CMU's clips are converted against."""
    p = model.rows
    with torch.no_grad():
        joints = model.forward_full(torch.zeros(1, FULL_POSE_DIM, dtype=p.dtype, device=p.device),
                                    torch.zeros(1, model.num_betas, dtype=p.dtype, device=p.device),
                                    torch.zeros(1, model.num_expression, dtype=p.dtype, device=p.device)).joints[0]
    hands = [SMPLX_JOINT_NAMES.index(name) for name in SMPL_HAND_STAND_INS]
    return torch.cat([joints[:1 + SMPL_BODY_JOINTS], joints[hands]]).double().cpu().numpy()


def without_heading(orient: np.ndarray) -> np.ndarray:
    """World-frame global orientations (N, 3) axis-angle (Y up) turned about the vertical so that the body's
    forward (+Z) points along +Z in the ground plane: the tilt off upright stays, the heading goes."""
    rot = Rotation.from_rotvec(orient)
    forward = rot.apply(np.array([0.0, 0.0, 1.0]))
    heading = np.arctan2(forward[:, 0], forward[:, 2])
    return (Rotation.from_euler("y", -heading[:, None]) * rot).as_rotvec()


def body_poses(model: WholeBodyModel, source: str, split: str, n: int, seed: int,
               pool: PosePool | None = None) -> BodyPoses:
    """``n`` body poses of a source and split (module docstring); person i is the same for any n > i."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if source == "synthetic":
        prior = body_gmm_term(dtype=torch.float64).prior
        weights = prior.log_weights.exp()
        chol = torch.linalg.cholesky(torch.linalg.inv(prior.precisions))
        body = np.zeros((n, BODY_POSE_DIM))
        for i in range(n):
            gen = _person_generator(seed, source, split, i, "body")
            k = int(torch.multinomial(weights, 1, generator=gen))
            draw = torch.randn(BODY_POSE_DIM, generator=gen, dtype=torch.float64)
            body[i] = (prior.means[k] + chol[k] @ draw).numpy()
        return BodyPoses(body, np.zeros((n, 3)), [f"synthetic:gmm-sample:{split}:{i}" for i in range(n)],
                         {"what": "body poses drawn from the fits' GMM prior (its 21-body-joint marginal); in the "
                                  "prior's own distribution", "split_rule": "dev and test are different streams"})
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    if pool is None:
        pool = cmu_pool(split, smpl_rest_joints(model)) if source == "cmu" else lsp_pool(split)
    picked = draw_indices(len(pool.poses), n, rng_for(seed, source, split, "people"))
    pose = pool.poses[picked]
    return BodyPoses(pose[:, 3:3 + BODY_POSE_DIM].copy(), without_heading(pose[:, :3]),
                     [f"{source}:{pool.origin[i]}" for i in picked], {**pool.about, "pool_size": len(pool.poses)})


def _person_generator(seed: int, source: str, split: str, person: int, purpose: str) -> torch.Generator:
    """Person ``person``'s own random stream for one purpose ("body" or "scene")."""
    state = np.random.SeedSequence([seed, _SOURCE_STREAM[source], SPLITS.index(split), person,
                                    ("body", "scene").index(purpose)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def synthetic_people(model: WholeBodyModel, n: int, seed: int = 0, noise_px: float = NOISE_PX,
                     missing: float = MISSING, *, source: str = "synthetic", split: str = "test",
                     poses: BodyPoses | None = None) -> People:
    """``n`` people of one source and split (module docstring); ``poses``: that source's `body_poses` when the
    caller has them already."""
    dtype = model.rows.dtype
    poses = poses if poses is not None else body_poses(model, source, split, n, seed)
    full = torch.zeros(n, FULL_POSE_DIM, dtype=torch.float64)
    betas = torch.zeros(n, model.num_betas, dtype=torch.float64)
    expression = torch.zeros(n, model.num_expression, dtype=torch.float64)
    yaw, offset_u = torch.zeros(n, dtype=torch.float64), torch.zeros(n, 2, dtype=torch.float64)
    drop_u = torch.zeros(n, NUM_WHOLEBODY, dtype=torch.float64)
    noise = torch.zeros(n, NUM_WHOLEBODY, 2, dtype=torch.float64)
    for i in range(n):
        gen = _person_generator(seed, source, split, i, "scene")

        def uniform(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=gen, dtype=torch.float64)

        def normal(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=gen, dtype=torch.float64)

        yaw[i] = (2 * uniform(1) - 1) * YAW
        for side, sign in (("left_hand_pose", -1.0), ("right_hand_pose", 1.0)):
            hand = HAND_NOISE * normal(15, 3)
            hand[..., MANO_CURL_AXIS] += sign * CURL * uniform(15)
            full[i, POSE_SLICES[side]] = hand.reshape(45)
        full[i, POSE_SLICES["jaw_pose"].start] = JAW_OPEN * uniform(1)
        betas[i], expression[i] = normal(model.num_betas), normal(model.num_expression)
        offset_u[i], drop_u[i], noise[i] = uniform(2), uniform(NUM_WHOLEBODY), normal(NUM_WHOLEBODY, 2)
    full[:, POSE_SLICES["body_pose"]] = torch.as_tensor(poses.body, dtype=torch.float64)
    # facing the camera: R_y(yaw) R_x(π) (world Y up -> camera y down, facing it), after the source's tilt
    facing = Rotation.from_euler("y", yaw.numpy()[:, None]) * Rotation.from_euler("x", math.pi)
    full[:, :3] = torch.as_tensor((facing * Rotation.from_rotvec(poses.tilt)).as_rotvec())
    device = model.rows.device

    def on_model(t: Tensor) -> Tensor:
        return t.to(device=device, dtype=dtype)

    with torch.no_grad():  # drawn on the CPU in float64, posed where the model lives
        points = model.forward_full(on_model(full), on_model(betas), on_model(expression)).points.double().cpu()
        rest = model.forward_full(on_model(torch.zeros_like(full)), on_model(betas),
                                  on_model(expression)).points.double().cpu()
    height = (rest[..., 1].amax(1) - rest[..., 1].amin(1)).clamp_min(0.1)          # m
    focal = torch.full((n, 2), SMPLIFYX_FOCAL, dtype=torch.float64)
    center = torch.full((n, 2), IMAGE_SIZE / 2.0, dtype=torch.float64)
    depth = SMPLIFYX_FOCAL * height / PERSON_HEIGHT_PX
    offset = 0.05 * IMAGE_SIZE * (2 * offset_u - 1) * depth[:, None] / SMPLIFYX_FOCAL
    centre_of_body = points[:, :49].mean(1)
    cam_t = torch.cat([offset - centre_of_body[:, :2], depth[:, None] - centre_of_body[:, 2:]], 1)
    clean = project(points, cam_t, focal, center)
    given = torch.zeros(points.shape[1], dtype=torch.bool)
    given[wholebody_indices(GIVEN)] = True
    given &= torch.as_tensor(model.provided)
    conf = given[None].expand(n, -1).to(torch.float64).clone()
    conf[drop_u < missing] = 0.0
    noisy = clean + noise_px * noise
    keypoints = torch.cat([noisy * conf[..., None], conf[..., None]], -1)
    return People(*(on_model(t) for t in (full, betas, expression, cam_t, points, clean, keypoints, center, focal)),
                  origin=tuple(poses.origin))


def bench_people(model: WholeBodyModel, sources: tuple[str, ...], split: str, per_source: int,
                 seed: int = 0) -> tuple[People, dict[str, Any]]:
    """``per_source`` people of each source whose data is here, interleaved (person 0 of every source, then
    person 1, ...), and a json-able description: the sources used, those left out and why, each one's pool."""
    used, notes = available_sources(sources)
    if not used:
        raise BenchCaseError(f"none of the pose sources {list(sources)} is available: {notes}")
    parts, about = [], {}
    for source in used:
        poses = body_poses(model, source, split, per_source, seed)
        parts.append(synthetic_people(model, per_source, seed, source=source, split=split, poses=poses))
        about[source] = poses.about
    order = torch.arange(per_source * len(parts)).reshape(len(parts), per_source).T.reshape(-1)
    merged = People(*(torch.cat([getattr(p, f) for p in parts]) for f in _TENSOR_FIELDS),
                    origin=sum((p.origin for p in parts), ()))
    return merged.subset(order), {"split": split, "sources": list(used), "left_out": notes, "pools": about,
                                  "per_source": per_source}


def _hand_pa(pred: Tensor, target: Tensor) -> Tensor:
    """PA-MPJPE (B,) of 21-point hands after moving each to its wrist (point 0)."""
    return pa_mpjpe(pred - pred[:, :1], target - target[:, :1])


def fit_errors(fit: SMPLifyXResult, people: People) -> dict[str, Tensor]:
    """Per fit (B,) each: body PA-MPJPE mm (14 LSP joints), left/right hand PA-MPJPE mm (wrist-aligned), face
    landmark reprojection px (mean distance to the noise-free projections of the 51 landmarks)."""
    lsp = torch.as_tensor(wholebody_indices(LSP_JOINTS))
    left, right = (torch.as_tensor(wholebody_indices(names)) for names in (LEFT_HAND_NAMES, RIGHT_HAND_NAMES))
    face = torch.as_tensor(wholebody_indices(FACE_LANDMARK_NAMES))
    pred, true = fit.points.double().cpu(), people.points.double().cpu()
    projected = project(fit.points[:, face.to(fit.points.device)], fit.cam_t, people.focal, people.center).double().cpu()
    return {
        "body_pa_mpjpe_mm": 1000 * pa_mpjpe(pred[:, lsp], true[:, lsp]),
        "left_hand_pa_mpjpe_mm": 1000 * _hand_pa(pred[:, left], true[:, left]),
        "right_hand_pa_mpjpe_mm": 1000 * _hand_pa(pred[:, right], true[:, right]),
        "face_reprojection_px": (projected - people.clean.double().cpu()[:, face]).norm(dim=-1).mean(-1),
    }


def timed_fit(smplifyx: SMPLifyX, people: People, batch: int) -> tuple[SMPLifyXResult, float]:
    """Fit people in batches of `batch`; the fits (concatenated) and the wall seconds."""
    pieces = []
    start = time.perf_counter()
    for first in range(0, people.keypoints.shape[0], batch):
        part = slice(first, first + batch)
        pieces.append(smplifyx(people.keypoints[part], people.center[part], focal_length=people.focal[part]))
    seconds = time.perf_counter() - start
    fields = ("full_pose", "betas", "expression", "cam_t", "points", "objective")
    merged = {k: torch.cat([getattr(p, k) for p in pieces]) for k in fields}
    terms = {k: torch.cat([p.terms[k] for p in pieces]) for k in pieces[0].terms}
    extras = {k: torch.cat([p.extras[k] for p in pieces]) for k, v in pieces[0].extras.items()
              if isinstance(v, Tensor) and v.dim() > 0}
    return SMPLifyXResult(terms=terms, extras=extras, **merged), seconds


def summary(errors: dict[str, Tensor], objective: Tensor, seconds: float, count: int) -> dict[str, float]:
    """Means of the errors and the objective, and fits per second, as plain numbers."""
    out = {name: float(values.mean()) for name, values in errors.items()}
    out["objective"] = float(objective.double().mean())
    out["fits_per_s"] = count / seconds
    out["fits"] = count
    return out


def compare(model: WholeBodyModel, people: People, reference_people: int, batch: int = 64,
            fast: SMPLifyX | None = None, reference: SMPLifyX | None = None
            ) -> tuple[dict[str, dict[str, float]], SMPLifyXResult, SMPLifyXResult]:
    """Fast (at `batch`) on all people and the reference on the first `reference_people`, with the fast
    mode's figures on those same people too: ({"fast": ..., "fast_on_reference_people": ..., "reference": ...,
    "speedup": ..., "fast_wins": on how many of the reference's people the fast fit's error (each) and objective
    are at most the reference's}, the fast fits, the reference fits)."""
    from fitting.smplifyx import SMPLifyXConfig
    fast = fast or SMPLifyX(model)
    reference = reference or SMPLifyX(model, config=SMPLifyXConfig(mode="reference"))
    fit, seconds = timed_fit(fast, people, batch)
    out = {"fast": summary(fit_errors(fit, people), fit.objective, seconds, people.keypoints.shape[0])}
    k = reference_people
    sub = people.subset(slice(0, k))
    picked = SMPLifyXResult(full_pose=fit.full_pose[:k], betas=fit.betas[:k], expression=fit.expression[:k],
                            cam_t=fit.cam_t[:k], points=fit.points[:k], objective=fit.objective[:k],
                            terms={n: v[:k] for n, v in fit.terms.items()})
    fast_errors = fit_errors(picked, sub)
    out["fast_on_reference_people"] = summary(fast_errors, picked.objective, seconds * k / len(fit.objective), k)
    ref, ref_seconds = timed_fit(reference, sub, 1)
    ref_errors = fit_errors(ref, sub)
    out["reference"] = summary(ref_errors, ref.objective, ref_seconds, k)
    out["speedup"] = {"fits_per_s": out["fast"]["fits_per_s"] / out["reference"]["fits_per_s"]}
    wins = {name: int((fast_errors[name] <= ref_errors[name]).sum()) for name in fast_errors}
    wins["objective"] = int((picked.objective.double() <= ref.objective.double()).sum())
    out["fast_wins"] = {**wins, "of": k}
    return out, fit, ref

