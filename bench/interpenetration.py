"""How many fits interpenetrate, with and without SMPLify's capsule term (`fitting.collision`), on the cases of
`fitloop bench smplify` (`bench.smplify_cases`: the same people, cameras, keypoints and starts).

For each collision weight (0: the term off, the default) the fast SMPLify fits every case; each fit and each
true body is then checked on the mesh (`fitting.collision.mesh_interpenetration`, independent of the capsules:
a vertex inside a part it is not next to), on the open-small mesh (1229 vertices, the open model's skeleton and
shape space, so the fitted parameters pose it as they pose the full mesh). Reported per keypoint kind and start
level, pooled over sources and cameras: the share of bodies that interpenetrate (truth, fits), the share that
do so by more than DEEP_MM, the mean depth of those that interpenetrate (mm), the share of fits whose capsule
penalty is positive, PA-MPJPE (mm, `fitloop bench smplify`'s metric) and fits per CPU second.

    python -m bench.interpenetration --split dev --cases 32 --weights 0 1000 3000 --out interp.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

import numpy as np
import torch

from bench.smplify import BenchConfig, _cells_for, _evaluate, _fit_level
from bench.smplify_cases import (
    CAMERAS,
    NOISE,
    SOURCES,
    START_TARGETS_MM,
    STARTS,
    People,
    available_sources,
    calibrate_noise,
    draws,
    make_people,
)
from fitting.body_model import load_body_model
from fitting.collision import body_capsules, collision_penalty, mesh_interpenetration, mesh_parts
from fitting.priors import DEFAULT_PRIOR, MaxMixturePrior
from fitting.smplify import SMPLify, SMPLifyConfig

MESH_MODEL = "open-small"
DEEP_MM = 10.0      # a body counted as deeply interpenetrating: some vertex this far inside another part


def mesh_check(mesh_body, pose: np.ndarray, betas: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per body (pose (N, 72), betas (N, NB)): whether its mesh interpenetrates (N,) and how deep (N,) m."""
    names, labels, ignore = mesh_parts(mesh_body)
    inside, depth = [], []
    with torch.no_grad():
        for s in range(0, len(pose), batch):
            p = torch.as_tensor(pose[s:s + batch], dtype=torch.float32)
            b = torch.as_tensor(betas[s:s + batch], dtype=torch.float32)
            contact = mesh_interpenetration(mesh_body(b, p[:, 3:], p[:, :3]).vertices, mesh_body.faces, labels, ignore)
            inside.append(contact.inside.numpy())
            depth.append(contact.depth.numpy())
    return np.concatenate(inside), np.concatenate(depth)


def capsule_penalty(body, capsules, pose: np.ndarray, betas: np.ndarray, batch: int = 256) -> np.ndarray:
    out = []
    with torch.no_grad():
        for s in range(0, len(pose), batch):
            p = torch.as_tensor(pose[s:s + batch], dtype=torch.float32)
            b = torch.as_tensor(betas[s:s + batch], dtype=torch.float32)
            vertices = body(b, p[:, 3:], p[:, :3]).vertices
            out.append(collision_penalty(capsules.ends(vertices), capsules.radii(b), capsules.pairs).numpy())
    return np.concatenate(out)


def run(split: str = "dev", cases: int = 32, weights: tuple[float, ...] = (0.0, 1000.0, 3000.0),
        sources: tuple[str, ...] = SOURCES, cameras: tuple[str, ...] = CAMERAS, noise: tuple[str, ...] = NOISE,
        starts: tuple[str, ...] = STARTS, seed: int = 0, say=print) -> dict[str, Any]:
    torch.set_num_threads(1)
    body, mesh_body = load_body_model("open"), load_body_model(MESH_MODEL)
    prior = MaxMixturePrior.from_file(DEFAULT_PRIOR)
    capsules = body_capsules(body)
    config = BenchConfig(split=split, cases=cases, cameras=cameras, noise=noise, starts=starts, seed=seed,
                         modes=("fast",), reference_cases=0)
    levels = [s for s in starts if s != "mean"]
    targets = tuple(START_TARGETS_MM[STARTS.index(s) - 1] for s in levels)
    sources, skipped = available_sources(sources)
    cells, truth = [], {}
    for source in sources:
        people = make_people(source, split, cases, body, seed)
        sigmas = {}
        if levels:
            cal = make_people(source, "dev", config.calibration_people, body, seed)
            cal = People(cal.source, cal.split, cal.pose, cal.betas, cal.origin, cal.about)
            sigmas = dict(zip(levels, calibrate_noise(body, cal, draws(cal, seed).start, targets)["sigma_rad"]))
        cells += _cells_for(body, people, config, sigmas)
        truth[source] = mesh_check(mesh_body, people.pose, people.betas)
        say(f"{source}: {len(people)} people, {100 * truth[source][0].mean():.1f}% of true bodies interpenetrate")
    speed: dict[str, dict[str, float]] = {}
    for weight in weights:
        fitter = SMPLify(body, prior, SMPLifyConfig(collision_weight=weight))
        key = f"w{weight:g}"
        speed[key] = {}
        for label in starts:
            level = [c for c in cells if c.start == label]
            timing = _fit_level(fitter, level, cases, "fast", torch.device("cpu"))
            speed[key][label] = timing["fits_per_cpu_s"]
            for c in level:
                c.fits[key] = c.fits.pop("fast")
            say(f"weight {weight:g} {label}: {timing['fits']} fits, {timing['fits_per_cpu_s']:.1f} per CPU s")
    rows = []
    for c in cells:
        _evaluate(body, c)
        for key, (pose, betas, _) in c.fits.items():
            inside, depth = mesh_check(mesh_body, pose, betas)
            c.metrics[key].update(inside=inside, depth_mm=1000 * depth,
                                  capsule=capsule_penalty(body, capsules, pose, betas) > 0)
    for noise_kind in noise:
        for label in starts:
            group = [c for c in cells if c.noise == noise_kind and c.start == label]
            t_inside = np.concatenate([truth[c.source][0] for c in group])
            t_depth = np.concatenate([truth[c.source][1] for c in group]) * 1000
            row: dict[str, Any] = {"keypoints": noise_kind, "start": label, "cases": int(len(t_inside)),
                                   "truth_inside_pct": 100 * t_inside.mean(),
                                   "truth_deep_pct": 100 * (t_depth > DEEP_MM).mean(),
                                   "truth_depth_mm": float(t_depth[t_inside].mean()) if t_inside.any() else 0.0,
                                   "start_pa_mm": float(np.concatenate([c.metrics["start"]["pa_mpjpe_mm"]
                                                                        for c in group]).mean())}
            for weight in weights:
                key = f"w{weight:g}"
                m = {k: np.concatenate([c.metrics[key][k] for c in group])
                     for k in ("inside", "depth_mm", "capsule", "pa_mpjpe_mm")}
                row[key] = {"inside_pct": 100 * m["inside"].mean(), "deep_pct": 100 * (m["depth_mm"] > DEEP_MM).mean(),
                            "depth_mm": float(m["depth_mm"][m["inside"]].mean()) if m["inside"].any() else 0.0,
                            "capsule_pct": 100 * m["capsule"].mean(), "pa_mm": float(m["pa_mpjpe_mm"].mean()),
                            "fits_per_cpu_s": speed[key][label]}
            rows.append(row)
    by_source = {}
    for source in sources:
        group = [c for c in cells if c.source == source]
        by_source[source] = {"truth_inside_pct": 100 * truth[source][0].mean(), **{
            f"w{w:g}": {"inside_pct": 100 * np.concatenate([c.metrics[f"w{w:g}"]["inside"] for c in group]).mean(),
                        "pa_mm": float(np.concatenate([c.metrics[f"w{w:g}"]["pa_mpjpe_mm"] for c in group]).mean())}
            for w in weights}}
    return {"benchmark": "interpenetration", "config": dataclasses.asdict(config), "weights": list(weights),
            "mesh_model": MESH_MODEL, "capsule_pairs": len(capsules.pairs), "sources_skipped": skipped,
            "rows": rows, "by_source": by_source}


def table(result: dict[str, Any]) -> str:
    weights = [f"w{w:g}" for w in result["weights"]]
    head = ["keypoints", "start", "n", "truth inside %", f"truth > {DEEP_MM:g} mm %"] + [
        f"w={k[1:]}: {c}" for k in weights for c in ("inside %", f"> {DEEP_MM:g} mm %", "depth mm", "PA mm")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["keypoints"], r["start"], str(r["cases"]), f"{r['truth_inside_pct']:.1f}",
                 f"{r['truth_deep_pct']:.1f}"]
        for k in weights:
            cells += [f"{r[k]['inside_pct']:.1f}", f"{r[k]['deep_pct']:.1f}", f"{r[k]['depth_mm']:.0f}",
                      f"{r[k]['pa_mm']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="dev", choices=("dev", "test"))
    parser.add_argument("--cases", type=int, default=32, help="people per source")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1000.0, 3000.0],
                        help="collision weights px/m (0: the term off)")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES))
    parser.add_argument("--starts", nargs="+", default=list(STARTS))
    parser.add_argument("--out", help="write the whole record as JSON here")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    result = run(args.split, args.cases, tuple(args.weights), tuple(args.sources), starts=tuple(args.starts))
    result["wall_s"] = time.perf_counter() - t
    print(table(result))
    for source, rec in result["by_source"].items():
        print(source, json.dumps(rec))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
