"""SMPL-format body models behind one loader, with SPIN's 49 canonical joints as output.

`load_body_model(source)` accepts
  * ``"open"`` / ``"open-small"``: fitloop's open model built from Anny (fitting/data, see docs/open_model.md);
  * ``"open-smplx"`` / ``"open-smplx-small"``: the open whole-body model in SMPL-X's layout (family ``smplx``:
    55 joints, expressions, landmarks; its own keypoint regressors and vertex picks, as the open model's);
  * a path to a real SMPL, SMPL-H or SMPL-X file, ``.pkl`` (read with `fitting.safe_pickle`: no chumpy needed,
    nothing in the file is run) or ``.npz`` (read with ``allow_pickle=False``; object entries are skipped).
Every array the model is made of is checked against its family's layout (`check_model_arrays`: shapes, dtypes,
finite values, faces and tree indices in range) before it is used: a damaged or foreign file is one
`ModelFileError` naming the file, the array, its shape and the expected one.
The mesh is evaluated by the `smplx` package's own layers (linear blend skinning as SPIN runs it); fitloop adds
the mapping from the layer's output to the canonical joints of `core.joints`:

    joints49 = M @ concat(kinematic24, R @ posed_vertices)

where ``R`` (K, V) holds keypoint rows (vertex picks, SPIN's ``J_regressor_extra``, or the open model's derived
regressors) and the mixing matrix ``M`` (49, 24 + K) picks or averages them. Every model reports, per canonical
joint, where it comes from (`BodyModel.joint_source`).

Conventions at the boundary (all tensors batch-first, any batch size):
  betas (B, NB) PCA shape coefficients in units of std; body_pose (B, 69) axis-angle of SMPL joints 1–23 in
  radians (or (B, 23, 3, 3) rotation matrices with ``pose2rot=False``); global_orient (B, 3) / (B, 1, 3, 3);
  transl (B, 3) metres or None. Outputs are metres in the model frame: Y up, the body faces +Z, its left is +X.
  SMPL-H and SMPL-X take the first 21 body joints of that pose (SMPL's two hand joints are dropped) and keep
  hands flat, jaw, eyes and expression at zero.

A model is known by its content: ``BodyModel.model_id`` is ``<family>:<16 hex digits>`` (`model_content_id`),
a digest of the arrays that define its mesh and joints, so the same model as .pkl or .npz, renamed or re-saved
keeps its id (and its fits and checkpoints), and a different model gets another (docs/body_models.md).
"""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from core.errors import ModelFileError
from core.joints import (
    CANONICAL_ALIASES,
    CANONICAL_FROM_KINEMATIC,
    H36M_JOINTS,
    JOINT_NAMES,
    NUM_JOINTS,
    SMPL_JOINT_INDEX,
    SMPL_JOINT_NAMES,
)
from core.model_id import MODEL_ID_PATTERN  # noqa: F401 (a body model's id, `model_content_id`'s form)
from core.spin import NUM_BETAS, SPIN_H36M_REGRESSOR_ROWS
from fitting import safe_pickle
from fitting.digest import content_digest
from fitting.files import DAMAGED, looks_like, read_head, read_npy, read_npz, require_file

DATA_DIR = Path(__file__).resolve().parent / "data"
OPEN_MODELS = {"open": DATA_DIR / "open_body.npz", "open-small": DATA_DIR / "open_body_small.npz",
               "open-smplx": DATA_DIR / "open_smplx.npz", "open-smplx-small": DATA_DIR / "open_smplx_small.npz"}
NUM_POSE_BASIS = 207  # 23 joints x 9 rotation-matrix entries: the SMPL pose-corrective basis smplx expects

# SPIN's J_regressor_extra.npy rows (9 x 6890), in order.
SPIN_EXTRA_NAMES = ("Right Hip", "Left Hip", "Neck (LSP)", "Top of Head (LSP)", "Pelvis (MPII)",
                    "Thorax (MPII)", "Spine (H36M)", "Jaw (H36M)", "Head (H36M)")
# smplx's vertex_ids keys for the canonical joints that SPIN takes from single vertices.
VERTEX_PICKS = {"OP Nose": "nose", "OP REye": "reye", "OP LEye": "leye", "OP REar": "rear", "OP LEar": "lear",
                "OP LBigToe": "LBigToe", "OP LSmallToe": "LSmallToe", "OP LHeel": "LHeel",
                "OP RBigToe": "RBigToe", "OP RSmallToe": "RSmallToe", "OP RHeel": "RHeel"}
# Without J_regressor_extra, the 9 dataset joints of a real model are approximated from kinematic joints
# (weights over SMPL joint names) and the crown of the head ("head_top", found on the mesh at load).
APPROXIMATE_EXTRAS: dict[str, dict[str, float]] = {
    "Right Hip": {"right_hip": 1.0}, "Left Hip": {"left_hip": 1.0},
    "Neck (LSP)": {"neck": 0.5, "head": 0.5}, "Top of Head (LSP)": {"head_top": 1.0},
    "Pelvis (MPII)": {"pelvis": 1.0}, "Thorax (MPII)": {"neck": 1.0}, "Spine (H36M)": {"spine2": 1.0},
    "Jaw (H36M)": {"neck": 0.5, "head": 0.5}, "Head (H36M)": {"head": 0.5, "head_top": 0.5},
}
REQUIRED_KEYS = ("v_template", "shapedirs", "J_regressor", "weights", "kintree_table", "f")
# The joints of each family's kinematic tree (SMPL: 24; SMPL-H: 22 body + 2 x 15 hand; SMPL-X: 22 body, jaw, two
# eyes, 2 x 15 hand); `KINEMATIC_LAYER_JOINTS` below indexes into them.
TREE_JOINTS = {"smpl": 24, "open": 24, "smplh": 52, "smplx": 55}
FAMILY_NAMES = {"smpl": "SMPL", "open": "open", "smplh": "SMPL-H", "smplx": "SMPL-X"}
HAND_POSE_DIM = 45  # 15 MANO hand joints x axis-angle: SMPL-H/SMPL-X hand means and PCA components
# A template wider than this is not in metres (SMPL's spans ~1.7 m; a giant's would still be under 4): millimetres
# once gave fits 76 m off with a plausible-looking loss
MAX_TEMPLATE_EXTENT_M = 10.0
MIN_SMPLX_SHAPE_DIRS = 20  # smplx reads SMPL-X expressions from shapedirs past the shape space: at least 10 + 10
# The layout of a model file, as the SMPL release and smplx's loaders have it: per array, its shape in symbols
# (V vertices, J tree joints, NB shape coefficients, 9(J-1) pose-corrective bases, F faces, ...) and
# whether it holds real numbers ("float") or indices ("index"). Checked in this order by `check_model_arrays`;
# kintree_table first, so that a file of another family is named by its joint count.
MODEL_LAYOUT: dict[str, tuple[tuple[int | str, ...], str]] = {
    "kintree_table": ((2, "J"), "index"), "v_template": (("V", 3), "float"), "f": (("F", 3), "index"),
    "shapedirs": (("V", 3, "NB"), "float"), "posedirs": (("V", 3, "9(J-1)"), "float"),
    "J_regressor": (("J", "V"), "float"), "weights": (("V", "J"), "float"),
}
HAND_LAYOUT: dict[str, tuple[tuple[int | str, ...], str]] = {
    "hands_componentsl": (("NH", HAND_POSE_DIM), "float"), "hands_componentsr": (("NH", HAND_POSE_DIM), "float"),
    "hands_meanl": ((HAND_POSE_DIM,), "float"), "hands_meanr": ((HAND_POSE_DIM,), "float"),
}
LANDMARK_LAYOUT: dict[str, tuple[tuple[int | str, ...], str]] = {  # SMPL-X's face landmarks (smplx poses them)
    "lmk_faces_idx": (("L",), "index"), "lmk_bary_coords": (("L", 3), "float"),
}
# The entries by which `detect_family` tells SMPL-H and SMPL-X files from SMPL's
FAMILY_ENTRIES: dict[str, tuple[str, ...]] = {"smplh": tuple(HAND_LAYOUT),
                                              "smplx": (*HAND_LAYOUT, *LANDMARK_LAYOUT)}
OPEN_LAYOUT: dict[str, tuple[tuple[int | str, ...], str]] = {  # the open model's own entries (assets/open_model.py)
    "keypoint_regressor": (("K", "V"), "float"), "keypoint_names": (("K",), "str"),
    "vertex_ids": (("NI",), "index"), "vertex_ids_names": (("NI",), "str"),
}
OPTIONAL_OPEN_LAYOUT: dict[str, tuple[tuple[int | str, ...], str]] = {
    "h36m_regressor": ((len(H36M_JOINTS), "V"), "float"), "mean_pose": ((3 * len(SMPL_JOINT_NAMES),), "float"),
}
# The arrays of a model file that define its mesh and kinematic joints, in the order they enter its id.
IDENTITY_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")

# The layer joint behind each of SMPL's 24 kinematic joints (`core.joints.SMPL_JOINT_NAMES`), per family. SMPL-H
# and SMPL-X share SMPL's first 22 joints; SMPL's two hand joints are approximated by the middle-finger bases
# (MANO finger order: index, middle, pinky, ring, thumb; SMPL-X puts jaw and eyes, 22-24, before the hands).
KINEMATIC_LAYER_JOINTS: dict[str, tuple[int, ...]] = {
    "smpl": tuple(range(24)), "open": tuple(range(24)),
    "smplh": tuple(range(22)) + (25, 40), "smplx": tuple(range(22)) + (28, 43),
}


@dataclass(frozen=True)
class BodyModelOutput:
    """A posed batch. vertices (B, V, 3), joints (B, 49, 3) canonical, kinematic_joints (B, 24, 3); metres."""

    vertices: Tensor
    joints: Tensor
    kinematic_joints: Tensor


def keep_tree_on_host(layer: nn.Module) -> None:
    """Keep a smplx layer's kinematic tree (``parents``) on the CPU whatever device the layer moves to.

    smplx's `batch_rigid_transform` (smplx/lbs.py, ``transform_chain[parents[i]]``) indexes a Python list with
    entries of ``parents`` once per joint: on CUDA, with ``parents`` on the GPU, each is a host sync (23 per SMPL
    forward, 46 per training step: `fitloop bench train-step --count-syncs`). The tree is host data; as a plain
    CPU attribute instead of a buffer it stays on the host (a CPU index tensor indexes CUDA tensors). Not in the
    layer's state_dict any more (no fitloop file stores a layer's state)."""
    parents = layer._buffers.pop("parents", None)
    if parents is not None:
        layer.parents = parents.cpu()


class BodyModel(nn.Module):
    """A smplx layer plus the (K, V) keypoint regressor and (49, 24 + K) mixer that give canonical joints.

    Stateless in the parameters: every call takes betas and pose for its own batch (see module docstring).
    """

    vertex_ids: dict[str, int] = {}  # the model's named vertices (smplx's table, or the open file's own)
    file_shape_directions: int = NUM_BETAS  # the file's shapedirs columns (SMPL-X: shape and expression together)

    def __init__(self, layer: nn.Module, *, family: str, name: str, model_id: str, faces: np.ndarray,
                 keypoint_names: list[str], keypoint_regressor: np.ndarray, mixer: np.ndarray,
                 joint_source: dict[str, str], h36m_regressor: np.ndarray | None, metadata: dict[str, Any]):
        super().__init__()
        keep_tree_on_host(layer)
        self.layer = layer
        self.family, self.name, self.model_id, self.metadata = family, name, model_id, metadata
        self.faces = np.asarray(faces, dtype=np.int64)
        self.keypoint_names = list(keypoint_names)
        self.joint_source = joint_source
        self.num_betas = int(layer.num_betas)
        self.num_vertices = int(layer.v_template.shape[0])
        dtype = layer.v_template.dtype
        # Only the vertices some keypoint row uses are gathered each call (a few hundred of ~10^4).
        cols = np.flatnonzero(np.abs(keypoint_regressor).sum(0) > 0)
        self.register_buffer("keypoint_cols", torch.as_tensor(cols, dtype=torch.long), persistent=False)
        self.register_buffer("keypoint_weights", torch.as_tensor(keypoint_regressor[:, cols], dtype=dtype),
                             persistent=False)
        self.register_buffer("mixer", torch.as_tensor(mixer, dtype=dtype), persistent=False)
        h36m = None if h36m_regressor is None else torch.as_tensor(h36m_regressor, dtype=dtype)
        self.register_buffer("h36m_regressor", h36m, persistent=False)

    def forward(self, betas: Tensor, body_pose: Tensor, global_orient: Tensor, transl: Tensor | None = None,
                *, pose2rot: bool = True) -> BodyModelOutput:
        if not pose2rot and self.family in ("smplh", "smplx"):
            vertices, layer_joints = self._rotmat_lbs(betas, body_pose, global_orient, transl)
        else:
            out = self.layer(**self._layer_inputs(betas, body_pose, global_orient, transl, pose2rot))
            vertices, layer_joints = out.vertices, out.joints
        joints, kinematic = self.canonical_joints(vertices, layer_joints)
        return BodyModelOutput(vertices=vertices, joints=joints, kinematic_joints=kinematic)

    def _rotmat_lbs(self, betas: Tensor, body_pose: Tensor, global_orient: Tensor,
                    transl: Tensor | None) -> tuple[Tensor, Tensor]:
        """SMPL-H / SMPL-X posed from rotation matrices: global_orient (B, 1, 3, 3), body_pose (B, >= 21, 3, 3)
        (SMPL's two hand slots past the 21 body joints are dropped); hands, jaw, eyes identity (flat hands, the
        layer's flat_hand_mean), expression 0. smplx's SMPLH/SMPLX forward reshapes its pose parts as axis-angle,
        so with ``pose2rot=False`` it cannot take matrices: this calls its `lbs` directly, as that forward does.
        Returns vertices (B, V, 3) and the tree's joints (B, J, 3), metres."""
        from smplx.lbs import lbs

        layer, batch = self.layer, betas.shape[0]
        body = body_pose.reshape(batch, -1, 3, 3)[:, :21]
        rest = torch.eye(3, dtype=betas.dtype, device=betas.device).expand(
            batch, TREE_JOINTS[self.family] - 22, 3, 3)
        rotmats = torch.cat([global_orient.reshape(batch, 1, 3, 3), body, rest], dim=1)
        vertices, joints = lbs(betas, rotmats, layer.v_template, layer.shapedirs[..., :betas.shape[-1]],
                               layer.posedirs, layer.J_regressor, layer.parents, layer.lbs_weights, pose2rot=False)
        if transl is not None:
            vertices, joints = vertices + transl[:, None], joints + transl[:, None]
        return vertices, joints

    def canonical_joints(self, vertices: Tensor, layer_joints: Tensor) -> tuple[Tensor, Tensor]:
        """The 49 canonical joints (B, 49, 3) and the 24 kinematic ones (B, 24, 3) of a posed mesh: vertices
        (B, V, 3) and the layer's joints (B, >= J, 3, its kinematic tree's first), metres. Also what the
        whole-body model (`fitting.wholebody_model`) takes its body points from."""
        kinematic = self._kinematic24(layer_joints)
        keypoints = torch.einsum("kc,bcd->bkd", self.keypoint_weights, vertices[:, self.keypoint_cols])
        joints = torch.einsum("jm,bmd->bjd", self.mixer, torch.cat([kinematic, keypoints], dim=1))
        return joints, kinematic

    def h36m_joints(self, vertices: Tensor) -> Tensor:
        """Human3.6M's 17 evaluation joints (B, 17, 3) from posed vertices (B, V, 3), in `core.joints.H36M_JOINTS`
        order (whatever order the regressor file had: see `read_spin_h36m_regressor`)."""
        if self.h36m_regressor is None:
            raise ModelFileError(
                f"{self.name}: no Human3.6M joint regressor; pass --h36m-regressor J_regressor_h36m.npy "
                f"(SPIN's data folder) with a real SMPL model")
        return torch.einsum("jv,bvd->bjd", self.h36m_regressor, vertices)

    @property
    def kinematic_layer_joints(self) -> tuple[int, ...]:
        """The layer joint (index into the layer's kinematic tree) behind each of the 24 kinematic joints."""
        return KINEMATIC_LAYER_JOINTS[self.family]

    @property
    def pose_layer_joints(self) -> tuple[int, ...]:
        """The layer joint each of the 24 axis-angle slots of a (B, 72) pose [global orient, body] drives, or -1:
        SMPL-H and SMPL-X have 21 body joints, so SMPL's hand slots 22 and 23 drive nothing there (their hand,
        jaw and eye joints stay at zero pose, flat hands)."""
        driven = 1 + int(self.layer.NUM_BODY_JOINTS)
        return tuple(j if j < driven else -1 for j in range(len(SMPL_JOINT_NAMES)))

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: name, family, vertices, faces, joints (49 canonical), kinematic_joints (the 24 SMPL
        joints it reports), tree_joints (its own kinematic tree's: SMPL 24, SMPL-H 52, SMPL-X 55), betas (fitted and
        stored: SPIN's 10), file_shape_directions (the file's shapedirs columns, of which the first ``betas`` are
        used), and where each canonical joint comes from."""
        return {"name": self.name, "family": self.family, "model_id": self.model_id,
                "vertices": self.num_vertices, "faces": int(self.faces.shape[0]), "joints": NUM_JOINTS,
                "kinematic_joints": len(SMPL_JOINT_NAMES), "tree_joints": int(self.layer.parents.shape[0]),
                "betas": self.num_betas, "file_shape_directions": self.file_shape_directions,
                "h36m_regressor": self.h36m_regressor is not None, "joint_source": self.joint_source}

    # -- internals ------------------------------------------------------------------------------------------
    def _layer_inputs(self, betas: Tensor, body_pose: Tensor, global_orient: Tensor, transl: Tensor | None,
                      pose2rot: bool) -> dict[str, Tensor]:
        batch = betas.shape[0]
        if pose2rot:
            body_pose = body_pose.reshape(batch, -1)
        inputs = {"betas": betas, "global_orient": global_orient, "transl": transl, "pose2rot": pose2rot}
        if self.family in ("smpl", "open"):
            inputs["body_pose"] = body_pose
            return inputs
        inputs["body_pose"] = body_pose[:, :63] if pose2rot else body_pose[:, :21]
        eye = torch.eye(3, dtype=betas.dtype, device=betas.device)

        def zeros(joints: int) -> Tensor:
            if pose2rot:
                return betas.new_zeros(batch, 3 * joints)
            return eye.expand(batch, joints, 3, 3)

        inputs["left_hand_pose"] = zeros(15)
        inputs["right_hand_pose"] = zeros(15)
        if self.family == "smplx":
            inputs.update(jaw_pose=zeros(1), leye_pose=zeros(1), reye_pose=zeros(1),
                          expression=betas.new_zeros(batch, self.layer.num_expression_coeffs))
        return inputs

    def _kinematic24(self, joints: Tensor) -> Tensor:
        if self.family in ("smpl", "open"):
            return joints[:, :24]
        return joints[:, list(self.kinematic_layer_joints)]


# --- reading files -------------------------------------------------------------------------------------------
def read_model_arrays(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The arrays of a model file, and the names of entries that were skipped (non-array or object entries).

    The file is read as what its first bytes say it is, a pickle or a zip (.npz), whatever its suffix: a release
    renamed (``basicModel_neutral_lbs_10_207_0_v1.0.0.pkl`` saved as .npz, an upper-case ``.PKL``) is still the
    same model. An .npz made by ``np.savez(**pickle.load(...))`` from a released .pkl keeps its sparse
    ``J_regressor`` as an object entry: such entries are read through the same guarded unpickler as a .pkl
    (`_object_entry`)."""
    path = require_file(path, "body-model file", "pass an SMPL, SMPL-H or SMPL-X .pkl/.npz, or one of the open "
                        "models: " + ", ".join(OPEN_MODELS))
    kind = looks_like(read_head(path))
    if kind.startswith("a pickle"):
        data = safe_pickle.load(path)
        if not isinstance(data, dict):
            raise ModelFileError(f"{path}: expected a pickled dict of arrays (an SMPL-family model), found "
                                 f"{type(data).__name__}; pass an SMPL, SMPL-H or SMPL-X model file")
        arrays, skipped = {}, []
        for key, value in data.items():
            value = np.asarray(value) if isinstance(value, (np.ndarray, str, int, float)) else None
            if value is None or value.dtype.hasobject:  # no model array is an object array
                skipped.append(str(key))
            else:
                arrays[str(key)] = value
        return arrays, skipped
    if kind.startswith("a zip"):
        arrays, skipped = read_npz(path, "body-model file")
        for key in list(skipped):
            value = _object_entry(path, key)
            if value is not None:
                arrays[key] = value
                skipped.remove(key)
        return arrays, skipped
    raise ModelFileError(f"{path}: not a body-model file: it is {kind}, where an SMPL-family model is a pickle "
                         f"(.pkl) or a zip of arrays (.npz); {DAMAGED}")


def _object_entry(path: Path, key: str) -> np.ndarray | None:
    """An .npz's object entry ``key`` read with the guarded unpickler (`fitting.safe_pickle`: allow-listed classes
    only, chumpy arrays and scipy sparse matrices as dense arrays): the numeric array it holds, or None when it
    holds something else."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        data = archive.read(f"{key}.npy")
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    read_header(stream)
    value = safe_pickle.loads(data[stream.tell():], f"{path}[{key!r}]")
    if isinstance(value, np.ndarray) and value.dtype.hasobject and value.size == 1:
        value = value.item()
    value = np.asarray(value) if isinstance(value, np.ndarray) else None
    return None if value is None or value.dtype.hasobject else value


def detect_family(arrays: dict[str, Any], path: Path, skipped: Sequence[str] = ()) -> str:
    """The family of a model file's arrays (`read_model_arrays`; ``skipped``: its entries that are no arrays):
    "smpl", "smplh", "smplx" or "open". `ModelFileError` for a file that lacks an entry every family has."""
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    unread = [key for key in missing if key in skipped]
    if unread:
        raise ModelFileError(f"{path}: {', '.join(unread)} {'is' if len(unread) == 1 else 'are'} no plain array "
                             f"(a chumpy expression, or another object only its own package can compute); load "
                             f"the file where chumpy runs (numpy < 1.24) and save every entry as a plain array, "
                             f"e.g. np.savez(out, **{{k: np.asarray(v) for k, v in model.items()}})")
    if missing:
        what = ("a pose prior (means, covars, weights)" if {"means", "covars", "weights"} <= set(arrays)
                else f"its keys are {sorted(arrays)[:8]}{' ...' if len(arrays) > 8 else ''}")
        raise ModelFileError(f"{path}: not an SMPL-family model, missing {missing} ({what}); pass an SMPL, SMPL-H "
                             f"or SMPL-X model file")
    if "keypoint_regressor" in arrays and "lmk_faces_idx" not in arrays:
        return "open"
    if "lmk_faces_idx" in arrays:  # SMPL-X, or the open model in SMPL-X's layout (`has_open_entries`)
        return "smplx"
    if "hands_componentsl" in arrays:
        return "smplh"
    return "smpl"


def _layout_error(path: Path, key: str, message: str) -> ModelFileError:
    return ModelFileError(f"{path}: {key} {message}; {DAMAGED}")


def _shape_text(pattern: tuple[int | str, ...], sizes: dict[str, int] | None = None) -> str:
    """A shape pattern as text, symbols replaced by their sizes where ``sizes`` has them: "(6890, 3)", "(V, 3)"."""
    dims = [str(sizes.get(d, d)) if sizes is not None and isinstance(d, str) else str(d) for d in pattern]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _check_layout(arrays: dict[str, Any], layout: dict[str, tuple[tuple[int | str, ...], str]],
                  sizes: dict[str, int], path: Path, family: str, required: bool = True) -> None:
    """Check each array of ``layout`` against its shape and kind, binding each symbol to the first size seen."""
    for key, (pattern, kind) in layout.items():
        if key not in arrays:
            if required:
                raise ModelFileError(f"{path}: the {FAMILY_NAMES[family]} model lacks {key}; {DAMAGED}")
            continue
        array = np.asarray(arrays[key])
        if array.ndim == len(pattern):
            for dim, size in zip(pattern, array.shape):
                if isinstance(dim, str) and dim not in sizes:
                    sizes[dim] = int(size)
        expected = _shape_text(pattern, sizes)
        if array.ndim != len(pattern) or _shape_text(array.shape) != expected:
            symbolic = any(isinstance(d, str) for d in pattern)
            raise _layout_error(path, key, f"has shape {_shape_text(array.shape)}, expected {expected}"
                                + (f" = {_shape_text(pattern)}" if symbolic else ""))
        wanted = {"float": "f", "index": "iu", "str": "US"}[kind]
        if array.dtype.kind not in wanted:
            words = {"float": "floating point", "index": "integers", "str": "strings"}[kind]
            raise _layout_error(path, key, f"has dtype {array.dtype}, expected {words}")
        if kind == "float" and not np.isfinite(array).all():
            bad = np.argwhere(~np.isfinite(array))[0]
            raise _layout_error(path, key, f"holds NaN or infinite values (the first at {tuple(int(i) for i in bad)})")


def _check_indices(path: Path, key: str, array: Any, bound: int, what: str) -> None:
    array = np.asarray(array)
    if array.size and (array.min() < 0 or array.max() >= bound):
        value = array.min() if array.min() < 0 else array.max()
        raise _layout_error(path, key, f"holds index {int(value)}, outside 0..{bound - 1} (the {bound} {what})")


def check_model_arrays(arrays: dict[str, Any], family: str, path: Path) -> None:
    """Check a model file's arrays against its family's layout (`MODEL_LAYOUT` and the family's own entries):
    shapes, dtypes, finite values, faces and landmark faces within the mesh, a kinematic tree whose parents come
    before their children (smplx's skinning needs it) and the joint count of the family (`TREE_JOINTS`).
    Raises `ModelFileError` naming the file, the array, its shape and the expected one."""
    joints = TREE_JOINTS[family]
    tree = np.asarray(arrays["kintree_table"])
    if tree.ndim == 2 and tree.shape[0] == 2 and tree.shape[1] != joints:
        other = [f for f, n in TREE_JOINTS.items() if n == tree.shape[1] and f != "open"]
        lacks = [key for key in FAMILY_ENTRIES.get(other[0], ()) if key not in arrays] if other else []
        raise ModelFileError(f"{path}: kintree_table has shape {tree.shape}: {tree.shape[1]} joints, but an "
                             f"{FAMILY_NAMES[family]} model has {joints}"
                             + (f" ({tree.shape[1]} is the joint count of {FAMILY_NAMES[other[0]]}, whose files "
                                f"also hold {', '.join(FAMILY_ENTRIES[other[0]])}: this one lacks "
                                f"{', '.join(lacks)})" if lacks else "")
                             + "; pass a complete SMPL, SMPL-H or SMPL-X model file")
    sizes = {"J": joints, "9(J-1)": 9 * (joints - 1)}
    layout = dict(MODEL_LAYOUT)
    if family == "open" and "posedirs" not in arrays:  # the open model has no pose correctives
        layout.pop("posedirs")
    _check_layout(arrays, layout, sizes, path, family)
    num_vertices = sizes["V"]
    if num_vertices == 0 or sizes["F"] == 0:
        raise _layout_error(path, "v_template" if num_vertices == 0 else "f", "is empty")
    extent = float(np.ptp(np.asarray(arrays["v_template"], dtype=np.float64), axis=0).max())
    if extent > MAX_TEMPLATE_EXTENT_M:
        raise _layout_error(path, "v_template", f"spans {extent:.4g} across; SMPL-family models are in metres (a "
                            f"body ~1.7 m): a template in millimetres or centimetres fits nothing (divide it by "
                            f"1000 or 100, and shapedirs and posedirs with it)")
    if sizes["NB"] < NUM_BETAS:
        raise _layout_error(path, "shapedirs", f"has {sizes['NB']} shape directions; fitloop fits and stores "
                            f"{NUM_BETAS} betas, and every released SMPL-family file has at least {NUM_BETAS}")
    if family == "smplx" and sizes["NB"] < MIN_SMPLX_SHAPE_DIRS:
        raise _layout_error(path, "shapedirs", f"has {sizes['NB']} directions; an SMPL-X model has at least "
                            f"{MIN_SMPLX_SHAPE_DIRS} (10 shape + 10 expression)")
    _check_indices(path, "f", arrays["f"], num_vertices, "vertices")
    parents = np.asarray(arrays["kintree_table"]).astype(np.int64)[0]
    if 0 <= parents[0] < joints:
        raise _layout_error(path, "kintree_table", f"gives the root joint the parent {int(parents[0])} (the root's "
                            f"parent is -1, or 4294967295 in SMPL's release)")
    late = [j for j in range(1, joints) if not 0 <= parents[j] < j]
    if late:
        raise _layout_error(path, "kintree_table", f"gives joint {late[0]} the parent {int(parents[late[0]])}; "
                            f"each joint's parent must come before it")
    if family in ("smplh", "smplx"):
        _check_layout(arrays, HAND_LAYOUT, sizes, path, family)
    if family == "smplx":
        _check_layout(arrays, LANDMARK_LAYOUT, sizes, path, family)
        _check_indices(path, "lmk_faces_idx", arrays["lmk_faces_idx"], sizes["F"], "faces")
    if has_open_entries(arrays):
        _check_layout(arrays, OPEN_LAYOUT, sizes, path, family)
        _check_layout(arrays, OPTIONAL_OPEN_LAYOUT, sizes, path, family, required=False)
        _check_indices(path, "vertex_ids", arrays["vertex_ids"], num_vertices, "vertices")
        import smplx.vertex_ids
        missing = sorted(set(smplx.vertex_ids.vertex_ids["smplh"]) - {str(n) for n in arrays["vertex_ids_names"]})
        if missing:
            raise _layout_error(path, "vertex_ids_names", f"lacks {missing} (the vertices smplx's joint selector "
                                f"reads)")


def has_open_entries(arrays: dict[str, Any]) -> bool:
    """Whether a model file carries the open model's own keypoint regressor and vertex picks (`OPEN_LAYOUT`): the
    open models of both layouts (family "open", or "smplx" for the SMPL-X-layout one) do, real files do not."""
    return "keypoint_regressor" in arrays


def _parents(kintree_table: Any) -> np.ndarray:
    """(2, J) kinematic tree with the root's parent as -1, however the file spells it (SMPL's release: 2**32 - 1)."""
    tree = np.asarray(kintree_table).astype(np.int64)  # uint32 2**32 - 1 stays positive in int64
    parents = tree[0].copy()
    parents[(parents < 0) | (parents >= tree.shape[1])] = -1
    return np.stack([parents, tree[1]])


def model_content_id(family: str, arrays: dict[str, Any], keypoint_names: list[str], keypoint_regressor: np.ndarray,
                     mixer: np.ndarray) -> str:
    """A body model's id, ``<family>:<digest>``: the `fitting.digest.content_digest` of what defines its mesh and its
    49 joints, in this order: the family, `IDENTITY_KEYS` (the kinematic tree with its root's parent as -1;
    posedirs absent or all zero: "absent", as the open model's), then the keypoint rows over vertices (vertex picks,
    SPIN's J_regressor_extra when given, or the open model's regressors), their names, and the (49, 24 + K) mixer.

    Not in it: the file's name, format and float width (see `fitting.digest`), entries that do not change the
    body (SMPL-H/X hand PCA and means: hands are flat; SMPL-X landmarks; metadata), and the Human3.6M evaluation
    regressor (it changes no joint a fit is made of)."""
    entries: list[tuple[str, Any]] = [("family", family)]
    for key in IDENTITY_KEYS:
        value = arrays.get(key)
        if key == "kintree_table":
            value = _parents(value)
        elif key == "posedirs" and value is not None and not np.any(value):
            value = None
        entries.append((key, value))
    entries += [("keypoint_names", list(keypoint_names)), ("keypoint_regressor", keypoint_regressor),
                ("mixer", mixer)]
    return f"{family}:{content_digest(entries)}"


def read_regressor(path: str | Path, rows: int, num_vertices: int, what: str) -> np.ndarray:
    """A (rows, V) joint regressor over the mesh's vertices from a ``.npy`` file, as float64 (SPIN's
    ``J_regressor_extra.npy`` (9, V) and ``J_regressor_h36m.npy`` (17, V)). `ModelFileError` naming the file
    when it is not one float array of that shape with finite values."""
    array = read_npy(path, what)
    expected = (rows, num_vertices)
    if array.shape != expected or array.dtype.kind != "f":
        raise ModelFileError(f"{path}: a {array.dtype} array of shape {array.shape}, expected {expected} floating "
                             f"point for this {num_vertices}-vertex mesh; pass the {what} of this model")
    if not np.isfinite(array).all():
        raise ModelFileError(f"{path}: the {what} holds NaN or infinite values; {DAMAGED}")
    return array.astype(np.float64)


def read_spin_h36m_regressor(path: str | Path, num_vertices: int) -> np.ndarray:
    """SPIN's ``J_regressor_h36m.npy`` (17, V) with its rows put in `core.joints.H36M_JOINTS` order, float64.

    The file's rows are in SPIN's order, `core.spin.SPIN_H36M_REGRESSOR_ROWS` (left leg in rows 1-3, right leg in
    4-6); read in H36M_JOINTS order as they stand, every evaluation would mirror the legs."""
    rows = read_regressor(path, len(SPIN_H36M_REGRESSOR_ROWS), num_vertices,
                          "Human3.6M regressor file (SPIN's data/J_regressor_h36m.npy)")
    return rows[[SPIN_H36M_REGRESSOR_ROWS.index(name) for name in H36M_JOINTS]].astype(np.float64)


def _resolve_source(source: str | Path) -> Path:
    if str(source) in OPEN_MODELS:
        path = OPEN_MODELS[str(source)]
        if not path.is_file():
            raise ModelFileError(f"the open model file {path} is missing; rebuild it with `fitloop model build-open`")
        return path
    return Path(source)


def _head_top_vertex(arrays: dict[str, Any], path: Path) -> int:
    """The crown: the highest rest-pose vertex (Y up) among those skinned mostly to the head joint."""
    weights = np.asarray(arrays["weights"])
    v_template = np.asarray(arrays["v_template"])
    head = np.flatnonzero(weights[:, SMPL_JOINT_INDEX["head"]] > 0.5)
    if head.size == 0:
        raise ModelFileError(f"{path}: cannot find the head on this mesh (no vertex skinned mostly to joint 15); "
                             f"{DAMAGED}")
    return int(head[np.argmax(v_template[head, 1])])


def _build_layer(family: str, arrays: dict[str, Any], path: Path, vertex_ids: dict[str, int],
                 dtype: torch.dtype) -> nn.Module:
    import smplx
    from smplx.utils import Struct

    # smplx prints a warning about 10 shape coefficients on every SMPL construction; it says nothing useful here.
    with contextlib.redirect_stdout(io.StringIO()):
        return _construct_layer(smplx, Struct, family, dict(arrays), path, vertex_ids, dtype)


def _construct_layer(smplx, Struct, family: str, arrays: dict[str, Any], path: Path, vertex_ids: dict[str, int],
                     dtype: torch.dtype) -> nn.Module:
    if "posedirs" not in arrays:  # the open model has no pose correctives
        arrays["posedirs"] = np.zeros((arrays["v_template"].shape[0], 3, NUM_POSE_BASIS), dtype=np.float32)
    num_betas = NUM_BETAS
    common = dict(dtype=dtype, create_betas=False, create_global_orient=False, create_body_pose=False,
                  create_transl=False, vertex_ids=vertex_ids)
    if family in ("smpl", "open"):
        return smplx.SMPL(model_path=str(path), data_struct=Struct(**arrays), num_betas=num_betas, **common)
    hands = dict(use_pca=False, flat_hand_mean=True, create_left_hand_pose=False, create_right_hand_pose=False)
    if family == "smplh":
        return smplx.SMPLH(model_path=str(path), data_struct=Struct(**arrays), num_betas=num_betas, **common,
                           **hands)
    # smplx.SMPLX reads only from a file (with pickle enabled): hand it a clean copy holding plain arrays.
    common.pop("vertex_ids")
    with tempfile.TemporaryDirectory(prefix="fitloop-smplx-") as tmp:
        clean = Path(tmp) / "model.npz"
        np.savez(clean, **{k: v for k, v in arrays.items() if np.asarray(v).dtype != object})
        layer = smplx.SMPLX(model_path=str(clean), ext="npz", num_betas=num_betas, num_expression_coeffs=10,
                            create_expression=False, create_jaw_pose=False, create_leye_pose=False,
                            create_reye_pose=False, **common, **hands)
    # smplx.SMPLX hard-codes SMPL-X's vertex picks; the open SMPL-X-layout model has its own (for a real file the
    # two are the same)
    from smplx.vertex_joint_selector import VertexJointSelector
    layer.vertex_joint_selector = VertexJointSelector(vertex_ids=vertex_ids, use_hands=True, use_feet_keypoints=True)
    return layer


def load_body_model(source: str | Path = "open", *, joint_regressor_extra: str | Path | None = None,
                    h36m_regressor: str | Path | None = None, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> BodyModel:
    """Load a body model: ``"open"``, ``"open-small"``, or a real SMPL / SMPL-H / SMPL-X ``.pkl``/``.npz``.

    joint_regressor_extra: SPIN's ``J_regressor_extra.npy`` (9, V) for the dataset joints of a real SMPL; without
      it those joints are approximated (`APPROXIMATE_EXTRAS`) and `joint_source` says so.
    h36m_regressor: SPIN's ``J_regressor_h36m.npy`` (17, V), used only by evaluation; its rows, in SPIN's order,
      are put in `core.joints.H36M_JOINTS` order (`read_spin_h36m_regressor`). Given for the open model, it
      replaces the model's own regressor.
    """
    path = _resolve_source(source)
    arrays, skipped = read_model_arrays(path)
    family = detect_family(arrays, path, skipped)
    check_model_arrays(arrays, family, path)
    num_vertices = int(np.asarray(arrays["v_template"]).shape[0])
    metadata: dict[str, Any] = {}
    rows: list[tuple[str, np.ndarray]] = []  # keypoint rows over vertices
    source_of: dict[str, str] = {}

    def one_hot(vertex: int) -> np.ndarray:
        row = np.zeros(num_vertices, dtype=np.float64)
        row[vertex] = 1.0
        return row

    if has_open_entries(arrays):
        if joint_regressor_extra is not None:  # it would be ignored: the open model regresses every joint itself
            raise ModelFileError(f"{path}: the open model has its own regressors for SPIN's dataset joints; "
                                 f"{joint_regressor_extra} (J_regressor_extra, for a real SMPL's) does not apply: "
                                 f"leave it out")
        try:
            metadata = json.loads(str(arrays["metadata"])) if "metadata" in arrays else {}
        except json.JSONDecodeError as err:
            raise ModelFileError(f"{path}: metadata is not JSON ({err}); {DAMAGED}") from None
        if not isinstance(metadata, dict):
            raise ModelFileError(f"{path}: metadata is JSON {type(metadata).__name__}, expected an object; {DAMAGED}")
        names = [str(n) for n in arrays["keypoint_names"]]
        rows = list(zip(names, np.asarray(arrays["keypoint_regressor"], dtype=np.float64)))
        vertex_ids = {str(k): int(v) for k, v in zip(arrays["vertex_ids_names"], arrays["vertex_ids"])}
        source_of = {name: "open-model regressor" for name in names}
        h36m = arrays.get("h36m_regressor")  # stored in H36M_JOINTS order (assets/open_model.py H36M_ROWS)
        name = metadata.get("name", path.stem)
    else:
        import smplx.vertex_ids
        vertex_ids = smplx.vertex_ids.vertex_ids["smplx" if family == "smplx" else "smplh"]
        if max(vertex_ids.values()) >= num_vertices:
            raise ModelFileError(f"{path}: {num_vertices} vertices, fewer than the {FAMILY_NAMES[family]} mesh's "
                                 f"(smplx's {family} vertex ids reach {max(vertex_ids.values())}); pass a full "
                                 f"{FAMILY_NAMES[family]} model file")
        for joint, key in VERTEX_PICKS.items():
            rows.append((joint, one_hot(vertex_ids[key])))
            source_of[joint] = f"vertex {vertex_ids[key]}"
        if joint_regressor_extra is not None:
            extra = read_regressor(joint_regressor_extra, len(SPIN_EXTRA_NAMES), num_vertices,
                                   "joint regressor file (SPIN's data/J_regressor_extra.npy)")
            for joint, row in zip(SPIN_EXTRA_NAMES, extra):
                rows.append((joint, row))
                source_of[joint] = "J_regressor_extra"
        else:
            rows.append(("head_top", one_hot(_head_top_vertex(arrays, path))))
        h36m = None
        name = f"{family}:{path.name}"
    if h36m_regressor is not None:
        h36m = read_spin_h36m_regressor(h36m_regressor, num_vertices)

    keypoint_names = [n for n, _ in rows]
    kp_index = {n: len(SMPL_JOINT_NAMES) + i for i, n in enumerate(keypoint_names)}
    mixer = np.zeros((NUM_JOINTS, len(SMPL_JOINT_NAMES) + len(rows)), dtype=np.float64)
    for j, joint in enumerate(JOINT_NAMES):
        target = CANONICAL_ALIASES.get(joint, joint)
        if target in CANONICAL_FROM_KINEMATIC:
            mixer[j, SMPL_JOINT_INDEX[CANONICAL_FROM_KINEMATIC[target]]] = 1.0
            source_of.setdefault(joint, f"kinematic {CANONICAL_FROM_KINEMATIC[target]}")
        elif target in kp_index:
            mixer[j, kp_index[target]] = 1.0
            source_of[joint] = source_of[target]
        elif family != "open" and target in APPROXIMATE_EXTRAS:
            for part, weight in APPROXIMATE_EXTRAS[target].items():
                mixer[j, kp_index[part] if part in kp_index else SMPL_JOINT_INDEX[part]] = weight
            source_of[joint] = "approximate: " + " + ".join(f"{w:g}*{p}" for p, w in APPROXIMATE_EXTRAS[target].items())
        else:
            raise ModelFileError(f"{path}: no source for canonical joint {joint!r}")
    joint_source = {joint: source_of[joint] for joint in JOINT_NAMES}

    layer = _build_layer(family, arrays, path, vertex_ids, dtype)
    keypoint_regressor = np.stack([r for _, r in rows])
    model = BodyModel(
        layer, family=family, name=name,
        model_id=model_content_id(family, arrays, keypoint_names, keypoint_regressor, mixer),
        faces=np.asarray(arrays["f"]), keypoint_names=keypoint_names,
        keypoint_regressor=keypoint_regressor, mixer=mixer, joint_source=joint_source,
        h36m_regressor=None if h36m is None else np.asarray(h36m, dtype=np.float64), metadata=metadata)
    model.vertex_ids = {str(k): int(v) for k, v in vertex_ids.items()}   # named vertices (fingertips, ...)
    model.file_shape_directions = int(np.asarray(arrays["shapedirs"]).shape[-1])
    return model.to(device)
