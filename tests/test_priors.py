"""Pose, angle and shape priors: SMPLify's gmm_08.pkl format against the formula, fitloop's .npz, sign conventions,
and the EM that trains a prior."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from assets import bvh
from assets.prior_train import (
    MIN_COV_FLOOR_DEG,
    PriorTrainingError,
    cap_walk_share,
    fit_gmm,
    plausible_frames,
    train_prior,
)
from core.errors import ModelFileError, UnsafePickleError
from core.joints import SMPL_JOINT_INDEX
from fitting.priors import (
    ANGLE_PRIOR_INDICES,
    DEFAULT_PRIOR,
    MAX_COVARIANCE_CONDITION,
    GaussianMixture,
    MaxMixturePrior,
    angle_prior,
    gmm_from_mapping,
    load_gmm,
    save_gmm,
    shape_prior,
)


def random_gmm(k: int = 8, d: int = 69, seed: int = 0) -> dict[str, np.ndarray]:
    """A mixture shaped like SMPLify's gmm_08.pkl: SPD covariances with realistic (small) variances."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 0.3, (k, d))
    a = rng.normal(0, 0.05, (k, d, d))
    covars = a @ np.swapaxes(a, 1, 2) + np.stack([np.diag(rng.uniform(0.01, 0.2, d)) for _ in range(k)])
    weights = rng.uniform(0.5, 1.5, k)
    return {"means": means, "covars": covars, "weights": weights / weights.sum()}


def smplifyx_energy(pose: np.ndarray, gmm: dict[str, np.ndarray]) -> np.ndarray:
    """SMPLify-X `merged_log_likelihood`, written out independently in float64 numpy (the reference)."""
    d = gmm["means"].shape[1]
    sqrdets = np.array([np.sqrt(np.linalg.det(c)) for c in gmm["covars"]])
    nll_weights = gmm["weights"] / ((2 * np.pi) ** (d / 2.0) * (sqrdets / sqrdets.min()))
    out = np.empty((len(pose), len(gmm["means"])))
    for k, (mu, cov) in enumerate(zip(gmm["means"], gmm["covars"])):
        diff = pose - mu
        out[:, k] = 0.5 * np.einsum("bi,ij,bj->b", diff, np.linalg.inv(cov), diff) - np.log(nll_weights[k])
    return out.min(axis=1)


def test_gmm08_pickle_matches_the_formula(tmp_path):
    gmm = random_gmm()
    path = tmp_path / "gmm_08.pkl"
    with path.open("wb") as fh:  # what SMPLify ships: a protocol-2 pickle of a dict of arrays
        pickle.dump(gmm, fh, protocol=2)
    pose = np.random.default_rng(1).normal(0, 0.4, (16, 69))
    expected = smplifyx_energy(pose, gmm)
    prior64 = MaxMixturePrior.from_file(path, dtype=torch.float64)
    np.testing.assert_allclose(prior64(torch.as_tensor(pose)).numpy(), expected, rtol=1e-10)
    prior32 = MaxMixturePrior.from_file(path)
    np.testing.assert_allclose(prior32(torch.as_tensor(pose, dtype=torch.float32)).numpy(), expected, rtol=1e-4)
    assert prior64.metadata["format"] == "smplify-pkl"


def test_old_sklearn_gmm_pickle_and_objects(tmp_path):
    gmm = random_gmm(k=3, d=69, seed=2)
    state = {"means_": gmm["means"], "covars_": gmm["covars"], "weights_": gmm["weights"], "n_components": 3}
    # An old sklearn GMM pickles as a class reference plus its __dict__; emulate the bytes without sklearn.
    data = b"\x80\x02csklearn.mixture.gmm\nGMM\nq\x00)\x81q\x01" + pickle.dumps(state, protocol=2)[2:-1] + b"b."
    path = tmp_path / "gmm_sklearn.pkl"
    path.write_bytes(data)
    pose = np.random.default_rng(3).normal(0, 0.4, (4, 69))
    prior = MaxMixturePrior.from_file(path, dtype=torch.float64)
    np.testing.assert_allclose(prior(torch.as_tensor(pose)).numpy(), smplifyx_energy(pose, gmm), rtol=1e-10)

    class Holder:  # an object exposing the attributes directly
        def __init__(self):
            self.means_, self.covars_, self.weights_ = gmm["means"], gmm["covars"], gmm["weights"]

    np.testing.assert_array_equal(gmm_from_mapping(Holder()).means, gmm["means"])


def test_bad_prior_files_are_refused(tmp_path):
    evil = tmp_path / "gmm_evil.pkl"
    evil.write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    with pytest.raises(UnsafePickleError):
        load_gmm(evil)
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps({"mean": np.zeros((8, 69))}, protocol=2))
    with pytest.raises(ModelFileError, match="means/covars/weights"):
        load_gmm(wrong)
    with pytest.raises(ModelFileError, match="no such pose-prior file"):
        load_gmm(tmp_path / "missing.npz")
    # the shipped VAE where a mixture is needed (train --pose-prior): what to give, not a Python function to call
    with pytest.raises(ModelFileError, match="a VAE pose prior, and this needs the Gaussian-mixture prior"):
        load_gmm(Path(DEFAULT_PRIOR).with_name("pose_prior_vae_open.npz"))
    gmm = random_gmm(k=2)
    gmm["covars"][1] = -np.eye(69)
    with pytest.raises(ModelFileError, match="positive definite"):
        gmm_from_mapping(gmm, "neg.pkl")


def test_npz_round_trip_is_exact_and_reproducible(tmp_path):
    raw = random_gmm(k=4)
    gmm = GaussianMixture(raw["means"], raw["covars"], raw["weights"], {"source": "test", "clips": 3})
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    save_gmm(gmm, a)
    save_gmm(gmm, b)
    assert a.read_bytes() == b.read_bytes()  # fixed zip timestamps, sorted members
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]  # no temp file left behind
    back = load_gmm(a)
    for name in ("means", "covars", "weights"):
        np.testing.assert_array_equal(getattr(back, name), raw[name])
    assert back.metadata["clips"] == 3 and back.metadata["format"] == "fitloop-pose-prior"
    with np.load(a, allow_pickle=False) as data:  # loads without pickle
        assert set(data.files) == {"means", "covars", "weights", "metadata"}
    pose = torch.zeros(2, 69, dtype=torch.float64)
    assert torch.equal(MaxMixturePrior(gmm, torch.float64)(pose), MaxMixturePrior(back, torch.float64)(pose))


def test_log_likelihood_is_the_mixture_density():
    raw = random_gmm(k=3, d=4, seed=5)
    prior = MaxMixturePrior(GaussianMixture(raw["means"], raw["covars"], raw["weights"]), torch.float64)
    x = np.random.default_rng(0).normal(0, 0.3, (5, 4))
    dens = sum(w * np.exp(-0.5 * np.einsum("bi,ij,bj->b", x - m, np.linalg.inv(c), x - m))
               / np.sqrt(np.linalg.det(2 * np.pi * c)) for m, c, w in zip(raw["means"], raw["covars"], raw["weights"]))
    np.testing.assert_allclose(prior.log_likelihood(torch.as_tensor(x)).numpy(), np.log(dens), rtol=1e-10)


def test_angle_prior_indices_and_signs_follow_the_geometry():
    assert ANGLE_PRIOR_INDICES == (52, 55, 9, 12)  # SPIN's full-pose 55, 58, 12, 15 minus the 3 of the root
    rest = bvh.STANDARD_TPOSE_JOINTS
    bend = 1.2  # rad
    for joint, axis, child, natural_dir in (("left_elbow", 1, "left_wrist", +1), ("right_elbow", 1, "right_wrist", +1),
                                            ("left_knee", 0, "left_ankle", -1), ("right_knee", 0, "right_ankle", -1)):
        j = SMPL_JOINT_INDEX[joint]
        energies = {}
        for sign in (+1, -1):
            pose = np.zeros((1, 72))
            pose[0, 3 * j + axis] = sign * bend
            joints = bvh.smpl_forward_kinematics(pose, rest)[0]
            forward = np.sign(joints[SMPL_JOINT_INDEX[child], 2] - joints[j, 2])  # +Z is the body's front
            energies["natural" if forward == natural_dir else "hyper"] = \
                angle_prior(torch.as_tensor(pose[:, 3:])).item()
        # elbows bend the forearm forward, knees the shin backward; that way costs less than the straight limb,
        # hyper-extension more (each of the 4 terms is exp(0)² = 1 at rest)
        at_rest = angle_prior(torch.zeros(1, 69, dtype=torch.float64)).item()
        assert at_rest == 4.0
        assert energies["natural"] < at_rest - 0.9 and energies["hyper"] > at_rest + 9.0, (joint, energies)


def test_shape_prior():
    betas = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    assert shape_prior(betas).tolist() == [5.0, 0.0]


def test_em_recovers_a_known_mixture_and_is_deterministic():
    rng = np.random.default_rng(0)
    true_means = np.array([[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0]])
    cov = np.array([[0.3, 0.1, 0.0], [0.1, 0.2, 0.0], [0.0, 0.0, 0.1]])
    x = np.concatenate([rng.multivariate_normal(true_means[0], cov, 3000),
                        rng.multivariate_normal(true_means[1], cov, 1000)])
    w = np.ones(len(x))
    means, covars, weights, info = fit_gmm(x, w, 2, seed=0, reg_covar=1e-6, max_iter=200, tol=1e-8)
    order = np.argsort(means[:, 0])
    np.testing.assert_allclose(means[order], true_means, atol=0.05)
    np.testing.assert_allclose(weights[order], [0.75, 0.25], atol=0.02)
    np.testing.assert_allclose(covars[order][0], cov, atol=0.03)
    assert info["converged"]
    again = fit_gmm(x, w, 2, seed=0, reg_covar=1e-6, max_iter=200, tol=1e-8)
    np.testing.assert_array_equal(again[0], means)
    # sample weights: up-weighting the small cluster 3x balances the mixture
    w2 = np.where(np.arange(len(x)) >= 3000, 3.0, 1.0)
    _, _, weights2, _ = fit_gmm(x, w2, 2, seed=0, reg_covar=1e-6, max_iter=200, tol=1e-8)
    np.testing.assert_allclose(np.sort(weights2), [0.5, 0.5], atol=0.02)


def test_walk_share_cap_and_plausibility_filter():
    weights = np.ones(10)
    walk = np.arange(10) < 5  # half the frames walk
    capped, factor = cap_walk_share(weights, walk, 0.1)
    assert capped[walk].sum() / capped.sum() == pytest.approx(0.1) and factor == pytest.approx(1 / 9)
    assert cap_walk_share(weights, walk, 0.6)[1] == 1.0  # already under the cap: unchanged
    poses = np.zeros((3, 72))
    poses[1, 3 * SMPL_JOINT_INDEX["left_ankle"]] = np.radians(170)  # a foot spun round: a mocap glitch
    poses[2, 3 * SMPL_JOINT_INDEX["left_knee"]] = np.radians(120)  # a deep knee bend: fine
    keep, counts = plausible_frames(poses)
    assert keep.tolist() == [True, False, True] and counts == {"left_ankle": 1}


def test_train_from_amass_files_through_the_cli(tmp_path, capsys):
    from fitloop.cli import main

    rng = np.random.default_rng(0)
    files = []
    for i, frames in enumerate((240, 120)):
        poses = np.zeros((frames, 156))  # SMPL+H layout: body pose in columns 3:66, hands after
        poses[:, 3:72] = rng.normal(0, 0.2, (frames, 69))
        poses[:, :3] = 9.0  # global orientation: ignored
        path = tmp_path / f"clip{i}.npz"
        np.savez(path, poses=poses, mocap_framerate=np.array(120.0), gender=np.array("neutral"))
        files.append(str(path))
    out = tmp_path / "amass_prior.npz"
    assert main(["prior", "train", "--amass", *files, "--out", str(out), "--components", "2", "--no-mirror",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames_used"] == 20 + 10  # 120 fps subsampled to ~10 fps
    gmm = load_gmm(out)
    assert gmm.num_components == 2 and gmm.dim == 69 and gmm.metadata["source"] == ["clip0.npz", "clip1.npz"]
    assert np.abs(gmm.means).max() < 0.5  # fitted on the body pose, not the orientation columns
    assert main(["prior", "info", str(out)]) == 0
    assert "2 components over 69 dims" in capsys.readouterr().out
    assert main(["prior", "train", "--amass", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "b.npz")]) == 1
    assert "missing" in capsys.readouterr().err


def test_an_ill_conditioned_or_indefinite_mixture_is_refused_where_it_is_read(tmp_path):
    """A mixture trained without a covariance floor (`--cov-floor-deg 0`) had eigenvalues down to -9e-18 and passed
    a Cholesky; its energies ranked noise above real poses. Both formats are refused, naming file and component."""
    raw = random_gmm(k=3)
    flat = raw["covars"].copy()
    flat[1] = np.diag(np.r_[np.full(60, 0.05), np.full(9, 1e-12)])    # positive definite, condition 5e10
    npz = tmp_path / "floor0.npz"
    save_gmm(GaussianMixture(raw["means"], flat, raw["weights"]), npz)
    with pytest.raises(ModelFileError, match=r"floor0\.npz: the covariance of component 1 is too ill-conditioned "
                                             r"\(condition number 5e\+10, more than 1e\+05.*retrain the prior"):
        load_gmm(npz)
    with pytest.raises(ModelFileError, match="floor0.npz: the covariance of component 1"):
        MaxMixturePrior.from_file(npz)                      # seeding, fits, training and the benchmark read it so
    flat[1] = np.diag(np.r_[np.full(68, 0.05), -1e-17])
    with pytest.raises(ModelFileError, match=r"g\.pkl: the covariance of component 1 is not positive definite "
                                             r"\(smallest eigenvalue -1e-17\)"):
        gmm_from_mapping({**raw, "covars": flat}, "g.pkl")
    # SMPLify's gmm_08.pkl layout (sklearn's 1e-3 on the diagonal) and the shipped prior load
    assert load_gmm(DEFAULT_PRIOR).num_components == 8
    gmm_from_mapping({**raw, "covars": raw["covars"] + 1e-3 * np.eye(69)}, "gmm_08.pkl")


def test_the_covariance_floor_has_a_minimum_that_keeps_the_shipped_data_well_conditioned():
    """The floor's minimum is chosen from the condition number SMPLify can fit with: the shipped prior's widest
    variance over the minimum floor squared stays well under it."""
    widest = np.linalg.eigvalsh(load_gmm(DEFAULT_PRIOR).covars)[:, -1].max()
    assert widest / np.radians(MIN_COV_FLOOR_DEG) ** 2 < MAX_COVARIANCE_CONDITION / 4
    for floor in (0.0, MIN_COV_FLOOR_DEG / 2, 181.0):
        with pytest.raises(PriorTrainingError, match=f"covariance floor must be from {MIN_COV_FLOOR_DEG:g} to 180"):
            train_prior([Path("unused")], Path("unused.npz"), kind="amass", cov_floor_deg=floor)


def test_amass_poses_far_wider_than_rotations_are_refused_not_written(tmp_path):
    """AMASS files get no plausibility filter: poses in degrees, not radians, with a hinge-like joint (no spread off
    its axis) make covariances no float32 fit can use at the smallest floor."""
    rng = np.random.default_rng(0)
    poses = np.degrees(rng.normal(0, 0.2, (400, 72)))
    for knee in (3 * SMPL_JOINT_INDEX["left_knee"], 3 * SMPL_JOINT_INDEX["right_knee"]):
        poses[:, knee + 1:knee + 3] = rng.normal(0, 1e-4, (400, 2))     # twist and abduction: hinges
    path = tmp_path / "wild.npz"
    np.savez(path, poses=poses)
    with pytest.raises(PriorTrainingError, match=r"component \d is too ill-conditioned .*raise --cov-floor-deg"):
        train_prior([path], tmp_path / "p.npz", kind="amass", components=2, cov_floor_deg=MIN_COV_FLOOR_DEG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wild.npz"]


@pytest.mark.parametrize("width, unused", [(156, "left index finger"), (165, "jaw and left eye")])
def test_amass_smplh_and_smplx_poses_leave_smpls_hand_slots_unobserved(tmp_path, capsys, width, unused):
    """Columns 66:72 of SMPL-H / SMPL-X poses are the {unused}, not SMPL's hand joints: the body's 21 joints are
    read and SMPL's hand slots are unobserved, as for BVH clips (mean 0, 15° independent spread)."""
    from fitloop.cli import main

    rng = np.random.default_rng(0)
    poses = np.zeros((600, width))
    poses[:, 3:66] = rng.normal(0, 0.2, (600, 63))
    poses[:, 66:] = rng.normal(0.8, 0.05, (600, width - 66))     # curled fingers / an open jaw
    np.savez(tmp_path / "clip.npz", poses=poses, mocap_framerate=np.array(60.0))
    out = tmp_path / "p.npz"
    assert main(["prior", "train", "--amass", str(tmp_path / "clip.npz"), "--out", str(out), "--components", "2"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("fitloop: warning: AMASS poses are relative to SMPL's T-pose and were used as they are, "
                          "not converted to the open model's T-pose") and len(err.splitlines()) == 1
    gmm = load_gmm(out)
    hands = slice(3 * (SMPL_JOINT_INDEX["left_hand"] - 1), 3 * SMPL_JOINT_INDEX["right_hand"])   # body pose 63:69
    assert np.array_equal(gmm.means[:, hands], np.zeros((2, 6)))
    np.testing.assert_allclose(gmm.covars[:, hands, hands], np.radians(15.0) ** 2 * np.eye(6)[None].repeat(2, 0))
    assert gmm.metadata["unobserved_joints"] == ["left_hand", "right_hand"]
    assert gmm.metadata["rest_pose"]["converted"] is False and "SMPL" in gmm.metadata["rest_pose"]["source"]
    assert gmm.metadata["layouts"] == {"clip.npz": {156: "SMPL-H", 165: "SMPL-X"}[width]}


def test_amass_smpl_poses_are_read_whole_and_other_widths_are_refused(tmp_path, capsys):
    from fitloop.cli import main

    poses = np.random.default_rng(1).normal(0, 0.2, (300, 72))
    poses[:, 66:72] += 0.5                                          # SMPL's own hand joints: used
    np.savez(tmp_path / "smpl.npz", poses=poses)
    assert main(["prior", "train", "--amass", str(tmp_path / "smpl.npz"), "--out", str(tmp_path / "p.npz"),
                 "--components", "1", "--no-mirror"]) == 0
    np.testing.assert_allclose(load_gmm(tmp_path / "p.npz").means[0, 63:], 0.5, atol=0.05)
    np.savez(tmp_path / "w99.npz", poses=np.zeros((300, 99)))
    capsys.readouterr()
    assert main(["prior", "train", "--amass", str(tmp_path / "w99.npz"), "--out", str(tmp_path / "q.npz")]) == 1
    assert capsys.readouterr().err == (
        f"fitloop: error: {tmp_path / 'w99.npz'}: `poses` has shape (300, 99); expected (F, W) axis-angle with W = 72 "
        f"(SMPL), W = 156 (SMPL-H), W = 165 (SMPL-X); convert other layouts to one of these\n")
