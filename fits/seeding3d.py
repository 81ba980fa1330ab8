"""Pseudo-ground-truth seed fits from 3D joints: the pieces of ``fitloop fits seed --mode 3d`` (`fits.seeding`
runs them; this is the role MoSh's fits play in SPIN, made here from the datasets' own 3D joints).

**Which samples.** Those whose shard sample carries ``joints_3d`` with at least three confident joints (Human3.6M's
17, metres in the sample's camera frame); the others are left out and counted (`fits.seeding.SeedResult`).

**One shape per subject.** Samples are grouped by subject: ``<dataset>/<extra["subject"]>`` (Human3.6M's S1, S5,
…), a sample without one is its own subject. Each subject's betas are fitted once, with `fitting.fit3d` sharing
them across up to ``shape_frames`` of the subject's samples spread evenly over all of them (`spread`); then every
sample's pose and translation are fitted in batches with those betas kept (`Fit3D`'s ``fixed_betas``), so a
subject keeps one shape across its whole sequence however many batches (or Dask tasks) it spans.

**Sequences** (the temporal term, ``Fit3DConfig.temporal_weight`` > 0): samples of one (dataset, subject, action,
camera) ordered by ``extra["frame"]``; within a batch each is linked to the one before it (batches hold whole
runs of a sequence where they can; a link across a batch boundary is left out).

**The row's camera** (`fits.schema.FRAMES`). The fit is made in the sample's camera frame, where its 3D joints
are, so its global orientation is that camera's and its translation is exact there:

* ``image``: ``cam_t`` is the fit's translation, unchanged; the row keeps the sample's intrinsics. (3D joints
  centred on the pelvis carry no translation: refused, with what to do.)
* ``crop``: SPIN's fit frame sees the person through another camera (focal 5000 px at the crop centre,
  `core.frames`), in which no translation reproduces the real camera's perspective exactly. ``cam_t`` is SPIN's
  least-squares translation of the fitted body's joints onto the sample's fit-frame keypoints
  (`core.camera.estimate_translation`), exactly what SPIN computes for its MoSh fits (``gt_cam_t``); pose and
  shape are the 3D fit's.

**Loss and quality record.** Each row is scored as every fit in the table is: SPIN's fitting loss
(`SMPLify.fitting_loss`, px²) and the quality record (`fitting.quality.fit_quality`, one candidate) on the sample's
fit-frame keypoints in the row's camera. So pseudo-ground-truth fits and SMPLify's compete by the
table's one improvement rule (SPIN scores its MoSh fits the same way before its own fits may replace them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import torch

from core.camera import estimate_translation
from core.errors import FitloopError
from core.frames import FIT_CENTER, FIT_FOCAL, keypoints_in_fit_frame
from core.joints import JOINT_INDEX
from fits.schema import FitProvenance, fits_batch
from fitting.fit3d import MIN_RIGID, Evidence, Fit3D
from fitting.quality import fit_quality
from fitting.smplify import SMPLify
from shards.sample import StoredSample

_PELVIS = JOINT_INDEX["Pelvis (MPII)"]


@dataclass(frozen=True)
class Fitter3D:
    """The 3D fit, SMPLify (only to score fits: SPIN's fitting loss), the rows' provenance and camera frame."""

    fit: Fit3D
    smplify: SMPLify
    provenance: FitProvenance
    frame: str


@dataclass(frozen=True)
class Sample3D:
    """What a 3D seed fit needs of one sample. subject: its subject's name (module docstring); sequence, order:
    its sequence's name and its frame number there; joints_3d (49, 4) m, camera frame; keypoints (49, 3) fit-frame
    px; focal (2,), center (2,): the row's camera in fit-frame px; intrinsics (4,) for image-frame rows, else
    None."""

    key: str
    subject: str
    sequence: str
    order: int
    joints_3d: np.ndarray
    keypoints: np.ndarray
    focal: np.ndarray
    center: np.ndarray
    intrinsics: np.ndarray | None


def sample_3d(sample: StoredSample, camera: tuple[np.ndarray, np.ndarray, np.ndarray | None],
              frame: str) -> Sample3D | None:
    """The sample as a `Sample3D` with ``camera`` (focal (2,), center (2,) fit-frame px, intrinsics (4,) or None:
    `fits.seeding.sample_camera`), or None when it has fewer than three confident 3D joints. FitloopError naming
    the sample when image-frame rows are asked of 3D joints centred on the pelvis."""
    joints = sample.joints_3d
    if joints is None or int((joints[:, 3] > 0).sum()) < MIN_RIGID:
        return None
    if frame == "image" and joints[_PELVIS, 3] > 0 and not joints[_PELVIS, 2] > 0:
        raise FitloopError(f"sample {sample.key!r}: its 3D joints are centred on the pelvis (depth "
                           f"{joints[_PELVIS, 2]:g} m), so they carry no camera translation; seed crop-frame fits "
                           f"(--frame crop) or convert the dataset without root centring")
    extra = sample.meta.get("extra") or {}
    dataset = sample.meta.get("dataset", sample.key.split("/")[0])
    subject = f"{dataset}/{extra['subject']}" if "subject" in extra else sample.key
    sequence = "/".join([subject] + [str(extra[k]) for k in ("action", "camera") if k in extra])
    focal, center, intrinsics = camera
    return Sample3D(key=sample.key, subject=subject, sequence=sequence if "subject" in extra else sample.key,
                    order=int(extra.get("frame", 0)), joints_3d=np.asarray(joints, np.float64),
                    keypoints=keypoints_in_fit_frame(sample.keypoints_crop, sample.meta["crop"]).astype(np.float64),
                    focal=np.asarray(focal, np.float64), center=np.asarray(center, np.float64),
                    intrinsics=intrinsics)


def spread(count: int, most: int) -> np.ndarray:
    """Indices of ``min(count, most)`` items spread evenly over ``count`` (first and last included)."""
    if count <= most:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, most)).astype(np.int64))


def in_sequence_order(samples: Iterable[Sample3D]) -> list[Sample3D]:
    """The samples sorted by subject, sequence and frame: batches cut from this list hold runs of sequences."""
    return sorted(samples, key=lambda s: (s.subject, s.sequence, s.order, s.key))


def subject_shapes(fitter: Fitter3D, samples: list[Sample3D], shape_frames: int) -> dict[str, np.ndarray]:
    """Each subject's betas (NB,), fitted with one shape across up to ``shape_frames`` of its samples spread over
    all of them (module docstring); every subject at once, one `Fit3D` call."""
    by_subject: dict[str, list[Sample3D]] = {}
    for s in in_sequence_order(samples):
        by_subject.setdefault(s.subject, []).append(s)
    names = sorted(by_subject)
    chosen = [(i, by_subject[name][j]) for i, name in enumerate(names)
              for j in spread(len(by_subject[name]), shape_frames)]
    if not chosen:
        return {}
    fit = fitter.fit
    joints = torch.as_tensor(np.stack([s.joints_3d for _, s in chosen]), dtype=fit.dtype, device=fit.device)
    subject = torch.as_tensor([i for i, _ in chosen], device=fit.device)
    result = fit(Evidence(joints_3d=joints, subject=subject))
    betas = result.subject_betas.cpu().numpy()
    return {name: betas[i] for i, name in enumerate(names)}


def fit_3d_batch(fitter: Fitter3D, samples: list[Sample3D], shapes: dict[str, np.ndarray]) -> pa.Table:
    """Fit the samples' poses and translations with their subjects' betas (``shapes``: `subject_shapes`) kept;
    the rows for the fits table (module docstring: the row's camera and loss), ``source`` ``"fit3d"``."""
    fit = fitter.fit
    dev, dt = fit.device, fit.dtype
    names = sorted({s.subject for s in samples})
    index = {name: i for i, name in enumerate(names)}
    joints = torch.as_tensor(np.stack([s.joints_3d for s in samples]), dtype=dt, device=dev)
    subject = torch.as_tensor([index[s.subject] for s in samples], device=dev)
    previous = torch.full((len(samples),), -1, dtype=torch.long, device=dev)
    for i in range(1, len(samples)):  # in sequence order: link each sample to the one before it
        if samples[i].sequence == samples[i - 1].sequence and samples[i].order > samples[i - 1].order:
            previous[i] = i - 1
    betas = torch.as_tensor(np.stack([shapes[name] for name in names]), dtype=dt, device=dev)
    result = fit(Evidence(joints_3d=joints, subject=subject, previous=previous), fixed_betas=betas)

    pose, betas_f = result.pose, result.betas
    keypoints = torch.as_tensor(np.stack([s.keypoints for s in samples]), dtype=dt, device=dev)
    focal = torch.as_tensor(np.stack([s.focal for s in samples]), dtype=dt, device=dev)
    center = torch.as_tensor(np.stack([s.center for s in samples]), dtype=dt, device=dev)
    canonical = fit.skeleton(pose, betas_f).points[:, :keypoints.shape[1]]          # (B, 49, 3) model frame
    if fitter.frame == "image":
        cam_t = result.transl
    else:  # SPIN's gt_cam_t: the model's own joints, least squares onto the fit-frame keypoints
        cam_t = estimate_translation(canonical, keypoints, FIT_FOCAL, FIT_CENTER)
    smplify_dtype = fitter.smplify.body.mixer.dtype
    reprojection = fitter.smplify.fitting_loss(*(t.to(smplify_dtype) for t in (pose, betas_f, cam_t, center,
                                                                              keypoints)),
                                               focal_length=focal.to(smplify_dtype))
    quality = fit_quality(canonical, cam_t, focal, center, keypoints)  # one candidate: the 3D fit
    intrinsics = None if fitter.frame == "crop" else np.stack([s.intrinsics for s in samples])

    def host(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().cpu().numpy()

    return fits_batch([s.key for s in samples], host(pose), host(betas_f), fitter.provenance, cam_t=host(cam_t),
                      reprojection_loss=host(reprojection), intrinsics=intrinsics,
                      pose_prior=host(result.pose_prior), angle_prior=host(result.angle_prior),
                      shape_prior=host(result.shape_prior[result.subject]), iterations=result.iterations,
                      quality=quality)
