"""assets.shape_coverage: CMU's length unit, segment lengths, shape fits that recover the model's own betas, and
clip fits that reach zero on the model's own motion."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from assets import shape_coverage as sc
from core.joints import SMPL_JOINT_INDEX

SMALL_MODEL = Path(__file__).resolve().parents[1] / "fitting" / "data" / "open_body_small.npz"
CMU = Path(__file__).resolve().parents[1].parent / "shared" / "mocap" / "cmu"
needs_cmu = pytest.mark.skipif(not (CMU / "CLIPS.tsv").is_file(),
                               reason=f"{CMU} is absent: the CMU clips live in ../shared beside the checkout")
# CMU's FAQ (mocap.cs.cmu.edu/faqs.php): ASF/BVH lengths times (1.0/0.45)*2.54/100 are metres, i.e. 0.056444 m.
CMU_FAQ_METRES_PER_UNIT = 0.056444


def test_cmu_unit_is_the_faq_factor():
    assert sc.CMU_UNIT_M == pytest.approx(CMU_FAQ_METRES_PER_UNIT, abs=5e-7)


@needs_cmu
def test_cmu_subject_1_has_adult_limbs_in_metres():
    """Subject 1's BVH reference pose, in metres: thigh 7.16 units and shin 7.49 units (OFFSETs of mb/01_01.bvh),
    i.e. 404 and 423 mm — adult leg segments (inches or centimetres would be 2.2× / 18× off)."""
    seg = sc.segment_lengths(sc.cmu_rest_joints(CMU / "mb" / "01_01.bvh"))
    left_thigh = np.hypot(2.44811, 6.72613) * CMU_FAQ_METRES_PER_UNIT
    right_thigh = np.hypot(2.54253, 6.98555) * CMU_FAQ_METRES_PER_UNIT
    assert seg["thigh"] == pytest.approx(0.5 * (left_thigh + right_thigh), abs=1e-4)
    assert 0.38 < seg["thigh"] < 0.43 and 0.40 < seg["shin"] < 0.45


def test_segment_lengths_of_the_h36m_skeleton():
    """The constructed Human3.6M skeleton gives back its published bone lengths (mm, exp2xyz.m)."""
    seg = {k: 1000 * float(v) for k, v in sc.segment_lengths(sc.h36m_reference_joints()).items()}
    assert seg["hip width"] == pytest.approx(2 * 132.95, abs=1e-6)
    assert seg["shoulder width"] == pytest.approx(2 * 151.03, abs=1e-6)
    assert seg["thigh"] == pytest.approx(442.89, abs=1e-6) and seg["shin"] == pytest.approx(454.21, abs=1e-6)
    assert seg["upper arm"] == pytest.approx(278.88, abs=1e-6) and seg["forearm"] == pytest.approx(251.73, abs=1e-6)
    assert seg["torso"] == pytest.approx(233.38 + 257.08, abs=1e-6)  # mid-hips straight below mid-shoulders


def test_segment_lengths_average_both_sides_and_broadcast():
    joints = {k: np.zeros((2, 3)) for k in sc.SMPL_JOINT_NAMES}
    joints["left_knee"] = np.array([[0.0, -0.40, 0.0], [0.0, -0.50, 0.0]])
    joints["right_knee"] = np.array([[0.0, -0.44, 0.0], [0.0, -0.50, 0.0]])
    seg = sc.segment_lengths(joints)
    assert seg["thigh"] == pytest.approx([0.42, 0.50])


@pytest.fixture(scope="module")
def small_joints() -> sc.LinearJoints:
    return sc.kinematic_joints(sc.load_model(SMALL_MODEL))


def test_fit_segments_recovers_the_models_own_betas(small_joints):
    """With as many segments as betas (first 5 betas), a body of the model itself is found again exactly."""
    five = sc.LinearJoints(small_joints.names, small_joints.mean, small_joints.dirs[..., :5])
    truth = np.array([1.5, -1.0, 0.8, -0.6, 1.2])
    target = {k: 1000 * float(v) for k, v in sc.segment_lengths(five.at(truth)).items()}
    fit = sc.fit_segments(five, target)
    np.testing.assert_allclose(fit["betas"], truth, atol=0.02)
    assert fit["fit_rms_mm"] < 0.01 and fit["mean_rms_mm"] > 10.0
    assert fit["betas_norm"] == pytest.approx(np.linalg.norm(truth), abs=0.02)


def test_fit_segments_fits_only_the_named_segments(small_joints):
    target = {k: 1000 * float(v) for k, v in sc.segment_lengths(small_joints.at(np.zeros(10))).items()}
    target["hip width"] += 60.0  # a definition offset the fit is told to ignore
    fit = sc.fit_segments(small_joints, target, ("thigh", "shin", "upper arm"))
    assert fit["betas_norm"] < 1e-3 and fit["fit_rms_mm"] < 1e-3
    assert fit["fit_residual_mm"]["hip width"] == pytest.approx(-60.0, abs=1e-3)
    with pytest.raises(sc.CoverageError, match="no target for segment"):
        sc.fit_segments(small_joints, target, ("neck",))


def test_fit_clip_reaches_zero_on_the_models_own_motion(small_joints):
    """Joints posed by the model with known betas: a free-shape fit gets them to ~1 mm (L-BFGS stops
    short of exact), the mean shape stays ~10× further off."""
    rng = np.random.default_rng(0)
    betas = np.array([1.5, -1.5, 1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    pose = rng.normal(0.0, 0.3, (4, 72))
    rest = torch.as_tensor(small_joints.mean + small_joints.dirs @ betas)[None].expand(4, -1, -1)
    targets = sc.posed_joints(rest, torch.as_tensor(pose), torch.tensor([[0.1, 0.9, 3.0]] * 4)).numpy()
    init = pose + rng.normal(0.0, 0.05, pose.shape)
    mean = sc.fit_clip(small_joints, targets, init, free_shape=False)
    free = sc.fit_clip(small_joints, targets, mean["pose"], free_shape=True)
    assert free["mpjpe_mm"].mean() < 1.0 and free["mpjpe_mm"].max() < 2.0
    assert mean["mpjpe_mm"].mean() > 5.0 * free["mpjpe_mm"].mean() + 5.0
    assert set(free["per_joint_mm"]) == set(sc.FIT_JOINTS)


def test_fit_clip_refuses_missing_joints(small_joints):
    targets = np.zeros((1, 24, 3))
    targets[0, SMPL_JOINT_INDEX["left_wrist"]] = np.nan
    with pytest.raises(sc.CoverageError, match="lack some of the fitted joints"):
        sc.fit_clip(small_joints, targets, np.zeros((1, 72)), free_shape=False)


def test_bad_inputs_are_one_clear_line(tmp_path, capsys):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert sc.main(["--model", str(tmp_path / "bad.npz"), "--no-cmu"]) == 2
    np.savez(tmp_path / "other.npz", v_template=np.zeros((3, 3)))
    assert sc.main(["--model", str(tmp_path / "other.npz"), "--no-cmu"]) == 2
    assert sc.main(["--model", str(SMALL_MODEL), "--cmu", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "bad.npz: cannot read the model file" in err[0]
    assert "not an open-model file (no J_regressor, h36m_regressor, shapedirs)" in err[1]
    assert "CLIPS.tsv: no CMU clip index" in err[2] and "Traceback" not in "".join(err)
