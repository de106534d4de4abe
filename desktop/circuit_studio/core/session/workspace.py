"""The workspace: everything the window shows, as one Qt-free model (napari's `components`, glue's state).

One source of truth. The panes are views of parts of it and change it only through its methods; the
session file is written from it alone (`to_session`) and read back into it (`load_session`).

What it holds:

* **resources**: the loaded models, transcoder sets and feature indexes, each under its identity
  (`ResourceRef.identity`: the content hash of its folder or file, `core.session.content_hash`, or
  "mem:<n>" for an object built in memory). Loading the same folder twice finds the loaded one.
  `active` (a `Binding`) names what a new trace uses: the last model, transcoders and index loaded;
* **graphs**: a `GraphEntry` per graph of the session, bound (`GraphEntry.binding`) to the refs of the
  model, transcoder set and feature index it was traced with. A graph is only ever shown and steered
  with its own resources (`live`); when they are not loaded it is shown as saved, and says so
  (`Live.missing`);
* **the current graph**: its live `Analysis` (pins, supernodes, labels, thresholds, selection),
  its canvas view (`set_view`, reported by the canvas as it changes), and `steering`
  (`core.interventions.steering.Steering`, the interventions on it) whose context follows the graph's resources.
  Other graphs keep their state in their entry (`GraphEntry.record`, `GraphEntry.steering`);
* **labels**, keyed by transcoder identity (`labels[identity][(layer, feature)]`): a label names a
  feature of one transcoder set, in every graph traced with that set and in no other;
* `window_state` (an opaque blob the window updates on change), `prompt`, `notes`, `settings`;
* `history`: undo / redo (`core.session.history.History`) of the current graph's analysis and steering.

Events (frozen dataclasses of `workspace_events` on `events`, a `core.session.events.EventHub`; the steering's
events are forwarded there too). `modifies_session` says whether the user changed something a session file keeps (the
window's "unsaved changes" flag follows it; computed results, views and layouts do not set it).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from .analysis import Analysis, Aspect
from .events import EventHub
from ..graph.attribution_graph import AttributionGraph
from .history import History
from .workspace_events import (AnalysisChanged, BindingChanged, CurrentGraphChanged, GraphAdded, GraphWillChange, HistoryChanged, PromptChanged, ResourcesChanged, SessionReplaced, ViewChanged, WindowStateChanged)
from .records import (HASH_SCHEME, CanvasView, FeatureIndexRef, GraphRecord, ModelRef, Session, TranscoderRef,
                      content_hash, summary_to_dict, utc_now)
from ..interventions.steering import NO_MODEL, Steering, SteeringContext, SteeringSnapshot

KINDS = ("model", "transcoders", "index")
TRANSCODER_KINDS = {"plt": "per-layer", "clt": "cross-layer"}


def transcoders_not_loaded(name: str) -> str:
    return (f"This graph's transcoders ({name}) are not loaded: showing saved results. Load them (File ▸ Open "
            "transcoder folder…) to steer.")


# ---------------------------------------------------------------------------------------------
# resources
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResourceRef:
    """A model, transcoder set or feature index: where it was, what it is, what to call it."""

    kind: str  # "model" | "transcoders" | "index"
    path: str  # resolved folder or file ("" for an object built in memory)
    identity: str  # content hash ("fh1:…") of the folder or file, or "mem:<n>"
    name: str = ""  # the model's name, the transcoders' scan, the index's file name
    summary: dict = field(default_factory=dict)  # JSON (`core.session.summary_to_dict`)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"resource kind {self.kind!r} is not one of {KINDS}")

    @property
    def in_memory(self) -> bool:
        return self.identity.startswith("mem:")

    @property
    def label(self) -> str:
        """How menus and banners name it: "circuit-studio-plt-1024 (per-layer)", "features.sqlite"."""
        name = self.name or (Path(self.path).name if self.path else self.kind)
        kind = TRANSCODER_KINDS.get(str(self.summary.get("kind", ""))) if self.kind == "transcoders" else None
        return f"{name} ({kind})" if kind else name

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": self.path, "identity": self.identity, "name": self.name,
                "summary": self.summary}

    @classmethod
    def from_json(cls, d: dict) -> ResourceRef:
        return cls(d["kind"], d.get("path", ""), d["identity"], d.get("name", ""), dict(d.get("summary") or {}))

    @classmethod
    def from_folder_ref(cls, kind: str, ref) -> ResourceRef | None:
        """From a session's `ModelRef` / `TranscoderRef` (None stays None)."""
        if ref is None:
            return None
        s = ref.summary or {}
        name = s.get("name") or s.get("scan") or Path(ref.path).name
        return cls(kind, ref.path, ref.content_hash, str(name), dict(s))


def model_ref(folder: str | Path, summary: Any, identity: str | None = None) -> ResourceRef:
    """The ref of a model folder (hashed now unless `identity` is given); `summary` a ModelSummary."""
    data = summary_to_dict(summary)
    return ResourceRef("model", str(Path(folder).resolve()), identity or content_hash(folder),
                       str(data.get("name") or Path(folder).name), data)


def transcoders_ref(source: str | Path, summary: Any, identity: str | None = None) -> ResourceRef:
    """The ref of a transcoder folder or file; `summary` a TranscoderSummary (or a dict)."""
    data = summary_to_dict(summary)
    return ResourceRef("transcoders", str(Path(source).resolve()), identity or content_hash(source),
                       str(data.get("scan") or Path(source).name), data)


def index_ref(path: str | Path, identity: str | None = None) -> ResourceRef:
    return ResourceRef("index", str(Path(path).resolve()), identity or content_hash(path), Path(path).name)


@dataclass(frozen=True)
class Binding:
    """The resources a graph was traced with (or, as `Workspace.active`, a new trace would use)."""

    model: ResourceRef | None = None
    transcoders: ResourceRef | None = None
    index: ResourceRef | None = None

    def to_json(self) -> dict:
        return {k: (None if getattr(self, k) is None else getattr(self, k).to_json()) for k in KINDS}

    @classmethod
    def from_json(cls, d: dict) -> Binding:
        return cls(**{k: (ResourceRef.from_json(d[k]) if d.get(k) else None) for k in KINDS})

    @property
    def label_key(self) -> str:
        """Whose labels a graph of this binding shows: its transcoders' identity ("" when unknown)."""
        return self.transcoders.identity if self.transcoders is not None else ""


@dataclass(frozen=True)
class Live:
    """A binding and its loaded objects (None where not loaded)."""

    binding: Binding
    bundle: Any = None
    transcoders: Any = None
    index: Any = None
    index_ref: ResourceRef | None = None

    @property
    def missing(self) -> tuple[str, ...]:
        """The kinds the graph names but that are not loaded ("model", "transcoders", "index")."""
        b = self.binding
        out = []
        for kind, ref, obj in (("model", b.model, self.bundle), ("transcoders", b.transcoders, self.transcoders),
                               ("index", b.index, self.index)):
            if ref is not None and obj is None:
                out.append(kind)
        return tuple(out)


# ---------------------------------------------------------------------------------------------
# graphs
# ---------------------------------------------------------------------------------------------

@dataclass
class GraphEntry:
    """One graph of the session. While it is not current, `record` holds its analysis state and
    `steering` its interventions; the current graph's live state is `Workspace.analysis` / `.steering`."""

    id: int
    graph: AttributionGraph
    binding: Binding
    created: datetime
    record: GraphRecord
    view: CanvasView | None = None
    interventions: tuple = ()  # InterventionRecords read from the file (the steering's own included)
    steering: SteeringSnapshot | None = None
    steering_record: Any = None  # the steering's InterventionRecord, made when the graph was left
    title: str = ""
    notes: str = ""

    @property
    def display_title(self) -> str:
        return self.title or self.graph.prompt


@dataclass(frozen=True)
class GraphDescription:
    """What a menu or banner says about a graph: its title, when and with what it was traced."""

    id: int
    title: str
    created: datetime
    model: str
    transcoders: str
    index: str
    missing: tuple[str, ...]

    @property
    def menu_text(self) -> str:
        when = self.created.astimezone().strftime("%H:%M")
        title = self.title if len(self.title) <= 60 else self.title[:59] + "…"
        return f"{title} — {self.transcoders or 'unknown transcoders'} · {when}"


# ---------------------------------------------------------------------------------------------
# the workspace
# ---------------------------------------------------------------------------------------------

_MEM_IDS = itertools.count(1)


class Workspace:
    """See the module docstring."""

    def __init__(self) -> None:
        self.events = EventHub()
        self.steering = Steering()
        self.steering.events.connect(self.events.emit)
        self.steering.subscribe_before_change(self._record_undo)
        self._objects: dict[str, Any] = {}
        self._refs: dict[str, ResourceRef] = {}
        self._index_for: dict[str, ResourceRef] = {}  # transcoder identity -> the index opened for them
        self._hashes: dict[str, str] = {}  # in-memory ref identity -> content hash of its path (sessions)
        self.active = Binding()
        self.graphs: dict[int, GraphEntry] = {}
        self.current_id: int | None = None
        self.analysis: Analysis | None = None
        self.history: History | None = None
        self.labels: dict[str, dict[tuple[int, int], str]] = {}
        self.window_state: bytes | None = None
        self.prompt = ""
        self.notes = ""
        self.settings: dict = {}
        self.created = utc_now()
        self._live_key: tuple = ()

    # ================================================================ resources
    def add_resource(self, ref: ResourceRef, obj: Any) -> ResourceRef:
        """Keep `obj` loaded under `ref` (the loaded one wins if the same identity is loaded already)."""
        if ref.identity not in self._objects:
            self._objects[ref.identity] = obj
            self._refs[ref.identity] = ref
        self.events.emit(ResourcesChanged())
        self._refresh_current()
        return self._refs[ref.identity]

    def register(self, kind: str, obj: Any) -> ResourceRef | None:
        """An object built in memory (scripts, tests): kept under a "mem:" identity (None stays None)."""
        if obj is None:
            return None
        for identity, o in self._objects.items():
            if o is obj:
                return self._refs[identity]
        path, name = "", kind
        if kind == "model":
            path, name = str(obj.summary.folder), obj.name
        elif kind == "transcoders":
            path, name = (str(obj.source) if obj.source else ""), (obj.scan or kind)
        elif kind == "index":
            path, name = str(obj.path), Path(obj.path).name
        summary = {"kind": obj.kind} if kind == "transcoders" else {}
        ref = ResourceRef(kind, path, f"mem:{next(_MEM_IDS)}", name, summary)
        self._objects[ref.identity], self._refs[ref.identity] = obj, ref
        return ref

    def loaded(self, identity: str) -> ResourceRef | None:
        """The ref of the loaded resource with this identity, if one is loaded."""
        return self._refs.get(identity)

    def resource(self, ref: ResourceRef | None) -> Any:
        return None if ref is None else self._objects.get(ref.identity)

    def set_active(self, **parts: ResourceRef | None) -> None:
        """Make `model`, `transcoders` and/or `index` what new traces use."""
        self.active = replace(self.active, **parts)
        self.events.emit(ResourcesChanged())

    def link_index(self, transcoders: ResourceRef, index: ResourceRef) -> None:
        """`index` was opened for (or found next to) `transcoders`: graphs of them use it."""
        self._index_for[transcoders.identity] = index
        self._refresh_current()

    def index_ref_for(self, transcoders: ResourceRef | None) -> ResourceRef | None:
        return None if transcoders is None else self._index_for.get(transcoders.identity)

    def live(self, graph_id: int | None = None) -> Live:
        """The graph's binding (default: the current graph's, or `active` without one) and what of it is
        loaded. Its index is the one it names if loaded, else the one opened for its transcoders."""
        gid = self.current_id if graph_id is None else graph_id
        b = self.graphs[gid].binding if gid is not None and gid in self.graphs else self.active
        index_ref = b.index if self.resource(b.index) is not None else (self.index_ref_for(b.transcoders) or b.index)
        return Live(b, self.resource(b.model), self.resource(b.transcoders), self.resource(index_ref), index_ref)

    def rebind_current(self, **parts: ResourceRef | None) -> None:
        """Bind the current graph to other resources (scripts and tests that swap objects in place)."""
        e = self.graphs.get(self.current_id)
        if e is None:
            return
        e.binding = replace(e.binding, **parts)
        self._refresh_current()

    def _refresh_current(self) -> None:
        """After a resource change: if the current graph's loaded resources changed, its analysis (automatic
        labels) and steering follow, and `BindingChanged` says so."""
        if self.current_id is None or self.analysis is None:
            return
        live = self.live()
        key = (id(live.bundle), id(live.transcoders), id(live.index), live.binding)
        if key == self._live_key:
            return
        index_changed = not self._live_key or self._live_key[2] != id(live.index)
        self._live_key = key
        if index_changed:
            self.analysis.auto_label = live.index.label if live.index is not None else None
            self.events.emit(AnalysisChanged(self.current_id, Aspect.LABELS, by_user=False))
        self.steering.set_context(self._steering_context())
        self.events.emit(BindingChanged(self.current_id))

    def _steering_context(self) -> SteeringContext:
        a = self.analysis
        if a is None:
            return SteeringContext()
        live = self.live()
        why = ""
        tc = live.transcoders
        if live.bundle is None:
            why = NO_MODEL
        elif tc is None:
            ref = live.binding.transcoders
            why = transcoders_not_loaded(ref.label) if ref is not None else NO_MODEL
        else:
            g = a.graph
            if g.n_layers != tc.n_layers or (g.active_features.size and
                                             int(g.active_features[:, 2].max()) >= tc.n_features):
                why = (f"This graph was traced with other transcoders ({g.n_layers} layers) than the loaded ones "
                       f"({tc.n_layers} layers × {tc.n_features} features): load the matching model and "
                       "transcoders.")
        return SteeringContext(self.current_id, a, live.bundle, tc, live.index, why)

    # ================================================================ graphs
    def add_graph(self, graph: AttributionGraph, binding: Binding | None = None, *, analysis: Analysis | None = None,
                  make_current: bool = True, title: str = "") -> int:
        """A new graph of the session, bound to `binding` (default: `active`); `analysis` its analysis if one
        was built already (a trace builds it on the compute thread)."""
        gid = max(self.graphs, default=0) + 1
        binding = binding if binding is not None else self.active
        if binding.index is None and binding.transcoders is not None:
            binding = replace(binding, index=self.index_ref_for(binding.transcoders))
        a = analysis if analysis is not None else Analysis(graph)
        record = GraphRecord.from_analysis(a, id=gid, title=title)
        self.graphs[gid] = GraphEntry(gid, graph, binding, record.created, record, title=title)
        self.events.emit(GraphAdded(gid))
        if make_current:
            self._enter(gid, a)
        return gid

    def set_current(self, graph_id: int | None) -> None:
        """Show graph `graph_id` (None: none) with its own resources and state."""
        if graph_id is not None and graph_id not in self.graphs:
            raise KeyError(f"no graph {graph_id} in this session")
        if graph_id == self.current_id:
            return
        self._enter(graph_id)
        if graph_id is not None:
            self.set_prompt(self.graphs[graph_id].graph.prompt)

    def entry(self, graph_id: int) -> GraphEntry:
        return self.graphs[graph_id]

    def describe(self, graph_id: int) -> GraphDescription:
        e = self.graphs[graph_id]
        b, live = e.binding, self.live(graph_id)
        return GraphDescription(graph_id, e.display_title, e.created, b.model.label if b.model else "",
                                b.transcoders.label if b.transcoders else "",
                                live.index_ref.label if live.index_ref else "", live.missing)

    def _leave_current(self) -> None:
        e = self.graphs.get(self.current_id) if self.current_id is not None else None
        if e is not None and self.analysis is not None:
            e.record = self._current_record(e)
            e.steering = self.steering.snapshot()
            e.steering_record = self.steering.record()

    def _enter(self, graph_id: int | None, analysis: Analysis | None = None) -> None:
        self.events.emit(GraphWillChange(self.current_id))
        self._leave_current()
        self.current_id, self.analysis, self.history, self._live_key = graph_id, None, None, ()
        if graph_id is None:
            self.steering.set_context(SteeringContext())
            self.steering.load(None)
            self.events.emit(CurrentGraphChanged(None))
            self.events.emit(HistoryChanged())
            return
        e = self.graphs[graph_id]
        live = self.live(graph_id)
        labels = self.labels.setdefault(e.binding.label_key, {})
        if analysis is None:
            r = e.record
            analysis = Analysis(e.graph, node_threshold=r.node_threshold, edge_threshold=r.edge_threshold,
                                labels=labels, auto_label=live.index.label if live.index is not None else None)
            r.apply_to(analysis)
        else:
            analysis.labels = {**labels, **analysis.labels}
            labels.update(analysis.labels)
            if analysis.auto_label is None and live.index is not None:
                analysis.auto_label = live.index.label
        self.analysis = analysis
        self._live_key = (id(live.bundle), id(live.transcoders), id(live.index), live.binding)
        analysis.subscribe(lambda aspect, a=analysis: self._analysis_changed(a, aspect))
        steering = self.steering
        self.history = History(lambda: (analysis.state(), steering.state()),
                               lambda s: (analysis.restore(s[0]), steering.restore(s[1])),
                               on_change=lambda: self.events.emit(HistoryChanged()))
        analysis.subscribe_before_change(lambda d, a=analysis: self._record_undo(d) if a is self.analysis else None)
        self.steering.set_context(self._steering_context())
        self.steering.load(e.steering)
        if e.steering is None:  # its first steering record: an id no other record of the graph has
            self.steering.record_id = max((r.id for r in e.interventions), default=0) + 1
        self.events.emit(CurrentGraphChanged(graph_id))  # last: the graph, its resources and steering are in place
        self.events.emit(HistoryChanged())

    def _analysis_changed(self, analysis: Analysis, aspect: Aspect) -> None:
        if analysis is not self.analysis:
            return
        e = self.graphs[self.current_id]
        if aspect is Aspect.LABELS:
            self.labels[e.binding.label_key] = dict(analysis.labels)
        if aspect in (Aspect.LABELS, Aspect.SUPERNODES):
            self.steering.rename_rows()
        self.events.emit(AnalysisChanged(self.current_id, aspect))

    def _record_undo(self, description: str) -> None:
        if self.history is not None:
            self.history.record(description)

    def undo(self) -> bool:
        return bool(self.history and self.history.undo())

    def redo(self) -> bool:
        return bool(self.history and self.history.redo())

    # ================================================================ small fields
    def set_view(self, view: CanvasView | None) -> None:
        """The current graph's canvas view (the canvas reports it as it changes)."""
        e = self.graphs.get(self.current_id) if self.current_id is not None else None
        if e is None or e.view == view:
            return
        e.view = view
        self.events.emit(ViewChanged(e.id))

    @property
    def view(self) -> CanvasView | None:
        e = self.graphs.get(self.current_id) if self.current_id is not None else None
        return e.view if e is not None else None

    def set_window_state(self, blob: bytes | None) -> None:
        if blob != self.window_state:
            self.window_state = blob
            self.events.emit(WindowStateChanged())

    def set_prompt(self, text: str) -> None:
        if text != self.prompt:
            self.prompt = text
            self.events.emit(PromptChanged(text))

    def labels_for(self, binding: Binding) -> dict[tuple[int, int], str]:
        return dict(self.labels.get(binding.label_key, {}))

    # ================================================================ sessions
    def _current_record(self, e: GraphEntry) -> GraphRecord:
        return GraphRecord.from_analysis(self.analysis, id=e.id, created=e.created, view=e.view,
                                         interventions=e.record.interventions, title=e.title, notes=e.notes)

    def _graph_record(self, e: GraphEntry) -> GraphRecord:
        if e.id == self.current_id and self.analysis is not None:
            record, steering_record, steering_id = self._current_record(e), self.steering.record(), \
                self.steering.record_id
        else:
            record, steering_record = replace(e.record, view=e.view), e.steering_record
            steering_id = e.steering.record_id if e.steering is not None else None
        others = [r for r in e.interventions if r.id != steering_id]
        if steering_record is not None:
            at = next((i for i, r in enumerate(e.interventions) if r.id == steering_id), len(others))
            others.insert(min(at, len(others)), steering_record)
        b = e.binding
        return replace(record, interventions=tuple(others), title=e.title, notes=e.notes,
                       model=self._file_ref(b.model, ModelRef), transcoders=self._file_ref(b.transcoders, TranscoderRef),
                       feature_index=self._file_ref(self.live(e.id).index_ref, FeatureIndexRef))

    def _content_hash(self, ref: ResourceRef) -> str | None:
        """`ref`'s content hash (hashed once for an object built in memory; None without a file)."""
        if not ref.in_memory:
            return ref.identity
        if ref.identity not in self._hashes:
            try:
                self._hashes[ref.identity] = content_hash(ref.path) if ref.path else None
            except FileNotFoundError:
                self._hashes[ref.identity] = None
        return self._hashes[ref.identity]

    def _file_ref(self, ref: ResourceRef | None, cls):
        """`ref` as the session file names it (a ModelRef, TranscoderRef or FeatureIndexRef)."""
        if ref is None:
            return None
        h = self._content_hash(ref)
        return None if h is None else cls(ref.path, h, ref.summary)

    def _scope(self, label_key: str) -> str:
        """A labels key as the session file keys labels: the transcoder set's content hash."""
        if not label_key.startswith("mem:"):
            return label_key
        ref = self._refs.get(label_key)
        return (self._content_hash(ref) if ref is not None else None) or label_key

    def to_session(self) -> Session:
        """The session file's contents, from this model alone. Each graph names what it was traced with;
        the session's own model, transcoders and index are what is loaded now (the current graph's when
        nothing is)."""
        graphs = tuple(self._graph_record(e) for e in self.graphs.values())
        cur = self.graphs.get(self.current_id) if self.current_id is not None else None
        binding = self.active if (self.active.model is not None or cur is None) else cur.binding
        index = binding.index or self.index_ref_for(binding.transcoders)
        labels = {(self._scope(k), int(l), int(f)): t for k, v in self.labels.items() for (l, f), t in v.items()}
        settings = json.loads(json.dumps({**self.settings, "prompt": self.prompt}))  # plain JSON
        return Session(model=self._file_ref(binding.model, ModelRef),
                       transcoders=self._file_ref(binding.transcoders, TranscoderRef),
                       feature_index=self._file_ref(index, FeatureIndexRef), graphs=graphs, labels=labels,
                       notes=self.notes, current_graph=self.current_id if cur is not None else None,
                       window_state=self.window_state, settings=settings, created=self.created)

    def load_session(self, session: Session, graph_id: int | None = None) -> None:
        """Put `session` in place of the graphs, labels and fields (the loaded resources stay)."""
        self.events.emit(GraphWillChange(self.current_id))
        self.current_id, self.analysis, self.history = None, None, None
        settings = dict(session.settings)
        prompt = settings.pop("prompt", "")
        refs = {kind: ResourceRef.from_folder_ref(kind, getattr(session, name))
                for kind, name in (("model", "model"), ("transcoders", "transcoders"), ("index", "feature_index"))}
        self.graphs = {}
        for rec in session.graphs:
            graph_refs = {kind: ResourceRef.from_folder_ref(kind, getattr(rec, name))
                          for kind, name in (("model", "model"), ("transcoders", "transcoders"),
                                             ("index", "feature_index"))}
            if all(r is None for r in graph_refs.values()):  # a graph of an unknown set: the session's
                graph_refs = refs
            binding = Binding(graph_refs["model"], graph_refs["transcoders"], graph_refs["index"])
            snap = Steering.snapshot_from_records(rec.interventions)
            self.graphs[rec.id] = GraphEntry(rec.id, rec.graph, binding, rec.created, rec, rec.view, rec.interventions,
                                             snap, snap.saved_record if snap else None, rec.title, rec.notes)
        self.labels = {}
        for (scope, layer, feature), text in session.labels.items():
            self.labels.setdefault(scope, {})[(int(layer), int(feature))] = text
        self.notes, self.settings, self.created = session.notes, settings, session.created
        gid = session.current_graph if graph_id is None else graph_id
        self._enter(gid)
        self.set_prompt(self.graphs[gid].graph.prompt if gid is not None else prompt)
        self.window_state = session.window_state  # last: showing the graph may have moved the live layout
        self.events.emit(SessionReplaced())

    def clear(self) -> None:
        """A new, empty session (the loaded resources and the prompt stay)."""
        self._enter(None)
        self.graphs, self.labels = {}, {}
        self.window_state, self.notes, self.settings, self.created = None, "", {}, utc_now()
        self.events.emit(SessionReplaced())

    @staticmethod
    def is_content_hash(identity: str) -> bool:
        return identity.startswith(HASH_SCHEME + ":")
