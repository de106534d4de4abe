"""Pruning an attribution graph and scoring it: circuit-tracer 0.5.0's `prune_graph` and
`compute_graph_scores` (shared/spec/attribution.md §4), in numpy.

1. node influence = Σ_{k≥1} w·Âᵏ with Â = normalize(A) and w = the logit probabilities;
2. keep the nodes covering `node_threshold` of the cumulative influence (`find_threshold`),
   plus every token and logit node;
3. re-normalise A restricted to those nodes; edge score = Â'[t, s] · (influence'[t] + w[t]);
4. keep the edges covering `edge_threshold` of the cumulative edge score;
5. clean up until stable: feature and error nodes need a kept outgoing edge, features also an
   incoming one; edges of dropped nodes go.

`Pruner` does step 1 once per graph; `prune()` redoes steps 2-5 on the kept-node submatrix only
and reuses the edge scores while only the edge threshold moves (the app re-prunes live). A big
graph held in blocks is pruned on its blocks (`blocked_pruning`), without an N x N matrix; the
row normalisation both paths share is in `row_normalisation`.

Floating point follows torch's CPU float32 so that masks agree edge for edge:
* cumulative sums accumulate in float64 and are rounded to float32 element by element (what
  torch's CPU `cumsum` does for float32);
* the threshold fraction is rounded to float32 before the search (torch's `searchsorted`
  promotes the Python float to the tensor's dtype);
* the total is the float64 sum rounded to float32, so the last cumulative value is exactly 1.
  torch's float32 `sum` depends on SIMD width and thread count and is off by an ulp about half
  the time, so at a threshold of exactly 1.0 the reference sometimes falls past the non-zero
  scores and keeps every (non-)edge; we never do (the cut is then the smallest non-zero score).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CircuitStudioError
from .attribution_graph import AttributionGraph, NodeKind
from .blocked_pruning import _BlockedMatrix
from .row_normalisation import ROW_SUM_FLOOR, normalize_rows_in_place, normalize_matrix

if TYPE_CHECKING:
    import networkx as nx


class InfluenceDidNotConverge(CircuitStudioError, RuntimeError):
    """The influence series did not vanish: the matrix is not the adjacency of a DAG."""


@dataclass(frozen=True, eq=False)
class PruneResult:
    """What survives pruning. N = graph.n_nodes; arrays are read-only.

    Kept edges are index arrays (a few thousand of N² entries); `edge_mask` builds the dense
    [N, N] mask of circuit-tracer's `prune_graph` when asked for it.
    """

    node_mask: np.ndarray  # bool [N] kept nodes (tokens and logits always)
    edge_targets: np.ndarray  # int64 [E] kept edges, row-major (target, source) order
    edge_sources: np.ndarray  # int64 [E]
    cumulative_scores: np.ndarray  # float32 [N] place on the cumulative-influence curve (JSON `influence`)
    node_influence: np.ndarray  # float32 [N] influence on the logits (logits' own weight excluded)
    node_threshold: float
    edge_threshold: float
    node_cut: float  # influence a node needed (before the clean-up)
    edge_cut: float  # edge score an edge needed
    all_entries: bool = False  # the cut fell into the zeros: the reference keeps every (non-)edge

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges(self) -> int:
        return int(self.edge_targets.size)

    @cached_property
    def edge_mask(self) -> np.ndarray:
        """bool [N, N] kept edges, [target, source] like the adjacency matrix."""
        n = self.node_mask.size
        if self.all_entries:
            mask = np.ones((n, n), dtype=bool)
            mask[~self.node_mask] = False
            mask[:, ~self.node_mask] = False
        else:
            mask = np.zeros((n, n), dtype=bool)
            mask[self.edge_targets, self.edge_sources] = True
        mask.flags.writeable = False
        return mask

    def kept_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(targets, sources) int64 [E] of kept edges between kept nodes, row-major (target, source)."""
        return self.edge_targets, self.edge_sources

    def file_arrays(self, dense: bool) -> dict[str, np.ndarray]:
        """What a graph file stores of this pruning: `node_mask` and the dense `edge_mask` [N, N] (as
        circuit-tracer's reference files), or, for a big graph (`dense=False`), the kept edges as
        `edge_targets` / `edge_sources` int64 [E] instead of the mask."""
        if dense:
            return {"node_mask": self.node_mask, "edge_mask": self.edge_mask}
        return {"node_mask": self.node_mask, "edge_targets": self.edge_targets, "edge_sources": self.edge_sources}


# ---- the reference's building blocks ----

def compute_influence(a_norm: np.ndarray, weights: np.ndarray, max_iter: int = 1000) -> np.ndarray:
    """float32 [C]: Σ_{k≥1} w·Âᵏ for Â [R, C] (R == C), by power iteration until the vector is 0.

    On a DAG the vector vanishes after at most (longest path) steps; otherwise we give up after
    `max_iter` extra products, as circuit-tracer does.
    """
    current = np.asarray(weights, dtype=np.float32) @ a_norm
    influence = current.copy()
    for _ in range(max_iter):
        if not current.any():
            return influence
        current = current @ a_norm
        influence += current
    if current.any():
        raise InfluenceDidNotConverge(
            f"Influence did not vanish after {max_iter} matrix products.",
            "The adjacency matrix must describe a DAG (targets only depend on earlier nodes).")
    return influence


def node_influence(graph: AttributionGraph) -> np.ndarray:
    """float32 [N]: influence(normalize(A), w) with w = graph.logit_weights()."""
    return compute_influence(normalize_matrix(graph.adjacency_matrix), graph.logit_weights())


def _cumulative(sorted_desc: np.ndarray) -> np.ndarray:
    """float32 [n]: cumsum / total, torch-CPU style (float64 accumulation, float32 results)."""
    partial = np.cumsum(sorted_desc, dtype=np.float64).astype(np.float32)
    total = partial[-1] if partial.size else np.float32(0)
    with np.errstate(invalid="ignore", divide="ignore"):  # all-zero scores: NaN, as in torch
        return partial / total


def _cut(sorted_desc: np.ndarray, cumulative: np.ndarray, n_total: int, fraction: float) -> np.float32:
    """The reference's threshold from the non-zero scores only (zeros add nothing to the sum).

    `n_total` counts the zeros too: an index past the non-zero scores is clamped to the reference's
    last index, which holds a zero when there are any, so every score ≥ 0 is then kept.
    """
    i = int(np.searchsorted(cumulative, np.float32(fraction), side="left"))
    if i < sorted_desc.size:
        return np.float32(sorted_desc[i])
    return np.float32(0) if n_total > sorted_desc.size or sorted_desc.size == 0 else np.float32(sorted_desc[-1])


def _sorted_nonzero(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    positive = scores[scores > 0]
    positive.sort()
    desc = positive[::-1]
    return desc, _cumulative(desc)


def find_threshold(scores: np.ndarray, fraction: float) -> np.float32:
    """Smallest score among the top scores holding `fraction` of the total (circuit-tracer's rule):
    sort descending, c = cumsum / sum, i = searchsorted(c, fraction, 'left') clamped to the last
    index, threshold = sorted[i]. `scores` (any shape) must be non-negative.
    """
    flat = np.asarray(scores, dtype=np.float32).ravel()
    if flat.size == 0:
        raise ValueError("find_threshold needs at least one score.")
    if not flat.min() >= 0:
        raise ValueError("find_threshold expects non-negative scores (influences or edge scores).")
    desc, cumulative = _sorted_nonzero(flat)
    return _cut(desc, cumulative, flat.size, fraction)


def _check_threshold(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be between 0.0 and 1.0 (a fraction of the total influence), got {value!r}.")


def _clean_up(edge_mask: np.ndarray, node_mask: np.ndarray, n_feature: int, n_feature_or_error: int) -> None:
    """The reference's fixed-point loop on a dense mask, in place (only for the all-entries case).
    Nodes are ordered features, errors, then the rest."""

    def require_edges() -> None:
        node_mask[:n_feature_or_error] &= edge_mask[:, :n_feature_or_error].any(axis=0)  # outgoing
        node_mask[:n_feature] &= edge_mask[:n_feature].any(axis=1)  # incoming

    old = node_mask.copy()
    require_edges()
    # Edges of dropped nodes are only cleared once something changed, exactly like the reference.
    while not np.array_equal(node_mask, old):
        old[:] = node_mask
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        require_edges()


def _clean_up_edges(t: np.ndarray, s: np.ndarray, n: int, n_feature: int,
                    n_feature_or_error: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same fixed point on an edge list over n nodes: (node_mask [n], t, s) of what stays."""
    node_mask = np.ones(n, dtype=bool)

    def require_edges() -> None:
        node_mask[:n_feature_or_error] &= np.bincount(s, minlength=n)[:n_feature_or_error] > 0
        node_mask[:n_feature] &= np.bincount(t, minlength=n)[:n_feature] > 0

    old = node_mask.copy()
    require_edges()
    while not np.array_equal(node_mask, old):
        old[:] = node_mask
        keep = node_mask[t] & node_mask[s]
        t, s = t[keep], s[keep]
        require_edges()
    return node_mask, t, s


def _layer_blocks(graph: AttributionGraph) -> list[tuple[int, int, int, int]] | None:
    """Column blocks [(f0, f1, e0, e1)] per layer, deepest first, when every edge goes from a lower
    layer to a higher one (true of attribution graphs: MLPs are cut, so a source never feeds a
    target in its own layer or below). None when the matrix breaks that order (hand-made graphs).

    Nodes of one layer are two contiguous runs: its features and its errors (the graph's order)."""
    layers = graph.node_layers()
    feats = layers[: graph.error_offset]
    A = graph.adjacency_matrix
    blocks = []
    for layer in range(graph.n_layers - 1, -1, -1):
        f0, f1 = np.searchsorted(feats, [layer, layer + 1])
        e0 = graph.error_offset + layer * graph.n_pos
        blocks.append((int(f0), int(f1), e0, e0 + graph.n_pos))
        # rows that may be non-zero and must not feed this layer: features of this layer and below
        if f1 > f0 and (A[:f1, f0:f1].any() or A[:f1, e0:e0 + graph.n_pos].any()):
            return None
    return blocks


def _layered_influence(a_norm: np.ndarray, weights: np.ndarray, blocks, rest: slice) -> np.ndarray:
    """Σ_{k≥1} w·Âᵏ in one pass over Â, deepest layer first: a node's influence is final once every
    node it feeds (all in higher layers) has its own. `rest` = columns below every layer (tokens)."""
    mass = np.asarray(weights, dtype=np.float32).copy()  # w + influence, filled top down
    influence = np.zeros_like(mass)
    for f0, f1, e0, e1 in blocks:
        for c0, c1 in ((f0, f1), (e0, e1)):
            if c1 > c0:
                influence[c0:c1] = mass @ a_norm[:, c0:c1]
                mass[c0:c1] += influence[c0:c1]
    influence[rest] = mass @ a_norm[:, rest]
    return influence


@dataclass(frozen=True, eq=False)
class _EdgeState:
    """Edge scores for one node mask (identified by its node cut), as a sparse list sorted by score."""

    node_cut: float
    kept: np.ndarray  # int64 [K] node indices, ascending
    targets: np.ndarray  # int64 [nnz] submatrix rows of the non-zero scores, score descending
    sources: np.ndarray  # int64 [nnz]
    sorted_desc: np.ndarray  # float32 [nnz] non-zero scores, descending
    cumulative: np.ndarray  # float32 [nnz]

    def cut(self, n_total: int, fraction: float) -> np.float32:
        return _cut(self.sorted_desc, self.cumulative, n_total, fraction)

    def at_least(self, cut: float) -> tuple[np.ndarray, np.ndarray]:
        """(targets, sources) in submatrix coordinates of the scores >= cut (ties included)."""
        k = int(np.searchsorted(-self.sorted_desc, -cut, side="right"))
        return self.targets[:k], self.sources[:k]

    def scores(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.targets, self.sources, self.sorted_desc


SPARSE_FRACTION = 0.02  # below this share of non-zero entries, edge scores are computed on a list
# Graphs held in blocks with more nodes than this are pruned on their blocks (`blocked_pruning`); smaller
# ones, and graphs held dense, on the dense matrix (numbers bit for bit as before).
DENSE_PRUNE_MAX_NODES = 4096


class Pruner:
    """Prunes one graph at any thresholds, computing the threshold-independent parts once.

    Construction normalises A once and runs one influence pass. The edge scores of a node cut are
    kept as a sorted list of the non-zero scores, so moving the edge threshold is a prefix of that
    list plus a clean-up on the edge list. Safe to call from several threads.
    """

    def __init__(self, graph: AttributionGraph) -> None:
        self.graph = graph
        self._weights = graph.logit_weights()  # float32 [N]
        self._entries = None
        # A big graph held in blocks (as attribution writes it) is pruned on its blocks: no N x N matrix.
        self._blocked = (_BlockedMatrix.of(graph) if not graph.adjacency.is_dense
                         and graph.n_nodes > DENSE_PRUNE_MAX_NODES else None)
        if self._blocked is not None:
            self._blocks = None
            influence, self._error_share = self._blocked.influence(self._weights)
        else:
            self._blocks = _layer_blocks(graph)
            a_norm = normalize_matrix(graph.adjacency_matrix)  # float32 [N, N], dropped after __init__
            influence = self._influence(a_norm, self._weights, graph)
            # Σ over error columns of Â, per row: completeness needs it and it is all it needs of Â.
            self._error_share = a_norm[:, graph.error_offset:graph.token_offset].sum(axis=1, dtype=np.float32)
            del a_norm
        order = np.argsort(-influence, kind="stable")  # ties in index order, as torch's CPU sort leaves them
        cumulative = np.empty_like(influence)
        cumulative[order] = _cumulative(influence[order])
        self._node_desc, self._node_cum = _sorted_nonzero(influence)
        influence.flags.writeable = False
        cumulative.flags.writeable = False
        self.node_influence = influence  # float32 [N]
        self.cumulative_scores = cumulative  # float32 [N]
        self._edge_state: _EdgeState | None = None
        self._lock = threading.Lock()
        # A sparse graph keeps its non-zero entries as a list: the edge scores of a node cut then cost
        # O(non-zeros) instead of O(K²). Real attribution graphs are dense-ish and take the matrix path.
        if self._blocks is not None:
            # counting first: listing the non-zeros of a dense 10k-node matrix costs a third of a second
            if np.count_nonzero(graph.adjacency_matrix) < SPARSE_FRACTION * graph.n_nodes ** 2:
                rows, cols = np.nonzero(graph.adjacency_matrix)
                self._entries = (rows, cols, np.abs(graph.adjacency_matrix[rows, cols]))

    def _influence(self, a_norm: np.ndarray, weights: np.ndarray, graph: AttributionGraph,
                   kept: np.ndarray | None = None) -> np.ndarray:
        """Node influence on the full matrix or on the submatrix of `kept` nodes."""
        if self._blocks is None:
            return compute_influence(a_norm, weights)
        if kept is None:
            return _layered_influence(a_norm, weights, self._blocks, slice(graph.token_offset, graph.logit_offset))
        # the same blocks in submatrix coordinates (kept is ascending, so runs stay runs)
        blocks = [tuple(int(x) for x in np.searchsorted(kept, [f0, f1, e0, e1])) for f0, f1, e0, e1 in self._blocks]
        t0, t1 = np.searchsorted(kept, [graph.token_offset, graph.logit_offset])
        return _layered_influence(a_norm, weights, blocks, slice(int(t0), int(t1)))

    def node_mask_before_cleanup(self, node_threshold: float) -> tuple[np.ndarray, float]:
        """(bool [N], cut): nodes with influence ≥ cut, plus all tokens and logits (steps 2-3)."""
        _check_threshold("node_threshold", node_threshold)
        cut = _cut(self._node_desc, self._node_cum, self.node_influence.size, node_threshold)
        mask = self.node_influence >= cut
        mask[self.graph.token_offset:] = True
        return mask, float(cut)

    def _edges_for(self, node_mask: np.ndarray, node_cut: float) -> _EdgeState:
        with self._lock:
            state = self._edge_state
            if state is None or state.node_cut != node_cut:
                kept = np.flatnonzero(node_mask)
                if self._blocked is not None:
                    state = self._blocked.edge_state(kept, self._weights, node_cut)
                    self._edge_state = state
                    return state
                if self._entries is not None:
                    t, s, values = self._sparse_scores(kept)
                else:
                    t, s, values = self._dense_scores(kept)
                order = np.argsort(-values, kind="stable")
                desc = values[order]
                state = _EdgeState(node_cut, kept, t[order], s[order], desc, _cumulative(desc))
                self._edge_state = state
            return state

    def _dense_scores(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(targets, sources, scores) of the non-zero edge scores on the kept submatrix, row-major."""
        scores = np.abs(self.graph.adjacency_matrix[np.ix_(kept, kept)])  # float32 [K, K]
        normalize_rows_in_place(scores)
        weights = self._weights[kept]
        scores *= (self._influence(scores, weights, self.graph, kept) + weights)[:, None]
        flat = np.flatnonzero(scores > 0)
        t, s = np.divmod(flat, kept.size)
        return t, s, scores.ravel()[flat]

    def _sparse_scores(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `_dense_scores`, from the list of non-zero entries (same arithmetic, entry by entry)."""
        rows, cols, values = self._entries
        index = np.full(self.graph.n_nodes, -1, dtype=np.int64)
        index[kept] = np.arange(kept.size)
        inside = (index[rows] >= 0) & (index[cols] >= 0)
        t, s, v = index[rows[inside]], index[cols[inside]], values[inside]
        sums = np.zeros(kept.size, dtype=np.float32)
        np.add.at(sums, t, v)
        np.maximum(sums, ROW_SUM_FLOOR, out=sums)
        v = v / sums[t]
        weights = self._weights[kept]
        mass = weights.astype(np.float32).copy()
        influence = np.zeros(kept.size, dtype=np.float32)
        # deepest layer first, as `_layered_influence`: a column's influence is final once its
        # targets (all in higher layers) have theirs
        layer_of = self.graph.node_layers()[kept]
        for layer in sorted(np.unique(layer_of).tolist(), reverse=True):
            cols_here = layer_of == layer
            pick = cols_here[s]
            add = np.bincount(s[pick], weights=(mass[t[pick]] * v[pick]).astype(np.float64),
                              minlength=kept.size).astype(np.float32)
            influence[cols_here] = add[cols_here]
            mass[cols_here] += influence[cols_here]
        v = (v * (influence + weights)[t]).astype(np.float32)
        positive = v > 0
        return t[positive], s[positive], v[positive]

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
        _check_threshold("node_threshold", node_threshold)
        _check_threshold("edge_threshold", edge_threshold)
        g = self.graph
        n = g.n_nodes
        node_mask, node_cut = self.node_mask_before_cleanup(node_threshold)
        state = self._edges_for(node_mask, node_cut)
        edge_cut = state.cut(n * n, edge_threshold)
        kept = state.kept
        if edge_cut > 0:
            # Edges touching dropped nodes score 0, so everything happens inside the submatrix;
            # the kept edges are the prefix of the sorted list down to the cut (ties included).
            t, s = state.at_least(edge_cut)
            sub_nodes, t, s = _clean_up_edges(t, s, kept.size,
                                              int(np.searchsorted(kept, g.error_offset)),
                                              int(np.searchsorted(kept, g.token_offset)))
            node_mask = np.zeros(n, dtype=bool)
            node_mask[kept[sub_nodes]] = True
            order = np.lexsort((s, t))
            targets, sources = kept[t[order]], kept[s[order]]
            all_entries = False
        else:
            # The cut fell into the zeros: the reference keeps every entry, even between dropped nodes.
            edge_mask = np.ones((n, n), dtype=bool)
            _clean_up(edge_mask, node_mask, g.error_offset, g.token_offset)
            sub = edge_mask[np.ix_(node_mask, node_mask)]  # zero-weight entries too, as the reference lists them
            idx = np.flatnonzero(node_mask)
            t, s = np.nonzero(sub)
            targets, sources = idx[t], idx[s]
            all_entries = True
        for a in (node_mask, targets, sources):
            a.flags.writeable = False
        return PruneResult(node_mask, targets.astype(np.int64), sources.astype(np.int64), self.cumulative_scores,
                           self.node_influence, float(node_threshold), float(edge_threshold), node_cut,
                           float(edge_cut), all_entries)

    def edge_scores(self, node_threshold: float = 0.8) -> np.ndarray:
        """float32 [N, N] edge scores after the node cut (dense; for diagnostics and tests)."""
        node_mask, node_cut = self.node_mask_before_cleanup(node_threshold)
        state = self._edges_for(node_mask, node_cut)
        out = np.zeros((self.graph.n_nodes,) * 2, dtype=np.float32)
        t, s, v = state.scores()
        out[state.kept[t], state.kept[s]] = v
        return out

    def graph_scores(self) -> tuple[float, float]:
        """(replacement, completeness) of the unpruned graph, as `compute_graph_scores` (§4)."""
        g, infl = self.graph, self.node_influence
        token = infl[g.token_offset:g.logit_offset].sum(dtype=np.float32)
        error = infl[g.error_offset:g.token_offset].sum(dtype=np.float32)
        output = infl + self._weights
        with np.errstate(invalid="ignore", divide="ignore"):
            replacement = token / (token + error)
            completeness = ((np.float32(1) - self._error_share) * output).sum(dtype=np.float32) / output.sum(
                dtype=np.float32)
        return float(replacement), float(completeness)


def prune_graph(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """One-off pruning; build a `Pruner` instead to prune the same graph at several thresholds."""
    _check_threshold("node_threshold", node_threshold)
    _check_threshold("edge_threshold", edge_threshold)
    return Pruner(graph).prune(node_threshold, edge_threshold)


def graph_scores(graph: AttributionGraph) -> tuple[float, float]:
    """(replacement, completeness) as circuit-tracer's `compute_graph_scores`."""
    return Pruner(graph).graph_scores()


def to_networkx(graph: AttributionGraph, result: PruneResult) -> nx.DiGraph:
    """Kept nodes (keyed by node index; frontend ids can collide) and kept edges source → target."""
    import networkx as nx

    layers, positions = graph.node_layers(), graph.node_positions()
    out = nx.DiGraph()
    for node in np.flatnonzero(result.node_mask).tolist():
        kind = graph.kind_of(node)
        attrs = {"kind": kind.value, "layer": int(layers[node]), "pos": int(positions[node]),
                 "influence": float(result.node_influence[node]),
                 "cumulative_influence": float(result.cumulative_scores[node])}
        if kind is NodeKind.FEATURE:
            _, _, attrs["feature"], attrs["activation"] = graph.feature_of(node)
        elif kind is NodeKind.TOKEN:
            attrs["token"] = graph.token_strings[positions[node]]
        elif kind is NodeKind.LOGIT:
            k = node - graph.logit_offset
            attrs["token"] = graph.logit_tokens[k]
            attrs["probability"] = float(graph.logit_probabilities[k])
        out.add_node(node, **attrs)
    targets, sources = result.kept_edges()
    weights = graph.adjacency.values_at(targets, sources)
    out.add_weighted_edges_from(zip(sources.tolist(), targets.tolist(), weights.tolist()))
    return out
