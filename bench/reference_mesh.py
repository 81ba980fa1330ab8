"""The meshes `fitloop bench smplify` runs SPIN's reference procedure on: the open model's own (``full``, 13,492
vertices) or the same model decimated to SMPL's vertex count (``smpl-sized``, the default).

SPIN's procedure evaluates the whole mesh every Adam step, so its cost grows with the vertex count, while the fast
mode never touches the mesh. The open model has about twice SMPL's 6,890 vertices: timing the reference on it
would credit the fast mode with SPIN being slower than it is on the model SPIN uses. `smpl_sized_model` gives the
reference a mesh of SMPL's size made from the same body, so the speed ratio is the one SPIN would see:

* the vertices: COMA's quadric half-edge collapse of the full template (`fitting.mesh_sampling.build_sampling`)
  down to ``SMPL_VERTICES``: the kept vertices are a subset of the full ones (the selection D), so their template,
  shape directions and skinning weights are the full model's rows, unchanged;
* every regressor over vertices (SMPL's joints, the keypoint rows, the Human3.6M rows) becomes R U, with U (V, Vc)
  each full vertex as barycentric weights on the nearest coarse triangle: rows stay >= 0 and sum to 1, and the
  joints follow the full model's within the decimation's error (millimetres; `tests/test_bench_smplify.py`);
* each named vertex (the open model's ``vertex_ids``) becomes the coarse vertex with its largest weight in U.

The model is built in memory (about one CPU second) and is deterministic; it has pose correctives as zeros, as
the open model does, so smplx computes them at SMPL's cost.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from core.errors import ModelFileError
from fitting.body_model import OPEN_MODELS, BodyModel, load_body_model, read_model_arrays
from fitting.mesh_sampling import build_sampling

# SMPL's vertex count (SMPL_NEUTRAL.pkl v_template (6890, 3); Loper et al. 2015, "6890 vertices").
SMPL_VERTICES = 6890
REFERENCE_MESHES = ("smpl-sized", "full")
_REGRESSORS = ("J_regressor", "keypoint_regressor", "h36m_regressor")   # (K, V) rows over the full mesh's vertices
_PER_VERTEX = ("v_template", "shapedirs", "weights")                    # (V, ...) per-vertex rows


def smpl_sized_arrays(arrays: dict, target: int = SMPL_VERTICES) -> dict:
    """The arrays of an open-layout model file (`fitting.body_model.read_model_arrays`) decimated to ``target``
    vertices (module docstring); the other entries unchanged."""
    sampling = build_sampling(np.asarray(arrays["v_template"]), np.asarray(arrays["f"]), target,
                              source="smpl-sized reference mesh")
    kept = sampling.down.indices[np.argsort(sampling.down.tocoo().row)]   # coarse vertex i is full vertex kept[i]
    up = sampling.up.tocsc()
    out = dict(arrays)
    for key in _PER_VERTEX:
        out[key] = np.asarray(arrays[key])[kept]
    for key in _REGRESSORS:
        if key in arrays:
            regressor = np.asarray(arrays[key])
            out[key] = np.asarray(regressor.astype(np.float64) @ up, dtype=regressor.dtype)
    if "vertex_ids" in arrays:
        dense_rows = sampling.up[np.asarray(arrays["vertex_ids"])].toarray()
        out["vertex_ids"] = dense_rows.argmax(1).astype(np.asarray(arrays["vertex_ids"]).dtype)
    out["f"] = sampling.faces.astype(np.asarray(arrays["f"]).dtype)
    return out


def smpl_sized_model(source: str | Path = "open", target: int = SMPL_VERTICES) -> BodyModel:
    """The open model ``source`` (a name `load_body_model` knows or an open-layout .npz) on a mesh of SMPL's
    size (module docstring)."""
    path = OPEN_MODELS.get(str(source), Path(source))
    arrays, _ = read_model_arrays(path)
    if "keypoint_regressor" not in arrays:
        raise ModelFileError(f"{path}: not an open-layout model ({len(arrays['v_template'])} vertices); the "
                             f"smpl-sized reference mesh is made from the open model: use --reference-mesh full")
    with tempfile.TemporaryDirectory(prefix="fitloop-smpl-sized-") as tmp:
        file = Path(tmp) / f"{path.stem}_smpl_sized.npz"
        np.savez(file, **smpl_sized_arrays(arrays, target))
        return load_body_model(file)


def reference_body(mesh: str, model: str | Path) -> BodyModel:
    """The body model the reference runs on: ``"full"`` the model itself; ``"smpl-sized"`` `smpl_sized_model`, or
    the model itself where it has at most SMPL's vertex count (a real SMPL file; the small open variant)."""
    if mesh not in REFERENCE_MESHES:
        raise ValueError(f"reference mesh must be one of {', '.join(REFERENCE_MESHES)}, not {mesh!r}")
    body = load_body_model(model)
    return body if mesh == "full" or body.num_vertices <= SMPL_VERTICES else smpl_sized_model(model)
