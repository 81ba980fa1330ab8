"""The ground-truth side file of a synthetic dataset: ``fitloop_truth.npz``, one row per person, keyed by the
sample key the dataset's adapter gives that person.

Arrays (N rows; float64 unless said; loaded with ``allow_pickle=False``):

| name | shape | meaning |
|---|---|---|
| ``key`` | (N,) str | the adapter's sample key (``coco/000000000001_a1``, ``lsp/im0001``, ``h36m/S1_…``) |
| ``image`` | (N,) str | the image, POSIX path relative to the dataset root |
| ``image_size`` | (N, 2) int | width, height px |
| ``focal`` / ``principal`` | (N, 2) | pinhole fx, fy and cx, cy px (0-based pixel centres) |
| ``pose`` | (N, 72) | axis-angle; the global orientation (first 3) in the **camera frame** |
| ``betas`` | (N, NB) | shape |
| ``transl`` | (N, 3) | m, camera frame: the body model's output with these parameters is the drawn body |
| ``joints_3d`` | (N, 49, 3) | canonical joints, m, camera frame |
| ``keypoints_2d`` | (N, 49, 2) | their projections, 0-based px |
| ``vertex_box`` | (N, 4) | u0, v0, u1, v1 px: the projected mesh's extent |
| ``outfit`` | (N, 4, 3) uint8 | the body's colours: skin, top, bottom, shoes (`scene.OUTFIT`) |
| ``background_seed`` | (N,) int | `paint.background`'s seed for the person's image |
| ``h36m_joints`` / ``h36m_keypoints`` | (N, 17, 3) / (N, 17, 2) | Human3.6M only: its 17 joints, m and px |
| ``full_pose`` | (N, 165) | whole-body sets only: SMPL-X's full pose (`fitting.wholebody_model.POSE_SLICES`: global orientation in the camera frame, 21 body joints, jaw, eyes, left and right hand, MANO order, flat-hand relative); ``pose`` is then its first 66 values and 6 zeros |
| ``expression`` | (N, NE) | whole-body: SMPL-X expression coefficients |
| ``wholebody_3d`` / ``wholebody_2d`` | (N, 161, 3) / (N, 161, 2) | whole-body: every point of `core.wholebody`'s layout, m (camera frame) and px; zero where not provided |
| ``wholebody_provided`` | (N, 161) bool | whole-body: the points the model gives (not the face contour; pupils when the model names pupil vertices) |
| ``wholebody_labelled`` | (N, 161) bool | whole-body: the points the dataset's files label (those its layout carries, in the image; hands, face and pupils only where the picture shows them) |
| ``metadata`` | () str | JSON: the resolved config, the pose source, the body model |
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.synthetic.paint import Picture
from pipelines.synthetic.scene import Person

TRUTH_FILE = "fitloop_truth.npz"


@dataclass(frozen=True)
class Truth:
    """A loaded truth file: ``arrays`` by name (module docstring), ``row`` by key, ``metadata`` decoded."""

    arrays: dict[str, np.ndarray]
    row: dict[str, int]
    metadata: dict[str, Any]

    def __len__(self) -> int:
        return len(self.row)

    def get(self, key: str) -> dict[str, np.ndarray]:
        """Every array's row for ``key`` (KeyError if the set has no such person)."""
        i = self.row[key]
        return {name: value[i] for name, value in self.arrays.items()}


def write_truth(root: Path, people: list[Person], pictures: list[Picture], metadata: dict[str, Any]) -> Path:
    """``root/fitloop_truth.npz`` for ``people`` (each refers to its picture by index); byte-reproducible."""
    arrays: dict[str, np.ndarray] = {
        "key": np.array([p.key for p in people], dtype=str),
        "image": np.array([pictures[p.picture].path.relative_to(root).as_posix() for p in people], dtype=str),
        "image_size": np.array([pictures[p.picture].size for p in people], dtype=np.int64).reshape(-1, 2),
        "focal": np.array([pictures[p.picture].focal for p in people], dtype=np.float64).reshape(-1, 2),
        "principal": np.array([pictures[p.picture].principal for p in people], dtype=np.float64).reshape(-1, 2),
        "pose": np.array([p.pose for p in people], dtype=np.float64).reshape(-1, 72),
        "betas": np.array([p.betas for p in people], dtype=np.float64),
        "transl": np.array([p.transl for p in people], dtype=np.float64).reshape(-1, 3),
        "joints_3d": np.array([p.joints for p in people], dtype=np.float64).reshape(-1, 49, 3),
        "keypoints_2d": np.array([p.keypoints for p in people], dtype=np.float64).reshape(-1, 49, 2),
        "vertex_box": np.array([p.vertex_box for p in people], dtype=np.float64).reshape(-1, 4),
        "outfit": np.array([p.outfit for p in people], dtype=np.uint8).reshape(-1, 4, 3),
        "background_seed": np.array([pictures[p.picture].background_seed for p in people], dtype=np.int64),
    }
    if people and people[0].wholebody is not None:
        from pipelines.synthetic.formats import wholebody_labels

        arrays["full_pose"] = np.array([p.full_pose for p in people], dtype=np.float64)
        arrays["expression"] = np.array([p.expression for p in people], dtype=np.float64)
        arrays["wholebody_3d"] = np.array([p.wholebody for p in people], dtype=np.float64)
        arrays["wholebody_2d"] = np.array([p.wholebody_keypoints for p in people], dtype=np.float64)
        arrays["wholebody_provided"] = np.array([p.provided for p in people], dtype=bool)
        dataset = metadata.get("dataset")
        arrays["wholebody_labelled"] = np.array(
            [wholebody_labels(p, pictures[p.picture].size, dataset)[1] for p in people], dtype=bool)
    if people and people[0].h36m_joints is not None:
        arrays["h36m_joints"] = np.array([p.h36m_joints for p in people], dtype=np.float64)
        arrays["h36m_keypoints"] = np.array([p.h36m_keypoints for p in people], dtype=np.float64)
    arrays["metadata"] = np.array(json.dumps(metadata, sort_keys=True))
    path = root / TRUTH_FILE
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(value), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue(),
                        compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, path)
    return path


def load_truth(path: Path) -> Truth:
    """Read a truth file (a dataset root or the .npz itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / TRUTH_FILE
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    metadata = json.loads(arrays.pop("metadata").item())
    return Truth(arrays, {str(k): i for i, k in enumerate(arrays["key"])}, metadata)
