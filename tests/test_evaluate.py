"""The one fit-vs-truth evaluation (fits.evaluate) and SPIN's Human3.6M regressor row order."""
import numpy as np
import pytest
import torch

from core.joints import EVAL_J14, H36M_JOINTS, JOINT_INDEX, SMPL_JOINT_INDEX, flip_pose, indices
from core.metrics import mpjpe
from core.spin import SPIN_H36M_REGRESSOR_ROWS, SPIN_H36M_TO_J17
from fits.evaluate import FitsGroundTruth, body_eval_joints, evaluate_fits, posed_eval_joints
from fits.schema import FitProvenance, fits_batch
from fits.table import FitsTable
from fitting.body_model import load_body_model

# SPIN's constants.py, as published (SPIN_REFERENCE §2.3-2.4): H36M_TO_J17 picks the rows of J_regressor_h36m.npy
# for the J17 joints, whose names are J24_TO_J17 of the J24 names.
SPIN_H36M_TO_J17_PUBLISHED = [6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10, 0, 7, 9]
SPIN_J17_NAMES = ["Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle", "Right Wrist",
                  "Right Elbow", "Right Shoulder", "Left Shoulder", "Left Elbow", "Left Wrist", "Neck (LSP)",
                  "Head (H36M)", "Pelvis (MPII)", "Spine (H36M)", "Jaw (H36M)"]


@pytest.fixture(scope="module")
def body():
    return load_body_model("open-small")


def test_spins_regressor_rows_are_named_as_spin_maps_them():
    assert list(SPIN_H36M_TO_J17) == SPIN_H36M_TO_J17_PUBLISHED
    for row, name in zip(SPIN_H36M_TO_J17_PUBLISHED, SPIN_J17_NAMES):
        assert SPIN_H36M_REGRESSOR_ROWS[row] == name
    # the left leg comes first in SPIN's file, the right leg first in fitloop's named order
    assert SPIN_H36M_REGRESSOR_ROWS[1:7] == ("Left Hip", "Left Knee", "Left Ankle", "Right Hip", "Right Knee",
                                             "Right Ankle")
    assert H36M_JOINTS[1:7] == ("Right Hip", "Right Knee", "Right Ankle", "Left Hip", "Left Knee", "Left Ankle")
    assert sorted(SPIN_H36M_REGRESSOR_ROWS) == sorted(H36M_JOINTS)


def _asymmetric_bodies(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Upright bodies facing the camera with the right leg raised and bent, the left straight; random betas."""
    gen = torch.Generator().manual_seed(0)
    pose = 0.05 * torch.randn(batch, 72, generator=gen)
    pose[:, :3] = torch.tensor([torch.pi, 0.0, 0.0])
    pose[:, 3 * SMPL_JOINT_INDEX["right_hip"]] = -1.2          # thigh forward
    pose[:, 3 * SMPL_JOINT_INDEX["right_knee"]] = 1.6          # shin back
    return pose, torch.randn(batch, 10, generator=gen)


def _h36m_truth(body, pose, betas) -> torch.Tensor:
    """The bodies' Human3.6M joints (from ``body``'s own regressor) in their canonical slots (B, 49, 4), as the
    Human3.6M adapter stores a dataset's 3D joints; the other slots unannotated."""
    with torch.no_grad():
        out = body(betas, pose[:, 3:], pose[:, :3])
    joints = torch.zeros(len(pose), 49, 4)
    joints[:, indices(H36M_JOINTS), :3] = body.h36m_joints(out.vertices)
    joints[:, indices(H36M_JOINTS), 3] = 1.0
    return joints


def test_a_regressor_in_spins_row_order_evaluates_a_mirrored_body_as_mirrored(body, tmp_path):
    # SPIN's J_regressor_h36m.npy for this mesh: the open model's own regressor (H36M_JOINTS order) laid out in
    # SPIN's row order, so each row of the file is a known joint.
    own = body.h36m_regressor.double().numpy()
    path = tmp_path / "J_regressor_h36m.npy"
    np.save(path, np.stack([own[H36M_JOINTS.index(name)] for name in SPIN_H36M_REGRESSOR_ROWS]))
    spin = load_body_model("open-small", h36m_regressor=path)
    np.testing.assert_array_equal(spin.h36m_regressor.numpy(), body.h36m_regressor.numpy())

    pose, betas = _asymmetric_bodies()
    mirrored = torch.as_tensor(flip_pose(pose.numpy()))
    truth = FitsGroundTruth.from_joints(["a"] * 3 + ["m"] * 3, ["h36m"] * 6,
                                        torch.cat([_h36m_truth(body, pose, betas), _h36m_truth(body, mirrored, betas)]))
    pred = posed_eval_joints(spin, torch.cat([pose, mirrored]), torch.cat([betas, betas]))
    # each body is its own truth, exactly; its mirror image is not (left and right are not swapped)
    assert mpjpe(pred, truth.joints).max() < 1e-5                                  # m
    assert mpjpe(pred, truth.joints.roll(3, 0)).min() > 0.1    # m, seen 0.14-0.21: the raised leg changed sides
    # turned to face the camera (pi about x): a right knee is at -x, and the raised knee comes towards the camera
    # (-z): the right one in the bodies, the left one in their mirror images
    right, left = pred[:, EVAL_J14.index("Right Knee")], pred[:, EVAL_J14.index("Left Knee")]
    assert (right[:, 0] < -0.05).all() and (left[:, 0] > 0.05).all()
    assert (right[:3, 2] < left[:3, 2] - 0.2).all() and (left[3:, 2] < right[3:, 2] - 0.2).all()   # m, seen 0.28


def test_the_open_models_own_regressor_is_stored_in_named_order(body):
    """fitting/data/open_body*.npz hold h36m_regressor rows in core.joints.H36M_JOINTS order (its limb rows are
    the kinematic joints): no permutation at load, and its right leg is the body's right leg."""
    pose, betas = _asymmetric_bodies()
    with torch.no_grad():
        out = body(betas, pose[:, 3:], pose[:, :3])
    h36m = body.h36m_joints(out.vertices)
    for name in ("Right Knee", "Left Knee", "Right Ankle", "Left Ankle", "Right Wrist", "Left Elbow"):
        kinematic = out.kinematic_joints[:, SMPL_JOINT_INDEX[name.lower().replace(" ", "_")]]
        assert (h36m[:, H36M_JOINTS.index(name)] - kinematic).norm(dim=-1).max() < 0.01, name   # m


def test_spins_regressor_file_is_checked(body, tmp_path):
    from core.errors import ModelFileError

    np.save(tmp_path / "short.npy", np.zeros((17, 100)))
    with pytest.raises(ModelFileError, match=r"shape \(17, 100\), expected .*\(17, \d+\)"):
        load_body_model("open-small", h36m_regressor=tmp_path / "short.npy")
    with pytest.raises(ModelFileError, match="no such Human3.6M regressor file"):
        load_body_model("open-small", h36m_regressor=tmp_path / "missing.npy")


def _table(tmp_path, rows: list[tuple[list[str], torch.Tensor, torch.Tensor, str, float]]) -> FitsTable:
    table = FitsTable.create(tmp_path / "fits")
    for keys, pose, betas, model_id, loss in rows:
        table.append(fits_batch(keys, pose.numpy(), betas.numpy(), FitProvenance("r", model_id, "cfg", "seed"),
                                loss=np.full(len(keys), loss)))
    return table


def test_fits_are_evaluated_per_body_model_and_dataset(body, tmp_path):
    pose, betas = _asymmetric_bodies()
    keys = ["h36m/a", "h36m/b", "lsp/c"]
    truth = FitsGroundTruth.from_bodies(keys, ["h36m", "h36m", "lsp"], pose, betas, body)
    wrong = pose.clone()
    wrong[:, 3 * SMPL_JOINT_INDEX["left_elbow"] + 1] = 1.5               # one forearm bent: the fits' only error
    table = _table(tmp_path, [(keys, wrong, betas, body.model_id, 5.0),
                              (keys, pose, betas, "smpl:00000000000000a2", 1.0)])  # lower loss, but another model's
    result = evaluate_fits(table, body, truth)
    assert {name: r["samples"] for name, r in result.items()} == {"all": 3, "h36m": 2, "lsp": 1}
    per_example = mpjpe(posed_eval_joints(body, wrong, betas), truth.joints)
    assert result["lsp"]["mpjpe_mm"] == pytest.approx(1000 * float(per_example[2]), rel=1e-5)
    assert 15 < result["all"]["mpjpe_mm"] < 30            # seen 20.6 mm: one forearm of the 14 joints
    # the truth's bodies were posed with this model: evaluating another model's fits against them is refused
    with pytest.raises(ValueError, match="build the truth with the fits' body model"):
        evaluate_fits(table, load_body_model("open"), truth)


def test_truth_from_joints_needs_all_fourteen_and_a_pelvis(body):
    pose, betas = _asymmetric_bodies(2)
    with torch.no_grad():
        out = body(betas, pose[:, 3:], pose[:, :3])
    joints = torch.cat([out.joints, torch.ones(2, 49, 1)], -1)
    joints[1, JOINT_INDEX["Left Wrist"], 3] = 0.0
    truth = FitsGroundTruth.from_joints(["lsp/a", "lsp/b"], ["lsp", "lsp"], joints)
    assert truth.keys == ["lsp/a"] and truth.body_model_id is None
    expected = out.joints[0, indices(EVAL_J14)] - out.joints[0, JOINT_INDEX["Pelvis (MPII)"]]
    torch.testing.assert_close(truth.joints[0], expected)
    # no pelvis annotated: the midpoint of the hips
    joints[0, JOINT_INDEX["Pelvis (MPII)"], 3] = 0.0
    hips = out.joints[0, indices(["Right Hip", "Left Hip"])].mean(0)
    torch.testing.assert_close(FitsGroundTruth.from_joints(["lsp/a"], ["lsp"], joints[:1]).joints[0],
                               out.joints[0, indices(EVAL_J14)] - hips)


def test_a_body_model_without_the_regressor_is_evaluated_on_its_canonical_joints(body, tmp_path):
    import model_files

    np.savez(tmp_path / "SMPL_NEUTRAL.npz", **model_files.smpl_arrays())
    smpl = load_body_model(tmp_path / "SMPL_NEUTRAL.npz")
    assert smpl.h36m_regressor is None
    pose, betas = _asymmetric_bodies(2)
    for model, pelvis in ((smpl, None), (body, H36M_JOINTS.index("Pelvis (MPII)"))):
        with torch.no_grad():
            out = model(betas, pose[:, 3:], pose[:, :3])
        if pelvis is None:
            expected = out.joints[:, indices(EVAL_J14)] - out.joints[:, JOINT_INDEX["Pelvis (MPII)"], None]
        else:
            h36m = model.h36m_joints(out.vertices)
            expected = h36m[:, [H36M_JOINTS.index(n) for n in EVAL_J14]] - h36m[:, pelvis, None]
        torch.testing.assert_close(body_eval_joints(model, out.vertices, out.joints), expected)
