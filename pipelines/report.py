"""The demo's report: counts and rejects of the shard set, fit errors per fits-table version, training curves,
and the whole-body people's SMPLify-X fits (errors per dataset; their picture: `render.wholebody_picture`).

Fit errors are fitloop's one fit-vs-truth evaluation (`fits.evaluate`, SPIN's protocol; the report prints its
definition): for every version of the fits table, the best fit of each key as of that version among the fits of
the report's body model is posed with that model, and compared on the 14 evaluation joints with the person's true
body from the synthetic truth file (`fitloop_truth.npz` beside each generated dataset), posed the same way.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch

from core.errors import FitloopError
from fits.evaluate import EVALUATION, NUM_EVAL_JOINTS, FitsGroundTruth, evaluate_fits
from fits.table import FitsTable
from fitting.body_model import BodyModel
from pipelines.synthetic.truth import TRUTH_FILE, load_truth


def synthetic_truth(roots: Sequence[Path], body: BodyModel) -> FitsGroundTruth:
    """The true bodies of the synthetic datasets under ``roots`` (each one's truth file; folders without one are
    skipped) as the truth for fits of ``body``, the model they were drawn with. A key's dataset is its first path
    component (``lsp/im0001`` -> ``lsp``). Truth drawn with another body model is refused: its bodies mean nothing
    in this model's shape space."""
    keys: list[str] = []
    pose, betas = [], []
    for root in roots:
        path = Path(root) / TRUTH_FILE
        if not path.is_file():
            continue
        truth = load_truth(path)
        drawn_with = truth.metadata.get("body_model", {}).get("model_id")
        if drawn_with != body.model_id:
            raise FitloopError(f"{path}: the people were drawn with body model {drawn_with or 'unknown'}, the fits "
                               f"are evaluated with {body.model_id}; report with the model the data was made with")
        keys += [str(k) for k in truth.arrays["key"]]
        pose.append(truth.arrays["pose"])
        betas.append(truth.arrays["betas"])
    if not keys:
        return FitsGroundTruth([], [], torch.zeros(0, NUM_EVAL_JOINTS, 3), body.model_id)
    return FitsGroundTruth.from_bodies(keys, [k.split("/", 1)[0] for k in keys],
                                       torch.as_tensor(np.concatenate(pose)), torch.as_tensor(np.concatenate(betas)),
                                       body)


def fit_errors_by_version(table_path: Path, truth: FitsGroundTruth, body: BodyModel) -> list[dict[str, Any]]:
    """[{version, fits, with_truth, pa_mpjpe_mm, mpjpe_mm, body_model_id}] for every version of the fits table:
    ``fits`` counts the keys with a fit of ``body``'s model, ``with_truth`` those of them in ``truth``; errors in
    mm (`fits.evaluate.evaluate_fits`), NaN without any."""
    table = FitsTable.open(table_path)
    rows = []
    for entry in table.versions():
        version = entry["version"]
        keys = table.log(version=version, columns=["key"], where=pc.field("body_model_id") == body.model_id)["key"]
        errors = evaluate_fits(table, body, truth, version=version).get("all", {})
        rows.append({"version": version, "fits": pc.count_distinct(keys).as_py(),
                     "with_truth": errors.get("samples", 0), "pa_mpjpe_mm": errors.get("pa_mpjpe_mm", math.nan),
                     "mpjpe_mm": errors.get("mpjpe_mm", math.nan), "body_model_id": body.model_id})
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return lines


def _cell(value: Any) -> str:
    """A table cell: floats to 0.1; a missing number (None, NaN: nothing to measure) as a dash, never 'None'/'nan'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


WHOLEBODY_ERRORS = ("body_pa_mpjpe_mm", "left_hand_pa_mpjpe_mm", "right_hand_pa_mpjpe_mm", "face_reprojection_px")
# how the whole-body fits started (the demo's record says which: `fitloop.commands.demo.wholebody_fits`)
WHOLEBODY_STARTS = {"lifted": "from a start lifted from the body keypoints (its last two stages)",
                    "mean": "from the mean start (all five stages)"}


def write_report(out: Path, *, manifest: dict[str, Any], seed: dict[str, Any], train: dict[str, Any],
                 fit_errors: list[dict[str, Any]], pictures: dict[str, str], timings: dict[str, float],
                 notes: list[str], wholebody: dict[str, Any] | None = None,
                 ablation: dict[str, Any] | None = None) -> Path:
    """Write ``out/report.md``; returns its path. ``wholebody``: the whole-body fits' summary (the demo's
    ``wholebody_fits``: rows of per-dataset median errors, fits, seconds, model_id, version), or None.
    ``ablation``: SPIN's ablation as the demo ran it (`bench.loop`): ``conclusion`` (markdown lines), ``table``
    (markdown), ``picture`` (a path relative to ``out``) and ``cpu_s``, or None."""
    c = manifest["counts"]
    lines = ["# fitloop demo report", "", *notes, "", "## Timings", "",
             *_table([{"stage": k, "seconds": v} for k, v in timings.items()], ["stage", "seconds"]), "",
             "## Shards", "",
             f"read {c['read']} = written {c['written']} + rejected {c['rejected']}; {len(manifest['shards'])} "
             f"shards in `{Path(train['run_dir']).parent / 'shards'}`.", "",
             *_table([{"dataset": d, "split": s, **v} for d, splits in manifest["by_dataset"].items()
                      for s, v in splits.items()], ["dataset", "split", "read", "written", "rejected"]), ""]
    if manifest["rejects_by_reason"]:
        lines += ["Rejects by reason:", "",
                  *_table([{"reason": r, "count": n} for r, n in manifest["rejects_by_reason"].items()],
                          ["reason", "count"]), ""]
    lines += ["## Fits table", "",
              f"Seed run: {seed['fitted']} samples fitted from the mean pose, {seed['appended']} fits appended. "
              f"Training wrote improved fits back at every checkpoint and epoch end.", "",
              f"Error of the best fits of body model `{fit_errors[0]['body_model_id'] if fit_errors else '-'}` as of "
              f"each table version against the synthetic ground truth (the fixtures' real people have no 3D truth "
              f"and are not counted), in mm. Definition (`fits.evaluate`): {EVALUATION}.", "",
              *_table(fit_errors, ["version", "fits", "with_truth", "pa_mpjpe_mm", "mpjpe_mm"]), ""]
    if pictures.get("fits"):
        lines += [f"![sample fits]({pictures['fits']})", ""]
    metrics = train.get("metrics") or []
    if metrics:
        columns = [k for k in ("epoch", "step", "fits_version", "fits_pa_mpjpe_mm", "net_pa_mpjpe_mm", "net_mpjpe_mm")
                   if k in metrics[0]]
        lines += ["## Training", "", f"Run folder `{train['run_dir']}`: {train['epochs']} epochs, {train['step']} "
                  f"steps, {train['wall_s']:.0f} s. Evaluations (held-out Human3.6M subjects S9, S11):", "",
                  *_table(metrics, columns), ""]
    if pictures.get("curves"):
        lines += [f"![training curves]({pictures['curves']})", ""]
    if ablation:
        lines += ["## SPIN's ablation: static fits, fits in the loop, and a control", "",
                  "The same keypoints network trained three ways on the same synthetic people (`fitloop bench loop`, "
                  "`bench/loop.py`): on the static seed fits; with SMPLify in the loop from the network's estimate "
                  "(SPIN); and a control refitted in the loop from the mean start, with no network start. "
                  f"{ablation['cpu_s']:.0f} CPU s, one torch thread. Outcome, last epoch:", "",
                  *ablation["conclusion"], "", ablation["table"], ""]
        if ablation.get("picture"):
            lines += [f"![SPIN's ablation]({ablation['picture']})", ""]
    if wholebody and wholebody.get("rows"):
        lines += ["## Whole-body people (SMPL-X)", "",
                  f"{wholebody['fits']} whole-body samples (the synthetic COCO-WholeBody and OpenPose people: open "
                  f"SMPL-X model, hands posed, faces with expressions; their own shard set "
                  f"`{wholebody['shards']['path']}`: read {wholebody['shards']['read']} = written "
                  f"{wholebody['shards']['written']} + rejected {wholebody['shards']['rejected']}) fitted with "
                  f"SMPLify-X's fast mode (`fitting.smplifyx`, batched Levenberg–Marquardt over SMPLify-X's "
                  f"stages) in {wholebody['seconds']:.1f} s ({wholebody['fits_per_s']:.1f} fits/s), "
                  f"{WHOLEBODY_STARTS[wholebody.get('start', 'mean')]}, in the fit frame, and appended to the fits "
                  f"table as whole-body fits of `{wholebody['model_id']}` "
                  f"(version {_cell(wholebody.get('version'))}). Median errors against the truth: body PA-MPJPE "
                  f"on the 14 LSP joints (mm), each hand's PA-MPJPE after aligning it at its wrist (mm), face "
                  f"landmark reprojection against the true landmarks (fit-frame px, 224 px crops):", "",
                  *_table(wholebody["rows"], ["dataset", "fits", *WHOLEBODY_ERRORS]), ""]
        if pictures.get("wholebody"):
            lines += ["Each row: the stored crop with its keypoints (hands cyan and orange, face magenta), the "
                      "whole-body fit drawn over it, and that picture magnified 3 times at the face and at a hand.",
                      "", f"![whole-body fits]({pictures['wholebody']})", ""]
    if pictures.get("shape"):
        lines += ["## Body model", "", "The open model's first three shape coefficients at −2, 0 and +2 standard "
                  "deviations, with its 49 canonical joints (blue left, red right, green central):", "",
                  f"![shape space]({pictures['shape']})", ""]
    path = Path(out) / "report.md"
    path.write_text("\n".join(lines))
    return path
