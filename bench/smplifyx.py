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
than `DEEP_MM` inside another part. The interpenetration term (`fitting.smplifyx`: SMPLify-X's ``interpenetration``
on capsule proxies): ``with_term`` fits the same people with the fast mode twice more, without and with it, timed
alike (CPU seconds of this process, besides the wall seconds every row has), and gives per side the errors, fits/s,
the mesh check's figures and the capsules' mean penalty; the default's side repeats the "fast" row's fits (its mesh
check is not run again: `contacts` once per fit, summarised for all people and for the reference's).
``throughput``: the fast mode's fits/s at ``batch`` in ``throughput_threads`` torch threads (the issue's "2 CPU
cores at batch 64"), after a warm-up batch; ``must_show``: issue 14's claims checked against this run's figures
(`MUST_SPEEDUP`, `MUST_FITS_PER_S`, the fast mode's mean errors on the reference's people at most the reference's).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from bench.smplify_cases import BenchCaseError
from bench.smplifyx_cases import (
    MISSING,
    NOISE_PX,
    SOURCES,
    People,
    bench_people,
    compare,
    fit_errors,
    summary,
    timed_fit,
)
from core.threads import torch_threads
from fitting.collision import mesh_interpenetration, mesh_parts
from fitting.pose_terms import DEFAULT_BODY_PRIOR, DEFAULT_HAND_PRIOR, BodyPrior, HandPrior, body_term, hand_term
from fitting.smplifyx import COLLISION_SCALE, SMPLifyX, SMPLifyXConfig
from fitting.wholebody_model import FULL_POSE_DIM, WholeBodyModel

DEEP_MM = 10.0  # a fit counts as interpenetrating when some vertex is this deep inside another part
MUST_SPEEDUP = 100.0    # issue 14: the fast mode's fits/s over the reference procedure's, at least
MUST_FITS_PER_S = 20.0  # issue 14: whole-body fits/s on 2 CPU cores at batch 64, at least


def contacts(model: WholeBodyModel, full_pose: torch.Tensor, betas: torch.Tensor,
             expression: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per body (B): whether any vertex is inside a non-neighbouring part, and the deepest such vertex's depth (mm);
    the mesh check (`fitting.collision.mesh_interpenetration`) that the figures below summarise."""
    _, labels, ignore = mesh_parts(model.body)
    with torch.no_grad():
        vertices = model.forward_full(full_pose, betas, expression).vertices.double().cpu()
    contact = mesh_interpenetration(vertices, model.body.faces, labels, ignore)
    return contact.inside, 1000 * contact.depth.double()


def summarise_contacts(inside: torch.Tensor, depth: torch.Tensor) -> dict[str, float]:
    """Share of bodies with any vertex inside a non-neighbouring part, and deeper than `DEEP_MM`, and the mean
    depth (mm) of those that interpenetrate."""
    return {"share": float(inside.double().mean()),
            f"share_deeper_{DEEP_MM:g}mm": float((depth > DEEP_MM).double().mean()),
            "mean_depth_mm": float(depth[inside].mean()) if bool(inside.any()) else 0.0}


def interpenetration(model: WholeBodyModel, full_pose: torch.Tensor, betas: torch.Tensor,
                     expression: torch.Tensor) -> dict[str, float]:
    """`summarise_contacts` of the bodies' `contacts`."""
    return summarise_contacts(*contacts(model, full_pose, betas, expression))


def with_and_without_term(model: WholeBodyModel, people: People, batch: int,
                          collision_scale: float = COLLISION_SCALE, default_contacts: dict[str, float] | None = None,
                          **priors: Any) -> dict[str, Any]:
    """The fast mode without and with the interpenetration term on the same people at ``batch``: per side
    (``without``, ``with``) the errors and objective (each side's own: with the term it holds the collision term),
    fits per wall and per CPU second, the capsules' mean penalty (m², `SMPLifyXResult.extras`) and `interpenetration`;
    and the term's scale (default: the config's; another is how `COLLISION_SCALE` was chosen, docs/smplifyx.md)
    and the ratio of CPU seconds. ``default_contacts``: the mesh check's figures of the default config's fits of these
    people with these priors, when the caller has them (the fit is deterministic: the check is not run again)."""
    out: dict[str, Any] = {}
    default_on = SMPLifyXConfig().interpenetration
    count = people.keypoints.shape[0]
    for side, on in (("without", False), ("with", True)):
        fitter = SMPLifyX(model, config=SMPLifyXConfig(interpenetration=on, collision_scale=collision_scale),
                          **priors)
        cpu = time.process_time()
        fit, wall = timed_fit(fitter, people, batch)
        cpu = time.process_time() - cpu
        known = default_contacts is not None and on == default_on and collision_scale == COLLISION_SCALE
        out[side] = {**summary(fit_errors(fit, people), fit.objective, wall, count), "fits_per_cpu_s": count / cpu,
                     "cpu_seconds": cpu, "capsule_penalty_m2": float(fit.extras["collision_penalty"].double().mean()),
                     **(default_contacts if known else interpenetration(model, fit.full_pose, fit.betas,
                                                                         fit.expression))}
    out["collision_scale"] = collision_scale
    out["default"] = "with" if default_on else "without"
    out["cpu_seconds_ratio"] = out["with"]["cpu_seconds"] / out["without"]["cpu_seconds"]
    return out


def throughput(fitter: SMPLifyX, people: People, batch: int, threads: int) -> dict[str, Any]:
    """The fast mode's fits/s in ``threads`` torch threads at ``batch`` (at most the people's count): one warm-up
    batch, then every whole batch of ``people`` timed (wall seconds); the caller's thread count is restored."""
    batch = min(batch, people.keypoints.shape[0])
    whole = people.keypoints.shape[0] // batch * batch
    with torch_threads(threads):
        timed_fit(fitter, people.subset(slice(0, batch)), batch)
        _, wall = timed_fit(fitter, people.subset(slice(0, whole)), batch)
    return {"threads": threads, "batch": batch, "fits": whole, "seconds": wall, "fits_per_s": whole / wall}


def must_show(record: dict[str, Any]) -> dict[str, Any]:
    """Issue 14's claims, each checked against this record's own figures."""
    fast, ref = record["fast_on_reference_people"], record["reference"]
    errors = {name: fast[name] <= ref[name] for name in ERRORS}
    return {"speedup_at_least": MUST_SPEEDUP, "speedup_holds": record["speedup"]["fits_per_s"] >= MUST_SPEEDUP,
            "errors_at_most_reference": errors, "errors_hold": all(errors.values()),
            "fits_per_s_at_least": MUST_FITS_PER_S, "throughput_threads": record["throughput"]["threads"],
            "throughput_batch": record["throughput"]["batch"],
            "throughput_holds": record["throughput"]["fits_per_s"] >= MUST_FITS_PER_S}


def run(model: WholeBodyModel, *, people: int = 64, reference_people: int = 9, batch: int = 64, seed: int = 0,
        threads: int = 1, split: str = "test", sources: tuple[str, ...] = SOURCES,
        body_prior: BodyPrior = DEFAULT_BODY_PRIOR, hand_prior: HandPrior = DEFAULT_HAND_PRIOR,
        hand_pca: Path | None = None, throughput_threads: int = 2) -> dict[str, Any]:
    """The benchmark's record (module docstring): ``people`` per source; ``threads`` torch threads, set here and
    recorded (``throughput_threads`` for the throughput row only); the body and hand priors by name (`fitting.pose_terms`: both modes minimise the same objective with
    them)."""
    torch.set_num_threads(threads)
    # the mesh check on one rest body first: a mesh it cannot measure is refused before minutes of fitting
    rest = torch.zeros(1, FULL_POSE_DIM, dtype=model.rows.dtype, device=model.rows.device)
    contacts(model, rest, rest[:, :model.num_betas], rest[:, :model.num_expression])
    cases: People
    cases, about = bench_people(model, sources, split, people, seed)
    if not 1 <= reference_people <= len(cases.origin):
        raise BenchCaseError(f"--reference-people must be in 1..{len(cases.origin)} (the people of "
                             f"{len(about['sources'])} source(s)), got {reference_people}")
    dtype, device = model.rows.dtype, model.rows.device
    priors = {"body_prior": body_term(body_prior, dtype=dtype, device=device),
              "hand_prior": hand_term(hand_prior, hand_pca, dtype=dtype, device=device)}
    fast = SMPLifyX(model, **priors)
    reference = SMPLifyX(model, config=SMPLifyXConfig(mode="reference"), **priors)
    start = time.perf_counter()
    figures, fit, ref = compare(model, cases, reference_people, batch, fast=fast, reference=reference)
    record: dict[str, Any] = {
        "model": model.body.model_id, "split": split, "sources": about["sources"],
        "sources_left_out": about["left_out"], "source_pools": about["pools"], "people_per_source": people,
        "people": len(cases.origin), "reference_people": reference_people,
        "reference_origins": list(cases.origin[:reference_people]), "batch": batch, "threads": threads, "seed": seed,
        "noise_px": NOISE_PX, "missing": MISSING, "body_prior": body_prior, "hand_prior": hand_prior,
        "hand_pca": None if hand_pca is None else str(hand_pca), **figures}
    k = reference_people
    inside, depth = contacts(model, fit.full_pose, fit.betas, fit.expression)   # the mesh check once per fit
    fast_contacts = summarise_contacts(inside, depth)
    record["interpenetration"] = {
        "truth": interpenetration(model, cases.full_pose, cases.betas, cases.expression),
        "fast": fast_contacts,
        "fast_on_reference_people": summarise_contacts(inside[:k], depth[:k]),
        "reference": interpenetration(model, ref.full_pose, ref.betas, ref.expression),
        "with_term": with_and_without_term(model, cases, batch, default_contacts=fast_contacts, **priors),
    }
    record["throughput"] = throughput(fast, cases, batch, throughput_threads)
    record["must_show"] = must_show(record)
    record["seconds"] = time.perf_counter() - start
    return record


ROWS = (("fast (all)", "fast"), ("fast (reference's people)", "fast_on_reference_people"),
        ("reference", "reference"))
TERM_ROWS = (("fast without the term (all)", "without"), ("fast with the term (all)", "with"))
ERRORS = ("body_pa_mpjpe_mm", "left_hand_pa_mpjpe_mm", "right_hand_pa_mpjpe_mm", "face_reprojection_px")
COLUMNS = (("body PA-MPJPE mm", "body_pa_mpjpe_mm"), ("left hand mm", "left_hand_pa_mpjpe_mm"),
           ("right hand mm", "right_hand_pa_mpjpe_mm"), ("face px", "face_reprojection_px"),
           ("objective", "objective"), ("fits/s", "fits_per_s"))


def table(record: dict[str, Any]) -> str:
    """The record as a Markdown table (the term's two rows last), the speed-up and the interpenetration figures."""
    interp, term = record["interpenetration"], record["interpenetration"]["with_term"]
    lines = ["| | " + " | ".join(name for name, _ in COLUMNS) + f" | interpenetrating | > {DEEP_MM:g} mm | depth mm |",
             "|---|" + "---|" * (len(COLUMNS) + 3)]
    rows = [(label, record[key], interp[key]) for label, key in ROWS]
    rows += [(label, term[side], term[side]) for label, side in TERM_ROWS]
    for label, figures, contact in rows:
        cells = [f"{figures[field]:.3g}" if field == "fits_per_s" else f"{figures[field]:.1f}"
                 if field != "face_reprojection_px" else f"{figures[field]:.2f}" for _, field in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * contact['share']:.0f}% | "
                     f"{100 * contact[f'share_deeper_{DEEP_MM:g}mm']:.0f}% | {contact['mean_depth_mm']:.0f} |")
    lines.append(f"\nfast / reference fits/s: {record['speedup']['fits_per_s']:.0f}x ({record['threads']} thread(s), "
                 f"batch {record['batch']}; body prior {record['body_prior']}, hand prior {record['hand_prior']}); "
                 f"true bodies interpenetrating: {100 * interp['truth']['share']:.0f}%; "
                 f"the term (scale {term['collision_scale']:g}, {term['default']} by default): "
                 f"{term['cpu_seconds_ratio']:.2f}x the CPU seconds, capsule penalty "
                 f"{term['without']['capsule_penalty_m2']:.2g} -> {term['with']['capsule_penalty_m2']:.2g} m²")
    rate, claims = record["throughput"], record["must_show"]
    lines.append(f"throughput: {rate['fits_per_s']:.1f} fits/s ({rate['threads']} thread(s), batch {rate['batch']}, "
                 f"{rate['fits']} fits)")
    verdict = {True: "holds", False: "does NOT hold"}
    lines.append(f"must show: >= {MUST_SPEEDUP:g}x {verdict[claims['speedup_holds']]}; errors <= the reference's "
                 f"{verdict[claims['errors_hold']]}; >= {MUST_FITS_PER_S:g} fits/s "
                 f"{verdict[claims['throughput_holds']]}")
    return "\n".join(lines)
