"""`fitloop bench masks` on a few dev people: both arms fitted on the same people, ratios against the baseline,
and the term doing what it is for (the fits' silhouettes overlap the masks better)."""
import json

import numpy as np
import pytest
import torch

from bench.masks import MasksBenchConfig, run, size_direction
from core.errors import FitloopError
from fitloop.cli import main
from fitting.body_model import load_body_model


def test_masks_bench_compares_the_arms_on_the_same_people():
    result = run(MasksBenchConfig(split="dev", sources=("synthetic",), cases=4, weights=(10.0,)))
    base, term = result["results"]["keypoints"], result["results"]["silhouette_10"]
    assert base["all"]["cases"] == term["all"]["cases"] == 4
    assert term["all"]["iou"] > base["all"]["iou"]
    ratio = term["ratio_to_keypoints"]["pve_pa_mm"]
    assert ratio == pytest.approx(term["all"]["pve_pa_mm"] / base["all"]["pve_pa_mm"])


def test_masks_bench_refuses_bad_settings(capsys):
    with pytest.raises(FitloopError, match="--weights"):
        run(MasksBenchConfig(weights=(-1.0,)))
    assert main(["bench", "masks", "--weights", "a,b"]) == 2
    assert "--weights takes numbers" in capsys.readouterr().out


def test_masks_bench_cli_prints_json(capsys):
    assert main(["bench", "masks", "--split", "dev", "--sources", "synthetic", "--cases", "2", "--weights", "5",
                 "--json", "--no-coco"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["results"]) == {"keypoints", "silhouette_5"} and "--no-coco" in result["coco"]


def test_size_direction_grows_the_body_uniformly():
    body = load_body_model("open-small")
    d = size_direction(body)
    assert np.linalg.norm(d) == pytest.approx(1.0)
    zero = torch.zeros(1, 69)
    with torch.no_grad():
        rest = body(torch.zeros(1, body.num_betas), zero, torch.zeros(1, 3)).vertices[0].double()
        grown = body(torch.as_tensor(d, dtype=torch.float32)[None], zero, torch.zeros(1, 3)).vertices[0].double()
    change, centred = (grown - rest).reshape(-1), (rest - rest.mean(0)).reshape(-1)
    # the change is (nearly) a uniform scaling about the centroid, and it makes the body larger
    assert torch.dot(change, centred) / (change.norm() * centred.norm()) > 0.95
    height = lambda v: float(v[:, 1].max() - v[:, 1].min())  # noqa: E731
    assert height(grown) > height(rest) + 0.02


def test_betas_error_splits_into_size_and_the_rest():
    result = run(MasksBenchConfig(split="dev", sources=("synthetic",), cases=2, weights=(5.0,), coco=False))
    for arm in result["results"].values():
        a = arm["all"]
        assert a["betas_error_scale_removed"] <= a["betas_error"] + 1e-9
        assert a["betas_error_along_size"] <= a["betas_error"] + 1e-9
        assert 0 < a["shape_pa_mm"] < a["pve_pa_mm"]    # the shape alone, of a fit whose pose errs too
