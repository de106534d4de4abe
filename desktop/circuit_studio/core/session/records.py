"""A session: everything a user did in Circuit Studio that is worth saving, as plain frozen values.

`Session` is the in-memory model that `session_store.save_session` writes to a `.cs-session`
file and `load_session` reads back. It holds no SQL, no Qt and no model: a session opens and its
graphs can be explored even when the model folder has moved or changed, because every graph
carries its full arrays (`AttributionGraph`) and the model is only referenced (`ModelRef`: path,
content hash, summary).

What a session holds:

* `model`, `transcoders`, `feature_index`: what is loaded now: where it was (`path`), what it was
  (`content_hash`, see `content_hash`) and a JSON summary for display. A graph traced next is bound
  to them (`Session.from_analysis`);
* `graphs`: one `GraphRecord` per traced graph: the graph itself, when it was traced, the model,
  transcoder set and feature index it was traced with (which may differ from graph to graph and
  from the session's current ones; None when unknown), and the analysis state of that graph
  (thresholds, selected node, pins in order, supernodes, canvas view, interventions with their
  results, a title and notes);
* `labels`: the user's feature labels, keyed by (transcoder identity, layer, feature): one label names
  the same feature in every graph of one transcoder set, and is never shown on a graph of another set
  (`transcoder_identity`: the set's content hash). `Session.graph_labels(graph_id)` gives a graph's
  labels keyed by (layer, feature); the constructor also takes (layer, feature) keys, meaning the
  session's `transcoders`;
* `notes`, `current_graph` (a graph id), `window_state` (an opaque blob from the UI, e.g. Qt's
  `saveState()`), `settings` (JSON).

Node indices (selected, pinned, supernode members) follow the node order of `graph.AttributionGraph`.
All dict fields must be plain JSON (str keys; lists, not tuples) so that they round-trip exactly;
the constructors check this and fail early rather than at save time.

Moving state to and from `analysis.Analysis`: `GraphRecord.from_analysis(analysis, id=...)`,
`GraphRecord.apply_to(analysis)`, `Session.from_analysis(analysis, previous)` (update the session
with the current analysis) and `Session.analysis(graph_id)` (rebuild an Analysis from the session).
Equality: `Session`, `GraphRecord` and `graphs_equal` compare arrays bit for bit;
`session_differences(a, b)` names what differs (for test messages).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from .analysis import Analysis, Supernode
from ..graph.attribution_graph import AttributionGraph

if TYPE_CHECKING:  # importing core.interventions pulls in torch; the session needs only the dataclass
    from ..interventions.intervene import Intervention

SESSION_SUFFIX = ".cs-session"  # the file extension of saved sessions (an SQLite file, see session_store)

HASH_SCHEME = "fh1"  # content_hash's algorithm; the prefix of every hash it returns
_EDGE_BYTES = 1 << 20  # bytes hashed at each end of a large file
_SMALL_FILE = 2 * _EDGE_BYTES  # files up to this size are hashed whole


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------------------------
# model and transcoder references
# ---------------------------------------------------------------------------------------------

def content_hash(folder: str | Path) -> str:
    """A fast, stable fingerprint of a model or transcoder folder (or single file): "fh1:<sha256>".

    Hashed, in sorted order of relative path: every file's relative path and size, the whole
    content of files up to 2 MiB (configs, tokenizers, headers), and the first and last 1 MiB of
    larger (weight) files. Names starting with "." (caches, lock files) are skipped; file symlinks
    are followed, so a Hugging Face snapshot hashes like a plain copy. Modification times are
    ignored: a copied or moved folder keeps its hash.

    Trade-off: a multi-GB folder hashes in milliseconds, but an edit confined to the middle of a
    large weight file that keeps its size goes unnoticed. Re-trained or fine-tuned weights change
    the bytes at both ends of every file (headers with offsets, first and last tensors), so they
    are caught. Raises FileNotFoundError if `folder` does not exist.
    """
    root = Path(folder)
    if root.is_file():
        files = [(root.name, root)]
    elif root.is_dir():
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith("."):
                    p = Path(dirpath, name)
                    files.append((p.relative_to(root).as_posix(), p))
        files.sort()
    else:
        raise FileNotFoundError(f"{root} does not exist")
    h = hashlib.sha256()
    for rel, p in files:
        size = p.stat().st_size
        h.update(rel.encode("utf-8") + b"\0" + size.to_bytes(8, "little"))
        with open(p, "rb") as fh:
            if size <= _SMALL_FILE:
                h.update(fh.read())
            else:
                h.update(fh.read(_EDGE_BYTES))
                fh.seek(size - _EDGE_BYTES)
                h.update(fh.read(_EDGE_BYTES))
    return f"{HASH_SCHEME}:{h.hexdigest()}"


def summary_to_dict(summary: Any) -> dict:
    """A `ModelSummary`/`TranscoderSummary` (or any dataclass or dict) as plain JSON: paths become
    strings, tuples lists."""
    data = asdict(summary) if is_dataclass(summary) else dict(summary or {})
    return _plain(data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, np.generic):
        return value.item()
    return value


class FolderStatus(str, Enum):
    OK = "ok"  # the folder is where it was and hashes the same
    MISSING = "missing"  # nothing at the saved path (moved or deleted)
    CHANGED = "changed"  # something is there, with different contents


@dataclass(frozen=True)
class FolderRef:
    """Where a model or transcoder set was loaded from, and what it was."""

    path: str
    content_hash: str
    summary: dict = field(default_factory=dict)  # JSON, e.g. summary_to_dict(ModelSummary)

    def __post_init__(self) -> None:
        _normalise(self, path=str(self.path))
        _check_json(self.summary, f"{type(self).__name__}.summary")

    @classmethod
    def from_folder(cls, folder: str | Path, summary: Any = None):
        """Hash `folder` now (see `content_hash`) and keep `summary` as JSON."""
        return cls(str(Path(folder).resolve()), content_hash(folder), summary_to_dict(summary))

    def check(self) -> FolderStatus:
        """Is the folder still there and unchanged? (Sessions open either way; this is for a warning.)"""
        try:
            return FolderStatus.OK if content_hash(self.path) == self.content_hash else FolderStatus.CHANGED
        except FileNotFoundError:
            return FolderStatus.MISSING


class ModelRef(FolderRef):
    """The model folder of a session."""


class TranscoderRef(FolderRef):
    """The transcoder folder (or file) of a session."""


class FeatureIndexRef(FolderRef):
    """The feature index file (examples, histograms, auto-labels) of a session or graph."""


def transcoder_identity(ref: TranscoderRef | None) -> str:
    """What labels are keyed by: the transcoder set's content hash, so that a moved or copied set keeps
    its labels and a retrained one does not inherit them; "" for an unknown set."""
    return "" if ref is None else ref.content_hash


# ---------------------------------------------------------------------------------------------
# per-graph records
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CanvasView:
    """The visible rectangle of the graph canvas, in canvas coordinates."""

    x0: float
    x1: float
    y0: float
    y1: float

    def __post_init__(self) -> None:
        _normalise(self, **{f.name: float(getattr(self, f.name)) for f in fields(self)})


@dataclass(frozen=True)
class TokenProb:
    """One of the top output tokens of an intervention run (`circuit-studio intervene`'s dicts)."""

    token: str
    id: int
    probability: float

    @classmethod
    def from_dict(cls, d: Mapping) -> TokenProb:
        return cls(str(d["token"]), int(d["id"]), float(d["probability"]))

    def to_dict(self) -> dict:
        return {"token": self.token, "id": self.id, "probability": self.probability}


@dataclass(frozen=True)
class InterventionRecord:
    """An intervention experiment on a graph's prompt and what it did.

    `options`: how it ran, JSON (e.g. {"freeze_attention": true, "constrained_layers": [0, 4] or
    null, "position_mode": "token"}). `extra`: anything else JSON, e.g. generated texts.
    """

    id: int
    interventions: tuple[Intervention, ...]
    options: dict = field(default_factory=dict)
    top_before: tuple[TokenProb, ...] = ()
    top_after: tuple[TokenProb, ...] = ()
    extra: dict = field(default_factory=dict)
    created: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        _normalise(self, interventions=tuple(self.interventions),
                   top_before=tuple(_token_prob(t) for t in self.top_before),
                   top_after=tuple(_token_prob(t) for t in self.top_after))
        for iv in self.interventions:
            if not isinstance(iv.position, (int, np.integer, slice)):
                raise ValueError(f"Intervention position {iv.position!r} must be an int or a slice.")
        _check_json(self.options, "InterventionRecord.options")
        _check_json(self.extra, "InterventionRecord.extra")


def _token_prob(t: TokenProb | Mapping) -> TokenProb:
    return t if isinstance(t, TokenProb) else TokenProb.from_dict(t)


@dataclass(frozen=True, eq=False)
class GraphRecord:
    """One traced graph of the session and the analysis state it was left in.

    `id` is stable within the session (other records refer to it); `title` and `notes` are the
    user's (an empty title shows the prompt). `model`, `transcoders` and `feature_index` are what the
    graph was traced (and labelled) with; None when unknown.
    """

    id: int
    graph: AttributionGraph
    created: datetime = field(default_factory=utc_now)
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    selected: int | None = None
    pinned: tuple[int, ...] = ()  # in pinning order
    supernodes: tuple[Supernode, ...] = ()
    view: CanvasView | None = None
    interventions: tuple[InterventionRecord, ...] = ()
    title: str = ""
    notes: str = ""
    model: ModelRef | None = None
    transcoders: TranscoderRef | None = None
    feature_index: FeatureIndexRef | None = None

    def __post_init__(self) -> None:
        n = self.graph.n_nodes
        _normalise(self, pinned=tuple(int(p) for p in self.pinned),
                   supernodes=tuple(Supernode(int(s.id), str(s.name), tuple(int(m) for m in s.members))
                                    for s in self.supernodes),
                   interventions=tuple(self.interventions), node_threshold=float(self.node_threshold),
                   edge_threshold=float(self.edge_threshold),
                   selected=None if self.selected is None else int(self.selected))
        for name in ("node_threshold", "edge_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} {getattr(self, name)} is outside [0, 1].")
        nodes = list(self.pinned) + [m for s in self.supernodes for m in s.members]
        if self.selected is not None:
            nodes.append(self.selected)
        bad = [v for v in nodes if not 0 <= v < n]
        if bad:
            raise ValueError(f"Graph {self.id}: node {bad[0]} is not in the graph (0..{n - 1}).")
        if len(set(self.pinned)) != len(self.pinned):
            raise ValueError(f"Graph {self.id}: a node is pinned twice.")
        _unique([s.id for s in self.supernodes], f"Graph {self.id}: supernode id")
        _unique([r.id for r in self.interventions], f"Graph {self.id}: intervention id")

    @classmethod
    def from_analysis(cls, analysis: Analysis, *, id: int, created: datetime | None = None,
                      view: CanvasView | None = None, interventions: Sequence[InterventionRecord] = (),
                      title: str = "", notes: str = "", model: ModelRef | None = None,
                      transcoders: TranscoderRef | None = None,
                      feature_index: FeatureIndexRef | None = None) -> GraphRecord:
        """Capture `analysis`'s per-graph state (labels belong to the transcoder set: see `Session.from_analysis`)."""
        return cls(id=id, graph=analysis.graph, created=created or utc_now(),
                   node_threshold=analysis.node_threshold, edge_threshold=analysis.edge_threshold,
                   selected=analysis.selected, pinned=tuple(analysis.pinned),
                   supernodes=tuple(analysis.supernodes), view=view, interventions=tuple(interventions),
                   title=title, notes=notes, model=model, transcoders=transcoders, feature_index=feature_index)

    def apply_to(self, analysis: Analysis) -> None:
        """Put this record's thresholds, pins, supernodes and selection into `analysis` (of the same graph).

        Meant for a freshly built Analysis, before views subscribe: pins and supernodes are set
        directly and emit no events (thresholds and selection do, through the public methods).
        """
        if analysis.graph is not self.graph and not graphs_equal(analysis.graph, self.graph):
            raise ValueError(f"Graph record {self.id} belongs to another graph than this analysis.")
        analysis.set_thresholds(self.node_threshold, self.edge_threshold)
        analysis.pinned[:] = list(self.pinned)
        analysis.supernodes[:] = list(self.supernodes)
        analysis.select(self.selected)

    @property
    def display_title(self) -> str:
        return self.title or self.graph.prompt

    @property
    def label_scope(self) -> str:
        """The identity of this graph's transcoder set, which its labels are keyed by."""
        return transcoder_identity(self.transcoders)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GraphRecord):
            return NotImplemented
        return not _record_differences(self, other, "")

    __hash__ = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# the session
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Session:
    """Everything a session file holds; see the module docstring. Update with `dataclasses.replace`
    or the `with_*` helpers."""

    model: ModelRef | None = None
    transcoders: TranscoderRef | None = None
    graphs: tuple[GraphRecord, ...] = ()
    labels: dict[tuple[str, int, int], str] = field(default_factory=dict)  # (transcoder identity, layer, feature)
    notes: str = ""
    current_graph: int | None = None
    window_state: bytes | None = None
    settings: dict = field(default_factory=dict)
    created: datetime = field(default_factory=utc_now)
    feature_index: FeatureIndexRef | None = None

    def __post_init__(self) -> None:
        own = transcoder_identity(self.transcoders)
        labels = {(str(k[0]), int(k[1]), int(k[2])) if len(k) == 3 else (own, int(k[0]), int(k[1])): str(v)
                  for k, v in self.labels.items()}
        # one canonical order (by set, then as given), so that equal sessions list their labels alike
        _normalise(self, graphs=tuple(self.graphs), labels=dict(sorted(labels.items(), key=lambda kv: kv[0][0])),
                   window_state=None if self.window_state is None else bytes(self.window_state))
        _check_json(self.settings, "Session.settings")
        ids = [g.id for g in self.graphs]
        _unique(ids, "Graph id")
        if self.current_graph is not None and self.current_graph not in ids:
            raise ValueError(f"current_graph {self.current_graph} is not one of the session's graphs {ids}.")

    # ---- lookups ----
    def graph(self, graph_id: int) -> GraphRecord:
        for g in self.graphs:
            if g.id == graph_id:
                return g
        raise KeyError(f"no graph {graph_id} in this session")

    def current(self) -> GraphRecord | None:
        return None if self.current_graph is None else self.graph(self.current_graph)

    def next_graph_id(self) -> int:
        return max((g.id for g in self.graphs), default=0) + 1

    def labels_in(self, scope: str) -> dict[tuple[int, int], str]:
        """The labels of one transcoder set (see `transcoder_identity`), keyed by (layer, feature)."""
        return {(layer, feature): text for (s, layer, feature), text in self.labels.items() if s == scope}

    def graph_labels(self, graph_id: int) -> dict[tuple[int, int], str]:
        """The labels shown on graph `graph_id`: those of the transcoder set it was traced with."""
        return self.labels_in(self.graph(graph_id).label_scope)

    def with_labels(self, scope: str, labels: Mapping[tuple[int, int], str]) -> Session:
        """Replace the labels of transcoder set `scope` (the other sets' labels stay)."""
        others = {k: v for k, v in self.labels.items() if k[0] != scope}
        return replace(self, labels={**others, **{(scope, int(l), int(f)): v for (l, f), v in labels.items()}})

    # ---- updates (each returns a new Session) ----
    def with_graph(self, record: GraphRecord, *, make_current: bool = True) -> Session:
        """Replace the record with the same id, or append it."""
        graphs = [record if g.id == record.id else g for g in self.graphs]
        if record.id not in [g.id for g in self.graphs]:
            graphs.append(record)
        return replace(self, graphs=tuple(graphs),
                       current_graph=record.id if make_current else self.current_graph)

    def with_intervention(self, graph_id: int, record: InterventionRecord) -> Session:
        """Add `record` to graph `graph_id` (or replace the one with its id); see `next_intervention_id`."""
        g = self.graph(graph_id)
        ivs = [record if r.id == record.id else r for r in g.interventions]
        if record.id not in [r.id for r in g.interventions]:
            ivs.append(record)
        return self.with_graph(replace(g, interventions=tuple(ivs)), make_current=False)

    def next_intervention_id(self, graph_id: int) -> int:
        return max((r.id for r in self.graph(graph_id).interventions), default=0) + 1

    def without_graph(self, graph_id: int) -> Session:
        graphs = tuple(g for g in self.graphs if g.id != graph_id)
        current = self.current_graph
        if current == graph_id:
            current = graphs[-1].id if graphs else None
        return replace(self, graphs=graphs, current_graph=current)

    @classmethod
    def from_analysis(cls, analysis: Analysis | None, previous: Session | None = None, *,
                      graph_id: int | None = None, view: CanvasView | None | EllipsisType = ...,
                      **changes: Any) -> Session:
        """`previous` (or an empty session) updated with the current `analysis`.

        The analysis's graph becomes the record `graph_id`, or the record already holding the same
        graph object (as `Session.analysis` builds them), or a new record; its created time,
        interventions, title, notes and bindings are kept, `view` too unless given (None clears it). A
        new record is bound to the session's model, transcoders and feature index (as set by `changes`):
        the graph was just traced with them. `analysis.labels` is taken as the complete label set of the
        record's transcoder set (the controller seeds each new Analysis with the session's labels).
        `changes` sets other fields (model, transcoders, notes, window_state, settings...).
        """
        session = previous or cls()
        if analysis is not None:
            old = None
            for g in session.graphs:
                if (graph_id is not None and g.id == graph_id) or (graph_id is None and g.graph is analysis.graph):
                    old = g
            rid = graph_id if graph_id is not None else (old.id if old else session.next_graph_id())
            bindings = {name: getattr(old, name) if old else changes.get(name, getattr(session, name))
                        for name in ("model", "transcoders", "feature_index")}
            record = GraphRecord.from_analysis(
                analysis, id=rid, created=old.created if old else None,
                view=(old.view if old else None) if view is ... else view,
                interventions=old.interventions if old else (),
                title=old.title if old else "", notes=old.notes if old else "", **bindings)
            session = session.with_graph(record).with_labels(record.label_scope, analysis.labels)
        return replace(session, **changes) if changes else session

    def analysis(self, graph_id: int | None = None, *,
                 auto_label: Callable[[int, int], str] | None = None) -> Analysis:
        """A new Analysis of graph `graph_id` (default: the current one) in the state it was saved in,
        with the labels of its transcoder set."""
        gid = self.current_graph if graph_id is None else graph_id
        if gid is None:
            raise KeyError("this session has no current graph")
        record = self.graph(gid)
        analysis = Analysis(record.graph, node_threshold=record.node_threshold,
                            edge_threshold=record.edge_threshold, labels=self.labels_in(record.label_scope),
                            auto_label=auto_label)
        record.apply_to(analysis)
        return analysis

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Session):
            return NotImplemented
        return not session_differences(self, other)

    __hash__ = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# equality (bit-exact for arrays)
# ---------------------------------------------------------------------------------------------

def arrays_identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes (so NaN payloads and -0.0 count too)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return bool(np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))


def graph_differences(a: AttributionGraph, b: AttributionGraph, where: str = "graph") -> list[str]:
    out = []
    for f in fields(AttributionGraph):
        x, y = getattr(a, f.name), getattr(b, f.name)
        same = arrays_identical(x, y) if isinstance(x, np.ndarray) or isinstance(y, np.ndarray) else (
            x == y and type(x) is type(y))
        if not same:
            out.append(f"{where}.{f.name}")
    return out


def graphs_equal(a: AttributionGraph, b: AttributionGraph) -> bool:
    return not graph_differences(a, b)


def _record_differences(a: GraphRecord, b: GraphRecord, where: str) -> list[str]:
    out = graph_differences(a.graph, b.graph, f"{where}graph") if a.graph is not b.graph else []
    for f in fields(GraphRecord):
        if f.name != "graph" and getattr(a, f.name) != getattr(b, f.name):
            out.append(f"{where}{f.name}")
    return out


def session_differences(a: Session, b: Session) -> list[str]:
    """Names of the fields that differ, e.g. ["graphs[1].pinned", "labels"]; [] if equal."""
    out = [f.name for f in fields(Session) if f.name != "graphs" and getattr(a, f.name) != getattr(b, f.name)]
    if len(a.graphs) != len(b.graphs):
        return out + [f"graphs (count {len(a.graphs)} != {len(b.graphs)})"]
    for i, (x, y) in enumerate(zip(a.graphs, b.graphs)):
        out += _record_differences(x, y, f"graphs[{i}].")
    return out


# ---------------------------------------------------------------------------------------------

def _normalise(obj: object, **values: Any) -> None:
    """Set fields of a frozen dataclass in its __post_init__ (canonical types, so equality is exact)."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _unique(values: list, what: str) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{what} {v} is used twice.")
        seen.add(v)


def _check_json(value: Any, what: str) -> None:
    """`value` must survive a JSON round trip unchanged (plain dict/list/str/int/float/bool/None)."""
    try:
        back = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be plain JSON: {e}") from None
    if not _same_json(value, back):
        raise ValueError(f"{what} must be plain JSON (str keys, lists not tuples): {value!r}")


def _same_json(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return type(b) is list and len(a) == len(b) and all(map(_same_json, a, b))
    if isinstance(a, float):
        return isinstance(b, float) and (a == b or (math.isnan(a) and math.isnan(b)))
    return type(a) is type(b) and a == b
