"""The demo's report: counts and rejects of the shard set, fit errors per fits-table version, training curves.

Fit errors are measured against the synthetic ground truth (`fitloop_truth.npz` beside each generated dataset):
for every version of the fits table, the best fit of each key as of that version is posed with the body model
and compared with the true 3D joints on the 14 LSP-style evaluation joints (PA-MPJPE, mm).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.joints import EVAL_J14, indices


def load_truth_joints(roots: list[Path]) -> dict[str, np.ndarray]:
    """key -> true 3D joints (49, 3) from the truth files under the given dataset folders."""
    truth: dict[str, np.ndarray] = {}
    for root in roots:
        path = Path(root) / "fitloop_truth.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                truth.update(zip((str(k) for k in z["key"]), z["joints_3d"]))
    return truth


def fit_errors_by_version(table_path: Path, truth: dict[str, np.ndarray], body: Any) -> list[dict[str, Any]]:
    """[{version, fits, with_truth, pa_mpjpe_mm, source}] for every version of the fits table."""
    from core.metrics import pa_mpjpe
    from fits.table import FitsTable

    table = FitsTable.open(table_path)
    eval_idx = torch.as_tensor(indices(EVAL_J14))
    rows = []
    for entry in table.versions():
        version = entry["version"]
        best = table.best(version=version)
        keys = best["key"].to_pylist()
        known = [i for i, k in enumerate(keys) if k in truth]
        row = {"version": version, "fits": len(keys), "with_truth": len(known), "pa_mpjpe_mm": float("nan")}
        if known:
            pose = torch.as_tensor(np.stack(best["pose"].to_numpy(zero_copy_only=False)[known]), dtype=torch.float32)
            betas = torch.as_tensor(np.stack(best["betas"].to_numpy(zero_copy_only=False)[known]),
                                    dtype=torch.float32)
            with torch.no_grad():
                joints = body(betas, pose[:, 3:], pose[:, :3]).joints[:, eval_idx]
            true = torch.as_tensor(np.stack([truth[keys[i]] for i in known]), dtype=torch.float32)[:, eval_idx]
            row["pa_mpjpe_mm"] = float(1000 * pa_mpjpe(joints, true).mean())
        rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.1f}" if isinstance(row[c], float) else "–" if row[c] is None else str(row[c])
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(out: Path, *, manifest: dict[str, Any], seed: dict[str, Any], train: dict[str, Any],
                 fit_errors: list[dict[str, Any]], pictures: dict[str, str], timings: dict[str, float],
                 notes: list[str]) -> Path:
    """Write ``out/report.md``; returns its path."""
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
              "Error of the best fits as of each table version against the synthetic ground truth (PA-MPJPE on the "
              "14 LSP joints; the fixtures' real people have no 3D truth and are not counted):", "",
              *_table(fit_errors, ["version", "fits", "with_truth", "pa_mpjpe_mm"]), ""]
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
    if pictures.get("shape"):
        lines += ["## Body model", "", "The open model's first three shape coefficients at −2, 0 and +2 standard "
                  "deviations, with its 49 canonical joints (blue left, red right, green central):", "",
                  f"![shape space]({pictures['shape']})", ""]
    path = Path(out) / "report.md"
    path.write_text("\n".join(lines))
    return path
