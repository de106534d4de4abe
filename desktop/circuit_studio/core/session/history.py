"""Undo and redo: a stack of named snapshots (glue's command stack, with snapshots for commands).

Whoever changes the state calls `record(description)` first; `History` keeps the state as it was.
Undo puts the previous snapshot back and keeps the current one for redo. Changes of the same
kind in quick succession (a slider drag) merge into one step, so one Ctrl+Z undoes the drag.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

State = TypeVar("State")

MERGE_SECONDS = 1.5
MAX_STEPS = 200


@dataclass(frozen=True)
class _Step(Generic[State]):
    description: str
    state: State
    at: float


class History(Generic[State]):
    """Undo/redo over snapshots made by `capture()` and put back by `restore(state)`."""

    def __init__(self, capture: Callable[[], State], restore: Callable[[State], None],
                 on_change: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._capture, self._restore, self._on_change, self._clock = capture, restore, on_change, clock
        self._undo: list[_Step[State]] = []
        self._redo: list[_Step[State]] = []
        self._restoring = False

    def record(self, description: str) -> None:
        """Call just before a change: remembers the state it changes."""
        if self._restoring:
            return
        now = self._clock()
        last = self._undo[-1] if self._undo else None
        if not (last and last.description == description and now - last.at < MERGE_SECONDS and not self._redo):
            self._undo.append(_Step(description, self._capture(), now))
            del self._undo[:-MAX_STEPS]
        else:
            self._undo[-1] = _Step(description, last.state, now)  # a continued drag: keep the first state
        self._redo.clear()
        self._changed()

    @property
    def undo_description(self) -> str | None:
        return self._undo[-1].description if self._undo else None

    @property
    def redo_description(self) -> str | None:
        return self._redo[-1].description if self._redo else None

    def undo(self) -> bool:
        return self._move(self._undo, self._redo)

    def redo(self) -> bool:
        return self._move(self._redo, self._undo)

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()
        self._changed()

    def _move(self, source: list, target: list) -> bool:
        if not source:
            return False
        step = source.pop()
        target.append(_Step(step.description, self._capture(), float("-inf")))  # never merged into
        self._restoring = True
        try:
            self._restore(step.state)
        finally:
            self._restoring = False
        self._changed()
        return True

    def _changed(self) -> None:
        if self._on_change:
            self._on_change()
