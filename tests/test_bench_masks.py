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


def test_per_beta_error_and_correlation_by_hand():
    """Three people, three betas: component 0 fitted exactly, 1 fitted as its negative, 2 fitted as a constant
    (no correlation defined)."""
    from bench.masks import paired_change, per_beta

    true = np.array([[1.0, 2.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    fitted = np.stack([true[:, 0], -true[:, 1], np.full(3, 0.5)], 1)
    out = per_beta(fitted, true)
    assert out["rms"] == pytest.approx([0.0, np.sqrt((16 + 0 + 4) / 3), np.sqrt((1.5**2 + 0.5**2 + 1.5**2) / 3)])
    assert out["correlation"][:2] == pytest.approx([1.0, -1.0]) and out["correlation"][2] is None
    change = paired_change(np.array([1.0, 2.0, 6.0]), np.array([2.0, 2.0, 2.0]))    # differences -1, 0, 4
    assert change["mean"] == pytest.approx(1.0) and change["se"] == pytest.approx(np.sqrt(7 / 3))


def test_masks_at_twice_the_resolution_draw_the_same_body():
    """bench masks' people at ``mask_scale`` 2: the same coverage as at 1× (area ×4 to 2 %, centroid within 0.1
    fit-frame px: a half-pixel slip of the principal point would move it by 0.25 px), the same keypoints."""
    from bench.masks import make_case

    body = load_body_model("open-small")
    one, two = (make_case(body, "synthetic", MasksBenchConfig(split="dev", cases=2, clothing=False, mask_scale=s))
                for s in (1, 2))
    assert two.masks.shape == (2, 448, 448) and two.mask_scale == 2 and np.array_equal(one.keypoints, two.keypoints)

    def centroid(masks, scale):  # fit-frame px of the pixel centres (pixel corners at 0 in both grids)
        y, x = torch.meshgrid(torch.arange(masks.shape[1]), torch.arange(masks.shape[2]), indexing="ij")
        area = masks.sum((1, 2)).double()
        return torch.stack([(masks * x).sum((1, 2)), (masks * y).sum((1, 2))], 1) / area[:, None] / scale \
            + 0.5 / scale, area / scale**2

    (c1, a1), (c2, a2) = centroid(one.masks, 1), centroid(two.masks, 2)
    assert torch.allclose(a2, a1, rtol=0.02) and (c2 - c1).abs().max() < 0.1, (c1, c2, a1, a2)
