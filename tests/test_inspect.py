"""Shard and fit inspection: where a fit lands in a stored crop, rendered pixels against known geometry, verify
against truncation and tampering, `show`, contact sheets, the HTML page, stats, and seed fits.

The synthetic people are the open body model at a known fit (SPIN's crop camera); their keypoints are that fit's
joints projected with SPIN's *full-image* camera (focal 5000·box/224, principal point at the box centre), an
independent path to the same pixels.
"""
from __future__ import annotations

import json
import re
import shutil
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import model_files
import numpy as np
import pytest
from PIL import Image

from core.frames import FIT_FOCAL, fit_camera, keypoints_in_fit_frame, pose_fit
from core.joints import J24_NAMES, JOINT_INDEX, NUM_JOINTS
from fitloop.cli import main
from fits.schema import FitProvenance, fits_batch
from fits.table import FitsTable
from fitting.body_model import load_body_model
from render.draw import LEFT_COLOUR, RIGHT_COLOUR
from render.sample_picture import FitPanel, contact_sheet, projected_joints, render_panel, render_sample
from shards.lookup import SampleNotFoundError, find_samples, pick_samples
from shards.schema import PersonRecord
from shards.stats import shard_stats
from shards.verify import verify_set
from shards.writer import ShardConfig, write_shards

IMAGE_SIZE = (400, 300)
GREY = 90
SCALE = 1.3  # box side 260 px
DRAWN = ("Right Ankle", "Left Wrist", "Top of Head (LSP)")


def known_fit(dx: float = 0.0) -> dict:
    """A fits-table row: the mean body upright and facing the camera, ~171 px tall in the 224 px fit frame."""
    pose = np.zeros(72, np.float32)
    pose[0] = np.pi
    pose[3 * 16 + 2] = -0.6   # left shoulder: the arms hang a little, so the markers sit apart
    pose[3 * 17 + 2] = 0.6
    return {"pose": pose, "betas": np.zeros(10, np.float32),
            "cam_t": np.array([dx, 0.05, 2 * FIT_FOCAL / (224 * 0.9)], np.float32), "loss": 1.5,
            "source": "seed", "run_id": "test", "body_model_id": None}


def image_keypoints(model, fit: dict, center: np.ndarray, box_side: float) -> np.ndarray:
    """(49, 3) the fit's J24 joints in original-image px via SPIN's full-image camera, confidence 1."""
    joints = pose_fit(model, fit["pose"], fit["betas"], fit["cam_t"]).joints
    focal = FIT_FOCAL * box_side / 224.0
    kp = np.zeros((NUM_JOINTS, 3), np.float32)
    for name in J24_NAMES[:14]:
        j = joints[JOINT_INDEX[name]]
        kp[JOINT_INDEX[name]] = (center[0] + focal * j[0] / j[2], center[1] + focal * j[1] / j[2], 1.0)
    return kp


def person(root: Path, model, name: str, fit: dict, split: str = "train") -> PersonRecord:
    path = root / "images" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", IMAGE_SIZE, (GREY, GREY, GREY)).save(path)
    center = np.array([200.0, 150.0], np.float32)
    return PersonRecord(dataset="synth", split=split, key=f"synth/{name}", source="synthetic.json", record=name,
                        image_path=f"images/{name}.png", image_root=root, image_size=IMAGE_SIZE, center=center,
                        scale=SCALE, keypoints_2d=image_keypoints(model, fit, center, 200.0 * SCALE))


@pytest.fixture(scope="module")
def model():
    return load_body_model("open")


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory, model) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    records = [person(root / "data", model, f"p{i}", known_fit(0.1 * (i - 2))) for i in range(5)]
    write_shards(records, root / "set", ShardConfig(samples_per_shard=2))
    return root / "set"


def crop_pixels(picture: Image.Image, size: int) -> np.ndarray:
    return np.asarray(picture)[:size, :size].astype(int)


# --- Where a fit lands ------------------------------------------------------------------------------------------

def test_fit_camera_puts_a_fit_where_spins_full_image_camera_does(shard_set, model):
    sample = find_samples(shard_set, ["synth/p3"])[0]
    fit = known_fit(0.1)
    joints = pose_fit(model, fit["pose"], fit["betas"], fit["cam_t"]).joints
    in_crop = fit_camera(sample.meta["crop"]).project(joints)
    in_image = in_crop @ sample.crop_to_image[:2, :2].T + sample.crop_to_image[:2, 2]
    focal = FIT_FOCAL * sample.meta["box_side_px"] / 224.0
    expected = np.asarray(sample.meta["center"]) + focal * joints[:, :2] / joints[:, 2:]
    np.testing.assert_allclose(in_image, expected, atol=1e-6)
    # SMPLify's frame: the 224 px crop, corners at integers, principal point 112.
    in_fit_frame = keypoints_in_fit_frame(sample.keypoints_crop, sample.meta["crop"])
    visible = in_fit_frame[:, 2] > 0
    spin = FIT_FOCAL * joints[:, :2] / joints[:, 2:] + 112.0
    np.testing.assert_allclose(in_fit_frame[visible, :2], spin[visible], atol=2e-3)
    assert not in_fit_frame[~visible].any()


def test_camera_follows_a_resized_picture(shard_set):
    camera = fit_camera(find_samples(shard_set, ["synth/p0"])[0].meta["crop"])
    point = np.array([[0.3, -0.2, 40.0]])
    small = camera.resized(160)
    np.testing.assert_allclose(small.project(point), (camera.project(point) + 0.5) * 0.5 - 0.5, atol=1e-9)


# --- Rendered pixels --------------------------------------------------------------------------------------------

def test_projected_joints_land_on_their_markers_and_the_mesh_on_the_person(shard_set, model):
    sample = find_samples(shard_set, ["synth/p2"])[0]
    fit = known_fit(0.0)
    res = sample.meta["crop"]["res"]
    with_fit = crop_pixels(render_sample(sample, [FitPanel("best", fit)], model), res)
    without = crop_pixels(render_sample(sample, [FitPanel("keypoints", None)], model), res)
    joints = projected_joints(sample, fit, model)
    for name in DRAWN:
        x, y = np.rint(joints[JOINT_INDEX[name]]).astype(int)
        colour = RIGHT_COLOUR if name.startswith("Right") else LEFT_COLOUR if name.startswith("Left") else None
        if colour is not None:
            assert tuple(with_fit[y, x]) == colour, name
        assert tuple(with_fit[y, x]) == tuple(without[y, x]), name  # the marker is drawn over the mesh
    pelvis = np.rint(joints[JOINT_INDEX["Pelvis (MPII)"]]).astype(int)  # not annotated: no marker there
    belly = pelvis - (0, 12)                                                # above the line between the hips
    window = (slice(belly[1] - 3, belly[1] + 4), slice(belly[0] - 3, belly[0] + 4))
    assert np.abs(with_fit[window] - without[window]).sum(-1).min() > 40  # mesh covers the whole window
    assert abs(int(without[window].mean()) - GREY) <= 3                   # and the crop is plain grey there
    corner = (slice(res - 12, res - 2), slice(2, 12))                       # bottom left: no body, no text
    np.testing.assert_array_equal(with_fit[corner], without[corner])
    mesh = np.abs(with_fit - without).sum(-1) > 40
    ys, xs = np.nonzero(mesh)
    assert abs(np.median(xs) - pelvis[0]) < 15 and ys.min() < pelvis[1] < ys.max()


def test_a_sample_without_a_fit_says_so_on_the_picture(shard_set, model):
    sample = find_samples(shard_set, ["synth/p1"])[0]
    picture, notes = render_panel(sample, None, model)
    assert notes == ["no fit"]
    top_left = np.asarray(picture)[2:18, 2:60].astype(int)
    assert (top_left.min(-1) > 230).any() and (top_left.max(-1) < 30).any()  # white text, black outline


def test_a_fit_without_a_camera_gets_one_from_the_torso(shard_set, model):
    sample = find_samples(shard_set, ["synth/p2"])[0]
    fit = known_fit(0.0) | {"cam_t": None}
    _, notes = render_panel(sample, fit, model)
    assert notes == ["no camera stored: estimated from the torso"]


def test_real_smpl_layout_models_render(tmp_path, shard_set):
    path = tmp_path / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"
    model_files.write_chumpy_pickle(path, model_files.smpl_arrays())
    smpl = load_body_model(path)
    sample = find_samples(shard_set, ["synth/p2"])[0]
    fit = known_fit(0.0) | {"body_model_id": "fitloop-open@x"}
    picture = render_sample(sample, [FitPanel("best", fit)], smpl)
    bare = render_sample(sample, [FitPanel("keypoints", None)], smpl)
    res = sample.meta["crop"]["res"]
    assert (np.abs(crop_pixels(picture, res) - crop_pixels(bare, res)).sum(-1) > 40).sum() > 500


def test_openpose_detections_are_drawn_with_body_25s_limbs():
    from core.joints import OPENPOSE_NAMES
    from render.draw import BODY_25_SKELETON, draw_keypoints

    published = (1, 8, 1, 2, 1, 5, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 10, 11, 8, 12, 12, 13, 13, 14, 1, 0, 0, 15, 15,
                 17, 0, 16, 16, 18, 14, 19, 19, 20, 14, 21, 11, 22, 22, 23, 11, 24)  # POSE_BODY_25_PAIRS_RENDER_GPU
    assert [(OPENPOSE_NAMES.index(a), OPENPOSE_NAMES.index(b)) for a, b in BODY_25_SKELETON] == list(
        zip(published[::2], published[1::2]))
    keypoints = np.zeros((NUM_JOINTS, 3), np.float32)  # detections only, as `fitloop preprocess openpose` stores
    keypoints[JOINT_INDEX["OP RKnee"]] = (20.0, 20.0, 0.9)
    keypoints[JOINT_INDEX["OP RAnkle"]] = (20.0, 80.0, 0.8)
    keypoints[JOINT_INDEX["OP Neck"]] = (70.0, 10.0, 0.9)
    keypoints[JOINT_INDEX["OP LShoulder"]] = (90.0, 10.0, 0.9)
    picture = np.asarray(draw_keypoints(Image.new("RGB", (100, 100)), keypoints, radius=3.0))
    assert tuple(picture[50, 20]) == RIGHT_COLOUR  # midway down the shin, far from both markers
    assert tuple(picture[10, 80]) == LEFT_COLOUR   # neck to left shoulder: the shoulder's side


# --- Contact sheets and the CLI ---------------------------------------------------------------------------------

def test_contact_sheet_dimensions(shard_set, tmp_path, model):
    out = tmp_path / "sheet.png"
    assert main(["shards", "render", str(shard_set), "--sample", "5", "--columns", "2", "--size", "96",
                 "--out", str(out)]) == 0
    tile_w, tile_h = 96, 96 + 2 * 14 + 4
    assert Image.open(out).size == (2 * tile_w + 4, 3 * tile_h + 2 * 4)
    sheet = contact_sheet([Image.new("RGB", (10, 20))] * 7)  # default: a square grid, ceil(sqrt(7)) = 3 columns
    assert sheet.size == (3 * 10 + 2 * 4, 3 * 20 + 2 * 4)


def test_pick_is_deterministic_and_a_missing_key_is_named(shard_set, capsys):
    assert [s.key for s in pick_samples(shard_set, 3, seed=4)] == [s.key for s in pick_samples(shard_set, 3, seed=4)]
    assert len(pick_samples(shard_set, 99)) == 5
    with pytest.raises(SampleNotFoundError, match="synth/nobody"):
        find_samples(shard_set, ["synth/p0", "synth/nobody"])
    assert main(["shards", "show", str(shard_set), "synth/nobody"]) == 1
    assert "synth/nobody" in capsys.readouterr().err


@pytest.fixture()
def fits_table(tmp_path, shard_set, model) -> Path:
    """Two versions: a poor fit of p2 (v1), then the known fit (v2); p4 has no fit."""
    table = FitsTable.create(tmp_path / "fits")
    prov = FitProvenance(run_id="run-a", body_model_id=model.model_id, fit_config_hash="0" * 16, source="seed")
    for dx, loss, hour in ((0.4, 80.0, 1), (0.0, 1.5, 2)):
        fit = known_fit(dx)
        table.append(fits_batch(["synth/p2", "synth/p3"], np.stack([fit["pose"]] * 2), np.zeros((2, 10)), prov,
                                loss=np.array([loss, loss]), cam_t=np.stack([fit["cam_t"]] * 2),
                                time=datetime(2025, 1, 1, hour, tzinfo=timezone.utc)))
    return tmp_path / "fits"


def test_show_prints_metadata_keypoints_and_fits_history(shard_set, fits_table, capsys):
    assert main(["shards", "show", str(shard_set), "synth/p2", "--fits", str(fits_table)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("synth/p2: synth / train, record p2 of synthetic.json")
    assert "keypoints: 14 of 49 annotated" in out and "Top of Head (LSP)" in out
    assert "as of version 2: 2 fit(s), oldest first" in out
    history = [line for line in out.splitlines() if "loss" in line and "run run-a" in line]
    assert len(history) == 2 and "80.000" in history[0] and history[1].lstrip().startswith("*")
    assert "None" not in out and "epoch" not in history[0]  # seed fits have no epoch or step: nothing is said
    assert main(["shards", "show", str(shard_set), "synth/p2", "--fits", str(fits_table), "--version", "1",
                 "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["meta"]["key"] == "synth/p2" and len(shown["keypoints_crop"]) == NUM_JOINTS
    assert [r["loss"] for r in shown["history"]] == [80.0]


def test_render_png_beside_an_older_version(shard_set, fits_table, tmp_path, capsys):
    out = tmp_path / "p2.png"
    assert main(["shards", "render", str(shard_set), "--keys", "synth/p2", "--fits", str(fits_table),
                 "--version", "1", "--out", str(out)]) == 0
    picture = np.asarray(Image.open(out)).astype(int)
    assert picture.shape[:2] == (320 + 2 * 14 + 4, 2 * 320)
    # v1's fit sits 0.4 m to the right: the two panels differ in the crop, not in the caption layout
    assert np.abs(picture[:320, :320] - picture[:320, 320:]).sum(-1).max() > 40


def test_html_page_links_to_pictures_metadata_and_histories(shard_set, fits_table, tmp_path, capsys):
    out = tmp_path / "web" / "page.html"
    assert main(["shards", "render", str(shard_set), "--keys", "synth/p2", "synth/p4", "--fits", str(fits_table),
                 "--out", str(out)]) == 0
    index = out.read_text()
    links = re.findall(r"(?:href|src)='([^']+)'", index)
    assert {"page_files/synth~p2.html", "page_files/synth~p2.png", "page_files/synth~p4.json"} <= set(links)
    assert all((out.parent / link).is_file() for link in links)
    detail = (out.parent / "page_files" / "synth~p2.html").read_text()
    for link in re.findall(r"(?:href|src)='([^']+)'", detail):
        assert (out.parent / "page_files" / link).resolve().is_file(), link
    assert "Fits history (2 fit(s)" in detail and "Top of Head (LSP)" in detail and "&quot;synth/p2&quot;" in detail
    assert "No fit of this sample" in (out.parent / "page_files" / "synth~p4.html").read_text()
    assert json.loads((out.parent / "page_files" / "synth~p4.json").read_text())["key"] == "synth/p4"


def test_render_says_which_body_models_the_tables_fits_are_of_and_how_to_draw_them(shard_set, tmp_path, capsys,
                                                                                   model):
    from render.sample_picture import fits_by_other_models, model_option

    small = load_body_model("open-small")
    table = FitsTable.create(tmp_path / "fits")
    prov = FitProvenance(run_id="run-s", body_model_id=small.model_id, fit_config_hash="0" * 16, source="seed")
    fit = known_fit(0.0)
    table.append(fits_batch(["synth/p2"], fit["pose"][None], np.zeros((1, 10)), prov, loss=np.array([1.5]),
                            cam_t=fit["cam_t"][None], time=datetime(2025, 1, 1, tzinfo=timezone.utc)))
    args = ["shards", "render", str(shard_set), "--keys", "synth/p2", "--fits", str(tmp_path / "fits")]
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "open.png")]) == 0
    note = capsys.readouterr().err
    assert f"1 of 1 sample(s) have no fit by {model.model_id} (--model open)" in note
    assert note.endswith(f"draw them with --model open-small ({small.model_id})\n") and len(note.splitlines()) == 1
    assert main(args + ["--model", "open-small", "--out", str(tmp_path / "small.png")]) == 0
    assert capsys.readouterr().err == ""
    sample = find_samples(shard_set, ["synth/p2"])[0]
    bare = crop_pixels(render_sample(sample, [FitPanel("keypoints", None)], None), 320)[40:]  # below the note
    np.testing.assert_array_equal(crop_pixels(Image.open(tmp_path / "open.png"), 320)[40:], bare)  # no mesh
    assert (np.abs(crop_pixels(Image.open(tmp_path / "small.png"), 320)[40:] - bare).sum(-1) > 40).sum() > 500
    assert fits_by_other_models({"a": [{"body_model_id": "smpl:1"}, {"body_model_id": "open:2"}], "b": [],
                                 "c": [{"body_model_id": "open:2"}, {"body_model_id": "smpl:1"}]}, "open:2") == {}
    assert fits_by_other_models({"a": [{"body_model_id": "smpl:1"}], "b": []}, "open:2") == {"a": ["smpl:1"]}
    assert model_option(small.model_id) == "--model open-small"
    assert model_option("smplx:0123456789abcdef") == "--model <SMPL-X file>"


# --- Verify -----------------------------------------------------------------------------------------------------

def copy_set(shard_set: Path, dest: Path) -> Path:
    dest.mkdir()
    for path in shard_set.iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    return dest


def member_offset(shard: Path, suffix: str, index: int = 0) -> tuple[str, int]:
    with tarfile.open(shard) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith("." + suffix)][index]
    return member.name.split(".")[0], member.offset_data


def change_byte(path: Path, offset: int, value: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = data[offset] ^ 0xFF if value is None else value
    path.write_bytes(bytes(data))


def test_verify_reads_every_sample_and_decodes_every_image(shard_set, capsys):
    report = verify_set(shard_set)
    assert report.ok and (report.shards_checked, report.samples_checked, report.images_decoded) == (3, 5, 5)
    assert main(["shards", "verify", str(shard_set)]) == 0
    assert "3 shards checked, 5 samples read, 5 images decoded: OK" in capsys.readouterr().out


def test_ls_names_a_shard_of_several_datasets_mixed(shard_set, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    shutil.copytree(shard_set, mixed)
    manifest = json.loads((mixed / "manifest.json").read_text())
    manifest["shards"][0].update(dataset=None, split=None)  # as a flow that mixes datasets in a shard writes it
    (mixed / "manifest.json").write_text(json.dumps(manifest))
    assert main(["shards", "ls", str(mixed)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].split()[1:3] == ["mixed", "mixed"] and rows[2].split()[1:3] == ["synth", "train"]
    assert "None" not in "\n".join(rows)


def test_verify_and_stats_count_progress_once_per_sample(shard_set):
    ticks: list[int] = []
    assert verify_set(shard_set, progress=ticks.append).samples_checked == 5 and ticks == [1] * 5
    ticks.clear()
    assert shard_stats(shard_set, progress=ticks.append)["keypoints"]["samples"] == 5 and ticks == [1] * 5


def test_verify_catches_a_truncated_shard_and_names_the_last_whole_sample(shard_set, tmp_path, capsys):
    broken = copy_set(shard_set, tmp_path / "set")
    shard = broken / "synth-train-000001.tar"
    key, jpeg_at = member_offset(shard, "jpg", 1)
    shard.write_bytes(shard.read_bytes()[:jpeg_at + 100])  # ends inside the second sample's JPEG
    report = verify_set(broken)
    assert not report.ok
    assert any("synth-train-000001.tar: sha256 mismatch" in p for p in report.problems)
    assert any(re.search(r"synth-train-000001.tar: the tar breaks off after sample synth/p2 \(1 read whole\)", p)
               for p in report.problems), report.problems
    assert main(["shards", "verify", str(broken)]) == 1
    assert main(["shards", "verify", str(broken), "--quick"]) == 1


def test_verify_names_the_tampered_sample_where_the_damage_shows(shard_set, tmp_path):
    broken = copy_set(shard_set, tmp_path / "set")
    shard = broken / "synth-train-000000.tar"
    key, json_at = member_offset(shard, "json", 1)
    text = shard.read_bytes()[json_at:json_at + 4000]
    at = json_at + text.index(b'"scale": ') + len(b'"scale": ')
    change_byte(shard, at, ord("7") if shard.read_bytes()[at] != ord("7") else ord("8"))  # another scale
    shard2 = broken / "synth-train-000002.tar"
    key2, jpeg_at = member_offset(shard2, "jpg")
    change_byte(shard2, jpeg_at + 1)  # the JPEG's SOI marker: the image no longer decodes
    report = verify_set(broken)
    assert report.bad_samples == [key, key2]
    assert any(p.startswith(f"synth-train-000000.tar: sample {key}: json box_side_px") for p in report.problems)
    assert any(p.startswith(f"synth-train-000002.tar: sample {key2}: jpg does not decode") for p in report.problems)
    assert sum("sha256 mismatch" in p for p in report.problems) == 2


def test_verify_says_when_only_the_checksum_can_tell(shard_set, tmp_path):
    broken = copy_set(shard_set, tmp_path / "set")
    shard = broken / "synth-train-000001.tar"
    _, jpeg_at = member_offset(shard, "jpg")
    change_byte(shard, jpeg_at + 2000)  # inside the entropy-coded data: decodes, with wrong pixels
    report = verify_set(broken)
    assert not report.ok and not report.bad_samples
    assert any("synth-train-000001.tar: sha256 mismatch" in p for p in report.problems)
    assert any("cannot be located" in p for p in report.problems)


def test_verify_catches_keypoints_that_disagree_with_their_crop(shard_set, tmp_path):
    broken = copy_set(shard_set, tmp_path / "set")
    shard = broken / "synth-train-000000.tar"
    key, npy_at = member_offset(shard, "keypoints_crop.npy")
    wrist = JOINT_INDEX["Left Wrist"]
    change_byte(shard, npy_at + 128 + 4 * (3 * wrist) + 3)  # the high byte of its x: a different float
    report = verify_set(broken)
    assert report.bad_samples == [key]
    assert any("keypoints_crop.npy is" in p and "off keypoints_2d.npy" in p for p in report.problems)


# --- Stats and seed fits ----------------------------------------------------------------------------------------

def test_stats_count_visible_joints_and_box_sizes(shard_set, capsys):
    stats = shard_stats(shard_set)
    assert stats["keypoints"]["samples"] == 5
    assert stats["keypoints"]["visible"]["Left Wrist"] == 5 and stats["keypoints"]["visible"]["OP Nose"] == 0
    boxes = stats["boxes"]["by_dataset"]["synth"]
    assert boxes["samples"] == 5 and boxes["median"] == pytest.approx(260.0) and boxes["histogram"]["256-512"] == 5
    assert boxes["magnified"] == 0  # 260 px boxes are shown at 213 px: shrunk
    assert "keypoints" not in shard_stats(shard_set, scan=False)
    assert main(["shards", "stats", str(shard_set)]) == 0
    out = capsys.readouterr().out
    assert "keypoints visible (confidence > 0) over 5 samples: 14 of 49 joints" in out and "Left Wrist" in out


def test_seed_fits_recover_the_people_and_append_only_improvements(shard_set, tmp_path, model):
    from fits.seeding import SeedConfig, seed_fits

    table_path = tmp_path / "fits"
    result = seed_fits(shard_set, table_path, SeedConfig(batch_size=4), keys=["synth/p1", "synth/p2"])
    # SPIN's loss (mean over the 49 joints of c² ρ, px²): 1.18 from the lifted start, 0.74 from the mean pose
    assert result.fitted == 2 and result.appended == 2 and result.mean_loss < 1.5
    table = FitsTable.open(table_path)
    best = {r["key"]: r for r in table.best().to_pylist()}
    assert set(best) == {"synth/p1", "synth/p2"} and all(r["source"] == "seed" for r in best.values())
    sample = find_samples(shard_set, ["synth/p2"])[0]
    found = projected_joints(sample, best["synth/p2"], model)
    visible = sample.keypoints_crop[:, 2] > 0
    assert np.abs(found[visible] - sample.keypoints_crop[visible, :2]).max() < 3.0  # px in the 320 px crop
    # the same fits again (the same batch: a fit's last float bits depend on its batch's composition, through
    # BLAS's blocking, so p2 refitted alone may come out 1e-6 lower or higher) are no improvement
    again = seed_fits(shard_set, table_path, SeedConfig(batch_size=4), keys=["synth/p1", "synth/p2"])
    assert again.fitted == 2 and again.appended == 0
