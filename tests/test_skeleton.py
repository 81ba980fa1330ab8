"""The joints-only skeleton on every kinematic tree the loader gives: SMPL's 24 joints, SMPL-H's 52, SMPL-X's 55.

Synthetic model files in the real layouts (tests/model_files.py); float64 throughout, so the analytic Jacobian
can be held to autograd's to 1e-10.
"""
import model_files
import numpy as np
import pytest
import torch

from core.joints import indices
from fitting.body_model import load_body_model
from fitting.skeleton import Skeleton
from fitting.smplify import OP_TORSO

# The kinematic trees of the real files: joints per family (SMPL 24; SMPL-H 22 body + 2 x 15 MANO hand joints;
# SMPL-X adds jaw and two eyes).
TREE_SIZES = {"smpl": 24, "smplh": 52, "smplx": 55}
ARRAYS = {"smpl": model_files.smpl_arrays, "smplh": model_files.smplh_arrays, "smplx": model_files.smplx_arrays}


@pytest.fixture(scope="module", params=["smpl", "smplh", "smplx"])
def exact_body(request, tmp_path_factory):
    """A float64 model of each family without pose correctives (the skeleton is exact there)."""
    arrays = ARRAYS[request.param]()
    arrays["posedirs"] = np.zeros_like(arrays["posedirs"])
    path = tmp_path_factory.mktemp(request.param) / f"{request.param.upper()}_NEUTRAL.npz"
    np.savez(path, **arrays)
    return load_body_model(path, dtype=torch.float64)


def _params(body, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pose = 0.6 * torch.randn(batch, 72, generator=gen, dtype=torch.float64)
    pose[0] = 0.0  # the zero pose: Rodrigues' and the right Jacobian's small-angle branch
    pose[1, 3:6] = torch.tensor([0.0, 3.0, 0.0], dtype=torch.float64)  # near pi
    return pose, torch.randn(batch, body.num_betas, generator=gen, dtype=torch.float64)


def test_the_skeleton_is_the_body_models_joints_on_every_tree(exact_body):
    skeleton = Skeleton(exact_body)
    assert skeleton.num_joints == TREE_SIZES[exact_body.family]
    pose, betas = _params(exact_body, 4, seed=0)
    with torch.no_grad():
        joints = exact_body(betas, pose[:, 3:], pose[:, :3]).joints
    # smplx's Rodrigues adds 1e-8 to every rotation vector; seen 5e-9 m
    torch.testing.assert_close(skeleton(pose, betas).points, joints, atol=1e-7, rtol=0)


def test_analytic_jacobian_equals_autograd(exact_body):
    body = exact_body
    skeleton = Skeleton(body)
    pose, betas = _params(body, 3, seed=1)
    for subset in (None, torch.as_tensor(indices(OP_TORSO))):
        d_pose, d_betas = skeleton.jacobian(skeleton(pose, betas, subset))
        # examples are independent: the Jacobian of the batch's points summed over the batch is every example's own
        want_pose, want_betas = torch.autograd.functional.jacobian(
            lambda p, q, subset=subset: skeleton(p, q, subset).points.sum(0), (pose, betas), vectorize=True)
        torch.testing.assert_close(d_pose, want_pose.permute(2, 0, 1, 3), atol=1e-10, rtol=0)
        torch.testing.assert_close(d_betas, want_betas.permute(2, 0, 1, 3), atol=1e-10, rtol=0)
    if body.family != "smpl":  # SMPL's hand slots 22, 23 drive no SMPL-H/SMPL-X joint: nothing depends on them
        assert (d_pose[..., 66:] == 0).all()



def test_pixel_jacobian_is_the_jacobian_through_the_projection(exact_body):
    """`Skeleton.pixel_jacobian` (the keypoint term's Jacobian, formed by triple products without the 3D columns)
    equals the 3D Jacobian times the projection's, on every tree (SMPL-H/SMPL-X: undriven slots' columns zero)."""
    from core.camera import projection_jacobian

    skeleton = Skeleton(exact_body)
    pose, betas = _params(exact_body, 3, seed=2)
    for subset in (None, torch.as_tensor(indices(OP_TORSO))):
        state = skeleton(pose, betas, subset)
        dproj = projection_jacobian(state.points + torch.tensor([0.1, 0.2, 4.0], dtype=torch.float64),
                                    torch.tensor([[1000.0, 1100.0]] * 3, dtype=torch.float64))
        d_pose, d_betas = skeleton.jacobian(state)
        torch.testing.assert_close(skeleton.pixel_jacobian(state, dproj),
                                   torch.cat([dproj @ d_pose, dproj @ d_betas], -1), atol=1e-9, rtol=0)


def test_the_root_frame_turns_the_points_as_the_skeleton_would(exact_body):
    """`Skeleton.root_frame` (SMPLify's camera stage): from one evaluation, the points at another global orientation
    are the skeleton's own there, and their orientation Jacobian is `jacobian`'s global-orientation columns."""
    skeleton = Skeleton(exact_body)
    pose, betas = _params(exact_body, 3, seed=4)
    turned = pose.clone()
    turned[:, :3] += torch.tensor([[0.3, -1.2, 0.4], [2.5, 0.1, -0.2], [0.0, 0.0, 0.0]], dtype=torch.float64)
    for subset in (None, torch.as_tensor(indices(OP_TORSO))):
        frame = skeleton.root_frame(skeleton(pose, betas, subset))
        there = skeleton(turned, betas, subset)
        torch.testing.assert_close(frame.points(turned[:, :3]), there.points, atol=1e-12, rtol=0)
        torch.testing.assert_close(frame.jacobian(turned[:, :3]), skeleton.jacobian(there)[0][..., :3],
                                   atol=1e-10, rtol=0)
        pick = torch.tensor([[2, 0], [1, 1], [3, 2]])                  # each example's own points
        torch.testing.assert_close(frame.select(pick).points(turned[:, :3]),
                                   torch.gather(there.points, 1, pick[..., None].expand(-1, -1, 3)), atol=1e-12, rtol=0)
