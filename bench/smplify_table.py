"""The readable form of a `bench.smplify` record: markdown tables of errors per start level and per cell, speed,
and the calibrated start noise."""
from __future__ import annotations

from typing import Any

_COLUMNS = ("start PA | fast PA | fast MPJPE | fast reproj px | fast wrong % | fast improved % | ref n | "
            "start PA (ref cases) | fast PA (ref cases) | ref PA | ref MPJPE | ref reproj px | ref wrong % | "
            "fast/ref PA")


def _num(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _errors(row: dict[str, Any]) -> str:
    fast, ref = row.get("fast"), row.get("reference")
    sub, start_sub = row.get("fast_on_reference_cases"), row.get("start_on_reference_cases")
    cells = [_num(row["start_error"]["pa_mpjpe_mm"])]
    cells += ([_num(fast["pa_mpjpe_mm"]), _num(fast["mpjpe_mm"]), _num(fast["reprojection_px"], 2),
               _num(fast["wrong_facing_pct"]), _num(fast["improved_pct"], 0)] if fast else ["–"] * 5)
    if ref:
        cells += [str(ref["cases"]),
                  _num((start_sub or {}).get("pa_mpjpe_mm")) if start_sub else _num(None),
                  _num(sub["pa_mpjpe_mm"]) if sub else "–",
                  _num(ref["pa_mpjpe_mm"]), _num(ref["mpjpe_mm"]), _num(ref["reprojection_px"], 2),
                  _num(ref["wrong_facing_pct"]), _num(row.get("pa_mpjpe_ratio_fast_over_reference"), 2)]
    else:
        cells += ["0"] + ["–"] * 7
    return " | ".join(cells)


def format_tables(result: dict[str, Any], cells: bool = True) -> str:
    """Markdown: the run, errors pooled per keypoints × start, per camera, per source, per cell (unless
    ``cells`` is False), speed, calibration."""
    cfg = result["config"]
    lines = [f"fitloop bench smplify, split {cfg['split']}: {cfg['cases']} people per source "
             f"({', '.join(result['sources'])}), the reference on the first {cfg['reference_cases']} of each cell; "
             f"{result['body_model']['name']}, {result['threads']} thread(s) on {result['device']}, "
             f"{result['wall_s'] / 60:.1f} min wall, {result['cpu_s'] / 60:.1f} min CPU, load average "
             f"{result['load_average_start'][0]:.1f} at the start, {result['load_average_end'][0]:.1f} at the end"]
    for name, note in result["sources_skipped"].items():
        lines.append(f"source {name} skipped: {note}")
    lines.append(f"prior: {result['prior']['check']}")
    lines.append("errors in mm (PA-MPJPE, MPJPE), reprojection in fit-frame px, wrong-facing % of the cases where "
                 "it is defined, improved % = fits with a lower PA-MPJPE than their start")
    speedup = result["speedup_fast_over_reference"]
    lines += ["", "Pooled over sources and cameras (fast/ref fits/s: the start level's speed ratio, below):", "",
              f"| keypoints | start | {_COLUMNS} | fast/ref fits/s |", "|" + "---|" * (3 + _COLUMNS.count("|") + 1)]
    for row in result["summary"]:
        lines.append(f"| {row['keypoints']} | {row['start']} | {_errors(row)} | {_num(speedup.get(row['start']), 0)} |")
    lines += ["", "Per camera (real: real camera, fitted in SPIN's crop frame with f = 5000 px; image: the same people "
              "and keypoints fitted with the real camera's intrinsics; crop: SPIN's crop camera), pooled over sources:",
              "", f"| camera | keypoints | start | {_COLUMNS} |", "|" + "---|" * (3 + _COLUMNS.count("|") + 1)]
    for row in result["summary_by_camera"]:
        lines.append(f"| {row['camera']} | {row['keypoints']} | {row['start']} | {_errors(row)} |")
    lifted = [row for row in result["summary_by_source"] if "lifted_start" in row]
    if lifted:
        lines += ["", "The fast mode's own start from the mean pose, lifted from the keypoints (`fitting.lifter`), "
                  "before any fitting (PA-MPJPE / MPJPE mm, wrong-facing %; the mean pose's own PA-MPJPE in the "
                  "tables' start column): " + "; ".join(
                      f"{row['source']} {row['keypoints']} {_num(row['lifted_start']['pa_mpjpe_mm'])} / "
                      f"{_num(row['lifted_start']['mpjpe_mm'])}, {_num(row['lifted_start'].get('wrong_facing_pct'))} %"
                      for row in lifted)]
    lines += ["", "Per source, pooled over cameras:", "",
              f"| source | keypoints | start | {_COLUMNS} |", "|" + "---|" * (3 + _COLUMNS.count("|") + 1)]
    for row in result["summary_by_source"]:
        lines.append(f"| {row['source']} | {row['keypoints']} | {row['start']} | {_errors(row)} |")
    if cells:
        lines += ["", "Per cell:", "", f"| source | camera | keypoints | start | {_COLUMNS} |",
                  "|" + "---|" * (4 + _COLUMNS.count("|") + 1)]
        for row in result["cells"]:
            lines.append(f"| {row['source']} | {row['camera']} | {row['keypoints']} | {row['start']} | "
                         f"{_errors(row)} |")
    speed = result["speed"]
    starts = [s for s in cfg["starts"] if any(s in v for v in speed.values())]
    if starts:
        lines += ["", "Speed (fits/s: wall; per CPU s: what one thread does when it has a core to itself):", "",
                  "| start | " + " | ".join(f"{m} fits/s | {m} fits/CPU s" for m in speed)
                  + " | fast/ref fits/s | fast/ref per CPU s |", "|---|" + "---|---|" * len(speed) + "---|---|"]
        for s in starts:
            parts = [f"{_num(speed[m][s]['fits_per_s'])} | {_num(speed[m][s]['fits_per_cpu_s'])}" if s in speed[m]
                     else "– | –" for m in speed]
            per_cpu = (speed["fast"][s]["fits_per_cpu_s"] / speed["reference"][s]["fits_per_cpu_s"]
                       if all(s in speed.get(m, {}) for m in ("fast", "reference")) else None)
            lines.append(f"| {s} | " + " | ".join(parts) + f" | {_num(speedup.get(s), 0)} | {_num(per_cpu, 0)} |")
    variants = [m for m in speed if any(s in speed[m] for s in starts)]
    if len(variants) > 1 or result.get("throughput"):
        lines += ["", "Every variant on the cases it fitted (CPU time, one process; fast/this: the fast mode's fits "
                  "per CPU s over this variant's; mesh: what the variant evaluates, vertices):", "",
                  "| start | variant | mesh | fits | CPU s | fits/CPU s | PA-MPJPE mm | fast/this per CPU s |",
                  "|---|---|---|---|---|---|---|---|"]
        against = result.get("speedup_fast_per_cpu_s_over", {})
        for s in starts:
            for m in variants:
                if s not in speed[m]:
                    continue
                t, mesh = speed[m][s], speed[m].get("mesh", "–")
                mesh = f"{mesh} ({speed[m]['vertices']})" if "vertices" in speed[m] else mesh
                lines.append(f"| {s} | {m} | {mesh} | {t['fits']} | {_num(t['cpu_s'])} | {_num(t['fits_per_cpu_s'])} "
                             f"| {_num(t.get('pa_mpjpe_mm'))} | {_num(against.get(m, {}).get(s), 1)} |")
    compiled = {m: v["compile_cpu_s"] for m, v in speed.items() if "compile_cpu_s" in v}
    if compiled:
        lines += ["", "Compiled (--compile: torch.compile of one LM iteration) in a warm-up before the timed fits, "
                  "not counted in them: " + ", ".join(f"{m} {_num(t)} CPU s" for m, t in compiled.items()) + "."]
    for m, levels in result.get("throughput", {}).items():
        lines += ["", f"Throughput, {m}: one call of batch {cfg['batch']} per start level, {result['threads']} "
                  "thread(s):", "", "| start | fits/CPU s | fits/s (wall) |", "|---|---|---|"]
        lines += [f"| {s} | {_num(t['fits_per_cpu_s'])} | {_num(t['fits_per_s'])} |" for s, t in levels.items()]
    if result.get("throughput_workers"):
        rows = result["throughput_workers"]
        first = next(iter(rows.values()))
        lines += ["", f"Throughput, fast, {first['workers']} one-thread processes at once: each fits "
                  f"{first['calls_per_worker']} calls of batch {first['batch']} per start level (fits/s: all their "
                  "fits over the parallel part's wall time; beside it, one process's fits/s from the row above):",
                  "", "| start | fits/s, all processes | fits/s, one process | fits/CPU s per process | load average |",
                  "|---|---|---|---|---|"]
        one = result.get("throughput", {}).get("fast", {})
        lines += [f"| {s} | {_num(t['fits_per_s'])} | {_num(one.get(s, {}).get('fits_per_s'))} "
                  f"| {_num(t['fits_per_cpu_s'])} | {t['load_average_start'][0]:.2f} |" for s, t in rows.items()]
    if result["calibration"]:
        lines += ["", "| source | calibrated on | start | σ rad (°) | median start PA-MPJPE there |",
                  "|---|---|---|---|---|"]
        for source, cal in result["calibration"].items():
            for level, sigma, reached in zip(cal["levels"], cal["sigma_rad"], cal["median_start_pa_mpjpe_mm"]):
                lines.append(f"| {source} | {cal['split']} ({cal['people']}) | {level} | {sigma:.3f} "
                             f"({sigma * 57.29578:.1f}) | {reached:.1f} |")
    return "\n".join(lines)
