"""What a person watching a run sees while it works: tqdm bars on a terminal, one log line per model elsewhere.

Kept apart from the trainer so the training loop says *what* it does (``progress(range(epochs), ...)``)
and this module alone decides *how* that is shown (a bar, a line in a log, or nothing while a sweep's
own bar is on).
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("ptk")


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (tqdm draws its bars only there)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(callable(isatty) and isatty())


#: Off while a sweep runs (unless ``-v``): its one bar over cells replaces every model's bar and line.
INNER_PROGRESS = {"enabled": True}


@contextmanager
def inner_progress(enabled: bool) -> Iterator[None]:
    """Turn the per-model bars and lines on or off for the duration (a sweep's ``-v``)."""
    before = INNER_PROGRESS["enabled"]
    INNER_PROGRESS["enabled"] = enabled
    try:
        yield
    finally:
        INNER_PROGRESS["enabled"] = before


def progress_line(message: str) -> None:
    """Log ``ptk: message`` (INFO, logger ``ptk``) when stderr is not a terminal.

    A run redirected to a file or a pipe gets no tqdm bar, so without these
    lines it would print nothing for as long as a model trains (minutes to
    hours). Called once per model, never per batch; on a terminal the bar says it.
    """
    if INNER_PROGRESS["enabled"] and not stderr_is_terminal():
        log.info("ptk: %s", message)


def progress(items: Iterable[T], desc: str, total: int | None = None, enabled: bool = True,
             outer: bool = False) -> Iterator[T]:
    """A tqdm bar on stderr when it is a terminal; silent in logs and tests (see :func:`progress_line`).
    ``outer`` bars (a sweep's bar over cells) stay on when the inner ones are turned off."""
    from tqdm.auto import tqdm

    enabled = enabled and (outer or INNER_PROGRESS["enabled"])
    return iter(tqdm(items, desc=desc, total=total, leave=outer, disable=None if enabled else True))


class Timer:
    """Wall-clock seconds of a block: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
