"""Evaluation of the network: MPJPE and PA-MPJPE (mm) of the regressor's bodies on held-out shards.

The definition (the 14 joints, the centring, the truth per sample) is the one of every fit-vs-truth number in
fitloop: `fits.evaluate` (SPIN's Human3.6M protocol 2). Here the posed bodies are the network's predictions;
the truth is each sample's ground-truth SMPL (``has_smpl``) or its 3D joints. Results per dataset and "all".
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from fits.evaluate import ErrorSums, body_eval_joints, ground_truth_joints
from fitting.body_model import BodyModel
from fitting.wholebody_model import WholeBodyModel
from training.heads import DEFAULT_HEAD, HEADS, Head
from training.step import predict


def evaluate_network(model: torch.nn.Module, body: BodyModel, batches: Iterable[dict], device: torch.device,
                     autocast, max_samples: int | None = None, *,
                     wholebody: WholeBodyModel | None = None,
                     head: Head = HEADS[DEFAULT_HEAD]) -> dict[str, dict[str, float]]:
    """Errors of the regressor (the network of ``head``, `training.heads`) on reader batches (no augmentation)
    that carry 3D ground truth; the others are skipped. The model is put in eval mode and back. A regressor with
    whole-body heads is posed by ``wholebody`` (`training.step.predict`), hands and face included."""
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
                pred_fit = predict(model, body, head.arguments(items, device, ok), autocast, wholebody)
                pred = body_eval_joints(body, pred_fit.vertices, pred_fit.joints)
                datasets = [d for d, keep in zip(items["dataset"], ok.tolist()) if keep]
                sums.add(datasets, pred, gt[ok])
                seen += len(datasets)
    finally:
        model.train(was_training)
    return sums.result()
