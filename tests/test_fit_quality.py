"""The quality record of a fit (fitting.quality) and the bars on it (fits.quality): per-part reprojection on
constructed cases, facing under a turn, the candidates' spread against the evaluation's PA-MPJPE, the record's
columns through the table's operations, and filters that drop exactly the rows below a bar."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from deltalake import DeltaTable, write_deltalake

from core.camera import project
from core.joints import BODY_PARTS, EVAL_J14, J24_NAMES, JOINT_INDEX, indices
from core.metrics import pa_mpjpe
from fitloop.cli import main
from fits.quality import FACING_AMBIGUOUS, FILTER_COLUMNS, FitFilter, columns_of, filter_rows
from fits.schema import (
    PART_COLUMNS,
    QUALITY_COLUMNS,
    FitProvenance,
    FitsTableError,
    check_fits,
    fits_batch,
    schema_of_version,
)
from fits.store import FitsStore
from fits.table import FitsTable
from fitting.body_model import load_body_model
from fitting.quality import PART_NAMES, FitQuality, candidate_spread, facing, fit_quality, part_reprojection
from fitting.skeleton import compose_axis_angle, rodrigues

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
MODEL = "open:aaaaaaaaaaaaaaaa"
CROP_CENTER = torch.tensor([[112.0, 112.0]])
SPIN_FOCAL = 5000.0  # SPIN's crop camera, px


@pytest.fixture(scope="module")
def body():
    return load_body_model("open-small")


def posed(body, pose: torch.Tensor) -> torch.Tensor:
    """The 49 joints (B, 49, 3), model frame, of the open-small mean shape in ``pose`` (B, 72)."""
    with torch.no_grad():
        return body(torch.zeros(len(pose), body.num_betas), pose[:, 3:], pose[:, :3]).joints


def facing_camera(batch: int = 1) -> torch.Tensor:
    """SPIN's upright start facing the camera: global orientation π about x, body pose 0."""
    pose = torch.zeros(batch, 72)
    pose[:, 0] = math.pi
    return pose


def turned(pose: torch.Tensor, axis: tuple[float, float, float], angle: float) -> torch.Tensor:
    """``pose`` with its global orientation turned by ``angle`` rad about a camera axis."""
    out = pose.clone()
    turn = torch.tensor(axis, dtype=pose.dtype) * angle
    out[:, :3] = compose_axis_angle(turn.expand(len(pose), 3), pose[:, :3])
    return out


def keypoints_of(projected: torch.Tensor, conf: float = 1.0) -> torch.Tensor:
    """Keypoints (B, 49, 3) exactly at ``projected`` (B, 49, 2), every joint with confidence ``conf``."""
    return torch.cat([projected, torch.full(projected.shape[:2] + (1,), conf)], -1)


# --- per-part reprojection --------------------------------------------------------------------------------------
def test_the_parts_cover_the_24_dataset_joints_once():
    assert sorted(j for part in BODY_PARTS.values() for j in part) == sorted(J24_NAMES)
    assert PART_NAMES == ("torso", "head", "left_arm", "right_arm", "left_leg", "right_leg")
    assert PART_COLUMNS == tuple(f"reprojection_{p}_px" for p in PART_NAMES)


@pytest.mark.parametrize("part", PART_NAMES)
def test_one_part_moved_by_k_px_has_error_k_and_the_others_none(body, part):
    joints = posed(body, facing_camera(2))
    cam_t = torch.tensor([[0.1, 0.2, 25.0], [-0.3, 0.1, 4.0]])
    # example 0 in SPIN's crop camera; example 1 in an image camera written in fit-frame px (fx != fy, off-centre)
    focal = torch.tensor([[SPIN_FOCAL, SPIN_FOCAL], [700.0, 650.0]])
    center = torch.tensor([[112.0, 112.0], [90.0, 130.0]])
    keypoints = keypoints_of(project(joints, cam_t, focal, center))
    moved = keypoints.clone()
    moved[:, indices(BODY_PARTS[part]), :2] += torch.tensor([3.0, -4.0])     # 5 px
    before = keypoints.clone()
    quality = fit_quality(joints, cam_t, focal, center, moved)
    assert torch.equal(keypoints, before)                                    # nothing passed in is modified
    expected = torch.zeros(2, len(PART_NAMES))
    expected[:, PART_NAMES.index(part)] = 5.0
    torch.testing.assert_close(quality.part_reprojection, expected, atol=2e-3, rtol=0)
    # the same fit measured with the other example's camera is far off everywhere: the record uses each fit's own
    swapped = fit_quality(joints, cam_t, focal.flip(0), center.flip(0), keypoints)
    assert (swapped.part_reprojection > 20).all()


def test_part_errors_are_confidence_weighted_and_unobserved_parts_are_nan():
    projected = torch.zeros(1, 49, 2)
    keypoints = keypoints_of(projected)
    elbow, wrist = JOINT_INDEX["Left Elbow"], JOINT_INDEX["Left Wrist"]
    keypoints[0, elbow, :2] = torch.tensor([6.0, 8.0])         # 10 px off, confidence 1
    keypoints[0, wrist, 2] = 3.0                               # on target, confidence 3: (1·10 + 3·0) / 4
    keypoints[0, indices(BODY_PARTS["head"]), 2] = 0.0         # the head unobserved
    keypoints[0, indices(BODY_PARTS["torso"]), :2] += 50.0     # OpenPose joints are not J24 joints:
    keypoints[0, JOINT_INDEX["OP RShoulder"], :2] += 40.0      # they do not count
    errors = part_reprojection(projected, keypoints)[0]
    assert errors[PART_NAMES.index("left_arm")].item() == pytest.approx(2.5)
    assert math.isnan(errors[PART_NAMES.index("head")].item())
    assert errors[PART_NAMES.index("torso")].item() == pytest.approx(50 * math.sqrt(2))
    assert errors[PART_NAMES.index("right_arm")].item() == 0.0


# --- facing -----------------------------------------------------------------------------------------------------
def test_facing_flips_when_the_body_is_turned_around_and_not_when_the_picture_is_rotated(body):
    front = facing_camera()
    cam_t = torch.tensor([[0.0, 0.0, 20.0]])
    keypoints = keypoints_of(project(posed(body, front), cam_t, SPIN_FOCAL, CROP_CENTER))

    def facing_of(pose: torch.Tensor) -> float:
        return facing(project(posed(body, pose), cam_t, SPIN_FOCAL, CROP_CENTER), keypoints).item()

    same = facing_of(front)
    back = facing_of(turned(front, (0.0, 1.0, 0.0), math.pi))      # turned about the vertical axis
    assert 0.8 < same <= 1.0                                         # measured 0.862: a frontal adult torso
    assert back == pytest.approx(-same, abs=1e-4)
    assert facing_of(turned(front, (0.0, 1.0, 0.0), 0.5)) == pytest.approx(same, abs=1e-4)  # 29° off: still agrees
    # a picture rotated in its plane (a person lying, upside down) keeps its handedness
    for angle in (math.pi / 2, math.pi):
        rolled = turned(front, (0.0, 0.0, 1.0), angle)
        rolled_keypoints = keypoints_of(project(posed(body, rolled), cam_t, SPIN_FOCAL, CROP_CENTER))
        assert facing(project(posed(body, rolled), cam_t, SPIN_FOCAL, CROP_CENTER),
                      rolled_keypoints).item() == pytest.approx(same, abs=1e-3)
    # a side view cannot tell: the keypoints' handedness is near 0, inside the ambiguous band either way
    side = turned(front, (0.0, 1.0, 0.0), math.pi / 2)
    side_keypoints = keypoints_of(project(posed(body, side), cam_t, SPIN_FOCAL, CROP_CENTER))
    assert abs(facing(project(posed(body, side), cam_t, SPIN_FOCAL, CROP_CENTER), side_keypoints).item()) \
        < FACING_AMBIGUOUS
    # without the J24 torso the OpenPose one decides; without either, facing is not measured
    op_only = keypoints.clone()
    op_only[0, indices(("Left Shoulder", "Right Shoulder", "Left Hip", "Right Hip")), 2] = 0.0
    turned_back = project(posed(body, turned(front, (0.0, 1.0, 0.0), math.pi)), cam_t, SPIN_FOCAL, CROP_CENTER)
    assert facing(turned_back, op_only).item() < -0.8
    op_only[0, JOINT_INDEX["OP LHip"], 2] = 0.0
    assert math.isnan(facing(turned_back, op_only).item())


# --- candidates --------------------------------------------------------------------------------------------------
def test_candidate_spread_is_the_largest_pa_mpjpe_to_another_candidate(body):
    pose = facing_camera(2)
    pose[1, 3 * 18 + 1] = -1.2                                        # example 1 bends its left elbow
    joints = posed(body, pose)
    rot = rodrigues(torch.tensor([[0.3, -1.1, 0.4]]))[0]
    similar = 1.7 * joints @ rot.T + torch.tensor([0.5, -0.2, 3.0])  # the same body, moved, turned and scaled
    bent = posed(body, pose + _knee(0.9))                               # another candidate: a knee bent
    candidates = torch.stack([similar, bent], 1)                      # (2, K=2, 49, 3)
    spread = candidate_spread(joints, candidates, torch.ones(2, 2, dtype=torch.bool))
    j14 = indices(EVAL_J14)
    reference = 1000 * pa_mpjpe(bent[:, j14], joints[:, j14])
    torch.testing.assert_close(spread, torch.maximum(reference, 1000 * pa_mpjpe(similar[:, j14], joints[:, j14])))
    assert 20 < reference.min() and 1000 * pa_mpjpe(similar[:, j14], joints[:, j14]).max() < 1e-2
    only_similar = candidate_spread(joints, candidates, torch.tensor([[True, False], [True, False]]))
    assert only_similar.max() < 1e-2
    none = candidate_spread(joints, candidates, torch.zeros(2, 2, dtype=torch.bool))
    assert torch.isnan(none).all()
    record = fit_quality(joints, torch.tensor([[0, 0, 20.0]] * 2), SPIN_FOCAL, CROP_CENTER.expand(2, 2),
                         keypoints_of(torch.zeros(2, 49, 2)), candidates=candidates,
                         present=torch.tensor([[True, True], [False, False]]))
    assert record.candidates.tolist() == [3, 1]
    assert record.candidate_spread[0] == pytest.approx(spread[0].item()) and torch.isnan(record.candidate_spread[1])


def _knee(angle: float) -> torch.Tensor:
    """A (1, 72) pose offset bending the left knee by ``angle`` rad."""
    offset = torch.zeros(1, 72)
    offset[0, 3 * 4] = angle
    return offset


# --- the record in the table --------------------------------------------------------------------------------------
def record(parts, facing_, candidates, spread) -> FitQuality:
    """A `FitQuality` from plain lists (NaN = not measured)."""
    return FitQuality(part_reprojection=torch.tensor(parts, dtype=torch.float32),
                      facing=torch.tensor(facing_, dtype=torch.float32),
                      candidates=torch.tensor(candidates), candidate_spread=torch.tensor(spread, dtype=torch.float32))


NAN = float("nan")
# Five fits with known records (parts in PART_NAMES order) and pose priors; "lsp/e" has none (an import).
RECORDS = {
    "lsp/a": ([1.0, 2.0, 3.0, 1.0, 2.0, 4.0], 0.8, 1, NAN, 10.0),
    "lsp/b": ([1.0, 9.0, 3.0, NAN, 2.0, 4.0], -0.5, 2, 12.0, 30.0),
    "lsp/c": ([NAN] * 6, NAN, 1, NAN, 5.0),
    "lsp/d": ([0.5, 0.5, 6.0, 0.5, 0.5, 0.5], -0.1, 3, 80.0, 60.0),
}


def batch_with_records(loss: float = 5.0, seconds: int = 0) -> pa.Table:
    keys = list(RECORDS)
    parts, facings, candidates, spreads, priors = (list(v) for v in zip(*RECORDS.values()))
    scored = fits_batch(keys, np.zeros((4, 72)), np.zeros((4, 10)), FitProvenance("seed", MODEL, "cfg", "seed"),
                        loss=np.full(4, loss), pose_prior=priors, quality=record(parts, facings, candidates, spreads),
                        time=T0.replace(second=seconds))
    imported = fits_batch(["lsp/e"], np.zeros((1, 72)), np.zeros((1, 10)),
                          FitProvenance("import-x", MODEL, "spin-static-fits", "import"), time=T0)
    return pa.concat_tables([scored, imported])


def test_the_record_is_stored_with_null_for_what_was_not_measured():
    fits = batch_with_records()
    rows = {r["key"]: r for r in fits.to_pylist()}
    assert rows["lsp/b"]["reprojection_right_arm_px"] is None and rows["lsp/b"]["reprojection_head_px"] == 9.0
    assert rows["lsp/a"]["candidate_spread_mm"] is None and rows["lsp/b"]["candidate_spread_mm"] == 12.0
    assert rows["lsp/c"]["facing"] is None and rows["lsp/c"]["candidates"] == 1
    assert all(rows["lsp/e"][name] is None for name in QUALITY_COLUMNS)   # no record: never a made-up number
    for column, values, message in (
            ("facing", [1.5], "facing outside"), ("reprojection_torso_px", [-1.0], "negative"),
            ("candidate_spread_mm", [3.0], "candidate spread with one candidate")):
        bad = fits.slice(0, 1)
        bad = bad.set_column(bad.schema.get_field_index(column), column, pa.array(values, bad[column].type))
        with pytest.raises(FitsTableError, match=message):
            check_fits(bad)
    orphan = fits.slice(4, 1)
    orphan = orphan.set_column(orphan.schema.get_field_index("facing"), "facing", pa.array([0.5], pa.float32()))
    with pytest.raises(FitsTableError, match="facing without a quality record"):
        check_fits(orphan)


def test_the_record_survives_append_compaction_the_store_and_export(tmp_path):
    table = FitsTable.create(tmp_path / "t")
    fits = batch_with_records(loss=5.0)
    table.append(fits)
    table.append(batch_with_records(loss=9.0, seconds=1).slice(0, 2))   # worse fits of a and b: not best
    log = table.log().sort_by([("key", "ascending"), ("loss", "ascending")])
    first = log.filter(pa.compute.equal(log["loss"], 5.0)).select(QUALITY_COLUMNS)
    assert first.equals(fits.slice(0, 4).select(QUALITY_COLUMNS))
    expected = table.best().select(["key", *QUALITY_COLUMNS])
    assert expected.slice(0, 4).equals(fits.slice(0, 4).sort_by("key").select(["key", *QUALITY_COLUMNS]))
    table.compact()
    assert table.log().sort_by("key").select(["key", *QUALITY_COLUMNS]).equals(expected)
    store = FitsStore.load(table, MODEL)
    kept = store.quality(["lsp/b", "lsp/e", "nope/x"])
    columns = columns_of(fits.slice(1, 1))
    np.testing.assert_array_equal(kept[0], np.array([columns[n][0] for n in FILTER_COLUMNS], np.float32))
    assert np.isnan(kept[1:]).all()
    assert store.best_rows().select(["key", *QUALITY_COLUMNS]).to_pylist() == expected.to_pylist()
    assert main(["fits", "export", str(table.path), "--parquet", str(tmp_path / "best.parquet")]) == 0
    assert pq.read_table(tmp_path / "best.parquet").select(["key", *QUALITY_COLUMNS]).equals(expected)


@pytest.mark.parametrize("version", [2, 3])
def test_an_upgraded_table_has_no_record_and_says_so(tmp_path, capsys, version):
    fits = batch_with_records()
    old_schema = schema_of_version(version)
    path = tmp_path / f"v{version}"
    DeltaTable.create(str(path), old_schema)
    old = fits.select(old_schema.names)
    old = old.set_column(old.schema.get_field_index("schema_version"), "schema_version",
                         pa.array(np.full(old.num_rows, version, np.int16))).cast(old_schema)
    write_deltalake(str(path), old, mode="append")
    with pytest.raises(FitsTableError, match=f"schema version {version}.*`fitloop fits upgrade"):
        FitsTable.open(path)
    assert main(["fits", "upgrade", str(path)]) == 0
    assert "have no quality record and are body-only fits (schema version 5)" in capsys.readouterr().out
    log = FitsTable.open(path).log().sort_by("key")
    assert all(log[name].null_count == log.num_rows for name in QUALITY_COLUMNS)
    assert log.drop_columns([*QUALITY_COLUMNS, "schema_version"]).equals(
        fits.sort_by("key").drop_columns([*QUALITY_COLUMNS, "schema_version"]))


# --- filters ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bars, kept", [
    (FitFilter(), ["lsp/a", "lsp/b", "lsp/c", "lsp/d", "lsp/e"]),
    (FitFilter(max_reprojection_px=6.0), ["lsp/a", "lsp/d"]),        # b's head 9; c measured nothing; e no record
    (FitFilter(max_reprojection_px=3.0), []),                        # a's right leg 4, d's left arm 6
    (FitFilter(max_reprojection_px=4.0), ["lsp/a"]),
    (FitFilter(require_facing=True), ["lsp/a", "lsp/d"]),            # b faces away (-0.5); d's -0.1 is a side view
    (FitFilter(max_pose_prior=30.0), ["lsp/a", "lsp/b", "lsp/c"]),
    (FitFilter(max_candidate_spread_mm=50.0), ["lsp/a", "lsp/b", "lsp/c"]),  # one candidate passes; d's 80 fails
    (FitFilter(max_candidate_spread_mm=10.0), ["lsp/a", "lsp/c"]),
    (FitFilter(max_reprojection_px=6.0, require_facing=True, max_pose_prior=20.0), ["lsp/a"]),
])
def test_filters_drop_exactly_the_rows_below_the_bar(bars, kept):
    rows, failed = filter_rows(batch_with_records(), bars)
    assert rows["key"].to_pylist() == kept
    assert set(failed) == {name for name in ("max_reprojection_px", "require_facing", "max_pose_prior",
                                             "max_candidate_spread_mm") if getattr(bars, name) not in (None, False)}
    assert bars.active == bool(failed)


def test_fits_list_and_export_apply_the_bars(tmp_path, capsys):
    table = FitsTable.create(tmp_path / "t")
    table.append(batch_with_records())
    assert main(["fits", "list", str(table.path), "--max-reprojection", "6", "--require-facing", "--json"]) == 0
    out = __import__("json").loads(capsys.readouterr().out)
    assert [r["key"] for r in out["fits"]] == ["lsp/a", "lsp/d"] and out["total"] == 5 and out["kept"] == 2
    assert out["failed"] == {"max_reprojection_px": 3, "require_facing": 3}   # b fails both, c and e both
    assert main(["fits", "list", str(table.path), "--max-pose-prior", "20"]) == 0
    text = capsys.readouterr().out
    assert "2 meet pose prior <= 20 (failing: 3 max_pose_prior)" in text
    assert "lsp/a" in text and "lsp/d" not in text and "None" not in text and "nan" not in text
    assert main(["fits", "export", str(table.path), "--parquet", str(tmp_path / "f.parquet"),
                 "--max-candidate-spread", "10"]) == 0
    assert pq.read_table(tmp_path / "f.parquet")["key"].to_pylist() == ["lsp/a", "lsp/c"]
    assert "2 best fits" in capsys.readouterr().out
    assert main(["fits", "list", str(table.path), "--max-reprojection", "-1"]) == 1
    assert "max_reprojection_px must be >= 0" in capsys.readouterr().err
    assert main(["fits", "show", str(table.path), "lsp/e"]) == 0
    assert "no quality record" in capsys.readouterr().out


# --- where fits enter the table -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("quality")
    write_synthetic_shards(root, [DatasetSpec("synth-q", "train", 6, smpl=True, joints_3d=True)], res=64,
                           samples_per_shard=6, seed=11)
    return root / "shards"


@pytest.mark.parametrize("frame", ["crop", "image"])
def test_seed_fits_carry_their_record_measured_with_their_own_camera(shard_set, body, tmp_path, frame):
    from core.frames import keypoints_in_fit_frame
    from fits.seeding import SeedConfig, sample_camera, seed_fits, shard_samples
    from fitting.priors import DEFAULT_PRIOR, MaxMixturePrior
    from fitting.smplify import SMPLifyConfig

    config = SeedConfig(body_model="open-small", smplify=SMPLifyConfig(body_iterations=5), batch_size=6,
                        frame=frame)
    seed_fits(shard_set, tmp_path / "t", config)
    rows = {r["key"]: r for r in FitsTable.open(tmp_path / "t").log().to_pylist()}
    samples = list(shard_samples(shard_set))
    assert sorted(rows) == sorted(s.key for s in samples)
    pose = torch.tensor([rows[s.key]["pose"] for s in samples])
    betas = torch.tensor([rows[s.key]["betas"] for s in samples])
    cam_t = torch.tensor([rows[s.key]["cam_t"] for s in samples])
    cameras = [sample_camera(s, frame) for s in samples]
    keypoints = torch.tensor(np.stack([keypoints_in_fit_frame(s.keypoints_crop, s.meta["crop"]) for s in samples]),
                             dtype=torch.float32)
    with torch.no_grad():  # posed again, by the full body model (seeding used SMPLify's skeleton)
        joints = body(betas, pose[:, 3:], pose[:, :3]).joints
        projected = project(joints, cam_t, torch.tensor(np.stack([c[0] for c in cameras]), dtype=torch.float32),
                            torch.tensor(np.stack([c[1] for c in cameras]), dtype=torch.float32))
        expected = part_reprojection(projected, keypoints)
        prior = MaxMixturePrior.from_file(DEFAULT_PRIOR)(pose[:, 3:])
    stored = torch.tensor([[rows[s.key][c] for c in PART_COLUMNS] for s in samples], dtype=torch.float32)
    torch.testing.assert_close(stored, expected, atol=0.05, rtol=1e-3, equal_nan=True)
    # the prior energy of the record is fitting.priors' value of the stored pose
    torch.testing.assert_close(torch.tensor([rows[s.key]["pose_prior"] for s in samples]), prior, rtol=1e-4,
                               atol=1e-3)
    assert {rows[k]["candidates"] for k in rows} == {1} and all(rows[k]["candidate_spread_mm"] is None for k in rows)
    facings = np.array([np.nan if rows[k]["facing"] is None else rows[k]["facing"] for k in rows])
    measured = facings[~np.isnan(facings)]       # 2 of the 6 synthetic people lack a torso keypoint: not measured
    assert len(measured) == 4 and (measured > 0).all()          # every seed fit faces the keypoints' way
