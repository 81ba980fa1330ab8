import dataclasses

import pytest
import torch

from core.camera import project
from core.frames import FIT_FOCAL
from core.joints import JOINT_INDEX, indices
from core.metrics import pa_mpjpe
from fitting.body_model import DATA_DIR, load_body_model
from fitting.priors import MaxMixturePrior
from fitting.smplify import SMPLify, SMPLifyConfig

PRIOR = DATA_DIR / "pose_prior_open.npz"


@pytest.fixture(scope="module")
def body():
    return load_body_model("open-small")


@pytest.fixture(scope="module")
def prior():
    return MaxMixturePrior.from_file(PRIOR)


def _people(body, prior, batch=8, seed=0, noise=0.0, focal=FIT_FOCAL, depth=50.0):
    """Bodies with prior-sampled poses, facing a camera `depth` m away; all 49 keypoints with confidence 1."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.multinomial(prior.log_weights.exp(), batch, replacement=True, generator=gen)
    chol = torch.linalg.cholesky(torch.linalg.inv(prior.precisions.double())).float()
    body_pose = prior.means[k] + 0.5 * (chol[k] @ torch.randn(batch, 69, 1, generator=gen))[..., 0]
    orient = torch.tensor([torch.pi, 0.0, 0.0]) + 0.2 * torch.randn(batch, 3, generator=gen)
    pose = torch.cat([orient, body_pose], 1)
    betas = torch.randn(batch, 10, generator=gen)
    cam_t = torch.tensor([0.0, 0.2, depth]).repeat(batch, 1)
    center = torch.full((batch, 2), 112.0)
    with torch.no_grad():
        joints = body(betas, body_pose, orient).joints
    kp = torch.ones(batch, 49, 3)
    kp[..., :2] = project(joints, cam_t, focal, center) + noise * torch.randn(batch, 49, 2, generator=gen)
    return dict(pose=pose, betas=betas, cam_t=cam_t, center=center, joints=joints, keypoints=kp)


def test_known_body_is_recovered_from_noise_free_keypoints(body, prior):
    # A real perspective camera (f = 1000 px at 5 m): at SPIN's 5000 px crop focal length the projection is
    # nearly orthographic and a limb's depth flip is invisible in 2D, so no 2D fit could recover it.
    people = _people(body, prior, focal=1000.0, depth=5.0)
    gen = torch.Generator().manual_seed(1)
    start = people["pose"] + 0.1 * torch.randn(people["pose"].shape, generator=gen)
    config = SMPLifyConfig(focal_length=1000.0, body_iterations=40)
    fit = SMPLify(body, prior, config)(people["keypoints"], start, torch.zeros(8, 10),
                                       people["cam_t"] * torch.tensor([1.0, 1.0, 1.05]), people["center"])
    with torch.no_grad():
        joints = body(fit.betas, fit.pose[:, 3:], fit.pose[:, :3]).joints
        start_joints = body(torch.zeros(8, 10), start[:, 3:], start[:, :3]).joints
    reproj = (project(joints, fit.cam_t, 1000.0, people["center"]) - people["keypoints"][..., :2]).norm(dim=-1)
    error, start_error = pa_mpjpe(joints, people["joints"]), pa_mpjpe(start_joints, people["joints"])
    assert reproj.median() < 1.0, reproj.median()                   # px
    assert error.mean() < 0.03, error                               # m: seen 24 mm, from 52 mm at the start
    assert error.mean() < 0.6 * start_error.mean()


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_inputs_are_not_modified_and_results_are_deterministic(body, prior, mode):
    people = _people(body, prior, batch=3)
    config = SMPLifyConfig(mode=mode, iterations=5, body_iterations=5)
    inputs = [people["keypoints"], people["pose"] + 0.1, torch.zeros(3, 10), people["cam_t"], people["center"]]
    copies = [t.clone() for t in inputs]
    fitter = SMPLify(body, prior, config)
    first, second = fitter(*inputs), fitter(*inputs)
    for before, after in zip(copies, inputs):
        assert torch.equal(before, after)
    assert torch.equal(first.pose, second.pose) and torch.equal(first.cam_t, second.cam_t)
    ignored = indices(config.ignored_joints)
    assert (first.reprojection_loss[:, ignored] == 0).all()
    torch.testing.assert_close(first.loss, first.reprojection_loss.mean(-1))


def test_ignored_and_unconfident_joints_do_not_pull(body, prior):
    people = _people(body, prior, batch=2)
    wrist = JOINT_INDEX["Right Wrist"]
    moved = people["keypoints"].clone()
    moved[:, wrist, :2] += 40.0
    unconfident = moved.clone()
    unconfident[:, wrist, 2] = 0.0
    config = SMPLifyConfig(ignored_joints=SMPLifyConfig().ignored_joints + ("Right Wrist",), body_iterations=8)
    start = (people["keypoints"], people["pose"], torch.zeros(2, 10), people["cam_t"], people["center"])
    base = SMPLify(body, prior, config)(*start)
    ignored = SMPLify(body, prior, config)(moved, *start[1:])
    skipped = SMPLify(body, prior, dataclasses.replace(config, ignored_joints=SMPLifyConfig().ignored_joints))(
        unconfident, *start[1:])
    pulled = SMPLify(body, prior, dataclasses.replace(config, ignored_joints=SMPLifyConfig().ignored_joints))(
        moved, *start[1:])
    torch.testing.assert_close(ignored.pose, base.pose)
    assert (pulled.pose - base.pose).abs().max() > 1e-2  # the same wrist, not ignored, does pull


def test_fitting_loss_matches_the_fit(body, prior):
    people = _people(body, prior, batch=4, noise=3.0)
    fitter = SMPLify(body, prior, SMPLifyConfig(body_iterations=5))
    fit = fitter(people["keypoints"], people["pose"], torch.zeros(4, 10), people["cam_t"], people["center"])
    again = fitter.fitting_loss(fit.pose, fit.betas, fit.cam_t, people["center"], people["keypoints"])
    torch.testing.assert_close(again, fit.reprojection_loss)


def test_reference_mode_lowers_its_objective(body, prior):
    people = _people(body, prior, batch=4, noise=2.0)
    start = people["pose"].clone()
    start[:, 3:] = 0.0
    config = SMPLifyConfig(mode="reference", iterations=15)
    fitter = SMPLify(body, prior, config)
    fit = fitter(people["keypoints"], start, torch.zeros(4, 10), people["cam_t"], people["center"])
    before = fitter.fitting_loss(start, torch.zeros(4, 10), people["cam_t"], people["center"], people["keypoints"])
    assert (fit.loss < before.mean(-1)).all()


def test_unknown_mode_and_joint_names_are_refused(body, prior):
    with pytest.raises(ValueError, match="mode"):
        SMPLify(body, prior, SMPLifyConfig(mode="gradient-descent"))
    with pytest.raises(ValueError, match="unknown joint"):
        SMPLify(body, prior, SMPLifyConfig(ignored_joints=("Left Antenna",)))


@pytest.mark.gpu
def test_fast_mode_runs_on_cuda_like_cpu(body, prior):
    people = _people(body, prior, batch=16, noise=2.0)
    args = (people["keypoints"], people["pose"] + 0.05, torch.zeros(16, 10), people["cam_t"], people["center"])
    cpu = SMPLify(body, prior)(*args)
    gpu = SMPLify(body.to("cuda"), prior.to("cuda"))(*(t.cuda() for t in args))
    torch.testing.assert_close(gpu.pose.cpu(), cpu.pose, atol=1e-3, rtol=1e-3)
