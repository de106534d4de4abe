"""What this process knows a session file holds, so that the next save writes only the difference.

After every save and every open of a current-schema file the store remembers, per path, the file's
`meta` token (its `saved` time and digest, which every committed save changes) and which graph
objects its arrays are (several per graph, e.g. the one saved and the one read back by an open). The
next save to that path reads the token inside its write transaction: unchanged, the file is exactly
as remembered and a graph whose object is a known one needs no writing; changed (another program or
window wrote it, or it was replaced), the file is written whole. Graph objects are held weakly: a
graph the session dropped is not kept in memory for this.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Mapping

from ...graph.attribution_graph import AttributionGraph
from ..records import Session

Token = tuple[str, str]  # meta (saved, digest)


@dataclass(frozen=True)
class Written:
    token: Token
    graphs: Mapping[int, tuple[weakref.ref, ...]] = field(default_factory=dict)  # graph id -> graphs with its arrays
    backed_up: bool = False  # "<name>.bak" holds the file as it was before this process first wrote to it

    def holds(self, graph_id: int, graph: AttributionGraph) -> bool:
        return any(ref() is graph for ref in self.graphs.get(graph_id, ()))


_files: dict[Path, Written] = {}
_lock = threading.Lock()  # autosave saves on a thread of its own


def remember(path: Path, token: Token, session: Session, *, backed_up: bool | None = None,
             unchanged: Collection[int] = ()) -> None:
    """The file at `path` now holds `session` and reads `token`. The graph objects known before stay known
    for the graphs whose arrays did not change: all of them when the token did not change (an open, a save
    that changed nothing), else those in `unchanged`. `backed_up` None: kept when the token did not change."""
    key = path.absolute()
    with _lock:
        before = _files.get(key)
        same = before is not None and before.token == token
        if backed_up is None:
            backed_up = same and before.backed_up
        still = set(before.graphs) if same else set(unchanged) if before is not None else set()
        graphs = {}
        for r in session.graphs:
            old = [ref for ref in before.graphs.get(r.id, ()) if ref() is not None] if r.id in still else []
            graphs[r.id] = tuple(old) + (() if any(ref() is r.graph for ref in old) else (weakref.ref(r.graph),))
        _files[key] = Written(token, graphs, backed_up)


def recall(path: Path) -> Written | None:
    with _lock:
        return _files.get(path.absolute())


def sources(session: Session, other_than: Path) -> list[tuple[Path, Written]]:
    """Files whose every graph is one of `session`'s (same id, same object), most graphs first: a copy of
    one is the session but for what changed since (how Save As writes a new file without re-encoding).
    Files that are gone are forgotten."""
    mine = {r.id: r.graph for r in session.graphs}
    with _lock:
        for p in [p for p in _files if not p.is_file()]:
            del _files[p]
        found = [(p, w) for p, w in _files.items()
                 if p != other_than.absolute() and w.graphs and all(gid in mine and w.holds(gid, mine[gid])
                                                                    for gid in w.graphs)]
    return sorted(found, key=lambda item: -len(item[1].graphs))
