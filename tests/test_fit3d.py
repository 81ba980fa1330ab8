"""Fitting to 3D evidence (`fitting.fit3d`): the model points it matches Human3.6M joints with, its derivatives, its
solvers, and recovery of known subjects from 3D joints and from calibrated views.

Synthetic subjects are `bench.fit3d`'s (the benchmark's own generator): the open model (small mesh), pose-prior
sequences, betas ~ N(0, 1), Human3.6M-like ring cameras. Bounds are what the code achieves over seeds 0-2 with
margin (measured values in the comments).
"""
from dataclasses import replace

import pytest
import torch

from bench.fit3d import H36M_SLOTS, measure, observe, synthetic_subjects
from core.errors import FitloopError, ModelFileError
from core.joints import H36M_JOINTS, NUM_JOINTS
from fitting.body_model import load_body_model
from fitting.fit3d import (
    Evidence,
    Fit3D,
    Fit3DConfig,
    dense_solve,
    frame_levels,
    schur_solve,
    triangulate,
)
from fitting.priors import DEFAULT_PRIOR, MaxMixturePrior
from fitting.skeleton import Skeleton

# SPIN's Human3.6M regressor has 17 rows (J_regressor_h36m.npy); the skeleton appends them after the 49.
NUM_H36M = 17


@pytest.fixture(scope="module")
def body():
    return load_body_model("open-small", dtype=torch.float64)


@pytest.fixture(scope="module")
def prior():
    return MaxMixturePrior.from_file(DEFAULT_PRIOR)


@pytest.fixture(scope="module")
def fitter(body, prior):
    return Fit3D(body, prior)


def _params(batch: int, seed: int, nb: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (0.5 * torch.randn(batch, 72, generator=gen, dtype=torch.float64),
            torch.randn(batch, nb, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("name", ["open-small", "open"])
def test_the_skeletons_extra_rows_are_the_body_models_h36m_joints(name):
    body = load_body_model(name, dtype=torch.float64)
    skeleton = Skeleton(body, body.h36m_regressor)
    pose, betas = _params(4, seed=0)
    points = skeleton(pose, betas).points
    assert points.shape == (4, NUM_JOINTS + NUM_H36M, 3)
    with torch.no_grad():
        out = body(betas, pose[:, 3:], pose[:, :3])
    # the open model has no pose correctives, so the blend is exact (seen 5e-9 m)
    torch.testing.assert_close(points[:, NUM_JOINTS:], body.h36m_joints(out.vertices), atol=1e-6, rtol=0)
    torch.testing.assert_close(points[:, :NUM_JOINTS], out.joints, atol=1e-6, rtol=0)


def test_the_extra_rows_jacobian_equals_finite_differences(body):
    skeleton = Skeleton(body, body.h36m_regressor)
    pose, betas = _params(2, seed=1)
    subset = torch.arange(NUM_JOINTS, NUM_JOINTS + NUM_H36M)
    d_pose, d_betas = skeleton.jacobian(skeleton(pose, betas, subset))
    eps = 1e-6
    for column in (0, 4, 17, 50, 71):  # orientation, hips, a knee, an elbow, a hand slot
        step = torch.zeros_like(pose)
        step[:, column] = eps
        numeric = (skeleton(pose + step, betas, subset).points - skeleton(pose - step, betas, subset).points) / (2 * eps)
        torch.testing.assert_close(d_pose[..., column], numeric, atol=1e-8, rtol=0)
    for column in range(betas.shape[1]):
        step = torch.zeros_like(betas)
        step[:, column] = eps
        numeric = (skeleton(pose, betas + step, subset).points - skeleton(pose, betas - step, subset).points) / (2 * eps)
        torch.testing.assert_close(d_betas[..., column], numeric, atol=1e-8, rtol=0)


def test_vertex_rows_of_another_mesh_are_refused(body):
    with pytest.raises(ModelFileError, match="vertex rows of shape"):
        Skeleton(body, torch.zeros(3, body.layer.v_template.shape[0] + 1, dtype=torch.float64))


def _state(fit: Fit3D, truth, seed: int):
    """A state near the truth (what a step sees mid-fit): pose, subject betas and translation, perturbed."""
    gen = torch.Generator().manual_seed(seed)
    pose = truth.pose + 0.1 * torch.randn(truth.pose.shape, generator=gen, dtype=torch.float64)
    betas = truth.betas + 0.3 * torch.randn(truth.betas.shape, generator=gen, dtype=torch.float64)
    transl = truth.transl + 0.02 * torch.randn(truth.transl.shape, generator=gen, dtype=torch.float64)
    return pose, betas, transl


def test_the_gradient_equals_finite_differences_of_the_objective(body, prior):
    """g of the normal equations (every analytic Jacobian: 3D joints, two views, the priors, the temporal links,
    shared betas) is ½ the objective's gradient, checked along random directions by central differences."""
    fit = Fit3D(body, prior, Fit3DConfig(temporal_weight=20.0, joint_sigma=50.0, keypoint_sigma=30.0))
    truth = synthetic_subjects(fit, 2, 3, "prior", seed=0)
    evidence = observe(truth, 20.0, 2, 5.0)
    pose, betas, transl = _state(fit, truth, seed=1)
    ne = fit.normal_equations(evidence, pose, betas, transl)

    def total(p, b, t):
        return fit.objective(evidence, p, b, t).sum()

    gen = torch.Generator().manual_seed(2)
    eps = 1e-6
    for _ in range(4):
        dp, db, dt = (torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in (pose, betas, transl))
        numeric = (total(pose + eps * dp, betas + eps * db, transl + eps * dt)
                   - total(pose - eps * dp, betas - eps * db, transl - eps * dt)) / (2 * eps)
        analytic = 2 * ((ne.g_f[:, :72] * dp).sum() + (ne.g_f[:, 72:] * dt).sum() + (ne.g_b * db).sum())
        assert abs(float(analytic - numeric)) <= 1e-6 * abs(float(numeric)) + 1e-6


def test_schur_complement_equals_the_dense_solve(body, prior):
    """Shared betas, temporal links (a branching one too) and frames without links: the same step either way."""
    fit = Fit3D(body, prior, Fit3DConfig(temporal_weight=50.0))
    truth = synthetic_subjects(fit, 2, 4, "prior", seed=3)
    previous = truth.previous.clone()
    previous[3] = 1  # frame 3 now follows frame 1, as frame 2 does: a tree, not a chain
    evidence = replace(observe(truth, 10.0, 2, 2.0), previous=previous)
    ne = fit.normal_equations(evidence, *_state(fit, truth, seed=4))
    ne = replace(ne, h_ff=ne.h_ff + 1e-3 * torch.eye(75, dtype=torch.float64))
    want_f, want_b = dense_solve(ne)
    got_f, got_b = schur_solve(ne, frame_levels(ne.previous))
    torch.testing.assert_close(got_f, want_f, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(got_b, want_b, atol=1e-9, rtol=1e-7)
    # without the links the frames' own blocks alone (a different step: the links matter)
    unlinked_f, _ = schur_solve(replace(ne, link=None), frame_levels(ne.previous))
    assert float((unlinked_f - want_f).abs().max()) > 1e-3 * float(want_f.abs().max())


def test_a_fit_with_either_solver_is_the_same(body, prior):
    truth = synthetic_subjects(Fit3D(body, prior), 2, 3, "prior", seed=5)
    evidence = observe(truth, 10.0, 0)
    fits = [Fit3D(body, prior, Fit3DConfig(solver=s, iterations=8))(evidence) for s in ("schur", "dense")]
    torch.testing.assert_close(fits[0].pose, fits[1].pose, atol=1e-7, rtol=0)
    torch.testing.assert_close(fits[0].subject_betas, fits[1].subject_betas, atol=1e-7, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_known_subjects_are_recovered_from_their_3d_joints(fitter, seed):
    """Two subjects, eight frames each, one shape each. Clean joints: measured 0.7-1.1 mm on the joints, 4.5-13.3 mm
    per vertex of the rest shape (the directions of shape the 17 joints do not see stay at the prior's zero), where
    the mean shape is 36-62 mm off (ratio at most 0.34). 10 mm of noise per coordinate (15-16.5 mm per joint):
    11.5-12.8 mm (0.73-0.78 of the noise), 5.2-12.7 mm per vertex (ratio at most 0.32); seeds 0-4, the open model
    with the wider shape space (the earlier one: 4.0-5.4 and 4.3-7.8 mm)."""
    truth = synthetic_subjects(fitter, 2, 8, "prior", seed)
    result = fitter(observe(truth, 0.0, 0, seed=seed + 1))
    clean = measure(fitter, truth, result)
    mean_shape = measure(fitter, truth, replace(result, subject_betas=torch.zeros_like(result.subject_betas)))
    assert clean["joints_abs"] < 2.0 and clean["shape_v2v"] < min(16.0, 0.45 * mean_shape["shape_v2v"])
    evidence = observe(truth, 10.0, 0, seed=seed + 1)
    noisy = measure(fitter, truth, fitter(evidence))
    assert noisy["joints_abs"] < 15.0 and noisy["shape_v2v"] < min(16.0, 0.45 * mean_shape["shape_v2v"])
    # the fit lands closer to the truth than the noisy joints it was given are
    given = (evidence.joints_3d[:, H36M_SLOTS, :3] - truth.joints[:, H36M_SLOTS]).norm(dim=-1).mean() * 1000
    assert noisy["joints_abs"] < 0.9 * float(given)


def test_one_shape_per_subject_beats_a_shape_per_frame(fitter):
    """The same noisy frames fitted with one shape per subject and with a shape per frame: sharing the shape
    recovers it better (measured 5.2-12.7 vs 10.9-16.5 mm per rest-shape vertex, ratio 0.45-0.84 over seeds 0-4;
    8.5 vs 10.9 here; the earlier, narrower shape space: 5.0 vs 10.7). The
    betas themselves are no measure: directions of shape that move the 17 joints by a few mm per unit are left to
    the prior either way."""
    truth = synthetic_subjects(fitter, 2, 8, "prior", seed=0)
    evidence = observe(truth, 10.0, 0, seed=1)
    shared = measure(fitter, truth, fitter(evidence))
    alone = fitter(replace(evidence, subject=None, previous=None))
    per_frame = measure(fitter, replace(truth, betas=truth.betas[truth.subject], subject=alone.subject), alone)
    assert shared["shape_v2v"] < 0.9 * per_frame["shape_v2v"]
    assert alone.subject_betas.shape == (16, 10)


def test_views_alone_start_from_triangulated_joints_and_recover_the_body(fitter):
    truth = synthetic_subjects(fitter, 2, 4, "prior", seed=1)
    evidence = observe(truth, None, 4, 0.0)
    tri = triangulate(evidence.views)
    assert bool((tri[:, H36M_SLOTS, 3] == 1).all()) and float(tri[..., 3].sum()) == 8 * len(H36M_JOINTS)
    torch.testing.assert_close(tri[:, H36M_SLOTS, :3], truth.joints[:, H36M_SLOTS], atol=1e-8, rtol=0)
    # the start is the mean body rigidly on the triangulated torso: facing the right way, measured 146-170 mm off
    pose, betas, transl = fitter.start(evidence)
    start = fitter.slot_points(pose, betas[truth.subject]) + transl[:, None]
    assert float((start - truth.joints)[:, H36M_SLOTS].norm(dim=-1).mean()) < 0.25
    fit = fitter(evidence)
    multi = measure(fitter, truth, fit)
    assert multi["joints_abs"] < 6.0 and float(fit.reprojection.max()) < 1.5  # measured 2.6-4.6 mm, 0.5-1.0 px


def test_one_view_is_far_worse_than_four(fitter):
    """2D keypoints (2 px noise) of one camera against four: one view leaves depth (and scale) to the priors
    (measured PA-MPJPE 34-120 mm vs 6.7-7.8 mm over seeds 0-4; 86 vs 7.4 here)."""
    truth = synthetic_subjects(fitter, 2, 4, "prior", seed=0)
    four = measure(fitter, truth, fitter(observe(truth, None, 4, 2.0)))
    one = measure(fitter, truth, fitter(observe(truth, None, 1, 2.0)))
    assert four["pa_mpjpe"] < 12.0 and one["pa_mpjpe"] > 5 * four["pa_mpjpe"]


def test_the_temporal_term_reduces_jitter(body, prior):
    """Noisy joints (10 mm) of smooth sequences: the fitted joints' acceleration beyond the truth's falls by about
    half (measured 22-28 -> 10-14.5 mm/frame², ratio 0.44-0.53, seeds 0-4) and the joints land no farther from the
    truth (within 0.2 mm or closer)."""
    plain = Fit3D(body, prior)
    smooth = Fit3D(body, prior, Fit3DConfig(temporal_weight=300.0))
    truth = synthetic_subjects(plain, 2, 8, "prior", seed=0)
    evidence = observe(truth, 10.0, 0, seed=1)
    a, b = measure(plain, truth, plain(evidence)), measure(smooth, truth, smooth(evidence))
    assert b["jitter"] < 0.65 * a["jitter"] and b["joints_abs"] < a["joints_abs"] + 1.0


def test_inputs_are_not_modified_and_fits_are_deterministic(fitter):
    truth = synthetic_subjects(fitter, 1, 3, "prior", seed=2)
    evidence = observe(truth, 10.0, 2, 2.0)
    before = [evidence.joints_3d.clone(), evidence.views.keypoints.clone()]
    first, second = fitter(evidence), fitter(evidence)
    assert torch.equal(evidence.joints_3d, before[0]) and torch.equal(evidence.views.keypoints, before[1])
    assert torch.equal(first.pose, second.pose) and torch.equal(first.transl, second.transl)


def test_unconfident_entries_are_ignored_whatever_they_hold(fitter):
    """A missing joint (confidence 0, NaN coordinates) and a view a frame lacks (confidence 0 everywhere, camera at
    the origin): the same fit as with them zeroed."""
    truth = synthetic_subjects(fitter, 1, 2, "prior", seed=0)
    evidence = observe(truth, 5.0, 2, 1.0)
    joints = evidence.joints_3d.clone()
    joints[0, H36M_SLOTS[3], 3] = 0.0
    keypoints = evidence.views.keypoints.clone()
    keypoints[1, 1, :, 2] = 0.0
    zeroed = replace(evidence, joints_3d=joints.clone(),
                     views=replace(evidence.views, keypoints=keypoints.clone()))
    zeroed.joints_3d[0, H36M_SLOTS[3]] = 0.0
    joints[0, H36M_SLOTS[3], :3] = float("nan")
    keypoints[1, 1, :, :2] = float("nan")
    translation = evidence.views.translation.clone()
    translation[1, 1] = -(evidence.views.rotation[1, 1] @ truth.joints[1, 0])  # a camera inside the body
    messy = replace(evidence, joints_3d=joints, views=replace(evidence.views, keypoints=keypoints,
                                                              translation=translation))
    a, b = fitter(zeroed), fitter(messy)
    assert torch.isfinite(b.pose).all()
    torch.testing.assert_close(a.pose, b.pose, atol=1e-9, rtol=0)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


def test_bad_inputs_are_refused_in_one_line(fitter, body, prior):
    truth = synthetic_subjects(fitter, 2, 2, "prior", seed=0)
    good = observe(truth, 0.0, 2, 0.0)
    nan_joint = good.joints_3d.clone()
    nan_joint[0, H36M_SLOTS[0], 0] = float("nan")
    nan_camera = good.views.rotation.clone()
    nan_camera[0, 0, 0, 0] = float("inf")
    cases = [
        (Evidence(), "needs 3D joints or calibrated views"),
        (replace(good, joints_3d=good.joints_3d[:, :17]), "joints_3d must be"),
        (replace(good, joints_3d=nan_joint), "NaN or inf in confident"),
        (replace(good, views=replace(good.views, rotation=nan_camera)), "view rotation holds NaN"),
        (replace(good, views=replace(good.views, focal=-good.views.focal)), "focal lengths must be > 0"),
        (replace(good, views=replace(good.views, center=good.views.center[:, :1])), "view center must be"),
        (replace(good, subject=torch.tensor([0, 0, 2, 2])), "number the subjects 0..S-1"),
        (replace(good, previous=torch.tensor([-1, 0, 3, 2])), "cycle"),
        (replace(good, previous=torch.tensor([-1, 0, 0, 5])), "previous must be -1 or the index"),
        (replace(good, previous=torch.tensor([-1, 0, 1, 2])), "links frames of different subjects"),
        (replace(good, joints_3d=torch.zeros_like(good.joints_3d), views=None), "fewer than 3 confident 3D"),
    ]
    for evidence, message in cases:
        with pytest.raises(FitloopError) as err:
            fitter(evidence)
        assert message in _one_line(err), message
    with pytest.raises(FitloopError) as err:
        fitter(good, start=(truth.pose, truth.betas[:1], truth.transl))
    assert "start's betas must be (2, 10)" in _one_line(err)
    for config, message in [(Fit3DConfig(solver="qr"), "solver must be"),
                            (Fit3DConfig(correspondence="mosh"), "correspondence must be"),
                            (Fit3DConfig(temporal_weight=-1.0), "temporal_weight"),
                            (Fit3DConfig(joint_sigma=0.0), "Geman-McClure scales > 0")]:
        with pytest.raises(FitloopError) as err:
            Fit3D(body, prior, config)
        assert message in _one_line(err)


def test_frame_levels_follow_the_links():
    levels = frame_levels(torch.tensor([-1, 0, 1, -1, 3, 1]))
    assert [level.tolist() for level in levels] == [[0, 3], [1, 4], [2, 5]]
