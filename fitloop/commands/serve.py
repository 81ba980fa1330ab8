"""`fitloop serve`: serve every fitloop flow as a Prefect deployment from this process."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve every flow (preprocess, seed_fits, train, build) as Prefect deployments",
        description="Register one deployment per flow, named FLOW/fitloop-served, with the Prefect server in "
                    "PREFECT_API_URL, and run the flow runs triggered on them in this process (Ctrl-C stops). "
                    "Start a server first with `prefect server start` and point PREFECT_API_URL at it; then "
                    "trigger runs from the UI or with `prefect deployment run 'preprocess/fitloop-served' "
                    "--param ...` (paths absolute). For a work pool and workers instead, `prefect deploy --all` "
                    "reads prefect.yaml and registers FLOW/fitloop-pool (docs/flows.md).")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1: they share the CPUs)")
    parser.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from prefect import serve
    from prefect.types.entrypoint import EntrypointType

    from pipelines import flows

    # flow runs import the flows as pipelines.flows.<flow> (the installed package), wherever serve was started
    deployments = [f.to_deployment(name=flows.SERVED_DEPLOYMENT, entrypoint_type=EntrypointType.MODULE_PATH)
                   for f in flows.ALL_FLOWS]
    print("serving: " + ", ".join(f"{f.name}/{flows.SERVED_DEPLOYMENT}" for f in flows.ALL_FLOWS), flush=True)
    serve(*deployments, limit=args.limit)
    return 0
