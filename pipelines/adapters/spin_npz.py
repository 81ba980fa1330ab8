"""SPIN's preprocessed ``.npz`` files (``data/dataset_extras/*.npz``): import a dataset as SPIN prepared it.

Fields (SPIN datasets/preprocess): ``imgname`` (relative to the dataset's image root), ``center`` (2,) px,
``scale`` (box side / 200), ``part`` (24, 3) J24 keypoints + 0/1 confidence, and where the dataset has them
``openpose`` (25, 3) raw BODY_25 detections, ``S`` (24, 4) 3D joints in metres (camera orientation, root-centred)
+ confidence, ``pose`` (72,), ``shape`` (10,), ``has_smpl``, ``gender``, ``maskname``/``partname``. A file
fitloop exported (`fits.exports`) also has ``has_fit``: its rows with ``has_fit`` 1 hold an SMPLify fit in
``pose``/``shape``, read as no ground truth (the fit is in the fits table it was exported from).
The J24 slots are canonical slots 25–48 and the OpenPose ones 0–24, so the arrays go straight into the record.

**Pixels.** SPIN copied MATLAB-born coordinates unchanged, so ``part`` and ``center`` of the LSP, LSP-original,
HR-LSPET and MPII files are 1-based; fitloop subtracts 1 (``pixel_offset``; the OpenPose detections are 0-based
already and are left alone). The offsets of the other files are SPIN's sources' conventions as far as known
(0 for COCO, Human3.6M, MPI-INF-3DHP and 3DPW); override ``pixel_offset`` if you know better.

**Keys** ``<dataset>/<image stem>``, e.g. ``lsp/im1010``: the same key the LSP adapter gives that person. SPIN
stores no person id, so when an image holds several people (COCO, MPII) its rows are ``..._n0``, ``..._n1`` in
file order. Each record keeps its row as ``extra["spin_row"]``, which is how SPIN's row-ordered static fits
(``*_fits.npy``, N × 82) join to fitloop's keys.

``np.load`` runs with ``allow_pickle=False``: a file with object arrays is rejected, never unpickled.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from core.joints import J24_NAMES, J24_OFFSET, NUM_JOINTS, OPENPOSE_NAMES
from core.spin import SPIN_NPZ_FILES
from pipelines.adapters.base import (
    PARSER_ERRORS,
    AnnotationFileError,
    CheckConfig,
    DatasetError,
    Output,
    RecordBuilder,
    check_split,
    display_path,
    image_path_under,
    resolve_under,
)
from shards.schema import make_key

REQUIRED_FIELDS = ("imgname", "center", "scale")
ROW_SHAPES = {"center": (2,), "scale": (), "part": (len(J24_NAMES), 3), "openpose": (len(OPENPOSE_NAMES), 3),
              "S": (len(J24_NAMES), 4), "pose": (72,), "shape": (10,), "has_smpl": (),
              "has_fit": ()}


@dataclass(frozen=True, kw_only=True)
class SpinNpzConfig(CheckConfig):
    """Options of the SPIN .npz importer (the checks: `CheckConfig`).

    Attributes:
        npz_file: the SPIN .npz to read, absolute or relative to the root (required). The root is the
            dataset's image root: the folder SPIN's ``imgname`` paths are relative to.
        dataset_name: the records' dataset. Default: from the file name (`SPIN_NPZ_FILES`).
        pixel_offset: subtracted from ``part`` and ``center`` (1 for MATLAB-born data). Default: from the file
            name (`SPIN_NPZ_FILES`).
    """

    npz_file: Path | None = None
    dataset_name: str | None = None
    pixel_offset: float | None = None


class SpinNpzAdapter:
    """SPIN's preprocessed .npz files; see the module docstring."""

    name = "spin-npz"
    splits = ("train", "val", "test")
    config_type = SpinNpzConfig

    def read(self, root: Path, split: str, config: SpinNpzConfig | None = None) -> Iterator[Output]:
        """Yield one `PersonRecord` or `Reject` per row of the .npz, in row order."""
        config = config or SpinNpzConfig()
        check_split(self, split)
        root = Path(root)
        path = resolve_under(root, config.npz_file)
        if path is None or not path.is_file():
            raise DatasetError(f"spin-npz needs npz_file, an existing SPIN .npz (got {path})")
        dataset, pixel_offset = self._identity(path, split, config)
        builder = RecordBuilder(dataset, split, config, root=root)
        source = display_path(path, root)
        try:
            columns = _load(path)
        except PARSER_ERRORS as err:  # zipfile.BadZipFile, a pickle refused (ValueError), a missing field, ...
            raise AnnotationFileError(path, "a SPIN .npz", err) from None

        names = [str(n) for n in columns["imgname"]]
        repeats = Counter(names)
        seen: Counter[str] = Counter()
        for row, imgname in enumerate(names):
            stem = Path(imgname).stem
            if repeats[imgname] > 1:
                key = make_key(dataset, stem, f"n{seen[imgname]}")
                seen[imgname] += 1
            else:
                key = make_key(dataset, stem)
            yield self._person(builder, root, source, columns, row, imgname, key, pixel_offset)

    def _person(self, builder: RecordBuilder, root: Path, source: str, columns: dict[str, np.ndarray], row: int,
                imgname: str, key: str, pixel_offset: float) -> Output:
        keypoints = np.zeros((NUM_JOINTS, 3))
        if "openpose" in columns:
            keypoints[:J24_OFFSET] = columns["openpose"][row]
        if "part" in columns:
            part = np.array(columns["part"][row], dtype=np.float64)
            part[part[:, 2] > 0, :2] -= pixel_offset
            keypoints[J24_OFFSET:] = part
        joints_3d = None
        if "S" in columns:
            joints_3d = np.zeros((NUM_JOINTS, 4))
            joints_3d[J24_OFFSET:] = columns["S"][row]
        # fitloop's own export (`fits.exports`) marks rows whose pose and shape are a fit, not ground truth
        fitted = "has_fit" in columns and bool(columns["has_fit"][row])
        has_pose = "pose" in columns and "shape" in columns and not fitted
        has_smpl = has_pose and (bool(columns["has_smpl"][row]) if "has_smpl" in columns else True)
        extra: dict[str, Any] = {"spin_row": row, "spin_file": Path(source).name}
        for name in ("gender", "maskname", "partname"):
            if name in columns:
                extra[name] = str(columns[name][row])
        try:
            image_path = image_path_under(PurePosixPath("."), imgname)
        except ValueError as err:
            return builder.reject(source, f"row {row} ({imgname})", "malformed_annotation", str(err), key)
        return builder.person(
            key=key, source=source, record=f"row {row} ({imgname})", image_root=root,
            image_path=image_path, center=columns["center"][row] - pixel_offset,
            scale=float(columns["scale"][row]), keypoints_2d=keypoints, joints_3d=joints_3d,
            smpl_pose=columns["pose"][row] if has_pose else None,
            smpl_betas=columns["shape"][row] if has_pose else None, has_smpl=has_smpl, extra=extra)

    def _identity(self, path: Path, split: str, config: SpinNpzConfig) -> tuple[str, float]:
        """(dataset name, pixel offset) of the file, from the options or SPIN's file name; checks the split."""
        known = SPIN_NPZ_FILES.get(path.stem)
        if known is not None and known[1] != split:
            raise DatasetError(f"{path.name} is SPIN's {known[1]!r} file, not {split!r}")
        if known is None and (config.dataset_name is None or config.pixel_offset is None):
            raise DatasetError(f"{path.name} is not one of SPIN's files ({', '.join(SPIN_NPZ_FILES)}); pass "
                               f"dataset_name and pixel_offset (1 for MATLAB-born coordinates, else 0)")
        dataset = config.dataset_name or known[0]
        offset = config.pixel_offset if config.pixel_offset is not None else known[2]
        return dataset, float(offset)


def _load(path: Path) -> dict[str, np.ndarray]:
    """The .npz's arrays, checked to be row-aligned; ValueError/KeyError say what is wrong."""
    with np.load(path, allow_pickle=False) as npz:
        columns = {name: npz[name] for name in npz.files}
    missing = [name for name in REQUIRED_FIELDS if name not in columns]
    if missing:
        raise KeyError(f"missing field(s) {', '.join(missing)}")
    count = len(columns["imgname"])
    for name, shape in ROW_SHAPES.items():
        if name in columns and columns[name].shape != (count, *shape):
            raise ValueError(f"{name} has shape {columns[name].shape}, expected {(count, *shape)}")
    return columns
