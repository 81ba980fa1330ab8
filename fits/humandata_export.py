"""A shard set and its best fits out as mmhuman3d's HumanData ``.npz``: the annotation file mmhuman3d's
``HumanImageDataset`` trains and evaluates from (open-mmlab/mmhuman3d ``mmhuman3d/data/datasets/
human_image_dataset.py``, commit 40300c1).

**Why an opt-in.** ``HumanData.dump`` (``mmhuman3d/data/data_structures/human_data.py``, commit 91448cd) writes
its dict with ``np.savez_compressed``, so its dict-valued keys (``smpl``) become 0-d object arrays, which numpy
pickles; ``HumanData.load`` reads the file with ``np.load(allow_pickle=True)`` and turns every 0-d array back
into its value with ``.item()``, and turns a non-0-d value of a supported key into the key's type
(``SUPPORTED_KEYS[key]['type'](value)``: ``dict(array)`` for ``smpl``, which needs an array of (name, value) pairs
and cannot give arrays of different shapes). No pickle-free array loads as the ``smpl`` dict, and mmhuman3d's
datasets read ``human_data['smpl']['body_pose']``, so the file is written exactly as ``dump`` writes it, and only
when the caller opts in (`export_humandata` ``allow_pickle=True``; ``fitloop fits export --format humandata
--allow-pickle``). The one pickled value is a plain dict of float arrays (`check_plain`); every other key loads
with ``allow_pickle=False``.

**The file**, one per (dataset, split) of the shard set, ``<dataset>_<split>.npz`` (mmhuman3d's names:
``lsp_train.npz``), one row per sample in shard order (``__temporal_len__``):

* ``image_path`` (N,) str: SPIN's ``imgname`` (`fits.exports.spin_imgname`: the image path relative to the image
  root, a video frame named as SPIN's preprocessing names it), which mmhuman3d joins to
  ``<data_prefix>/datasets/<dataset_name>/``;
* ``bbox_xywh`` (N, 5) px: SPIN's square box, side ``scale * 200`` around ``center`` (``x, y`` its top-left), and a
  confidence 1, as mmhuman3d's converters write it; ``HumanImageDataset`` turns it back into ``center`` and the
  side ``max(w, h)``;
* ``keypoints2d`` (N, 190, 3) px + confidence and ``keypoints2d_mask`` (190,) uint8, in mmhuman3d's ``human_data``
  convention (`HUMAN_DATA_KEYPOINTS`), the convention ``HumanImageDataset`` converts from: fitloop's 49 canonical
  joints are mmhuman3d's ``smpl_49`` (`SMPL_49_KEYPOINTS`, same names in the same order as SPIN's
  ``JOINT_NAMES``), placed by name as ``convert_kps(k, src='smpl_49', dst='human_data')`` places them; the mask
  is 1 on those 49 slots. Pixels as the shards hold them (0-based; no per-dataset offset);
* ``keypoints3d`` (N, 190, 4) metres + confidence and ``keypoints3d_mask``, the same way, when any sample of the
  file has 3D joints (rows without: zeros);
* ``smpl``: ``{'global_orient': (N, 3), 'body_pose': (N, 23, 3), 'betas': (N, 10)}`` axis-angle, by the rule of
  SPIN's export (`fits.exports.smpl_columns`): the sample's ground-truth SMPL where it has one (whatever fit the
  table holds for it), else the best fit of one body model and frame (default crop) as of a table version, meeting
  the fit filter's bars; zeros without either;
* ``has_smpl`` (N,) int: 1 where the row has SMPL parameters, ground truth or fit (``HumanImageDataset`` reads it,
  else assumes every row has; mmhuman3d's converters write 1 for ground truth, and so does this for those rows);
* ``has_fit`` (N,) int: 1 where they are the table's fit, not ground truth: fitloop's key (``HumanData.load`` keeps
  a key it does not know as it is, with ``__key_strict__`` False; mmhuman3d's datasets never read it);
* ``config`` str: the dataset name; ``__key_strict__`` False, ``__temporal_len__`` N, ``__keypoints_compressed__``
  False: the attributes ``dump`` saves.

Beside it, ``<stem>.fitloop.json`` records the shard set, table, version, body model, frame, bars, the counts of
``smpl`` rows (ground truth, fits, none, fits under ground truth: `fits.exports.SmplColumns.counts`) and the sample
key of every row (HumanData keys rows by position).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.joints import J24_NAMES, NUM_JOINTS, OPENPOSE_NAMES
from fits.exports import SMPL_RULE, SmplColumns, SplitRows, atomic_tmp, read_for_export, smpl_columns, write_json
from fits.quality import FitFilter
from fits.schema import FitsTableError
from fits.table import FitsTable

HUMANDATA_SOURCE = "open-mmlab/mmhuman3d mmhuman3d/data/data_structures/human_data.py (commit 91448cd)"
PICKLE_REFUSAL = ("HumanData's .npz pickles its smpl dict (HumanData.dump saves it as a 0-d object array; "
                  "mmhuman3d loads it with np.load(allow_pickle=True)); pass --allow-pickle to write it anyway")

# mmhuman3d core/conventions/keypoints_mapping/smpl.py SMPL_49_KEYPOINTS (commit 326f78a): "SMPL keypoint convention
# used by SPIN": OpenPose BODY_25, then SPIN's J24, fitloop's canonical order (core.joints.JOINT_NAMES).
SMPL_49_KEYPOINTS: tuple[str, ...] = (
    "nose_openpose", "neck_openpose", "right_shoulder_openpose", "right_elbow_openpose", "right_wrist_openpose",
    "left_shoulder_openpose", "left_elbow_openpose", "left_wrist_openpose", "pelvis_openpose", "right_hip_openpose",
    "right_knee_openpose", "right_ankle_openpose", "left_hip_openpose", "left_knee_openpose", "left_ankle_openpose",
    "right_eye_openpose", "left_eye_openpose", "right_ear_openpose", "left_ear_openpose", "left_bigtoe_openpose",
    "left_smalltoe_openpose", "left_heel_openpose", "right_bigtoe_openpose", "right_smalltoe_openpose",
    "right_heel_openpose",
    "right_ankle", "right_knee", "right_hip_extra", "left_hip_extra", "left_knee", "left_ankle", "right_wrist",
    "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist", "neck_extra", "headtop",
    "pelvis_extra", "thorax_extra", "spine_extra", "jaw_extra", "head_extra", "nose", "left_eye", "right_eye",
    "left_ear", "right_ear",
)
assert len(SMPL_49_KEYPOINTS) == NUM_JOINTS == len(OPENPOSE_NAMES) + len(J24_NAMES)

_HANDS = [f"{side}_{finger}_{k}" for side in ("left", "right")
          for finger in ("index", "middle", "pinky", "ring", "thumb") for k in (1, 2, 3)]
_FACE = ([f"right_eyebrow_{k}" for k in range(1, 6)] + [f"left_eyebrow_{k}" for k in range(5, 0, -1)]
         + [f"nosebridge_{k}" for k in range(1, 5)] + [f"nose_{k}" for k in range(1, 6)]
         + [f"right_eye_{k}" for k in range(1, 7)] + [f"left_eye_{k}" for k in (4, 3, 2, 1, 6, 5)]
         + [f"mouth_{k}" for k in range(1, 13)] + [f"lip_{k}" for k in range(1, 9)]
         + [f"face_contour_{k}" for k in range(1, 18)])
# mmhuman3d core/conventions/keypoints_mapping/human_data.py HUMAN_DATA (commit 436abc6): the 190 slots every
# HumanData file of mmhuman3d's converters holds, in order: SMPL-X's body, hands, face, then SPIN's extra
# regressor joints, OpenPose's, MPI-INF-3DHP's, Human3.6M's, PoseTrack's and SMPL's hands.
HUMAN_DATA_KEYPOINTS: tuple[str, ...] = tuple(
    ["pelvis", "left_hip", "right_hip", "spine_1", "left_knee", "right_knee", "spine_2", "left_ankle",
     "right_ankle", "spine_3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
     "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "jaw",
     "left_eyeball", "right_eyeball"]
    + _HANDS
    + ["nose", "right_eye", "left_eye", "right_ear", "left_ear", "left_bigtoe", "left_smalltoe", "left_heel",
       "right_bigtoe", "right_smalltoe", "right_heel", "left_thumb", "left_index", "left_middle", "left_ring",
       "left_pinky", "right_thumb", "right_index", "right_middle", "right_ring", "right_pinky"]
    + _FACE
    + ["right_hip_extra", "left_hip_extra", "neck_extra", "headtop", "pelvis_extra", "thorax_extra", "spine_extra",
       "jaw_extra", "head_extra"]
    + list(SMPL_49_KEYPOINTS[:len(OPENPOSE_NAMES)])
    + ["spine_4_3dhp", "left_clavicle_3dhp", "right_clavicle_3dhp", "left_hand_3dhp", "right_hand_3dhp",
       "left_toe_3dhp", "right_toe_3dhp", "head_h36m", "headtop_h36m", "head_bottom_pt", "left_hand", "right_hand"])
assert len(HUMAN_DATA_KEYPOINTS) == 190 == len(set(HUMAN_DATA_KEYPOINTS))
# Where each canonical joint goes in the human_data convention (convert_kps maps by exact name).
HUMAN_DATA_SLOTS: np.ndarray = np.array([HUMAN_DATA_KEYPOINTS.index(name) for name in SMPL_49_KEYPOINTS])
HUMAN_DATA_MASK: np.ndarray = np.zeros(len(HUMAN_DATA_KEYPOINTS), np.uint8)
HUMAN_DATA_MASK[HUMAN_DATA_SLOTS] = 1
SPIN_BOX_UNIT = 200.0  # SPIN's scale is the box side in units of 200 px (SPIN utils/imutils.py, crop)


def to_human_data(keypoints: np.ndarray) -> np.ndarray:
    """(N, 49, C) canonical keypoints → (N, 190, C) in mmhuman3d's ``human_data`` convention, zeros elsewhere:
    ``convert_kps(keypoints, src='smpl_49', dst='human_data')``'s keypoints (its mask is `HUMAN_DATA_MASK`)."""
    keypoints = np.asarray(keypoints)
    out = np.zeros((keypoints.shape[0], len(HUMAN_DATA_KEYPOINTS), keypoints.shape[-1]), np.float64)
    out[:, HUMAN_DATA_SLOTS] = keypoints
    return out


def bbox_xywh(center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(N, 2) box centres px and (N,) SPIN scales → (N, 5) HumanData ``bbox_xywh``: top-left x, y, width, height
    (px, the square of side ``scale * 200``) and confidence 1."""
    side = np.asarray(scale, np.float64) * SPIN_BOX_UNIT
    corner = np.asarray(center, np.float64) - side[:, None] / 2
    return np.column_stack([corner, side, side, np.ones_like(side)])


def check_plain(value: Any, where: str) -> None:
    """Refuse (`FitsTableError`) anything but a dict of str keys to numpy arrays of numbers or strings, str or
    int: the only objects an export lets numpy pickle."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FitsTableError(f"{where}: key {key!r} is not a str; only plain dicts are pickled")
            check_plain(item, f"{where}.{key}")
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufU":
            raise FitsTableError(f"{where}: dtype {value.dtype} is not numeric or str; nothing else is pickled")
    elif not isinstance(value, (str, int)):
        raise FitsTableError(f"{where}: {type(value).__name__} is not a dict, array, str or int")


def humandata_arrays(rows: SplitRows, dataset: str, smpl: SmplColumns) -> dict[str, Any]:
    """The HumanData dict of one (dataset, split) as ``HumanData.dump`` saves it (module docstring), with its
    three attributes. ``smpl``: each row's SMPL parameters, ground truth or fit (`fits.exports.smpl_columns`).
    """
    count = len(rows.keys)
    body_pose, shape = smpl.pose, smpl.betas
    data: dict[str, Any] = {
        "__key_strict__": False, "__temporal_len__": count, "__keypoints_compressed__": False,
        "image_path": np.array(rows.imgname, dtype=str),
        "bbox_xywh": bbox_xywh(np.stack(rows.center), np.array(rows.scale)),
        "keypoints2d": to_human_data(np.stack(rows.keypoints)), "keypoints2d_mask": HUMAN_DATA_MASK.copy(),
        "smpl": {"global_orient": body_pose[:, :3], "body_pose": body_pose[:, 3:].reshape(count, -1, 3),
                 "betas": shape},
        "has_smpl": smpl.has_smpl.astype(np.int64), "has_fit": smpl.fit.astype(np.int64), "config": dataset}
    if any(j is not None for j in rows.joints_3d):
        joints = np.stack([np.zeros((NUM_JOINTS, 4)) if j is None else j for j in rows.joints_3d])
        data["keypoints3d"] = to_human_data(joints)
        data["keypoints3d_mask"] = HUMAN_DATA_MASK.copy()
    return data


def export_humandata(table: FitsTable, shard_dir: Path, out: Path, *, allow_pickle: bool = False,
                     body_model_id: str | None = None, frame: str = "crop", version: int | None = None,
                     timestamp: datetime | None = None, fit_filter: FitFilter = FitFilter(),
                     on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the shard set ``shard_dir`` with the best fits of ``table`` as HumanData ``.npz`` files under
    ``out``, one per (dataset, split) (module docstring). Refuses (`FitsTableError`, `PICKLE_REFUSAL`) unless
    ``allow_pickle``: the format pickles its ``smpl`` dict. Returns ``{"files": [{"path", "dataset", "split",
    "rows", "ground_truth", "fits", "none", "fits_under_ground_truth", "joints_3d"}], "filtered", "body_model_id",
    "frame"}``."""
    if not allow_pickle:
        raise FitsTableError(PICKLE_REFUSAL)
    stage = on_stage or (lambda name: None)
    fits, files = read_for_export(table, shard_dir, body_model_id=body_model_id, frame=frame, version=version,
                                  timestamp=timestamp, fit_filter=fit_filter, stage=stage)
    stage("write")
    written = []
    for (dataset, split), rows in files.items():
        smpl = smpl_columns(rows, fits.rows_of(rows.keys), fits.pose, fits.betas, fits.pose.dtype)
        data = humandata_arrays(rows, dataset, smpl)
        check_plain(data["smpl"], f"{dataset}/{split} smpl")
        path = Path(out) / f"{dataset}_{split}.npz"
        tmp = atomic_tmp(path)
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **data)  # as HumanData.dump: the smpl dict becomes a pickled 0-d array
        tmp.replace(path)
        write_json(path.with_name(f"{path.stem}.fitloop.json"), {
            "format": f"mmhuman3d HumanData .npz ({HUMANDATA_SOURCE}); keypoints in its 'human_data' convention",
            "shards": str(shard_dir), "table": str(table.path), "version": version,
            "timestamp": None if timestamp is None else str(timestamp), "body_model_id": fits.body_model_id,
            "frame": frame,
            "fit_filter": fit_filter.describe() if fit_filter.active else None, "smpl": smpl.counts(),
            "smpl_rule": SMPL_RULE, "keys": rows.keys})
        written.append({"path": str(path), "dataset": dataset, "split": split, "rows": len(rows.keys),
                        **smpl.counts(), "joints_3d": "keypoints3d" in data})
    return {"files": written, "filtered": fits.filtered, "body_model_id": fits.body_model_id, "frame": frame}
