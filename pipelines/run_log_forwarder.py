"""The trainer's log rows, sent to a logger (a Prefect run's) while it trains.

`training.loop.train` writes its progress to the run folder (`training.run_log`): a row of ``train_log.csv``
every ``log_every`` steps (loss terms, share of fits improved, time per part of the step) and a row of
``metrics.csv`` per evaluation (fits table and network against ground truth). `RunLogForwarder` watches both files
from a thread while the trainer runs and logs each new complete row as one line, so a flow run's log shows the
training as it goes; rows that were there before it started are not repeated.

`numeric_rows` turns the CSV's strings back into numbers (empty cells into None) for artifacts and summaries.
"""
from __future__ import annotations

import contextvars
import csv
import io
import logging
import threading
from pathlib import Path
from typing import Any, Callable

POLL_S = 2.0  # how often the files are read; a row shows in the log at most this late


def numeric_rows(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """CSV rows with numbers as int or float and empty cells as None; other text stays text."""
    return [{key: _number(value) for key, value in row.items()} for row in rows]


def _number(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def complete_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV file that another process may be appending to: only lines already ended by a newline."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return numeric_rows(list(csv.DictReader(io.StringIO(text[:text.rfind("\n") + 1]))))


def _mm(value: Any) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def describe_train_row(row: dict[str, Any]) -> str:
    parts = ", ".join(f"{p.replace('_', '-')} {row[p + '_ms']:.0f}" for p in ("data", "network", "smplify",
                                                                              "write_back")
                      if row.get(p + "_ms") is not None)
    return (f"epoch {row['epoch'] + 1} step {row['step']}: loss {row['loss']:.4g}, fits improved "
            f"{row['fits_updated']:.0%}, {row['step_ms']:.0f} ms/step ({parts} ms)")


def describe_evaluation(row: dict[str, Any]) -> str:
    when = "before training" if row["epoch"] == 0 else f"after epoch {row['epoch']}"
    return (f"evaluation {when} (step {row['step']}): fits table v{row['fits_version']} "
            f"PA-MPJPE {_mm(row['fits_pa_mpjpe_mm'])} mm ({row['fits_samples']} samples); network PA-MPJPE "
            f"{_mm(row['net_pa_mpjpe_mm'])} / MPJPE {_mm(row['net_mpjpe_mm'])} mm ({row['net_samples']} samples)")


class RunLogForwarder:
    """While the block runs, log every new row of ``run_dir``'s ``train_log.csv`` and ``metrics.csv``
    (module docstring); the last rows are sent when the block ends."""

    FILES: dict[str, Callable[[dict[str, Any]], str]] = {"train_log.csv": describe_train_row,
                                                         "metrics.csv": describe_evaluation}

    def __init__(self, run_dir: Path, logger: logging.Logger | logging.LoggerAdapter, poll_s: float = POLL_S):
        self.run_dir, self.logger, self.poll_s = Path(run_dir), logger, poll_s
        self.seen: set[tuple[str, tuple]] = set()
        self.stop = threading.Event()
        # the thread runs in a copy of this context: Prefect keeps its settings (the API URL, a temporary server's
        # included) and the run in context variables, which a new thread does not inherit
        context = contextvars.copy_context()
        self.thread = threading.Thread(target=context.run, args=(self._watch,), name="fitloop-run-log", daemon=True)

    def __enter__(self) -> "RunLogForwarder":
        self.forward(log=False)  # a resumed run's earlier rows are not news
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        self.forward()

    def _watch(self) -> None:
        while not self.stop.wait(self.poll_s):
            self.forward()

    def forward(self, log: bool = True) -> None:
        """Log the rows not logged (or seen) before, file by file, in file order."""
        for name, describe in self.FILES.items():
            for row in complete_rows(self.run_dir / name):
                identity = (name, tuple(row.items()))
                if identity in self.seen:
                    continue
                self.seen.add(identity)
                if log:
                    try:
                        self.logger.info(describe(row))
                    except (KeyError, TypeError, ValueError):  # a row of another layout: show it as it is
                        self.logger.info(f"{name}: {row}")
