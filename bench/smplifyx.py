"""`fitloop bench smplifyx`: batched SMPLify-X (fast mode) against SMPLify-X's own procedure (reference mode) on the
same synthetic whole-body people, in one run, with the interpenetration of every fit measured on the mesh.

People, keypoints (5 px noise, 10% missing) and errors are `bench.smplifyx_cases`'s: body poses from held-out
sources (CMU subjects the prior never saw, SPIN's LSP fits, prior samples) of one split (``dev`` to tune on,
``test`` to report: `bench.smplifyx_cases.SPLITS`), ``people`` per source, interleaved; body PA-MPJPE on the 14
LSP joints, each hand's PA-MPJPE after aligning it at its wrist, face landmark reprojection (px). The fast mode
fits every person at ``batch``; the reference one person at a time (as SMPLify-X runs) on the first
``reference_people`` (so a multiple of the source count covers them evenly), and the fast mode's figures on
those same people are printed beside it, with how many of them the fast mode fits at least as well as the
reference, per error and by the objective. Interpenetration:
`fitting.collision.mesh_interpenetration` (winding numbers of one part's vertices against the other parts' posed
triangles, neighbouring parts not tested) on the true bodies and on the fits; "interpenetrating" is any vertex more
than `DEEP_MM` inside another part. SMPLify-X's fast mode has no interpenetration term yet (its stage table carries
the weights), so the figure "with the term" is absent and the record says so.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from bench.smplify_cases import BenchCaseError
from bench.smplifyx_cases import MISSING, NOISE_PX, SOURCES, People, bench_people, compare
from fitting.collision import mesh_interpenetration, mesh_parts
from fitting.smplifyx import SMPLifyX, SMPLifyXConfig
from fitting.wholebody_model import WholeBodyModel

DEEP_MM = 10.0  # a fit counts as interpenetrating when some vertex is this deep inside another part


def interpenetration(model: WholeBodyModel, full_pose: torch.Tensor, betas: torch.Tensor,
                     expression: torch.Tensor) -> dict[str, float]:
    """Share of bodies (B) with any vertex inside a non-neighbouring part, and deeper than `DEEP_MM`, and the mean
    depth (mm) of those that interpenetrate."""
    _, labels, ignore = mesh_parts(model.body)
    with torch.no_grad():
        vertices = model.forward_full(full_pose, betas, expression).vertices.double().cpu()
    contact = mesh_interpenetration(vertices, model.body.faces, labels, ignore)
    depth = 1000 * contact.depth.double()
    inside = contact.inside
    return {"share": float(inside.double().mean()),
            f"share_deeper_{DEEP_MM:g}mm": float((depth > DEEP_MM).double().mean()),
            "mean_depth_mm": float(depth[inside].mean()) if bool(inside.any()) else 0.0}


def run(model: WholeBodyModel, *, people: int = 64, reference_people: int = 9, batch: int = 64, seed: int = 0,
        threads: int = 1, split: str = "test", sources: tuple[str, ...] = SOURCES) -> dict[str, Any]:
    """The benchmark's record (module docstring): ``people`` per source; ``threads`` torch threads, set here and
    recorded."""
    torch.set_num_threads(threads)
    cases: People
    cases, about = bench_people(model, sources, split, people, seed)
    if not 1 <= reference_people <= len(cases.origin):
        raise BenchCaseError(f"--reference-people must be in 1..{len(cases.origin)} (the people of "
                             f"{len(about['sources'])} source(s)), got {reference_people}")
    fast = SMPLifyX(model)
    reference = SMPLifyX(model, config=SMPLifyXConfig(mode="reference"))
    start = time.perf_counter()
    figures, fit, ref = compare(model, cases, reference_people, batch, fast=fast, reference=reference)
    record: dict[str, Any] = {
        "model": model.body.model_id, "split": split, "sources": about["sources"],
        "sources_left_out": about["left_out"], "source_pools": about["pools"], "people_per_source": people,
        "people": len(cases.origin), "reference_people": reference_people,
        "reference_origins": list(cases.origin[:reference_people]), "batch": batch, "threads": threads, "seed": seed,
        "noise_px": NOISE_PX, "missing": MISSING, **figures}
    k = reference_people
    record["interpenetration"] = {
        "truth": interpenetration(model, cases.full_pose, cases.betas, cases.expression),
        "fast": interpenetration(model, fit.full_pose, fit.betas, fit.expression),
        "fast_on_reference_people": interpenetration(model, fit.full_pose[:k], fit.betas[:k], fit.expression[:k]),
        "reference": interpenetration(model, ref.full_pose, ref.betas, ref.expression),
        "with_term": None,
        "note": "SMPLify-X's fast mode has no interpenetration term yet: only fits without it are measured",
    }
    record["seconds"] = time.perf_counter() - start
    return record


ROWS = (("fast (all)", "fast"), ("fast (reference's people)", "fast_on_reference_people"),
        ("reference", "reference"))
COLUMNS = (("body PA-MPJPE mm", "body_pa_mpjpe_mm"), ("left hand mm", "left_hand_pa_mpjpe_mm"),
           ("right hand mm", "right_hand_pa_mpjpe_mm"), ("face px", "face_reprojection_px"),
           ("objective", "objective"), ("fits/s", "fits_per_s"))


def table(record: dict[str, Any]) -> str:
    """The record as a Markdown table, the speed-up and the interpenetration shares."""
    lines = ["| | " + " | ".join(name for name, _ in COLUMNS) + " | interpenetrating |",
             "|---|" + "---|" * (len(COLUMNS) + 1)]
    for label, key in ROWS:
        cells = [f"{record[key][field]:.3g}" if field == "fits_per_s" else f"{record[key][field]:.1f}"
                 if field != "face_reprojection_px" else f"{record[key][field]:.2f}" for _, field in COLUMNS]
        share = record["interpenetration"][key]["share"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * share:.0f}% |")
    lines.append(f"\nfast / reference fits/s: {record['speedup']['fits_per_s']:.0f}x ({record['threads']} thread(s), "
                 f"batch {record['batch']}); true bodies interpenetrating: "
                 f"{100 * record['interpenetration']['truth']['share']:.0f}%; "
                 f"{record['interpenetration']['note']}")
    return "\n".join(lines)
