"""DSR's semantic terms (fitting.dsr) on the silhouette term's machinery: the anatomy rule picks the open model's
head, hands and feet; the fast mode's normal equations of DSR-MC and DSR-C are ½ their autograd gradients; DSR-C
is one-sided (zero for a body inside its region, a pull for one outside); DSR's semantic prior loads in its real
shape and refuses a wrong one; SMPLify runs both terms in both modes, per example where the data exists.
"""
import numpy as np
import pytest
import torch
from test_silhouette_term import CROP, FOCAL, _people

from core.errors import ModelFileError
from core.frames import FIT_FRAME_OFFSET
from core.joints import SMPL_JOINT_NAMES, face_joints
from fitting.body_model import DATA_DIR, load_body_model
from fitting.dsr import (
    MC_PARTS,
    SEMANTIC_PRIOR_CLASSES,
    SMPL_FACES,
    clothed_targets,
    face_segments,
    load_semantic_prior,
    mc_group_table,
    minimally_clothed_targets,
    minimally_clothed_vertices,
    prior_segments,
    vertex_segments,
)
from fitting.priors import MaxMixturePrior
from fitting.silhouette import render_silhouette
from fitting.silhouette_term import MaskTerm, silhouette_energy
from fitting.smplify import SMPLify, SMPLifyConfig, mean_pose_start


@pytest.fixture(scope="module")
def prior():
    return MaxMixturePrior.from_file(DATA_DIR / "pose_prior_open.npz")


def _labels(body, vertices, cam_t, dilate: int = 0):
    """Part labels (B, H, W) uint8 of camera meshes (0 background, 1 + the face's dominant segment) and the
    person region grown by ``dilate`` px (a loose parsing: 1 person, 0 background)."""
    from scipy import ndimage
    faces = torch.as_tensor(body.faces)
    face_segment = face_segments(faces, body.layer.lbs_weights)
    drawn = render_silhouette(vertices + cam_t[:, None], faces, FOCAL, (CROP / 2 - FIT_FRAME_OFFSET,) * 2,
                              (CROP, CROP)).face_index
    parts = torch.where(drawn >= 0, face_segment[drawn.clamp(min=0)] + 1, 0).to(torch.uint8)
    region = np.stack([ndimage.binary_dilation(p > 0, iterations=dilate) if dilate else p > 0
                       for p in parts.numpy()])
    return parts, torch.as_tensor(region, dtype=torch.uint8)


def test_dsr_segments_are_the_synthetic_generators_part_labels():
    """DSR's face segments and the painter's labels are one rule (`core.joints.face_joints`): on the open model every
    face's DSR segment is the painter's segment of that face; the rule picks the joint of the largest summed
    weight."""
    from pipelines.synthetic.paint import mesh_of, segment_of_joint

    body = load_body_model("open-small")
    weights = body.layer.lbs_weights.detach()
    painted = mesh_of(body.faces, weights.numpy()).segments
    by_joint = np.array([segment_of_joint(name) for name in SMPL_JOINT_NAMES])
    np.testing.assert_array_equal(by_joint[face_segments(torch.as_tensor(body.faces), weights).numpy()], painted)
    toy = np.array([[1.0, 0, 0], [0.2, 0.8, 0], [0.2, 0, 0.8]])          # face (0, 1, 2): joint 0 sums 1.4
    assert face_joints(np.array([[0, 1, 2], [1, 1, 2]]), toy).tolist() == [0, 1]


def test_the_anatomy_rule_picks_head_hands_and_feet_of_the_open_model():
    """Checked against the rest pose's joints: head vertices above the neck, hand vertices beyond the elbows
    (the open model's T pose: arms along x, the left one at +x), foot vertices below the knees; forearms only
    when asked; every part has vertices."""
    body = load_body_model("open-small")
    rest = body(torch.zeros(1, 10), torch.zeros(1, 69), torch.zeros(1, 3))
    joint = {n: rest.kinematic_joints[0, i] for i, n in enumerate(SMPL_JOINT_NAMES)}
    points = rest.vertices[0]
    chosen, group = minimally_clothed_vertices(vertex_segments(body.layer.lbs_weights))
    names = list(MC_PARTS)
    for g, part in enumerate(names, 1):
        mine = points[chosen & (group == g)]
        assert len(mine) > 20, part
        if part == "head":
            assert (mine[:, 1] > joint["neck"][1]).all()
        elif part.endswith("hand"):
            side = 1 if part.startswith("left") else -1
            assert (side * mine[:, 0] > side * joint[f"{part[:-5]}_elbow"][0]).all()
        else:
            assert (mine[:, 1] < joint[f"{part[:-5]}_knee"][1]).all()
    rest_of_body = points[~chosen]
    assert not ((rest_of_body[:, 1] > joint["head"][1] + 0.05).any())       # the crown is head, not "other"
    with_forearms, _ = minimally_clothed_vertices(vertex_segments(body.layer.lbs_weights), forearms=True)
    extra = points[with_forearms & ~chosen]
    assert len(extra) > 0 and (extra[:, 0].abs() > joint["left_elbow"][0] - 0.05).all()
    assert (chosen <= with_forearms).all()
    table = mc_group_table()
    assert table[0] == 0 and table[SMPL_JOINT_NAMES.index("spine1") + 1] == 0


def test_normal_equations_of_dsr_terms_give_half_the_autograd_gradient(prior):
    """Σ w² Jᵀr of DSR-MC and DSR-C with the silhouette term (the fast mode's analytic Jacobians, per-part pairs,
    a one-sided term) = ½ ∇ Σ w² E by autograd through the full body model; an example without data gets none."""
    body = load_body_model("open-small", dtype=torch.float64)
    truth = _people(body, prior, 3, seed=4, noise=0.0, dtype=torch.float64)
    parts, region = _labels(body, truth["vertices"], truth["cam_t"], dilate=0)
    gen = torch.Generator().manual_seed(5)
    pose = truth["pose"] + 0.1 * torch.randn(truth["pose"].shape, generator=gen, dtype=torch.float64)
    betas = torch.full((3, 10), 0.5, dtype=torch.float64)
    fit = SMPLify(body, prior, SMPLifyConfig(mc_weight=2.0, clothed_weight=3.0))
    has = torch.tensor([True, True, False])
    terms = {"mc": MaskTerm(2.0, minimally_clothed_targets(parts, has, torch.float64), fit.mc_vertices,
                            fit.mc_groups),
             "clothed": MaskTerm(3.0, clothed_targets(region, has, torch.float64))}
    focal = torch.full((3, 2), FOCAL, dtype=torch.float64)
    hess, grad = fit._silhouette_system(pose, betas, truth["cam_t"], focal, truth["center"], terms)

    params = torch.cat([pose, betas], 1).requires_grad_(True)
    vertices = body(params[:, 72:], params[:, 3:72], params[:, :3]).vertices + truth["cam_t"][:, None]
    energies = {k: silhouette_energy(vertices, fit.faces, fit.edges, focal, truth["center"], t.targets, t.subset,
                                     t.groups) for k, t in terms.items()}
    total = sum(terms[k].weight**2 * e for k, e in energies.items())
    auto = torch.autograd.grad(total.sum(), params)[0]
    assert all(e[:2].min() > 0.5 and e[2] == 0 for e in energies.values()), energies
    assert torch.allclose(grad, 0.5 * auto, rtol=1e-6, atol=1e-8 * auto.abs().max())
    assert grad[2].abs().max() == 0 and torch.allclose(hess, hess.transpose(1, 2))


def test_dsr_mc_pairs_each_parts_pixels_with_its_own_vertices(prior):
    """The true body has (near) zero DSR-MC energy against its own part labels; moving one hand's labels off
    (relabelling the left hand's pixels as the right's) raises it: a pixel never pairs with another part."""
    body = load_body_model("open-small")
    truth = _people(body, prior, 2, seed=7, noise=0.0)
    parts, _ = _labels(body, truth["vertices"], truth["cam_t"])
    fit = SMPLify(body, prior, SMPLifyConfig(mc_weight=1.0))
    faces, focal = fit.faces, torch.full((2, 2), FOCAL)
    camera = truth["vertices"] + truth["cam_t"][:, None]

    def energy(labels):
        targets = minimally_clothed_targets(labels, torch.ones(2, dtype=torch.bool))
        return silhouette_energy(camera, faces, fit.edges, focal, truth["center"], targets, fit.mc_vertices,
                                 fit.mc_groups)

    own = energy(parts)
    assert (own < 3.0).all(), own              # px²: face labels vs vertex segments at part seams; seen 1.1, 1.7
    swapped = parts.clone()
    for a, b in (("left_wrist", "right_wrist"), ("left_hand", "right_hand")):
        swapped[parts == SMPL_JOINT_NAMES.index(a) + 1] = SMPL_JOINT_NAMES.index(b) + 1
    assert (energy(swapped) > 5 * own).all(), (energy(swapped), own)


def test_dsr_c_is_zero_inside_its_region_and_pulls_from_outside(prior):
    """A body inside a loose parsing (its silhouette grown 6 px) has zero DSR-C energy, and a thinner one too (no
    pull outwards); against a region tighter than the body (shrunk 4 px) the energy is positive and its
    gradient pulls the silhouette in: shrinking the mesh towards its centre lowers it."""
    from scipy import ndimage
    body = load_body_model("open-small")
    truth = _people(body, prior, 2, seed=3, noise=0.0)
    parts, loose = _labels(body, truth["vertices"], truth["cam_t"], dilate=6)
    tight = torch.as_tensor(np.stack([ndimage.binary_erosion(p > 0, iterations=4) for p in parts.numpy()]),
                            dtype=torch.uint8)
    fit = SMPLify(body, prior, SMPLifyConfig(clothed_weight=1.0))
    focal = torch.full((2, 2), FOCAL)
    has = torch.ones(2, dtype=torch.bool)

    def energy(region, scale=1.0):
        centre = truth["vertices"].mean(1, keepdim=True)
        camera = centre + scale * (truth["vertices"] - centre) + truth["cam_t"][:, None]
        return silhouette_energy(camera, fit.faces, fit.edges, focal, truth["center"], clothed_targets(region, has))

    assert (energy(loose) == 0).all() and (energy(loose, 0.9) == 0).all()
    assert (energy(tight) > 1.0).all()
    assert (energy(tight, 0.95) < energy(tight)).all()


def test_smplify_fits_with_dsr_terms_in_both_modes_per_example(prior):
    """Fast and reference fits take the part labels and the parsing, report each term's energy, and an example
    without them gets none; a weight of 0 ignores the images."""
    body = load_body_model("open-small")
    people = _people(body, prior, 2, seed=9, noise=3.0)
    parts, loose = _labels(body, people["vertices"], people["cam_t"], dilate=5)
    start = mean_pose_start(body, people["keypoints"])
    has = torch.tensor([True, False])
    for mode, kwargs in (("fast", {}), ("reference", {"iterations": 10})):
        config = SMPLifyConfig(mode=mode, silhouette_weight=2.0, mc_weight=3.0, clothed_weight=3.0, **kwargs)
        fit = SMPLify(body, prior, config)(people["keypoints"], *start, people["center"], start="mean",
                                           masks=loose, parts=parts, has_parts=has, parsing=loose, has_parsing=has)
        for name in ("silhouette", "mc", "clothed"):
            assert fit.extras[f"{name}_energy"].shape == (2,), (mode, name)
        assert fit.extras["mc_energy"][1] == 0 and fit.extras["clothed_energy"][1] == 0
    plain = SMPLify(body, prior)(people["keypoints"], *start, people["center"], start="mean")
    ignored = SMPLify(body, prior)(people["keypoints"], *start, people["center"], start="mean", parts=parts,
                                   parsing=loose)
    assert torch.equal(plain.pose, ignored.pose) and "mc_energy" not in ignored.extras
    with pytest.raises(ValueError, match="mc_weight"):
        SMPLifyConfig(mc_weight=-1.0).validated()
    with pytest.raises(ValueError, match="part labels hold ids other than"):
        minimally_clothed_targets(torch.full((1, 4, 4), 30, dtype=torch.uint8), torch.ones(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="parts must be"):
        SMPLify(body, prior, SMPLifyConfig(mc_weight=1.0))(people["keypoints"], *start, people["center"],
                                                           start="mean", parts=parts[:1])


def test_semantic_prior_loads_its_real_shape_and_drives_the_mc_vertices(tmp_path):
    """A synthetic array in DSR's shape (1, 13776, 20) loads (squeezed); faces whose face/arm/shoe
    probability passes ½ give DSR-MC's vertices, grouped by DSR's class (face -> head)."""
    rng = np.random.default_rng(0)
    table = np.zeros((SMPL_FACES, len(SEMANTIC_PRIOR_CLASSES)))
    table[:, SEMANTIC_PRIOR_CLASSES.index("upperclothes")] = 1.0
    faces = rng.integers(0, 6890, (SMPL_FACES, 3))
    face_rows, shoe_rows = np.arange(0, 100), np.arange(100, 150)
    table[face_rows] = 0
    table[face_rows, SEMANTIC_PRIOR_CLASSES.index("face")] = 0.9
    table[face_rows, SEMANTIC_PRIOR_CLASSES.index("hair")] = 0.1
    table[shoe_rows] = 0
    table[shoe_rows, SEMANTIC_PRIOR_CLASSES.index("leftShoe")] = 0.6
    table[shoe_rows, SEMANTIC_PRIOR_CLASSES.index("pants")] = 0.4
    path = tmp_path / "semantic_prior.npy"
    np.save(path, table[None].astype(np.float32))
    loaded = load_semantic_prior(path, SMPL_FACES)
    chosen, group = prior_segments(loaded, faces, 6890)
    expected = np.zeros(6890, dtype=bool)
    expected[faces[:150].reshape(-1)] = True
    assert np.array_equal(chosen.numpy(), expected)
    head, foot = list(MC_PARTS).index("head") + 1, list(MC_PARTS).index("left_foot") + 1
    assert set(group[faces[shoe_rows].reshape(-1)].tolist()) == {foot}
    only_face = np.setdiff1d(faces[face_rows].reshape(-1), faces[shoe_rows].reshape(-1))
    assert set(group[only_face].tolist()) == {head}


def test_semantic_prior_refuses_bad_files(tmp_path, prior):
    good = np.full((SMPL_FACES, 20), 0.05, dtype=np.float32)
    cases = {"shape.npy": np.zeros((6890, 20), np.float32), "ints.npy": np.zeros((SMPL_FACES, 20), np.int64),
             "range.npy": good * 40}
    for name, array in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(ModelFileError, match=name):
            load_semantic_prior(tmp_path / name, SMPL_FACES)
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(ModelFileError, match="text.npy.*cannot read"):
        load_semantic_prior(tmp_path / "text.npy", SMPL_FACES)
    np.save(tmp_path / "good.npy", good)
    with pytest.raises(ModelFileError, match="good.npy.*2454"):                # the open model: not SMPL's mesh
        SMPLify(load_body_model("open-small"), prior,
                SMPLifyConfig(mc_weight=1.0, semantic_prior=str(tmp_path / "good.npy")))


@pytest.mark.gpu
def test_dsr_terms_normal_equations_on_cuda_match_cpu(prior):
    body = load_body_model("open-small", dtype=torch.float64)
    truth = _people(body, prior, 3, seed=4, noise=0.0, dtype=torch.float64)
    parts, region = _labels(body, truth["vertices"], truth["cam_t"], dilate=3)
    args = (truth["pose"] + 0.05, torch.zeros(3, 10, dtype=torch.float64), truth["cam_t"],
            torch.full((3, 2), FOCAL, dtype=torch.float64), truth["center"])
    results = []
    for device in ("cpu", "cuda"):
        fit = SMPLify(load_body_model("open-small", dtype=torch.float64, device=device), prior,
                      SMPLifyConfig(mc_weight=2.0, clothed_weight=3.0))
        has = torch.ones(3, dtype=torch.bool)
        terms = {"mc": MaskTerm(2.0, minimally_clothed_targets(parts.to(device), has, torch.float64),
                                fit.mc_vertices, fit.mc_groups),
                 "clothed": MaskTerm(3.0, clothed_targets(region.to(device), has, torch.float64))}
        results.append(fit._silhouette_system(*(t.to(device) for t in args), terms))
    for a, b in zip(results[1], results[0]):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-6 * b.abs().max().item())
