"""`fitloop bench masks`' COCO section on the real fixtures: the people SPIN would fit (counted skips), their masks
and keypoints in the fit frame where COCO's annotation puts them, the term's fits overlapping the masks better than
keypoints alone, and the pictures written."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench.masks_coco import CAPTION_PX, COCO_ANNOTATIONS, COCO_ROOT, PICTURE_SCALE, coco_people, mask_iou, run_coco
from core.frames import FIT_RES
from core.joints import COCO_JOINTS
from fitloop.cli import main
from fitting.body_model import load_body_model
from fitting.priors import load_pose_prior, resolve_pose_prior
from fitting.smplify import SMPLify, SMPLifyConfig
from shards.masks import UNKNOWN

needs_coco = pytest.mark.skipif(not COCO_ROOT.is_dir(), reason=f"the COCO fixtures are not at {COCO_ROOT}")
# COCO's keypoint order (cocodataset.org/#format-data): 5-16 are the 12 limb joints SPIN requires
COCO_LIMBS = slice(5, 17)


@pytest.fixture(scope="module")
def people():
    return coco_people()


def annotations() -> dict[str, dict]:
    data = json.loads((COCO_ROOT / COCO_ANNOTATIONS).read_text())
    return {f"coco/{a['image_id']:012d}_a{a['id']}": a for a in data["annotations"]}


@needs_coco
def test_the_section_fits_the_people_spin_would_and_counts_the_rest(people):
    every = annotations()
    limbs = {k for k, a in every.items() if (np.reshape(a["keypoints"], (17, 3))[COCO_LIMBS, 2] > 0).all()
             and not a["iscrowd"]}
    assert len(COCO_JOINTS) == 17
    assert set(people.keys) == limbs                       # every segmented fixture person has a polygon mask
    assert sum(people.skipped.values()) == len(every) - len(limbs)
    assert set(people.skipped) <= {"too_few_joints", "missing_required_joints", "crowd", "no_mask"}


@needs_coco
def test_masks_and_keypoints_land_in_the_fit_frame_where_coco_puts_them(people):
    every = annotations()
    for key, kp, mask in zip(people.keys, people.keypoints, people.masks.numpy()):
        a = every[key]
        # the fit frame is SPIN's box (side 1.2 max(w, h)) at 224 px: the annotation's area scales by (224/side)²
        side = 1.2 * max(a["bbox"][2:])
        expected = a["area"] * (FIT_RES / side) ** 2
        assert (mask == 1).sum() == pytest.approx(expected, rel=0.05), key
        # the box centre is the crop centre: the bbox's centre of the mask pixels (whole person inside) near 112
        xs = np.nonzero(mask == 1)[1]
        if (mask != UNKNOWN).all():
            assert (xs.min() + xs.max() + 1) / 2 == pytest.approx(FIT_RES / 2, abs=2), key
        # visible joints (COCO v=2) fall on the person (fit-frame px: pixel corners at integers)
        raw = np.reshape(a["keypoints"], (17, 3))
        seen = kp[:, 2] > 0
        assert seen.sum() == (raw[:, 2] > 0).sum(), key
    inside = []
    for kp, mask in zip(people.keypoints, people.masks.numpy()):
        xy = np.floor(kp[kp[:, 2] > 0, :2]).astype(int).clip(0, FIT_RES - 1)
        inside.extend(mask[xy[:, 1], xy[:, 0]] == 1)
    assert np.mean(inside) > 0.85   # joints sit on the outline's inside; a shifted or scaled mask misses them


def test_mask_iou_leaves_unknown_pixels_out():
    masks = torch.zeros(1, 4, 4, dtype=torch.uint8)
    masks[0, :2] = 1
    masks[0, 3] = UNKNOWN
    coverage = torch.zeros(1, 4, 4, dtype=torch.bool)
    coverage[0, 1:] = True                      # 4 px shared, 4 px extra on row 2, row 3 unknown
    assert mask_iou(coverage, masks).tolist() == [pytest.approx(4 / 12)]
    assert mask_iou(torch.zeros_like(coverage), torch.zeros_like(masks)).tolist() == [0.0]


@needs_coco
def test_the_term_overlaps_the_annotated_masks_better_and_the_pictures_show_it(people, tmp_path):
    body = load_body_model("open-small")
    prior = load_pose_prior(resolve_pose_prior(None))
    arms = {"keypoints": SMPLify(body, prior, SMPLifyConfig()),
            "silhouette_10": SMPLify(body, prior, SMPLifyConfig(silhouette_weight=10.0))}
    result = run_coco(body, arms, tmp_path / "pictures", people)
    base, term = result["arms"]["keypoints"], result["arms"]["silhouette_10"]
    assert result["people"] == len(people.keys) >= 5
    assert term["iou"] > base["iou"] and term["people_better"] > len(people.keys) / 2
    assert term["ratio_to_keypoints"]["iou"] == pytest.approx(term["iou"] / base["iou"])
    side = FIT_RES * PICTURE_SCALE
    sheet, *each = result["pictures"]
    assert len(each) == len(people.keys)
    for path in each:
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.size == (side, side + CAPTION_PX)
    with Image.open(sheet) as picture:
        assert picture.format == "PNG" and picture.size[0] >= 2 * side


@needs_coco
def test_cli_prints_the_coco_section(capsys, tmp_path):
    assert main(["bench", "masks", "--split", "dev", "--sources", "synthetic", "--cases", "1", "--weights", "5",
                 "--pictures", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "COCO fixtures:" in out and "IoU x" in out and (tmp_path / "coco_masks.png").is_file()
