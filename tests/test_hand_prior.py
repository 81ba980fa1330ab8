"""Hand priors (fitting/hand_prior.py): anatomical joint limits in SMPL-X's hand frames, checked with smplx's own
forward kinematics, and the optional hand-pose PCA prior."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_files import smplx_arrays
from smplx.lbs import batch_rigid_transform, batch_rodrigues

from core.errors import ModelFileError
from core.wholebody import SMPLX_JOINT_INDEX, SMPLX_JOINT_NAMES
from fitting.hand_prior import (
    HAND_JOINT_NAMES,
    LIMITS_DEG,
    HandJointLimits,
    HandPCAPrior,
    flat_hand_pose,
    flexion_axes,
    joint_kind,
)

# SMPL-X's rest pose (smplx's T-pose): arms along ±X (the subject's left at +X), palms down (−Y), thumbs forward (+Z).
LEFT_ALONG, RIGHT_ALONG, PALM_SIDE, FORWARD = np.array([1.0, 0, 0]), np.array([-1.0, 0, 0]), np.array([0, -1.0, 0]), \
    np.array([0, 0, 1.0])


def _hand_pose(side: str, joint: str, component: int, degrees: float) -> torch.Tensor:
    """(1, 45) hand pose turning one joint by ``degrees`` about its own axis ``component`` (0 twist, 1 abduction,
    2 flexion) as the prior defines it."""
    pose = np.zeros((15, 3))
    j = HAND_JOINT_NAMES[side].index(f"{side}_{joint}")
    pose[j] = flexion_axes(side)[j, component] * math.radians(degrees)
    return torch.as_tensor(pose.reshape(1, 45))


def test_hand_joints_are_smplxs_in_mano_order():
    assert HAND_JOINT_NAMES["left"] == SMPLX_JOINT_NAMES[25:40]
    assert HAND_JOINT_NAMES["right"] == SMPLX_JOINT_NAMES[40:55]
    assert {joint_kind(n) for n in HAND_JOINT_NAMES["left"]} == set(LIMITS_DEG)
    for side in ("left", "right"):  # each joint's three axes are a right-handed or mirrored orthonormal frame
        a = flexion_axes(side)
        np.testing.assert_allclose(a @ a.transpose(0, 2, 1), np.broadcast_to(np.eye(3), a.shape), atol=1e-12)


def _fingertip(side: str, finger: str, hand_pose: torch.Tensor, along: np.ndarray) -> np.ndarray:
    """Tip of one finger laid straight from the wrist along ``along`` (SMPL-X's rest), posed by smplx's own
    forward kinematics (batch_rodrigues, batch_rigid_transform) with ``hand_pose`` (1, 45) on its three joints."""
    names = [f"{side}_wrist"] + [f"{side}_{finger}{k}" for k in (1, 2, 3)]
    rest = torch.as_tensor(np.stack([along * 0.03 * i for i in range(4)] + [along * 0.03 * 4]))[None]  # + the tip
    parents = torch.tensor([-1, 0, 1, 2, 3])
    aa = torch.zeros(5, 3, dtype=torch.float64)
    for i, name in enumerate(names[1:], start=1):
        j = HAND_JOINT_NAMES[side].index(name)
        aa[i] = hand_pose[0, 3 * j:3 * j + 3]
    posed, _ = batch_rigid_transform(batch_rodrigues(aa)[None], rest, parents)
    return posed[0, -1].numpy()


@pytest.mark.parametrize("side,along", [("left", LEFT_ALONG), ("right", RIGHT_ALONG)])
def test_positive_flexion_closes_the_hand_and_the_limits_follow_it(side, along):
    """With smplx's rotation convention, the prior's positive flexion turns every finger to the palm side (−Y),
    and the thumb across the palm (towards −Z, where the fingers are): flexing 60° costs nothing, bending the
    fingers 60° backwards does."""
    limits = HandJointLimits(torch.float64)
    zero = torch.zeros(1, 45, dtype=torch.float64)
    for finger in ("index", "middle", "ring", "pinky"):
        bent = _hand_pose(side, f"{finger}1", 2, 60.0)
        tip = _fingertip(side, finger, bent, along)
        assert tip @ PALM_SIDE > 0.07 and abs(tip @ FORWARD) < 1e-9         # down, not sideways
        args = (bent, zero) if side == "left" else (zero, bent)
        assert float(limits(*args)) == 0.0
        back = -bent                                                        # 60° of hyperextension: 45° allowed
        args = (back, zero) if side == "left" else (zero, back)
        assert float(limits(*args)) == pytest.approx(math.radians(15.0) ** 2, rel=1e-9)
    thumb = _hand_pose(side, "thumb3", 2, 60.0)
    tip = _fingertip(side, "thumb", thumb, along)
    assert tip @ -FORWARD > 0.01 and abs(tip @ PALM_SIDE) < 1e-9


def test_zero_inside_the_ranges_quadratic_outside():
    limits = HandJointLimits(torch.float64)
    zero = torch.zeros(1, 45, dtype=torch.float64)
    assert float(limits(zero, zero)) == 0.0
    # a fist within the AAOS ranges: MCP 80°, PIP 95°, DIP 60° on every finger, thumb MCP 40°, IP 70°
    fist = sum(_hand_pose("right", f"{f}{k}", 2, d) for f in ("index", "middle", "ring", "pinky")
               for k, d in ((1, 80.0), (2, 95.0), (3, 60.0))) + _hand_pose("right", "thumb2", 2, 40.0) \
        + _hand_pose("right", "thumb3", 2, 70.0)
    assert float(limits(zero, fist)) == 0.0
    over = {("index2", 2, 120.0): 20.0, ("middle3", 2, -15.0): 15.0, ("pinky1", 1, 35.0): 15.0,
            ("ring2", 0, -25.0): 15.0, ("thumb1", 1, -10.0): 10.0, ("thumb2", 2, 65.0): 15.0}
    for (joint, comp, deg), excess in over.items():
        for side in ("left", "right"):
            pose = _hand_pose(side, joint, comp, deg)
            args = (pose, zero) if side == "left" else (zero, pose)
            assert float(limits(*args)) == pytest.approx(math.radians(excess) ** 2, rel=1e-9), (side, joint)


def test_limit_residuals_have_an_exact_jacobian():
    limits = HandJointLimits(torch.float64)
    g = torch.Generator().manual_seed(0)
    left, right = torch.randn(3, 45, generator=g, dtype=torch.float64), torch.randn(3, 45, generator=g,
                                                                                     dtype=torch.float64)
    r, jac = limits.residuals_and_jacobian(left, right)
    assert (r != 0).any() and (r == 0).any()        # some components outside their range, some inside
    for b in range(3):
        auto = torch.autograd.functional.jacobian(lambda x: limits.residuals(x[None, :45], x[None, 45:])[0],
                                                  torch.cat([left[b], right[b]]))
        np.testing.assert_allclose(jac[b], auto, atol=1e-12)


def test_flat_hand_pose_adds_smplxs_hands_mean():
    mean = smplx_arrays()["hands_meanl"]
    pose = torch.zeros(2, 45, dtype=torch.float64)
    np.testing.assert_allclose(flat_hand_pose(pose, mean), np.broadcast_to(mean, (2, 45)))


def test_hand_pca_prior(tmp_path):
    rng = np.random.default_rng(0)
    comps = np.linalg.qr(rng.normal(size=(45, 45)))[0].T * 2.0    # rows span R^45, not unit length
    mean = rng.normal(0, 0.1, 45)
    std = np.linspace(1.0, 0.1, 12)
    prior = HandPCAPrior(comps, mean, std, num_components=12).double()
    c = rng.normal(size=(4, 12))
    pose = torch.as_tensor(mean + c @ comps[:12])
    r = prior.residuals(pose)
    np.testing.assert_allclose(r[:, :12], c / std, atol=1e-5)       # float32 tables
    np.testing.assert_allclose(r[:, 12:], 0.0, atol=1e-4)
    off = pose + torch.as_tensor(comps[20] / np.linalg.norm(comps[20]) * 0.1)   # outside the first 12 components
    np.testing.assert_allclose(prior.residuals(off)[:, 12:].norm(dim=1), 0.1 / math.radians(10.0), rtol=1e-4)
    _, jac = prior.residuals_and_jacobian(pose)
    auto = torch.autograd.functional.jacobian(lambda x: prior.residuals(x[None])[0], pose[0])
    np.testing.assert_allclose(jac[0], auto, atol=1e-5)
    # read from a SMPL-X-layout file: hands_components{l,r} and hands_mean{l,r}
    arrays = smplx_arrays()
    np.savez(tmp_path / "smplx.npz", **{k: arrays[k] for k in ("hands_componentsl", "hands_meanl")})
    left = HandPCAPrior.from_file(tmp_path / "smplx.npz", "left", num_components=6)
    assert left.components.shape == (6, 45)
    with pytest.raises(ModelFileError, match=r"smplx\.npz: no \['hands_componentsr', 'hands_meanr'\] for the right"):
        HandPCAPrior.from_file(tmp_path / "smplx.npz", "right")
    assert SMPLX_JOINT_INDEX["left_index1"] == 25   # the hand_pose slots follow SMPL-X's joints 25–54
