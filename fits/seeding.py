"""Seed fits: fit samples of shard sets from SPIN's mean pose with SMPLify and append the improvements to a table.

The one seeding path: the ``seed_fits`` flow, ``fitloop fits seed`` and the trainer (which seeds only the keys its
body model has no fit for: ``missing_only``) all call `seed_fits`.

SPIN starts training from static fits made offline; fitloop makes them from the shards themselves. Each sample's
stored-crop keypoints go into SPIN's fit frame (`core.frames.keypoints_in_fit_frame`), SMPLify starts from the
mean pose facing the camera (global orientation π about x, body pose 0, betas 0) with the translation estimated
from the torso (`fitting.smplify.mean_pose_start`), and the fits are appended with ``source="seed"``, in one
commit per call: one seed run is one table version.

**The frame** (`SeedConfig.frame`, ``fitloop fits seed --frame``): ``crop`` (default) fits with SPIN's camera,
focal 5000 px at the crop centre; ``image`` fits with each sample's own camera, its original image's intrinsics
(`shards.sample.StoredSample.intrinsics`: the dataset's, EXIF, or the guess) written in the same fit-frame px
(`core.frames.image_camera_in_fit_frame`, exact). Same keypoints, same pixels, same objective and weights: only the
camera differs, so losses of both frames compare and SPIN's threshold holds for both. (Fitting in raw image px
instead would weigh the keypoints against the priors by how many px the person covers; CLIFF too measures its
full-image reprojection in crop coordinates.) Image-frame rows keep their intrinsics; the improvement rule and every
best view are per frame (`fits.table`), so the two frames never replace each other's fits.

**Whole-body samples** (an SMPL-X-layout body model, `core.model_id.WHOLEBODY_FAMILIES`): a sample with whole-body
keypoints (`StoredSample.wholebody_crop`) is fitted by SMPLify-X's fast mode from its mean start instead
(`fit_wholebody`; `wholebody_config`: the fit frame's camera, as the trainer runs it), each sample by one of the two
fitters; its row is a whole-body row (`fits.schema.WholeBodyFit`), scored by SMPLify's loss on its 49 body joints as
every fit (the table's rule), with SMPLify-X's own ``fit_config_hash`` (`wholebody_config_hash`).

**The mode** (`SeedConfig.mode`, ``fitloop fits seed --mode``): ``2d`` (default) is the SMPLify seeding above;
``3d`` makes pseudo-ground-truth fits from the samples' 3D joints (`fits.seeding3d`: one shape per subject, rows
with ``source="fit3d"``, scored by the same fitting loss), through the same table rule and in one commit too.

**Samples that cannot make a fit** (`unfittable`; mode "2d"): keypoints that show fewer than
`core.joints.MIN_FIT_JOINTS` joints, or a keypoint with confidence > 0 whose position is not finite, are left out
and named (`SeedResult.unfittable`), never fitted: with nothing to fit, SMPLify returns its start at loss 0, which
the table would keep as a perfect fit. The conversion rejects such people by default (``too_few_joints``,
``nan_keypoints``); a shard set converted with a lower ``min_joints`` or written by other tools may hold them.

**The improvement rule** is the table's (`fits.table.BestLosses`, SPIN's strict ``new_loss < opt_loss``, with
losses within `fits.table.LOSS_TIE`, 1 % relative, taken as equal), among
the fits of the seeding body model only: a seed fit is appended when its key has no fit of that model, or when its
loss is lower than that model's best (any scored loss beats an unscored imported fit); a NaN loss never improves.
Fits of other body models play no part. So a second run over the same shards appends nothing worse, nor copies of
its fits refitted in other batches (whose losses move by up to ~2e-3 relative), and seeding a second body model
appends its fits whatever the first model's losses. ``missing_only`` fits only the keys without a fit of the model
(imported ones included), as the trainer does before it starts.

**The quality record** (`fitting.quality`, `fits.schema.QUALITY_COLUMNS`) of every seed fit is computed from the
joints SMPLify returns, projected with the camera it fitted with, against the same fit-frame keypoints: per-part
reprojection, facing; one candidate (SMPLify's pick).

**fit_config_hash** (`fit_config_hash`), on every seed row and on the trainer's loop rows: what determines a fit,
and nothing else. 16 hex digits of the SHA-256 of the canonical JSON (`fits.schema.config_hash`) of
``{"smplify": every field of SMPLifyConfig, "pose_prior": the content digest of the pose prior's mixture (means,
covars, weights: `fitting.digest`, so the same prior as .pkl or .npz gives the same hash), "body_model_id": the
body model's content id}``, plus ``"frame": "image"`` for image-frame fits (crop-frame hashes are those of
before frames existed). Run id, batch size, device, workers and file names are not in it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from core.camera import project
from core.errors import FitloopError
from core.frames import FIT_FOCAL, FIT_RES, fit_frame_camera, image_camera_in_fit_frame, keypoints_in_fit_frame
from core.joints import MIN_FIT_JOINTS, NUM_JOINTS, joints_shown
from core.killpoint import kill_point
from core.model_id import WHOLEBODY_FAMILIES
from core.wholebody import NUM_WHOLEBODY
from fits.schema import FRAMES, FitProvenance, WholeBodyFit, config_hash, diverged_rows, fits_batch, fits_from_smplify
from fits.seeding3d import Fitter3D, Sample3D, fit_3d_batch, in_sequence_order, sample_3d, subject_shapes
from fits.store import FitsStore, stale_fits, stale_fits_error
from fits.table import BestLosses, FitsTable
from fitting.body_model import BodyModel, load_body_model
from fitting.digest import content_digest
from fitting.fit3d import Fit3D, Fit3DConfig
from fitting.priors import DEFAULT_PRIOR, MaxMixturePrior, angle_prior, load_gmm, shape_prior
from fitting.quality import fit_quality, wholebody_part_reprojection
from fitting.smplify import SMPLify, SMPLifyConfig, mean_pose_start
from fitting.smplifyx import SMPLifyX, SMPLifyXConfig, body_gmm_term
from fitting.wholebody_model import POSE_SLICES, WholeBodyModel
from shards.lookup import iter_samples
from shards.reader import ShardInfo, iter_shard, list_shards
from shards.sample import SampleFormatError, StoredSample

MODES = ("2d", "3d")  # what seed fits are made from: keypoints (SMPLify) or 3D joints (fits.seeding3d)


@dataclass(frozen=True)
class SeedConfig:
    """How seed fits are made (``fit_config_hash`` of the rows: `fit_config_hash`, not this whole config).

    Attributes:
        body_model: ``"open"``, ``"open-small"`` or a path to a real SMPL-family file (`load_body_model`).
        joint_regressor_extra: SPIN's ``J_regressor_extra.npy`` for a real SMPL (it changes the joints, hence the
            body model's id).
        pose_prior: the max-mixture pose prior file (`fitting.priors.MaxMixturePrior.from_file`).
        smplify: SMPLify's settings (SPIN's weights; ``focal_length`` must be the fit frame's 5000 px).
        batch_size: samples fitted per SMPLify call (one Dask task each).
        run_id: the run every row names.
        device: where SMPLify runs ("cpu", "cuda", ...).
        frame: the camera to fit with (module docstring): "crop" (SPIN's, the default) or "image" (each sample's
            original image's intrinsics).
        mode: what the fits are made from (module docstring): "2d" (SMPLify on the keypoints, the default) or
            "3d" (pseudo-ground truth from the samples' 3D joints, `fits.seeding3d`).
        fit3d: the 3D fit's settings (mode "3d"; `fitting.fit3d.Fit3DConfig`).
        h36m_regressor: mode "3d" with a real SMPL-family file: SPIN's ``J_regressor_h36m.npy``, the points that
            stand for Human3.6M's joints (the open models carry their own; `load_body_model`). Its content is in
            the rows' ``fit_config_hash``.
        shape_frames: mode "3d": samples per subject its one shape is fitted on.
    """

    body_model: str = "open"
    joint_regressor_extra: str | None = None
    pose_prior: str = str(DEFAULT_PRIOR)
    smplify: SMPLifyConfig = field(default_factory=SMPLifyConfig)
    batch_size: int = 64
    run_id: str = "seed"
    device: str = "cpu"
    frame: str = "crop"
    mode: str = "2d"
    fit3d: Fit3DConfig = field(default_factory=Fit3DConfig)
    shape_frames: int = 64
    h36m_regressor: str | None = None

    def __post_init__(self) -> None:
        if self.frame not in FRAMES:
            raise FitloopError(f"the seed frame must be one of {', '.join(FRAMES)}, got {self.frame!r}")
        if self.mode not in MODES:
            raise FitloopError(f"the seed mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.shape_frames < 1:
            raise FitloopError(f"shape_frames must be >= 1, got {self.shape_frames}")
        if not self.run_id.strip():
            raise FitloopError("the run id must not be empty: every row names the run that made it (default: seed)")
        self.fit3d.validated()


@dataclass
class SeedResult:
    """What `seed_fits` did: samples fitted, rows appended (improvements), fits left out as diverged (a NaN or inf
    in their loss, pose, betas or cam_t: `fits.schema.diverged_rows`), samples skipped because their key has a
    fit of the body model (``missing_only``) or, in mode "3d", because they have no 3D joints (``without_3d``),
    samples left out because they cannot make a fit (``unfittable``: "key: why", `unfittable`), the versions
    committed, the mean loss (px²) of the fits made (diverged ones aside; None when none was made), and the body
    model and fit_config_hash of the rows. Every sample read is fitted, skipped, without_3d or unfittable."""

    fitted: int = 0
    appended: int = 0
    diverged: int = 0
    skipped: int = 0
    without_3d: int = 0
    unfittable: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    mean_loss: float | None = None
    body_model_id: str = ""
    fit_config_hash: str = ""

    @staticmethod
    def mean_loss_text(mean_loss: float | None) -> str:
        """``mean_loss`` (of a result, or of its dict) as the summaries print it."""
        return "n/a (every fit diverged)" if mean_loss is None else f"{mean_loss:.2f} px²"

    def check_fitted(self, shards: Any, table: Any) -> None:
        """FitloopError where nothing was fitted from ``shards`` (a seed run's inputs held nothing to fit), saying
        what the samples read were; nothing was written to ``table`` then."""
        if self.fitted:
            return
        why = [f"{n} {what}" for n, what in ((self.without_3d, "without 3D joints"),
                                              (len(self.unfittable), "that cannot make a fit"),
                                              (self.skipped, "with a fit already")) if n]
        raise FitloopError(f"{shards}: no sample fitted, nothing written to {table} ("
                           + (f"the samples read: {', '.join(why)}" if why else "the selection holds no sample") + ")")


@dataclass(frozen=True)
class Fitter:
    """A body model, SMPLify on it, and the provenance of the seed fits they make; for an SMPL-X-layout model also
    SMPLify-X on it (the whole-body samples' fitter) and the provenance of its fits."""

    body: BodyModel
    smplify: SMPLify
    provenance: FitProvenance
    smplifyx: SMPLifyX | None = None
    wholebody_provenance: FitProvenance | None = None


def prior_digest(pose_prior: str | Path) -> str:
    """The content digest of a pose prior's mixture (means, covars, weights), whatever file format holds it."""
    gmm = load_gmm(pose_prior)
    return content_digest([("means", gmm.means), ("covars", gmm.covars), ("weights", gmm.weights)])


def fit_config_hash(smplify: SMPLifyConfig, pose_prior: str | Path, body_model_id: str, frame: str = "crop",
                    fit3d: Fit3DConfig | None = None, shape_frames: int | None = None,
                    h36m_regressor: str | None = None) -> str:
    """The ``fit_config_hash`` of a fit made by SMPLify with ``smplify`` settings, the prior in ``pose_prior``, the
    body model ``body_model_id`` and the camera of ``frame`` (module docstring): 16 hex digits. A 3D seed fit
    (``fit3d`` given) adds its settings and ``shape_frames`` (SMPLify's settings then score it), and the content
    digest of a Human3.6M regressor given beside the model file (``h36m_regressor``)."""
    what = {"smplify": asdict(smplify), "pose_prior": prior_digest(pose_prior), "body_model_id": body_model_id}
    if fit3d is not None:
        what = {**what, "fit3d": asdict(fit3d), "shape_frames": shape_frames}
        if h36m_regressor is not None:
            what["h36m_regressor"] = h36m_regressor
    return config_hash(what if frame == "crop" else {**what, "frame": frame})


def wholebody_config(config: SeedConfig) -> SMPLifyXConfig:
    """SMPLify-X's settings for whole-body seed fits: its fast mode in SPIN's fit frame (the 224 px crop: data
    weight 1000/224, SMPLify's focal length), as the trainer runs it."""
    return SMPLifyXConfig(image_height=FIT_RES, focal_length=config.smplify.focal_length)


def wholebody_config_hash(config: SeedConfig, body_model_id: str) -> str:
    """The ``fit_config_hash`` of a whole-body seed fit: SMPLify-X's settings (`wholebody_config`), the pose
    prior's digest, the body model's id (and the frame, as `fit_config_hash`)."""
    what = {"smplifyx": asdict(wholebody_config(config)), "pose_prior": prior_digest(config.pose_prior),
            "body_model_id": body_model_id}
    return config_hash(what if config.frame == "crop" else {**what, "frame": config.frame})


def build_fitter(config: SeedConfig) -> Fitter:
    """The body model, SMPLify and seed-row provenance of ``config``, on ``config.device``; for an SMPL-X-layout
    body model (`core.model_id.WHOLEBODY_FAMILIES`) SMPLify-X and its rows' provenance too."""
    body = load_body_model(config.body_model, joint_regressor_extra=config.joint_regressor_extra,
                           h36m_regressor=config.h36m_regressor, device=config.device)
    prior = MaxMixturePrior.from_file(config.pose_prior).to(config.device)
    provenance = FitProvenance(run_id=config.run_id, body_model_id=body.model_id,
                               fit_config_hash=fit_config_hash(config.smplify, config.pose_prior, body.model_id,
                                                               config.frame),
                               source="seed", frame=config.frame)
    smplifyx = wholebody_provenance = None
    if body.family in WHOLEBODY_FAMILIES:
        smplifyx = SMPLifyX(WholeBodyModel(body), body_prior=body_gmm_term(config.pose_prior, device=config.device),
                            config=wholebody_config(config))
        wholebody_provenance = replace(provenance, fit_config_hash=wholebody_config_hash(config, body.model_id))
    return Fitter(body, SMPLify(body, prior, config.smplify), provenance, smplifyx, wholebody_provenance)


_worker_fitter = lru_cache(maxsize=2)(build_fitter)  # a Dask worker builds its fitter once and keeps it


def build_fitter3d(config: SeedConfig) -> Fitter3D:
    """The 3D fit, SMPLify (to score) and ``source="fit3d"`` provenance of ``config`` (mode "3d"), on
    ``config.device``. The 3D fit needs the body model's Human3.6M regressor (the open model has one; a model
    file takes ``config.h36m_regressor``) unless its correspondence is "canonical"."""
    fitter = build_fitter(config)
    fit = Fit3D(fitter.body, fitter.smplify.prior, config.fit3d)
    h36m = None
    if config.h36m_regressor is not None:
        h36m = content_digest([("h36m_regressor", fitter.body.h36m_regressor.double().cpu().numpy())])
    digest = fit_config_hash(config.smplify, config.pose_prior, fitter.body.model_id, config.frame, config.fit3d,
                             config.shape_frames, h36m)
    return Fitter3D(fit, fitter.smplify, replace(fitter.provenance, source="fit3d", fit_config_hash=digest),
                    config.frame)


_worker_fitter3d = lru_cache(maxsize=2)(build_fitter3d)


def fit_3d_task(samples: list[Sample3D], shapes: dict[str, np.ndarray], config: SeedConfig,
                threads: int | None = None) -> pa.Table:
    """`fits.seeding3d.fit_3d_batch` with the fitter of ``config`` built once per process: a Dask worker's task."""
    if threads is not None:
        torch.set_num_threads(threads)
    return fit_3d_batch(_worker_fitter3d(config), samples, shapes)


@dataclass(frozen=True)
class KeypointBatch:
    """Samples to fit, in the fit frame: keys (B,); keypoints (B, 49, 3) fit-frame px + confidence; the camera of
    each in fit-frame px, focal (B, 2) and center (B, 2); for image-frame fits the original image's intrinsics
    (B, 4) fx, fy, cx, cy px the rows keep (None for crop-frame fits); and the whole-body keypoints (B, 161, 3)
    fit-frame px + confidence (zeros for a sample without; None: no sample has them)."""

    keys: list[str]
    keypoints: np.ndarray
    focal: np.ndarray
    center: np.ndarray
    intrinsics: np.ndarray | None = None
    wholebody: np.ndarray | None = None


def sample_camera(sample: StoredSample, frame: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(focal (2,), center (2,)) in fit-frame px of the camera a ``frame`` fit of ``sample`` is made with, and the
    image intrinsics (4,) the row keeps (None for the crop frame). FitloopError naming the sample when its
    intrinsics cannot be known (a format-1 shard without image sizes)."""
    if frame == "crop":
        camera = fit_frame_camera()
        return np.array(camera.focal), np.array(camera.center), None
    try:
        intrinsics = sample.intrinsics
    except SampleFormatError as err:
        raise FitloopError(f"{err}; fitting in the image frame needs them") from None
    camera = image_camera_in_fit_frame(intrinsics, sample.meta["crop"])
    return (np.array(camera.focal), np.array(camera.center),
            np.array([intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy]))


def fit_keypoints(fitter: Fitter, batch: KeypointBatch) -> pa.Table:
    """Fit a batch's fit-frame keypoints from the mean pose with each sample's camera; the rows for the fits table
    (`FITS_SCHEMA`), in the batch's order: canonical pose (the stored crop is never flipped or rotated), ``cam_t``
    in the camera of the fitter's frame, SMPLify's loss (fit-frame px²), and each fit's quality record
    (`fitting.quality`: from the joints SMPLify returns, projected with the camera it fitted with; one candidate,
    SMPLify's pick). With SMPLify-X (an SMPL-X-layout model) the samples with whole-body keypoints are fitted by it
    instead (`fit_wholebody`), the others by SMPLify; each sample by one of the two."""
    whole = np.zeros(len(batch.keys), dtype=bool)
    if fitter.smplifyx is not None and batch.wholebody is not None:
        whole = (batch.wholebody[..., 2] > 0).any(-1)
    body_rows, whole_rows = np.flatnonzero(~whole), np.flatnonzero(whole)
    if not len(whole_rows):
        return fit_body(fitter, batch, body_rows)
    if not len(body_rows):
        return fit_wholebody(fitter, batch, whole_rows)
    table = pa.concat_tables([fit_body(fitter, batch, body_rows), fit_wholebody(fitter, batch, whole_rows)])
    return table.take(pa.array(np.argsort(np.concatenate([body_rows, whole_rows]))))


def _on_device(fitter: Fitter, batch: KeypointBatch, rows: np.ndarray, *names: str) -> list[torch.Tensor]:
    device = next(iter(fitter.body.buffers())).device
    return [torch.as_tensor(getattr(batch, n)[rows], dtype=torch.float32, device=device) for n in names]


def fit_body(fitter: Fitter, batch: KeypointBatch, rows: np.ndarray) -> pa.Table:
    """SMPLify's seed fits of the batch's samples ``rows`` (`fit_keypoints`)."""
    kp, focal, center = _on_device(fitter, batch, rows, "keypoints", "focal", "center")
    pose, betas, cam_t = mean_pose_start(fitter.body, kp, focal, center)
    result = fitter.smplify(kp, pose, betas, cam_t, center, start="mean", focal_length=focal)
    quality = fit_quality(result.joints, result.cam_t, focal, center, kp)
    return fits_from_smplify(result, [batch.keys[i] for i in rows], fitter.provenance,
                             intrinsics=None if batch.intrinsics is None else batch.intrinsics[rows],
                             quality=quality)


def fit_wholebody(fitter: Fitter, batch: KeypointBatch, rows: np.ndarray) -> pa.Table:
    """SMPLify-X's seed fits (fast mode, mean start) of the batch's samples ``rows`` from their whole-body
    keypoints: whole-body rows (`fits.schema.WholeBodyFit`: hand, jaw and eye poses, expression, the hands' and
    face's reprojection px), scored as every fit by SMPLify's loss on the 49 body joints (the table's rule), with
    the quality record and the priors' energies of a body fit."""
    kp, focal, center, wholebody = _on_device(fitter, batch, rows, "keypoints", "focal", "center", "wholebody")
    fit = fitter.smplifyx(wholebody, center, focal_length=focal)
    full = fit.full_pose
    pose = torch.cat([full[:, :POSE_SLICES["body_pose"].stop], full.new_zeros(len(rows), 6)], 1)  # SMPL's 72
    joints = fit.points[:, :NUM_JOINTS]
    with torch.no_grad():
        reprojection = fitter.smplify.joints_loss(joints, fit.cam_t, center, kp, focal_length=focal)
        parts = wholebody_part_reprojection(project(fit.points, fit.cam_t, focal, center), wholebody,
                                            fitter.smplifyx.model.provided)
        priors = (fitter.smplify.prior(pose[:, 3:]), angle_prior(pose[:, 3:]), shape_prior(fit.betas))
    eyes = slice(POSE_SLICES["leye_pose"].start, POSE_SLICES["reye_pose"].stop)
    hands = slice(POSE_SLICES["left_hand_pose"].start, POSE_SLICES["right_hand_pose"].stop)
    host = [t.detach().cpu().numpy() for t in (pose, fit.betas, fit.cam_t, reprojection, *priors, full[:, hands],
                                               full[:, POSE_SLICES["jaw_pose"]], full[:, eyes], fit.expression, parts)]
    return fits_batch([batch.keys[i] for i in rows], host[0], host[1], fitter.wholebody_provenance, cam_t=host[2],
                      intrinsics=None if batch.intrinsics is None else batch.intrinsics[rows],
                      reprojection_loss=host[3], pose_prior=host[4], angle_prior=host[5], shape_prior=host[6],
                      iterations=fit.extras["iterations"], quality=fit_quality(joints, fit.cam_t, focal, center, kp),
                      wholebody=WholeBodyFit(*host[7:]))


def fit_batch(batch: KeypointBatch, config: SeedConfig, threads: int | None = None) -> pa.Table:
    """`fit_keypoints` with the fitter of ``config`` built once per process: the task a Dask worker runs;
    ``threads`` caps torch's threads there."""
    if threads is not None:
        torch.set_num_threads(threads)
    return fit_keypoints(_worker_fitter(config), batch)


def shard_samples(shard_dirs: Path | Sequence[Path | ShardInfo], keys: Sequence[str] | None = None,
                  splits: Sequence[str] = ()) -> Iterator[StoredSample]:
    """The samples of one or more shard sets in manifest order: all (of ``splits`` when given), or exactly
    ``keys`` (of one shard set; `shards.lookup.SampleNotFoundError` for keys it does not hold). Checksums are not
    verified here (`fitloop shards verify`); no image is decoded."""
    sources = [shard_dirs] if isinstance(shard_dirs, (str, Path)) else list(shard_dirs)
    if keys is not None:
        if len(sources) != 1 or not isinstance(sources[0], (str, Path)) or splits:
            raise FitloopError("seeding given keys reads one shard set, all splits: pass one shard folder and no "
                               "splits with keys")
        yield from iter_samples(Path(sources[0]), keys)
        return
    for shard in list_shards(sources, (), splits):
        yield from iter_shard(shard, verify=False)


def unfittable(keypoints: np.ndarray) -> str | None:
    """Why canonical keypoints (49, 3) px + confidence cannot make a fit, or None: a keypoint with confidence > 0
    that is not finite, or fewer than `MIN_FIT_JOINTS` joints shown (`core.joints.joints_shown`). The trainer
    neither supervises with nor writes back the fits of such samples (`training.step.update_fits`)."""
    present = keypoints[:, 2] > 0
    if not np.isfinite(keypoints[present, :2]).all():
        return "a keypoint with confidence > 0 has a position that is not finite"
    shown = int(joints_shown(present))
    if shown < MIN_FIT_JOINTS:
        return f"its keypoints show {shown} joint(s), fewer than the {MIN_FIT_JOINTS} a fit needs"
    return None


def keypoint_batches(samples: Iterable[StoredSample], size: int, frame: str = "crop") -> Iterator[KeypointBatch]:
    """The samples, ``size`` at a time and in order, as batches (`KeypointBatch`) for fits in ``frame``."""
    rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] = []

    def batch() -> KeypointBatch:
        keys, kp, focal, center, intrinsics, wholebody = zip(*rows)
        whole = None
        if any(w is not None for w in wholebody):
            whole = np.stack([np.zeros((NUM_WHOLEBODY, 3), np.float32) if w is None else w for w in wholebody])
        return KeypointBatch(list(keys), np.stack(kp), np.stack(focal), np.stack(center),
                             None if frame == "crop" else np.stack(intrinsics), whole)

    for sample in samples:
        crop = sample.meta["crop"]
        wholebody = None if sample.wholebody_crop is None else keypoints_in_fit_frame(sample.wholebody_crop, crop)
        rows.append((sample.key, keypoints_in_fit_frame(sample.keypoints_crop, crop), *sample_camera(sample, frame),
                     wholebody))
        if len(rows) == size:
            yield batch()
            rows = []
    if rows:
        yield batch()


def seed_fits(shard_dir: Path | Sequence[Path], table_path: Path, config: SeedConfig = SeedConfig(), *,
              keys: Sequence[str] | None = None, client: Any = None, on_batch: Callable[[int], None] | None = None,
              splits: Sequence[str] = (), missing_only: bool = False) -> SeedResult:
    """Fit the samples of ``shard_dir`` (one shard folder or several, or checked shards
    (`shards.reader.ShardInfo`); all samples, those of ``splits``, or only ``keys``) from the mean pose and append
    the improvements (module docstring) to the fits table at ``table_path`` (created when missing) in one commit.

    client: a `distributed.Client` to fit the batches on (one task per ``config.batch_size`` samples; each worker
      builds its fitter once); None fits them here, on ``config.device``.
    missing_only: fit only samples whose key has no fit of the body model (the trainer's seeding).
    on_batch(n): called after each batch of n samples is fitted.
    Rows carry ``source="seed"``, the body model's content id, ``config.frame``, `fit_config_hash` and
    ``config.run_id``; improvements are among that model's fits of that frame.
    """
    if config.smplify.focal_length != FIT_FOCAL:
        raise FitloopError(f"seed fits live in SPIN's fit frame (focal {FIT_FOCAL:g} px); the SMPLify config has "
                           f"focal_length {config.smplify.focal_length:g}")
    # the table: opened, or made with the first commit (a run that fits nothing leaves no new table behind)
    table = FitsTable.existing_or_free(table_path)
    # Here the fitter gives the body model's id (and fits, without a client); a client's workers build their own.
    local = config if client is None else replace(config, device="cpu")
    fitter = build_fitter3d(local) if config.mode == "3d" else build_fitter(local)
    model = fitter.provenance.body_model_id
    known = BestLosses(body_model_id=model, frame=config.frame)
    have: set[str] = set()
    if table is not None:
        mins = table.min_losses(body_model_id=model, frame=config.frame)
        known = BestLosses.of(mins, model, config.frame)
        have = set(mins["key"].to_pylist()) if missing_only else set()
    result = SeedResult(body_model_id=model, fit_config_hash=fitter.provenance.fit_config_hash)

    def wanted(samples: Iterable[StoredSample]) -> Iterator[StoredSample]:
        for sample in samples:
            if sample.key in have:
                result.skipped += 1
            elif config.mode == "2d" and (why := unfittable(sample.keypoints_crop)) is not None:
                result.unfittable.append(f"{sample.key}: {why}")
            else:
                yield sample

    if config.mode == "3d":
        parts = _seed_3d(fitter, wanted(shard_samples(shard_dir, keys, splits)), config, result, client, on_batch)
        return _append(table_path, table, parts, known, result)
    batches = keypoint_batches(wanted(shard_samples(shard_dir, keys, splits)), config.batch_size, config.frame)
    if table is not None and not missing_only:  # missing_only fits keys without a stored fit: nothing to compare
        batches = _checked_against(table, fitter, config.frame, batches)
    parts = _fit_batches(batches, lambda batch: fit_keypoints(fitter, batch),
                         lambda batch: (fit_batch, batch, config, 1), client, on_batch)
    return _append(table_path, table, parts, known, result)


def _checked_against(table: FitsTable, fitter: Fitter, frame: str,
                     batches: Iterable[KeypointBatch]) -> Iterator[KeypointBatch]:
    """The batches, each checked first against the table's stored fits of its keys (`fits.store.stale_fits`, with
    each sample's camera): a table made from other keypoints under the same keys (another shard set) would keep its
    fits of other people as the best and refuse the new ones, so it is `fits.store.StaleFitsError` before anything
    is fitted or appended."""
    store = FitsStore.load(table, fitter.provenance.body_model_id, frame=frame)
    for batch in batches:
        rows = np.arange(len(batch.keys))
        kp, focal, center = _on_device(fitter, batch, rows, "keypoints", "focal", "center")
        whole = store.lookup_wholebody(batch.keys)[1].to(kp.device)
        stale, rescored, stored = (t.cpu().numpy() for t in stale_fits(
            store, fitter.smplify, batch.keys, kp, skip=whole, focal=focal, center=center))
        if stale.any():
            raise stale_fits_error(store, batch.keys, stale, rescored, stored,
                                   fix="seed into a new table, or seed the shard set the table was made from")
        yield batch


def _fit_batches(batches: Iterable[Any], fit_here: Callable[[Any], pa.Table],
                 task: Callable[[Any], tuple[Any, ...]], client: Any,
                 on_batch: Callable[[int], None] | None) -> list[pa.Table]:
    """The rows of every batch (one row per sample): ``fit_here(batch)`` in this process, or with a ``client`` one
    Dask task per batch, ``task(batch)`` = (function, *args) (``pure=False``: unique keys on a shared scheduler);
    ``on_batch(rows)`` after each batch."""
    if client is None:
        parts = []
        for batch in batches:
            parts.append(fit_here(batch))
            kill_point("seed.batch")
            if on_batch is not None:
                on_batch(parts[-1].num_rows)
        return parts
    from distributed import as_completed

    futures = [client.submit(*task(batch), pure=False) for batch in batches]
    for future in as_completed(futures):
        kill_point("seed.batch")
        if on_batch is not None:
            on_batch(future.result().num_rows)
    return client.gather(futures)


def _append(path: Path, table: FitsTable | None, parts: list[pa.Table], known: BestLosses,
            result: SeedResult) -> SeedResult:
    """Append the improvements among the fitted rows ``parts`` in one commit to the table (at ``path``: made here
    when ``table`` is None); ``result`` completed."""
    result.fitted = sum(p.num_rows for p in parts)
    if not result.fitted:
        return result
    if table is None:
        table = FitsTable.create(path, exist_ok=True)
    fits = pa.concat_tables(parts)
    appended = table.append(fits, best=known)
    result.appended, result.diverged = appended.rows, appended.diverged
    result.versions = [] if appended.version is None else [appended.version]
    fitted = fits.filter(pa.array(~diverged_rows(fits)))
    result.mean_loss = float(np.mean(fitted["loss"].to_numpy())) if fitted.num_rows else None
    return result


def _seed_3d(fitter: Fitter3D, samples: Iterable[StoredSample], config: SeedConfig, result: SeedResult,
             client: Any, on_batch: Callable[[int], None] | None) -> list[pa.Table]:
    """Mode "3d" (`fits.seeding3d`): the samples with 3D joints, each subject's shape, then the batches' rows."""
    found: list[Sample3D] = []
    for sample in samples:
        kept = sample_3d(sample, sample_camera(sample, config.frame), config.frame)
        if kept is None:
            result.without_3d += 1
        else:
            found.append(kept)
    ordered = in_sequence_order(found)
    shapes = subject_shapes(fitter, ordered, config.shape_frames)
    batches = [ordered[i:i + config.batch_size] for i in range(0, len(ordered), config.batch_size)]
    return _fit_batches(batches, lambda batch: fit_3d_batch(fitter, batch, shapes),
                        lambda batch: (fit_3d_task, batch, {s.subject: shapes[s.subject] for s in batch}, config, 1),
                        client, on_batch)
