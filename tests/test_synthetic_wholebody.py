"""Synthetic whole-body people (pipelines/synthetic, docs/synthetic.md): COCO-WholeBody and OpenPose files in the
released layouts, read back by the wbdata adapters exactly as the truth says, truth that re-poses, hands within
their anatomical sampling ranges, and, after preprocessing into shards, hand and face keypoints that land on the
rendered hands and face in the stored crops (the pixel test of issue 14).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_wholebody_data import COCO_WHOLEBODY_LENGTHS, OPENPOSE_LENGTHS  # the released layouts' array lengths

from core.pinhole import pinhole
from core.wholebody import (
    FACE_CONTOUR_NAMES,
    PUPIL_NAMES,
    WHOLEBODY_PARTS,
    wholebody_indices,
)
from fitloop.cli import main
from fitting.body_model import OPEN_MODELS, load_body_model, read_model_arrays
from fitting.hand_prior import LIMITS_DEG, HandJointLimits
from fitting.wholebody_model import POSE_SLICES, WholeBodyModel
from pipelines.adapters import iter_dataset
from pipelines.synthetic import SynthConfig, generate, load_truth
from pipelines.synthetic.hands_face import EXPRESSION_CLIP, SAMPLE_RANGES_DEG, hand_components, sample_ranges_rad
from pipelines.synthetic.paint import PARTS, Body, Picture, draw, mesh_of, set_meshes
from shards.crop import warp
from shards.lookup import iter_samples
from shards.schema import PersonRecord

PEOPLE = 5
CHECKED_PARTS = ("left_hand", "right_hand", "face")


@pytest.fixture(scope="module")
def wb_sets(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wbsynth")
    config = SynthConfig(seed=4, datasets=("coco_wholebody", "openpose"), coco_wholebody_people=PEOPLE,
                         openpose_people=PEOPLE, poses="prior", workers=1)
    roots = generate(out / "data", config)
    for name, root in roots.items():
        assert main(["preprocess", name, "--root", str(root), "--out", str(out / f"shards_{name}"),
                     "--split", "train", *(["--split", "val"] if name == "coco_wholebody" else []),
                     "--no-progress"]) == 0
    return {**{name: root for name, root in roots.items()},
            **{f"shards_{name}": out / f"shards_{name}" for name in roots}}


def test_files_follow_the_released_layouts(wb_sets):
    annotations = []
    for path in sorted((wb_sets["coco_wholebody"] / "annotations").glob("coco_wholebody_*_v1.0.json")):
        annotations += json.loads(path.read_text())["annotations"]
    assert len(annotations) == PEOPLE
    for ann in annotations:
        assert {f: len(ann[f]) for f in COCO_WHOLEBODY_LENGTHS} == COCO_WHOLEBODY_LENGTHS
        for part, valid in (("face_kpts", "face_valid"), ("lefthand_kpts", "lefthand_valid"),
                            ("righthand_kpts", "righthand_valid"), ("foot_kpts", "foot_valid")):
            scores = np.asarray(ann[part]).reshape(-1, 3)[:, 2]
            assert ann[valid] is bool((scores > 0).any())
        for box, valid in (("face_box", "face_valid"), ("lefthand_box", "lefthand_valid")):
            assert len(ann[box]) == 4 and (ann[box][2] > 0) is ann[valid]
        face = np.asarray(ann["face_kpts"]).reshape(-1, 3)
        assert (face[:len(FACE_CONTOUR_NAMES)] == 0).all()  # the model has no face contour: never labelled
        assert set(face[:, 2]) <= {0.0, 1.0}                 # the release's face scores
    files = sorted((wb_sets["openpose"] / "keypoints").glob("*_keypoints.json"))
    people = [p for f in files for p in json.loads(f.read_text())["people"]]
    assert len(people) == PEOPLE and len(files) == len(list((wb_sets["openpose"] / "images").glob("*.jpg")))
    pupils = 0
    for person in people:
        assert {f: len(person[f]) for f in OPENPOSE_LENGTHS} == OPENPOSE_LENGTHS
        for field in OPENPOSE_LENGTHS:
            triples = np.asarray(person[field]).reshape(-1, 3)
            labelled = triples[:, 2] > 0
            assert (triples[labelled, 2] <= 1.0).all() and (triples[~labelled] == 0).all()
        pupils += int((np.asarray(person["face_keypoints_2d"]).reshape(-1, 3)[-len(PUPIL_NAMES):, 2] > 0).sum())
    assert pupils > 0  # the open model names pupil vertices, and some faces look at the camera


def truth_rows(root: Path):
    truth = load_truth(root)
    return truth, {key: truth.get(key) for key in truth.row}


@pytest.mark.parametrize("name", ["coco_wholebody", "openpose"])
def test_adapters_read_back_the_truth(wb_sets, name):
    truth, rows = truth_rows(wb_sets[name])
    splits = ("train", "val") if name == "coco_wholebody" else ("train",)
    records = [r for split in splits for r in iter_dataset(name, wb_sets[name], split)]
    assert all(isinstance(r, PersonRecord) for r in records)
    assert sorted(r.key for r in records) == sorted(rows)
    for record in records:
        row = rows[record.key]
        labelled = record.wholebody[:, 2] > 0
        np.testing.assert_array_equal(labelled, row["wholebody_labelled"])
        # COCO-WholeBody writes 2 decimals, as COCO: 0.005 px at most
        assert np.abs(record.wholebody[labelled, :2] - row["wholebody_2d"][labelled]).max() < 0.006
    labelled = truth.arrays["wholebody_labelled"]
    for part in CHECKED_PARTS:  # every part is labelled somewhere, and hidden points exist too
        idx = wholebody_indices(WHOLEBODY_PARTS[part])
        assert labelled[:, idx].sum() > 0
    probed = truth.arrays["wholebody_provided"][:, wholebody_indices(WHOLEBODY_PARTS["left_hand"])]
    assert labelled[:, wholebody_indices(WHOLEBODY_PARTS["left_hand"])].sum() < probed.sum()


@pytest.fixture(scope="module")
def wholebody_model() -> WholeBodyModel:
    return WholeBodyModel(load_body_model("open-smplx"))


def pose_rows(model: WholeBodyModel, truth) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, V, 3) and whole-body points (N, 161, 3) m of every truth row, camera frame."""
    a = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in truth.arrays.items()
         if k in ("full_pose", "betas", "expression", "transl")}
    with torch.no_grad():
        out = model.forward_full(a["full_pose"], a["betas"], a["expression"], a["transl"])
    return out.vertices.double().numpy(), out.points.double().numpy()


def test_truth_reposes_and_hands_and_faces_are_anatomical(wb_sets, wholebody_model):
    truth = load_truth(wb_sets["openpose"])
    a = truth.arrays
    _, points = pose_rows(wholebody_model, truth)
    given = wholebody_model.provided
    assert np.abs(points[:, given] - a["wholebody_3d"][:, given]).max() < 1e-4  # float32 posing
    projected = pinhole(a["wholebody_3d"][:, given], a["focal"][:, None], a["principal"][:, None])
    assert np.abs(projected - a["wholebody_2d"][:, given]).max() < 1e-6
    np.testing.assert_array_equal(a["pose"][:, :66], a["full_pose"][:, :66])
    lo, hi = sample_ranges_rad()
    for side in ("left", "right"):
        comps = hand_components(a["full_pose"][:, POSE_SLICES[f"{side}_hand_pose"]], side)
        assert (comps >= lo - 1e-9).all() and (comps <= hi + 1e-9).all()
        assert comps[..., 2].max() > np.radians(30)  # the hands are curled, not flat
    # the sampling ranges lie inside fitting's anatomical hand limits, so the hand prior is zero on every true hand
    for kind, ranges in SAMPLE_RANGES_DEG.items():
        for (low, high), (limit_low, limit_high) in zip(ranges, LIMITS_DEG[kind]):
            assert limit_low <= low <= high <= limit_high, kind
    hands = {side: torch.as_tensor(a["full_pose"][:, POSE_SLICES[f"{side}_hand_pose"]]) for side in ("left", "right")}
    assert float(HandJointLimits(dtype=torch.float64)(hands["left"], hands["right"]).max()) < 1e-12
    assert np.abs(a["expression"]).max() <= EXPRESSION_CLIP and np.abs(a["expression"]).std() > 0.5
    assert truth.metadata["body_model"]["model_id"] == wholebody_model.body.model_id


def crop_labels(model: WholeBodyModel, truth, image: str, sample) -> np.ndarray:
    """The stored crop's (res, res) labels: 0 background, else 1 + body index × len(PARTS) + part, from the
    image's people re-posed from the truth and drawn again (`paint.draw`), warped by the sample's crop."""
    rows = [i for i, name in enumerate(truth.arrays["image"]) if name == image]
    vertices, _ = pose_rows(model, truth)
    first = rows[0]
    picture = Picture(path=Path("unused.jpg"), size=tuple(int(v) for v in truth.arrays["image_size"][first]),
                      focal=tuple(truth.arrays["focal"][first]), principal=tuple(truth.arrays["principal"][first]),
                      background_seed=int(truth.arrays["background_seed"][first]),
                      bodies=[Body(vertices[i].astype(np.float32), np.full((8, 3), 200), mesh="wholebody")
                              for i in rows])
    _, owner, part, _ = draw(picture)
    labels = np.where(owner >= 0, 1 + owner * len(PARTS) + part, 0).astype(np.uint8)
    res = Image.open(io.BytesIO(sample.jpeg)).size[0]
    return np.asarray(warp(Image.fromarray(labels), sample.image_to_crop, res, resample="nearest",
                           antialias=False))


@pytest.mark.parametrize("name", ["coco_wholebody", "openpose"])
def test_hand_and_face_keypoints_land_on_the_rendered_hands_and_face_in_the_crops(wb_sets, wholebody_model, name):
    arrays, _ = read_model_arrays(OPEN_MODELS["open-smplx"])
    set_meshes({"wholebody": mesh_of(arrays["f"], arrays["weights"])})
    truth = load_truth(wb_sets[name])
    checked, skin_like = 0, 0
    for sample in iter_samples(wb_sets[f"shards_{name}"]):
        assert sample.meta["has_wholebody"]
        row = truth.get(sample.key)
        image = str(row["image"])
        body = [k for k in truth.row if str(truth.get(k)["image"]) == image].index(sample.key)
        labels = crop_labels(wholebody_model, truth, image, sample)
        crop = np.asarray(Image.open(io.BytesIO(sample.jpeg)).convert("RGB"), dtype=np.float64)
        scale = np.sqrt(abs(np.linalg.det(sample.image_to_crop[:2, :2])))  # crop px per image px
        radius = int(np.ceil(scale * 1 + 1))  # painting's 1 image px, and half a crop px of nearest sampling
        skin = row["outfit"][0].astype(np.float64)
        for part in CHECKED_PARTS:
            idx = wholebody_indices(WHOLEBODY_PARTS[part])
            labelled = sample.wholebody_crop[idx, 2] > 0
            np.testing.assert_array_equal(labelled, row["wholebody_labelled"][idx])
            want = 1 + body * len(PARTS) + PARTS.index(part)
            for x, y in sample.wholebody_crop[idx][labelled, :2]:
                u, v = round(float(x)), round(float(y))
                window = labels[max(v - radius, 0):v + radius + 1, max(u - radius, 0):u + radius + 1]
                assert (window == want).any(), (sample.key, part, (x, y))
                checked += 1
                colour = crop[min(max(v, 0), crop.shape[0] - 1), min(max(u, 0), crop.shape[1] - 1)]
                cosine = colour @ skin / (np.linalg.norm(colour) * np.linalg.norm(skin) + 1e-9)
                skin_like += cosine > 0.97
    # measured (seed 4, 5 people): 382 and 383 points checked; skin-coloured at 84% and 90% of them (the rest at
    # a hand's or face's edge, where the JPEG crop blends in the background or the sleeve)
    assert checked >= 300
    assert skin_like >= 0.7 * checked  # the stored JPEG shows skin there (hands and faces are skin)


def test_demo_fits_the_wholebody_people_appends_them_and_reports_them(wb_sets, tmp_path):
    from fitloop.commands.demo import wholebody_fits
    from fits.schema import WHOLEBODY_COLUMNS
    from fits.table import FitsTable
    from pipelines.report import write_report

    FitsTable.create(tmp_path / "fits")
    roots = [wb_sets["coco_wholebody"], wb_sets["openpose"]]
    result = wholebody_fits(tmp_path / "shards", tmp_path / "fits", roots, tmp_path)
    assert result["fits"] == 2 * PEOPLE and result["version"] == 1 and result["start"] == "lifted"
    assert {k: result["shards"][k] for k in ("read", "written", "rejected")} == {
        "read": 2 * PEOPLE, "written": 2 * PEOPLE, "rejected": 0}
    fits = FitsTable.open(tmp_path / "fits").log(columns=["key", "body_model_id", *WHOLEBODY_COLUMNS[:4]])
    assert fits.num_rows == 2 * PEOPLE and set(fits["body_model_id"].to_pylist()) == {result["model_id"]}
    for column in WHOLEBODY_COLUMNS[:4]:
        assert fits[column].null_count == 0, column
    assert [row["dataset"] for row in result["rows"]] == ["coco_wholebody", "openpose"]
    for row in result["rows"]:
        assert row["fits"] == PEOPLE
        # medians measured: body 69 and 55 mm, hands 21-24 mm, face 0.5 px; without the dataset torso standing in
        # for OpenPose's (`fitting.smplifyx.OPENPOSE_STAND_INS`), COCO-WholeBody's body error was 137 mm (12 people)
        assert row["body_pa_mpjpe_mm"] < 120, row
        assert max(row["left_hand_pa_mpjpe_mm"], row["right_hand_pa_mpjpe_mm"]) < 45, row
        assert row["face_reprojection_px"] < 2, row
    assert (tmp_path / result["picture"]).is_file()
    row = result["rows"][0]
    manifest = {"counts": {"read": 5, "written": 5, "rejected": 0}, "shards": [], "by_dataset": {},
                "rejects_by_reason": {}}
    report = write_report(tmp_path, manifest=manifest, seed={"fitted": 5, "appended": 5},
                          train={"run_dir": str(tmp_path / "run")}, fit_errors=[], pictures={"wholebody": "w.png"},
                          timings={}, notes=[], wholebody=result).read_text()
    assert "## Whole-body people (SMPL-X)" in report and "![whole-body fits](w.png)" in report
    assert f"| coco_wholebody | {PEOPLE} | {row['body_pa_mpjpe_mm']:.1f} |" in report
    assert "None" not in report and "nan" not in report


def test_seeding_fits_the_whole_body_samples_with_smplifyx(wb_sets, tmp_path):
    """`fitloop fits seed` with the SMPL-X-layout model the people were drawn with: every sample with whole-body
    keypoints gets a whole-body seed fit (SMPLify-X, its own fit_config_hash), scored by SMPLify's 49-joint loss;
    a sample without them (here: the same samples, their whole-body keypoints removed) gets SMPLify's body fit."""
    from fits.schema import WHOLEBODY_COLUMNS, WHOLEBODY_PART_COLUMNS
    from fits.seeding import SeedConfig, build_fitter, fit_keypoints, keypoint_batches, seed_fits, shard_samples
    from fits.table import FitsTable

    shards = [wb_sets["shards_coco_wholebody"], wb_sets["shards_openpose"]]
    config = SeedConfig(body_model="open-smplx", batch_size=16)
    result = seed_fits(shards, tmp_path / "fits", config)
    fitter = build_fitter(config)
    assert result.fitted == result.appended == 2 * PEOPLE
    rows = FitsTable.open(tmp_path / "fits").log(columns=["key", "loss", "fit_config_hash", *WHOLEBODY_COLUMNS])
    assert set(rows["fit_config_hash"].to_pylist()) == {fitter.wholebody_provenance.fit_config_hash}
    assert fitter.wholebody_provenance.fit_config_hash != fitter.provenance.fit_config_hash
    for column in WHOLEBODY_COLUMNS[:4]:   # the parameters (a part's reprojection is null where it is unseen)
        assert rows[column].null_count == 0, column
    # the hands were fitted: measured 0.04-1.5 px per hand, median 0.25 (fit-frame px); the same fits with flat
    # hands miss their keypoints by 2.3-5.7 px, median 3.2 (OpenPose people of this seed)
    hands = np.stack([rows[c].to_numpy() for c in WHOLEBODY_PART_COLUMNS[:2]], 1)
    assert np.nanmedian(hands) < 1.0 and np.isfinite(rows["loss"].to_numpy()).all()

    batch = next(keypoint_batches(shard_samples(shards[0]), 4))
    batch.wholebody[1::2] = 0.0                                  # two of the four: body keypoints only
    mixed = fit_keypoints(fitter, batch)
    assert mixed["key"].to_pylist() == batch.keys
    assert mixed["fit_config_hash"].to_pylist() == [fitter.wholebody_provenance.fit_config_hash,
                                                    fitter.provenance.fit_config_hash] * 2
    assert mixed["hand_pose"].is_null().to_pylist() == [False, True, False, True]


def test_a_model_without_smplx_tree_is_refused_for_wholebody_people(tmp_path):
    from pipelines.synthetic import SynthError

    config = SynthConfig(datasets=("openpose",), openpose_people=1, wholebody_model="open", workers=1)
    with pytest.raises(SynthError, match=r"wholebody_model open: .*\(55 skinning joints\), this model has 24"):
        generate(tmp_path, config)
    assert not (tmp_path / "openpose").exists()


def test_the_open_smplx_fingertips_are_its_own_vertices(wholebody_model):
    """The open SMPL-X file names its fingertip vertices; smplx's SMPL-X table (10,475 vertices) means other points
    on its 13,492-vertex mesh (before the integration fix: the left thumb's tip at the body's middle)."""
    from core.wholebody import FINGERTIP_VERTEX_KEYS, WHOLEBODY_INDEX

    arrays, _ = read_model_arrays(OPEN_MODELS["open-smplx"])
    own = {str(k): int(v) for k, v in zip(arrays["vertex_ids_names"], arrays["vertex_ids"])}
    zeros = {n: torch.zeros(1, d) for n, d in (("pose", 165), ("betas", 10), ("expression", 10))}
    with torch.no_grad():
        out = wholebody_model.forward_full(zeros["pose"], zeros["betas"], zeros["expression"])
    for name, key in FINGERTIP_VERTEX_KEYS.items():
        np.testing.assert_allclose(out.points[0, WHOLEBODY_INDEX[name]], out.vertices[0, own[key]], atol=1e-6)
    hand = out.points[0, wholebody_indices(WHOLEBODY_PARTS["left_hand"])]
    assert (hand[:, 0] > 0.6).all()  # the whole left hand at the end of the left arm (+X), tips included
