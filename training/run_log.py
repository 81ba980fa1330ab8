"""What a run writes besides checkpoints: CSV logs, TensorBoard events (when installed) and a PNG of the curves.

Files in the run folder:

* ``metrics.csv``: one row per evaluation (`METRIC_COLUMNS`): the fits table against ground truth at the version
  written just before, and the network on the held-out shards. ``metrics_by_dataset.csv``: the same per dataset.
* ``train_log.csv``: every ``log_every`` steps: the loss terms, the share of fits the loop improved, the share of
  examples that supervise (``valid``) and of those the fit filter kept from it (``fits_filtered``), and the time
  in each part of the step (ms, averaged over the rows' steps).
* ``curves.png``: fits-table PA-MPJPE per fits version and network (PA-)MPJPE per epoch, redrawn after each
  evaluation.
* ``overlays/step_<step, 7 digits>.png``: at each evaluation with held-out shards, the network's meshes over the
  first held-out crops (`training.overlays`), one grid.
* ``tensorboard/``: the same scalars and each overlay grid (image ``net/overlays`` at the evaluation's step), when
  the ``tensorboard`` package is installed (the ``tensorboard`` extra: ``pip install fitloop[tensorboard]``).

On resume, rows past the checkpoint's step are dropped (they belong to the part of the run that is redone); an
overlay picture of a redone evaluation is drawn again under the same name.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

METRIC_COLUMNS = ("epoch", "step", "fits_version", "fits_pa_mpjpe_mm", "fits_mpjpe_mm", "fits_samples",
                  "net_pa_mpjpe_mm", "net_mpjpe_mm", "net_samples", "wall_s")
BY_DATASET_COLUMNS = ("epoch", "step", "fits_version", "of", "dataset", "pa_mpjpe_mm", "mpjpe_mm", "samples")
TRAIN_COLUMNS = ("epoch", "step", "loss", "keypoints_2d", "keypoints_3d", "pose", "betas", "camera", "fits_updated",
                 "fits_kept", "valid", "fits_filtered", "data_ms", "network_ms", "smplify_ms", "write_back_ms",
                 "step_ms")
# a run with whole-body heads (`training.regressor`) also logs its whole-body terms and how many loop fits were
# whole-body fits (appended, so an SMPL run's log is as before)
WHOLEBODY_TRAIN_COLUMNS = ("keypoints_wholebody", "hand_pose", "jaw_pose", "expression", "fits_wholebody")
# a run whose head has its own loss terms (`training.heads.Head.terms`: graphcmr's) logs them last
# a run with image losses on (`training.mask_loss`, `training.dsr_loss`) also logs each one that is on and the share
# of the batch it reads (``<term>_samples``), in this order
IMAGE_TERMS = ("mask", "dsr_mc", "dsr_c")
PARTS = ("data", "network", "smplify", "write_back")
# the run folder's log files (module docstring)
METRICS_CSV, BY_DATASET_CSV, TRAIN_CSV, CURVES_PNG, OVERLAYS_DIR, TENSORBOARD_DIR = (
    "metrics.csv", "metrics_by_dataset.csv", "train_log.csv", "curves.png", "overlays", "tensorboard")
LOG_FILES = (METRICS_CSV, BY_DATASET_CSV, TRAIN_CSV, CURVES_PNG, OVERLAYS_DIR, TENSORBOARD_DIR)
OVERLAYS_TAG = "net/overlays"   # the TensorBoard image of the overlay grids


def overlay_path(run_dir: Path, step: int) -> Path:
    """Where the overlay grid of the evaluation at ``step`` goes (module docstring)."""
    return Path(run_dir) / OVERLAYS_DIR / f"step_{step:07d}.png"


class CsvLog:
    """An append-only CSV with a fixed header; `truncate_after` drops rows past a step (resume)."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path, self.columns = Path(path), tuple(columns)

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in self.columns})

    def rows(self) -> list[dict[str, Any]]:
        """The rows written, with numbers as int or float and empty cells as None."""
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(f)]

    def truncate_after(self, step: int) -> None:
        kept = [r for r in self.rows() if int(r["step"]) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows({k: _fmt(v) for k, v in row.items()} for row in kept)
        tmp.replace(self.path)


def _number(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _mm(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def describe_train_row(row: dict[str, Any]) -> str:
    """One line for a `train_log.csv` row: loss, share of fits improved, time per step and per part (the parts
    only where they were timed: ``--profile-parts``)."""
    parts = ", ".join(f"{p.replace('_', '-')} {row[p + '_ms']:.0f}" for p in PARTS if row.get(p + "_ms") is not None)
    return (f"epoch {row['epoch'] + 1} step {row['step']}: loss {row['loss']:.4g}, fits improved "
            f"{row['fits_updated']:.0%}, {row['step_ms']:.0f} ms/step" + (f" ({parts} ms)" if parts else ""))


def describe_evaluation(row: dict[str, Any]) -> str:
    """One line for a `metrics.csv` row: the fits table's and the network's errors."""
    when = "before training" if row["epoch"] == 0 else f"after epoch {row['epoch']}"
    return (f"evaluation {when} (step {row['step']}): fits table v{row['fits_version']} "
            f"PA-MPJPE {_mm(row['fits_pa_mpjpe_mm'])} mm ({row['fits_samples']} samples); network PA-MPJPE "
            f"{_mm(row['net_pa_mpjpe_mm'])} / MPJPE {_mm(row['net_mpjpe_mm'])} mm ({row['net_samples']} samples)")


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


class RunLog:
    """The run's logs (module docstring). Only rank 0 writes. ``echo``: also called with one line per training-log
    row and per evaluation (`describe_train_row`, `describe_evaluation`): a flow passes its run logger's ``info``.
    ``head_terms``: the loss terms the run's head adds (`training.heads.Head.terms`), logged after the others."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, enabled: bool = True,
                 echo: Callable[[str], None] | None = None, wholebody: bool = False,
                 image_terms: tuple[str, ...] = (), head_terms: tuple[str, ...] = ()) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.echo = echo
        self.metrics = CsvLog(self.run_dir / METRICS_CSV, METRIC_COLUMNS)
        self.by_dataset = CsvLog(self.run_dir / BY_DATASET_CSV, BY_DATASET_COLUMNS)
        self.train = CsvLog(self.run_dir / TRAIN_CSV, TRAIN_COLUMNS + (WHOLEBODY_TRAIN_COLUMNS if wholebody else ())
                            + tuple(c for t in IMAGE_TERMS if t in image_terms for c in (t, f"{t}_samples"))
                            + head_terms)
        self.writer = None
        self.tensorboard_note = "off"
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # torch's writer needs the tensorboard package
                self.tensorboard_note = "tensorboard is not installed: CSV and PNG only"
            else:
                self.writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR))
                self.tensorboard_note = str(self.run_dir / TENSORBOARD_DIR)

    def truncate_after(self, step: int) -> None:
        if self.enabled:
            for log in (self.metrics, self.by_dataset, self.train):
                if log.path.exists():
                    log.truncate_after(step)

    def log_train(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.train.append(row)
        if self.echo is not None:
            self.echo(describe_train_row(row))
        if self.writer is not None:
            for key in self.train.columns[2:]:
                if isinstance(row.get(key), (int, float)):
                    self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def log_evaluation(self, epoch: int, step: int, fits_version: int | None, fits: dict, net: dict,
                       wall_s: float) -> dict[str, Any]:
        """Write one evaluation (fits and net: dataset -> errors, with "all"); returns the metrics row."""
        f_all, n_all = fits.get("all", {}), net.get("all", {})
        row = {"epoch": epoch, "step": step, "fits_version": fits_version,
               "fits_pa_mpjpe_mm": f_all.get("pa_mpjpe_mm", math.nan), "fits_mpjpe_mm": f_all.get("mpjpe_mm", math.nan),
               "fits_samples": f_all.get("samples", 0), "net_pa_mpjpe_mm": n_all.get("pa_mpjpe_mm", math.nan),
               "net_mpjpe_mm": n_all.get("mpjpe_mm", math.nan), "net_samples": n_all.get("samples", 0),
               "wall_s": wall_s}
        if not self.enabled:
            return row
        self.metrics.append(row)
        for of, results in (("fits", fits), ("net", net)):
            for dataset, e in results.items():
                self.by_dataset.append({"epoch": epoch, "step": step, "fits_version": fits_version, "of": of,
                                        "dataset": dataset, "pa_mpjpe_mm": e["pa_mpjpe_mm"], "mpjpe_mm": e["mpjpe_mm"],
                                        "samples": e["samples"]})
                if self.writer is not None:
                    self.writer.add_scalar(f"{of}/{dataset}/pa_mpjpe_mm", e["pa_mpjpe_mm"], step)
                    self.writer.add_scalar(f"{of}/{dataset}/mpjpe_mm", e["mpjpe_mm"], step)
        if self.writer is not None:
            self.writer.flush()
        plot_curves(self.run_dir)
        if self.echo is not None:
            self.echo(describe_evaluation(row))
        return row

    def log_overlays(self, step: int, picture: Image.Image) -> Path | None:
        """Write one evaluation's overlay grid (`training.overlays.overlay_grid`) as `overlay_path` and, with
        TensorBoard, as the image `OVERLAYS_TAG` at ``step``; returns the PNG's path (None when not rank 0)."""
        if not self.enabled:
            return None
        path = overlay_path(self.run_dir, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        picture.save(tmp, format="PNG")
        tmp.replace(path)
        if self.writer is not None:
            self.writer.add_image(OVERLAYS_TAG, np.asarray(picture.convert("RGB")), step, dataformats="HWC")
            self.writer.flush()
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(run_dir: Path) -> Path | None:
    """Draw ``curves.png`` from ``metrics.csv``: fits-table PA-MPJPE per version (left) and network PA-MPJPE and
    MPJPE per epoch (right). Returns the path, or None without rows."""
    rows = CsvLog(Path(run_dir) / METRICS_CSV, METRIC_COLUMNS).rows()
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(x: str, y: str) -> tuple[list[float], list[float]]:
        pts = [(float(r[x]), float(r[y])) for r in rows if r.get(x) not in ("", None) and r.get(y) not in ("", None)]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x, y = series("fits_version", "fits_pa_mpjpe_mm")
    left.plot(x, y, "o-", label="PA-MPJPE")
    x2, y2 = series("fits_version", "fits_mpjpe_mm")
    left.plot(x2, y2, "s--", alpha=0.6, label="MPJPE")
    left.set(xlabel="fits table version", ylabel="mm", title="fits table vs. ground truth")
    left.legend()
    for column, style in (("net_pa_mpjpe_mm", "o-"), ("net_mpjpe_mm", "s--")):
        x, y = series("epoch", column)
        right.plot(x, y, style, label=column.removeprefix("net_").removesuffix("_mm").upper().replace("_", "-"))
    right.set(xlabel="epoch", ylabel="mm", title="network on held-out shards")
    right.legend()
    fig.tight_layout()
    path = Path(run_dir) / CURVES_PNG
    tmp = path.with_name(path.name + ".tmp")  # a run killed while drawing leaves the previous picture whole
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
