"""Does the mask loss help the network? Two short `training.loop.train` runs of the keypoints head (Pavlakos 2018)
on the same synthetic shards, without and with the mask consistency loss, measured on held-out people; with
``--dsr`` a third run adds DSR's semantic losses (`training.dsr_loss`: DSR-MC on the people's exact part labels,
DSR-C on their masks) to the mask loss.

The training people are an in-the-wild-like set: their ground truth is recorded but ignored by the trainer
(``ignore_3d_datasets``), so pose and shape are supervised only by the keypoint fits SMPLify makes in the loop
(which see no silhouette) and the 2D keypoints, plus, in the second arm, the person masks. Held-out people come
from a part of the pose pool no training person draws from (`bench.synthetic_shards.TEST_POSES`). Reported per
arm: the network's per-vertex error after Procrustes (PVE-PA, mm) and its betas' RMS error against the truth, and
the IoU of its hard silhouette (the z-buffer rasteriser at the mask loss's grid) with the person mask. Small and
short (CPU, one thread): a direction, not a benchmark.

    python -m bench.mask_training --out /tmp/masks --steps 300 [--dsr] [--json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.synthetic_shards import TEST_POSES, TRAIN_POSES, DatasetSpec, write_synthetic_shards
from core.metrics import procrustes_align
from fits.seeding import SeedConfig, seed_fits
from fitting.body_model import load_body_model
from fitting.priors import MaxMixturePrior
from fitting.silhouette import render_silhouette
from fitting.smplify import SMPLifyConfig
from shards.augment import AugmentConfig
from shards.reader import ReaderConfig, ShardReader
from training.checkpoint import latest_checkpoint, load_checkpoint
from training.config import LossWeights, TrainConfig
from training.heads import head_of
from training.loop import train
from training.mask_loss import grid_res, mask_camera, pooled_mask
from training.regressor import mean_params_from_prior
from training.step import predict

IMG_RES = 64


def held_out_errors(run_dir: Path, shards: Path, body) -> dict[str, float]:
    """PVE-PA (mm), betas RMS and mask IoU of the run's last checkpoint on the held-out split."""
    data = load_checkpoint(latest_checkpoint(run_dir))
    config = TrainConfig.from_dict(data["config"])
    head = head_of(config.head)
    model = head.build(mean_params_from_prior(MaxMixturePrior.from_file(config.pose_prior), body.num_betas), config)
    model.load_state_dict(data["model"])
    model.eval()
    reader = ShardReader(shards, ReaderConfig(img_res=IMG_RES, augment=AugmentConfig(enabled=False),
                                              shuffle_shards=False, shuffle_buffer=0, splits=("test",)))
    res = grid_res(IMG_RES)
    focal, center = mask_camera(res)
    pve, betas_err, ious = [], [], []
    with torch.no_grad():
        for items in DataLoader(reader, batch_size=50):
            pred = predict(model, body, head.arguments(items, torch.device("cpu")), torch.autocast("cpu", enabled=False))
            truth = body(items["betas"], items["pose"][:, 3:], items["pose"][:, :3]).vertices
            aligned = procrustes_align(pred.vertices.double(), truth.double())
            pve.append((aligned - truth.double()).norm(dim=-1).mean(-1) * 1000)
            betas_err.append((pred.betas - items["betas"]).square().mean(-1))
            hard = render_silhouette(pred.vertices + pred.cam_t[:, None], torch.as_tensor(body.faces), focal,
                                     (center, center), (res, res), sigma=1e-3).mask > 0.5
            person, known = pooled_mask(items["mask"], res, sigma=1e-3)
            person = (person > 0.5) & (known > 0.5)
            has = items["has_mask"]
            inter = (hard & person).sum((1, 2)).float()
            union = (hard | person).sum((1, 2)).float().clamp(min=1)
            ious.append((inter / union)[has])
    return {"pve_pa_mm": float(torch.cat(pve).mean()), "betas_rms": float(torch.cat(betas_err).mean().sqrt()),
            "mask_iou": float(torch.cat(ious).mean()), "samples": int(torch.cat(pve).numel())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--people", type=int, default=400)
    parser.add_argument("--mask-weight", type=float, default=1.0)
    parser.add_argument("--dsr", type=float, nargs="?", const=0.2, default=None, metavar="WEIGHT",
                        help="add a third arm: mask loss + DSR-MC and DSR-C at WEIGHT each (DSR's 0.2)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out
    write_synthetic_shards(out / "data", [
        DatasetSpec("synth-wild", "train", args.people, smpl=True, joints_3d=True, masks=True, parts=True,
                    poses=TRAIN_POSES),
        DatasetSpec("synth-wild", "test", 100, smpl=True, joints_3d=True, masks=True, poses=TEST_POSES)],
        res=IMG_RES, samples_per_shard=100, seed=11)
    shards = out / "data" / "shards"
    smplify = SMPLifyConfig(body_iterations=10)
    seed_fits([shards], out / "seed-fits", SeedConfig(body_model="open-small", smplify=smplify), splits=("train",),
              missing_only=True)
    body = load_body_model("open-small")
    report = {"threads": torch.get_num_threads(), "steps": args.steps, "people": args.people, "arms": {}}
    arms = [("keypoints only", "base", LossWeights()),
            (f"+ mask loss (weight {args.mask_weight:g})", "mask", LossWeights(mask=args.mask_weight))]
    if args.dsr is not None:
        arms.append((f"+ mask loss + DSR-MC, DSR-C (weight {args.dsr:g} each)", "dsr",
                     LossWeights(mask=args.mask_weight, dsr_mc=args.dsr, dsr_c=args.dsr)))
    for name, tag, weights in arms:
        run_dir, fits = out / f"run-{tag}", out / f"fits-{tag}"
        shutil.copytree(out / "seed-fits", fits, dirs_exist_ok=False)
        config = TrainConfig(shards=(str(shards),), fits=str(fits), run_dir=str(run_dir), run_id=run_dir.name,
                             head="keypoints", img_res=IMG_RES, batch_size=32, epochs=1, steps_per_epoch=args.steps,
                             num_workers=0, body_model="open-small", mix="*=1", smplify=smplify, lr=1e-4,
                             checkpoint_every=10_000, log_every=50, tensorboard=False,
                             ignore_3d_datasets=("synth-wild",), loss=weights)
        started = time.process_time()
        train(config, progress=False)
        report["arms"][name] = held_out_errors(run_dir, shards, body) | {"cpu_s": time.process_time() - started}
    base, mask, *dsr = report["arms"].values()
    keys = ("pve_pa_mm", "betas_rms", "mask_iou")
    report["ratios_mask_over_base"] = {k: mask[k] / base[k] for k in keys}
    if dsr:
        report["ratios_dsr_over_mask"] = {k: dsr[0][k] / mask[k] for k in keys}
    print(json.dumps(report, indent=1) if args.json else report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
