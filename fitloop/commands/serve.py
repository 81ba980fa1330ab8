"""`fitloop serve`: serve every fitloop flow as a Prefect deployment from this process."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve every flow (preprocess, seed_fits, train, build) as Prefect deployments",
        description="Register a deployment per flow with the Prefect server in PREFECT_API_URL and run the flow "
                    "runs triggered on them in this process (Ctrl-C stops). Start a server first with "
                    "`prefect server start` and point PREFECT_API_URL at it; then trigger runs from the UI or "
                    "with `prefect deployment run 'preprocess/fitloop-preprocess' --param ...`. For work pools and "
                    "workers instead, see prefect.yaml (`prefect deploy --all`).")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1: they share the CPUs)")
    parser.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from prefect import serve

    from pipelines import flows

    deployments = [f.to_deployment(name=f"fitloop-{f.name}") for f in flows.ALL_FLOWS]
    print("serving: " + ", ".join(f"{f.name}/fitloop-{f.name}" for f in flows.ALL_FLOWS), flush=True)
    serve(*deployments, limit=args.limit)
    return 0
