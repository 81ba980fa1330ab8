"""`fitloop bench smplify`: its cases (deterministic, split by fixed rules, starts at calibrated levels with a
torso-estimated translation), its wrong-facing metric, the pose prior's held-out subjects, and the command."""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from assets.prior_train import (
    CMU_DEV_SUBJECTS,
    CMU_HELD_OUT_SUBJECTS,
    CMU_TEST_SUBJECTS,
    clip_subject,
    clip_table,
    train_prior,
)
from bench import smplify_cases as cases
from bench.smplify import BenchConfig, _check_prior, case_metrics, wrong_facing
from core.camera import translation_from_torso
from core.errors import FitloopError
from core.frames import FIT_CENTER, FIT_FOCAL, FIT_RES
from core.joints import J24_NAMES, JOINT_INDEX, indices
from fits.evaluate import posed_eval_joints
from fitting.body_model import load_body_model
from fitting.priors import DEFAULT_PRIOR, load_gmm
from fitting.smplify import TORSO_PAIRS

CMU = Path(__file__).resolve().parents[1].parent / "shared" / "mocap" / "cmu"
needs_cmu = pytest.mark.skipif(not cases.CMU_DIR.is_dir(), reason=f"{cases.CMU_DIR} is absent (CMU clips live in "
                                                                  f"../shared)")
needs_lsp = pytest.mark.skipif(not cases.SPIN_LSP_FITS.is_file(), reason=f"{cases.SPIN_LSP_FITS} is absent")
J24 = indices(J24_NAMES)
SPIN_BOX_EXPAND = 1.2   # SPIN's person box: the keypoints' tight box x 1.2 (datasets/preprocess)
SPIN_CROP_FOCAL = 5000.0


@pytest.fixture(scope="module")
def body():
    return load_body_model("open")


def _pose_file(tmp_path: Path, n: int = 5, **extra) -> Path:
    rng = np.random.default_rng(3)
    poses = np.zeros((n, 72))
    poses[:, 3:] = rng.normal(0, 0.2, (n, 69))
    path = tmp_path / "mine.npz"
    np.savez(path, poses=poses, **extra)
    return path


# --- determinism and any batch size -------------------------------------------------------------------------------
def test_cases_are_deterministic_and_a_larger_run_extends_a_smaller_one(body, tmp_path):
    pool = cases.load_pose_file(_pose_file(tmp_path, n=40))

    def build(count, seed):
        people = cases.make_people("file", "all", count, body, seed, pool)
        v = cases.view(people, "real", body, seed)
        d = cases.draws(people, seed)
        obs = cases.observe(v, "noisy", d)
        start = cases.network_start(body, v.pose, obs, 0.2, d.start)
        return people, v, obs, start

    a, b = build(12, seed=5), build(12, seed=5)
    for x, y in zip(a, b):
        for name in ("pose", "betas", "cam_t", "points", "keypoints", "box_side"):
            if hasattr(x, name):
                np.testing.assert_array_equal(getattr(x, name), getattr(y, name))
    other = build(12, seed=6)
    assert not np.allclose(a[0].pose, other[0].pose)
    assert not np.allclose(a[2].keypoints, other[2].keypoints)
    big = build(30, seed=5)  # the first 12 of 30 people are the 12 people of the smaller run
    np.testing.assert_array_equal(big[0].pose[:12], a[0].pose)
    np.testing.assert_array_equal(big[2].keypoints[:12], a[2].keypoints)
    np.testing.assert_array_equal(big[3].pose[:12], a[3].pose)


def test_any_number_of_cases_draws_from_a_small_pool(body, tmp_path):
    rng = np.random.default_rng(0)
    idx = cases.draw_indices(7, 2500, rng)
    assert len(idx) == 2500 and set(idx.tolist()) == set(range(7))
    assert np.bincount(idx).max() - np.bincount(idx).min() <= 1  # whole permutations first, then the next
    pool = cases.load_pose_file(_pose_file(tmp_path, n=3))
    people = cases.make_people("file", "all", 1100, body, 0, pool)
    assert len(people) == 1100 and len(set(people.origin)) == 3


# --- the splits -----------------------------------------------------------------------------------------------------
def test_dev_and_test_are_disjoint_by_rule():
    assert not set(CMU_DEV_SUBJECTS) & set(CMU_TEST_SUBJECTS)
    assert set(CMU_DEV_SUBJECTS) | set(CMU_TEST_SUBJECTS) == set(CMU_HELD_OUT_SUBJECTS)
    dev, test = set(cases.LSP_ROWS["dev"]), set(cases.LSP_ROWS["test"])
    assert not dev & test and dev | test == set(range(1000))


@needs_cmu
def test_cmu_splits_hold_only_their_subjects(body):
    rest = cases.rest_joints(body)
    dev, test = cases.cmu_pool("dev", rest), cases.cmu_pool("test", rest)
    dev_subjects = {clip_subject(o.split(":")[0]) for o in dev.origin}
    test_subjects = {clip_subject(o.split(":")[0]) for o in test.origin}
    assert dev_subjects == set(CMU_DEV_SUBJECTS) and test_subjects == set(CMU_TEST_SUBJECTS)
    # each split holds at least its subjects' frames at 10 fps (the CMU subset's clips are 30 fps)
    assert len(dev.poses) > 500 and len(test.poses) > 2000


@needs_lsp
def test_lsp_splits_are_the_two_halves_and_synthetic_splits_differ(body):
    dev, test = cases.lsp_pool("dev"), cases.lsp_pool("test")
    rows = np.load(cases.SPIN_LSP_FITS)[:, 3:72]
    np.testing.assert_allclose(dev.poses[:, 3:], rows[:500])
    np.testing.assert_allclose(test.poses[:, 3:], rows[500:])
    s_dev = cases.make_people("synthetic", "dev", 8, body, 0)
    s_test = cases.make_people("synthetic", "test", 8, body, 0)
    assert not np.isclose(s_dev.pose[:, 3:, None], s_test.pose[:, 3:].T[None]).all(1).any()


# --- the prior never saw the held-out subjects ---------------------------------------------------------------------
def test_shipped_prior_records_that_it_never_saw_the_held_out_subjects():
    meta = load_gmm(DEFAULT_PRIOR).metadata
    assert meta["held_out_subjects"] == list(CMU_HELD_OUT_SUBJECTS) == [2, 9, 14, 94]
    assert meta["config"]["held_out_subjects"] == list(CMU_HELD_OUT_SUBJECTS)
    assert not set(meta["subjects_used"]) & set(CMU_HELD_OUT_SUBJECTS)
    used = {clip_subject(f) for f in meta["clips_used"]}
    assert not used & set(CMU_HELD_OUT_SUBJECTS) and len(meta["clips_used"]) == meta["clips"]
    assert all(clip_subject(f) in CMU_HELD_OUT_SUBJECTS for f in meta["clips_held_out"])
    if cases.CMU_DIR.is_dir():  # everything else in the folder was used
        table = clip_table(cases.CMU_DIR)
        assert sorted(meta["clips_used"]) == sorted(e.file for e in table if e.subject not in CMU_HELD_OUT_SUBJECTS)
        assert sorted(meta["clips_held_out"]) == sorted(e.file for e in table if e.subject in CMU_HELD_OUT_SUBJECTS)


@needs_cmu
def test_prior_training_leaves_held_out_subjects_unread(tmp_path):
    clips = tmp_path / "clips"
    (clips / "mb").mkdir(parents=True)
    for rel in ("mb/02_01.bvh", "mb/03_01.bvh"):  # two walks of subjects 2 and 3, linked not copied
        (clips / rel).symlink_to(cases.CMU_DIR / rel)
    (clips / "CLIPS.tsv").write_text("file\tcategory\tsubject\nmb/02_01.bvh\twalk\t2\nmb/03_01.bvh\twalk\t3\n")
    out = tmp_path / "prior.npz"
    report = train_prior([clips], out, components=2, seed=0, model=None, held_out_subjects=(2,))
    meta = load_gmm(out).metadata
    assert meta["subjects_used"] == [3] and meta["clips_used"] == ["mb/03_01.bvh"]
    assert meta["clips_held_out"] == ["mb/02_01.bvh"] and report["clips"] == 1
    both = train_prior([clips], tmp_path / "both.npz", components=2, seed=0, model=None, held_out_subjects=())
    assert both["frames_used"] > report["frames_used"]
    with pytest.raises(FitloopError,
                       match=r"2 of 2 clips belong to held-out subjects 2, 3 \(--hold-out none uses them\)"):
        train_prior([clips], tmp_path / "none.npz", components=2, model=None, held_out_subjects=(2, 3))


def test_benchmark_refuses_a_prior_that_saw_its_subjects():
    saw = types.SimpleNamespace(metadata={"subjects_used": [1, 2, 3]})
    with pytest.raises(FitloopError, match=r"trained on CMU subjects \[2\].*test split"):
        _check_prior(saw, Path("p.npz"), "test", ("cmu",))
    assert _check_prior(saw, Path("p.npz"), "dev", ("cmu",))["check"].startswith("ok")
    unknown = types.SimpleNamespace(metadata={})
    assert _check_prior(unknown, Path("gmm_08.pkl"), "test", ("cmu",))["check"].startswith("unknown")


# --- cameras ----------------------------------------------------------------------------------------------------------
def test_crop_camera_frames_the_person_as_spins_box(body):
    people = cases.make_people("synthetic", "test", 16, body, 1)
    v = cases.view(people, "crop", body, 1)
    obs = cases.observe(v, "clean", cases.draws(people, 1))
    joints = cases.posed_joints(body, v.pose, v.betas)[:, J24] + v.cam_t[:, None]
    projected = SPIN_CROP_FOCAL * joints[..., :2] / joints[..., 2:] + FIT_CENTER
    np.testing.assert_allclose(obs.keypoints[:, J24, :2], projected, atol=1e-3)  # truth reprojects exactly
    kp = obs.keypoints[:, J24, :2]
    side = (kp.max(1) - kp.min(1)).max(1)
    np.testing.assert_allclose(side * SPIN_BOX_EXPAND, FIT_RES, atol=0.05)
    np.testing.assert_allclose((kp.max(1) + kp.min(1)) / 2, FIT_CENTER, atol=0.05)
    np.testing.assert_allclose(v.up, np.tile([0.0, -1.0, 0.0], (16, 1)), atol=1e-12)  # a level camera


def test_real_camera_people_are_in_the_image_and_cropped_as_spin(body):
    people = cases.make_people("synthetic", "test", 64, body, 2)
    v = cases.view(people, "real", body, 2)
    assert (v.points >= cases.REAL_MARGIN_PX / 2).all() and (v.points <= cases.REAL_IMAGE_PX).all()
    depth = (cases.posed_joints(body, v.pose, v.betas)[:, JOINT_INDEX["Pelvis (MPII)"]] + v.cam_t)[:, 2]
    np.testing.assert_allclose(np.clip(depth, 3.0, 7.0), depth)
    assert depth.min() < 3.5 and depth.max() > 6.5
    mid = np.abs((v.points.max(1) + v.points.min(1)) / 2 - v.center).max(1)
    assert np.median(mid) > 60  # off-centre, not all on the optical axis
    # up in the camera frame: y up is -y; pitch in [-5, 20] degrees, positive looking down (up tilts to -z)
    pitch = np.degrees(np.arcsin(-v.up[:, 2]))
    assert pitch.min() >= -5.01 and pitch.max() <= 20.01 and np.mean(pitch > 0) > 0.7
    obs = cases.observe(v, "noisy", cases.draws(people, 2))
    seen = obs.keypoints[..., 2] > 0
    for i in range(4):  # the visible keypoints' box x 1.2 is the 224 px crop
        kp = obs.keypoints[i, seen[i]]
        clean = (v.points[i][seen[i][J24]] - obs.box_center[i]) * FIT_RES / obs.box_side[i] + FIT_CENTER
        assert np.abs(kp[:, :2] - clean).max() < 4 * cases.NOISE_PX
        assert obs.box_side[i] == pytest.approx(SPIN_BOX_EXPAND * np.ptp(v.points[i][seen[i][J24]], 0).max())


def test_noisy_keypoints_drop_a_tenth_and_add_5px(body):
    people = cases.make_people("synthetic", "test", 200, body, 4)
    v = cases.view(people, "crop", body, 4)
    d = cases.draws(people, 4)
    clean, noisy = cases.observe(v, "clean", d), cases.observe(v, "noisy", d)
    seen = noisy.keypoints[..., 2] > 0
    assert (clean.keypoints[:, J24, 2] == 1).all() and (clean.keypoints[:, :25] == 0).all()
    assert 0.08 < 1 - seen[:, J24].mean() < 0.12
    assert (noisy.keypoints[~seen] == 0).all()
    diff = (noisy.keypoints - clean.keypoints)[seen][:, :2]
    assert diff.std() == pytest.approx(cases.NOISE_PX, rel=0.05)


def test_image_frame_fits_with_the_true_camera_written_in_fit_frame_px(body):
    people = cases.make_people("synthetic", "test", 16, body, 3)
    v = cases.view(people, "real", body, 3)
    d = cases.draws(people, 3)
    image, crop = cases.observe(v, "clean", d, "image"), cases.observe(v, "clean", d, "crop")
    np.testing.assert_array_equal(image.keypoints, crop.keypoints)  # one observation, two cameras
    assert image.frame == "image" and crop.frame == "crop"
    np.testing.assert_array_equal(crop.focal, np.full((16, 2), SPIN_CROP_FOCAL))
    # SPIN's crop scales image px by 224 / box side about the box centre: the camera's focal and principal point too
    k = FIT_RES / image.box_side
    np.testing.assert_allclose(image.focal, np.stack([v.focal * k] * 2, 1), rtol=1e-12)
    np.testing.assert_allclose(image.center, (v.center - image.box_center) * k[:, None] + FIT_RES / 2, atol=1e-9)
    assert np.abs(image.focal[:, 0] - SPIN_CROP_FOCAL).min() > 3000  # a real camera, far from SPIN's
    # the true body in the true camera lands on the keypoints in that frame, and not in SPIN's crop camera
    truth = posed_eval_joints(body, torch.as_tensor(v.pose, dtype=torch.float32),
                              torch.as_tensor(v.betas, dtype=torch.float32)).double()
    m = case_metrics(body, truth, v.pose[:, :3], v.up, image.keypoints, image.focal, image.center, v.pose, v.betas,
                     v.cam_t)
    assert m["reprojection_px"].max() < 1e-3 and m["pa_mpjpe_mm"].max() < 1e-3 and m["mpjpe_mm"].max() < 1e-3
    m = case_metrics(body, truth, v.pose[:, :3], v.up, crop.keypoints, crop.focal, crop.center, v.pose, v.betas,
                     v.cam_t)
    assert m["reprojection_px"].min() > 100
    # the crop camera's people: their true camera is SPIN's, so both frames are one
    c = cases.view(people, "crop", body, 3)
    both = cases.observe(c, "clean", d, "image"), cases.observe(c, "clean", d, "crop")
    np.testing.assert_allclose(both[0].focal, both[1].focal, rtol=1e-12)
    np.testing.assert_allclose(both[0].center, both[1].center, atol=1e-9)


def test_image_frame_starts_are_placed_with_the_true_camera(body):
    people = cases.make_people("synthetic", "test", 32, body, 8)
    v = cases.view(people, "real", body, 8)
    d = cases.draws(people, 8)
    true_depth = (cases.posed_joints(body, v.pose, v.betas)[:, JOINT_INDEX["Pelvis (MPII)"]] + v.cam_t)[:, 2]
    depth = {}
    for frame in ("image", "crop"):
        obs = cases.observe(v, "clean", d, frame)
        for start in (cases.network_start(body, v.pose, obs, 0.0, d.start), cases.mean_start(body, obs)):
            joints = cases.posed_joints(body, start.pose, start.betas)
            depth[frame, start.kind] = (joints[:, JOINT_INDEX["Pelvis (MPII)"]] + start.cam_t)[:, 2] / true_depth
    # with the true camera the torso puts the mean-shape body near the person's depth (3-7 m); SPIN's crop camera
    # puts it ~ 5000 / (1150 x 224 / box side) times farther
    assert np.median(np.abs(depth["image", "estimate"] - 1)) < 0.1 and np.median(np.abs(depth["image", "mean"] - 1)) < 0.1
    assert depth["crop", "estimate"].min() > 3 and depth["crop", "mean"].min() > 3


# --- starts --------------------------------------------------------------------------------------------------------
def test_start_translation_is_the_torso_estimate_not_the_truth(body):
    people = cases.make_people("synthetic", "test", 32, body, 7)
    v = cases.view(people, "crop", body, 7)
    d = cases.draws(people, 7)
    obs = cases.observe(v, "clean", d)
    start = cases.network_start(body, v.pose, obs, 0.0, d.start)  # the true pose, mean shape
    same = Rotation.from_rotvec(start.pose.reshape(-1, 3)).inv() * Rotation.from_rotvec(v.pose.reshape(-1, 3))
    assert same.magnitude().max() < 1e-9
    assert start.kind == "estimate" and not start.betas.any()
    joints = torch.as_tensor(cases.posed_joints(body, start.pose, start.betas))
    pairs = tuple((JOINT_INDEX[a], JOINT_INDEX[b]) for a, b in TORSO_PAIRS)
    expected = translation_from_torso(joints, torch.as_tensor(obs.keypoints, dtype=torch.float64), FIT_FOCAL,
                                      torch.full((32, 2), FIT_CENTER, dtype=torch.float64), pairs)
    np.testing.assert_allclose(start.cam_t, expected.numpy(), rtol=1e-9)
    # the truth's translation differs: the mean shape's torso is not the person's (betas ~ N(0, 1))
    depth_error = np.abs(start.cam_t[:, 2] - v.cam_t[:, 2]) / v.cam_t[:, 2]
    assert np.median(depth_error) > 0.01
    mean = cases.mean_start(body, obs)
    assert mean.kind == "mean" and np.allclose(mean.pose[:, 0], np.pi) and not mean.pose[:, 1:].any()


def test_start_levels_hit_their_targets_on_the_dev_split(body):
    sources = ["synthetic"] + (["cmu"] if cases.CMU_DIR.is_dir() else []) + (["lsp"] if cases.SPIN_LSP_FITS.is_file()
                                                                           else [])
    for source in sources:
        people = cases.make_people(source, "dev", 96, body, 0)
        d = cases.draws(people, 0)
        first = cases.People(source, "dev", people.pose[:48], people.betas[:48], people.origin[:48])
        cal = cases.calibrate_noise(body, first, d.start[:48])
        np.testing.assert_allclose(cal["median_start_pa_mpjpe_mm"], cases.START_TARGETS_MM, atol=0.26)
        assert cal["floor_mm"] < 45 and 0.05 < cal["sigma_rad"][0] < cal["sigma_rad"][1] < cal["sigma_rad"][2] < 0.4
        # the middle level on all 96 dev people (half of them not calibrated on), through the cases' own path
        # (camera, keypoints, start) and the metrics of the report
        v = cases.view(people, "real", body, 0)
        obs = cases.observe(v, "noisy", d)
        truth = posed_eval_joints(body, torch.as_tensor(v.pose, dtype=torch.float32),
                                  torch.as_tensor(v.betas, dtype=torch.float32)).double()
        s = cases.network_start(body, v.pose, obs, cal["sigma_rad"][1], d.start)
        m = case_metrics(body, truth, v.pose[:, :3], v.up, obs.keypoints, obs.focal, obs.center, s.pose, s.betas,
                         s.cam_t)
        assert np.median(m["pa_mpjpe_mm"]) == pytest.approx(cases.START_TARGETS_MM[1], abs=7), source


# --- metrics ---------------------------------------------------------------------------------------------------------
def test_wrong_facing_is_more_than_90_degrees_about_the_vertical():
    upright = Rotation.from_euler("x", np.pi)  # facing the camera, upright (camera y down)
    turns = np.array([0.0, 60.0, 89.0, 91.0, 120.0, 180.0, -100.0, 270.0])
    up = np.tile([0.0, -1.0, 0.0], (len(turns), 1))
    truth = upright * Rotation.identity(len(turns))
    fit = Rotation.from_euler("y", np.radians(turns)[:, None]) * truth  # turned about the vertical
    got = wrong_facing(fit.as_rotvec(), truth.as_rotvec(), up)
    np.testing.assert_array_equal(got, np.abs(((turns + 180) % 360) - 180) > 90)
    # a fit bent forward 80 degrees about its hip axis faces the same way; one lying on its side as truth: undefined
    bent = (upright * Rotation.from_euler("x", np.radians(80))).as_rotvec()[None]
    assert wrong_facing(bent, upright.as_rotvec()[None], up[:1])[0] == 0
    side = (upright * Rotation.from_euler("z", np.radians(90))).as_rotvec()[None]
    assert np.isnan(wrong_facing(upright.as_rotvec()[None], side, up[:1])[0])
    # a camera pitched 30 degrees down: the vertical is the world's, not the camera's y
    pitch = Rotation.from_euler("x", np.radians(30))
    up_pitched = pitch.apply([0.0, -1.0, 0.0])[None]
    truth_p = (pitch * upright).as_rotvec()[None]
    for turn, wrong in ((80.0, 0.0), (100.0, 1.0)):
        fit_p = (pitch * Rotation.from_euler("y", np.radians(turn)) * upright).as_rotvec()[None]
        assert wrong_facing(fit_p, truth_p, up_pitched)[0] == wrong


def test_case_metrics_of_the_truth_are_zero_in_the_crop_camera(body):
    people = cases.make_people("synthetic", "test", 8, body, 9)
    v = cases.view(people, "crop", body, 9)
    obs = cases.observe(v, "clean", cases.draws(people, 9))
    truth = posed_eval_joints(body, torch.as_tensor(v.pose, dtype=torch.float32),
                              torch.as_tensor(v.betas, dtype=torch.float32)).double()
    m = case_metrics(body, truth, v.pose[:, :3], v.up, obs.keypoints, obs.focal, obs.center, v.pose, v.betas,
                     v.cam_t)
    assert m["pa_mpjpe_mm"].max() < 1e-3 and m["mpjpe_mm"].max() < 1e-3 and m["reprojection_px"].max() < 1e-2
    assert not m["wrong_facing"].any()
    turned = v.pose.copy()  # the same bodies turned 180 degrees about the vertical: all wrong-facing
    turned[:, :3] = (Rotation.from_rotvec(v.up * np.pi) * Rotation.from_rotvec(v.pose[:, :3])).as_rotvec()
    m = case_metrics(body, truth, v.pose[:, :3], v.up, obs.keypoints, obs.focal, obs.center, turned, v.betas,
                     v.cam_t)
    assert m["wrong_facing"].all() and m["pa_mpjpe_mm"].max() < 1e-3 and m["mpjpe_mm"].min() > 50


# --- outsiders' poses ----------------------------------------------------------------------------------------------
def test_pose_files_are_read_or_refused_with_a_reason(body, tmp_path):
    path = _pose_file(tmp_path, n=4, betas=np.ones((4, 10)), name=np.array("mine-v1"), up=np.array("z"))
    pool = cases.load_pose_file(path)
    assert pool.about["name"] == "mine-v1" and pool.betas.shape == (4, 10)
    # "z" up (AMASS): the zero global orientation lies on its back in a Y-up world; turned upright it is -90° about x
    np.testing.assert_allclose(Rotation.from_rotvec(pool.poses[0, :3]).apply([0, 0, 1]), [0, 1, 0], atol=1e-12)
    people = cases.make_people("file", "all", 6, body, 0, pool)
    np.testing.assert_array_equal(people.betas, np.ones((6, 10)))
    bad = tmp_path / "bad.npz"
    np.savez(bad, pose=np.zeros((3, 72)))
    with pytest.raises(cases.BenchCaseError, match="bad.npz: no `poses` array"):
        cases.load_pose_file(bad)
    np.savez(bad, poses=np.zeros((3, 63)))
    with pytest.raises(cases.BenchCaseError, match=r"bad.npz: `poses` has shape \(3, 63\)"):
        cases.load_pose_file(bad)
    np.savez(bad, poses=np.zeros((3, 72)), up=np.array("x"))
    with pytest.raises(cases.BenchCaseError, match="`up` is 'x'"):
        cases.load_pose_file(bad)
    np.savez(bad, poses=np.zeros((3, 72)), betas=np.zeros((2, 10)))
    with pytest.raises(cases.BenchCaseError, match=r"`betas` has shape \(2, 10\); expected \(3, NB\)"):
        cases.load_pose_file(bad)
    np.save(tmp_path / "poses.npy", np.zeros((3, 72)))  # a bare array, not an .npz: once a TypeError
    with pytest.raises(cases.BenchCaseError, match="poses.npy: not a readable .npz of poses"):
        cases.load_pose_file(tmp_path / "poses.npy")
    np.savez(bad, poses=np.zeros((3, 100)))  # once cut to its first 72 values, whatever they were
    with pytest.raises(cases.BenchCaseError, match=r"\(3, 100\).*W = 156 SMPL-H"):
        cases.load_pose_file(bad)


@pytest.mark.parametrize("width", [156, 165])
def test_smplh_and_smplx_full_poses_give_their_body_joints_and_smpls_hands_at_rest(tmp_path, width):
    """AMASS's SMPL-H poses (and SMPL-X's) put the first finger joints (SMPL-X: the jaw and an eye) where SMPL has
    its hand joints 22-23: those slots are set to rest, the 66 body values are kept as they are."""
    full = np.random.default_rng(0).normal(0, 0.3, (5, width))
    np.savez(tmp_path / "amass.npz", poses=full)
    pool = cases.load_pose_file(tmp_path / "amass.npz")
    np.testing.assert_array_equal(pool.poses[:, 3:66], full[:, 3:66])
    np.testing.assert_array_equal(pool.poses[:, 66:], 0.0)
    assert pool.about["layout"].startswith("SMPL-H" if width == 156 else "SMPL-X")
    np.savez(tmp_path / "smpl.npz", poses=full[:, :72])  # SMPL's own hand joints are kept
    np.testing.assert_array_equal(cases.load_pose_file(tmp_path / "smpl.npz").poses[:, 66:], full[:, 66:72])


def test_bad_settings_are_one_line_errors():
    with pytest.raises(FitloopError, match="--split must be one of dev, test"):
        BenchConfig(split="train").checked()
    with pytest.raises(FitloopError, match="--starts takes some of mean, net60"):
        BenchConfig(starts=("net70",)).checked()
    with pytest.raises(FitloopError, match="--reference-cases <= --cases"):
        BenchConfig(cases=4, reference_cases=8).checked()


# --- the command -----------------------------------------------------------------------------------------------------
def test_command_runs_both_modes_on_every_cell(tmp_path, capsys):
    from fitloop.cli import main

    out = tmp_path / "bench.json"
    poses = _pose_file(tmp_path, n=6, name=np.array("outsider"))
    code = main(["bench", "smplify", "--quick", "--sources", "synthetic", "--poses", str(poses),
                 "--cameras", "crop,image", "--keypoints", "noisy", "--starts", "mean,net90", "--threads", "1",
                 "--out", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert [(c["source"], c["camera"], c["keypoints"], c["start"]) for c in result["cells"]] == [
        (s, cam, "noisy", st) for s in ("synthetic", "file") for cam in ("crop", "image") for st in ("mean", "net90")]
    assert {c["camera"]: c["frame"] for c in result["cells"]} == {"crop": "crop", "image": "image"}
    assert result["threads"] == 1 and result["config"]["split"] == "test"
    assert result["sources"]["file"]["name"] == "outsider"
    for cell in result["cells"]:
        assert cell["cases"] == 3 and cell["reference"]["cases"] == 1 and cell["fast"]["cases"] == 3
        assert len(cell["per_case"]["fast_pa_mpjpe_mm"]) == 3 and len(cell["per_case"]["reference_pa_mpjpe_mm"]) == 1
    for mode in ("fast", "reference"):
        for start in ("mean", "net90"):
            timing = result["speed"][mode][start]
            assert timing["fits"] == (12 if mode == "fast" else 4) and timing["wall_s"] > 0 and timing["cpu_s"] > 0
    assert result["speed"]["reference"]["config"]["iterations"] == 5  # --quick's reference
    assert {(r["keypoints"], r["start"]) for r in result["summary"]} == {("noisy", "mean"), ("noisy", "net90")}
    for cell in result["cells"]:   # the fast mode's own (lifted) start from the mean pose, unfitted, is reported
        assert ("lifted_start" in cell) == (cell["start"] == "mean")
        if cell["start"] == "mean":
            assert len(cell["per_case"]["lifted-start_pa_mpjpe_mm"]) == 3
    lifted = {r["source"]: r["lifted_start"]["pa_mpjpe_mm"] for r in result["summary_by_source"] if r["start"] == "mean"}
    start = {r["source"]: r["start_error"]["pa_mpjpe_mm"] for r in result["summary_by_source"] if r["start"] == "mean"}
    assert lifted["synthetic"] < start["synthetic"] and "own start from the mean pose" in table
    assert "| synthetic | crop | noisy | mean |" in table and "| file | image | noisy | net90 |" in table
    assert {(r["camera"], r["start"]) for r in result["summary_by_camera"]} == {
        (c, s) for c in ("crop", "image") for s in ("mean", "net90")}
    assert "fast/ref PA |" in table and "fast/ref fits/s |" in table  # the ratios against the reference
    speed = result["speed"]
    for key, rate in (("speedup_fast_over_reference", "fits_per_s"),
                      ("speedup_fast_over_reference_per_cpu_s", "fits_per_cpu_s")):
        for start in ("mean", "net90"):
            assert result[key][start] == speed["fast"][start][rate] / speed["reference"][start][rate]


@needs_lsp
def test_a_pose_file_of_spins_camera_frame_fits_is_the_lsp_source(tmp_path):
    """Round trip: SPIN's LSP fits saved as a pose file with up "-y" (SPIN's camera frame) read back as the lsp
    source reads them, so outsiders' camera-frame poses get the same world orientation as the benchmark's own."""
    rows = np.load(cases.SPIN_LSP_FITS)[500:1000, :72]
    path = tmp_path / "spin_lsp.npz"
    np.savez(path, poses=rows, up=np.array("-y"))
    from_file, lsp = cases.load_pose_file(path), cases.lsp_pool("test")
    np.testing.assert_allclose(Rotation.from_rotvec(from_file.poses[:, :3]).as_matrix(),
                               Rotation.from_rotvec(lsp.poses[:, :3]).as_matrix(), atol=1e-9)
    np.testing.assert_array_equal(from_file.poses[:, 3:], lsp.poses[:, 3:])
    # SPIN's people stand: their spine (the zero pose's +Y) points up in the world, not down
    spine = Rotation.from_rotvec(from_file.poses[:, :3]).apply([0.0, 1.0, 0.0])
    assert np.median(spine[:, 1]) > 0.8


@pytest.mark.parametrize("argv, message", [
    (["--poses", "no/such.npz"], r"bench smplify: --poses no/such.npz: no such file"),
    (["--starts", "mean,net70"], r"--starts takes some of mean, net60, net90, net120; got mean, net70"),
    (["--sources", ""], r"no pose source: give --sources or --poses FILE"),
    (["--cases", "2", "--reference-cases", "3"], r"--reference-cases <= --cases, got 2 and 3"),
    (["--sources", "", "--poses", "BAD"], r"bad.npz: no `poses` array"),
])
def test_command_errors_are_one_line(tmp_path, capsys, argv, message):
    from fitloop.cli import main

    bad = tmp_path / "bad.npz"
    np.savez(bad, pose=np.zeros((2, 72)))
    argv = [str(bad) if a == "BAD" else a for a in argv]
    assert main(["bench", "smplify", "--quick", *argv]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fitloop: error: ") and captured.out == ""
    assert __import__("re").search(message, lines[0]), lines[0]


# --- the reference's mesh and the run's variants (issue 17) ------------------------------------------------------
def test_the_smpl_sized_reference_mesh_is_the_open_body_on_smpls_vertex_count():
    """`bench.reference_mesh.smpl_sized_model`: SMPL's 6,890 vertices, each one of the full mesh's (same template
    row, same skinning), regressors still convex, and the same betas and pose give the same joints within the
    decimation's error (seen ≤ 1.3 mm over random bodies)."""
    from bench.reference_mesh import SMPL_VERTICES, smpl_sized_model

    full, small = load_body_model("open"), smpl_sized_model("open")
    assert small.num_vertices == SMPL_VERTICES and full.num_vertices == 13492
    template, full_template = small.layer.v_template, full.layer.v_template
    nearest = torch.cdist(template.double(), full_template.double()).min(1).values
    assert nearest.max() < 1e-6                                   # a subset of the full mesh's vertices
    for regressor in (small.layer.J_regressor, small.h36m_regressor):
        assert regressor.min() >= 0 and torch.allclose(regressor.sum(1), torch.ones(len(regressor)), atol=1e-5)
    gen = torch.Generator().manual_seed(0)
    betas, pose = torch.randn(16, 10, generator=gen), 0.3 * torch.randn(16, 72, generator=gen)
    with torch.no_grad():
        a, b = full(betas, pose[:, 3:], pose[:, :3]).joints, small(betas, pose[:, 3:], pose[:, :3]).joints
    assert (a - b).norm(dim=-1).max() < 3e-3                      # m


def test_command_reports_every_variant_and_any_batch(tmp_path, capsys):
    """--reference-mesh smpl-sized,full fits the reference on both meshes (vertex counts in the record),
    --fixed-baseline the fast mode without early exit, --batch one call of that many examples even with fewer
    cases (they repeat); each variant's speed carries its PA-MPJPE and its ratio to the fast mode."""
    from fitloop.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "smplify", "--quick", "--sources", "synthetic", "--cameras", "crop", "--keypoints", "clean",
                 "--starts", "mean,net60", "--reference-mesh", "smpl-sized,full", "--fixed-baseline",
                 "--batch", "7", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    speed = result["speed"]
    assert (speed["reference"]["mesh"], speed["reference"]["vertices"]) == ("smpl-sized", 6890)
    assert (speed["reference-full"]["mesh"], speed["reference-full"]["vertices"]) == ("full", 13492)
    assert speed["fast-fixed"]["config"]["tolerance"] == 0 and speed["fast"]["config"]["tolerance"] > 0
    for name in ("fast", "fast-fixed", "reference", "reference-full"):
        for start in ("mean", "net60"):
            assert speed[name][start]["pa_mpjpe_mm"] > 0
            if name != "fast":
                assert result["speedup_fast_per_cpu_s_over"][name][start] == pytest.approx(
                    speed["fast"][start]["fits_per_cpu_s"] / speed[name][start]["fits_per_cpu_s"])
    assert result["speedup_fast_per_cpu_s_over"]["reference"] == result["speedup_fast_over_reference_per_cpu_s"]
    for name in ("fast", "fast-fixed"):
        assert {s: t["fits"] for s, t in result["throughput"][name].items()} == {"mean": 7, "net60": 7}
    assert "| net60 | reference-full | full (13492) |" in table and "Throughput, fast: one call of batch 7" in table


def test_a_bad_reference_mesh_is_one_line(capsys):
    from fitloop.cli import main

    assert main(["bench", "smplify", "--quick", "--reference-mesh", "smpl"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fitloop: error: bench smplify: --reference-mesh takes some of smpl-sized, full; got smpl"]


def test_workers_fit_the_throughput_row_in_parallel_processes(tmp_path):
    """--workers 2: two spawned one-thread processes each fit WORKER_CALLS calls of the --batch per start level;
    fits/s is all their fits over the parallel part's wall time."""
    from bench.smplify_workers import WORKER_CALLS
    from fitloop.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "smplify", "--quick", "--skip-reference", "--sources", "synthetic", "--cameras", "crop",
                 "--keypoints", "clean", "--starts", "mean,net60", "--batch", "5", "--workers", "2",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["throughput_workers"]
    assert set(rows) == {"mean", "net60"}
    for row in rows.values():
        assert (row["workers"], row["threads_per_worker"], row["batch"]) == (2, 1, 5)
        assert row["fits"] == 2 * WORKER_CALLS * 5 and len(row["worker_wall_s"]) == 2
        assert row["fits_per_s"] == pytest.approx(row["fits"] / row["wall_s"])


def test_workers_need_a_batch(capsys):
    from fitloop.cli import main

    assert main(["bench", "smplify", "--quick", "--workers", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fitloop: error: bench smplify: --workers must be at least 1, and more than 1 needs --batch, the "
                   "fast mode and --device cpu; got --workers 2, --batch None, --device cpu"]


def test_the_graphed_variant_fits_as_the_fixed_budget(tmp_path):
    """--cuda-graph adds fast-graphed (stage 2 replayed from static buffers: captured on a GPU, uncaptured here),
    which runs the whole budget: its fits are the fixed budget's (--fixed-baseline) on every case, its speed and
    throughput rows are its own."""
    from fitloop.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "smplify", "--quick", "--skip-reference", "--sources", "synthetic", "--cameras", "crop",
                 "--keypoints", "noisy", "--starts", "mean,net60", "--fixed-baseline", "--cuda-graph", "--batch", "6",
                 "--json", "--out", str(out)]) == 0
    speed = json.loads(out.read_text())["speed"]
    assert speed["fast-graphed"]["config"]["cuda_graph"] and not speed["fast-fixed"]["config"]["cuda_graph"]
    for start in ("mean", "net60"):
        assert speed["fast-graphed"][start]["pa_mpjpe_mm"] == pytest.approx(speed["fast-fixed"][start]["pa_mpjpe_mm"],
                                                                            abs=0.05)
    assert set(json.loads(out.read_text())["throughput"]) == {"fast", "fast-fixed", "fast-graphed"}
