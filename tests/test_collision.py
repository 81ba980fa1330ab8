"""Self-contact: capsule proxies, the interpenetration penalty and its Jacobians, the mesh check, the SMPLify term.

Geometry tests run on the open-small model (1229 vertices, SMPL's tree); tree tests on synthetic SMPL-X files in
the real layout (tests/model_files.py). Poses are SMPL axis-angle: the body faces +Z, Y up, its left is +X; in
the T-pose the right arm points along −X, so a turn of the right shoulder about +Z lowers it.
"""
from __future__ import annotations

import model_files
import numpy as np
import pytest
import torch

from core.errors import ModelFileError
from core.joints import SMPL_JOINT_INDEX, SMPL_JOINT_NAMES, mirror_name
from core.wholebody import SMPLX_JOINT_NAMES
from fitting.body_model import DATA_DIR, load_body_model
from fitting.collision import (
    EXCLUDED_PAIRS,
    MERGED_BELOW,
    SKIP_HOPS,
    body_capsules,
    body_parts,
    collision_penalty,
    collision_residuals,
    dense_ends_jacobian,
    excluded_pairs_mirrored,
    interpenetrates,
    mesh_interpenetration,
    mesh_parts,
    penetration_depths,
    point_triangle_distance,
    segment_closest,
)
from fitting.priors import MaxMixturePrior
from fitting.smplify import SMPLify, SMPLifyConfig

# Poses by joint name (axis-angle, rad). Natural ones: no part of the body enters another.
NATURAL_POSES = {
    "rest": {},
    "a_pose": {"left_shoulder": (0, 0, -1.2), "right_shoulder": (0, 0, 1.2)},
    "arms_down": {"left_shoulder": (0, 0, -1.35), "right_shoulder": (0, 0, 1.35)},
    "walking": {"left_hip": (-0.5, 0, 0), "right_hip": (0.4, 0, 0), "left_knee": (0.3, 0, 0),
                "right_knee": (0.6, 0, 0), "left_shoulder": (0.3, 0, -1.3), "right_shoulder": (-0.3, 0, 1.3)},
    "sitting": {"left_hip": (-1.5, 0, 0), "right_hip": (-1.5, 0, 0), "left_knee": (1.5, 0, 0),
                "right_knee": (1.5, 0, 0)},
}
# The right hand driven through the belly (shoulder lowered and turned in, elbow fully bent) ...
HAND_IN_TORSO = {"right_shoulder": (1.0, 0, 1.3), "right_elbow": (0, 2.3, 0)}
# ... and the legs crossed through each other (both hips adducted 0.25 rad, the left leg a little back: the shins
# cross mid-way; not symmetric, where the shins' axes would meet and the distance has no derivative).
LEGS_CROSSED = {"left_hip": (0.1, 0, -0.25), "right_hip": (0, 0, 0.25)}


def _pose(*named: dict, dtype=torch.float32) -> torch.Tensor:
    pose = torch.zeros(len(named), 72, dtype=dtype)
    for i, joints in enumerate(named):
        for name, value in joints.items():
            j = SMPL_JOINT_INDEX[name]
            pose[i, 3 * j:3 * j + 3] = torch.tensor(value, dtype=dtype)
    return pose


@pytest.fixture(scope="module")
def body():
    return load_body_model("open-small")


@pytest.fixture(scope="module")
def capsules(body):
    return body_capsules(body)


def _posed(body, pose, betas=None):
    betas = torch.zeros(len(pose), body.num_betas, dtype=pose.dtype) if betas is None else betas
    with torch.no_grad():
        return body(betas, pose[:, 3:], pose[:, :3]).vertices, betas


# --- segment distance -----------------------------------------------------------------------------------------------
def test_segment_closest_points_are_the_nearest_pair():
    """Against a dense search over both segments, for random, parallel, crossing and point-like segments."""
    gen = torch.Generator().manual_seed(0)
    p0, p1, q0, q1 = (torch.randn(64, 3, generator=gen, dtype=torch.float64) for _ in range(4))
    q1[:8] = q0[:8] + 2 * (p1[:8] - p0[:8])             # parallel
    d = q1[8:16] - q0[8:16]                                # crossing at 0.5 along p, 0.3 along q: distance 0
    q0[8:16] = p0[8:16] + 0.5 * (p1[8:16] - p0[8:16]) - 0.3 * d
    q1[8:16] = q0[8:16] + d
    p1[16:20] = p0[16:20]                                  # a point and a segment
    q1[20:24] = q0[20:24]                                  # a segment and a point
    p1[24:28], q1[24:28] = p0[24:28], q0[24:28]            # two points
    s, t = segment_closest(p0, p1, q0, q1)
    assert ((s >= 0) & (s <= 1) & (t >= 0) & (t <= 1)).all()
    got = ((p0 + s[:, None] * (p1 - p0)) - (q0 + t[:, None] * (q1 - q0))).norm(dim=-1)
    grid = torch.linspace(0, 1, 401, dtype=torch.float64)
    a = p0[:, None] + grid[None, :, None] * (p1 - p0)[:, None]   # (N, G, 3)
    b = q0[:, None] + grid[None, :, None] * (q1 - q0)[:, None]
    brute = torch.cdist(a, b).flatten(1).amin(1)
    # the grid's spacing (1/400 of segments of length <= ~6) bounds how far the brute force is above the truth
    assert (got <= brute + 1e-9).all()
    assert (brute - got).max() < 0.02
    assert got[8:16].max() < 1e-9
    torch.testing.assert_close(s[8:16], torch.full((8,), 0.5, dtype=torch.float64))


# --- proxies and pairs ------------------------------------------------------------------------------------------------
def test_parts_merge_hands_and_head_on_every_tree(tmp_path):
    """SMPL's 24 joints and SMPL-X's 55 give the same 22 parts: a hand (wrist + hand, or wrist + 15 finger joints)
    and the head (with jaw and eyes) are one part each."""
    np.savez(tmp_path / "SMPLX_NEUTRAL.npz", **model_files.smplx_arrays())
    smplx = load_body_model(tmp_path / "SMPLX_NEUTRAL.npz")
    smpl = load_body_model("open-small")
    expected = tuple(n for n in SMPL_JOINT_NAMES if n not in ("left_hand", "right_hand"))
    for model, tree in ((smpl, SMPL_JOINT_NAMES), (smplx, SMPLX_JOINT_NAMES)):
        parts = body_parts(model)
        assert sorted(parts.names) == sorted(expected)
        hand = parts.names.index("left_wrist")
        in_hand = {tree[j] for j in np.flatnonzero(parts.joint_part == hand)}
        fingers = {n for n in tree if n.startswith("left_") and n[5:].rstrip("123") in
                   ("thumb", "index", "middle", "ring", "pinky", "hand")}
        assert in_hand == {"left_wrist"} | fingers
        assert len(in_hand) == (2 if model is smpl else 16)
    head = body_parts(smplx).names.index("head")
    assert {SMPLX_JOINT_NAMES[j] for j in np.flatnonzero(body_parts(smplx).joint_part == head)} == {
        "head", "jaw", "left_eye_smplhf", "right_eye_smplhf"}
    assert MERGED_BELOW == ("left_wrist", "right_wrist", "head")
    np.savez(tmp_path / "SMPLH_NEUTRAL.npz", **model_files.smplh_arrays())   # SMPL-X's tree less jaw and eyes
    smplh = body_parts(load_body_model(tmp_path / "SMPLH_NEUTRAL.npz"))
    assert sorted(smplh.names) == sorted(expected) and (smplh.joint_part == smplh.names.index("left_wrist")).sum() == 16
    caps = body_capsules(smplx)
    assert caps.end_rows.shape == (2 * 22, 10475) and caps.radius_dirs.shape == (22, 10)
    torch.testing.assert_close(caps.end_rows.sum(1), torch.ones(44), atol=1e-5, rtol=0)  # affine rows


def test_pairs_skip_near_parts_and_named_contacts(capsules):
    names = capsules.names
    kept = {frozenset((names[a], names[b])) for a, b in capsules.pairs.tolist()}
    # tree neighbours and parts two hops apart are never tested; three hops apart they are
    for near in (("left_elbow", "left_shoulder"), ("left_wrist", "left_shoulder"), ("left_hip", "right_hip"),
                 ("left_shoulder", "spine3"), ("head", "spine3")):
        assert frozenset(near) not in kept
    for far in (("right_wrist", "spine2"), ("left_knee", "right_knee"), ("head", "left_wrist"),
                ("left_wrist", "right_wrist"), ("left_elbow", "spine1")):
        assert frozenset(far) in kept
    for a, b, reason in EXCLUDED_PAIRS:
        assert frozenset((a, b)) not in kept and reason
    assert SKIP_HOPS == 2
    # 22 parts: 231 pairs, less the near ones and the named ones
    assert len(capsules.pairs) == 182


def test_excluded_pairs_are_closed_under_mirroring():
    assert excluded_pairs_mirrored(EXCLUDED_PAIRS)
    assert all(a in SMPL_JOINT_NAMES and b in SMPL_JOINT_NAMES for a, b, _ in EXCLUDED_PAIRS)
    lopsided = EXCLUDED_PAIRS[:1]                      # a left pair without its right one
    assert mirror_name(lopsided[0][0]) != lopsided[0][0]
    assert not excluded_pairs_mirrored(lopsided)


def test_capsules_follow_the_mesh(body, capsules):
    """Each end is an affine blend of its part's rest vertices; radii are a few cm and grow with the body's size."""
    ends = capsules.ends(body.layer.v_template[None])[0]
    parts = body_parts(body)
    for c, name in enumerate(capsules.names):
        cols = torch.nonzero(capsules.end_rows[2 * c:2 * c + 2].abs().sum(0) > 0)[:, 0].numpy()
        assert set(parts.vertex_part[cols]) == {c}
    # ends of a limb lie along its bone: the forearm's from elbow towards wrist
    fore = capsules.names.index("left_elbow")
    axis = ends[2 * fore + 1] - ends[2 * fore]
    assert abs(float(axis[0])) / float(axis.norm()) > 0.99                 # along +-X in the T-pose
    radius = dict(zip(capsules.names, capsules.radius.tolist()))
    assert 0.025 < radius["left_elbow"] < radius["left_shoulder"] < radius["left_hip"] < 0.09
    assert radius["left_wrist"] < radius["left_elbow"]
    # the first shape coefficient of the open model makes a body smaller: every limb's radius shrinks with it
    assert (capsules.radius_dirs[:, 0] < 0).all()


# --- the penalty -----------------------------------------------------------------------------------------------------
def test_no_penetration_in_natural_poses(body, capsules):
    pose = _pose(*NATURAL_POSES.values())
    vertices, betas = _posed(body, pose)
    depth = penetration_depths(capsules.ends(vertices), capsules.radii(betas), capsules.pairs)
    assert (depth == 0).all(), {name: float(d.max()) for name, d in zip(NATURAL_POSES, depth)}


def test_penetration_when_a_hand_enters_the_torso_or_legs_cross(body, capsules):
    pose = _pose(HAND_IN_TORSO, LEGS_CROSSED)
    vertices, betas = _posed(body, pose)
    depth = penetration_depths(capsules.ends(vertices), capsules.radii(betas), capsules.pairs)
    pair = {frozenset((capsules.names[a], capsules.names[b])): i for i, (a, b) in enumerate(capsules.pairs.tolist())}
    hand = depth[0, pair[frozenset(("right_wrist", "spine2"))]]
    shins = depth[1, pair[frozenset(("left_knee", "right_knee"))]]
    # seen: 61 mm and 40 mm on the open-small model
    assert 0.04 < hand < 0.08 and 0.025 < shins < 0.06
    # nothing else of the legs' pose touches the arms, nor the hand's the legs
    assert depth[0, [pair[frozenset(("left_knee", "right_knee"))]]].item() == 0
    assert depth[1, pair[frozenset(("right_wrist", "spine2"))]].item() == 0
    penalty = collision_penalty(capsules.ends(vertices), capsules.radii(betas), capsules.pairs)
    torch.testing.assert_close(penalty, depth.square().sum(-1))


def _penetrating_ends(body, capsules, dtype=torch.float64):
    pose = _pose(HAND_IN_TORSO, LEGS_CROSSED, dtype=dtype)
    vertices, betas = _posed(body.to(dtype), pose)
    body.to(torch.float32)
    rows = capsules.to(dtype=dtype)
    return rows.ends(vertices), rows.radii(betas), rows


def test_penalty_gradient_matches_finite_differences(body, capsules):
    ends, radii, caps = _penetrating_ends(body, capsules)
    ends.requires_grad_(True)
    collision_penalty(ends, radii, caps.pairs).sum().backward()
    gen = torch.Generator().manual_seed(3)
    step = 1e-6
    for _ in range(20):
        direction = torch.randn(ends.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            up = collision_penalty(ends + step * direction, radii, caps.pairs).sum()
            down = collision_penalty(ends - step * direction, radii, caps.pairs).sum()
        numeric = (up - down) / (2 * step)
        assert abs(float(numeric - (ends.grad * direction).sum())) < 1e-7 * max(1.0, abs(float(numeric)))
    assert float(ends.grad.abs().max()) > 1e-3                          # the penalty does depend on the ends


def test_closed_form_jacobian_matches_autograd(body, capsules):
    ends, radii, caps = _penetrating_ends(body, capsules)
    depth, d_ends, d_radii = collision_residuals(ends, radii, caps.pairs)
    torch.testing.assert_close(depth, penetration_depths(ends, radii, caps.pairs))
    want_ends, want_radii = torch.autograd.functional.jacobian(
        lambda e, r: penetration_depths(e, r, caps.pairs).sum(0), (ends, radii), vectorize=True)
    d_ends = dense_ends_jacobian(d_ends, caps.pairs, ends.shape[1])
    torch.testing.assert_close(d_ends, want_ends.permute(1, 0, 2, 3), atol=1e-12, rtol=0)
    dense_radii = torch.zeros_like(want_radii.permute(1, 0, 2))
    dense_radii[:, torch.arange(len(caps.pairs))[:, None], caps.pairs] = d_radii
    torch.testing.assert_close(dense_radii, want_radii.permute(1, 0, 2), atol=1e-12, rtol=0)
    assert int((depth > 0).sum()) >= 2 and float(d_ends.abs().max()) > 0.5


def test_smplify_chained_jacobian_matches_autograd():
    """SMPLify's term: depths of the skeleton-evaluated segment ends; its Jacobian w.r.t. [pose, betas] (closed form
    chained with the skeleton's, on the overlapping pairs only) against autograd, float64."""
    body = load_body_model("open-small", dtype=torch.float64)
    prior = MaxMixturePrior.from_file(DATA_DIR / "pose_prior_open.npz")
    fitter = SMPLify(body, prior, SMPLifyConfig(collision_weight=1.0))
    caps = fitter.capsules
    pose = _pose(HAND_IN_TORSO, LEGS_CROSSED, {}, dtype=torch.float64)
    pose[:, 3:] += 0.02
    betas = torch.linspace(-1, 1, 3 * body.num_betas, dtype=torch.float64).reshape(3, -1)
    ends = fitter._proxy_ends(pose, betas)
    with torch.no_grad():   # the skeleton's ends are the mesh's: exact for a model without pose correctives
        torch.testing.assert_close(ends, caps.ends(body(betas, pose[:, 3:], pose[:, :3]).vertices), atol=1e-7, rtol=0)
    full = penetration_depths(ends, caps.radii(betas), caps.pairs)
    depth, got = fitter._collision(pose, betas, ends)
    assert depth.shape[1] == int((full > 0).sum(1).max()) >= 1
    torch.testing.assert_close(depth.sum(1), full.sum(1))              # every overlapping pair is in
    assert (depth[2] == 0).all() and (got[2] == 0).all()               # the rest pose: nothing overlaps

    def depths(p, b):
        return penetration_depths(fitter._proxy_ends(p, b), caps.radii(b), caps.pairs).sum(0)
    want_pose, want_betas = torch.autograd.functional.jacobian(depths, (pose, betas), vectorize=True)
    want = torch.cat([want_pose, want_betas], -1).permute(1, 0, 2)     # (B, P, 72 + NB)
    top = full.topk(depth.shape[1], 1).indices                          # the pairs SMPLify keeps, deepest first
    torch.testing.assert_close(got, want[torch.arange(3)[:, None], top], atol=1e-10, rtol=0)
    # the pairs left out have no derivative at all
    assert float(want.abs().sum() - want[torch.arange(3)[:, None], top].abs().sum()) < 1e-12
    assert float(got.abs().max()) > 0.01
    # the static rows (a GPU's default: every pair, no host sync) are autograd's Jacobian whole
    fitter.static_collision = True
    depth, got = fitter._collision(pose, betas, ends)
    torch.testing.assert_close(depth, full)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


# --- the mesh check ---------------------------------------------------------------------------------------------------
def test_mesh_check_flags_interpenetration_and_not_natural_poses(body):
    names, labels, ignore = mesh_parts(body)
    assert len(names) == 14 and ignore[names.index("pelvis"), names.index("left_hip")]
    assert not ignore[names.index("pelvis"), names.index("left_wrist")]
    natural, _ = _posed(body, _pose(*NATURAL_POSES.values()))
    bad, _ = _posed(body, _pose(HAND_IN_TORSO, LEGS_CROSSED))
    assert not interpenetrates(natural, body.faces, labels, ignore).any()
    contact = mesh_interpenetration(bad, body.faces, labels, ignore)
    assert contact.inside.all()
    hand, pelvis = names.index("right_wrist"), names.index("pelvis")
    shin_l, shin_r = names.index("left_knee"), names.index("right_knee")
    assert contact.parts[0, hand, pelvis] > 0 or contact.parts[0, pelvis, hand] > 0
    assert contact.parts[1, shin_l, shin_r] > 0 and contact.parts[1, shin_r, shin_l] > 0
    assert contact.parts[0, shin_l, shin_r] == 0
    # seen: 51 mm and 43 mm deep
    assert (0.03 < contact.depth).all() and (contact.depth < 0.09).all()
    assert (contact.vertices == contact.parts.sum((1, 2))).all()


def test_mesh_check_refuses_an_open_mesh(body):
    names, labels, ignore = mesh_parts(body)
    vertices, _ = _posed(body, _pose({}))
    with pytest.raises(ModelFileError, match="not closed"):
        mesh_interpenetration(vertices, body.faces[: len(body.faces) // 3], labels, ignore)


# --- SMPLify's optional term ----------------------------------------------------------------------------------------
def test_smplify_term_pulls_a_penetrating_fit_out(body, capsules):
    """Exact keypoints of a hand in the torso and of crossed legs, fitted from the truth held near its start (a
    fixed near-start weight of 100 px/rad): without the term the fits stay in (seen: 64 and 40 mm of
    penetration), with it they leave (0.4 and 0.07 mm) while their joints still reproject onto the keypoints."""
    prior = MaxMixturePrior.from_file(DATA_DIR / "pose_prior_open.npz")
    pose = _pose(HAND_IN_TORSO, LEGS_CROSSED)
    pose[:, 0] = torch.pi                                      # facing the camera
    betas = torch.zeros(2, body.num_betas)
    cam_t = torch.tensor([[0.0, 0.2, 50.0]]).repeat(2, 1)
    with torch.no_grad():
        joints = body(betas, pose[:, 3:], pose[:, :3]).joints + cam_t[:, None]
    center = torch.full((2, 2), 112.0)
    kp = torch.cat([5000 * joints[..., :2] / joints[..., 2:] + center[:, None], torch.ones(2, 49, 1)], -1)
    args = (kp, pose, betas, cam_t, center)

    def depth_mm(fit):  # the penalty as one depth: sqrt(sum of depth²)
        vertices, _ = _posed(body, fit.pose, fit.betas)
        return 1000 * collision_penalty(capsules.ends(vertices), capsules.radii(fit.betas), capsules.pairs).sqrt()

    plain = SMPLify(body, prior, SMPLifyConfig(init_weight=100.0))(*args, start="estimate")
    fitter = SMPLify(body, prior, SMPLifyConfig(init_weight=100.0, collision_weight=3000.0))
    fit = fitter(*args, start="estimate")
    assert (depth_mm(plain) > 30).all() and (depth_mm(fit) < 2).all()
    assert (fit.loss < 1.0).all()                               # SPIN's per-joint loss, px²: seen 0.43, 0.07
    torch.testing.assert_close(fit.extras["collision_penalty"].sqrt() * 1000, depth_mm(fit), atol=0.05, rtol=0)
    assert "collision_penalty" not in plain.extras and plain.extras.keys() < fit.extras.keys()
    with pytest.raises(ValueError, match="collision_weight"):
        SMPLifyConfig(mode="reference", collision_weight=1.0).validated()
    with pytest.raises(ValueError, match="collision_weight"):
        SMPLifyConfig(collision_weight=-1.0).validated()


@pytest.mark.gpu
def test_penalty_and_mesh_check_on_cuda_like_cpu(body, capsules):
    vertices, betas = _posed(body, _pose(HAND_IN_TORSO, LEGS_CROSSED, {}))
    cpu = collision_residuals(capsules.ends(vertices), capsules.radii(betas), capsules.pairs)
    gpu_caps = capsules.to("cuda")
    gpu = collision_residuals(gpu_caps.ends(vertices.cuda()), gpu_caps.radii(betas.cuda()), gpu_caps.pairs)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, atol=1e-5, rtol=1e-4)
    names, labels, ignore = mesh_parts(body)
    assert interpenetrates(vertices.cuda(), body.faces, labels, ignore).cpu().tolist() == [True, True, False]


def test_point_triangle_distance_against_dense_samples():
    gen = torch.Generator().manual_seed(4)
    points = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    tri = torch.randn(16, 5, 3, 3, generator=gen, dtype=torch.float64)
    got = point_triangle_distance(points, tri)
    u, v = torch.meshgrid(torch.linspace(0, 1, 201, dtype=torch.float64), torch.linspace(0, 1, 201,
                          dtype=torch.float64), indexing="ij")
    keep = (u + v) <= 1
    u, v = u[keep], v[keep]
    samples = (tri[..., 0, None, :] + u[:, None] * (tri[..., 1, None, :] - tri[..., 0, None, :])
               + v[:, None] * (tri[..., 2, None, :] - tri[..., 0, None, :]))          # (N, F, S, 3)
    brute = (samples - points[:, None, None]).norm(dim=-1).amin(-1)
    assert (got <= brute + 1e-9).all()
    assert (brute - got).max() < 0.05                 # the samples' spacing (1/200 of sides of a few units)
    # a point right above a triangle's inside: its height
    flat = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]], dtype=torch.float64)
    torch.testing.assert_close(point_triangle_distance(torch.tensor([[0.2, 0.2, -0.3]], dtype=torch.float64),
                                                       flat), torch.tensor([[0.3]], dtype=torch.float64))
