"""Progress reporting and cooperative cancellation for long computations.

Core functions take an optional `progress` callback and an optional `CancelToken`. They call
`progress(Progress(...))` at natural steps (phases, batches) and `cancel.raise_if_set()` between
them, so a job stops within one step of the user pressing Cancel. The window turns both into Qt
signals; the command line draws a progress bar.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from .errors import Cancelled


@dataclass(frozen=True)
class Progress:
    """One report: which phase, how far through it (`done` of `total` units), and a short message."""

    phase: str
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


ProgressFn = Callable[[Progress], None]


class CancelToken:
    """Set from any thread; checked by the computation between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def raise_if_set(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def report(progress: ProgressFn | None, phase: str, done: int, total: int, message: str = "") -> None:
    if progress is not None:
        progress(Progress(phase, done, total, message))


def check(cancel: CancelToken | None) -> None:
    if cancel is not None:
        cancel.raise_if_set()
