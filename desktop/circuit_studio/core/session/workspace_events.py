"""The workspace's change events (`Workspace.events` emits them): small frozen dataclasses.

`modifies_session` says whether the user changed something a session file keeps; the window's
"unsaved changes" flag follows it (computed results, views and layouts do not set it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .analysis import Aspect


@dataclass(frozen=True)
class WorkspaceEvent:
    modifies_session: ClassVar[bool] = False


@dataclass(frozen=True)
class ResourcesChanged(WorkspaceEvent):
    """Something was loaded, or `active` changed."""


@dataclass(frozen=True)
class GraphAdded(WorkspaceEvent):
    graph_id: int
    modifies_session: ClassVar[bool] = True


@dataclass(frozen=True)
class GraphWillChange(WorkspaceEvent):
    """The current graph is about to be replaced (or left for none)."""

    graph_id: int | None


@dataclass(frozen=True)
class CurrentGraphChanged(WorkspaceEvent):
    graph_id: int | None
    modifies_session: ClassVar[bool] = True


@dataclass(frozen=True)
class BindingChanged(WorkspaceEvent):
    """The current graph's loaded resources changed (its transcoders or index were loaded, or rebound)."""

    graph_id: int


@dataclass(frozen=True)
class AnalysisChanged(WorkspaceEvent):
    """An aspect of the current analysis changed; `by_user` False for automatic labels refreshed."""

    graph_id: int
    aspect: Aspect
    by_user: bool = True

    @property
    def modifies_session(self) -> bool:  # type: ignore[override]
        return self.by_user


@dataclass(frozen=True)
class ViewChanged(WorkspaceEvent):
    graph_id: int


@dataclass(frozen=True)
class WindowStateChanged(WorkspaceEvent):
    pass


@dataclass(frozen=True)
class PromptChanged(WorkspaceEvent):
    text: str


@dataclass(frozen=True)
class SessionReplaced(WorkspaceEvent):
    """A session was loaded (or a new one started): graphs, labels and the window state are its."""


@dataclass(frozen=True)
class HistoryChanged(WorkspaceEvent):
    """Undo / redo names changed."""
