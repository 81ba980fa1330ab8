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
    # under loose clothing, DSR's terms keep the body inside the clothes and its head, hands and feet on theirs:
    # closer to the true mesh, and its silhouette overlaps the body's own better, than the silhouette term's
    # pulled out to fill the clothes (seen on these 4: PVE-PA 91.9 vs 123.6 mm, IoU 0.79 vs 0.68)
    clothed, dsr = result["results"]["clothed_silhouette_10"], result["results"]["clothed_dsr"]
    assert dsr["all"]["pve_pa_mm"] < clothed["all"]["pve_pa_mm"]
    assert dsr["all"]["iou"] > clothed["all"]["iou"]


def test_clothing_grows_clothed_parts_and_keeps_head_hands_feet_exact():
    """`clothe`: background within the margin of a torso pixel joins the torso; next to a hand it stays
    background; body pixels keep their labels."""
    from bench.masks import clothe
    from fitting.dsr import part_id

    parts = np.zeros((40, 40), dtype=np.uint8)
    parts[10:30, 5:15] = part_id("spine1")
    parts[10:30, 15:20] = part_id("left_wrist")
    dressed = clothe(parts, 4.0)
    assert (dressed[parts > 0] == parts[parts > 0]).all()
    assert dressed[20, 2] == part_id("spine1") and dressed[20, 0] == 0             # 3 px out: grown; 5 px: not
    assert dressed[20, 21] == 0 and dressed[8, 17] == 0                             # beside the hand: background
    assert dressed[7, 8] == part_id("spine1")


def test_masks_bench_refuses_bad_settings(capsys):
    with pytest.raises(FitloopError, match="--weights"):
        run(MasksBenchConfig(weights=(-1.0,)))
    assert main(["bench", "masks", "--weights", "a,b"]) != 0
    assert "--weights takes numbers" in capsys.readouterr().err
    with pytest.raises(FitloopError, match="--dsr"):
        run(MasksBenchConfig(dsr=(0.0, 0.0, 0.0)))


def test_masks_bench_cli_prints_json(capsys):
    assert main(["bench", "masks", "--split", "dev", "--sources", "synthetic", "--cases", "2", "--weights", "5",
                 "--json", "--no-coco", "--no-clothing"]) == 0
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
    result = run(MasksBenchConfig(split="dev", sources=("synthetic",), cases=2, weights=(5.0,), coco=False,
                                  clothing=False))
    for arm in result["results"].values():
        a = arm["all"]
        assert a["betas_error_scale_removed"] <= a["betas_error"] + 1e-9
        assert a["betas_error_along_size"] <= a["betas_error"] + 1e-9
        assert 0 < a["shape_pa_mm"] < a["pve_pa_mm"]    # the shape alone, of a fit whose pose errs too
