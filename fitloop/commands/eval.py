"""`fitloop eval CHECKPOINT --shards DIR`: a checkpoint's network on held-out shards, the way papers report it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fitloop.options import count


def register(subparsers: argparse._SubParsersAction) -> None:
    from_protocols = "h36m-p2, h36m-p1, mpi-inf-3dhp, held-out"  # training.evaluate.PROTOCOLS (torch loads lazily)
    parser = subparsers.add_parser(
        "eval", help="MPJPE / PA-MPJPE of a checkpoint's network on shards, under a named protocol",
        description="Run a checkpoint (fitloop's, or SPIN's released model_checkpoint.pt with --body-model) on "
                    "shard sets and report MPJPE and PA-MPJPE (mm, 14 joints, SPIN's definitions: "
                    "docs/training.md#evaluation-and-logs) per dataset and over all, on the samples a protocol "
                    f"keeps ({from_protocols}): h36m-p2 is SPIN's Human3.6M protocol 2 (S9, S11, frontal camera "
                    "60457274, every 5th frame), h36m-p1 the four cameras, mpi-inf-3dhp its test set, held-out "
                    "every val/test sample (default). Samples without 3D truth are counted and left out.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--shards", type=Path, nargs="+", required=True, help="shard set folder(s)")
    parser.add_argument("--protocol", default="held-out", choices=from_protocols.split(", "))
    parser.add_argument("--body-model", default=None, help="the body model file (default: the run's)")
    parser.add_argument("--mesh-sampling", default=None,
                        help="graphcmr head: the mesh sampling file (default: the run's; its matrices must be the ones "
                             "the checkpoint was trained with)")
    parser.add_argument("--batch-size", type=count(1), default=32)
    parser.add_argument("--max-samples", type=count(1), default=None,
                        help="evaluate at most this many kept samples with 3D truth: the shards are read in "
                             "order up to the one that makes that many, whatever --batch-size (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from core.devices import parse_device
    from core.errors import FitloopError
    from training.evaluate import evaluate_checkpoint

    device = parse_device(args.device, "--device")
    result = evaluate_checkpoint(args.checkpoint, list(args.shards), args.protocol, body_model=args.body_model,
                                 mesh_sampling=args.mesh_sampling, batch_size=args.batch_size,
                                 max_samples=args.max_samples, device=device)
    if not result["errors"]:  # no figure to print: a run that measured nothing is not a result
        raise FitloopError(f"nothing evaluated: none of the {result['kept']} samples protocol {result['protocol']} "
                           f"keeps (of {result['read']} read) has 3D ground truth; pass shards with 3D joints "
                           f"(Human3.6M, MPI-INF-3DHP, or a set written with them)")
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['checkpoint']} ({result['head']} head, {result['checkpoint_kind']} checkpoint, body model "
          f"{result['body_model_id']}); protocol {result['protocol']}: {result['about']}")
    stopped = (f" (reading stopped at --max-samples {result['max_samples']}: that many kept samples with 3D truth)"
               if result.get("stopped_at_max_samples") else "")
    print(f"  {result['read']} samples read, {result['kept']} kept by the protocol{stopped}; evaluated (with 3D "
          f"truth):")
    for name, row in result["errors"].items():
        print(f"  {name:<16} {row['samples']:6d} samples  MPJPE {row['mpjpe_mm']:7.1f} mm  "
              f"PA-MPJPE {row['pa_mpjpe_mm']:7.1f} mm")
    return 0
