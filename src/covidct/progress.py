"""One progress bar for inner loops (batches, cases, series), so every command draws them alike."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def inner_bar(iterable: Iterable[T], desc: str, unit: str, tty_only: bool = False) -> Iterable[T]:
    """A bar that disappears when its loop ends (``leave=False``): the command's own lines
    stay readable. ``tty_only``: draw nothing when stderr is not a terminal, for loops whose
    caller already reports progress in its log."""
    # lazy: tqdm is not needed to import the package (`covidct --help` stays fast)
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                disable=tty_only and not sys.stderr.isatty())
