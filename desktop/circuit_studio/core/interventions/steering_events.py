"""The steering model's change events (`Steering` emits them; the workspace forwards them): small frozen
dataclasses whose `modifies_session` says whether the user changed something a session file keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class SteeringEvent:
    modifies_session: ClassVar[bool] = True  # the user changed something a session file keeps


@dataclass(frozen=True)
class RowsChanged(SteeringEvent):
    """Rows were added, removed or replaced (undo, a graph switch)."""


@dataclass(frozen=True)
class RowChanged(SteeringEvent):
    """Row `index`'s multiple or mode changed."""

    index: int


@dataclass(frozen=True)
class OptionsChanged(SteeringEvent):
    """Freeze attention or the continuation length changed."""


@dataclass(frozen=True)
class ResultChanged(SteeringEvent):
    """`result`, `saved` or `changes` changed (a computation finished, or the rows went)."""

    modifies_session: ClassVar[bool] = False


@dataclass(frozen=True)
class RowsRenamed(SteeringEvent):
    """Rows were renamed to follow the analysis (a relabelled feature, a renamed supernode)."""

    modifies_session: ClassVar[bool] = False


@dataclass(frozen=True)
class ContextChanged(SteeringEvent):
    """The graph or the resources it can run with changed (a graph switch, transcoders loaded)."""

    modifies_session: ClassVar[bool] = False


@dataclass(frozen=True)
class SteeringLoaded(SteeringEvent):
    """The steering of another graph was put in place (`load`)."""

    modifies_session: ClassVar[bool] = False
