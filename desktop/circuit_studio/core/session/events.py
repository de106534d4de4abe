"""Typed change events without Qt: a tiny callback registry (glue's hub, napari's evented models).

Models in core emit small frozen dataclasses; views and other models subscribe to the classes they
care about. Listeners run synchronously, in the order they subscribed, on the emitting thread (the
models are changed from the GUI thread only).

    hub = EventHub()
    hub.connect(on_rows, RowsChanged)          # only RowsChanged (and its subclasses)
    hub.connect(on_anything)                   # every event
    hub.emit(RowsChanged())
"""

from __future__ import annotations

from typing import Callable


class EventHub:
    def __init__(self) -> None:
        self._listeners: list[tuple[Callable[[object], None], tuple[type, ...]]] = []

    def connect(self, listener: Callable[[object], None], *types: type) -> Callable[[object], None]:
        """Call `listener(event)` for every event that is an instance of one of `types` (all if none given)."""
        self._listeners.append((listener, types))
        return listener

    def disconnect(self, listener: Callable[[object], None]) -> None:
        self._listeners = [(l, t) for l, t in self._listeners if l is not listener]

    def emit(self, event: object) -> None:
        for listener, types in list(self._listeners):
            if not types or isinstance(event, types):
                listener(event)
