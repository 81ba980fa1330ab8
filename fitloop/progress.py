"""Progress bars of the `fitloop` command: tqdm on stderr, shown only when stderr is a terminal.

Library functions take a ``progress`` callback (called with the number of items just done) and know nothing of
bars; a command makes a `bar` and passes ``bar.update``. Nothing is drawn into logs, pipes or captured output,
and stdout stays the command's result (so ``fitloop … | head`` and ``--json`` are clean).
"""
from __future__ import annotations

import sys

from tqdm import tqdm


def bar(total: int | None, desc: str, unit: str) -> tqdm:
    """A progress bar over ``total`` ``unit``s (None: a counter), cleared when closed; use it as a context."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=None)  # None: only on a terminal
