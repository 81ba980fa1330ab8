"""The silhouette (chamfer) term of SMPLify (fitting.silhouette_term): its targets against hand-made masks, its
normal equations against autograd, and its effect: a body whose keypoints do not tell its shape is fitted closer
to the truth's shape with its mask than without.
"""
import numpy as np
import pytest
import torch

from core.camera import project
from core.frames import FIT_FRAME_OFFSET
from core.joints import JOINT_INDEX
from core.metrics import procrustes_align
from fitting.body_model import DATA_DIR, load_body_model
from fitting.priors import MaxMixturePrior
from fitting.silhouette import render_silhouette
from fitting.silhouette_term import (
    UNKNOWN,
    MaskTerm,
    bilinear,
    mask_targets,
    silhouette_energy,
    silhouette_residuals,
)
from fitting.smplify import SMPLify, SMPLifyConfig, mean_pose_start

FOCAL, DEPTH, CROP = 5000.0, 50.0, 224      # SPIN's crop camera: a 1.7 m body ~170 px tall at 50 m


@pytest.fixture(scope="module")
def prior():
    return MaxMixturePrior.from_file(DATA_DIR / "pose_prior_open.npz")


def _people(body, prior, batch, seed, noise, dtype=torch.float32):
    """Prior-sampled poses, betas uniform in ±2.5 σ, facing SPIN's crop camera; their 49 keypoints (with
    `noise` px Gaussian noise) and their exact masks (the renderer's z-buffer coverage; the renderer's pixel
    centres are at integers, the fit frame's at half-integers)."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.multinomial(prior.log_weights.exp(), batch, replacement=True, generator=gen)
    chol = torch.linalg.cholesky(torch.linalg.inv(prior.precisions.double())).float()
    body_pose = (prior.means[k] + 0.5 * (chol[k] @ torch.randn(batch, 69, 1, generator=gen))[..., 0]).to(dtype)
    orient = (torch.tensor([torch.pi, 0.0, 0.0]) + 0.2 * torch.randn(batch, 3, generator=gen)).to(dtype)
    betas = ((torch.rand(batch, 10, generator=gen) * 2 - 1) * 2.5).to(dtype)
    cam_t = torch.tensor([0.0, 0.2, DEPTH], dtype=dtype).repeat(batch, 1)
    center = torch.full((batch, 2), CROP / 2, dtype=dtype)
    with torch.no_grad():
        out = body(betas, body_pose, orient)
    kp = torch.ones(batch, 49, 3, dtype=dtype)
    kp[..., :2] = project(out.joints, cam_t, FOCAL, center) + noise * torch.randn(batch, 49, 2, generator=gen)
    return dict(pose=torch.cat([orient, body_pose], 1), betas=betas, cam_t=cam_t, center=center,
                vertices=out.vertices, keypoints=kp, masks=_masks_at(out.vertices + cam_t[:, None], body, 1))


def _masks_at(camera, body, scale):
    """Exact masks (the renderer's z-buffer coverage) of camera-frame meshes at ``scale`` mask px per fit-frame
    px: focal s·f, principal point s·112 (the grids' pixel corners coincide; the renderer's pixel centres are at
    integers, hence − the offset)."""
    drawn = render_silhouette(camera, torch.as_tensor(body.faces), scale * FOCAL,
                              (scale * CROP / 2 - FIT_FRAME_OFFSET,) * 2, (scale * CROP,) * 2)
    return (drawn.face_index >= 0).to(torch.uint8)


def test_targets_read_distances_boundaries_and_unknown_pixels():
    mask = np.zeros((9, 12), dtype=np.uint8)
    mask[3:6, 4:8] = 1                          # a 4 x 3 person
    mask[:, 10:] = UNKNOWN                      # the image ends at x = 10
    targets = mask_targets(torch.as_tensor(mask)[None], torch.tensor([True]), torch.float64, offset=0.0)
    dist = targets.distance[0].numpy()
    assert dist[4, 5] == 0 and dist[4, 2] == 2 and dist[0, 4] == 3            # px to the person
    assert np.isclose(dist[1, 2], np.hypot(2, 2))
    assert dist[4, 10] == 0                                                   # unknown: no pull out of it
    boundary = {tuple(p) for p in targets.boundary[0][targets.boundary_valid[0]].long().tolist()}
    assert boundary == {(x, y) for y in range(3, 6) for x in range(4, 8)} - {(5, 4), (6, 4)}
    # a person pixel next to unknown pixels only is no boundary pixel
    mask2 = np.full((5, 5), UNKNOWN, dtype=np.uint8)
    mask2[2, 2] = 1
    assert not mask_targets(torch.as_tensor(mask2)[None], torch.tensor([True])).boundary_valid.any()
    # in the fit frame (pixel corners at integers) the boundary pixels' centres are half a pixel further on
    shifted = mask_targets(torch.as_tensor(mask)[None], torch.tensor([True]), torch.float64)
    assert torch.equal(shifted.boundary, targets.boundary + FIT_FRAME_OFFSET) and FIT_FRAME_OFFSET == 0.5
    # an example without a mask has none
    assert not mask_targets(torch.as_tensor(mask)[None], torch.tensor([False])).has_mask.any()
    with pytest.raises(ValueError, match="values other than"):
        mask_targets(torch.full((1, 4, 4), 7, dtype=torch.uint8), torch.tensor([True]))


def test_bilinear_samples_and_gradient():
    image = torch.tensor([[[0.0, 1.0, 4.0], [2.0, 5.0, 3.0]]], dtype=torch.float64)   # (1, 2, 3)
    xy = torch.tensor([[[0.25, 0.5], [1.5, 0.0]]], dtype=torch.float64, requires_grad=True)
    value, grad = bilinear(image, xy)
    assert torch.allclose(value, torch.tensor([[0.75 * 0.5 * 0 + 0.25 * 0.5 * 1 + 0.75 * 0.5 * 2 + 0.25 * 0.5 * 5,
                                                 2.5]], dtype=torch.float64))
    auto = torch.autograd.grad(value.sum(), xy)[0]
    assert torch.allclose(grad, auto)


def test_normal_equations_give_half_the_autograd_gradient(prior):
    """Jᵀr of the fast mode's analytic Jacobian (skeleton vertex rows, projection, DT gradient, nearest-vertex
    pairs) = ½ ∇E_sil by autograd through the full body model (float64; the open model has no pose correctives,
    so its skeleton vertices are its mesh exactly)."""
    body = load_body_model("open-small", dtype=torch.float64)
    truth = _people(body, prior, 3, seed=4, noise=0.0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    pose = truth["pose"] + 0.1 * torch.randn(truth["pose"].shape, generator=gen, dtype=torch.float64)
    betas = torch.zeros(3, 10, dtype=torch.float64)
    fit = SMPLify(body, prior, SMPLifyConfig(silhouette_weight=1.0))
    targets = mask_targets(truth["masks"], torch.tensor([True, True, False]), torch.float64)
    focal = torch.full((3, 2), FOCAL, dtype=torch.float64)
    hess, grad = fit._silhouette_system(pose, betas, truth["cam_t"], focal, truth["center"],
                                        {"silhouette": MaskTerm(1.0, targets)})

    params = torch.cat([pose, betas], 1).requires_grad_(True)
    vertices = body(params[:, 72:], params[:, 3:72], params[:, :3]).vertices + truth["cam_t"][:, None]
    energy = silhouette_energy(vertices, fit.faces, fit.edges, focal, truth["center"], targets)
    auto = torch.autograd.grad(energy.sum(), params)[0]
    assert energy[:2].min() > 1.0 and energy[2] == 0                          # px²: off the mask; no mask: none
    assert torch.allclose(grad, 0.5 * auto, rtol=1e-6, atol=1e-8 * auto.abs().max())
    assert grad[2].abs().max() == 0 and hess[2].abs().max() == 0
    assert torch.allclose(hess, hess.transpose(1, 2)) and torch.linalg.eigvalsh(hess).min() > -1e-6
    # with the camera translation as unknowns (mask_moves_camera): 3 more columns, ½ ∇_t E_sil, the rest unchanged
    hess_t, grad_t = fit._silhouette_system(pose, betas, truth["cam_t"], focal, truth["center"],
                                            {"silhouette": MaskTerm(1.0, targets)}, translation=True)
    cam_t = truth["cam_t"].clone().requires_grad_(True)
    vertices = body(betas, pose[:, 3:], pose[:, :3]).vertices + cam_t[:, None]
    auto_t = torch.autograd.grad(silhouette_energy(vertices, fit.faces, fit.edges, focal, truth["center"],
                                                   targets).sum(), cam_t)[0]
    assert hess_t.shape == (3, 85, 85)
    assert torch.allclose(hess_t[:, :82, :82], hess, rtol=1e-12) and torch.allclose(grad_t[:, :82], grad, rtol=1e-12)
    assert torch.allclose(grad_t[:, 82:], 0.5 * auto_t, rtol=1e-5, atol=1e-8 * auto_t.abs().max())


def test_mask_brings_the_fit_closer_to_the_true_shape(prior):
    """Bodies of widely varying shape, 5 px keypoint noise, mean starts: with their exact masks the fits' meshes
    (after Procrustes) and betas are closer to the truth's than from the keypoints alone, and the fitted
    silhouettes are nearer the masks."""
    body = load_body_model("open-small")
    people = _people(body, prior, 6, seed=11, noise=5.0)
    start = mean_pose_start(body, people["keypoints"])

    def errors(weight):
        fit = SMPLify(body, prior, SMPLifyConfig(silhouette_weight=weight))(
            people["keypoints"], *start, people["center"], start="mean", masks=people["masks"])
        with torch.no_grad():
            vertices = body(fit.betas, fit.pose[:, 3:], fit.pose[:, :3]).vertices
        pve = (procrustes_align(vertices, people["vertices"]) - people["vertices"]).norm(dim=-1).mean()
        return pve, (fit.betas - people["betas"]).norm(dim=1).mean()

    pve_kp, betas_kp = errors(0.0)
    pve_sil, betas_sil = errors(10.0)
    assert pve_sil < 0.95 * pve_kp, (pve_sil, pve_kp)                         # seen: 58.6 vs 67.6 mm
    assert betas_sil < betas_kp, (betas_sil, betas_kp)                        # seen: 4.31 vs 4.63


def test_the_mask_moves_the_camera_that_stage_1_misplaced(prior):
    """Stage 1 places the body from four torso keypoints; where they are off (here all by the same 4 px), SPIN's
    stage 2 (translation held) can only bend the body into the mask. With ``mask_moves_camera`` the translation is
    an unknown of the mask's stage 2 too: the fit's camera lands nearer the truth and its outline fills the mask
    better, from the true pose (an estimate held near it). An example of the batch without a mask keeps stage 1's
    translation."""
    body = load_body_model("open-small")
    people = _people(body, prior, 5, seed=12, noise=0.0)
    has_mask = torch.tensor([True, True, True, True, False])
    keypoints = people["keypoints"].clone()
    torso = torch.as_tensor([JOINT_INDEX[n] for n in ("OP RHip", "OP LHip", "OP RShoulder", "OP LShoulder",
                                                        "Right Hip", "Left Hip", "Right Shoulder", "Left Shoulder")])
    keypoints[:, torso, 0] += 4.0

    def fit(moves):
        config = SMPLifyConfig(silhouette_weight=5.0, init_weight=1e3, mask_moves_camera=moves)
        result = SMPLify(body, prior, config)(keypoints, people["pose"], people["betas"], people["cam_t"],
                                              people["center"], start="estimate", masks=people["masks"],
                                              has_mask=has_mask)
        off = (result.cam_t[:, :2] - people["cam_t"][:, :2]).norm(dim=1)
        return off, result.extras["silhouette_energy"], result.cam_t

    off_held, energy_held, t_held = fit(False)
    off_moved, energy_moved, t_moved = fit(True)
    assert (off_moved[:4] < off_held[:4]).all(), (off_moved, off_held)
    assert (energy_moved[:4] < energy_held[:4]).all(), (energy_moved, energy_held)
    torch.testing.assert_close(t_moved[4], t_held[4], rtol=0, atol=1e-3)        # m (0.1 px): no mask, held
    assert (t_moved[:4] - t_held[:4]).norm(dim=1).min() > 1e-2, t_moved - t_held


def test_silhouette_weight_is_checked_and_masks_need_a_weight(prior):
    body = load_body_model("open-small")
    with pytest.raises(ValueError, match="silhouette_weight"):
        SMPLify(body, prior, SMPLifyConfig(silhouette_weight=-1.0))
    people = _people(body, prior, 2, seed=1, noise=0.0)
    start = mean_pose_start(body, people["keypoints"])
    plain = SMPLify(body, prior)(people["keypoints"], *start, people["center"], start="mean")
    ignored = SMPLify(body, prior)(people["keypoints"], *start, people["center"], start="mean",
                                   masks=people["masks"])
    assert torch.equal(plain.pose, ignored.pose) and "silhouette_energy" not in ignored.extras


def test_reference_mode_lowers_the_silhouette_energy(prior):
    """SPIN's Adam procedure gets the same energy by autograd: from the true pose with mean betas, its fits'
    silhouettes end nearer the masks with the term than without."""
    body = load_body_model("open-small")
    people = _people(body, prior, 2, seed=2, noise=0.0)
    start = (people["pose"], torch.zeros(2, 10), people["cam_t"])
    energies = []
    for weight in (1e-3, 10.0):      # a negligible weight: the same fit as without the term, and its energy
        config = SMPLifyConfig(mode="reference", iterations=30, silhouette_weight=weight)
        fit = SMPLify(body, prior, config)(people["keypoints"], *start, people["center"], start="estimate",
                                           masks=people["masks"])
        energies.append(fit.extras["silhouette_energy"])
    assert (energies[1] < energies[0]).all(), energies                     # seen: 8.3, 9.6 -> 7.7, 8.9 px²


@pytest.mark.gpu
@pytest.mark.parametrize("scale", [1, 2])
def test_the_terms_normal_equations_on_cuda_match_cpu(prior, scale):
    body = load_body_model("open-small", dtype=torch.float64)
    truth = _people(body, prior, 3, seed=4, noise=0.0, dtype=torch.float64)
    masks = _masks_at(truth["vertices"] + truth["cam_t"][:, None], body, scale)
    pose = truth["pose"] + 0.05
    args = (pose, torch.zeros(3, 10, dtype=torch.float64), truth["cam_t"], torch.full((3, 2), FOCAL,
                                                                                       dtype=torch.float64),
            truth["center"])
    targets = mask_targets(masks, torch.ones(3, dtype=torch.bool), torch.float64, scale=scale)
    cpu = SMPLify(body, prior, SMPLifyConfig(silhouette_weight=1.0))._silhouette_system(
        *args, {"silhouette": MaskTerm(1.0, targets)})
    cuda_body = load_body_model("open-small", dtype=torch.float64, device="cuda")
    cuda_fit = SMPLify(cuda_body, prior, SMPLifyConfig(silhouette_weight=1.0))
    gpu = cuda_fit._silhouette_system(*(t.cuda() for t in args), {"silhouette": MaskTerm(
        1.0, mask_targets(masks.cuda(), torch.ones(3, dtype=torch.bool), torch.float64, scale=scale))})
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-6 * b.abs().max().item())


def test_a_mask_of_the_keypoints_frame_reads_as_before_bit_for_bit():
    """scale 1 is the plain term: distances the mask's own, boundary centres index + offset and the lookup
    pixels − offset, bit for bit (a bench masks run against main gave every figure to the last digit)."""
    from scipy import ndimage

    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 50, 2, generator=gen, dtype=torch.float64) * 240 - 8
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:12, 8:20] = 1
    y, x = np.nonzero(mask)
    edge = (x == 8) | (x == 19) | (y == 5) | (y == 11)
    for offset in (FIT_FRAME_OFFSET, 0.0):
        targets = mask_targets(torch.as_tensor(mask)[None], torch.tensor([True]), torch.float64, offset)
        assert targets.scale == 1.0 and torch.equal(targets.mask_index(pixels), pixels - offset)
        assert torch.equal(targets.distance[0], torch.as_tensor(ndimage.distance_transform_edt(mask == 0)))
        expected = np.stack([x[edge], y[edge]], 1) + offset
        assert torch.equal(targets.boundary[0], torch.as_tensor(expected, dtype=torch.float64))


def test_a_finer_mask_reads_in_the_keypoints_px():
    """A person covering fit-frame x in [4, 10), y in [2, 6) drawn at 1× and at 2× (pixel corners on the same
    lines): at 2× its boundary centres lie ¼ px (half a mask pixel) inside the edge, not ½, and the distance
    transform reads in fit-frame px at the same points."""
    plain = np.zeros((12, 16), dtype=np.uint8)
    plain[2:6, 4:10] = 1
    fine = plain.repeat(2, 0).repeat(2, 1)
    one, two = (mask_targets(torch.as_tensor(m)[None], torch.tensor([True]), torch.float64, scale=s)
                for m, s in ((plain, 1), (fine, 2)))
    assert two.scale == 2.0 and two.distance.shape == (1, 24, 32)
    for t, inset in ((one, 0.5), (two, 0.25)):
        b = t.boundary[0][t.boundary_valid[0]]
        assert b[:, 0].min() == 4 + inset and b[:, 0].max() == 10 - inset
        assert b[:, 1].min() == 2 + inset and b[:, 1].max() == 6 - inset
    # 3 px left of the person's edge, on a row through it: the distance to the nearest person pixel centre,
    # in fit-frame px (1× grid: 3.5 px; 2×: 3.25 px), and its slope −1 per fit-frame px on both grids
    at = torch.tensor([[[1.0, 4.0], [1.0, 4.0]]], dtype=torch.float64, requires_grad=True)
    for t, expected in ((one, 3.5), (two, 3.25)):
        res = silhouette_residuals(at[:, :1], torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool),
                                   t)
        assert float(res.dist[0, 0].detach()) == pytest.approx(expected)
        assert torch.allclose(res.d_dist[0, 0], torch.tensor([-1.0, 0.0], dtype=torch.float64))


def test_a_body_in_a_mask_at_twice_the_resolution(prior):
    """The true body against its own mask drawn at 2× (focal 2f, principal point 2·112). The pull-in half (a) is
    ~0 and a quarter of 1×'s (the boundary centres ¼ px inside the edge, not ½); the fill half (b) is not 0 at
    either scale: a boundary pixel between two silhouette vertices is as far from the nearest one as the mesh's
    vertex spacing makes it (open-small: 1,229 vertices, up to ~8 px apart on the outline), a floor no mask
    resolution lowers. A body shifted 4 fit-frame px costs the same px² at 1× and 2× (the energy is in fit-frame
    px², so silhouette_weight means the same at any scale). The normal equations' Jᵀr is ½ the autograd gradient
    at 2× as at 1×."""
    body = load_body_model("open-small", dtype=torch.float64)
    truth = _people(body, prior, 3, seed=4, noise=0.0, dtype=torch.float64)
    fit = SMPLify(body, prior, SMPLifyConfig(silhouette_weight=1.0))
    focal = torch.full((3, 2), FOCAL, dtype=torch.float64)
    has = torch.ones(3, dtype=torch.bool)
    fine = _masks_at(truth["vertices"] + truth["cam_t"][:, None], body, 2)
    one, two = mask_targets(truth["masks"], has, torch.float64), mask_targets(fine, has, torch.float64, scale=2)
    pull_one, pull_two = (mask_targets(m, has, torch.float64, fill=False, scale=s)
                          for m, s in ((truth["masks"], 1), (fine, 2)))
    shift = torch.tensor([4 * DEPTH / FOCAL, 0.0, 0.0], dtype=torch.float64)      # 4 px sideways at 50 m

    def energy(targets, cam_t=truth["cam_t"]):
        return silhouette_energy(truth["vertices"] + cam_t[:, None], fit.faces, fit.edges, focal, truth["center"],
                                 targets)

    assert (energy(pull_two) < 0.05).all() and (energy(pull_two) < 0.4 * energy(pull_one)).all()  # seen .03, .13
    assert (energy(two) < 1.02 * energy(one)).all()                                # seen 4.6-7.2 vs 4.8-7.7 px²
    shifted_one, shifted_two = energy(one, truth["cam_t"] + shift), energy(two, truth["cam_t"] + shift)
    assert (shifted_two > 2 * energy(two)).all()
    assert torch.allclose(shifted_two, shifted_one, rtol=0.1), (shifted_one, shifted_two)

    gen = torch.Generator().manual_seed(5)
    pose = truth["pose"] + 0.1 * torch.randn(truth["pose"].shape, generator=gen, dtype=torch.float64)
    betas = torch.zeros(3, 10, dtype=torch.float64)
    hess, grad = fit._silhouette_system(pose, betas, truth["cam_t"], focal, truth["center"],
                                        {"silhouette": MaskTerm(1.0, two)})
    params = torch.cat([pose, betas], 1).requires_grad_(True)
    vertices = body(params[:, 72:], params[:, 3:72], params[:, :3]).vertices + truth["cam_t"][:, None]
    auto = torch.autograd.grad(silhouette_energy(vertices, fit.faces, fit.edges, focal, truth["center"],
                                                 two).sum(), params)[0]
    # 1e-7 of the largest: these people (all with a mask) leave ~3e-8 between the two at 1× as at 2×, 3× and 4×
    assert torch.allclose(grad, 0.5 * auto, rtol=1e-6, atol=1e-7 * auto.abs().max())
    assert torch.allclose(hess, hess.transpose(1, 2)) and torch.linalg.eigvalsh(hess).min() > -1e-6
