"""A learned start for fits that have no estimate of the person: the pose lifted from the 2D keypoints.

SMPLify from the mean pose (SPIN's static fits, `fitting.smplify.mean_pose_start`) must first find the person's
heading and then walk every limb from a T-pose to its keypoints under a strong, slowly relaxed prior
(`SMPLify.prior_schedule`) so that limbs far from their keypoints do not settle bent the wrong way in depth: most of
a mean-start fit's iterations go there. A start that is already near the person needs a short schedule.

**The network** (:class:`PoseLifter`) is the simple baseline of Martinez et al. (ICCV 2017, "A simple yet effective
baseline for 3d human pose estimation"): a linear layer, ``blocks`` residual blocks of two (linear, layer norm,
ReLU) layers, a linear head. Its input is the 49 SPIN keypoints (`core.joints`), each (x, y, seen): the seen ones
centred on their bounding box and divided by its longer side (so any camera, crop or image size gives the same
numbers, px or not), unseen ones zero. Its output is 24 rotations in Zhou et al.'s continuous 6D form
(`fitting.vposer.rotation_from_6d`): the global orientation in the camera's frame (x right, y down, z forward, as
SMPLify's poses) and SMPL's 23 body joints, local, relative to the body model's T-pose — SMPL's pose layout, so the
start serves every body-model family SMPLify fits.

**Training** (`assets.lift_train`): the pose prior's CMU poses (its held-out subjects never read), any heading,
camera pitch and roll, betas ~ N(0, 1), a perspective camera from near to nearly orthographic; OpenPose, dataset
or both keypoint sets, each joint dropped with a random rate and moved by Gaussian noise of a random size. The
loss is the rotations' and the root-relative joints' squared error.

File: ``.npz`` (no pickles) with the network's tensors by state-dict name and a JSON ``metadata`` string (format,
architecture, training provenance); :data:`DEFAULT_LIFTER` is the open model's, trained by `fitloop prior train
--lifter`.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.errors import ModelFileError
from core.joints import NUM_JOINTS
from fitting.files import DAMAGED, read_npz
from fitting.skeleton import matrix_to_axis_angle
from fitting.vposer import rotation_from_6d

LIFTER_FORMAT = "fitloop-pose-lifter"
LIFTER_FORMAT_VERSION = 1
DEFAULT_LIFTER = Path(__file__).resolve().parent / "data" / "pose_lifter_open.npz"
LIFTED_JOINTS = 24          # the global orientation and SMPL's 23 body joints: pose (B, 72)


def lifter_input(keypoints: Tensor, seen: Tensor) -> Tensor:
    """The network's input (B, 49, 3) for keypoints (B, 49, ≥2) and a seen mask (B, 49) (0/1 or bool): per
    joint (x, y) centred on the seen joints' bounding box and divided by its longer side, and the seen flag;
    unseen joints are zeros. An example with no seen joint is all zeros."""
    seen = seen.to(keypoints.dtype)
    xy = keypoints[..., :2]
    on = seen[..., None] > 0
    big = torch.finfo(keypoints.dtype).max
    low = torch.where(on, xy, big).amin(1)
    high = torch.where(on, xy, -big).amax(1)
    some = on.any(1)
    centre = torch.where(some, (low + high) / 2, torch.zeros_like(low))
    side = torch.where(some, high - low, torch.ones_like(low)).amax(-1).clamp_min(1e-6)
    xy = (xy - centre[:, None]) / side[:, None, None]
    return torch.cat([xy * seen[..., None], seen[..., None]], -1)


class PoseLifter(nn.Module):
    """Keypoints -> SMPL-layout pose; see the module docstring. ``hidden``, ``blocks``: the architecture."""

    def __init__(self, hidden: int = 512, blocks: int = 2):
        super().__init__()
        self.hidden, self.num_blocks = hidden, blocks
        self.inp = nn.Linear(NUM_JOINTS * 3, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU()) for _ in range(blocks))
        self.out = nn.Linear(hidden, LIFTED_JOINTS * 6)

    def forward(self, x: Tensor) -> Tensor:
        """Rotation matrices (B, 24, 3, 3) for inputs (B, 49, 3) (`lifter_input`)."""
        h = torch.relu(self.inp(x.flatten(1)))
        for block in self.blocks:
            h = h + block(h)
        return rotation_from_6d(self.out(h).view(-1, LIFTED_JOINTS, 6))

    @torch.no_grad()
    def lift(self, keypoints: Tensor, seen: Tensor) -> Tensor:
        """Pose (B, 72) axis-angle radians [global orientation in the camera frame, body pose] for keypoints
        (B, 49, ≥2) and which of them are seen (B, 49), in the keypoints' dtype."""
        weight = self.inp.weight
        x = lifter_input(keypoints.to(weight.dtype), seen)
        rot = self(x)
        return matrix_to_axis_angle(rot.reshape(-1, 3, 3)).reshape(-1, 3 * LIFTED_JOINTS).to(keypoints.dtype)


def save_pose_lifter(model: PoseLifter, metadata: dict[str, Any], path: str | Path) -> None:
    """Write a lifter ``.npz`` atomically and byte-reproducibly (`fitting.priors.write_npz`)."""
    from fitting.priors import write_npz
    state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    meta = {"format": LIFTER_FORMAT, "format_version": LIFTER_FORMAT_VERSION, "hidden": model.hidden,
            "blocks": model.num_blocks, **metadata}
    write_npz(path, {**state, "metadata": np.array(json.dumps(meta, sort_keys=True, indent=1))})


def _read(path: str | Path, hint: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """The arrays of a lifter ``.npz`` and its metadata, None where the file is readable but no lifter."""
    arrays, _ = read_npz(path, "pose-lifter file", hint)
    try:
        meta = json.loads(str(arrays["metadata"].reshape(-1)[0]))
    except (KeyError, IndexError, json.JSONDecodeError):
        return arrays, None
    return arrays, (meta if isinstance(meta, dict) and meta.get("format") == LIFTER_FORMAT else None)


def lifter_metadata(path: str | Path) -> dict[str, Any] | None:
    """The metadata of a lifter ``.npz`` (architecture, training settings, the poses' provenance), or None when the
    file is readable but no lifter (a pose prior, say). `ModelFileError` for a missing or damaged file."""
    return _read(path)[1]


def lifter_on(device: torch.device, lifter: PoseLifter | None = None) -> PoseLifter:
    """The lifter a fitter on ``device`` uses: the shipped one (``None``), or the given one, copied there when it
    lives elsewhere (the caller's stays where it is)."""
    if lifter is None:
        return load_pose_lifter(device=device)
    return lifter if next(lifter.parameters()).device == device else copy.deepcopy(lifter).to(device)


def load_pose_lifter(path: str | Path = DEFAULT_LIFTER, device: str | torch.device = "cpu") -> PoseLifter:
    """Read a lifter ``.npz`` (`save_pose_lifter`) onto ``device``, in eval mode. `ModelFileError` (one line) for
    a missing, damaged or foreign file."""
    hint = "train one with `fitloop prior train --lifter` or use fitting/data/pose_lifter_open.npz"
    arrays, meta = _read(path, hint)
    if meta is None:
        raise ModelFileError(f"{path}: not a fitloop pose lifter (no {LIFTER_FORMAT} metadata); {hint}")
    try:
        model = PoseLifter(int(meta["hidden"]), int(meta["blocks"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: the pose lifter's architecture is unreadable ({err}); {DAMAGED}") from None
    expected = model.state_dict()
    state = {k: torch.as_tensor(np.asarray(arrays[k], dtype=np.float32)) for k in expected if k in arrays}
    wrong = [k for k, v in expected.items() if k not in state or state[k].shape != v.shape]
    if wrong:
        raise ModelFileError(f"{path}: pose-lifter tensors missing or of the wrong shape: {wrong[:4]}; {DAMAGED}")
    model.load_state_dict(state)
    return model.to(device).eval()
