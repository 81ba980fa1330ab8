"""Evaluation of the network: MPJPE and PA-MPJPE (mm) of the regressor's bodies on held-out shards.

The definition (the 14 joints, the centring, the truth per sample) is the one of every fit-vs-truth number in
fitloop: `fits.evaluate` (SPIN's Human3.6M protocol 2). Here the posed bodies are the network's predictions;
the truth is each sample's ground-truth SMPL (``has_smpl``) or its 3D joints. Results per dataset and "all".

`evaluate_checkpoint` (`fitloop eval`) runs a saved checkpoint (fitloop's, or SPIN's released one:
`training.predict.load_regressor`) on shard sets under a named protocol (`PROTOCOLS`): the literature's selections
of a dataset's samples, read from the sample's own metadata (dataset, split, Human3.6M's camera and frame), so a
shard set made with other options is filtered, never silently mixed in.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fits.evaluate import ErrorSums, body_eval_joints, ground_truth_joints, joints3d_eval_joints
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
                    ok &= torch.cumsum(ok.long(), 0) <= max_samples - seen   # the first samples with truth
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


@dataclass(frozen=True)
class Protocol:
    """A named selection of samples (`PROTOCOLS`): ``keep(meta)`` on a sample's json; ``about`` says whose,
    ``takes`` which metadata it keeps (told when shards hold none of it)."""

    name: str
    about: str
    keep: Callable[[dict[str, Any]], bool]
    takes: str


H36M_FRONTAL = "60457274"  # SPIN's protocol 2 camera (datasets/preprocess/h36m.py: protocol 2 keeps camera 4 only)
H36M_STEP = 5              # SPIN evaluates every 5th frame (SPIN_REFERENCE.md §4, item 6; other papers use 64)


def _h36m(meta: dict[str, Any], cameras: tuple[str, ...] | None) -> bool:
    extra = meta.get("extra", {})
    return (meta.get("dataset") == "h36m" and meta.get("split") == "test" and extra.get("subject") in ("S9", "S11")
            and (cameras is None or extra.get("camera") in cameras) and int(extra.get("frame", -1)) % H36M_STEP == 0)


_H36M_TAKES = f"dataset h36m, split test, subjects S9 and S11, {{}}, frames a multiple of {H36M_STEP}"

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("h36m-p2", f"Human3.6M protocol 2: S9, S11, the frontal camera {H36M_FRONTAL}, every {H36M_STEP}th "
                        "frame (SPIN's h36m_valid_protocol2)", lambda m: _h36m(m, (H36M_FRONTAL,)),
             _H36M_TAKES.format(f"camera {H36M_FRONTAL}")),
    Protocol("h36m-p1", f"Human3.6M protocol 1: S9, S11, all four cameras, every {H36M_STEP}th frame",
             lambda m: _h36m(m, None), _H36M_TAKES.format("any camera")),
    Protocol("mpi-inf-3dhp", "MPI-INF-3DHP's test set (TS1-TS6, valid frames: the adapter rejects the others)",
             lambda m: m.get("dataset") == "mpi-inf-3dhp" and m.get("split") == "test",
             "dataset mpi-inf-3dhp, split test"),
    Protocol("held-out", "every sample of the val and test splits (the trainer's evaluation)",
             lambda m: m.get("split") in ("val", "test"), "any dataset, splits val and test"),
)}


class ShardHoldings:
    """What shards hold, by dataset/split (with the subjects and cameras their samples name), for the message
    that a protocol keeps none of them."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.named: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))

    def add(self, meta: dict[str, Any]) -> None:
        group = f"{meta.get('dataset')}/{meta.get('split')}"
        self.counts[group] += 1
        extra = meta.get("extra") or {}
        for field in ("subject", "camera"):
            if extra.get(field) is not None:
                self.named[group][field].add(str(extra[field]))

    def __str__(self) -> str:
        if not self.counts:
            return "no sample"
        parts = []
        for group, n in sorted(self.counts.items()):
            named = [f"{field}s {', '.join(sorted(values)[:6])}{', ...' if len(values) > 6 else ''}"
                     for field, values in sorted(self.named[group].items())]
            parts.append(f"{group} {n}" + (f" ({'; '.join(named)})" if named else ""))
        return "; ".join(parts)


def evaluate_checkpoint(checkpoint: Path, shards: list[Path], protocol: str = "held-out", *,
                        body_model: str | None = None, batch_size: int = 32, max_samples: int | None = None,
                        device: str | torch.device = "cpu", mesh_sampling: str | None = None) -> dict[str, Any]:
    """MPJPE and PA-MPJPE (mm, per dataset and "all") of a checkpoint's network on the samples of ``shards`` that
    ``protocol`` keeps and that carry 3D truth; with the counts of what was read, kept and left out. `FitloopError`
    when the protocol keeps none (what it takes, what the shards hold)."""
    from torch.utils.data import default_collate

    from core.errors import FitloopError
    from shards.augment import AugmentConfig, AugmentParams
    from shards.reader import ReaderConfig, ShardReader
    from training.predict import describe, load_regressor

    if protocol not in PROTOCOLS:
        raise FitloopError(f"unknown protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    chosen = PROTOCOLS[protocol]
    loaded = load_regressor(checkpoint, body_model=body_model, device=device, mesh_sampling=mesh_sampling,
                            command="fitloop eval")
    reader = ShardReader(shards, ReaderConfig(img_res=loaded.config.img_res, augment=AugmentConfig(enabled=False),
                                              shuffle_shards=False, shuffle_buffer=0))
    counts = {"read": 0, "kept": 0, "with_truth": 0}
    holdings = ShardHoldings()

    def batches() -> Iterable[dict]:
        """Batches of the kept samples, in shard order; with ``max_samples``, reading stops at the sample that
        makes that many kept samples with 3D truth, so what is read, kept and evaluated is the same whatever the
        batch size."""
        pending = []
        for stored in reader.iter_stored(0, 1):
            counts["read"] += 1
            holdings.add(stored.meta)
            if not chosen.keep(stored.meta):
                continue
            counts["kept"] += 1
            item = reader.make_item(stored, AugmentParams())
            counts["with_truth"] += has_truth(item)
            pending.append(item)
            done = max_samples is not None and counts["with_truth"] >= max_samples
            if len(pending) == batch_size or done:
                yield default_collate(pending)
                pending = []
            if done:
                return
        if pending:
            yield default_collate(pending)

    errors = evaluate_network(loaded.model, loaded.body, batches(), torch.device(device),
                              torch.autocast(torch.device(device).type, enabled=False), max_samples,
                              head=loaded.head)
    if counts["kept"] == 0:
        raise FitloopError(f"protocol {protocol} keeps none of the {counts['read']} samples of "
                           f"{' '.join(map(str, shards))}: it takes {chosen.takes}; the shards hold {holdings}. "
                           f"Pass shards that hold such samples, or the --protocol that fits them")
    stopped = max_samples is not None and counts["with_truth"] >= max_samples
    return {"protocol": protocol, "about": chosen.about, "checkpoint": str(checkpoint),
            "shards": [str(s) for s in shards], "read": counts["read"], "kept": counts["kept"],
            "max_samples": max_samples, "stopped_at_max_samples": stopped, "errors": errors, **describe(loaded)}


def has_truth(item: dict) -> bool:
    """Whether a reader item carries the 3D truth `evaluate_network` measures against (`ground_truth_joints`): a
    true body (``has_smpl``), or all 14 evaluation joints and a pelvis among its 3D joints."""
    if bool(item["has_smpl"]):
        return True
    return bool(item["has_joints_3d"]) and bool(joints3d_eval_joints(item["joints_3d"][None])[1][0])
