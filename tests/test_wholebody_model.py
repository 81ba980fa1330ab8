"""The whole-body model (fitting/wholebody_model.py) against smplx's own SMPL-X, and its exact skeleton.

Synthetic SMPL-X files in the real layout (tests/model_files.py `smplx_arrays`); float64 so that the skeleton and
its Jacobians can be held to the mesh and to autograd.
"""
import contextlib
import io

import model_files
import numpy as np
import pytest
import smplx
import smplx.joint_names
import torch
from wholebody_files import wholebody_smplx_arrays

from core.wholebody import WHOLEBODY_ALIASES, WHOLEBODY_INDEX, WHOLEBODY_NAMES, WHOLEBODY_PARTS
from fitting.body_model import load_body_model
from fitting.wholebody_model import FULL_POSE_DIM, WholeBodyModel

# smplx's SMPL-X output joints with use_face_contour=False: 55 kinematic joints, 21 vertex joints, 51 landmarks,
# named by smplx.joint_names.JOINT_NAMES (the names core.wholebody uses).
SMPLX_OUTPUT_JOINTS = 55 + 21 + 51
# What the model provides: 49 body + 2 x 21 hand (roots are the wrists) + 51 landmarks; no contour, no pupils.
NUM_PROVIDED = 49 + 2 * 21 + 51


def _write(tmp_path, zero_posedirs: bool, suffix: str = ".npz"):
    arrays = wholebody_smplx_arrays()
    if zero_posedirs:
        arrays["posedirs"] = np.zeros_like(arrays["posedirs"])
    path = tmp_path / f"SMPLX_NEUTRAL{suffix}"
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        model_files.write_chumpy_pickle(path, arrays)
    return path


def random_params(batch: int, num_betas: int, num_expression: int, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    full = 0.4 * torch.randn(batch, FULL_POSE_DIM, generator=gen, dtype=dtype)
    betas = torch.randn(batch, num_betas, generator=gen, dtype=dtype)
    expression = torch.randn(batch, num_expression, generator=gen, dtype=dtype)
    return full, betas, expression


def test_forward_matches_smplx_smplx(tmp_path):
    path = _write(tmp_path, zero_posedirs=False)
    model = WholeBodyModel(load_body_model(path, dtype=torch.float64))
    assert model.provided.sum() == NUM_PROVIDED
    with contextlib.redirect_stdout(io.StringIO()):
        reference = smplx.SMPLX(model_path=str(path), ext="npz", num_betas=10, num_expression_coeffs=10,
                                use_pca=False, flat_hand_mean=True, use_face_contour=False, dtype=torch.float64)
    full, betas, expression = random_params(3, 10, 10, seed=0)
    transl = torch.tensor([[0.1, -0.2, 3.0]] * 3, dtype=torch.float64)
    with torch.no_grad():
        ours = model.forward_full(full, betas, expression, transl)
        theirs = reference(betas=betas, expression=expression, transl=transl, **model.split_pose(full))
    torch.testing.assert_close(ours.vertices, theirs.vertices, atol=1e-12, rtol=0)
    torch.testing.assert_close(ours.joints, theirs.joints[:, :55], atol=1e-12, rtol=0)
    names = smplx.joint_names.JOINT_NAMES[:SMPLX_OUTPUT_JOINTS]
    compared = 0
    for index, name in enumerate(WHOLEBODY_NAMES[49:], start=49):
        target = WHOLEBODY_ALIASES.get(name, name).replace("OP LWrist", "left_wrist").replace("OP RWrist",
                                                                                                "right_wrist")
        if not model.provided[index]:
            assert name in WHOLEBODY_PARTS["face"] and (ours.points[:, index] == 0).all()
            continue
        torch.testing.assert_close(ours.points[:, index], theirs.joints[:, names.index(target)], atol=1e-12,
                                   rtol=0)
        compared += 1
    assert compared == NUM_PROVIDED - 49
    # the body points are BodyModel's own (flat hands, closed jaw, no expression there)
    flat = full.clone()
    flat[:, 66:] = 0
    body = model.body
    with torch.no_grad():
        want = body(betas, torch.cat([flat[:, 3:66], torch.zeros(3, 6, dtype=torch.float64)], 1), flat[:, :3]).joints
        got = model.forward_full(flat, betas, torch.zeros_like(expression)).points[:, :49]
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.fixture(scope="module")
def exact_model(tmp_path_factory):
    return WholeBodyModel(load_body_model(_write(tmp_path_factory.mktemp("exact"), True), dtype=torch.float64))


def test_skeleton_points_are_the_models(exact_model):
    skeleton, targets = exact_model.skeleton()
    assert sorted(targets.tolist()) == sorted(np.flatnonzero(exact_model.provided).tolist())
    full, betas, expression = random_params(4, 10, 10, seed=1)
    full[0] = 0.0
    with torch.no_grad():
        want = exact_model.forward_full(full, betas, expression).points[:, targets]
        got = skeleton(full, torch.cat([betas, expression], 1)).points
    # smplx's Rodrigues adds 1e-8 to every rotation vector
    torch.testing.assert_close(got, want, atol=1e-7, rtol=0)


def test_skeleton_jacobians_equal_autograd_on_hand_jaw_expression_and_vertex_rows(exact_model):
    skeleton, targets = exact_model.skeleton()
    full, betas, expression = random_params(2, 10, 10, seed=2)
    shape = torch.cat([betas, expression], 1)
    # fingertips, landmarks (vertex rows) and finger joints (tree points), with some body joints
    names = ["OP Nose", "left_thumb", "right_pinky", "left_index2", "right_thumb1", "nose1", "lip_bottom",
             "left_eye4"]
    where = {int(t): p for p, t in enumerate(targets.tolist())}
    subset = torch.as_tensor([where[WHOLEBODY_INDEX[n]] for n in names])
    d_pose, d_shape = skeleton.jacobian(skeleton(full, shape, subset))
    want_pose, want_shape = torch.autograd.functional.jacobian(
        lambda p, s: skeleton(p, s, subset).points.sum(0), (full, shape), vectorize=True)
    torch.testing.assert_close(d_pose, want_pose.permute(2, 0, 1, 3), atol=1e-10, rtol=0)
    torch.testing.assert_close(d_shape, want_shape.permute(2, 0, 1, 3), atol=1e-10, rtol=0)
    # they are not vacuous: the fingertip moves with its finger, the lips with the jaw and the expression
    thumb, lip = names.index("left_thumb"), names.index("lip_bottom")
    assert d_pose[:, thumb, :, 75:120].abs().amax() > 1e-3
    assert d_pose[:, lip, :, 66:69].abs().amax() > 1e-3 and d_shape[:, lip, :, 10:].abs().amax() > 1e-4


def test_an_smpl_file_is_refused(tmp_path):
    path = tmp_path / "SMPL_NEUTRAL.npz"
    np.savez(path, **model_files.smpl_arrays())
    with pytest.raises(Exception, match="SMPL-X-layout"):
        WholeBodyModel(load_body_model(path))


def test_pixel_jacobians_through_the_projection(exact_model):
    """The sparse skeleton's pixel Jacobians (formed without the 3D ones) are the 3D ones times the projection's."""
    from core.camera import projection_jacobian
    skeleton, _ = exact_model.skeleton()
    full, betas, expression = random_params(2, 10, 10, seed=3)
    shape = torch.cat([betas, expression], 1)
    state = skeleton(full, shape)
    dproj = projection_jacobian(state.points + torch.tensor([0.1, 0.2, 4.0], dtype=torch.float64),
                                torch.full((2, 2), 1000.0, dtype=torch.float64))
    d_pose, d_shape = skeleton.jacobian(state)
    p_pose, p_shape = skeleton.jacobian(state, dproj)
    torch.testing.assert_close(p_pose, dproj @ d_pose, atol=1e-9, rtol=0)
    torch.testing.assert_close(p_shape, dproj @ d_shape, atol=1e-9, rtol=0)
