"""What a rebuild of a committed open-model file must reproduce (tests/test_open_model_build.py and
tests/test_open_smplx_build.py): the same keys, shapes and dtypes; some arrays exactly, others to 1e-5; regressors
through the points they give on shaped bodies (0.5 mm); vertex picks at the same place; the same build and source."""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np


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
