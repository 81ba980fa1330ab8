"""`fitloop bench masks` on a few dev people: both arms fitted on the same people, ratios against the baseline,
and the term doing what it is for (the fits' silhouettes overlap the masks better)."""
import json

import pytest

from bench.masks import MasksBenchConfig, run
from core.errors import FitloopError
from fitloop.cli import main


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
