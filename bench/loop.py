"""`fitloop bench loop`: SPIN's ablation (Kolotouros et al., ICCV 2019, Table 1: static fits vs. fits in the loop),
reproduced on synthetic people with ground truth, with a control that separates the network's start from repeated
refitting.

Three arms train the same network (the keypoints head, Pavlakos 2018: `training.heads`) from the same seed
(weights, data order, augmentation), on the same shards and seed fits, for the same steps:

* ``static``: trained on the seed fits (SPIN's static fits, SMPLify from the mean start); no fitting in the loop
  (SPIN without ``--run_smplify``; ``TrainConfig.run_smplify=False``).
* ``loop``: SPIN: every step fits the batch with SMPLify from the network's estimate and keeps the better fit.
* ``control``: every step fits the batch with SMPLify from the mean start instead (``loop_start="mean"``,
  `training.step.fit_from_mean`), the same SMPLify settings, the same keep-the-better rule and the same
  supervision; each training person is refitted once an epoch, in that step's augmented crop, with no network
  start. What the loop gains over it is the network's start; what it gains over ``static`` is refitting.

**Data.** Training people and held-out people are rendered by `bench.synthetic_shards` in poses of CMU motion
capture of subjects the pose prior never saw (`bench.smplify_cases`: the ``dev`` subjects for training, the
``test`` subjects for the held-out set, so no held-out person shares a subject with a training person), with
their exact masks. The training people's ground truth is recorded but not used for training
(``ignore_3d_datasets``: an in-the-wild set, supervised only by the fits and the 2D keypoints), so the fits are
all the network learns 3D from. SPIN's augmentation is on (its default): it is what makes a refit in the loop see
the person anew; without it, a refit from the mean start would be the seed fit again (the same start, the same
keypoints; not run).

**Measured**, per arm and epoch (epoch 0: before training): the fits table's MPJPE / PA-MPJPE against the
training people's truth (`fits.evaluate`) and the network's on the held-out people (`training.evaluate`); the
CPU time of each arm. Written: ``loop.json`` (every number and the settings), ``loop.md`` (the table) and
``loop.png`` (the curves) in ``--out``.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from bench.synthetic_shards import DatasetSpec, write_synthetic_shards
from fits.seeding import SeedConfig, seed_fits
from fitting.smplify import SMPLifyConfig
from training.config import TrainConfig
from training.loop import train
from training.run_log import TRAIN_CSV

ARMS = {  # arm -> what it changes in the shared TrainConfig
    "static": {"run_smplify": False},
    "loop": {"run_smplify": True, "loop_start": "network"},
    "control": {"run_smplify": True, "loop_start": "mean"},
}
DATASET = "synth-wild"   # one in-the-wild-like set; its 3D ground truth is ignored by training, used by evaluation
IMG_RES = 64             # the rendered person box, px (the keypoints head reads no pixels; masks are pooled)
METRICS = ("fits_pa_mpjpe_mm", "fits_mpjpe_mm", "net_pa_mpjpe_mm", "net_mpjpe_mm")


@dataclasses.dataclass(frozen=True)
class LoopBench:
    """The ablation's sizes and budget (the same for every arm)."""

    people: int = 320             # training people (CMU dev subjects)
    held_out: int = 100           # held-out people for the network (CMU test subjects)
    epochs: int = 24
    batch_size: int = 16
    lr: float = 3e-4
    steps_per_epoch: int | None = None   # None: people / batch_size
    smplify_iterations: int | None = None   # SMPLify's body iterations (None: its default), seeds and loop alike
    body_model: str = "open-small"
    seed: int = 0


# `fitloop demo`'s ablation: half the bench's steps (240 of 16), the fewest after which its networks have learned
# (held-out PA-MPJPE 147.5 -> 122.4 / 122.2 / 122.5 mm static / loop / control; 116 CPU s, 1 thread). At 12 epochs
# they were still worse than at the start (183-185 mm): the network's error rises before it falls.
DEMO = LoopBench(people=160, held_out=60, epochs=24)


def run(out: Path, bench: LoopBench = LoopBench(), *, progress: bool = False) -> dict[str, Any]:
    """Render the people, seed their fits once, train the three arms (`ARMS`) and return the record (module
    docstring); ``out`` must not hold a previous run."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: give an empty or new folder for the ablation's runs")
    torch.set_num_threads(1)
    started = time.process_time()
    write_synthetic_shards(out / "data", [
        DatasetSpec(DATASET, "train", bench.people, smpl=True, joints_3d=True, masks=True, cmu="dev"),
        DatasetSpec(DATASET, "test", bench.held_out, smpl=True, joints_3d=True, masks=True, cmu="test")],
        body_model=bench.body_model, res=IMG_RES, samples_per_shard=200, seed=bench.seed)
    shards = out / "data" / "shards"
    data_s = time.process_time() - started
    smplify = SMPLifyConfig() if bench.smplify_iterations is None else \
        SMPLifyConfig(body_iterations=bench.smplify_iterations)
    started = time.process_time()
    seed_fits([shards], out / "seed-fits", SeedConfig(body_model=bench.body_model, smplify=smplify, batch_size=64),
              splits=("train",), missing_only=True)
    seed_s = time.process_time() - started
    record: dict[str, Any] = {
        "settings": dataclasses.asdict(bench), "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "head": "keypoints", "dataset": DATASET, "cpu_s": {"data": data_s, "seed_fits": seed_s},
        "arms": {}}
    for arm, change in ARMS.items():
        fits, run_dir = out / f"fits-{arm}", out / f"run-{arm}"
        shutil.copytree(out / "seed-fits", fits)
        config = TrainConfig(
            shards=(str(shards),), fits=str(fits), run_dir=str(run_dir), run_id=f"ablation-{arm}", head="keypoints",
            body_model=bench.body_model, img_res=IMG_RES, mix="*=1", ignore_3d_datasets=(DATASET,),
            batch_size=bench.batch_size, epochs=bench.epochs, steps_per_epoch=bench.steps_per_epoch, lr=bench.lr,
            smplify=smplify, num_workers=0, seed=bench.seed, checkpoint_every=10_000, log_every=1,
            tensorboard=False, **change)
        started = time.process_time()
        summary = train(config, progress=progress)
        cpu_s = time.process_time() - started
        updated = fits_updated_per_epoch(run_dir / TRAIN_CSV)
        record["arms"][arm] = {
            "config_change": change, "steps": summary["step"], "cpu_s": cpu_s,
            "epochs": [{"epoch": int(r["epoch"]), "step": int(r["step"]),
                        **{m: float(r[m]) for m in METRICS},
                        "fits_samples": int(r["fits_samples"]), "net_samples": int(r["net_samples"]),
                        "fits_updated": updated.get(int(r["epoch"]) - 1, 0.0)}
                       for r in summary["metrics"]]}
    record["verdict"] = verdict(record)
    (out / "loop.json").write_text(json.dumps(record, indent=1))
    (out / "loop.md").write_text(table(record))
    plot(record, out / "loop.png")
    return record


def fits_updated_per_epoch(train_log: Path) -> dict[int, float]:
    """Per epoch (0-based, as the log counts), the share of the steps' examples whose new fit beat the stored one
    (SPIN's comparison, `training.step.update_fits`), from the run's per-step training log (``log_every=1``)."""
    by_epoch: dict[int, list[float]] = {}
    with open(train_log, newline="") as handle:
        for row in csv.DictReader(handle):
            by_epoch.setdefault(int(row["epoch"]), []).append(float(row["fits_updated"]))
    return {epoch: sum(v) / len(v) for epoch, v in by_epoch.items()}


def verdict(record: dict[str, Any]) -> dict[str, Any]:
    """The last epoch's numbers of each arm, and the loop's differences to the other two (mm; negative: the loop's
    error is lower)."""
    last = {arm: r["epochs"][-1] for arm, r in record["arms"].items()}
    out: dict[str, Any] = {"last_epoch": last}
    for other in ("static", "control"):
        if "loop" in last and other in last:
            out[f"loop_minus_{other}_mm"] = {m: last["loop"][m] - last[other][m] for m in METRICS}
    return out


def conclusion(record: dict[str, Any]) -> list[str]:
    """The ablation's outcome in words, from its own numbers (the last epoch; lower is better): whether the loop's
    fits and network end below the static arm's and the control's, by how much, and the share of new fits that won
    SPIN's comparison in the loop and in the control (why the loop's start matters or not)."""
    last, verdict_ = record["verdict"]["last_epoch"], record["verdict"]
    lines = []
    for what, metric in (("fits (training people, PA-MPJPE)", "fits_pa_mpjpe_mm"),
                         ("network (held-out people, PA-MPJPE)", "net_pa_mpjpe_mm")):
        parts = []
        for other in ("static", "control"):
            diff = verdict_[f"loop_minus_{other}_mm"][metric]
            word = "beats" if diff < 0 else "does not beat"
            parts.append(f"{word} {other} ({last['loop'][metric]:.1f} vs {last[other][metric]:.1f} mm, "
                         f"{diff:+.1f} mm)")
        lines.append(f"- **{what}:** the loop " + "; ".join(parts) + ".")
    won = {arm: sum(e["fits_updated"] for e in record["arms"][arm]["epochs"][1:])
           / max(1, len(record["arms"][arm]["epochs"]) - 1) for arm in ("loop", "control")}
    lines.append(f"- **New fits that beat the stored fit** (SPIN's keep-the-better rule), mean over epochs: loop "
                 f"{won['loop']:.1%} (SMPLify from the network's estimate), control {won['control']:.1%} (from the "
                 f"mean start). The loop's effect needs starts near the fits; a network far worse than its fits "
                 f"gives starts that rarely win.")
    lines.append("- One seed: differences of a millimetre or two are within its noise (docs/training.md, SPIN's "
                 "ablation).")
    return lines


def table(record: dict[str, Any]) -> str:
    """The record as a markdown table: one row per arm and epoch."""
    s = record["settings"]
    lines = [f"SPIN's ablation, keypoints head: {s['people']} training people (CMU dev subjects), {s['held_out']} "
             f"held-out (CMU test subjects), batch {s['batch_size']}, lr {s['lr']:g}, {s['epochs']} epochs, body "
             f"model {s['body_model']}, {record['threads']} thread(s).", "",
             "| arm | epoch | step | fits PA-MPJPE | fits MPJPE | net PA-MPJPE | net MPJPE | new fits won |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, r in record["arms"].items():
        for e in r["epochs"]:
            lines.append(f"| {arm} | {e['epoch']} | {e['step']} | {e['fits_pa_mpjpe_mm']:.1f} | "
                         f"{e['fits_mpjpe_mm']:.1f} | {e['net_pa_mpjpe_mm']:.1f} | {e['net_mpjpe_mm']:.1f} | "
                         f"{e['fits_updated']:.1%} |")
    lines.append("")
    lines.append("mm; fits: the training people's fits table against their truth; net: the network on the held-out "
                 "people; new fits won: the share of the epoch's fits in the loop that beat the stored fit. CPU s per "
                 "arm: " + ", ".join(f"{a} {r['cpu_s']:.0f}" for a, r in record["arms"].items())
                 + ".")
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any], path: Path) -> None:
    """Two panels: the fits table's PA-MPJPE, and the network's PA-MPJPE (solid) and MPJPE (dashed), per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for arm, r in record["arms"].items():
        epochs = [e["epoch"] for e in r["epochs"]]
        line, = left.plot(epochs, [e["fits_pa_mpjpe_mm"] for e in r["epochs"]], "o-", label=arm)
        right.plot(epochs, [e["net_pa_mpjpe_mm"] for e in r["epochs"]], "o-", color=line.get_color(),
                   label=f"{arm} PA-MPJPE")
        right.plot(epochs, [e["net_mpjpe_mm"] for e in r["epochs"]], "s--", color=line.get_color(), alpha=0.5,
                   label=f"{arm} MPJPE")
    left.set(xlabel="epoch", ylabel="mm", title="fits table vs. truth (PA-MPJPE)")
    right.set(xlabel="epoch", ylabel="mm", title="network on held-out people")
    left.legend()
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
