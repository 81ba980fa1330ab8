"""A shard set and its best fits out in other tools' formats: SPIN's dataset ``.npz``, webdataset tars with the fits,
and posed meshes (.obj/.ply). mmhuman3d's HumanData ``.npz``, which pickles, is `fits.humandata_export`.

**SPIN's dataset .npz** (`export_spin_datasets`): one file per (dataset, split) of the shard set, with the fields
SPIN's ``BaseDataset`` reads (nkolot/SPIN ``datasets/base_dataset.py``; ../shared/SPIN_REFERENCE.md §4.1, §5.1),
one row per sample in shard order:

* ``imgname`` (N,) str: the image path relative to the dataset's image root (the sample's ``image_path``). A video
  frame has no file: it is named the way SPIN's preprocessing of its dataset names it (`spin_imgname`, the frame
  counted from 1): Human3.6M's (``h36m_train.py``) ``images/S1_Directions_1.54138969_000001.jpg``,
  MPI-INF-3DHP's (``mpi_inf_3dhp.py``) ``S1/Seq1/imageFrames/video_0/frame_000001.jpg``; ``extract_frames``
  writes those frames (OpenCV decodes them, `shards.frames.VideoFrames`).
* ``center`` (N, 2) px, ``scale`` (N,) (box side / 200), ``part`` (N, 24, 3) J24 keypoints + confidence, in
  **SPIN's pixel convention for the dataset**: the inverse of the SPIN .npz adapter's ``pixel_offset``
  (`pipelines.adapters.spin_npz`): + 1 px for SPIN's MATLAB-born files (LSP, LSP-original, HR-LSPET, MPII;
  `core.spin.SPIN_NPZ_FILES`), on confident joints and the centre; absent joints stay all zeros.
* ``openpose`` (N, 25, 3): the OpenPose BODY_25 slots as stored (0-based px: SPIN leaves them alone too).
* ``S`` (N, 24, 4) metres + confidence, when any sample of the file has 3D joints (rows without: zeros). Written as
  the shards hold them (SPIN's files are root-centred; its trainer and evaluation centre them again).
* ``pose`` (N, 72) axis-angle, ``shape`` (N, 10), ``has_smpl`` (N,), ``has_fit`` (N,): SMPL parameters by
  `smpl_columns`' rule. A sample with **ground-truth SMPL** (its shard meta ``has_smpl`` and ``smpl_pose``/
  ``smpl_betas``: Human3.6M's MoSh, MPI-INF-3DHP's multi-view fits) gets it, ``has_smpl`` 1, ``has_fit`` 0,
  whatever fit the table holds for it: SPIN's BaseDataset and trainer (and mmhuman3d) read ``has_smpl`` 1 as ground
  truth, and SPIN's trainer puts ground truth over any fit of such a sample anyway (SPIN_REFERENCE.md §7.2 step 9),
  so its fit is never written in its place. A sample without ground truth gets the best fit of one body model and
  frame (default crop, SPIN's fits) as of a table version where one exists and meets the fit filter's bars
  (`fits.quality`): ``has_smpl`` 1, ``has_fit`` 1 (the fit as pseudo-ground truth, what SPIN's fits are for).
  Else 0 and 0 with zeros (SPIN's BaseDataset then uses zeros itself). ``has_fit`` is fitloop's: SPIN reads the
  fields it knows by name and ignores it; a reader that must tell ground truth from fits takes ``has_smpl`` 1 and
  ``has_fit`` 0 as ground truth. No option writes fits over ground truth: the fits of those samples stay in the
  table (``--parquet``; the webdataset export carries both, ``smpl_pose.npy`` and ``fit_*.npy``).

All float64, ``imgname`` a numpy unicode array, as SPIN's own files; written with ``np.savez`` (no pickles: SPIN's
``np.load`` reads it with its default ``allow_pickle=False``). The file name is SPIN's for a (dataset, split) it
knows (``lsp_dataset_test.npz``), else ``<dataset>_<split>.npz``. Beside each file, ``<stem>.fitloop.json`` holds
what made it: the shard set, the table and its version, the body model, frame, bars, pixel offset, the counts of
``smpl`` rows (``ground_truth``, ``fits``, ``none``, and ``fits_under_ground_truth``: fits the table holds for
samples written with their ground truth), and the sample key of every row (SPIN keys rows by position; fitloop by
key, and the SPIN .npz adapter's keys are built from ``imgname``, which loses person ids such as COCO's annotation
id).

**Webdataset tars with fits** (`export_fit_tars`): each shard again, same name, every sample's members as stored
plus its best fit as ``fit_global_orient.npy`` (3,), ``fit_body_pose.npy`` (69,), ``fit_betas.npy`` (10,),
``fit_cam_t.npy`` (3,) float32 and ``fit.json`` (has_fit, has_cam_t, body model, frame, loss, source, run): what
4D-Humans' training tars carry in a pickled ``data.pyd``, as ``.npy``/``.json`` members that webdataset decodes
without pickles. Every sample has every member (zeros and ``has_fit`` false without a fit), so batches collate.
A sample's ground-truth SMPL stays in its own members (``smpl_pose.npy``, ``smpl_betas.npy``, ``json``'s
``has_smpl``), beside its fit, never replaced by it.

**Meshes** (`export_meshes`): the posed mesh of each best fit, ``<out>/<dataset>/<id>.obj`` or ``.ply``, vertices
in metres in the fit's camera (``frame``: crop or image; x right, y down, z forward, OpenCV's axes): the body
model's vertices plus ``cam_t`` (a fit without ``cam_t``, an import, is written at the origin and its header says
so). Faces are the body model's triangles, counter-clockwise seen from outside. Whole-body fits are counted and
left out (posing them needs the SMPL-X hand, jaw and eye parameters: not written yet).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.joints import J24_NAMES, J24_OFFSET, OPENPOSE_NAMES
from core.spin import SPIN_NPZ_FILES
from fits.quality import FitFilter, filter_rows
from fits.schema import NUM_BETAS, NUM_POSE, FitsTableError
from fits.table import FitsTable
from shards.lookup import iter_samples, raw_samples
from shards.reader import list_shards
from shards.sample import encode_npy
from shards.writer import tar_member

# SPIN's file stem of each (dataset, split) it ships, and its pixel offset per dataset (core.spin.SPIN_NPZ_FILES).
SPIN_FILE_STEMS: dict[tuple[str, str], str] = {(ds, split): stem for stem, (ds, split, _) in SPIN_NPZ_FILES.items()}
SPIN_PIXEL_OFFSETS: dict[str, float] = {ds: offset for ds, _, offset in SPIN_NPZ_FILES.values()}
# SPIN h36m_train.py: imgname = 'images/%s_%06d.jpg' % (<subject>_<action>.<camera>, frame + 1), spaces as '_';
# the Human3.6M video lies in <subject>/Videos/, a folder the name leaves out.
SPIN_VIDEO_FOLDER = "Videos"
SPIN_FRAME_DIGITS = 6
# SPIN datasets/preprocess/mpi_inf_3dhp.py (train_data): S<n>/Seq<m>/imageSequence/video_<k>.avi is extracted to
# S<n>/Seq<m>/imageFrames/video_<k>/frame_%06d.jpg (frame + 1), and imgname is that path from the dataset root.
SPIN_3DHP_DATASET = "mpi-inf-3dhp"
SPIN_3DHP_FRAME_FOLDER, SPIN_3DHP_FRAME_PREFIX = "imageFrames", "frame_"
MESH_FORMATS = ("obj", "ply")
NUM_J24, NUM_OPENPOSE = len(J24_NAMES), len(OPENPOSE_NAMES)


def _no_stage(name: str) -> None:
    return None


def spin_imgname(image_path: str, image_frame: int | None, dataset: str) -> str:
    """SPIN's ``imgname`` of a sample of ``dataset``: its image path, or for frame ``image_frame`` (0-based) of a
    video, the name SPIN's preprocessing gives the extracted frame:

    * MPI-INF-3DHP (`SPIN_3DHP_DATASET`): ``S1/Seq1/imageSequence/video_0.avi``, frame 0 →
      ``S1/Seq1/imageFrames/video_0/frame_000001.jpg`` (the video's folder's parent, `SPIN_3DHP_FRAME_FOLDER`, the
      video's stem, the frame + 1);
    * any other (Human3.6M's): ``S1/Videos/Directions 1.54138969.mp4``, frame 0 → ``images/S1_Directions_1.
      54138969_000001.jpg`` (the folders above the video but `SPIN_VIDEO_FOLDER`, the video's stem, the frame + 1).
    """
    if image_frame is None:
        return image_path
    path = PurePosixPath(image_path)
    number = f"{image_frame + 1:0{SPIN_FRAME_DIGITS}d}"
    if dataset == SPIN_3DHP_DATASET:
        return str(path.parent.parent / SPIN_3DHP_FRAME_FOLDER / path.stem / f"{SPIN_3DHP_FRAME_PREFIX}{number}.jpg")
    parts = [p for p in path.parent.parts if p not in (SPIN_VIDEO_FOLDER, ".")] + [path.stem]
    return f"images/{'_'.join(p.replace(' ', '_') for p in parts)}_{number}.jpg"


def spin_file_name(dataset: str, split: str) -> str:
    """The .npz name of a (dataset, split): SPIN's own where it ships one, else ``<dataset>_<split>.npz``."""
    return f"{SPIN_FILE_STEMS.get((dataset, split), f'{dataset}_{split}')}.npz"


def best_view(table: FitsTable, *, body_model_id: str | None, frame: str | None, version: int | None,
              timestamp: datetime | None, fit_filter: FitFilter, dataset: str | None = None) -> tuple[pa.Table, int]:
    """(the best fits that meet ``fit_filter``, how many best fits it left out), of one body model and frame."""
    best = table.best(version=version, timestamp=timestamp, dataset=dataset, body_model_id=body_model_id,
                      frame=frame)
    kept, _ = filter_rows(best, fit_filter)
    return kept, best.num_rows - kept.num_rows


@dataclass
class BestArrays:
    """The best fits of one body model and frame as arrays (`best_arrays`): ``pose`` (M, 72) and ``betas``
    (M, 10) axis-angle, the table's dtype, ``where`` each fit's key → row, how many best fits the bars left out."""

    pose: np.ndarray
    betas: np.ndarray
    where: dict[str, int]
    body_model_id: str | None
    filtered: int

    def rows_of(self, keys: list[str]) -> np.ndarray:
        """(N,) int64: the row of each key's fit, -1 for a key without one."""
        return np.array([self.where.get(key, -1) for key in keys], np.int64)


def best_arrays(table: FitsTable, *, body_model_id: str | None, frame: str | None, version: int | None,
                timestamp: datetime | None, fit_filter: FitFilter) -> BestArrays:
    """`best_view` as arrays; ``body_model_id`` the fits' own where the table has any, else the one asked for."""
    best, filtered = best_view(table, body_model_id=body_model_id, frame=frame, version=version,
                               timestamp=timestamp, fit_filter=fit_filter)
    models = best["body_model_id"].unique().to_pylist()
    return BestArrays(list_values(best["pose"], NUM_POSE), list_values(best["betas"], NUM_BETAS),
                      {key: i for i, key in enumerate(best["key"].to_pylist())},
                      models[0] if models else body_model_id, filtered)


def list_values(column: pa.ChunkedArray, width: int) -> np.ndarray:
    """A fixed-width list column (pose, betas, ...) as an (N, width) array of its value type."""
    return pc.list_flatten(column.combine_chunks()).to_numpy(zero_copy_only=False).reshape(-1, width)


@dataclass
class SplitRows:
    """The samples of one (dataset, split) of a shard set, in shard order (`read_split_rows`): keys, SPIN's
    ``imgname`` (`spin_imgname`), box centre (px) and scale (side / 200), the 49 canonical 2D keypoints (49, 3) px
    and 3D joints (49, 4) m or None, float64, the ground-truth SMPL pose (72,) axis-angle and betas (10,) float32
    or None (a sample whose meta says ``has_smpl``), and the video frames the names stand for."""

    keys: list[str] = field(default_factory=list)
    imgname: list[str] = field(default_factory=list)
    center: list[np.ndarray] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    keypoints: list[np.ndarray] = field(default_factory=list)
    joints_3d: list[np.ndarray | None] = field(default_factory=list)
    gt_pose: list[np.ndarray | None] = field(default_factory=list)
    gt_betas: list[np.ndarray | None] = field(default_factory=list)
    frames: list[tuple[Path, str, int]] = field(default_factory=list)   # (video, imgname, frame) to extract


def read_split_rows(shard_dir: Path) -> dict[tuple[str, str], SplitRows]:
    """Every sample of the shard set ``shard_dir``, grouped by (dataset, split), sorted; an empty set raises
    `FitsTableError`."""
    files: dict[tuple[str, str], SplitRows] = defaultdict(SplitRows)
    for sample in iter_samples(Path(shard_dir)):
        meta = sample.meta
        rows = files[(meta["dataset"], meta["split"])]
        name = spin_imgname(meta["image_path"], meta.get("image_frame"), meta["dataset"])
        rows.keys.append(sample.key)
        rows.imgname.append(name)
        rows.center.append(np.asarray(meta["center"], np.float64))
        rows.scale.append(float(meta["scale"]))
        rows.keypoints.append(np.asarray(sample.keypoints_2d, np.float64))
        rows.joints_3d.append(None if sample.joints_3d is None else np.asarray(sample.joints_3d, np.float64))
        rows.gt_pose.append(sample.smpl_pose if sample.has_true_smpl else None)
        rows.gt_betas.append(sample.smpl_betas if sample.has_true_smpl else None)
        if meta.get("image_frame") is not None:
            rows.frames.append((Path(meta["image_root"]) / meta["image_path"], name, int(meta["image_frame"])))
    if not files:
        raise FitsTableError(f"{shard_dir}: the shard set holds no samples; nothing to export")
    return dict(sorted(files.items()))


def read_for_export(table: FitsTable, shard_dir: Path, *, body_model_id: str | None, frame: str | None,
                    version: int | None, timestamp: datetime | None, fit_filter: FitFilter,
                    stage: Callable[[str], None]) -> tuple[BestArrays, dict[tuple[str, str], SplitRows]]:
    """What an export of a shard set with its fits reads: the best fits (stage "best", `best_arrays`), then the
    samples by (dataset, split) (stage "read", `read_split_rows`)."""
    stage("best")
    fits = best_arrays(table, body_model_id=body_model_id, frame=frame, version=version, timestamp=timestamp,
                       fit_filter=fit_filter)
    stage("read")
    return fits, read_split_rows(shard_dir)


def export_spin_datasets(table: FitsTable, shard_dir: Path, out: Path, *, body_model_id: str | None = None,
                         frame: str = "crop", version: int | None = None, timestamp: datetime | None = None,
                         fit_filter: FitFilter = FitFilter(), pixel_offset: float | None = None,
                         extract_frames: Path | None = None,
                         on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the shard set ``shard_dir`` with the best fits of ``table`` as SPIN's dataset .npz files under ``out``
    (module docstring), one per (dataset, split). ``pixel_offset``: added to ``part`` and ``center`` of every file
    (default: SPIN's for the dataset, 0 for one SPIN does not ship). ``extract_frames``: a folder to write the
    video frames the files name (as ``<folder>/<imgname>``). Returns ``{"files": [{"path", "dataset", "split",
    "rows", "ground_truth", "fits", "none", "fits_under_ground_truth", "joints_3d"}], "filtered", "frames",
    "body_model_id", "frame"}`` (the counts: `SmplColumns.counts`)."""
    stage = on_stage or _no_stage
    fits, files = read_for_export(table, shard_dir, body_model_id=body_model_id, frame=frame, version=version,
                                  timestamp=timestamp, fit_filter=fit_filter, stage=stage)
    stage("write")
    out = Path(out)
    written, frames = [], 0
    for (dataset, split), rows in files.items():
        offset = pixel_offset if pixel_offset is not None else SPIN_PIXEL_OFFSETS.get(dataset, 0.0)
        smpl = smpl_columns(rows, fits.rows_of(rows.keys), fits.pose, fits.betas, np.float64)
        arrays = _spin_arrays(rows, offset, smpl)
        path = out / spin_file_name(dataset, split)
        _write_npz(path, arrays)
        write_json(path.with_name(f"{path.stem}.fitloop.json"), {
            "format": "SPIN dataset .npz (nkolot/SPIN datasets/base_dataset.py)", "shards": str(shard_dir),
            "table": str(table.path), "version": version, "timestamp": None if timestamp is None else str(timestamp),
            "body_model_id": fits.body_model_id, "frame": frame,
            "fit_filter": fit_filter.describe() if fit_filter.active else None, "pixel_offset": offset,
            "smpl": smpl.counts(), "smpl_rule": SMPL_RULE, "keys": rows.keys})
        written.append({"path": str(path), "dataset": dataset, "split": split, "rows": len(rows.keys),
                        **smpl.counts(), "joints_3d": "S" in arrays})
        if extract_frames is not None and rows.frames:
            frames += write_frames(rows.frames, Path(extract_frames))
    return {"files": written, "filtered": fits.filtered, "frames": frames, "body_model_id": fits.body_model_id,
            "frame": frame}


SMPL_RULE = ("has_smpl 1 and has_fit 0: the sample's ground-truth SMPL; has_smpl 1 and has_fit 1: the table's "
             "best fit (no ground truth); has_smpl 0: neither (zeros)")


@dataclass
class SmplColumns:
    """The SMPL parameters an export writes for one file's rows (`smpl_columns`): ``pose`` (N, 72) axis-angle and
    ``betas`` (N, 10); ``ground_truth`` and ``fit`` (N,) bool, which rows hold the sample's ground truth and which
    the table's best fit (never both; neither: zeros); ``fits_under_ground_truth``: rows whose sample has a best fit
    that was not written because the sample has ground truth."""

    pose: np.ndarray
    betas: np.ndarray
    ground_truth: np.ndarray
    fit: np.ndarray
    fits_under_ground_truth: int

    @property
    def has_smpl(self) -> np.ndarray:
        """(N,) bool: rows with SMPL parameters, ground truth or fit (SPIN's and mmhuman3d's ``has_smpl``)."""
        return self.ground_truth | self.fit

    def counts(self) -> dict[str, int]:
        """``{"ground_truth", "fits", "none", "fits_under_ground_truth"}``: rows of each kind."""
        return {"ground_truth": int(self.ground_truth.sum()), "fits": int(self.fit.sum()),
                "none": int((~self.has_smpl).sum()), "fits_under_ground_truth": self.fits_under_ground_truth}


def smpl_columns(rows: SplitRows, fit_rows: np.ndarray, pose: np.ndarray, betas: np.ndarray,
                 dtype: Any) -> SmplColumns:
    """Each row's SMPL parameters, in ``dtype``: the sample's ground truth where it has one (``rows.gt_pose``),
    else its best fit (``fit_rows`` (N,), `BestArrays.rows_of`: row into ``pose`` (M, 72) and ``betas`` (M, 10),
    -1 for none), else zeros. Ground truth is never replaced by a fit: SPIN and mmhuman3d read ``has_smpl`` 1 as
    ground truth, and SPIN's trainer overrides a fit with ground truth wherever it has one."""
    count = len(rows.keys)
    ground_truth = np.array([p is not None for p in rows.gt_pose], bool)
    has_fit = np.asarray(fit_rows) >= 0
    fit = has_fit & ~ground_truth
    out_pose = np.zeros((count, NUM_POSE), dtype)
    out_betas = np.zeros((count, NUM_BETAS), dtype)
    out_pose[fit] = pose[fit_rows[fit]]
    out_betas[fit] = betas[fit_rows[fit]]
    for i in np.flatnonzero(ground_truth):
        out_pose[i] = rows.gt_pose[i]
        out_betas[i] = rows.gt_betas[i]
    return SmplColumns(out_pose, out_betas, ground_truth, fit, int((has_fit & ground_truth).sum()))


def _spin_arrays(rows: SplitRows, offset: float, smpl: SmplColumns) -> dict[str, np.ndarray]:
    """SPIN's fields of one file's rows (module docstring); ``smpl`` (`smpl_columns`, float64)."""
    keypoints = np.stack(rows.keypoints)
    part = keypoints[:, J24_OFFSET:].copy()
    part[..., :2][part[..., 2] > 0] += offset          # the adapter subtracts it from confident joints only
    arrays = {"imgname": np.array(rows.imgname, dtype=str), "center": np.stack(rows.center) + offset,
              "scale": np.array(rows.scale, np.float64), "part": part,
              "openpose": keypoints[:, :J24_OFFSET].copy()}
    if any(j is not None for j in rows.joints_3d):
        arrays["S"] = np.stack([np.zeros((NUM_J24, 4)) if j is None else j[J24_OFFSET:] for j in rows.joints_3d])
    arrays["pose"], arrays["shape"] = smpl.pose, smpl.betas
    arrays["has_smpl"] = smpl.has_smpl.astype(np.float64)
    arrays["has_fit"] = smpl.fit.astype(np.float64)   # fitloop's: SPIN reads its fields by name and ignores it
    return arrays


def atomic_tmp(path: Path) -> Path:
    """The temporary name to write ``path`` under before renaming it into place (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = atomic_tmp(path)
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    tmp.replace(path)


def write_json(path: Path, value: dict[str, Any]) -> None:
    """``value`` as indented JSON at ``path``, atomically."""
    tmp = atomic_tmp(path)
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


def write_frames(frames: list[tuple[Path, str, int]], out: Path) -> int:
    """Write each (video, imgname, 0-based frame) as the JPEG ``out/imgname``, decoding every video once in frame
    order (`shards.frames.VideoFrames`); returns how many were written. A frame the video lacks: `VideoError`."""
    from shards.frames import VideoFrames  # imported here: OpenCV only for video sources

    by_video: dict[Path, list[tuple[int, str]]] = defaultdict(list)
    for video, name, index in frames:
        by_video[video].append((index, name))
    for video, wanted in by_video.items():
        with VideoFrames(video) as reader:
            for index, name in sorted(wanted):
                path = out / name
                tmp = atomic_tmp(path)
                reader.frame(index).save(tmp, format="JPEG", quality=95)
                tmp.replace(path)
    return len(frames)


# --- webdataset tars with fits ---------------------------------------------------------------------------------
FIT_MEMBERS: dict[str, tuple[int, ...]] = {  # suffix -> shape (float32), always present; zeros without a fit
    "fit_global_orient.npy": (3,), "fit_body_pose.npy": (NUM_POSE - 3,), "fit_betas.npy": (NUM_BETAS,),
    "fit_cam_t.npy": (3,)}


def fit_members(fit: dict[str, Any] | None) -> dict[str, bytes]:
    """The members a sample gains (suffix -> bytes): `FIT_MEMBERS` as ``.npy`` (float32, no pickles) and
    ``fit.json`` (``has_fit``, ``has_cam_t``, ``body_model_id``, ``frame``, ``loss``, ``source``, ``run_id``) of one
    best-fit row (`fits.schema.FITS_SCHEMA` as a dict), or of no fit (zeros, ``has_fit`` false)."""
    pose = np.zeros(NUM_POSE, np.float32) if fit is None else np.asarray(fit["pose"], np.float32)
    cam_t = None if fit is None else fit["cam_t"]
    arrays = {"fit_global_orient.npy": pose[:3], "fit_body_pose.npy": pose[3:],
              "fit_betas.npy": np.zeros(NUM_BETAS, np.float32) if fit is None else np.asarray(fit["betas"],
                                                                                              np.float32),
              "fit_cam_t.npy": np.zeros(3, np.float32) if cam_t is None else np.asarray(cam_t, np.float32)}
    members = {suffix: encode_npy(value) for suffix, value in arrays.items()}
    info = {"has_fit": fit is not None, "has_cam_t": cam_t is not None}
    if fit is not None:
        info.update({name: fit[name] for name in ("body_model_id", "frame", "loss", "source", "run_id")})
    members["fit.json"] = json.dumps(info, sort_keys=True).encode("utf-8")
    return members


def export_fit_tars(table: FitsTable, shard_dir: Path, out: Path, *, body_model_id: str | None = None,
                    frame: str = "crop", version: int | None = None, timestamp: datetime | None = None,
                    fit_filter: FitFilter = FitFilter(),
                    on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write each shard of ``shard_dir`` again under ``out`` (same name), every sample's members as stored (the
    crop ``jpg``, ``json``, ``keypoints_2d.npy``, ... `shards.sample`) plus its best fit (`fit_members`), so a
    webdataset pipeline (``wds.WebDataset(url).decode()``) reads crop, keypoints and fit together: 4D-Humans'
    training tars without their pickled ``data.pyd``. Members sorted, mtime 0. Returns ``{"shards", "samples",
    "fits", "filtered", "body_model_id", "frame"}``."""
    stage = on_stage or _no_stage
    stage("best")
    best, filtered = best_view(table, body_model_id=body_model_id, frame=frame, version=version,
                               timestamp=timestamp, fit_filter=fit_filter)
    fits = {row["key"]: row for row in best.select(["key", "pose", "betas", "cam_t", "body_model_id", "frame",
                                                    "loss", "source", "run_id"]).to_pylist()}
    models = best["body_model_id"].unique().to_pylist()
    stage("write")
    out = Path(out)
    shards = samples = with_fit = 0
    for shard in list_shards(Path(shard_dir)):
        path = out / shard.path.name
        tmp = atomic_tmp(path)
        with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for key, members in raw_samples(shard.path):
                fit = fits.get(key)
                members = {**members, **fit_members(fit)}
                for suffix in sorted(members):
                    tar.addfile(tar_member(f"{key}.{suffix}", len(members[suffix])), io.BytesIO(members[suffix]))
                samples += 1
                with_fit += fit is not None
        tmp.replace(path)
        shards += 1
    return {"shards": shards, "samples": samples, "fits": with_fit, "filtered": filtered,
            "body_model_id": models[0] if models else body_model_id, "frame": frame}


# --- meshes ---------------------------------------------------------------------------------------------------------
def mesh_path(out: Path, key: str, fmt: str) -> Path:
    """Where the mesh of sample ``key`` (``<dataset>/<id>``) goes under ``out``."""
    dataset, _, sample = key.partition("/")
    return out / dataset / f"{sample}.{fmt}"


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray, comments: list[str]) -> None:
    """A Wavefront .obj of a triangle mesh: (V, 3) vertices, (F, 3) 0-based faces; ``comments`` as ``#`` lines."""
    lines = [f"# {c}" for c in comments]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in np.asarray(vertices, np.float64)]
    lines += [f"f {a} {b} {c}" for a, b, c in np.asarray(faces, np.int64) + 1]
    tmp = atomic_tmp(path)
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray, comments: list[str]) -> None:
    """A binary little-endian .ply of a triangle mesh: float32 vertices, uint8-counted int32 face lists."""
    faces = np.asarray(faces, np.int64)
    header = ["ply", "format binary_little_endian 1.0", *[f"comment {c}" for c in comments],
              f"element vertex {len(vertices)}", "property float x", "property float y", "property float z",
              f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    face_rows = np.zeros(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    face_rows["n"], face_rows["v"] = 3, faces
    tmp = atomic_tmp(path)
    with open(tmp, "wb") as handle:
        handle.write(("\n".join(header) + "\n").encode("ascii"))
        handle.write(np.asarray(vertices, "<f4").tobytes())
        handle.write(face_rows.tobytes())
    tmp.replace(path)


def export_meshes(table: FitsTable, body, out: Path, *, fmt: str = "obj", keys: list[str] | None = None,
                  dataset: str | None = None, frame: str | None = None, version: int | None = None,
                  timestamp: datetime | None = None, fit_filter: FitFilter = FitFilter(), batch_size: int = 64,
                  on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the posed mesh of every best fit of ``body`` (a `fitting.body_model.BodyModel`: the fits of its
    content id) and ``frame`` as of a version, or of ``keys`` only, under ``out`` (module docstring). Returns
    ``{"written", "wholebody", "filtered", "missing", "out", "frame"}``; ``missing``: keys asked for without a
    fit that meets the bars."""
    import torch  # here: the body model is torch

    if fmt not in MESH_FORMATS:
        raise FitsTableError(f"mesh format {fmt!r}: choose one of {', '.join(MESH_FORMATS)}")
    stage = on_stage or _no_stage
    stage("best")
    best, filtered = best_view(table, body_model_id=body.model_id, frame=frame, version=version,
                               timestamp=timestamp, fit_filter=fit_filter, dataset=dataset)
    missing: list[str] = []
    if keys is not None:
        wanted = pa.array(sorted(set(keys)), pa.string())
        best = best.filter(pc.is_in(best["key"], value_set=wanted))
        missing = sorted(set(keys) - set(best["key"].to_pylist()))
    whole = pc.is_valid(best["hand_pose"])
    wholebody = int(pc.sum(whole).as_py() or 0)
    best = best.filter(pc.invert(whole))
    stage("write")
    write = write_obj if fmt == "obj" else write_ply
    out = Path(out)
    faces = body.faces
    for start in range(0, best.num_rows, batch_size):
        chunk = best.slice(start, batch_size)
        pose = torch.tensor(list_values(chunk["pose"], NUM_POSE), dtype=torch.float32)
        betas = torch.tensor(list_values(chunk["betas"], NUM_BETAS)[:, :body.num_betas], dtype=torch.float32)
        cam_t = [t for t in chunk["cam_t"].to_pylist()]
        transl = torch.as_tensor([t if t is not None else [0.0, 0.0, 0.0] for t in cam_t], dtype=torch.float32)
        with torch.no_grad():
            vertices = body(betas=betas, body_pose=pose[:, 3:], global_orient=pose[:, :3],
                            transl=transl).vertices.numpy()
        for i, (key, fit_frame) in enumerate(zip(chunk["key"].to_pylist(), chunk["frame"].to_pylist())):
            comments = [f"fitloop fit {key}", f"body_model_id {body.model_id}",
                        f"frame {fit_frame}: metres, the fit's camera (x right, y down, z forward)"
                        + ("" if cam_t[i] is not None else "; no cam_t stored: at the origin")]
            write(mesh_path(out, key, fmt), vertices[i], faces, comments)
    return {"written": best.num_rows, "wholebody": wholebody, "filtered": filtered, "missing": missing,
            "out": str(out), "frame": frame}
