"""The `fitloop` command: one console script, a subcommand per capability.

Each command group lives in `fitloop/commands/<group>.py` and exposes `register(subparsers)`, which adds its
parser and sets `func` on it. Heavy imports (torch, prefect, ...) happen inside the command functions, so that
`fitloop --help` is instant.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import io
import os
import select
import sys
import traceback

from core.errors import FitloopError

# Command groups, in the order `fitloop --help` lists them.
COMMAND_MODULES = ["demo", "model", "prior", "bench", "fits", "preprocess", "shards", "serve", "train", "eval",
                   "predict", "synth"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fitloop",
        description="Build datasets of 3D human body fits: convert datasets to webdataset shards, fit SMPL-format "
                    "bodies with batched SMPLify, keep the best fits in a versioned Delta table, and train a "
                    "SPIN regressor with fitting in the loop.",
        epilog="Run `fitloop COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"fitloop {__import__('fitloop').__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"fitloop.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    preload_arrow()
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is caught below and not at exit
        return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except FitloopError as err:
        print(f"fitloop: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise  # a pipe of the command's own (a socket, a subprocess): a real fault
        return closed_pipe()
    except OSError as err:  # the machine's faults: a full or read-only disk, a file where a folder should be, ...
        print(f"fitloop: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except Exception:  # not an expected fault: the traceback is what a fix needs
        traceback.print_exc()
        print(f"fitloop: internal error (a bug in fitloop, not in your input): please report it at "
              f"{ISSUES_URL} with the command line and the traceback above", file=sys.stderr)
        return INTERNAL_ERROR_STATUS


ISSUES_URL = "https://github.com/fitloop/fitloop/issues"
INTERNAL_ERROR_STATUS = 70  # EX_SOFTWARE (sysexits.h): an internal software error

# What to do about an operating-system error, by errno (the system's reason comes first, with the file).
OS_ERROR_ADVICE = {
    errno.ENOSPC: "free space there or write elsewhere, then run the command again",
    errno.EDQUOT: "free space there or write elsewhere, then run the command again",
    errno.EROFS: "write elsewhere",
    errno.EACCES: "choose a path you can use, or change its permissions",
    errno.EPERM: "choose a path you own, or change its permissions",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a file is in the way where a folder is expected: check the path, or move the file away",
    errno.EISDIR: "a folder is in the way where a file is expected: check the path",
    errno.EEXIST: "move it away or choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EMFILE: "raise the limit (ulimit -n) or use fewer workers",
    errno.EIO: "the disk or network file system failed: check it, then run the command again",
}


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: the file(s), the system's reason, and what to do."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    reason = (err.strerror or str(err) or type(err).__name__).replace("\n", " ")
    text = f"{where}: {reason}" if where else reason
    advice = OS_ERROR_ADVICE.get(err.errno) if err.errno is not None else None
    return f"{text}; {advice}" if advice else text


# Exit status when the reader of stdout went away (`fitloop … | head -1`): what a shell reports for a program
# that SIGPIPE ended, as `cat` and `ls` end there.
CLOSED_PIPE_STATUS = 128 + 13


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on its write end)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False
    if not hasattr(select, "poll"):
        return True  # no poll (Windows): take a broken pipe on the way out to be stdout's, as Python's docs do
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def closed_pipe() -> int:
    """Stop quietly after stdout's reader closed the pipe: point stdout at /dev/null so that the interpreter's
    last flush at exit does not raise again (as the Python docs on SIGPIPE advise); no traceback, no message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # stdout is no file (captured): nothing to redirect
        pass
    return CLOSED_PIPE_STATUS


def preload_arrow() -> None:
    """Load pyarrow's dataset module before anything loads torch.

    With torch loaded first, a process that has scanned a Delta table (the fits table) aborts at exit about one
    run in six ("terminate called without an active exception", status 134) as Arrow's pool threads are torn
    down; loaded in this order it never did (0 of 60). Seen with pyarrow 26, deltalake 1.6.6, torch 2.13.
    """
    import pyarrow.dataset  # noqa: F401


if __name__ == "__main__":
    sys.exit(main())
