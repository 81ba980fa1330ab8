"""The fits table's schema: one row per kept fit, and how a batch of fits is built and checked.

A row is one SMPL fit of one sample, keyed by the sample key (`shards.schema.make_key`), with its losses and
provenance (run, body model, fitting-config hash, source, epoch, step, schema version, time).

Conventions of the stored values (also in each column's ``comment``):

* ``pose`` (72,) SMPL axis-angle, radians, global orientation first, in the camera frame of the sample as stored
  in its shard: canonical, never flipped or rotated by augmentation (undo those before writing, as SPIN does).
* ``betas`` (10,) shape coefficients in units of the shape space's standard deviation. ``betas_extreme`` flags a
  fit with any |β| > 3: SPIN zeroes all 10 betas of such a fit when it supervises with it, and keeps them stored.
* ``cam_t`` (3,) metres, in the camera named by ``frame`` (`FRAMES`, `core.frames`): ``crop``, SPIN's fit frame
  (the 224 px crop of the person box, focal 5000 px, principal point at its centre; every fit before schema 3), or
  ``image``, the original image's own camera, whose ``intrinsics`` (fx, fy, cx, cy px of the original image, as
  the sample stored them) the row keeps. The two are different 3D placements of the body (and, off the optical
  axis, different global orientations): a best view is of one frame, as it is of one body model, and nothing
  converts between them silently (`core.frames.move_translation` does it on request).
* ``loss`` and ``reprojection_loss`` are measured in fit-frame px whatever the frame (an image-frame fit is
  projected with its camera written in fit-frame px, `core.frames.image_camera_in_fit_frame`), so the losses of
  both frames, and SPIN's threshold, mean the same.
* ``reprojection_loss`` (49,) SPIN's per-joint c² Σ_xy ρ(residual), px² (Geman–McClure ρ); ``loss`` its mean over
  the 49 joints, the number fits are compared by. Priors are SMPLify's unweighted energies.
* **The quality record** (`QUALITY_COLUMNS`, `fitting.quality`; schema 4): ``reprojection_<part>_px`` per body part
  of `core.joints.BODY_PARTS`, the confidence-weighted mean distance between the fit's projected joints and the
  keypoints, fit-frame px; ``facing`` in [-1, 1], > 0 when the fit faces the way the keypoints say; ``candidates``,
  how many candidates the fit was chosen among; ``candidate_spread_mm``, the largest PA-MPJPE to another of them.
  With ``pose_prior`` (the GMM prior's energy) these are what `fits.quality.FitFilter` judges a fit by. A row
  without a record (imported fits) has ``candidates`` null and every record column null: never a made-up number.
* **Whole-body fits** (`WHOLEBODY_COLUMNS`, schema 5) of a body model with SMPL-X's tree (`core.model_id.
  WHOLEBODY_FAMILIES`): ``hand_pose`` (90,) the left then the right hand's 15 joints, full axis-angle in SMPL-X's
  (MANO's) joint order, radians, no PCA and no hand mean added (smplx's ``flat_hand_mean=True`` convention);
  ``jaw_pose`` (3,), ``eye_pose`` (6,) left then right eye (smplx's ``leye_pose``, ``reye_pose``), ``expression``
  (10,) in standard deviations; ``pose`` holds the global orientation and the 21 body joints SMPL-X shares with
  SMPL (its entries 66–71, SMPL's two hand joints, which SMPL-X has not, are zero); ``reprojection_left_hand_px``,
  ``reprojection_right_hand_px``, ``reprojection_face_px`` the quality record's hands and face (px, as the body
  parts'). All four parameter columns are null for a body-only fit (an SMPL-family model, or an SMPL-X model
  fitted to body keypoints only), and all set for a whole-body one.
  Within a record, null means "not measurable": a part without a confident keypoint, facing without the four torso
  keypoints, the spread of a single candidate.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.errors import FitloopError
from core.joints import BODY_PARTS, NUM_JOINTS
from core.model_id import MODEL_ID_PATTERN, WHOLEBODY_FAMILIES
from core.spin import NUM_BETAS
from shards.schema import KEY_PATTERN

if TYPE_CHECKING:
    from fitting.quality import FitQuality

# Bump when a column is added, removed or changes meaning; every row and the table's metadata record it.
# 5: the whole-body columns (`WHOLEBODY_COLUMNS`: SMPL-X hand, jaw and eye poses, expression, hands' and face's
# reprojection); older fits are body-only fits (null), and `fits.table.upgrade_table` says so.
# 4: the quality record (`QUALITY_COLUMNS`); older fits have none (null), and `fits.table.upgrade_table` says so.
# 3: the frame and intrinsics columns (a fit's camera); a version-2 table's fits are all crop-frame fits, and
# `fits.table.upgrade_table` (`fitloop fits upgrade`) says so once, in a new version.
# 2: body_model_id is the body model's content id (`fitting.body_model.model_content_id`); 1 held file-based ids
# (``<name>@<file digest>``, ``smpl-neutral-10``), relabelled by `fits.table.relabel_body_models`.
FITS_SCHEMA_VERSION = 5
NUM_POSE = 72
# SMPL-X's whole-body parameters (the widths SMPLify-X fits: 2 x 15 hand joints, 10 expression components)
NUM_HAND_POSE, NUM_JAW_POSE, NUM_EYE_POSE, NUM_EXPRESSION = 90, 3, 6, 10
BETAS_EXTREME_SIGMA = 3.0     # SPIN: any |β| > 3 → all betas of that fit are zeroed for training
VALID_LOSS_THRESHOLD = 100.0  # SPIN's smplify_threshold: a fit supervises only when loss < this (px²)
SOURCES = ("seed", "loop", "import", "fit3d")
FRAMES = ("crop", "image")    # the camera a fit's cam_t is in (module docstring)
NUM_INTRINSICS = 4            # fx, fy, cx, cy
PART_COLUMNS = tuple(f"reprojection_{part}_px" for part in BODY_PARTS)
QUALITY_COLUMNS = PART_COLUMNS + ("facing", "candidates", "candidate_spread_mm")
FRAME_COLUMNS = ("frame", "intrinsics")
WHOLEBODY_PARAMETERS = {"hand_pose": NUM_HAND_POSE, "jaw_pose": NUM_JAW_POSE, "eye_pose": NUM_EYE_POSE,
                        "expression": NUM_EXPRESSION}
WHOLEBODY_PARTS = ("left_hand", "right_hand", "face")  # core.wholebody.WHOLEBODY_PARTS beyond the body
WHOLEBODY_PART_COLUMNS = tuple(f"reprojection_{part}_px" for part in WHOLEBODY_PARTS)
WHOLEBODY_COLUMNS = tuple(WHOLEBODY_PARAMETERS) + WHOLEBODY_PART_COLUMNS

SCHEMA_VERSION_META = "fitloop.fits_schema_version"


def _field(name: str, type_: pa.DataType, nullable: bool, comment: str) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"comment": comment})


FITS_SCHEMA = pa.schema([
    _field("key", pa.string(), False, "sample key <dataset>/<id> (shards.schema.make_key); never a row position"),
    _field("dataset", pa.string(), False, "the key's dataset prefix"),
    _field("pose", pa.list_(pa.float32(), NUM_POSE), False,
           "SMPL axis-angle (72,), radians, global orientation first; canonical: never flipped or rotated"),
    _field("betas", pa.list_(pa.float32(), NUM_BETAS), False, "shape (10,), in standard deviations"),
    _field("betas_extreme", pa.bool_(), False, "any |beta| > 3: SPIN zeroes this fit's betas when training"),
    _field("cam_t", pa.list_(pa.float32(), 3), True, "camera translation (3,), metres, in the camera of frame"),
    _field("frame", pa.string(), False, "crop (SPIN's fit frame: 224 px crop, focal 5000) | image (the original "
                                        "image's camera, intrinsics)"),
    _field("intrinsics", pa.list_(pa.float32(), NUM_INTRINSICS), True,
           "fx, fy, cx, cy px of the original image's camera for frame image; null for frame crop"),
    _field("loss", pa.float32(), True, "mean of reprojection_loss over 49 joints, px^2; null = unscored"),
    _field("reprojection_loss", pa.list_(pa.float32(), NUM_JOINTS), True, "per joint c^2 sum_xy rho, px^2 (49,)"),
    _field("pose_prior", pa.float32(), True, "unweighted GMM pose prior energy"),
    _field("angle_prior", pa.float32(), True, "unweighted elbow/knee angle prior energy"),
    _field("shape_prior", pa.float32(), True, "unweighted shape prior energy, |beta|^2"),
    *(_field(column, pa.float32(), True, f"quality: mean px distance of the {part.replace('_', ' ')}'s projected "
             f"joints to its keypoints (confidence-weighted, fit frame); null: no record or no keypoint there")
      for part, column in zip(BODY_PARTS, PART_COLUMNS)),
    _field("facing", pa.float32(), True, "quality: keypoints' torso handedness times the sign of the fit's, in "
                                         "[-1, 1]; < 0 faces the other way; null: no record or no torso keypoints"),
    _field("candidates", pa.int16(), True, "quality: candidates the fit was chosen among; null: no quality record"),
    _field("candidate_spread_mm", pa.float32(), True,
           "quality: largest PA-MPJPE (14 joints) to another candidate, mm; null: one candidate or no record"),
    _field("iterations", pa.int32(), True, "optimiser iterations the fit ran"),
    _field("valid", pa.bool_(), True, "loss < 100 px^2 (SPIN's smplify_threshold); null when unscored"),
    _field("source", pa.string(), False, "seed | loop | import"),
    _field("epoch", pa.int32(), True, "training epoch of a loop fit"),
    _field("step", pa.int64(), True, "training step of a loop fit"),
    _field("run_id", pa.string(), False, "the run (or import) that made the fit"),
    _field("body_model_id", pa.string(), False,
           "content id <family>:<16 hex> of the body model the pose and betas belong to (BodyModel.model_id)"),
    _field("fit_config_hash", pa.string(), False,
           "fits.seeding.fit_config_hash: SMPLify config + pose prior content + body model id; imports: a label"),
    pa.field("schema_version", pa.int16(), nullable=False,
             metadata={"comment": "fits schema version of the row", SCHEMA_VERSION_META: str(FITS_SCHEMA_VERSION)}),
    _field("time", pa.timestamp("us", tz="UTC"), False, "when the fit was made or imported, UTC"),
    # Schema 5's columns last: Delta keeps statistics of the first 32 columns only (delta.dataSkippingNumIndexedCols),
    # which key and body_model_id must stay among (history's row-group skipping, per-version model counts).
    _field("hand_pose", pa.list_(pa.float32(), NUM_HAND_POSE), True,
           "whole-body fits: left then right hand, 15 joints each, axis-angle in SMPL-X's (MANO) joint order, no "
           "PCA, no hand mean (90,); null: a body-only fit"),
    _field("jaw_pose", pa.list_(pa.float32(), NUM_JAW_POSE), True, "whole-body fits: jaw axis-angle (3,)"),
    _field("eye_pose", pa.list_(pa.float32(), NUM_EYE_POSE), True,
           "whole-body fits: left then right eye axis-angle (6,), smplx's leye_pose, reye_pose"),
    _field("expression", pa.list_(pa.float32(), NUM_EXPRESSION), True,
           "whole-body fits: expression coefficients (10,), in standard deviations"),
    *(_field(column, pa.float32(), True, f"quality: mean px distance of the {part.replace('_', ' ')}'s projected "
             f"points to its keypoints (whole-body fits; null: a body-only fit, no record or no keypoint there)")
      for part, column in zip(WHOLEBODY_PARTS, WHOLEBODY_PART_COLUMNS)),
])


def schema_of_version(version: int) -> pa.Schema:
    """The columns a fits table of schema ``version`` (1 to this one) has, its version in the metadata: versions
    before 3 lack the frame columns, versions before 4 the quality record, versions before 5 the whole-body
    columns."""
    if not 1 <= version <= FITS_SCHEMA_VERSION:
        raise FitsTableError(f"no fits schema version {version}; this fitloop knows 1 to {FITS_SCHEMA_VERSION}")
    absent = ((FRAME_COLUMNS if version < 3 else ()) + (QUALITY_COLUMNS if version < 4 else ())
              + (WHOLEBODY_COLUMNS if version < 5 else ()))
    fields = [f for f in FITS_SCHEMA if f.name not in absent]
    at = [f.name for f in fields].index("schema_version")
    fields[at] = fields[at].with_metadata({**fields[at].metadata, SCHEMA_VERSION_META.encode(): str(version)})
    return pa.schema(fields)


# The columns `best_of` ranks by, in order: the lowest loss, then the earliest fit, then a fixed order.
RANK_COLUMNS = ("key", "loss", "time", "run_id", "epoch", "step")


class FitsTableError(FitloopError):
    """A fits table is missing or malformed, or a batch of fits does not fit its schema."""


class MixedFramesError(FitsTableError):
    """A best view was asked of fits made in both frames (crop and image) without naming one."""

    def __init__(self, frames: dict[str, int], where: str = "these fits") -> None:
        listed = ", ".join(f"{frame} ({rows} row{'s' if rows != 1 else ''})" for frame, rows in frames.items())
        super().__init__(f"{where}: fits made in {len(frames)} camera frames, {listed}; a best fit is per frame "
                         f"(their cam_t are different 3D placements), so name one (--frame crop|image, or "
                         f"frame=...)")
        self.frames = dict(frames)


class MixedBodyModelsError(FitsTableError):
    """A best view was asked of fits of several body models without naming one."""

    def __init__(self, models: dict[str, int], where: str = "these fits") -> None:
        listed = ", ".join(f"{model} ({rows} row{'s' if rows != 1 else ''})" for model, rows in models.items())
        super().__init__(f"{where}: fits of {len(models)} body models, {listed}; a best fit is per body model, "
                         f"so name one (--model PATH|open|ID, or body_model_id=...)")
        self.models = dict(models)


@dataclass(frozen=True)
class FitProvenance:
    """Where a batch of fits comes from; stored on every row. ``source`` is one of `SOURCES`, ``frame`` of
    `FRAMES` (the camera every fit of the batch was made in)."""

    run_id: str
    body_model_id: str
    fit_config_hash: str
    source: str = "loop"
    epoch: int | None = None
    step: int | None = None
    frame: str = "crop"


@dataclass(frozen=True)
class WholeBodyFit:
    """The whole-body parameters of a batch of B fits (`WHOLEBODY_COLUMNS`; numpy arrays or CPU tensors):
    hand_pose (B, 90), jaw_pose (B, 3), eye_pose (B, 6), expression (B, 10) as the module docstring defines them;
    part_reprojection (B, 3) px of `WHOLEBODY_PARTS` (NaN: not measurable), or None: no record."""

    hand_pose: Any
    jaw_pose: Any
    eye_pose: Any
    expression: Any
    part_reprojection: Any = None


def config_hash(config: Any) -> str:
    """16 hex digits of the SHA-256 of a config (dataclass or json-able mapping) as canonical JSON."""
    value = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fixed(values: Any, width: int, name: str, rows: int) -> pa.FixedSizeListArray:
    array = np.ascontiguousarray(values, dtype=np.float32)
    if array.shape != (rows, width):
        raise FitsTableError(f"{name} must have shape ({rows}, {width}), got {array.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), width)


def _column(values: Any, type_: pa.DataType, name: str, rows: int) -> pa.Array:
    """A per-row column from None (all null), a scalar (repeated) or a (rows,) array."""
    if values is None:
        return pa.nulls(rows, type_)
    array = np.asarray(values)
    if array.ndim == 0:
        array = np.full(rows, array)
    if array.shape != (rows,):
        raise FitsTableError(f"{name} must have shape ({rows},), got {array.shape}")
    return pa.array(array, type=type_)


def fits_batch(keys: Sequence[str], pose: Any, betas: Any, provenance: FitProvenance, *,
               reprojection_loss: Any = None, loss: Any = None, cam_t: Any = None, intrinsics: Any = None,
               pose_prior: Any = None, angle_prior: Any = None, shape_prior: Any = None, iterations: Any = None,
               valid: Any = None, quality: "FitQuality | None" = None, wholebody: WholeBodyFit | None = None,
               time: datetime | None = None) -> pa.Table:
    """A batch of fits as a table in `FITS_SCHEMA`, ready for `FitsTable.append`.

    Args:
        keys: (B,) sample keys; the dataset column is their prefix.
        pose: (B, 72) axis-angle, radians, canonical frame. betas: (B, 10).
        provenance: run, body model, config hash, source, epoch and step of every row.
        reprojection_loss: (B, 49) px², or None. loss: (B,) px²; default the mean of ``reprojection_loss``,
            None when that is absent too (unscored fits, e.g. imported static fits).
        cam_t: (B, 3) metres or None, in the camera of ``provenance.frame``. intrinsics: (B, 4) fx, fy, cx, cy px
            of each original image's camera: required for frame "image", None for frame "crop".
        pose_prior, angle_prior, shape_prior, iterations: (B,), a scalar, or None.
        valid: (B,) bool; default ``loss < VALID_LOSS_THRESHOLD`` (null where unscored).
        quality: each fit's quality record (`fitting.quality.fit_quality`; NaN values are stored as null), or None:
            fits without a record (every quality column null).
        time: when the fits were made (UTC); default now.
    Arrays may be numpy or CPU torch tensors; nothing passed in is modified. Shapes are checked here; keys and
    losses where the rows are written (`check_fits`), so that a batch may hold diverged (NaN) fits to filter out.
    """
    keys = pa.array(keys, pa.string())
    rows = len(keys)
    if provenance.frame not in FRAMES:
        raise FitsTableError(f"frame must be one of {FRAMES}, got {provenance.frame!r}")
    if (intrinsics is None) != (provenance.frame == "crop"):
        raise FitsTableError(f"fits of frame {provenance.frame!r} " + ("need the intrinsics of their images"
                             if intrinsics is None else "have no intrinsics (the fit frame's camera is fixed)"))
    if reprojection_loss is not None:
        reprojection_loss = np.asarray(reprojection_loss, dtype=np.float32)
        if loss is None:
            loss = reprojection_loss.reshape(rows, -1).mean(axis=1)
    betas32 = np.asarray(betas, dtype=np.float32)
    loss_array = _column(loss, pa.float32(), "loss", rows)
    if valid is None and loss is not None:
        valid = pc.less(loss_array, VALID_LOSS_THRESHOLD)
    now = time or datetime.now(timezone.utc)
    columns = {
        "key": keys,
        "dataset": pc.replace_substring_regex(keys, "/.*$", ""),
        "pose": _fixed(pose, NUM_POSE, "pose", rows),
        "betas": _fixed(betas32, NUM_BETAS, "betas", rows),
        "betas_extreme": pa.array((np.abs(betas32) > BETAS_EXTREME_SIGMA).any(axis=1)),
        **_wholebody_parameter_columns(wholebody, rows),
        "cam_t": pa.nulls(rows, FITS_SCHEMA.field("cam_t").type) if cam_t is None else _fixed(cam_t, 3, "cam_t", rows),
        "frame": pa.array([provenance.frame] * rows, pa.string()),
        "intrinsics": (pa.nulls(rows, FITS_SCHEMA.field("intrinsics").type) if intrinsics is None
                       else _fixed(intrinsics, NUM_INTRINSICS, "intrinsics", rows)),
        "loss": loss_array,
        "reprojection_loss": (pa.nulls(rows, FITS_SCHEMA.field("reprojection_loss").type) if reprojection_loss is None
                              else _fixed(reprojection_loss, NUM_JOINTS, "reprojection_loss", rows)),
        "pose_prior": _column(pose_prior, pa.float32(), "pose_prior", rows),
        "angle_prior": _column(angle_prior, pa.float32(), "angle_prior", rows),
        "shape_prior": _column(shape_prior, pa.float32(), "shape_prior", rows),
        **_quality_columns(quality, rows),
        **_wholebody_part_columns(wholebody, rows),
        "iterations": _column(iterations, pa.int32(), "iterations", rows),
        "valid": valid if isinstance(valid, pa.Array) else _column(valid, pa.bool_(), "valid", rows),
        "source": pa.array([provenance.source] * rows, pa.string()),
        "epoch": _column(provenance.epoch, pa.int32(), "epoch", rows),
        "step": _column(provenance.step, pa.int64(), "step", rows),
        "run_id": pa.array([provenance.run_id] * rows, pa.string()),
        "body_model_id": pa.array([provenance.body_model_id] * rows, pa.string()),
        "fit_config_hash": pa.array([provenance.fit_config_hash] * rows, pa.string()),
        "schema_version": pa.array(np.full(rows, FITS_SCHEMA_VERSION, np.int16)),
        "time": pa.array(np.full(rows, np.datetime64(now.astimezone(timezone.utc).replace(tzinfo=None), "us")),
                         pa.timestamp("us", tz="UTC")),
    }
    return conform_fits(pa.table(columns, schema=FITS_SCHEMA))  # values are checked where they are written


def _host(values: Any) -> np.ndarray:
    """A CPU numpy array of a tensor (detached) or array."""
    return values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)


def _nullable(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A column from (rows,) values, NaN stored as null."""
    values = np.asarray(values, dtype=np.float64)
    return pa.array(values, type=type_, mask=np.isnan(values))


def _quality_columns(quality: "FitQuality | None", rows: int) -> dict[str, pa.Array]:
    """The `QUALITY_COLUMNS` of a batch: from its records (NaN = null), or all null without one."""
    if quality is None:
        return {name: pa.nulls(rows, FITS_SCHEMA.field(name).type) for name in QUALITY_COLUMNS}
    parts = _host(quality.part_reprojection).reshape(rows, -1) if rows else np.zeros((0, len(PART_COLUMNS)))
    if parts.shape != (rows, len(PART_COLUMNS)):
        raise FitsTableError(f"the quality record has {parts.shape[1]} parts, the table {len(PART_COLUMNS)}")
    columns = {name: _nullable(parts[:, i], pa.float32()) for i, name in enumerate(PART_COLUMNS)}
    columns["facing"] = _nullable(_host(quality.facing).reshape(rows), pa.float32())
    columns["candidates"] = pa.array(_host(quality.candidates).reshape(rows).astype(np.int16), pa.int16())
    columns["candidate_spread_mm"] = _nullable(_host(quality.candidate_spread).reshape(rows), pa.float32())
    return columns


def _wholebody_parameter_columns(wholebody: WholeBodyFit | None, rows: int) -> dict[str, pa.Array]:
    """The whole-body parameter columns of a batch: from ``wholebody``, or all null for body-only fits."""
    if wholebody is None:
        return {name: pa.nulls(rows, FITS_SCHEMA.field(name).type) for name in WHOLEBODY_PARAMETERS}
    return {name: _fixed(_host(getattr(wholebody, name)), width, name, rows)
            for name, width in WHOLEBODY_PARAMETERS.items()}


def _wholebody_part_columns(wholebody: WholeBodyFit | None, rows: int) -> dict[str, pa.Array]:
    """The hands' and face's reprojection columns (NaN = null), all null without a whole-body record."""
    if wholebody is None or wholebody.part_reprojection is None:
        return {name: pa.nulls(rows, pa.float32()) for name in WHOLEBODY_PART_COLUMNS}
    parts = _host(wholebody.part_reprojection).reshape(rows, -1) if rows else np.zeros((0, len(WHOLEBODY_PARTS)))
    if parts.shape != (rows, len(WHOLEBODY_PARTS)):
        raise FitsTableError(f"the whole-body record has {parts.shape[1]} parts, the table {len(WHOLEBODY_PARTS)} "
                             f"({', '.join(WHOLEBODY_PARTS)})")
    return {name: _nullable(parts[:, i], pa.float32()) for i, name in enumerate(WHOLEBODY_PART_COLUMNS)}


def fits_from_smplify(result: Any, keys: Sequence[str], provenance: FitProvenance, *, intrinsics: Any = None,
                      quality: "FitQuality | None" = None, time: datetime | None = None) -> pa.Table:
    """`fits_batch` from a `fitting.smplify.SMPLifyResult` (pose must already be undone to the canonical frame);
    ``intrinsics`` (B, 4) for image-frame fits; ``quality`` the fits' records (`fitting.quality.fit_quality`)."""
    return fits_batch(keys, _host(result.pose), _host(result.betas), provenance, cam_t=_host(result.cam_t),
                      intrinsics=intrinsics,
                      reprojection_loss=_host(result.reprojection_loss), loss=_host(result.loss),
                      pose_prior=_host(result.pose_prior), angle_prior=_host(result.angle_prior),
                      shape_prior=_host(result.shape_prior), iterations=result.iterations, quality=quality,
                      time=time)


# The list columns of a fit and their widths: a row whose list has another length cannot be stored.
LIST_WIDTHS = {"pose": NUM_POSE, "betas": NUM_BETAS, "cam_t": 3, "intrinsics": NUM_INTRINSICS,
               "reprojection_loss": NUM_JOINTS, **WHOLEBODY_PARAMETERS}
# The values that make a fit: each must be finite wherever it is stored (a NaN pose with a finite loss would
# otherwise become the best fit of its key and block every later valid one).
FIT_VALUE_COLUMNS = ("pose", "betas", "cam_t", "intrinsics") + tuple(WHOLEBODY_PARAMETERS)


def conform_fits(fits: pa.Table) -> pa.Table:
    """``fits`` cast to `FITS_SCHEMA` (same columns, same order), or FitsTableError (a list of the wrong length:
    naming the column, the first such key and the length)."""
    if fits.schema.names != FITS_SCHEMA.names:
        raise FitsTableError(f"fits columns {fits.schema.names} differ from the schema's {FITS_SCHEMA.names}")
    try:
        return fits.cast(FITS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
        for name, width in LIST_WIDTHS.items():
            column = fits[name]
            if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
                    or pa.types.is_fixed_size_list(column.type)):
                continue
            lengths = pc.list_value_length(column)
            wrong = pc.fill_null(pc.not_equal(lengths, width), False)
            if pc.any(wrong).as_py():
                at = pc.index(wrong, True).as_py()
                raise FitsTableError(f"{name} of fit {fits['key'][at].as_py()!r} has {lengths[at].as_py()} values, "
                                     f"the fits table holds {width} ({pc.sum(wrong).as_py()} such row(s)): write "
                                     f"fits of SMPL's {NUM_POSE} pose and {NUM_BETAS} betas") from None
        raise FitsTableError(f"fits do not cast to the fits schema: {err}") from err


def finite_rows(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(N,) bool: whether each row of a list column holds only finite values (a null row holds none: True; a null
    value inside a list is not finite)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [np.ones(0, bool)]
    for chunk in chunks:
        ok = np.ones(len(chunk), bool)
        values = pc.list_flatten(chunk)
        if len(values):
            bad = ~np.isfinite(values.to_numpy(zero_copy_only=False))
            if bad.any():
                ok[pc.list_parent_indices(chunk).to_numpy()[bad]] = False
        parts.append(ok)
    return np.concatenate(parts)


def diverged_rows(fits: pa.Table) -> np.ndarray:
    """(N,) bool: the fits (`FITS_SCHEMA`) that are no fit: a NaN or infinite pose, betas, cam_t, intrinsics or
    scored loss (an unscored, null loss is not one). Such a fit never improves on anything and is never stored:
    writers that compare against best losses leave it out (`fits.table.BestLosses.improved`, the training store),
    and `check_fits` refuses it."""
    bad = ~pc.fill_null(pc.is_finite(fits["loss"]), True).to_numpy(zero_copy_only=False)
    for name in FIT_VALUE_COLUMNS:
        bad |= ~finite_rows(fits[name])
    return bad


def check_fits(fits: pa.Table) -> pa.Table:
    """``fits`` cast to `FITS_SCHEMA` and checked before they are stored: keys, dataset prefixes, sources, frames,
    body model content ids, finite pose, betas, cam_t, intrinsics and loss (`diverged_rows`), list lengths, the
    quality record, beta flags. FitsTableError otherwise, naming the reason, up to three keys and what to do."""
    fits = conform_fits(fits)
    for field in FITS_SCHEMA:
        if not field.nullable and fits[field.name].null_count:
            raise FitsTableError(f"column {field.name} must not hold nulls")

    def refuse(mask: pa.ChunkedArray | pa.Array | np.ndarray, what: str, todo: str = "") -> None:
        bad = fits["key"].filter(mask)
        if len(bad):
            raise FitsTableError(f"{len(bad)} fit(s) {what}, e.g. {bad[:3].to_pylist()}; nothing was written"
                                 + (f": {todo}" if todo else ""))

    refuse(pc.invert(pc.match_substring_regex(fits["key"], KEY_PATTERN.pattern)), "have a malformed key")
    refuse(pc.not_equal(pc.replace_substring_regex(fits["key"], "/.*$", ""), fits["dataset"]),
           "have a dataset other than their key's prefix")
    refuse(pc.invert(pc.is_in(fits["source"], pa.array(SOURCES))), f"have a source outside {SOURCES}")
    refuse(pc.invert(pc.is_in(fits["frame"], pa.array(FRAMES))), f"have a frame outside {FRAMES}")
    unknown = [m for m in pc.unique(fits["body_model_id"]).to_pylist() if not MODEL_ID_PATTERN.match(m)]
    refuse(pc.is_in(fits["body_model_id"], pa.array(unknown, pa.string())),
           f"have a body model id that is no body model's content id ({', '.join(map(repr, unknown[:3]))})",
           "give the model_id of the body model they were fitted with (<family>:<16 hex>; `fitloop model info` "
           "prints it)")
    refuse(pc.not_equal(pc.equal(fits["frame"], "image"), pc.is_valid(fits["intrinsics"])),
           "have intrinsics without frame image, or frame image without intrinsics")
    diverged = "leave diverged fits out (a writer comparing against best losses, `FitsTable.append(best=...)`, " \
               "drops them)"
    for name in FIT_VALUE_COLUMNS:
        refuse(~finite_rows(fits[name]), f"have a NaN or infinite {name}", diverged)
    present = [pc.is_valid(fits[name]) for name in WHOLEBODY_PARAMETERS]
    some, every = present[0], present[0]
    for valid_ in present[1:]:
        some, every = pc.or_(some, valid_), pc.and_(every, valid_)
    refuse(pc.and_(some, pc.invert(every)),
           f"have some whole-body parameters but not all ({', '.join(WHOLEBODY_PARAMETERS)})",
           "a whole-body fit stores all four, a body-only fit none")
    families = pc.replace_substring_regex(fits["body_model_id"], ":.*$", "")
    refuse(pc.and_(some, pc.invert(pc.is_in(families, pa.array(WHOLEBODY_FAMILIES)))),
           f"have hand, jaw, eye poses or an expression for a body model without SMPL-X's tree (whole-body "
           f"families: {', '.join(WHOLEBODY_FAMILIES)})", "store them as body-only fits or name the SMPL-X model")
    if fits["intrinsics"].null_count < fits.num_rows:
        values = pc.list_flatten(pc.drop_null(fits["intrinsics"])).to_numpy().reshape(-1, NUM_INTRINSICS)
        if not (values[:, :2] > 0).all():
            raise FitsTableError("intrinsics must have positive focal lengths (fx, fy)")
    refuse(pc.not_equal(fits["schema_version"], FITS_SCHEMA_VERSION), f"are not schema_version {FITS_SCHEMA_VERSION}")
    refuse(pc.invert(pc.is_finite(fits["loss"])), "have a NaN or infinite loss (null means unscored)", diverged)
    _check_quality(fits, refuse)
    betas = pc.list_flatten(fits["betas"]).to_numpy().reshape(-1, NUM_BETAS)
    extreme = (np.abs(betas) > BETAS_EXTREME_SIGMA).any(axis=1)
    refuse(pc.not_equal(fits["betas_extreme"], pa.chunked_array([extreme])),
           "have betas_extreme inconsistent with betas")
    return fits


def _check_quality(fits: pa.Table, refuse: Any) -> None:
    """The quality record's values: finite where present; distances and spreads >= 0, facing in [-1, 1], at least
    one candidate and a spread only with several; a row without a record (candidates null) holds none of it."""
    record = pc.is_valid(fits["candidates"])
    for name in QUALITY_COLUMNS:
        refuse(pc.and_(pc.invert(record), pc.is_valid(fits[name])), f"have {name} without a quality record "
                                                                     f"(candidates null)")
    for name in PART_COLUMNS + ("candidate_spread_mm",):
        refuse(pc.invert(pc.and_(pc.is_finite(fits[name]), pc.greater_equal(fits[name], 0))),
               f"have a negative, NaN or infinite {name} (null means not measured)")
    refuse(pc.invert(pc.and_(pc.greater_equal(fits["facing"], -1), pc.less_equal(fits["facing"], 1))),
           "have facing outside [-1, 1] (null means not measured)")
    refuse(pc.less(fits["candidates"], 1), "have fewer than 1 candidate")
    refuse(pc.and_(pc.equal(fits["candidates"], 1), pc.is_valid(fits["candidate_spread_mm"])),
           "have a candidate spread with one candidate")
