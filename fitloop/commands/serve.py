"""`fitloop serve`: serve every fitloop flow as a Prefect deployment from this process."""
from __future__ import annotations

import argparse
import warnings

from core.errors import FitloopError
from fitloop.options import count


class PrefectServerError(FitloopError):
    """No Prefect server to register the deployments with: PREFECT_API_URL unset, or nothing answers there."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve every flow (preprocess, seed_fits, train, build) as Prefect deployments",
        description="Register one deployment per flow, named FLOW/fitloop-served, with the Prefect server in "
                    "PREFECT_API_URL, and run the flow runs triggered on them in this process (Ctrl-C stops). "
                    "Start a server first with `prefect server start` and point PREFECT_API_URL at it "
                    "(export PREFECT_API_URL=http://127.0.0.1:4200/api): without it, or with nothing answering "
                    "there, serve refuses to start (a temporary server of its own would take runs from nobody). "
                    "Then trigger runs from the UI or with `prefect deployment run 'preprocess/fitloop-served' "
                    "--param ...` (paths absolute). For a work pool and workers instead, `prefect deploy --all` "
                    "reads prefect.yaml and registers FLOW/fitloop-pool (docs/flows.md).")
    parser.add_argument("--limit", type=count(1), default=1,
                        help="flow runs at a time (default 1: they share the CPUs)")
    parser.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from prefect import serve
    from prefect.types.entrypoint import EntrypointType

    from pipelines import flows

    check_server()
    # flow runs import the flows as pipelines.flows.<flow> (the installed package), wherever serve was started
    deployments = [f.to_deployment(name=flows.SERVED_DEPLOYMENT, entrypoint_type=EntrypointType.MODULE_PATH)
                   for f in flows.ALL_FLOWS]
    print("serving: " + ", ".join(f"{f.name}/{flows.SERVED_DEPLOYMENT}" for f in flows.ALL_FLOWS), flush=True)
    # Prefect 3.8's runner stops on SIGTERM through a coroutine it never awaits; the stop works, the warning it
    # prints is about Prefect's code, not the user's
    warnings.filterwarnings("ignore", message="coroutine 'Runner.astop' was never awaited", category=RuntimeWarning)
    serve(*deployments, limit=args.limit)
    return 0


def check_server() -> str:
    """The API URL of the Prefect server to serve with, once it answers its health check.

    Without PREFECT_API_URL, Prefect would start a temporary server inside this process, on a port of its
    choosing that stops with it: deployments registered there take runs from nobody. Refused, as is a URL where
    nothing answers (which Prefect reports with a connection traceback)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise PrefectServerError("PREFECT_API_URL is not set: start a Prefect server (prefect server start) and "
                                 "export PREFECT_API_URL=http://127.0.0.1:4200/api (its address), then serve again")
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        reason = str(error).strip() or type(error).__name__
        raise PrefectServerError(f"no Prefect server answers at PREFECT_API_URL={url} ({reason}); start one "
                                 f"(prefect server start) or point PREFECT_API_URL at a running one")
    return url
