"""What the window's Heads pane shows, as a Qt-free model: which edge was asked about, which head and which
(query, key) cell were chosen, and the computed results as plain data (JSON-able, kept in the session).

The computations (`compute_split`, `compute_pattern`, `compute_qk`) take a `core.attribution.heads.HeadAnalysis`
and return the plain results; the pane runs them as background jobs and hands them back with `put_*`.

* `EdgeSplitResult`: one edge source -> target split per head of each layer (`HeadAnalysis.split`'s column
  of that source): `parts[i][h]` for layer `layers[i]`, head h, and `parts[i][n_heads]` the bypass; every
  row sums to `edge`. `share(i, h)` = part / edge.
* `PatternResult`: the head's clean attention pattern for the prompt, `weights[q][k]`.
* `QKResult`: the head's pre-softmax score at (q, k) decomposed over graph nodes, query side and key side
  (the top nodes of each, by |term|, plus `rest`: what no graph node owns and the nodes left out).

The state is stored as one JSON dict (`to_json` / `from_json`): the window keeps it in the workspace's
settings under "heads", keyed by graph id (`Workspace.settings["heads"][str(graph_id)]`), so it is saved
with the session and comes back with it.

Events on `events` (a `core.session.events.EventHub`): `EdgeChanged`, `SplitChanged`, `HeadChanged`,
`PatternChanged`, `CellChanged`, `BreakdownChanged`, `HeadsReset`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..session.events import EventHub
from ..graph.attribution_graph import AttributionGraph, NodeKind

TOP_NODES = 12  # nodes kept per side of a QK breakdown


# ---- results (plain data) ----

@dataclass(frozen=True)
class EdgeSplitResult:
    source: int
    target: int
    edge: float  # the edge's weight, recomputed by the split
    layers: tuple[int, ...]
    n_heads: int
    parts: tuple[tuple[float, ...], ...]  # [len(layers)][n_heads + 1], last = bypass

    def share(self, i: int, h: int) -> float:
        return float(self.parts[i][h]) / self.edge if self.edge else 0.0

    def shares(self) -> np.ndarray:
        """[len(layers), n_heads + 1] parts / edge (last column = bypass)."""
        a = np.asarray(self.parts, dtype=np.float64)
        return a / self.edge if self.edge else np.zeros_like(a)

    def top_heads(self, n: int = 5) -> list[tuple[int, int, float]]:
        """(layer, head, share) of the n heads of largest |part|, largest first (bypass excluded)."""
        s = self.shares()[:, :self.n_heads]
        order = np.argsort(-np.abs(s), axis=None, kind="stable")[:n]
        return [(self.layers[int(i) // self.n_heads], int(i) % self.n_heads, float(s.flat[int(i)])) for i in order]

    def to_json(self) -> dict:
        return {"source": self.source, "target": self.target, "edge": self.edge, "layers": list(self.layers),
                "n_heads": self.n_heads, "parts": [list(r) for r in self.parts]}

    @classmethod
    def from_json(cls, d: dict) -> EdgeSplitResult:
        return cls(int(d["source"]), int(d["target"]), float(d["edge"]), tuple(int(j) for j in d["layers"]),
                   int(d["n_heads"]), tuple(tuple(float(v) for v in r) for r in d["parts"]))


@dataclass(frozen=True)
class PatternResult:
    layer: int
    head: int
    weights: tuple[tuple[float, ...], ...]  # [P][P], query rows, key columns

    def array(self) -> np.ndarray:
        return np.asarray(self.weights, dtype=np.float32)

    def to_json(self) -> dict:
        return {"layer": self.layer, "head": self.head, "weights": [list(r) for r in self.weights]}

    @classmethod
    def from_json(cls, d: dict) -> PatternResult:
        return cls(int(d["layer"]), int(d["head"]), tuple(tuple(float(v) for v in r) for r in d["weights"]))


@dataclass(frozen=True)
class QKResult:
    layer: int
    head: int
    query_pos: int
    key_pos: int
    score: float  # pre-softmax, pre-cap
    capped_score: float
    softcap: float | None
    weight: float  # the attention weight of the cell in the clean run
    masked: bool
    query_nodes: tuple[tuple[int, float], ...]  # (graph node, term), largest |term| first
    key_nodes: tuple[tuple[int, float], ...]
    query_rest: float  # everything else on the query side (the rest node and the nodes not listed)
    key_rest: float

    def to_json(self) -> dict:
        d = asdict(self)
        d["query_nodes"] = [list(x) for x in self.query_nodes]
        d["key_nodes"] = [list(x) for x in self.key_nodes]
        return d

    @classmethod
    def from_json(cls, d: dict) -> QKResult:
        return cls(int(d["layer"]), int(d["head"]), int(d["query_pos"]), int(d["key_pos"]), float(d["score"]),
                   float(d["capped_score"]), None if d.get("softcap") is None else float(d["softcap"]),
                   float(d["weight"]), bool(d["masked"]),
                   tuple((int(n), float(v)) for n, v in d["query_nodes"]),
                   tuple((int(n), float(v)) for n, v in d["key_nodes"]), float(d["query_rest"]), float(d["key_rest"]))


# ---- computations (run as jobs) ----

def node_position(graph: AttributionGraph, node: int) -> int:
    """The prompt position a node sits at (a logit: the last position)."""
    kind = graph.kind_of(node)
    if kind is NodeKind.FEATURE:
        return int(graph.feature_of(node)[1])
    if kind is NodeKind.ERROR:
        return int((node - graph.error_offset) % graph.n_pos)
    if kind is NodeKind.TOKEN:
        return int(node - graph.token_offset)
    return graph.n_pos - 1


def compute_split(analysis, source: int, target: int, *, progress=None, cancel=None,
                  cache: dict | None = None) -> EdgeSplitResult:
    """The edge source -> target split per head (`HeadAnalysis.split`; `cache` keeps whole splits per target)."""
    if not 0 <= source < analysis.n_sources:
        raise ValueError(f"node {source} is not a source of the graph (a feature, error or token node)")
    split = cache.get(target) if cache is not None else None
    if split is None:
        split = analysis.split(target, progress=progress, cancel=cancel)
        if cache is not None:
            cache[target] = split
    col = split.of_source(source)
    return EdgeSplitResult(int(source), int(target), float(split.edges[source]), tuple(split.layers),
                           int(split.n_heads), tuple(tuple(float(v) for v in row) for row in col))


def compute_pattern(analysis, layer: int, head: int) -> PatternResult:
    w = analysis.pattern(layer, head)
    return PatternResult(int(layer), int(head), tuple(tuple(float(v) for v in row) for row in w))


def compute_qk(analysis, layer: int, head: int, q: int, k: int, *, top: int = TOP_NODES, cancel=None) -> QKResult:
    bd = analysis.qk(layer, head, q, k, cancel=cancel)

    def side(m: np.ndarray) -> tuple[tuple[tuple[int, float], ...], float]:
        nodes = m[:-1].astype(np.float64)
        order = np.argsort(-np.abs(nodes), kind="stable")[:top]
        order = [int(i) for i in order if nodes[i] != 0]
        listed = tuple((i, float(nodes[i])) for i in order)
        return listed, float(m.astype(np.float64).sum() - sum(v for _, v in listed))

    qn, qr = side(bd.query_marginals)
    kn, kr = side(bd.key_marginals)
    return QKResult(bd.layer, bd.head, bd.query_pos, bd.key_pos, float(bd.score), float(bd.capped_score),
                    bd.softcap, float(bd.pattern), bool(bd.masked), qn, kn, qr, kr)


# ---- events ----

@dataclass(frozen=True)
class HeadsEvent:
    pass


@dataclass(frozen=True)
class HeadsReset(HeadsEvent):
    """Another graph (or a loaded state): everything changed."""


@dataclass(frozen=True)
class EdgeChanged(HeadsEvent):
    edge: tuple[int, int] | None


@dataclass(frozen=True)
class SplitChanged(HeadsEvent):
    split: EdgeSplitResult | None


@dataclass(frozen=True)
class HeadChanged(HeadsEvent):
    head: tuple[int, int] | None


@dataclass(frozen=True)
class PatternChanged(HeadsEvent):
    pattern: PatternResult | None


@dataclass(frozen=True)
class CellChanged(HeadsEvent):
    cell: tuple[int, int] | None


@dataclass(frozen=True)
class BreakdownChanged(HeadsEvent):
    breakdown: QKResult | None


# ---- the state ----

def _key(*values: int) -> str:
    return ",".join(str(int(v)) for v in values)


@dataclass
class _Cache:
    splits: dict[str, EdgeSplitResult] = field(default_factory=dict)
    patterns: dict[str, PatternResult] = field(default_factory=dict)
    qk: dict[str, QKResult] = field(default_factory=dict)


class HeadsState:
    """The requested edge, chosen head and (q, k) cell of one graph, and its cached results (see the module
    docstring). Changed from the GUI thread only; each change emits its event."""

    def __init__(self, graph: AttributionGraph | None = None) -> None:
        self.events = EventHub()
        self.graph = graph
        self.edge: tuple[int, int] | None = None  # (source, target)
        self.head: tuple[int, int] | None = None  # (layer, head)
        self.cell: tuple[int, int] | None = None  # (query, key)
        self._cache = _Cache()
        self._on_change = None  # called with the JSON state after each change (the window stores it)

    # ---- what is shown ----
    @property
    def split(self) -> EdgeSplitResult | None:
        return None if self.edge is None else self._cache.splits.get(_key(*self.edge))

    @property
    def pattern(self) -> PatternResult | None:
        return None if self.head is None else self._cache.patterns.get(_key(*self.head))

    @property
    def breakdown(self) -> QKResult | None:
        if self.head is None or self.cell is None:
            return None
        return self._cache.qk.get(_key(*self.head, *self.cell))

    def default_cell(self) -> tuple[int, int] | None:
        """The target's position attending to the source's."""
        if self.edge is None or self.graph is None:
            return None
        s, t = self.edge
        return node_position(self.graph, t), node_position(self.graph, s)

    # ---- changes ----
    def reset(self, graph: AttributionGraph | None, state: dict | None = None) -> None:
        self.graph = graph
        self.edge = self.head = self.cell = None
        self._cache = _Cache()
        if state and graph is not None:
            self._load(state)
        self.events.emit(HeadsReset())

    def request_edge(self, source: int, target: int) -> None:
        g = self.graph
        if g is None:
            raise ValueError("no graph")
        if not 0 <= source < g.logit_offset:
            raise ValueError(f"node {source} is not an edge source (features, errors and tokens are)")
        if g.kind_of(target) not in (NodeKind.FEATURE, NodeKind.LOGIT):
            raise ValueError(f"node {target} has no incoming edges to split (pick a feature or a logit)")
        edge = (int(source), int(target))
        if edge == self.edge:
            return
        self.edge, self.head, self.cell = edge, None, None
        self.events.emit(EdgeChanged(edge))
        self.events.emit(SplitChanged(self.split))
        self.events.emit(HeadChanged(None))
        self._changed()

    def choose_head(self, layer: int, head: int) -> None:
        h = (int(layer), int(head))
        self.head = h
        self.cell = self.default_cell()
        self.events.emit(HeadChanged(h))
        self.events.emit(PatternChanged(self.pattern))
        self.events.emit(CellChanged(self.cell))
        self.events.emit(BreakdownChanged(self.breakdown))
        self._changed()

    def choose_cell(self, q: int, k: int) -> None:
        if not 0 <= k <= q:
            raise ValueError(f"attention is causal: key {k} must be at or before query {q}")
        self.cell = (int(q), int(k))
        self.events.emit(CellChanged(self.cell))
        self.events.emit(BreakdownChanged(self.breakdown))
        self._changed()

    def put_split(self, r: EdgeSplitResult) -> None:
        self._cache.splits[_key(r.source, r.target)] = r
        if self.edge == (r.source, r.target):
            self.events.emit(SplitChanged(r))
        self._changed()

    def put_pattern(self, r: PatternResult) -> None:
        self._cache.patterns[_key(r.layer, r.head)] = r
        if self.head == (r.layer, r.head):
            self.events.emit(PatternChanged(r))
        self._changed()

    def put_breakdown(self, r: QKResult) -> None:
        self._cache.qk[_key(r.layer, r.head, r.query_pos, r.key_pos)] = r
        if self.head == (r.layer, r.head) and self.cell == (r.query_pos, r.key_pos):
            self.events.emit(BreakdownChanged(r))
        self._changed()

    def on_change(self, fn) -> None:
        """`fn(state_json)` after every change (the window keeps it in the workspace's settings)."""
        self._on_change = fn

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.to_json())

    # ---- JSON ----
    def to_json(self) -> dict:
        c = self._cache
        return {"edge": list(self.edge) if self.edge else None, "head": list(self.head) if self.head else None,
                "cell": list(self.cell) if self.cell else None,
                "splits": {k: v.to_json() for k, v in c.splits.items()},
                "patterns": {k: v.to_json() for k, v in c.patterns.items()},
                "qk": {k: v.to_json() for k, v in c.qk.items()}}

    def _load(self, d: dict) -> None:
        try:
            cache = _Cache({k: EdgeSplitResult.from_json(v) for k, v in d.get("splits", {}).items()},
                           {k: PatternResult.from_json(v) for k, v in d.get("patterns", {}).items()},
                           {k: QKResult.from_json(v) for k, v in d.get("qk", {}).items()})
            edge, head, cell = (tuple(int(v) for v in d[n]) if d.get(n) else None for n in ("edge", "head", "cell"))
        except (KeyError, TypeError, ValueError):  # a state we cannot read: start afresh
            return
        n = self.graph.n_nodes
        if edge is not None and not all(0 <= v < n for v in edge):
            return
        self._cache, self.edge, self.head, self.cell = cache, edge, head, cell


__all__ = ["HeadsState", "EdgeSplitResult", "PatternResult", "QKResult", "compute_split", "compute_pattern",
           "compute_qk", "node_position", "HeadsEvent", "HeadsReset", "EdgeChanged", "SplitChanged", "HeadChanged",
           "PatternChanged", "CellChanged", "BreakdownChanged"]
