import model_files
import numpy as np
import pytest
import torch
from smplx.lbs import batch_rodrigues

from core.errors import ModelFileError
from core.joints import JOINT_INDEX, SMPL_JOINT_INDEX
from fitloop.cli import main as fitloop
from fitting.body_model import SPIN_EXTRA_NAMES, load_body_model


@pytest.fixture(scope="module")
def smpl_pkl(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "SMPL_NEUTRAL.pkl"
    model_files.write_chumpy_pickle(path, model_files.smpl_arrays())
    return path


def _random_params(batch, seed=0, num_betas=10):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, num_betas, generator=gen), 0.3 * torch.randn(batch, 69, generator=gen),
            0.3 * torch.randn(batch, 3, generator=gen))


def test_chumpy_pkl_model_poses_like_its_npz_conversion(smpl_pkl, tmp_path, capsys):
    out = tmp_path / "SMPL_NEUTRAL.npz"
    assert fitloop(["model", "convert", str(smpl_pkl), str(out)]) == 0
    assert "smpl" in capsys.readouterr().out
    with np.load(out, allow_pickle=False) as npz:  # the copy needs neither chumpy nor pickle
        assert {"v_template", "shapedirs", "posedirs", "J_regressor", "weights", "f"} <= set(npz.files)
    from_pkl, from_npz = load_body_model(smpl_pkl), load_body_model(out)
    params = _random_params(3)
    a, b = from_pkl(*params), from_npz(*params)
    torch.testing.assert_close(a.vertices, b.vertices)
    torch.testing.assert_close(a.joints, b.joints)


def test_smpl_canonical_joints_follow_spin_mapping(smpl_pkl):
    model = load_body_model(smpl_pkl)
    out = model(*_random_params(2))
    assert out.vertices.shape == (2, 6890, 3) and out.joints.shape == (2, 49, 3)
    # OpenPose hips are the kinematic hips; the nose is SMPL vertex 332 (SPIN / smplx vertex ids)
    torch.testing.assert_close(out.joints[:, JOINT_INDEX["OP RHip"]], out.kinematic_joints[:, SMPL_JOINT_INDEX["right_hip"]])
    torch.testing.assert_close(out.joints[:, JOINT_INDEX["OP Nose"]], out.vertices[:, 332])
    torch.testing.assert_close(out.joints[:, JOINT_INDEX["Nose"]], out.vertices[:, 332])
    assert model.joint_source["Top of Head (LSP)"].startswith("approximate")


def test_spin_extra_regressor_is_used_when_supplied(smpl_pkl, tmp_path):
    extra = np.zeros((9, 6890))
    extra[np.arange(9), np.arange(9) * 100] = 1.0  # row k picks vertex 100 k
    path = tmp_path / "J_regressor_extra.npy"
    np.save(path, extra)
    model = load_body_model(smpl_pkl, joint_regressor_extra=path)
    out = model(*_random_params(2))
    for k, name in enumerate(SPIN_EXTRA_NAMES):
        torch.testing.assert_close(out.joints[:, JOINT_INDEX[name]], out.vertices[:, 100 * k])
        assert model.joint_source[name] == "J_regressor_extra"
    np.save(path, extra[:, :100])
    with pytest.raises(ModelFileError, match=r"expected \(9, 6890\)"):
        load_body_model(smpl_pkl, joint_regressor_extra=path)
    # the open model regresses these joints itself: the file would be ignored, so it is refused (it was ignored)
    with pytest.raises(ModelFileError, match="the open model has its own regressors .* leave it out"):
        load_body_model("open-small", joint_regressor_extra=path)


def test_any_batch_size_gives_the_same_bodies(smpl_pkl):
    model = load_body_model(smpl_pkl)
    betas, pose, orient = _random_params(5)
    full = model(betas, pose, orient)
    single = model(betas[3:4], pose[3:4], orient[3:4])
    torch.testing.assert_close(single.joints[0], full.joints[3])


def test_rotation_matrices_equal_axis_angle(smpl_pkl):
    model = load_body_model(smpl_pkl)
    betas, pose, orient = _random_params(2)
    aa = model(betas, pose, orient)
    rot = model(betas, batch_rodrigues(pose.reshape(-1, 3)).reshape(2, 23, 3, 3),
                batch_rodrigues(orient).reshape(2, 1, 3, 3), pose2rot=False)
    torch.testing.assert_close(aa.joints, rot.joints, atol=1e-5, rtol=1e-5)


def test_translation_moves_every_joint(smpl_pkl):
    model = load_body_model(smpl_pkl)
    betas, pose, orient = _random_params(2)
    shift = torch.tensor([[0.1, -0.2, 3.0], [1.0, 0.0, 0.5]])
    torch.testing.assert_close(model(betas, pose, orient, shift).joints,
                               model(betas, pose, orient).joints + shift[:, None])


@pytest.mark.parametrize("family, make", [("smplh", model_files.smplh_arrays), ("smplx", model_files.smplx_arrays)])
@pytest.mark.parametrize("ext", ["npz", "pkl"])
def test_smplh_and_smplx_files_load(tmp_path, family, make, ext):
    arrays = make()
    path = tmp_path / f"{family.upper()}_NEUTRAL.{ext}"
    if ext == "npz":
        np.savez(path, **arrays)
    else:
        model_files.write_chumpy_pickle(path, arrays)
    model = load_body_model(path)
    assert model.family == family
    out = model(*_random_params(4))
    assert out.joints.shape == (4, 49, 3) and out.kinematic_joints.shape == (4, 24, 3)
    assert torch.isfinite(out.vertices).all()
    # the body joints 0-21 are the layer's own joints: the left wrist moves with the left-elbow rotation
    betas, pose, orient = _random_params(1)
    bent = pose.clone()
    bent[0, 3 * (SMPL_JOINT_INDEX["left_elbow"] - 1) + 1] += 1.0
    before, after = model(betas, pose, orient), model(betas, bent, orient)
    wrist = SMPL_JOINT_INDEX["left_wrist"]
    assert (after.kinematic_joints[0, wrist] - before.kinematic_joints[0, wrist]).norm() > 1e-3


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(ModelFileError, match="no such body-model file"):
        load_body_model(tmp_path / "SMPL_MALE.pkl")
    np.savez(tmp_path / "not_a_model.npz", a=np.zeros(3))
    with pytest.raises(ModelFileError, match="not an SMPL-family model, missing"):
        load_body_model(tmp_path / "not_a_model.npz")
    (tmp_path / "model.obj").write_text("v 0 0 0\n")
    with pytest.raises(ModelFileError, match="it is text, where an SMPL-family model is a pickle"):
        load_body_model(tmp_path / "model.obj")


def test_the_kinematic_tree_stays_on_the_host_wherever_the_model_moves(smpl_pkl):
    """smplx indexes a list with `parents` entries once per joint: on a GPU each would be a host sync
    (`fitting.body_model.keep_tree_on_host`). Moved to another device ("meta" here, as "cuda" there) the tree stays
    a CPU tensor and is no buffer of the layer, the rest moves."""
    body = load_body_model(smpl_pkl)
    tree = body.layer.parents.clone()
    assert "parents" not in dict(body.layer.named_buffers())
    body.to("meta")
    assert body.layer.v_template.device.type == "meta"
    assert body.layer.parents.device.type == "cpu" and torch.equal(body.layer.parents, tree)


@pytest.mark.gpu
def test_forward_on_cuda_matches_cpu(smpl_pkl):
    cpu = load_body_model(smpl_pkl)
    gpu = load_body_model(smpl_pkl, device="cuda")
    params = _random_params(64)
    torch.testing.assert_close(gpu(*(p.cuda() for p in params)).joints.cpu(), cpu(*params).joints,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family, make", [("smplh", model_files.smplh_arrays), ("smplx", model_files.smplx_arrays)])
def test_smplh_and_smplx_pose_from_rotation_matrices_as_from_axis_angle(tmp_path, family, make):
    """What a network regressing rotations gives (SPIN's trainer): smplx's own SMPLH/SMPLX forward cannot take
    matrices, so BodyModel poses them itself; the same bodies as from axis-angle, translation included."""
    path = tmp_path / f"{family.upper()}_NEUTRAL.npz"
    arrays = make()
    arrays["posedirs"] = np.random.default_rng(1).normal(0, 1e-3, arrays["posedirs"].shape)  # correctives count
    np.savez(path, **arrays)
    model = load_body_model(path)
    betas, pose, orient = _random_params(2)
    shift = torch.tensor([[0.1, -0.2, 3.0], [1.0, 0.0, 0.5]])
    aa = model(betas, pose, orient, shift)
    rot = model(betas, batch_rodrigues(pose.reshape(-1, 3)).reshape(2, 23, 3, 3),
                batch_rodrigues(orient).reshape(2, 1, 3, 3), shift, pose2rot=False)
    torch.testing.assert_close(aa.vertices, rot.vertices, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aa.joints, rot.joints, atol=1e-5, rtol=1e-5)
