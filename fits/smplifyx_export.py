"""Whole-body fits out of a fits table in the layout SMPLify-X users read: one file of SMPL-X parameters per person.

SMPLify-X (vchoutas/smplify-x, ``fit_single_frame``) writes ``results/<image>/<person:03d>.pkl``: a pickled dict
of the body model's parameters, each a (1, n) float32 array, and the camera's rotation and translation. fitloop
writes the same arrays under the same names, without pickles (`SMPLIFYX_RESULT_SHAPES`): one ``.npz`` (or
``.json``) per sample key, ``<out>/<dataset>/<id>.npz`` (the key ``<dataset>/<id>``, `shards.schema.make_key`;
its person index is part of the id). Differences, all stated in the file too:

* hand poses are full axis-angle (1, 45) per hand, SMPL-X's (MANO's) joint order, with no hand mean added — as
  smplx's ``SMPLX(use_pca=False, flat_hand_mean=True)`` takes them; SMPLify-X writes PCA coefficients when it ran
  with ``use_pca`` (its default, 12 components), which mean something only with the model file's components;
* SMPLify-X's camera is a pinhole with focal length 5000 px at the image centre, and its file does not say so:
  fitloop adds ``focal_length`` (1, 2) and ``camera_center`` (1, 2) px and the ``frame`` they belong to (``crop``:
  SPIN's 224 px fit frame, ``image``: the original image's camera, `fits.schema`), so the translation is usable;
* ``body_model_id`` and ``key`` say which model the parameters belong to and which sample they fit; a fit stored
  without a translation (an import) has ``camera_translation`` NaN, never a made-up one.

Only whole-body fits (`fits.schema.WHOLEBODY_COLUMNS` set) are written; body-only fits of the same model are
counted and left out (an SMPL-X fit without hands is no SMPLify-X result). One body model and one frame per export,
as every best view (`fits.table`).
"""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.frames import FIT_CENTER, FIT_FOCAL
from fits.quality import FitFilter, filter_rows
from fits.schema import NUM_BETAS, WHOLEBODY_PARAMETERS, FitsTableError
from fits.table import FitsTable

# SMPLify-X's result dict (its fit_single_frame: the body model's named parameters, then the camera's), each
# (1, n) float32; hand poses here are full axis-angle (module docstring).
SMPLIFYX_RESULT_SHAPES: dict[str, tuple[int, ...]] = {
    "camera_rotation": (1, 3, 3), "camera_translation": (1, 3), "betas": (1, NUM_BETAS), "global_orient": (1, 3),
    "body_pose": (1, 63), "left_hand_pose": (1, 45), "right_hand_pose": (1, 45), "jaw_pose": (1, 3),
    "leye_pose": (1, 3), "reye_pose": (1, 3), "expression": (1, WHOLEBODY_PARAMETERS["expression"]),
}
# What fitloop adds so the file is complete: the camera's intrinsics (px) and where the parameters come from.
EXTRA_SHAPES: dict[str, tuple[int, ...]] = {"focal_length": (1, 2), "camera_center": (1, 2)}
FORMATS = ("npz", "json")
HAND_POSE_CONVENTION = "axis-angle, 15 joints x 3, SMPL-X (MANO) joint order, no PCA, no hand mean (flat_hand_mean)"


def _values(column: pa.ChunkedArray, width: int) -> np.ndarray:
    return pc.list_flatten(column.combine_chunks()).to_numpy(zero_copy_only=False).reshape(-1, width)


def smplifyx_results(best: pa.Table) -> list[dict[str, np.ndarray | str]]:
    """One SMPLify-X-layout result per row of ``best`` (whole-body fits of `FITS_SCHEMA`, one body model and
    frame), in row order: the arrays of `SMPLIFYX_RESULT_SHAPES` and `EXTRA_SHAPES` (float32), and the strings
    key, body_model_id, frame, hand_pose_convention."""
    rows = best.num_rows
    pose = _values(best["pose"], 72).astype(np.float32)
    hands = _values(best["hand_pose"], WHOLEBODY_PARAMETERS["hand_pose"]).astype(np.float32)
    eyes = _values(best["eye_pose"], WHOLEBODY_PARAMETERS["eye_pose"]).astype(np.float32)
    arrays = {
        "camera_rotation": np.broadcast_to(np.eye(3, dtype=np.float32), (rows, 3, 3)),
        "camera_translation": np.array([t if t is not None else [np.nan] * 3 for t in best["cam_t"].to_pylist()],
                                       np.float32).reshape(rows, 3),
        "betas": _values(best["betas"], NUM_BETAS).astype(np.float32),
        "global_orient": pose[:, :3], "body_pose": pose[:, 3:66],
        "left_hand_pose": hands[:, :45], "right_hand_pose": hands[:, 45:],
        "jaw_pose": _values(best["jaw_pose"], 3).astype(np.float32),
        "leye_pose": eyes[:, :3], "reye_pose": eyes[:, 3:],
        "expression": _values(best["expression"], WHOLEBODY_PARAMETERS["expression"]).astype(np.float32),
    }
    frames = best["frame"].to_pylist()
    intrinsics = best["intrinsics"].to_pylist()
    out = []
    for i in range(rows):
        fx, fy, cx, cy = intrinsics[i] if frames[i] == "image" else (FIT_FOCAL, FIT_FOCAL, FIT_CENTER, FIT_CENTER)
        result: dict[str, np.ndarray | str] = {name: values[i][None].copy() for name, values in arrays.items()}
        result["focal_length"] = np.array([[fx, fy]], np.float32)
        result["camera_center"] = np.array([[cx, cy]], np.float32)
        result.update(key=best["key"][i].as_py(), body_model_id=best["body_model_id"][i].as_py(), frame=frames[i],
                      hand_pose_convention=HAND_POSE_CONVENTION)
        out.append(result)
    return out


def result_path(out: Path, key: str, fmt: str) -> Path:
    """Where the result of sample ``key`` (``<dataset>/<id>``) goes under ``out``."""
    dataset, _, sample = key.partition("/")
    return out / dataset / f"{sample}.{fmt}"


def write_result(path: Path, result: dict[str, np.ndarray | str], fmt: str) -> None:
    """Write one result atomically (temporary name, then rename): npz without pickles, or JSON of nested lists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if fmt == "npz":
        with open(tmp, "wb") as handle:
            np.savez(handle, **{name: np.asarray(value) for name, value in result.items()})
    else:
        tmp.write_text(json.dumps({name: value.tolist() if isinstance(value, np.ndarray) else value
                                   for name, value in result.items()}, indent=1))
    tmp.replace(path)


def read_result(path: str | Path) -> dict[str, np.ndarray | str]:
    """A result written by `write_result` (npz or json), arrays as float32, strings as str."""
    path = Path(path)
    if path.suffix == ".json":
        raw = json.loads(path.read_text())
    else:
        with np.load(path, allow_pickle=False) as data:
            raw = {name: data[name] for name in data.files}
    return {name: (str(value) if np.asarray(value).dtype.kind in "US" else np.asarray(value, np.float32))
            for name, value in raw.items()}


def export_smplifyx(table: FitsTable, out: Path, *, fmt: str = "npz", dataset: str | None = None,
                    body_model_id: str | None = None, frame: str | None = None, version: int | None = None,
                    timestamp: datetime | None = None, fit_filter: FitFilter = FitFilter(),
                    on_stage: Callable[[str], None] | None = None) -> dict:
    """Write the best whole-body fits of one body model and frame (as of a version) as SMPLify-X-layout files under
    ``out`` (module docstring). Returns counts: ``written``, ``body_only`` (best fits without whole-body
    parameters, left out), ``filtered`` (below ``fit_filter``'s bars), and ``out``, ``body_model_id``, ``frame``."""
    if fmt not in FORMATS:
        raise FitsTableError(f"SMPLify-X export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    stage = on_stage or (lambda name: None)
    stage("best")
    best = table.best(version=version, timestamp=timestamp, dataset=dataset, body_model_id=body_model_id,
                      frame=frame)
    found = best.num_rows
    best, _ = filter_rows(best, fit_filter)
    filtered = found - best.num_rows
    whole = pc.is_valid(best["hand_pose"])
    body_only = best.num_rows - pc.sum(whole).as_py() if best.num_rows else 0
    best = best.filter(whole)
    if found and not best.num_rows:
        raise FitsTableError(f"none of the {found} best fits is a whole-body fit ({body_only} body-only"
                             + (f", {filtered} below the bars {fit_filter.describe()}" if filtered else "")
                             + "): seed SMPL-X fits to whole-body keypoints first, or export body fits with "
                               "--parquet")
    stage("write")
    out = Path(out)
    for result in smplifyx_results(best):
        write_result(result_path(out, str(result["key"]), fmt), result, fmt)
    models = best["body_model_id"].unique().to_pylist()
    frames = best["frame"].unique().to_pylist()
    return {"written": best.num_rows, "body_only": int(body_only), "filtered": filtered, "out": str(out),
            "body_model_id": models[0] if models else body_model_id, "frame": frames[0] if frames else frame}
