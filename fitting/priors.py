"""Priors of SMPLify: the Gaussian-mixture pose prior, the elbow/knee angle prior, and the shape prior.

All energies are per example, batched, deterministic, and take their parameters at call time (the pose prior
holds only its fixed mixture). Poses are SMPL body poses: (B, 69) = 23 joints × axis-angle in radians, joints in
`core.joints.SMPL_JOINT_NAMES` order without the pelvis (global orientation), each rotation local to its
parent and relative to the body model's T-pose.

The mixture lives in two file formats, both read by :func:`load_gmm`:

* SMPLify's ``gmm_08.pkl`` (a Python-2 pickle: a dict with ``means`` (8, 69), ``covars`` (8, 69, 69) and
  ``weights`` (8,), or an old sklearn GMM with ``means_``/``covars_``/``weights_``), read only through
  `fitting.safe_pickle`, which refuses anything but plain arrays;
* fitloop's ``.npz``: ``means``, ``covars``, ``weights`` (float64) and ``metadata`` (a JSON string with the
  provenance), loaded with ``allow_pickle=False``; :func:`save_gmm` writes it atomically and byte-reproducibly.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import ModelFileError
from core.joints import SMPL_JOINT_INDEX, SMPL_JOINT_NAMES
from fitting.files import DAMAGED, read_npz, require_file

# The committed pose priors of the open model (trained on CMU motion capture: docs/pose_prior.md): the Gaussian
# mixture (the default) and the VAE (`fitting.vposer`), by name for `resolve_pose_prior`.
DEFAULT_PRIOR = Path(__file__).resolve().parent / "data" / "pose_prior_open.npz"
VAE_PRIOR = Path(__file__).resolve().parent / "data" / "pose_prior_vae_open.npz"
SHIPPED_PRIORS: dict[str, Path] = {"gmm": DEFAULT_PRIOR, "vae": VAE_PRIOR}
# SPIN's prior weights (SPIN_REFERENCE §3.3; they enter the objective squared): GMM pose prior, angle prior on
# elbows and knees, betas. SMPLify and the 3D fit both start from them.
SPIN_POSE_PRIOR_WEIGHT = 4.78
SPIN_ANGLE_PRIOR_WEIGHT = 15.2
SPIN_SHAPE_PRIOR_WEIGHT = 5.0

# The vectors SMPLify's pose prior is over: SMPL's body pose, 23 joints x axis-angle (no global orientation).
BODY_POSE_DIM = 3 * (len(SMPL_JOINT_NAMES) - 1)
# The largest condition number (largest / smallest eigenvalue) a mixture's covariance may have. SMPLify adds the
# active component's precision Σ_k⁻¹ to its normal equations and solves them by Cholesky in float32 (ε = 1.2e-7):
# an n×n Cholesky is safe while κ·n·ε stays below 1, and 1e5 · 69 · 1.2e-7 ≈ 0.8. Beyond it the prior's energies
# and steps are rounding noise (a mixture trained without a covariance floor had κ ~ 1e17 and scored Gaussian noise
# as the likeliest pose). The shipped prior's covariances have κ ≤ 213; SMPLify's gmm_08.pkl, an sklearn GMM (which
# adds min_covar = 1e-3 to every diagonal), stays under 1e5 while its widest variance is under 100 rad² (a joint
# rotation's is at most π²).
MAX_COVARIANCE_CONDITION = 1e5
NPZ_FORMAT = "fitloop-pose-prior"
NPZ_FORMAT_VERSION = 1


@dataclass(frozen=True)
class GaussianMixture:
    """A Gaussian mixture over D-dim vectors: means (K, D), covars (K, D, D), weights (K,), all float64.

    ``metadata`` says where it came from (free-form JSON-able dict; fitloop priors record their training set).
    """

    means: np.ndarray
    covars: np.ndarray
    weights: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])


def _checked(means: Any, covars: Any, weights: Any, metadata: dict[str, Any], source: str) -> GaussianMixture:
    """Validate shapes and values once, at the file boundary."""
    try:
        means = np.array(means, dtype=np.float64)
        covars = np.array(covars, dtype=np.float64)
        weights = np.array(weights, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"{source}: mixture arrays are not numeric ({err})") from None
    if means.ndim != 2:
        raise ModelFileError(f"{source}: means have shape {means.shape}, expected (K, D)")
    k, d = means.shape
    if covars.shape == (k, d):  # a diagonal-covariance mixture: expand
        covars = np.stack([np.diag(c) for c in covars])
    if covars.shape != (k, d, d) or weights.shape != (k,):
        raise ModelFileError(f"{source}: covars {covars.shape} / weights {weights.shape} do not match means "
                             f"{means.shape}; expected ({k}, {d}, {d}) and ({k},)")
    if not (np.isfinite(means).all() and np.isfinite(covars).all() and np.isfinite(weights).all()):
        raise ModelFileError(f"{source}: the mixture holds NaN or infinite values; {DAMAGED}")
    if (weights <= 0).any():
        raise ModelFileError(f"{source}: mixture weights must be positive, got {weights}")
    problem = covariance_problem(covars)
    if problem:
        raise ModelFileError(f"{source}: {problem}, so its energies are rounding noise; retrain the prior with "
                             f"`fitloop prior train` (its --cov-floor-deg keeps covariances well conditioned) or get "
                             f"a fresh copy of the file")
    return GaussianMixture(means, covars, weights, metadata)


def covariance_problem(covars: np.ndarray) -> str | None:
    """What is wrong with the first unusable covariance of a mixture (K, D, D), or None: one that is not positive
    definite, or whose condition number exceeds :data:`MAX_COVARIANCE_CONDITION` (eigenvalues of its symmetric
    part, float64; a Cholesky alone lets a matrix with eigenvalue −1e-17 through)."""
    eig = np.linalg.eigvalsh(0.5 * (covars + np.swapaxes(covars, 1, 2)))   # (K, D), ascending
    for k, (lo, hi) in enumerate(zip(eig[:, 0], eig[:, -1])):
        if not lo > 0:
            return f"the covariance of component {k} is not positive definite (smallest eigenvalue {lo:.3g})"
        if hi / lo > MAX_COVARIANCE_CONDITION:
            return (f"the covariance of component {k} is too ill-conditioned (condition number {hi / lo:.3g}, more "
                    f"than {MAX_COVARIANCE_CONDITION:.0e}: eigenvalues from {lo:.3g} to {hi:.3g})")
    return None


def _fields(obj: Any) -> dict[str, Any]:
    """The attribute mapping of a loaded pickle: a dict, or an object's state / __dict__ (old sklearn GMMs)."""
    if isinstance(obj, dict):
        return obj
    for attr in ("_state", "state", "__dict__"):
        value = getattr(obj, attr, None)
        if isinstance(value, dict):
            return value
    return {}


def gmm_from_mapping(obj: Any, source: str = "<mixture>") -> GaussianMixture:
    """A mixture from a SMPLify-style dict (means/covars/weights) or sklearn attributes (means_/covars_/weights_)."""
    f = _fields(obj)
    for means_key, covars_keys, weights_key in (("means", ("covars",), "weights"),
                                                ("means_", ("covars_", "covariances_"), "weights_")):
        covars_key = next((c for c in covars_keys if c in f), None)
        if means_key in f and covars_key and weights_key in f:
            return _checked(f[means_key], f[covars_key], f[weights_key],
                            {"source": source, "format": "smplify-pkl"}, source)
    raise ModelFileError(
        f"{source}: not a Gaussian mixture: expected keys means/covars/weights (SMPLify gmm_08.pkl) or "
        f"means_/covars_/weights_ (sklearn), found {sorted(map(str, f))[:10]}")


def load_gmm(path: str | Path) -> GaussianMixture:
    """Read a pose-prior mixture: SMPLify's ``.pkl`` (via `fitting.safe_pickle`) or fitloop's ``.npz``."""
    hint = "train one with `fitloop prior train` or pass the path of SMPLify's gmm_08.pkl"
    path = require_file(path, "pose-prior file", hint)
    if path.suffix == ".pkl":
        from fitting import safe_pickle
        return gmm_from_mapping(safe_pickle.load(path), str(path))
    arrays, _ = read_npz(path, "pose-prior file", hint)
    missing = {"means", "covars", "weights"} - set(arrays)
    if missing:
        if "rec_sigma" in arrays:   # a VAE prior where a Gaussian mixture is needed (fitting.priors.load_pose_prior
            raise ModelFileError(  # reads both)
                f"{path}: a VAE pose prior, and this needs the Gaussian-mixture prior (SMPLify's and the trainer's "
                f"GMM term): give a mixture .npz (fitloop prior train without --vae) or SMPLify's gmm_08.pkl")
        what = " (it looks like a body model)" if "v_template" in arrays else ""
        raise ModelFileError(f"{path}: the .npz lacks {sorted(missing)}{what}; is it a pose prior?")
    try:
        metadata = json.loads(str(arrays["metadata"].reshape(-1)[0])) if "metadata" in arrays else {}
    except (json.JSONDecodeError, IndexError) as err:
        raise ModelFileError(f"{path}: metadata is not JSON ({err}); {DAMAGED}") from None
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: metadata is JSON {type(metadata).__name__}, expected an object; {DAMAGED}")
    return _checked(arrays["means"], arrays["covars"], arrays["weights"], metadata, str(path))


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` atomically (temp file, then rename), members sorted and with fixed zip
    timestamps, so the same arrays always give the same bytes; no pickles (``allow_pickle=False``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
                zf.writestr(info, buf.getvalue())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a folder in the way, an interrupt: no temporary file left behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def save_gmm(gmm: GaussianMixture, path: str | Path) -> None:
    """Write ``gmm`` as fitloop's ``.npz`` atomically and byte-reproducibly (:func:`write_npz`). Metadata must be
    JSON-serialisable."""
    metadata = {"format": NPZ_FORMAT, "format_version": NPZ_FORMAT_VERSION, **gmm.metadata}
    write_npz(path, {"means": gmm.means.astype(np.float64), "covars": gmm.covars.astype(np.float64),
                     "weights": gmm.weights.astype(np.float64),
                     "metadata": np.array(json.dumps(metadata, sort_keys=True, indent=1))})


class MaxMixturePrior(torch.nn.Module):
    """SMPLify-X/SPIN's Gaussian-mixture pose prior, "merged" (max-mixture) form, per example.

    ``E(θ) = min_k [ ½ (θ−μ_k)ᵀ Σ_k⁻¹ (θ−μ_k) − log(w_k / ((2π)^{D/2} · sqrt|Σ_k| / min_j sqrt|Σ_j|)) ]``

    with D = 69 for the SMPL body pose. Precisions are inverted in float64 numpy, as in SMPLify-X. The constant
    term is computed in log space (``log w_k − (D/2)·log 2π − ½(log|Σ_k| − min_j log|Σ_j|)``): the same
    number, but no determinant of a 69×69 covariance can under- or overflow. SPIN weights it by 4.78².
    """

    means: torch.Tensor
    precisions: torch.Tensor
    log_nll_weights: torch.Tensor
    log_weights: torch.Tensor
    log_norm: torch.Tensor

    def __init__(self, gmm: GaussianMixture, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        d = gmm.dim
        precisions = np.linalg.inv(gmm.covars)
        logdets = np.linalg.slogdet(gmm.covars)[1]
        log_nll_weights = np.log(gmm.weights) - 0.5 * d * math.log(2 * math.pi) - 0.5 * (logdets - logdets.min())
        self.register_buffer("means", torch.as_tensor(gmm.means, dtype=dtype))
        self.register_buffer("precisions", torch.as_tensor(precisions, dtype=dtype))
        self.register_buffer("log_nll_weights", torch.as_tensor(log_nll_weights, dtype=dtype))
        # For the exact mixture density (evaluation, not SMPLify): log w_k and −½(D·log 2π + log|Σ_k|).
        self.register_buffer("log_weights", torch.as_tensor(np.log(gmm.weights / gmm.weights.sum()), dtype=dtype))
        self.register_buffer("log_norm", torch.as_tensor(-0.5 * (d * math.log(2 * math.pi) + logdets), dtype=dtype))
        self.metadata = dict(gmm.metadata)

    @classmethod
    def from_file(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "MaxMixturePrior":
        """Load a SMPLify ``gmm_08.pkl`` or a fitloop ``.npz`` prior (see :func:`load_gmm`); it must be a mixture
        over the `BODY_POSE_DIM` values of SMPL's body pose."""
        gmm = load_gmm(path)
        if gmm.dim != BODY_POSE_DIM:
            raise ModelFileError(f"{path}: a mixture over {gmm.dim} values; SMPLify's pose prior is over the "
                                 f"{BODY_POSE_DIM} body-pose values of SMPL's 23 body joints; pass such a prior "
                                 f"(fitting/data/pose_prior_open.npz, SMPLify's gmm_08.pkl)")
        return cls(gmm, dtype=dtype)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def _quadratic(self, body_pose: torch.Tensor) -> torch.Tensor:
        """½ (θ−μ_k)ᵀ Σ_k⁻¹ (θ−μ_k) for every example and component: (B, D) -> (B, K)."""
        if body_pose.ndim != 2 or body_pose.shape[1] != self.dim:
            raise ValueError(f"body_pose must be (B, {self.dim}) axis-angle, got {tuple(body_pose.shape)}")
        diff = body_pose.to(self.means.dtype).unsqueeze(1) - self.means  # (B, K, D)
        # (K, B, D) @ (K, D, D): Σ_j P_kij d_bkj as a batched matmul (several times faster than einsum on CPU)
        prec_diff = torch.bmm(diff.transpose(0, 1), self.precisions.transpose(1, 2)).transpose(0, 1)
        return 0.5 * (prec_diff * diff).sum(dim=-1)

    def component_energies(self, body_pose: torch.Tensor) -> torch.Tensor:
        """Per-component energies (B, K) of body poses (B, 69), axis-angle radians; the prior is their min."""
        return self._quadratic(body_pose) - self.log_nll_weights

    def forward(self, body_pose: torch.Tensor) -> torch.Tensor:
        """Max-mixture energy (B,) of body poses (B, 69), axis-angle radians (dimensionless, lower = likelier)."""
        return self.component_energies(body_pose).min(dim=1).values

    def log_likelihood(self, body_pose: torch.Tensor) -> torch.Tensor:
        """Exact mixture log density (B,) of body poses (B, 69), nats; for evaluating a prior, not for fitting."""
        return torch.logsumexp(self.log_weights + self.log_norm - self._quadratic(body_pose), dim=1)


# --- Angle and shape priors ---------------------------------------------------------------------------------
# SMPLify's exp penalty on bending elbows and knees the unnatural way: (joint, axis, sign). In the T-pose a left
# elbow bends naturally with a negative rotation about y (forearm +X -> +Z), a right elbow with a positive one,
# and knees with a positive rotation about x (shin -Y -> -Z); the penalty exp(sign·θ)² is small for those.
ANGLE_PRIOR_TERMS: tuple[tuple[str, int, float], ...] = (
    ("left_elbow", 1, 1.0), ("right_elbow", 1, -1.0), ("left_knee", 0, -1.0), ("right_knee", 0, -1.0))
# Indices into the (B, 69) body pose: 3·(joint − 1) + axis -> 52, 55, 9, 12 (SPIN's 55, 58, 12, 15 minus 3).
ANGLE_PRIOR_INDICES: tuple[int, ...] = tuple(3 * (SMPL_JOINT_INDEX[j] - 1) + a for j, a, _ in ANGLE_PRIOR_TERMS)
ANGLE_PRIOR_SIGNS: tuple[float, ...] = tuple(s for _, _, s in ANGLE_PRIOR_TERMS)


def angle_prior(body_pose: torch.Tensor) -> torch.Tensor:
    """SMPLify's angle prior (B,): Σ over elbows and knees of exp(sign·θ)², body pose (B, 69) axis-angle radians.

    Equals SPIN's ``angle_prior(pose).sum(dim=-1)``; SPIN weights it by 15.2².
    """
    signs = torch.tensor(ANGLE_PRIOR_SIGNS, dtype=body_pose.dtype, device=body_pose.device)
    return torch.exp(body_pose[:, list(ANGLE_PRIOR_INDICES)] * signs).pow(2).sum(dim=-1)


def shape_prior(betas: torch.Tensor) -> torch.Tensor:
    """Quadratic shape prior (B,): ‖β‖² of shape coefficients (B, NB); SPIN weights it by 5²."""
    return betas.pow(2).sum(dim=-1)


# --- Which prior a file holds -------------------------------------------------------------------------------
POSE_PRIOR_KINDS = ("gmm", "vae")


def pose_prior_kind(path: str | Path) -> str:
    """"vae" for a fitloop VAE prior ``.npz`` (`fitting.vposer`), "gmm" for anything else (a mixture ``.npz`` or
    SMPLify's ``.pkl``; `load_gmm` says what is wrong with a file that is neither)."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        try:
            with zipfile.ZipFile(path) as zf:
                if "rec_sigma.npy" in zf.namelist():
                    return "vae"
        except (OSError, zipfile.BadZipFile):
            pass
    return "gmm"


def resolve_pose_prior(name_or_path: str | Path | None) -> Path:
    """The file of a pose prior given by name (``gmm``, ``vae``: :data:`SHIPPED_PRIORS`), by path, or None (the
    default, :data:`DEFAULT_PRIOR`)."""
    if name_or_path is None:
        return DEFAULT_PRIOR
    return SHIPPED_PRIORS.get(str(name_or_path), Path(name_or_path))


def load_pose_prior(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The pose prior a file holds, for SMPLify: `MaxMixturePrior` (a mixture ``.npz`` or SMPLify's ``gmm_08.pkl``)
    or `fitting.vposer.VAEPosePrior` (a fitloop VAE ``.npz``). Both map body poses (B, 69) to energies (B,) and
    carry ``metadata``."""
    if pose_prior_kind(path) == "vae":
        from fitting.vposer import VAEPosePrior
        return VAEPosePrior.from_file(path)
    return MaxMixturePrior.from_file(path, dtype=dtype)
