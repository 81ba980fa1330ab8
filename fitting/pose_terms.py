"""Pose priors as SMPLify-X's pluggable blocks (`fitting.smplifyx.PoseTerm`), and the switch that picks them by name.

A `PoseTerm` over a block of pose values x (B, D) gives its energy E (B,) (differentiable: the reference mode's
L-BFGS uses autograd) and its Gauss–Newton normal equations (H (B, D, D), g (B, D)) with ½∇E = g exactly and
½∇²E ≈ H (the fast mode's LM); SMPLify-X multiplies both by the stage's squared weight. Every prior here is a
sum of squared residuals, E = c ‖r(x)‖², so g = c Jᵀr and H = c JᵀJ with J = ∂r/∂x, from the prior's own exact
Jacobian:

* `VAEBodyTerm`: the VAE body prior (`fitting.vposer.VAEPosePrior`, c = ½: nats, the GMM's scale) over SMPL-X's
  21 body joints (63 values; SMPL's two hand slots, which the VAE prior also carries, are held at 0);
* `HandLimitsTerm`: both hands' anatomical joint limits (`fitting.hand_prior.HandJointLimits`, c = 1, rad²; zero
  inside the ranges);
* `HandPCATerm`: a hand-pose PCA the user supplies (`fitting.hand_prior.HandPCAPrior` per hand, c = 1);
* `SumTerm`: the sum of terms over one block (the PCA with the limits).

The hand terms are over both hands, x = [left (45), right (45)] (B, 90), the block `fitting.smplifyx.HANDS` of the
full pose: the limits differ by side. Axis-angle radians, SMPL-X's order (`fitting.wholebody_model.POSE_SLICES`).

`body_term` / `hand_term` build a term from a name (the bench's ``--prior gmm|vae`` and ``--hand-prior
l2|limits|pca``); which is the default, and why, is in docs/smplifyx.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor

from core.errors import FitloopError
from fitting.hand_prior import HAND_POSE_DIM, HAND_SIDES, HandJointLimits, HandPCAPrior
from fitting.priors import DEFAULT_PRIOR, VAE_PRIOR
from fitting.smplifyx import L2Term, PoseTerm, body_gmm_term
from fitting.vposer import HAND_SLOTS_DIM, VPOSER_POSE_DIM, VAEPosePrior

HANDS_POSE_DIM = 2 * HAND_POSE_DIM   # 90: left then right
BodyPrior = Literal["gmm", "vae"]
HandPrior = Literal["l2", "limits", "pca"]
DEFAULT_BODY_PRIOR: BodyPrior = "gmm"
DEFAULT_HAND_PRIOR: HandPrior = "l2"


def _gauss_newton(r: Tensor, jac: Tensor, c: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(c JᵀJ, c Jᵀr) of residuals r (B, R) and their Jacobian (B, R, D), in ``dtype``: the normal equations of
    E = c ‖r‖² (g = ½∇E, H ≈ ½∇²E)."""
    r, jac = r.to(dtype), jac.to(dtype)
    jt = jac.transpose(1, 2)
    return c * (jt @ jac), c * (jt @ r[..., None])[..., 0]


class VAEBodyTerm:
    """The VAE body-pose prior over SMPL-X's 21 body joints (B, 63) (module docstring): E = ½‖r‖², nats up to a
    constant. The prior's network runs in its own dtype (``prior.to(torch.float64)`` for a float64 fit)."""

    dim = VPOSER_POSE_DIM

    def __init__(self, prior: VAEPosePrior):
        self.prior = prior

    def _padded(self, x: Tensor) -> Tensor:  # SMPL's two hand slots (not SMPL-X joints): 0
        return torch.cat([x, x.new_zeros(x.shape[0], HAND_SLOTS_DIM)], 1)

    def energy(self, x: Tensor) -> Tensor:
        return self.prior(self._padded(x)).to(x.dtype)

    def normal_equations(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r, jac = self.prior.residuals_and_jacobian(self._padded(x))
        return _gauss_newton(r, jac[..., :VPOSER_POSE_DIM], 0.5, x.dtype)


class HandLimitsTerm:
    """Both hands' anatomical joint limits over [left, right] (B, 90) (module docstring): E = Σ r², rad²."""

    dim = HANDS_POSE_DIM

    def __init__(self, limits: HandJointLimits):
        self.limits = limits

    def energy(self, x: Tensor) -> Tensor:
        return self.limits(x[:, :HAND_POSE_DIM], x[:, HAND_POSE_DIM:]).to(x.dtype)

    def normal_equations(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r, jac = self.limits.residuals_and_jacobian(x[:, :HAND_POSE_DIM], x[:, HAND_POSE_DIM:])
        return _gauss_newton(r, jac, 1.0, x.dtype)


class HandPCATerm:
    """A hand-pose PCA per hand over [left, right] (B, 90) (module docstring): E = Σ r² of both hands' residuals."""

    dim = HANDS_POSE_DIM

    def __init__(self, left: HandPCAPrior, right: HandPCAPrior):
        self.sides = (left, right)

    def energy(self, x: Tensor) -> Tensor:
        return sum(side(x[:, k * HAND_POSE_DIM:(k + 1) * HAND_POSE_DIM]) for k, side in enumerate(self.sides))

    def normal_equations(self, x: Tensor) -> tuple[Tensor, Tensor]:
        batch = x.shape[0]
        hess = x.new_zeros(batch, self.dim, self.dim)
        grad = x.new_zeros(batch, self.dim)
        for k, side in enumerate(self.sides):
            block = slice(k * HAND_POSE_DIM, (k + 1) * HAND_POSE_DIM)
            h, g = _gauss_newton(*side.residuals_and_jacobian(x[:, block]), 1.0, x.dtype)
            hess[:, block, block], grad[:, block] = h, g
        return hess, grad


class SumTerm:
    """The sum of terms over one block of pose values: energies and normal equations add."""

    def __init__(self, *terms: PoseTerm):
        if not terms or len({t.dim for t in terms}) != 1:
            raise ValueError(f"SumTerm needs terms over one block, got dims {[t.dim for t in terms]}")
        self.terms, self.dim = terms, terms[0].dim

    def energy(self, x: Tensor) -> Tensor:
        return sum(t.energy(x) for t in self.terms)

    def normal_equations(self, x: Tensor) -> tuple[Tensor, Tensor]:
        parts = [t.normal_equations(x) for t in self.terms]
        return sum(h for h, _ in parts), sum(g for _, g in parts)


def body_term(kind: BodyPrior = DEFAULT_BODY_PRIOR, path: str | Path | None = None,
              dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> PoseTerm:
    """SMPLify-X's body prior by name: ``gmm`` (`fitting.smplifyx.body_gmm_term` of ``path``, default fitloop's
    open GMM) or ``vae`` (`VAEBodyTerm` of a VAE prior file, default fitloop's open one)."""
    if kind not in get_args(BodyPrior):
        raise FitloopError(f"the body prior must be one of {get_args(BodyPrior)}, not {kind!r}")
    if kind == "gmm":
        return body_gmm_term(DEFAULT_PRIOR if path is None else path, dtype=dtype, device=device)
    prior = VAEPosePrior.from_file(VAE_PRIOR if path is None else path)
    return VAEBodyTerm(prior.to(device=device, dtype=dtype))


def hand_term(kind: HandPrior = DEFAULT_HAND_PRIOR, pca_file: str | Path | None = None,
              num_components: int | None = None, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> PoseTerm:
    """SMPLify-X's hand prior by name: ``l2`` (SMPLify-X's, on the 90 values), ``limits`` (`HandLimitsTerm`) or
    ``pca`` (`HandPCATerm` of ``pca_file``'s first ``num_components`` components, plus the limits)."""
    if kind not in get_args(HandPrior):
        raise FitloopError(f"the hand prior must be one of {get_args(HandPrior)}, not {kind!r}")
    if (kind == "pca") != (pca_file is not None):
        raise FitloopError("a hand-pose PCA file goes with the hand prior 'pca' (and it needs one): pass both or "
                           "neither")
    if kind == "l2":
        return L2Term(HANDS_POSE_DIM)
    limits = HandLimitsTerm(HandJointLimits(dtype=dtype).to(device))
    if kind == "limits":
        return limits
    pca = HandPCATerm(*(HandPCAPrior.from_file(pca_file, side, num_components).to(device) for side in HAND_SIDES))
    return SumTerm(pca, limits)
