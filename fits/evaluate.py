"""The one fit-vs-truth evaluation: MPJPE and PA-MPJPE (mm) of posed bodies against 3D ground truth.

Every "PA-MPJPE" fitloop reports is this one (`EVALUATION`): the fits table's (the trainer's metrics, the demo's
report), the network's (`training.evaluate`) and `fitloop bench smplify`'s. It is SPIN's Human3.6M protocol 2
(SPIN_REFERENCE §8.1):

* **The 14 joints** `core.joints.EVAL_J14` (SPIN's J14: the 12 LSP limb joints, Neck (LSP), Head (H36M)).
* **Of a posed body**: the body model's Human3.6M regressor on the mesh (`BodyModel.h36m_joints`, rows in
  `core.joints.H36M_JOINTS` order whatever order the file had), centred on its pelvis (H36M joint 0, "Pelvis
  (MPII)"). A body model without that regressor (a real SMPL loaded without SPIN's ``J_regressor_h36m.npy``) uses
  its canonical joints, centred on its canonical "Pelvis (MPII)".
* **Of the truth**, per sample: a ground-truth body (SMPL parameters; the synthetic truth files' true bodies) is
  posed with the same body model and taken as above (SPIN's 3DPW protocol), so both sides are the same kind of
  joint; otherwise its 3D joints (canonical layout, camera frame; Human3.6M's are its own joints, which the
  regressor is made to match), centred on "Pelvis (MPII)" or, where that is not annotated, the midpoint of the
  hips. All 14 joints must be annotated.
* **MPJPE** is the mean joint distance after that centring; **PA-MPJPE** after a per-example similarity Procrustes
  (scale, rotation, translation; `core.metrics`). Results per dataset and over all samples (``"all"``).

Fits are those of one body model (`BodyModel.model_id`; a table may hold several) and one frame (crop or image,
`fits.schema`: named, or the only one among the rows): the best fit per key as of a table version, posed with
that model. The truth's 3D joints are in the original image's camera, so an image-frame fit's global orientation
is compared as it is, and a crop-frame fit's is relative to SPIN's crop camera (off-centre people: a few degrees
apart; Procrustes removes that from PA-MPJPE, not from MPJPE). Pose (72,) axis-angle radians, betas (10,),
metres throughout.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from core.joints import EVAL_J14, H36M_JOINTS, JOINT_INDEX, indices
from core.metrics import mpjpe, pa_mpjpe
from fits.schema import NUM_BETAS, NUM_POSE
from fits.table import FitsTable, best_of
from fitting.body_model import BodyModel
from shards.reader import iter_shard, list_shards

# One line for reports and logs that show these numbers.
EVALUATION = ("SPIN's protocol: the 14 joints of core.joints.EVAL_J14 from the body model's Human3.6M regressor "
              "(its canonical joints without one), pelvis-centred; truth from the true body posed the same way, or "
              "from 3D joints centred on their pelvis; MPJPE after centring, PA-MPJPE after a similarity Procrustes")
NUM_EVAL_JOINTS = len(EVAL_J14)

_FROM_H36M = torch.tensor([H36M_JOINTS.index(name) for name in EVAL_J14])
_H36M_PELVIS = H36M_JOINTS.index("Pelvis (MPII)")
_EVAL_CANONICAL = torch.as_tensor(indices(EVAL_J14))
_PELVIS = JOINT_INDEX["Pelvis (MPII)"]
_HIPS = (JOINT_INDEX["Right Hip"], JOINT_INDEX["Left Hip"])


def body_eval_joints(body: BodyModel, vertices: Tensor, joints: Tensor) -> Tensor:
    """The 14 evaluation joints (B, 14, 3) of posed bodies (vertices (B, V, 3), canonical joints (B, 49, 3) of
    ``body``), centred on the pelvis, metres (module docstring)."""
    if body.h36m_regressor is not None:
        h36m = body.h36m_joints(vertices)
        return h36m[:, _FROM_H36M.to(h36m.device)] - h36m[:, _H36M_PELVIS:_H36M_PELVIS + 1]
    picked = joints[:, _EVAL_CANONICAL.to(joints.device)]
    return picked - joints[:, _PELVIS:_PELVIS + 1]


def posed_eval_joints(body: BodyModel, pose: Tensor, betas: Tensor, batch_size: int = 256) -> Tensor:
    """The 14 evaluation joints (B, 14, 3) of bodies with pose (B, 72) axis-angle and betas (B, >= NB), posed
    with ``body`` on its device in batches; returned on the inputs' device."""
    device = next(iter(body.buffers())).device
    out = []
    with torch.no_grad():
        for start in range(0, len(pose), batch_size):
            p = pose[start:start + batch_size].to(device=device, dtype=body.mixer.dtype)
            b = betas[start:start + batch_size, : body.num_betas].to(device=device, dtype=body.mixer.dtype)
            posed = body(b, p[:, 3:], p[:, :3])
            out.append(body_eval_joints(body, posed.vertices, posed.joints).to(pose.device))
    return torch.cat(out) if out else pose.new_zeros(0, NUM_EVAL_JOINTS, 3)


def joints3d_eval_joints(joints_3d: Tensor) -> tuple[Tensor, Tensor]:
    """The 14 evaluation joints (B, 14, 3) of ground-truth 3D joints, pelvis-centred, and which examples have
    all 14 and a pelvis (B,) bool. joints_3d: (B, 49, 4) canonical with confidence, or (B, 49, 3) all present."""
    if joints_3d.shape[-1] == 3:
        joints_3d = torch.cat([joints_3d, torch.ones_like(joints_3d[..., :1])], -1)
    conf = joints_3d[..., 3]
    eval_idx = _EVAL_CANONICAL.to(joints_3d.device)
    pelvis = torch.where((conf[:, _PELVIS] > 0)[:, None], joints_3d[:, _PELVIS, :3],
                         joints_3d[:, list(_HIPS), :3].mean(1))
    picked = joints_3d[:, eval_idx, :3] - pelvis[:, None]
    complete = (conf[:, eval_idx] > 0).all(-1)
    complete &= (conf[:, _PELVIS] > 0) | (conf[:, list(_HIPS)] > 0).all(-1)
    return picked, complete


def ground_truth_joints(body: BodyModel, joints_3d: Tensor, has_3d: Tensor, pose: Tensor, betas: Tensor,
                        has_smpl: Tensor) -> tuple[Tensor, Tensor]:
    """Ground-truth evaluation joints (B, 14, 3) and which examples have them (B,) bool: the true body where
    ``has_smpl`` (pose (B, 72), betas (B, NB)), else the 3D joints (B, 49, 4) where ``has_3d``."""
    gt, ok = joints3d_eval_joints(joints_3d)
    ok = ok & has_3d
    if bool(has_smpl.any()):
        gt = gt.clone()
        gt[has_smpl] = posed_eval_joints(body, pose[has_smpl], betas[has_smpl]).to(gt.dtype)
        ok = ok | has_smpl
    return gt, ok


@dataclass
class ErrorSums:
    """Running sums of per-example errors (metres) per dataset."""

    mpjpe: dict[str, float]
    pa_mpjpe: dict[str, float]
    count: dict[str, int]

    @classmethod
    def empty(cls) -> ErrorSums:
        return cls({}, {}, {})

    def add(self, datasets: Sequence[str], pred: Tensor, gt: Tensor) -> None:
        """Add examples: pred and gt (N, 14, 3) pelvis-centred, datasets (N,)."""
        if len(datasets) == 0:
            return
        pred, gt = pred.double(), gt.double()
        finite = torch.isfinite(pred).all(-1).all(-1)  # a diverged network: NaN errors, not a failed SVD
        e = torch.full((len(pred),), float("nan"), dtype=torch.float64)
        pa_e = e.clone()
        if bool(finite.any()):
            e[finite.cpu()] = mpjpe(pred[finite], gt[finite]).cpu()
            pa_e[finite.cpu()] = pa_mpjpe(pred[finite], gt[finite]).cpu()
        for name, a, b in zip(datasets, e.numpy(), pa_e.numpy()):
            for key in (name, "all"):
                self.mpjpe[key] = self.mpjpe.get(key, 0.0) + float(a)
                self.pa_mpjpe[key] = self.pa_mpjpe.get(key, 0.0) + float(b)
                self.count[key] = self.count.get(key, 0) + 1

    def result(self) -> dict[str, dict[str, float]]:
        """dataset -> {"mpjpe_mm", "pa_mpjpe_mm", "samples"}; "all" over every example."""
        return {name: {"mpjpe_mm": 1000 * self.mpjpe[name] / n, "pa_mpjpe_mm": 1000 * self.pa_mpjpe[name] / n,
                       "samples": n} for name, n in sorted(self.count.items())}


@dataclass
class FitsGroundTruth:
    """The truth side for a set of sample keys: keys (N,), datasets (N,), their evaluation joints (N, 14, 3)
    pelvis-centred metres, and the `model_id` of the body model that posed true bodies among them (None if only
    3D joints were used): those joints are only comparable with fits of that model."""

    keys: list[str]
    datasets: list[str]
    joints: Tensor
    body_model_id: str | None = None

    @classmethod
    def from_bodies(cls, keys: Sequence[str], datasets: Sequence[str], pose: Tensor, betas: Tensor,
                    body: BodyModel) -> FitsGroundTruth:
        """True bodies (pose (N, 72), betas (N, NB)) posed with ``body``, the model they are bodies of."""
        return cls(list(keys), list(datasets), posed_eval_joints(body, pose, betas).cpu(), body.model_id)

    @classmethod
    def from_joints(cls, keys: Sequence[str], datasets: Sequence[str], joints_3d: Tensor) -> FitsGroundTruth:
        """True 3D joints (N, 49, 3|4), canonical layout; samples without all 14 joints and a pelvis are left out."""
        joints, complete = joints3d_eval_joints(joints_3d)
        keep = complete.tolist()
        return cls([k for k, c in zip(keys, keep) if c], [d for d, c in zip(datasets, keep) if c],
                   joints[complete].cpu())

    @classmethod
    def scan(cls, shard_dirs: Sequence[Path], splits: Sequence[str], body: BodyModel,
             batch_size: int = 256) -> FitsGroundTruth:
        """The training samples of the shards with 3D ground truth (true SMPL where ``has_smpl``, else 3D joints):
        only the shards' arrays are read, no image is decoded."""
        keys, datasets, joints = [], [], []
        pending: list = []
        posed_any = False

        def flush() -> None:
            nonlocal posed_any
            if not pending:
                return
            j3d = torch.as_tensor(np.stack([s.joints_3d if s.joints_3d is not None else np.zeros((49, 4), np.float32)
                                            for s in pending]))
            has_3d = torch.tensor([s.joints_3d is not None for s in pending])
            has_smpl = torch.tensor([s.has_true_smpl for s in pending])
            pose = torch.as_tensor(np.stack([s.smpl_pose if s.smpl_pose is not None else np.zeros(72, np.float32)
                                             for s in pending]))
            betas = torch.as_tensor(np.stack([s.smpl_betas if s.smpl_betas is not None
                                              else np.zeros(10, np.float32) for s in pending]))
            gt, ok = ground_truth_joints(body, j3d, has_3d, pose, betas, has_smpl)
            posed_any = posed_any or bool(has_smpl.any())
            for sample, joint, good in zip(pending, gt, ok.tolist()):
                if good:
                    keys.append(sample.key)
                    datasets.append(sample.meta["dataset"])
                    joints.append(joint)
            pending.clear()

        for shard in list_shards(shard_dirs, (), splits):
            for sample in iter_shard(shard, verify=False):
                if sample.joints_3d is not None or sample.meta.get("has_smpl"):
                    pending.append(sample)
                    if len(pending) == batch_size:
                        flush()
        flush()
        return cls(keys, datasets, torch.stack(joints) if joints else torch.zeros(0, NUM_EVAL_JOINTS, 3),
                   body.model_id if posed_any else None)

    def __len__(self) -> int:
        return len(self.keys)


def best_fits(table: FitsTable, body: BodyModel, version: int | None = None,
              keys: Sequence[str] | None = None, frame: str | None = None) -> pa.Table:
    """The best fit per key (`fits.table.best_of`) among the rows of ``body``'s model id and ``frame`` (None: the
    rows must hold one frame, `fits.schema.MixedFramesError`) as of ``version`` (default the latest), optionally
    of ``keys`` only: columns key, pose, betas, frame and the ranking columns."""
    where = pc.field("body_model_id") == body.model_id
    if keys is not None:
        where = where & pc.field("key").isin(pa.array(list(keys), pa.string()))
    if frame is not None:
        where = where & (pc.field("frame") == frame)
    return best_of(table.log(version=version, columns=["key", "pose", "betas", "frame", "loss", "time", "run_id",
                                                       "epoch", "step"], where=where),
                   where=f"{table.path} (fits of {body.model_id})")


def evaluate_fits(table: FitsTable, body: BodyModel, truth: FitsGroundTruth, *, version: int | None = None,
                  frame: str | None = None, batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Errors of the table's best fits of ``body``'s model and ``frame`` (as `best_fits`; as of ``version``)
    against ``truth`` (module docstring): dataset -> {"mpjpe_mm", "pa_mpjpe_mm", "samples"}. Keys without such a
    fit are left out (their count is the difference in ``samples``); {} when none has one."""
    if truth.body_model_id is not None and truth.body_model_id != body.model_id:
        raise ValueError(f"the ground truth posed its true bodies with {truth.body_model_id}, the fits are "
                         f"evaluated with {body.model_id}: build the truth with the fits' body model")
    if len(truth) == 0:
        return {}
    best = best_fits(table, body, version, truth.keys, frame)
    if best.num_rows == 0:
        return {}
    position = {k: i for i, k in enumerate(truth.keys)}
    rows = [position[k] for k in best["key"].to_pylist()]
    pose = torch.tensor(pc.list_flatten(best["pose"]).to_numpy().reshape(-1, NUM_POSE))
    betas = torch.tensor(pc.list_flatten(best["betas"]).to_numpy().reshape(-1, NUM_BETAS))
    sums = ErrorSums.empty()
    pred = posed_eval_joints(body, pose, betas, batch_size)
    sums.add([truth.datasets[i] for i in rows], pred, truth.joints[rows])
    return sums.result()
