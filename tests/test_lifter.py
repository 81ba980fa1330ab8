"""The keypoint-to-pose lifter (`fitting.lifter`) and SMPLify's lifted start of fits without an estimate."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ModelFileError
from core.joints import J24_NAMES, NUM_JOINTS, indices
from core.metrics import pa_mpjpe
from fitting.body_model import load_body_model
from fitting.lifter import DEFAULT_LIFTER, PoseLifter, lifter_input, load_pose_lifter, save_pose_lifter
from fitting.priors import DEFAULT_PRIOR, MaxMixturePrior
from fitting.skeleton import compose_axis_angle, rodrigues
from fitting.smplify import SMPLify, SMPLifyConfig, mean_pose_start

CMU = Path(__file__).resolve().parents[2] / "shared" / "mocap" / "cmu"
CROP_FOCAL, CROP_CENTER = 5000.0, 112.0   # SPIN's crop camera (px)


def test_the_input_forgets_where_and_how_big_the_person_is():
    """Translating and scaling the keypoints (another crop, image or pixel unit) leaves the input unchanged;
    unseen joints are zeros whatever their coordinates; an example with nothing seen is all zeros."""
    gen = torch.Generator().manual_seed(0)
    kp = torch.rand(4, NUM_JOINTS, 2, generator=gen) * 200
    seen = torch.rand(4, NUM_JOINTS, generator=gen) > 0.3
    seen[3] = False
    moved = kp * 3.7 + torch.tensor([-50.0, 910.0])
    moved[~seen] = 1e6                                                      # junk where unseen
    a, b = lifter_input(kp, seen), lifter_input(moved, seen)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a[~seen] == 0).all() and (a[3] == 0).all()
    assert a[:3, :, :2].abs().max() <= 0.5 + 1e-6                          # centred on the box, its side 1


def test_a_lifter_file_round_trips_and_a_foreign_one_is_refused(tmp_path):
    torch.manual_seed(0)
    model = PoseLifter(hidden=16, blocks=1).eval()
    save_pose_lifter(model, {"note": "test"}, tmp_path / "l.npz")
    loaded = load_pose_lifter(tmp_path / "l.npz")
    x = lifter_input(torch.rand(3, NUM_JOINTS, 2), torch.ones(3, NUM_JOINTS))
    torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ModelFileError, match="not a fitloop pose lifter"):
        load_pose_lifter(DEFAULT_PRIOR)                                    # a pose prior, not a lifter
    np.savez(tmp_path / "cut.npz", metadata=np.array('{"format": "fitloop-pose-lifter", "hidden": 16, "blocks": 1}'))
    with pytest.raises(ModelFileError, match="wrong shape"):
        load_pose_lifter(tmp_path / "cut.npz")


def _people(count: int, seed: int):
    """People posed by the shipped prior's samples at any heading, seen by SPIN's crop camera (the bench's
    synthetic source's kind of pose: no CMU frame), their 24 dataset keypoints in px and their true joints."""
    from pipelines.synthetic.poses import PriorPoses

    body = load_body_model("open")
    rng = np.random.default_rng(seed)
    body_pose = torch.as_tensor(PriorPoses(DEFAULT_PRIOR).sample(count, rng)[:, 3:], dtype=torch.float32)
    heading = torch.as_tensor(rng.uniform(-math.pi, math.pi, count), dtype=torch.float32)
    turn = torch.stack([torch.zeros(count), heading, torch.zeros(count)], 1)         # about the body's vertical
    flip = torch.tensor([[math.pi, 0.0, 0.0]]).expand(count, 3)                   # model's Y up -> camera's y down
    orient = compose_axis_angle(flip, turn)
    pose = torch.cat([orient, body_pose], 1)
    betas = torch.as_tensor(rng.normal(size=(count, body.num_betas)), dtype=torch.float32)
    with torch.no_grad():
        joints = body(betas, pose[:, 3:], pose[:, :3]).joints
    cam = joints + torch.tensor([0.0, 0.0, 40.0])                          # ~ SPIN's crop: 5000 px at ~40 m
    kp = torch.zeros(count, NUM_JOINTS, 3)
    kp[..., :2] = CROP_FOCAL * cam[..., :2] / cam[..., 2:] + CROP_CENTER
    kp[:, list(indices(J24_NAMES)), 2] = 1.0
    return body, pose, betas, joints, kp


def test_the_shipped_lifter_starts_near_people_it_never_saw():
    """On prior-sampled people (no CMU frame) from their 24 dataset keypoints, the lifted start's PA-MPJPE is a
    fraction of the mean pose's and its heading mostly right: a lifter with the wrong axes, joint order or input
    normalisation would start no nearer than the mean pose."""
    assert DEFAULT_LIFTER.is_file(), "fitting/data/pose_lifter_open.npz is committed; retrain: fitloop prior train --lifter"
    body, pose, betas, joints, kp = _people(64, seed=1)
    lifter = load_pose_lifter()
    lifted = lifter.lift(kp, kp[..., 2] > 0)
    zero = torch.zeros_like(betas)
    with torch.no_grad():
        start = body(zero, lifted[:, 3:], lifted[:, :3]).joints
        mean = body(zero, torch.zeros(64, 69), pose.new_tensor([[math.pi, 0, 0]]).expand(64, 3)).joints
    j24 = list(indices(J24_NAMES))[:14]
    lifted_pa, mean_pa = (1000 * pa_mpjpe(j[:, j24], joints[:, j24]).mean() for j in (start, mean))
    assert lifted_pa < 0.6 * mean_pa, (lifted_pa, mean_pa)
    turn = rodrigues(lifted[:, :3]).transpose(-1, -2) @ rodrigues(pose[:, :3])
    angle = torch.arccos(((turn.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))
    assert (angle < math.pi / 2).float().mean() > 0.85, angle


def test_smplify_lifts_mean_starts_and_keeps_spins_on_request():
    """start="mean" in the fast mode fits from the lifted start (extras say so) under the short schedule, at its
    own heading alone (no candidates compared); ``lift_mean_start=False`` is the mean pose with every heading;
    the lifted one fits these people better (61 against 70 mm when written) in fewer stage-2 iterations."""
    body, _, _, joints, kp = _people(24, seed=2)
    prior = MaxMixturePrior.from_file(DEFAULT_PRIOR)
    p0, b0, t0 = mean_pose_start(body, kp)
    center = torch.full((24, 2), CROP_CENTER)
    j24 = list(indices(J24_NAMES))[:14]
    errors, iterations = {}, {}
    for lift in (True, False):
        fit = SMPLify(body, prior, SMPLifyConfig(lift_mean_start=lift))(kp, p0, b0, t0, center, start="mean")
        assert bool((fit.extras["lifted_start"] == lift).all())
        tried = torch.isfinite(fit.extras["candidate_objectives"]).sum(1)
        assert bool((tried == 0).all()) if lift else bool((tried >= 2).all())
        with torch.no_grad():
            fitted = body(fit.betas, fit.pose[:, 3:], fit.pose[:, :3]).joints
        errors[lift] = 1000 * pa_mpjpe(fitted[:, j24], joints[:, j24]).mean()
        iterations[lift] = fit.extras["body_iterations"].float().mean()
    assert errors[True] < errors[False] < 80, errors
    assert iterations[True] < 0.75 * iterations[False], iterations


@pytest.mark.skipif(not CMU.is_dir(), reason=f"{CMU} is absent: the CMU clips live in ../shared")
def test_prior_train_lifter_from_the_command_line(tmp_path, capsys):
    """`fitloop prior train --lifter` on two clips writes a lifter that loads, with the poses' provenance."""
    from fitloop.cli import main

    clips = tmp_path / "clips"
    (clips / "mb").mkdir(parents=True)
    for rel in ("mb/09_01.bvh", "mb/09_12.bvh"):
        (clips / rel).symlink_to(CMU / rel)
    (clips / "CLIPS.tsv").write_text("file\tcategory\nmb/09_01.bvh\trun\nmb/09_12.bvh\twalk\n")
    out = tmp_path / "lifter.npz"
    assert main(["prior", "train", "--lifter", "--bvh", str(clips), "--out", str(out), "--steps", "3",
                 "--hold-out", "none"]) == 0
    assert "lifter written to" in capsys.readouterr().out
    assert load_pose_lifter(out).hidden == 512
    assert main(["prior", "info", str(out)]) == 0
    assert "keypoint-to-pose lifter" in capsys.readouterr().out
    import json
    meta = json.loads(str(np.load(out)["metadata"]))
    assert meta["poses"]["subjects_used"] == [9] and meta["train_config"]["steps"] == 3


FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


@pytest.mark.skipif(not (FIXTURES / "lsp").is_dir() or not (FIXTURES / "mpii").is_dir(),
                    reason=f"the LSP and MPII fixtures are not at {FIXTURES}")
def test_on_real_keypoints_the_lifted_start_fits_as_well_in_fewer_iterations():
    """Real annotated people (the first 256 of LSP's joints.mat, 256 of MPII's validation h5; no 3D truth, poses
    the lifter never saw) in SPIN's crop of their keypoints' box: fitted from the lifted start and from the mean
    pose, SPIN's objective ends alike (median ratio 1.005 on all 2,000 LSP people, 0.985 on 2,958 MPII ones when
    written), the reprojection no worse, in about half the stage-2 iterations. A lifter that failed off its
    training poses would leave higher objectives or need the iterations back."""
    import h5py
    import scipy.io

    from core.frames import FIT_FRAME_OFFSET, FIT_RES
    from core.joints import to_canonical
    from fitting.priors import SPIN_ANGLE_PRIOR_WEIGHT, SPIN_POSE_PRIOR_WEIGHT, SPIN_SHAPE_PRIOR_WEIGHT
    from pipelines.adapters.base import keypoint_box
    from shards.crop import box_side, box_to_crop, transform_points

    joints = scipy.io.loadmat(str(FIXTURES / "lsp" / "lsp_dataset" / "joints.mat"))["joints"][:, :, :256]
    lsp = np.concatenate([joints[:2].transpose(2, 1, 0) - 1, np.ones((256, 14, 1))], -1)    # MATLAB 1-based
    with h5py.File(FIXTURES / "mpii" / "hourglass_h5" / "valid.h5") as f:
        part = f["part"][:256]
    mpii = np.concatenate([part, (part[..., :1] > 0).astype(float)], -1)                    # (0, 0): absent
    body = load_body_model("open")
    prior = MaxMixturePrior.from_file(DEFAULT_PRIOR)
    arms = {lift: SMPLify(body, prior, SMPLifyConfig(lift_mean_start=lift)) for lift in (True, False)}
    for dataset, people in (("lsp", lsp), ("mpii", mpii)):
        kp = to_canonical(people, dataset)
        for k in kp:                                           # SPIN's 224 px crop of the box x 1.2, fit-frame px
            centre, scale = keypoint_box(k, 1.2)
            k[:, :2] = transform_points(box_to_crop(centre, box_side(scale), FIT_RES), k[:, :2]) + FIT_FRAME_OFFSET
        kp = torch.as_tensor(kp, dtype=torch.float32)
        center = torch.full((len(kp), 2), 112.0)
        start = mean_pose_start(body, kp)
        out = {}
        for lift, fitter in arms.items():
            fit = fitter(kp, *start, center, start="mean")
            objective = (49 * fit.loss + SPIN_POSE_PRIOR_WEIGHT**2 * fit.pose_prior
                         + SPIN_ANGLE_PRIOR_WEIGHT**2 * fit.angle_prior + SPIN_SHAPE_PRIOR_WEIGHT**2 * fit.shape_prior)
            seen = kp[..., 2] > 0
            pixels = (fit.joints + fit.cam_t[:, None])
            pixels = 5000.0 * pixels[..., :2] / pixels[..., 2:] + 112.0
            reprojection = ((pixels - kp[..., :2]).norm(dim=-1) * seen).sum(1) / seen.sum(1)
            out[lift] = objective, reprojection.median(), fit.extras["body_iterations"].float().mean()
        ratio = (out[True][0] / out[False][0]).median()
        assert 0.95 < ratio < 1.05, (dataset, ratio)
        assert out[True][1] < 1.1 * out[False][1], (dataset, out[True][1], out[False][1])
        assert out[True][2] < 0.7 * out[False][2], (dataset, out[True][2], out[False][2])
