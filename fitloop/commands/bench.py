"""`fitloop bench …`: benchmarks that print their figures against a baseline run in the same process."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (each with its baseline, timed in the same run)",
                                   description="Benchmarks. Each one times fitloop's way and a baseline in the "
                                               "same process and prints both and their ratio.")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    commands = parser.add_subparsers(title="benchmarks", metavar="BENCHMARK")

    body = commands.add_parser("body-model", help="forward pass of a body model vs. the bare smplx layer",
                               description="Time the 49-joint forward pass (and forward+backward) of a body model "
                                           "against the smplx layer it wraps, at one batch size.")
    body.add_argument("--model", default="open", help='"open", "open-small" or a model file')
    body.add_argument("--batch", type=int, default=64)
    body.add_argument("--repeats", type=int, default=20)
    body.add_argument("--device", default="cpu", help="cpu or cuda")
    body.add_argument("--json", action="store_true", help="print one JSON object")
    body.set_defaults(func=cmd_body_model)

    smplify = commands.add_parser(
        "smplify", help="fast SMPLify vs. SPIN's reference procedure on synthetic people",
        description="Fit synthetic people (open model, real poses from SPIN's LSP fits when ../shared is present, "
                    "random shapes and crop cameras; keypoints of the 24 dataset joints with 5 px and 0 px noise and "
                    "~10%% missing) from a mean-pose start and from a noisy true start, with SPIN's reference "
                    "SMPLify (Adam on the full model) and fitloop's default. Prints fits/s, reprojection error and "
                    "(PA-)MPJPE per mode and start, and the speedup (the smaller of the two starts).")
    smplify.add_argument("--batch", type=int, default=64)
    smplify.add_argument("--model", default="open", help='"open", "open-small" or a model file')
    smplify.add_argument("--prior", type=Path, default=None, help="pose prior (default: the shipped open prior)")
    smplify.add_argument("--device", default="cpu")
    smplify.add_argument("--seed", type=int, default=0)
    smplify.add_argument("--skip-reference", action="store_true", help="time only fitloop's default")
    smplify.add_argument("--json", action="store_true", help="print one JSON object at the end")
    smplify.set_defaults(func=cmd_smplify)


def cmd_smplify(args: argparse.Namespace) -> int:
    from bench.smplify import run

    modes = ("fast",) if args.skip_reference else ("reference", "fast")
    result = run(batch=args.batch, model=args.model, prior_path=args.prior, device=args.device, seed=args.seed,
                 modes=modes, progress=not args.json)
    if args.json:
        print(json.dumps(result))
    elif "speedup" in result:
        print(f"speedup (default vs reference, worse of the two starts): {result['speedup']:.1f}x")
    return 0


def cmd_body_model(args: argparse.Namespace) -> int:
    from bench.body_model import run

    result = run(args.model, batch=args.batch, repeats=args.repeats, device=args.device)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['model']} ({result['vertices']} vertices), batch {result['batch']}, {result['device']}, "
          f"{result['threads']} threads")
    print(f"  fitloop forward (mesh + 49 joints) {result['forward_ms']:8.2f} ms")
    print(f"  smplx layer forward (baseline)     {result['smplx_layer_forward_ms']:8.2f} ms"
          f"   ratio {result['ratio_forward_vs_smplx_layer']:.2f}x")
    print(f"  fitloop forward + backward         {result['forward_backward_ms']:8.2f} ms")
    return 0
