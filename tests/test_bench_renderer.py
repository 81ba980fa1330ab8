"""`fitloop bench renderer`: a small run of the command (both renderers when DEODR imports, fitloop's alone with
the install line when it does not), and the bodies it renders (SPIN's crop camera, moved to pixel centres)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from bench.renderer import bodies, run
from fitloop.cli import main
from fitting.body_model import load_body_model
from render.raster import rasterize


def test_the_bodies_fill_the_crop_as_spins_crop_camera_frames_them():
    body = load_body_model("open-small")
    people, _ = bodies(body, 4, 64, seed=0, sources=("synthetic",))
    vertices, focal, center = people["synthetic"]
    assert vertices.shape == (4, body.num_vertices, 3) and focal == pytest.approx(5000 * 64 / 224)
    assert center == pytest.approx((112 * 64 / 224 - 0.5,) * 2)
    for one in vertices:
        _, face_index = rasterize(one.double().numpy(), body.faces, np.zeros((len(body.faces), 3)), focal, center,
                                  (64, 64))
        ys, xs = np.nonzero(face_index >= 0)
        # SPIN's box x 1.2 of the joints is the crop: the body spans most of it and stays inside (a margin of
        # the mesh beyond its joints may reach the border)
        assert max(xs.max() - xs.min(), ys.max() - ys.min()) > 0.6 * 64


def test_a_small_run_times_both_renderers_or_says_how_to_get_the_alternative(capsys):
    result = run("open-small", batch=2, resolutions=(48,), repeats=1, sources=("synthetic",))
    assert result["threads"] == 1 and result["batch"] == 2
    assert [(r["kind"], r["resolution"]) for r in result["rows"]] == [("silhouette", 48), ("parts", 48)]
    for row in result["rows"]:
        assert row["fitloop_ms_per_sample"] > 0 and 0.7 < row["fitloop_iou_vs_zbuffer"] <= 1
    if importlib.util.find_spec("deodr") is None:
        assert "pip install deodr==" in result["alternative"]
        assert all("ratio_deodr_over_fitloop" not in r for r in result["rows"])
    else:
        for row in result["rows"]:
            assert row["ratio_deodr_over_fitloop"] > 0
            assert abs(row["deodr_iou_vs_zbuffer"] - row["fitloop_iou_vs_zbuffer"]) < 0.05  # the same picture
    assert main(["bench", "renderer", "--model", "open-small", "--batch", "2", "--resolutions", "48",
                 "--repeats", "1", "--sources", "synthetic", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["benchmark"] == "renderer" and len(printed["rows"]) == 2
