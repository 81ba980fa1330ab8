"""Masks in the shards: COCO's RLE and polygon conventions against hand-made masks (and pycocotools when it is
importable), the COCO fixtures' masks against their annotations, crop and flip consistency, verify, old formats.

The fixture tests read ../shared/fixtures (skipped with a reason when absent).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.joints import NUM_JOINTS
from pipelines.adapters.coco import CocoAdapter, CocoConfig
from pipelines.adapters.label_files import LABELS_FILE, key_file_name
from shards.augment import AugmentParams, augment_labels
from shards.crop import box_to_crop
from shards.masks import (
    MASK_NAMES,
    UNKNOWN,
    LabelMap,
    MaskError,
    crop_labels,
    decode_png,
    encode_png,
    flip_permutation,
    polygons_to_mask,
    rle_decode,
    rle_encode,
    rle_from_string,
    rle_to_string,
)
from shards.reader import ReaderConfig, ShardReader, iter_shard, list_shards
from shards.sample import decode_sample
from shards.schema import PersonRecord
from shards.verify import check_sample, verify_set
from shards.writer import ShardConfig, write_shards

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"real dataset fixtures not found at {FIXTURES}")

# A 3 (h) x 2 (w) mask and its COCO RLE, by hand: column-major 0,1,0 | 1,1,0 -> runs 0:1 1:1 0:1 1:2 0:1.
HAND_MASK = np.array([[0, 1], [1, 1], [0, 0]], dtype=bool)
HAND_COUNTS = [1, 1, 1, 2, 1]


# --- COCO's RLE ---------------------------------------------------------------------------------------------------

def test_rle_of_a_hand_made_mask():
    assert rle_encode(HAND_MASK).tolist() == HAND_COUNTS
    assert np.array_equal(rle_decode(HAND_COUNTS, (3, 2)), HAND_MASK)
    starts_with_one = np.array([[1], [1], [0]], dtype=bool)
    assert rle_encode(starts_with_one).tolist() == [0, 2, 1]  # the first run counts 0s, here none
    assert np.array_equal(rle_decode([0, 2, 1], (3, 1)), starts_with_one)
    with pytest.raises(MaskError, match="sum to 5"):
        rle_decode([1, 1, 1, 2], (3, 2))


@pytest.mark.parametrize("counts, text", [
    (HAND_COUNTS, "11110"),  # from the 4th count on, the difference to the count two before: 2-1, 1-1
    ([5, 10, 3, 1], "5:3G"),  # 1 - 10 = -9: 5 bits 10111 (sign bit set, no continuation) = 'G'
    ([100], "T3"),            # 100 = 00011 00100: low group 4 | 0x20 continuation -> 'T', then 3 -> '3'
])
def test_compressed_rle_string_by_hand(counts, text):
    assert rle_to_string(counts) == text
    assert rle_from_string(text).tolist() == counts


def test_compressed_rle_round_trips_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.uniform(0.05, 0.95)
        counts = rle_encode(mask)
        assert np.array_equal(rle_decode(rle_to_string(counts), mask.shape), mask)


def test_rle_matches_pycocotools_when_importable():
    mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is not installed here")
    rng = np.random.default_rng(1)
    for _ in range(10):
        mask = rng.random((23, 31)) < 0.4
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle_to_string(rle_encode(mask)) == encoded["counts"].decode()
        assert np.array_equal(rle_decode(encoded["counts"].decode(), encoded["size"]), mask)


# --- COCO's polygons ----------------------------------------------------------------------------------------------

def test_polygons_fill_the_pixels_whose_centres_they_contain():
    # the square [1, 3] x [1, 3] in COCO's continuous px holds the centres 1.5 and 2.5: pixels 1 and 2
    square = polygons_to_mask([[1, 1, 3, 1, 3, 3, 1, 3]], (5, 5))
    expected = np.zeros((5, 5), bool)
    expected[1:3, 1:3] = True
    assert np.array_equal(square, expected)
    # a right triangle (0,0) (4,0) (0,4): centre (i + .5, j + .5) inside when i + j + 1 < 4
    triangle = polygons_to_mask([[0, 0, 4, 0, 0, 4]], (4, 4))
    i, j = np.meshgrid(np.arange(4), np.arange(4))
    assert np.array_equal(triangle, i + j + 1 < 4)
    # two polygons of one annotation are united; one beside the image clips
    two = polygons_to_mask([[1, 1, 3, 1, 3, 3, 1, 3], [3, 3, 9, 3, 9, 9, 3, 9]], (5, 5))
    assert two[1:3, 1:3].all() and two[3:, 3:].all() and two.sum() == 8
    with pytest.raises(MaskError):
        polygons_to_mask([[0, 0, 1, 1]], (4, 4))


def test_polygon_fill_equals_a_point_in_polygon_test_at_every_centre():
    rng = np.random.default_rng(4)
    for _ in range(10):  # random, self-intersecting, partly outside the image
        polygon = rng.uniform(-4, 24, 2 * int(rng.integers(3, 9)))
        x0, y0 = polygon[0::2], polygon[1::2]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        cx, cy = np.meshgrid(np.arange(17) + 0.5, np.arange(13) + 0.5)  # COCO coordinates of pixel centres
        crossing = (y0 > cy[..., None]) != (y1 > cy[..., None])
        x_at = x0 + (cy[..., None] - y0) * (x1 - x0) / np.where(y1 == y0, 1, y1 - y0)
        expected = (crossing & (x_at > cx[..., None])).sum(axis=-1) % 2 == 1  # even-odd ray to the right
        assert np.array_equal(polygons_to_mask([polygon], (13, 17)), expected)


@needs_fixtures
def test_coco_fixture_masks_match_their_area_and_hold_the_visible_keypoints():
    data = json.loads((FIXTURES / "coco" / "test_coco.json").read_text())
    area = {a["id"]: a["area"] for a in data["annotations"]}
    visible = {a["id"]: np.asarray(a["keypoints"], float).reshape(17, 3) for a in data["annotations"]}
    inside, total, masks = 0, 0, 0
    for record in CocoAdapter().read(FIXTURES / "coco", "val", CocoConfig(annotation_file=Path("test_coco.json"),
                                                                          image_dir=Path("."), min_joints=0)):
        if not isinstance(record, PersonRecord):
            continue
        aid = record.extra["annotation_id"]
        assert record.mask is not None and record.mask.provenance == "coco-polygon"
        mask = record.mask.array()
        assert mask.shape == (record.image_size[1], record.image_size[0])
        # COCO's area is the polygon's; pixel-centre sampling differs from it along the edges only
        tolerance = 0.03 if area[aid] > 1000 else 0.06
        assert abs((mask == 1).sum() / area[aid] - 1) < tolerance, aid
        assert set(np.unique(mask)) <= {0, 1, UNKNOWN}   # unknown: the image's other people (occluders)
        points = visible[aid][visible[aid][:, 2] == 2, :2]  # visible ones: an occluded joint may lie off the body
        x = np.clip(np.round(points[:, 0]).astype(int), 0, mask.shape[1] - 1)
        y = np.clip(np.round(points[:, 1]).astype(int), 0, mask.shape[0] - 1)
        near = np.zeros_like(mask)
        for dy in (-2, 0, 2):  # within 2 px: a keypoint on a limb's outline
            for dx in (-2, 0, 2):
                near |= np.roll(mask, (dy, dx), axis=(0, 1)).astype(bool)
        inside += int(near[y, x].sum())
        total += len(points)
        masks += 1
    assert masks == 14 and total > 100 and inside / total > 0.9


# --- Label maps, PNGs, crops and flips ---------------------------------------------------------------------------

PART_NAMES = ("background", "torso", "left_arm", "right_arm", "left_leg", "right_leg", "head")
CLOTHES = ("background", "upper_clothes", "pants")


def test_label_maps_round_trip_and_check_their_table():
    labels = np.random.default_rng(2).integers(0, len(PART_NAMES), (13, 17)).astype(np.uint8)
    label_map = LabelMap.from_array(labels, PART_NAMES, "user-png")
    assert np.array_equal(label_map.array(), labels) and label_map.lengths.sum() == 13 * 17
    assert np.array_equal(decode_png(encode_png(labels)), labels)
    with pytest.raises(MaskError, match="not all in the table"):
        LabelMap.from_array(labels + 10, PART_NAMES, "user-png")
    with pytest.raises(MaskError, match="provenance"):
        LabelMap.from_array(labels, PART_NAMES, "guessed")
    mask = LabelMap.from_array(labels > 3, MASK_NAMES, "coco-rle")
    assert mask.is_mask and np.array_equal(mask.array(), (labels > 3).astype(np.uint8))


def test_flip_permutation_swaps_left_and_right_by_name():
    table = flip_permutation(PART_NAMES)
    assert [PART_NAMES[table[i]] for i in range(len(PART_NAMES))] == [
        "background", "torso", "right_arm", "left_arm", "right_leg", "left_leg", "head"]
    assert table[UNKNOWN] == UNKNOWN and np.array_equal(table[table], np.arange(256))


def test_crop_labels_is_nearest_and_unknown_outside_the_image():
    labels = np.zeros((40, 60), np.uint8)
    labels[10:20, 30:45] = 3
    to_crop = box_to_crop(np.array([40.0, 20.0]), 80.0, 80)  # 1 px per px, reaching beyond the image
    crop = crop_labels(labels, to_crop, 80)
    assert set(np.unique(crop)) == {0, 3, UNKNOWN}  # no blended ids
    assert (crop == 3).sum() == 10 * 15
    assert crop[0, 0] == UNKNOWN and crop[79, 79] == UNKNOWN and crop[39, 39] == 0


@pytest.mark.parametrize("rot", [0.0, 23.0])
def test_a_flipped_crop_is_the_mirror_of_the_crop_with_left_and_right_swapped(rot):
    rng = np.random.default_rng(3)
    parts = rng.integers(0, len(PART_NAMES), (50, 40)).repeat(3, 0).repeat(3, 1).astype(np.uint8)
    centre, side = np.array([61.0, 72.0]), 150.0
    plain = augment_labels(parts, box_to_crop(centre, side, 64, rot), False, PART_NAMES, 64)
    flipped = augment_labels(parts, box_to_crop(centre, side, 64, rot, flip=True), True, PART_NAMES, 64)
    # exact without rotation; rotated, a pixel centre that falls on a source pixel's edge may round either way
    allowed = 0 if rot == 0 else 0.002 * 64 * 64
    assert (flipped != flip_permutation(PART_NAMES)[plain[:, ::-1]]).sum() <= allowed
    mask = (parts > 0).astype(np.uint8)
    mirrored = augment_labels(mask, box_to_crop(centre, side, 64, rot, flip=True), True, MASK_NAMES, 64)
    assert (mirrored != augment_labels(mask, box_to_crop(centre, side, 64, rot), False, MASK_NAMES, 64)[:, ::-1]
            ).sum() <= allowed


# --- Through the shards --------------------------------------------------------------------------------------------

def person_with_labels(root: Path, name: str, *, mask: bool = True, parts: bool = True,
                       parsing: bool = False) -> PersonRecord:
    """A 120 x 90 image with a person-shaped box; its mask, left/right part labels and a parsing (upper and lower
    clothes), or none of them."""
    size = (120, 90)
    image = np.full((size[1], size[0], 3), 60, np.uint8)
    labels = np.zeros((size[1], size[0]), np.uint8)
    labels[20:70, 50:70] = 1          # torso
    labels[20:50, 40:50] = 2          # left_arm: image left
    labels[20:50, 70:80] = 3          # right_arm
    image[labels > 0] = 200
    path = root / "images" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    keypoints = np.zeros((NUM_JOINTS, 3), np.float32)
    keypoints[25:37] = (60.0, 45.0, 1.0)
    return PersonRecord(
        dataset="synth", split="train", key=f"synth/{name}", source="test", record=name,
        image_path=f"images/{name}.png", image_root=root, image_size=size, center=np.array([60.0, 45.0]),
        scale=0.4, keypoints_2d=keypoints,
        mask=LabelMap.from_array(labels > 0, MASK_NAMES, "synthetic-exact") if mask else None,
        parts=LabelMap.from_array(labels, PART_NAMES, "synthetic-exact") if parts else None,
        parsing=LabelMap.from_array(np.where(labels > 0, 1 + (np.arange(90) >= 45)[:, None], 0), CLOTHES, "user-png")
        if parsing else None)


@pytest.fixture()
def labelled_set(tmp_path: Path) -> Path:
    records = [person_with_labels(tmp_path, "a"), person_with_labels(tmp_path, "b", mask=False, parts=False),
               person_with_labels(tmp_path, "c", parts=False, parsing=True)]
    write_shards(records, tmp_path / "shards", ShardConfig(crop_res=64, crop_margin=1.5))
    return tmp_path / "shards"


def _members(shard_dir: Path, key: str) -> dict[str, bytes]:
    from shards.lookup import raw_samples

    for shard in list_shards(shard_dir):
        for sample_key, members in raw_samples(shard.path, hint=False):
            if sample_key == key:
                return members
    raise KeyError(key)


def test_masks_are_stored_with_the_crop_and_read_back(labelled_set):
    manifest = json.loads((labelled_set / "manifest.json").read_text())
    assert manifest["sample_format_version"] == 4 and manifest["has_mask"] == 2 and manifest["has_parts"] == 1
    assert manifest["has_parsing"] == 1
    samples = {s.key: s for shard in list_shards(labelled_set) for s in iter_shard(shard)}
    a, b = samples["synth/a"], samples["synth/b"]
    assert a.meta["has_mask"] and a.meta["mask_provenance"] == "synthetic-exact"
    assert a.label_names("parts") == PART_NAMES and not b.meta["has_mask"] and b.labels("mask") is None
    # the stored crop covers 1.5 x the 80 px box at 64 px: 0.533 crop px per image px
    k = 64 / (200 * 0.4 * 1.5)
    assert abs((a.labels("mask") == 1).sum() / (k * k * (20 * 50 + 20 * 30)) - 1) < 0.1
    assert np.array_equal(a.labels("mask") == 1, (a.labels("parts") > 0) & (a.labels("parts") != UNKNOWN))
    assert np.array_equal(a.labels("mask") == UNKNOWN, a.labels("parts") == UNKNOWN) and (a.labels("mask") == UNKNOWN).any()
    assert verify_set(labelled_set).ok


def test_reader_items_carry_masks_flip_them_and_stack_with_samples_without(labelled_set):
    reader = ShardReader(labelled_set, ReaderConfig(img_res=64, shuffle_shards=False, shuffle_buffer=0))
    stored = {s.key: s for s in reader.iter_stored(0, 1)}
    plain = reader.make_item(stored["synth/a"], AugmentParams())
    flipped = reader.make_item(stored["synth/a"], AugmentParams(flip=True))
    assert plain["has_mask"] and plain["has_parts"] and plain["mask"].dtype == torch.uint8
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1))
    swap = torch.from_numpy(flip_permutation(PART_NAMES).astype(np.int64))
    assert torch.equal(flipped["parts"].long(), swap[plain["parts"].flip(-1).long()])
    # the person's left arm (id 2, image left) shows on the right after the flip, named right_arm (id 3)
    assert (plain["parts"][:, :32] == 2).sum() > 0 and (flipped["parts"][:, 32:] == 3).sum() > 0
    other = reader.make_item(stored["synth/b"], AugmentParams())
    clothed = reader.make_item(stored["synth/c"], AugmentParams(flip=True))
    assert clothed["has_parsing"] and not clothed["has_parts"] and set(clothed["parsing"].unique().tolist()) <= {
        0, 1, 2, UNKNOWN}
    batch = torch.utils.data.default_collate([plain, other, clothed])
    assert batch["mask"].shape == (3, 64, 64) and batch["has_mask"].tolist() == [True, False, True]
    assert batch["has_parsing"].tolist() == [False, False, True] and batch["mask"][1].sum() == 0


def test_verify_catches_a_mask_of_the_wrong_size_and_unknown_ids(labelled_set):
    members = _members(labelled_set, "synth/a")
    assert check_sample("synth/a", members) == []
    wrong = dict(members, **{"mask.png": encode_png(np.zeros((32, 32), np.uint8))})
    assert any("mask.png is 32×32 px" in p for p in check_sample("synth/a", wrong))
    bad_ids = dict(members, **{"parts.png": encode_png(np.full((64, 64), 9, np.uint8))})
    assert any("id(s) [9]" in p for p in check_sample("synth/a", bad_ids))
    meta = json.loads(members["json"])
    unknown = dict(members, json=json.dumps(meta | {"mask_provenance": "guessed"}).encode())
    assert any("mask_provenance" in p for p in check_sample("synth/a", unknown))
    missing = {s: v for s, v in members.items() if s != "mask.png"}
    assert any("has_mask is True but mask.png is absent" in p for p in check_sample("synth/a", missing))


def test_format_3_samples_still_read_without_masks(labelled_set):
    members = _members(labelled_set, "synth/b")
    meta = json.loads(members["json"])
    old = {k: v for k, v in meta.items() if k not in ("has_mask", "has_parts")} | {"sample_format_version": 3}
    sample = decode_sample("synth/b", dict(members, json=json.dumps(old).encode()))
    assert sample.labels("mask") is None and check_sample("synth/b", dict(members, json=json.dumps(old).encode())) == []
    item = ShardReader(labelled_set, ReaderConfig(img_res=64)).make_item(sample, AugmentParams())
    assert not item["has_mask"] and not item["has_parts"] and item["mask"].shape == (64, 64)
    with_mask = dict(_members(labelled_set, "synth/a"))
    meta_a = json.loads(with_mask["json"]) | {"sample_format_version": 3}
    with pytest.raises(ValueError, match="formats before 4"):
        decode_sample("synth/a", dict(with_mask, json=json.dumps(meta_a).encode()))


# --- A folder of label PNGs ----------------------------------------------------------------------------------------

@needs_fixtures
def test_a_label_folder_gives_parts_per_person_or_per_image_cut_to_the_mask(tmp_path):
    folder = tmp_path / "parsing"
    folder.mkdir()
    (folder / LABELS_FILE).write_text(json.dumps({"names": ["background", "upper", "lower"],
                                                  "provenance": "user-png"}))
    parsing = np.ones((425, 640), np.uint8)
    parsing[200:, :] = 2
    Image.fromarray(parsing).save(folder / "000000000785.png")
    config = CocoConfig(annotation_file=Path("test_coco.json"), image_dir=Path("."), labels_dir=folder)
    records = {r.key: r for r in CocoAdapter().read(FIXTURES / "coco", "val", config) if isinstance(r, PersonRecord)}
    skier = records["coco/000000000785_a442619"]
    assert skier.parts is None and skier.parsing.names == ("background", "upper", "lower")  # a parsing by default
    assert skier.parsing.provenance == "user-png" and skier.mask.provenance == "coco-polygon"
    assert np.array_equal(skier.parsing.array() > 0, skier.mask.array() == 1)  # cut to the person's mask
    own = parsing.copy()
    own[:] = 2
    Image.fromarray(own).save(folder / key_file_name(skier.key))  # the person's own file wins, taken whole
    again = {r.key: r for r in CocoAdapter().read(FIXTURES / "coco", "val", config) if isinstance(r, PersonRecord)}
    assert (again[skier.key].parsing.array() == 2).all()
    Image.fromarray(np.full((10, 10), 7, np.uint8)).save(folder / key_file_name(skier.key))
    rejected = [r for r in CocoAdapter().read(FIXTURES / "coco", "val", config)
                if not isinstance(r, PersonRecord) and r.key == skier.key]
    assert rejected and rejected[0].reason == "malformed_annotation" and "10x10" in rejected[0].message


def test_coco_occluders_and_crowds_are_unknown_in_a_persons_mask(tmp_path):
    """COCO annotates what is visible: another person in front hides the body behind, so their pixels (and a crowd
    region's) are unknown in this person's mask outside the person, never background; the option turns it off."""
    Image.new("RGB", (40, 30)).save(tmp_path / "a.jpg")
    keypoints = [10, 10, 2] * 17

    def person(aid, x0, x1, crowd=0):
        box = [[x0, 2, x1, 2, x1, 28, x0, 28]]
        segmentation = box if not crowd else {"counts": rle_encode(polygons_to_mask(box, (30, 40))).tolist(),
                                              "size": [30, 40]}
        return {"id": aid, "image_id": 1, "keypoints": keypoints, "num_keypoints": 17, "bbox": [x0, 2, x1 - x0, 26],
                "iscrowd": crowd, "segmentation": segmentation}

    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
            "annotations": [person(1, 5, 20), person(2, 15, 30), person(3, 32, 38, crowd=1)],
            "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    masks = {}
    for unknown in (True, False):
        config = CocoConfig(annotation_file=Path("ann.json"), image_dir=Path("."), min_joints=0,
                            occluders_unknown=unknown)
        records = {r.extra["annotation_id"]: r for r in CocoAdapter().read(tmp_path, "val", config)
                   if isinstance(r, PersonRecord)}
        assert sorted(records) == [1, 2]   # the crowd region is no person
        masks[unknown] = {aid: r.mask.array() for aid, r in records.items()}
        assert records[1].extra.get("mask_unknown_px", 0) == (((30 - 20) + (38 - 32)) * 26 if unknown else 0)
    first, alone = masks[True][1], masks[False][1]
    own = polygons_to_mask([[5, 2, 20, 2, 20, 28, 5, 28]], (30, 40))
    assert np.array_equal(alone, own.astype(np.uint8))            # the annotation's mask alone
    assert np.array_equal(first == 1, own)                         # the person stays the person where they overlap
    assert (first[2:28, 20:30] == UNKNOWN).all() and (first[2:28, 32:38] == UNKNOWN).all()  # occluder, crowd
    assert (first[:, 38:] == 0).all() and (first[:2] == 0).all()   # the rest stays background
    assert (masks[True][2][2:28, 15:30] == 1).all() and (masks[True][2][2:28, 5:15] == UNKNOWN).all()


# --- The synthetic generator's exact silhouettes and part labels, Human3.6M's foreground -------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    from pipelines.synthetic import SynthConfig, generate

    config = SynthConfig(coco_people=0, mpii_people=0, lsp_people=10, lspet_people=0, h36m_subjects=("S1",),
                         h36m_actions=("Directions 1",), h36m_frames=6, image_size=(96, 160),
                         h36m_image_size=(160, 160), datasets=("lsp", "h36m"), workers=1)
    return generate(tmp_path_factory.mktemp("synth"), config)


def test_synthetic_part_labels_put_left_joints_on_left_parts(synthetic):
    from core.joints import JOINT_INDEX
    from pipelines.adapters import iter_dataset
    from pipelines.synthetic import load_truth
    from pipelines.synthetic.paint import SEGMENT_NAMES

    truth = load_truth(synthetic["lsp"] / "fitloop_truth.npz")
    own, other, people = 0, 0, 0
    for record in iter_dataset("lsp", synthetic["lsp"], "train"):
        assert isinstance(record, PersonRecord)
        assert record.mask.provenance == record.parts.provenance == "synthetic-exact"
        assert record.parts.names == SEGMENT_NAMES
        parts = record.parts.array()
        assert np.array_equal(record.mask.array() == 1, parts > 0)
        keypoints = truth.get(record.key)["keypoints_2d"]
        people += 1
        for side, twin in (("left", "right"), ("right", "left")):
            for joint, segments in (("Wrist", ("wrist", "elbow", "hand")), ("Ankle", ("ankle", "knee", "foot"))):
                x, y = np.round(keypoints[JOINT_INDEX[f"{side.title()} {joint}"]]).astype(int)
                seen = {SEGMENT_NAMES[v] for v in np.unique(parts[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3])}
                own += bool(seen & {f"{side}_{s}" for s in segments})     # hidden behind the body: neither
                other += bool(seen & {f"{twin}_{s}" for s in segments})
    assert people == 10 and own >= 0.75 * 4 * people and other <= 0.25 * 4 * people


def test_h36m_foreground_masks_are_read_where_present(synthetic, tmp_path):
    import shutil

    from pipelines.adapters import iter_dataset

    records = [r for r in iter_dataset("h36m", synthetic["h36m"], "train") if isinstance(r, PersonRecord)]
    assert len(records) == 8
    for record in records:
        assert record.mask.provenance == "h36m-foreground" and record.mask.array().sum() > 50
        assert np.array_equal(record.mask.array() == 1, record.parts.array() > 0)  # both the exact silhouette
    bare = tmp_path / "h36m"
    shutil.copytree(synthetic["h36m"], bare)
    shutil.rmtree(bare / "S1" / "MySegmentsMat" / "ground_truth_bs")
    shutil.rmtree(bare / "fitloop_parts")
    records = [r for r in iter_dataset("h36m", bare, "train") if isinstance(r, PersonRecord)]
    assert len(records) == 8 and all(r.mask is None and r.parts is None for r in records)


def test_a_synthetic_shard_set_with_masks_verifies(synthetic, tmp_path):
    from pipelines.adapters import iter_dataset

    out = tmp_path / "shards"
    write_shards(iter_dataset("lsp", synthetic["lsp"], "train"), out, ShardConfig(crop_res=96))
    report = verify_set(out)
    assert report.ok, report.problems
    samples = [s for shard in list_shards(out) for s in iter_shard(shard)]
    assert all(s.meta["has_mask"] and s.meta["has_parts"] for s in samples) and len(samples) == 10


@needs_fixtures
def test_coco_rle_segmentations_decode_as_the_polygons_they_encode(tmp_path):
    data = json.loads((FIXTURES / "coco" / "test_coco.json").read_text())
    image = next(i for i in data["images"] if i["id"] == 785)
    size = (image["height"], image["width"])
    skier = next(a for a in data["annotations"] if a["id"] == 442619)
    polygon_mask = polygons_to_mask(skier["segmentation"], size)
    counts = rle_encode(polygon_mask)
    variants = {"compressed": {"counts": rle_to_string(counts), "size": list(size)},
                "uncompressed": {"counts": counts.tolist(), "size": list(size)},
                "wrong size": {"counts": counts.tolist(), "size": [size[0] + 1, size[1]]},
                "empty": []}
    for name, segmentation in variants.items():
        edited = dict(data, annotations=[dict(skier, segmentation=segmentation)], images=[image])
        (tmp_path / "ann.json").write_text(json.dumps(edited))
        (record,) = CocoAdapter().read(FIXTURES / "coco", "val", CocoConfig(annotation_file=tmp_path / "ann.json",
                                                                             image_dir=Path(".")))
        assert isinstance(record, PersonRecord), name
        if name in ("compressed", "uncompressed"):
            assert record.mask.provenance == "coco-rle" and np.array_equal(record.mask.array(), polygon_mask)
        elif name == "wrong size":  # the mask is lost, never the person, and the record says why
            assert record.mask is None and "size" in record.extra["mask_error"]
        else:
            assert record.mask is None and "mask_error" not in record.extra


def test_render_shows_the_labels_panel(labelled_set):
    from render.sample_picture import render_labels, render_sample

    samples = {s.key: s for shard in list_shards(labelled_set) for s in iter_shard(shard)}
    with_labels, without = samples["synth/a"], samples["synth/b"]
    assert render_sample(with_labels, [], None).size[0] == 2 * render_sample(without, [], None).size[0]
    picture, caption = render_labels(with_labels)
    pixels = np.asarray(picture)
    mask = with_labels.labels("mask")
    assert caption == "mask: synthetic-exact · parts: synthetic-exact (6)"
    assert render_labels(samples["synth/c"])[1] == "mask: synthetic-exact · parsing: user-png (2)"
    assert (pixels[mask == 1] == 255).all(axis=1).any()  # the outline
    parts = with_labels.labels("parts")
    left, right = pixels[parts == 2].mean(axis=0), pixels[parts == 3].mean(axis=0)
    assert np.abs(left - right).max() > 20  # the two arms, one grey in the crop, are tinted apart
