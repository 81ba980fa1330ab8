"""Synthetic whole-body people and the errors of whole-body fits: the pieces of SMPLify-X's benchmark (fast against
reference on the same inputs), as reusable functions.

`synthetic_people(model, n, seed)`: people of an SMPL-X-layout model (`fitting.wholebody_model`) in a
`IMAGE_SIZE` px square image seen by SMPLify-X's camera (f = 5000 px, centre at the image's centre), each
* body pose drawn from the GMM prior over the 21 body joints (a component by its weight, then its Gaussian),
  facing the camera within ±`YAW` rad, betas N(0, 1);
* hands curled by random MANO poses: every finger joint flexed by U(0, `CURL`) rad about the axis that curls a
  finger lying along ±X towards the palm (−Y) (−z for the left hand, +z for the right), plus N(0, `HAND_NOISE`)
  on every value;
* jaw opened by U(0, `JAW_OPEN`) rad about x, expression N(0, 1), eyes 0;
* stood at the depth that makes it about `PERSON_HEIGHT_PX` tall, near the image centre;
* keypoints: the whole-body points SMPLify-X reads from OpenPose (BODY_25, both hands, the 51 face landmarks the
  model has), projected, with `noise_px` px Gaussian noise per coordinate and a `missing` share of them dropped
  (confidence 0); all other points confidence 0.

`fit_errors(model, fit, truth)`: body PA-MPJPE on the 14 LSP joints (mm), each hand's PA-MPJPE after moving it to
its wrist (mm; 21 points: wrist, finger joints, tips), and face landmark reprojection against the noise-free
projections (px). Deterministic for a seed and a count (a draw of k people is not the first k of a larger draw).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from core.camera import project
from core.joints import LSP_JOINTS, OPENPOSE_NAMES
from core.metrics import pa_mpjpe
from core.wholebody import FACE_LANDMARK_NAMES, LEFT_HAND_NAMES, RIGHT_HAND_NAMES, wholebody_indices
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


@dataclass
class People:
    """A batch of synthetic people: parameters (full_pose (B, 165), betas, expression, cam_t (B, 3)), their
    model-frame whole-body points (B, 161, 3) m, the noise-free projections (B, 161, 2) px and the keypoints
    (B, 161, 3) px + confidence; the camera (centre (B, 2), focal (B, 2) px)."""

    full_pose: Tensor
    betas: Tensor
    expression: Tensor
    cam_t: Tensor
    points: Tensor
    clean: Tensor
    keypoints: Tensor
    center: Tensor
    focal: Tensor


def synthetic_people(model: WholeBodyModel, n: int, seed: int = 0, noise_px: float = NOISE_PX,
                     missing: float = MISSING) -> People:
    dtype = model.rows.dtype
    gen = torch.Generator().manual_seed(seed)

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    prior = body_gmm_term(dtype=torch.float64).prior
    weights = prior.log_weights.exp()
    component = torch.multinomial(weights, n, replacement=True, generator=gen)
    chol = torch.linalg.cholesky(torch.linalg.inv(prior.precisions))
    body = prior.means[component] + (chol[component] @ normal(n, BODY_POSE_DIM)[..., None])[..., 0]
    full = torch.zeros(n, FULL_POSE_DIM, dtype=torch.float64)
    full[:, POSE_SLICES["body_pose"]] = body
    # facing the camera (π about x), turned by a yaw about the camera's vertical
    yaw = (2 * uniform(n) - 1) * YAW
    half = yaw / 2
    # R_y(yaw) R_x(π) as axis-angle: π about (cos(yaw/2), 0, -sin(yaw/2))
    full[:, 0] = math.pi * torch.cos(half)
    full[:, 2] = -math.pi * torch.sin(half)
    for side, sign in (("left_hand_pose", -1.0), ("right_hand_pose", 1.0)):
        part = POSE_SLICES[side]
        hand = HAND_NOISE * normal(n, 15, 3)
        hand[..., MANO_CURL_AXIS] += sign * CURL * uniform(n, 15)
        full[:, part] = hand.reshape(n, 45)
    full[:, POSE_SLICES["jaw_pose"].start] = JAW_OPEN * uniform(n)
    betas = normal(n, model.num_betas)
    expression = normal(n, model.num_expression)
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
    offset = 0.05 * IMAGE_SIZE * (2 * uniform(n, 2) - 1) * depth[:, None] / SMPLIFYX_FOCAL
    centre_of_body = points[:, :49].mean(1)
    cam_t = torch.cat([offset - centre_of_body[:, :2], depth[:, None] - centre_of_body[:, 2:]], 1)
    clean = project(points, cam_t, focal, center)
    given = torch.zeros(points.shape[1], dtype=torch.bool)
    given[wholebody_indices(GIVEN)] = True
    given &= torch.as_tensor(model.provided)
    conf = given[None].expand(n, -1).to(torch.float64).clone()
    conf[uniform(n, points.shape[1]) < missing] = 0.0
    noisy = clean + noise_px * normal(*clean.shape)
    keypoints = torch.cat([noisy * conf[..., None], conf[..., None]], -1)
    return People(*(on_model(t) for t in (full, betas, expression, cam_t, points, clean, keypoints, center, focal)))


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
    "speedup": ...}, the fast fits, the reference fits)."""
    from fitting.smplifyx import SMPLifyXConfig
    fast = fast or SMPLifyX(model)
    reference = reference or SMPLifyX(model, config=SMPLifyXConfig(mode="reference"))
    fit, seconds = timed_fit(fast, people, batch)
    out = {"fast": summary(fit_errors(fit, people), fit.objective, seconds, people.keypoints.shape[0])}
    k = reference_people
    sub = People(*(getattr(people, f)[:k] for f in People.__dataclass_fields__))
    picked = SMPLifyXResult(full_pose=fit.full_pose[:k], betas=fit.betas[:k], expression=fit.expression[:k],
                            cam_t=fit.cam_t[:k], points=fit.points[:k], objective=fit.objective[:k],
                            terms={n: v[:k] for n, v in fit.terms.items()})
    out["fast_on_reference_people"] = summary(fit_errors(picked, sub), picked.objective, seconds * k / len(fit.objective), k)
    ref, ref_seconds = timed_fit(reference, sub, 1)
    out["reference"] = summary(fit_errors(ref, sub), ref.objective, ref_seconds, k)
    out["speedup"] = {"fits_per_s": out["fast"]["fits_per_s"] / out["reference"]["fits_per_s"]}
    return out, fit, ref

