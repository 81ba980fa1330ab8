"""SMPLify-X's pluggable pose priors (fitting/pose_terms.py): each term's Gauss–Newton normal equations against
autograd of its energy (g = ½∇E exactly; H = ½∇²E where the residuals are piecewise linear), the terms wired into
SMPLify-X's objective and fast normal equations, and the switch by name."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_smplifyx import _model

from bench.smplifyx_cases import synthetic_people
from core.errors import FitloopError, ModelFileError
from fitting.hand_prior import HandJointLimits, HandPCAPrior
from fitting.pose_terms import (
    HandLimitsTerm,
    HandPCATerm,
    SumTerm,
    VAEBodyTerm,
    body_term,
    hand_term,
)
from fitting.priors import VAE_PRIOR
from fitting.smplifyx import SMPLIFYX_STAGES, L2Term, SMPLifyX
from fitting.vposer import VAEPosePrior
from fitting.wholebody_model import POSE_SLICES


def _pca_file(tmp_path, k: int = 6):
    """A hand-PCA .npz in SMPL-X's layout: orthonormal components (k, 45) per hand, a mean, stds."""
    rng = np.random.default_rng(0)
    arrays = {}
    for s in "lr":
        q, _ = np.linalg.qr(rng.standard_normal((45, 45)))
        arrays[f"hands_components{s}"] = q[:, :k].T
        arrays[f"hands_mean{s}"] = 0.1 * rng.standard_normal(45)
        arrays[f"hands_std{s}"] = np.linspace(1.0, 0.3, k)
    path = tmp_path / "hands_pca.npz"
    np.savez(path, **arrays)
    return path


def _terms(tmp_path):
    path = _pca_file(tmp_path)
    pca = HandPCATerm(*(HandPCAPrior.from_file(path, side) for side in ("left", "right")))
    limits = HandLimitsTerm(HandJointLimits(dtype=torch.float64))
    return {"vae": VAEBodyTerm(VAEPosePrior.from_file(VAE_PRIOR).to(torch.float64)), "limits": limits,
            "pca": pca, "pca+limits": SumTerm(pca, limits)}


@pytest.mark.parametrize("name", ["vae", "limits", "pca", "pca+limits"])
def test_normal_equations_are_half_the_energys_gradient(name, tmp_path):
    term = _terms(tmp_path)[name]
    gen = torch.Generator().manual_seed(3)
    # hands well outside the limits in places (1 rad): the limits' residuals are not all zero
    x = (0.4 if name == "vae" else 1.0) * torch.randn(4, term.dim, generator=gen, dtype=torch.float64)
    hess, grad = term.normal_equations(x)
    xg = x.clone().requires_grad_(True)
    term.energy(xg).sum().backward()
    torch.testing.assert_close(grad, xg.grad / 2, rtol=1e-6, atol=1e-9 * xg.grad.abs().max().item())
    assert hess.shape == (4, term.dim, term.dim)
    torch.testing.assert_close(hess, hess.transpose(1, 2))
    assert (torch.linalg.eigvalsh(hess) > -1e-8 * hess.abs().amax((1, 2))[:, None]).all()  # Gauss–Newton: PSD
    if name != "vae":  # piecewise-linear residuals: H is ½ the Hessian itself
        if name == "limits":
            assert (grad != 0).any() and (grad == 0).any()   # some components inside their range, some outside
        full = torch.autograd.functional.hessian(lambda v: term.energy(v[None])[0], x[0])
        torch.testing.assert_close(hess[0], full / 2, rtol=1e-6, atol=1e-9)


def test_smplifyx_with_the_vae_and_the_limits_keeps_one_objective(tmp_path):
    """The fast mode's ½∇E with the VAE body prior and the hands' limits equals autograd's gradient of
    `SMPLifyX.objective` (as for the default priors in tests/test_smplifyx.py), in the stage with hands free."""
    model = _model(tmp_path, dtype=torch.float64)
    terms = _terms(tmp_path)
    smplifyx = SMPLifyX(model, body_prior=terms["vae"], hand_prior=terms["limits"])
    people = synthetic_people(model, 2, seed=4)
    gen = torch.Generator().manual_seed(0)
    pose = people.full_pose + 0.1 * torch.randn(people.full_pose.shape, generator=gen, dtype=torch.float64)
    pose[:, POSE_SLICES["left_hand_pose"]] += 1.0          # outside the limits somewhere
    shape = torch.cat([people.betas, people.expression], 1)
    stage = SMPLIFYX_STAGES[-1]
    _, grad = smplifyx.normal_equations(pose, shape, people.cam_t, people.keypoints, people.center, people.focal,
                                        stage)
    p, s = pose.clone().requires_grad_(True), shape.clone().requires_grad_(True)
    points = model.forward_full(p, s[:, :10], s[:, 10:]).points
    terms_out = smplifyx.objective(points, people.cam_t, people.center, people.focal, people.keypoints, p,
                                   s[:, :10], s[:, 10:], stage)
    assert (terms_out["hand_pose"] > 0).all() and (terms_out["body_pose"] > 0).all()
    terms_out["total"].sum().backward()
    want = torch.cat([p.grad, s.grad], 1) / 2
    torch.testing.assert_close(grad, want, atol=1e-6 * want.abs().max().item(), rtol=1e-6)


def test_the_switch_by_name(tmp_path):
    assert isinstance(hand_term("l2"), L2Term) and hand_term("l2").dim == 90
    assert isinstance(hand_term("limits"), HandLimitsTerm)
    pca = hand_term("pca", _pca_file(tmp_path), num_components=4)
    assert isinstance(pca, SumTerm) and pca.terms[0].sides[0].components.shape == (4, 45)
    assert isinstance(body_term("vae"), VAEBodyTerm) and body_term("gmm").dim == 63
    for bad in (lambda: hand_term("pca"), lambda: hand_term("limits", _pca_file(tmp_path)),
                lambda: hand_term("mano"), lambda: body_term("flow")):
        with pytest.raises(FitloopError):
            bad()
    with pytest.raises(ModelFileError, match="hands_components"):
        np.savez(tmp_path / "empty.npz", x=np.zeros(3))
        hand_term("pca", tmp_path / "empty.npz")

