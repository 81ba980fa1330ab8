"""Evaluation: MPJPE and PA-MPJPE (mm) of the network on held-out shards, and of the fits table against ground truth.

Protocol (SPIN's Human3.6M protocol 2, SPIN_REFERENCE §8.1): the 14 joints `core.joints.EVAL_J14` (LSP limbs,
neck, H36M head) from the body model's Human3.6M regressor on the mesh, centred on its pelvis (H36M joint 0);
MPJPE is the mean joint distance after that centring, PA-MPJPE after a per-example similarity Procrustes. Ground
truth, per sample:

* with ground-truth SMPL (``has_smpl``): the same regressor on the ground-truth mesh (SPIN's 3DPW protocol), so
  prediction and truth are the same kind of joint;
* otherwise its 3D joints (``joints_3d``, canonical layout, camera frame), centred on ``Pelvis (MPII)`` (where
  the H36M mapping puts H36M's pelvis) or else the midpoint of the hips; all 14 joints must be annotated.

A body model without a Human3.6M regressor (a real SMPL loaded without ``J_regressor_h36m.npy``) is evaluated on
its own canonical joints instead. Results are per dataset and over all samples (``"all"``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

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

_FROM_H36M = torch.tensor([H36M_JOINTS.index(name) for name in EVAL_J14])
_EVAL_CANONICAL = torch.as_tensor(indices(EVAL_J14))
_PELVIS = JOINT_INDEX["Pelvis (MPII)"]
_HIPS = (JOINT_INDEX["Right Hip"], JOINT_INDEX["Left Hip"])


def model_eval_joints(body: BodyModel, vertices: Tensor, joints: Tensor) -> Tensor:
    """The 14 evaluation joints (B, 14, 3) of posed bodies (vertices (B, V, 3), canonical joints (B, 49, 3)),
    centred on the pelvis, metres."""
    if body.h36m_regressor is not None:
        h36m = body.h36m_joints(vertices)
        return h36m[:, _FROM_H36M.to(h36m.device)] - h36m[:, :1]
    picked = joints[:, _EVAL_CANONICAL.to(joints.device)]
    return picked - joints[:, _PELVIS:_PELVIS + 1]


def joints3d_eval_joints(joints_3d: Tensor) -> tuple[Tensor, Tensor]:
    """The 14 evaluation joints (B, 14, 3) of ground-truth 3D joints (B, 49, 4), pelvis-centred, and which
    examples have all 14 (B,) bool."""
    conf = joints_3d[..., 3]
    pelvis = torch.where((conf[:, _PELVIS] > 0)[:, None], joints_3d[:, _PELVIS, :3],
                         joints_3d[:, list(_HIPS), :3].mean(1))
    picked = joints_3d[:, _EVAL_CANONICAL.to(joints_3d.device), :3] - pelvis[:, None]
    complete = (conf[:, _EVAL_CANONICAL.to(joints_3d.device)] > 0).all(-1)
    complete &= (conf[:, _PELVIS] > 0) | (conf[:, list(_HIPS)] > 0).all(-1)
    return picked, complete


def ground_truth_joints(body: BodyModel, joints_3d: Tensor, has_3d: Tensor, pose: Tensor, betas: Tensor,
                        has_smpl: Tensor) -> tuple[Tensor, Tensor]:
    """Ground-truth evaluation joints (B, 14, 3) and which examples have them (B,) bool (module docstring)."""
    gt, ok = joints3d_eval_joints(joints_3d)
    ok = ok & has_3d
    if bool(has_smpl.any()):
        with torch.no_grad():
            out = body(betas[has_smpl][:, : body.num_betas], pose[has_smpl, 3:], pose[has_smpl, :3])
        gt = gt.clone()
        gt[has_smpl] = model_eval_joints(body, out.vertices, out.joints).to(gt.dtype)
        ok = ok | has_smpl
    return gt, ok


@dataclass
class ErrorSums:
    """Running sums of per-example errors (metres) per dataset."""

    mpjpe: dict[str, float]
    pa_mpjpe: dict[str, float]
    count: dict[str, int]

    @classmethod
    def empty(cls) -> "ErrorSums":
        return cls({}, {}, {})

    def add(self, datasets: Sequence[str], pred: Tensor, gt: Tensor) -> None:
        """Add examples: pred and gt (N, 14, 3) pelvis-centred, datasets (N,)."""
        if len(datasets) == 0:
            return
        pred, gt = pred.double(), gt.double()
        finite = torch.isfinite(pred).all(-1).all(-1)  # a diverged network: NaN errors, not a failed SVD
        e = torch.full((len(pred),), float("nan"), dtype=torch.float64)
        pa = e.clone()
        if bool(finite.any()):
            e[finite.cpu()] = mpjpe(pred[finite], gt[finite]).cpu()
            pa[finite.cpu()] = pa_mpjpe(pred[finite], gt[finite]).cpu()
        e, pa = e.numpy(), pa.numpy()
        for name, a, b in zip(datasets, e, pa):
            for key in (name, "all"):
                self.mpjpe[key] = self.mpjpe.get(key, 0.0) + float(a)
                self.pa_mpjpe[key] = self.pa_mpjpe.get(key, 0.0) + float(b)
                self.count[key] = self.count.get(key, 0) + 1

    def result(self) -> dict[str, dict[str, float]]:
        """dataset -> {"mpjpe_mm", "pa_mpjpe_mm", "samples"}; "all" over every example."""
        return {name: {"mpjpe_mm": 1000 * self.mpjpe[name] / n, "pa_mpjpe_mm": 1000 * self.pa_mpjpe[name] / n,
                       "samples": n} for name, n in sorted(self.count.items())}


def evaluate_network(model: torch.nn.Module, body: BodyModel, batches: Iterable[dict], device: torch.device,
                     autocast, max_samples: int | None = None) -> dict[str, dict[str, float]]:
    """Errors of the regressor on reader batches (no augmentation) that carry 3D ground truth; the others are
    skipped. The model is put in eval mode and back."""
    was_training = model.training
    model.eval()
    sums, seen = ErrorSums.empty(), 0
    try:
        with torch.no_grad():
            for items in batches:
                gt, ok = ground_truth_joints(body, items["joints_3d"].to(device), items["has_joints_3d"].to(device),
                                             items["pose"].to(device), items["betas"].to(device),
                                             items["has_smpl"].to(device))
                if max_samples is not None:
                    ok &= torch.arange(len(ok), device=device) < max_samples - seen
                if not bool(ok.any()):
                    if max_samples is not None and seen >= max_samples:
                        break
                    continue
                with autocast:
                    out = model(items["img"].to(device)[ok])
                smpl = body(out.betas, out.rotmat[:, 1:], out.rotmat[:, :1], pose2rot=False)
                pred = model_eval_joints(body, smpl.vertices, smpl.joints)
                datasets = [d for d, keep in zip(items["dataset"], ok.tolist()) if keep]
                sums.add(datasets, pred, gt[ok])
                seen += len(datasets)
    finally:
        model.train(was_training)
    return sums.result()


@dataclass
class FitsGroundTruth:
    """The evaluation joints of every training sample with 3D ground truth: keys (N,), datasets (N,),
    joints (N, 14, 3) pelvis-centred metres, canonical (unaugmented) camera frame."""

    keys: list[str]
    datasets: list[str]
    joints: Tensor

    @classmethod
    def scan(cls, shard_dirs: Sequence[Path], splits: Sequence[str], body: BodyModel,
             batch_size: int = 256) -> "FitsGroundTruth":
        """Read the shards' arrays (no image is decoded) and keep the samples with 3D ground truth."""
        keys, datasets, joints = [], [], []
        pending: list = []

        def flush() -> None:
            if not pending:
                return
            j3d = torch.as_tensor(np.stack([s.joints_3d if s.joints_3d is not None else np.zeros((49, 4), np.float32)
                                            for s in pending]))
            has_3d = torch.tensor([s.joints_3d is not None for s in pending])
            has_smpl = torch.tensor([bool(s.meta.get("has_smpl")) and s.smpl_pose is not None for s in pending])
            pose = torch.as_tensor(np.stack([s.smpl_pose if s.smpl_pose is not None else np.zeros(72, np.float32)
                                             for s in pending]))
            betas = torch.as_tensor(np.stack([s.smpl_betas if s.smpl_betas is not None
                                              else np.zeros(10, np.float32) for s in pending]))
            device = next(iter(body.buffers())).device
            gt, ok = ground_truth_joints(body, *(t.to(device) for t in (j3d, has_3d, pose, betas, has_smpl)))
            for sample, joint, good in zip(pending, gt.cpu(), ok.tolist()):
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
        return cls(keys, datasets, torch.stack(joints) if joints else torch.zeros(0, 14, 3))

    def __len__(self) -> int:
        return len(self.keys)


def evaluate_fits(table: FitsTable, version: int | None, body_model_id: str, truth: FitsGroundTruth,
                  body: BodyModel, batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Errors of the table's best fits (rows of ``body_model_id``, as of ``version``) against ``truth``; keys
    without a fit are left out (their count is the difference in ``samples``)."""
    if len(truth) == 0:
        return {}
    where = (pc.field("body_model_id") == body_model_id) & pc.field("key").isin(pa.array(truth.keys, pa.string()))
    best = best_of(table.log(version=version, columns=["key", "pose", "betas", "loss", "time", "run_id", "epoch",
                                                       "step"], where=where))
    if best.num_rows == 0:
        return {}
    position = {k: i for i, k in enumerate(truth.keys)}
    rows = [position[k] for k in best["key"].to_pylist()]
    pose = torch.tensor(pc.list_flatten(best["pose"]).to_numpy().reshape(-1, NUM_POSE))
    betas = torch.tensor(pc.list_flatten(best["betas"]).to_numpy().reshape(-1, NUM_BETAS))
    device = next(iter(body.buffers())).device
    sums = ErrorSums.empty()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            sl = slice(start, start + batch_size)
            b, p = betas[sl].to(device)[:, : body.num_betas], pose[sl].to(device)
            out = body(b, p[:, 3:], p[:, :3])
            pred = model_eval_joints(body, out.vertices, out.joints)
            idx = rows[sl]
            sums.add([truth.datasets[i] for i in idx], pred.cpu(), truth.joints[idx])
    return sums.result()
