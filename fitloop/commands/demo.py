"""`fitloop demo`: run what fitloop can do today on the embedded open model, and write a short report.

Today (before the dataset flows, SMPLify and the trainer land) the demo loads the open body model, draws its
shape space with the 49 canonical joints, and times its forward pass. Each later capability adds its stage here.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the pipeline on the embedded open model and write a report (what `make demo` runs)",
        description="Run every stage that exists on the embedded open body model and write DIR/report.md "
                    "with pictures and figures.")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    parser.add_argument("--model", default="open", help='"open" (default), "open-small" or a model file')
    parser.set_defaults(func=cmd_demo)


def _step(message: str) -> float:
    print(f"[demo] {message}", flush=True)
    return time.perf_counter()


def cmd_demo(args: argparse.Namespace) -> int:
    from bench.body_model import run as bench_body_model
    from fitting.body_model import load_body_model
    from fitting.pictures import shape_space_sheet

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = _step(f"loading body model {args.model!r}")
    model = load_body_model(args.model)
    info = model.info()
    (out / "model_info.json").write_text(json.dumps(info, indent=2))
    print(f"[demo]   {info['name']}: {info['vertices']} vertices, {info['joints']} canonical joints, "
          f"{info['betas']} betas")

    _step("drawing the shape space with the 49 canonical joints")
    sheet = shape_space_sheet(model)
    sheet.save(out / "shape_space.png")

    _step("timing the forward pass at batch 64 (against the bare smplx layer)")
    bench = bench_body_model(args.model, batch=64, repeats=10)
    (out / "bench_body_model.json").write_text(json.dumps(bench, indent=2))
    print(f"[demo]   forward {bench['forward_ms']:.1f} ms, forward+backward {bench['forward_backward_ms']:.1f} ms "
          f"(smplx layer alone {bench['smplx_layer_forward_ms']:.1f} ms)")

    report = [
        "# fitloop demo report", "",
        f"Body model: **{info['name']}** ({info['family']}), {info['vertices']} vertices, {info['faces']} faces, "
        f"{info['betas']} betas, {info['joints']} canonical joints (`{info['model_id']}`).", "",
        "## Shape space", "",
        "Each column varies one shape coefficient (-2σ, 0, +2σ); dots are the 49 canonical joints "
        "(blue left, red right, green central).", "", "![shape space](shape_space.png)", "",
        "## Forward pass, batch 64, CPU", "",
        "| what | ms |", "|---|---|",
        f"| fitloop forward (mesh + 49 joints) | {bench['forward_ms']:.1f} |",
        f"| smplx layer alone (baseline) | {bench['smplx_layer_forward_ms']:.1f} |",
        f"| fitloop forward + backward | {bench['forward_backward_ms']:.1f} |", "",
    ]
    (out / "report.md").write_text("\n".join(report))
    print(f"[demo] done in {time.perf_counter() - start:.1f} s: {out / 'report.md'}")
    return 0
