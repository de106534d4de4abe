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
and reuses the edge scores while only the edge threshold moves (the app re-prunes live).

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
from typing import TYPE_CHECKING

import numpy as np

from .errors import CircuitStudioError
from .graph import AttributionGraph

if TYPE_CHECKING:
    import networkx as nx

_ROW_SUM_FLOOR = np.float32(1e-10)


class InfluenceDidNotConverge(CircuitStudioError, RuntimeError):
    """The influence series did not vanish: the matrix is not the adjacency of a DAG."""


@dataclass(frozen=True, eq=False)
class PruneResult:
    """What survives pruning. N = graph.n_nodes; arrays are read-only."""

    node_mask: np.ndarray  # bool [N] kept nodes (tokens and logits always)
    edge_mask: np.ndarray  # bool [N, N] kept edges, [target, source] like the adjacency matrix
    cumulative_scores: np.ndarray  # float32 [N] place on the cumulative-influence curve (JSON `influence`)
    node_influence: np.ndarray  # float32 [N] influence on the logits (logits' own weight excluded)
    node_threshold: float
    edge_threshold: float
    node_cut: float  # influence a node needed (before the clean-up)
    edge_cut: float  # edge score an edge needed

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    def kept_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(targets, sources) int64 [E] of kept edges between kept nodes, row-major (target, source)."""
        kept = np.flatnonzero(self.node_mask)
        t, s = np.nonzero(self.edge_mask[np.ix_(kept, kept)])
        return kept[t], kept[s]


# ---- the reference's building blocks ----

def normalize_matrix(matrix: np.ndarray) -> np.ndarray:
    """float32 [R, C]: |A| / max(Σ_row |A|, 1e-10) (rows are targets)."""
    out = np.abs(np.asarray(matrix, dtype=np.float32))
    _normalize_rows(out)
    return out


def _normalize_rows(abs_matrix: np.ndarray) -> None:
    sums = abs_matrix.sum(axis=1, dtype=np.float32)
    np.maximum(sums, _ROW_SUM_FLOOR, out=sums)
    abs_matrix /= sums[:, None]  # a division, not a reciprocal product: same rounding as torch


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
    """The reference's fixed-point loop, in place. Nodes are ordered features, errors, then the rest."""

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


@dataclass(frozen=True, eq=False)
class _EdgeState:
    """Edge scores for one node mask (identified by its node cut)."""

    node_cut: float
    kept: np.ndarray  # int64 [K] node indices, ascending
    scores: np.ndarray  # float32 [K, K] edge scores on the kept submatrix
    sorted_desc: np.ndarray  # float32 [nnz] non-zero scores, descending
    cumulative: np.ndarray  # float32 [nnz]


class Pruner:
    """Prunes one graph at any thresholds, computing the threshold-independent parts once.

    Construction normalises A once and runs one influence pass. `prune()` works on the kept-node
    submatrix and keeps the last edge scores, so moving only the edge threshold costs one
    comparison over that submatrix plus the clean-up. Safe to call from several threads.
    """

    def __init__(self, graph: AttributionGraph) -> None:
        self.graph = graph
        self._weights = graph.logit_weights()  # float32 [N]
        a_norm = normalize_matrix(graph.adjacency_matrix)  # float32 [N, N], dropped after __init__
        influence = compute_influence(a_norm, self._weights)
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
                scores = np.abs(self.graph.adjacency_matrix[np.ix_(kept, kept)])  # float32 [K, K]
                _normalize_rows(scores)
                weights = self._weights[kept]
                target_weight = compute_influence(scores, weights) + weights
                scores *= target_weight[:, None]
                desc, cumulative = _sorted_nonzero(scores)
                state = _EdgeState(node_cut, kept, scores, desc, cumulative)
                self._edge_state = state
            return state

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
        _check_threshold("node_threshold", node_threshold)
        _check_threshold("edge_threshold", edge_threshold)
        g = self.graph
        n = g.n_nodes
        node_mask, node_cut = self.node_mask_before_cleanup(node_threshold)
        state = self._edges_for(node_mask, node_cut)
        edge_cut = _cut(state.sorted_desc, state.cumulative, n * n, edge_threshold)
        if edge_cut > 0:
            # Edges touching dropped nodes score 0, so everything happens inside the submatrix.
            kept = state.kept
            sub_edges = state.scores >= edge_cut  # bool [K, K]
            sub_nodes = np.ones(kept.size, dtype=bool)
            _clean_up(sub_edges, sub_nodes,
                      int(np.searchsorted(kept, g.error_offset)), int(np.searchsorted(kept, g.token_offset)))
            node_mask = np.zeros(n, dtype=bool)
            node_mask[kept[sub_nodes]] = True
            edge_mask = np.zeros((n, n), dtype=bool)
            t, s = np.nonzero(sub_edges)
            edge_mask[kept[t], kept[s]] = True
        else:
            # The cut fell into the zeros: the reference keeps every entry, even between dropped nodes.
            edge_mask = np.ones((n, n), dtype=bool)
            _clean_up(edge_mask, node_mask, g.error_offset, g.token_offset)
        node_mask.flags.writeable = False
        edge_mask.flags.writeable = False
        return PruneResult(node_mask, edge_mask, self.cumulative_scores, self.node_influence,
                           float(node_threshold), float(edge_threshold), node_cut, float(edge_cut))

    def edge_scores(self, node_threshold: float = 0.8) -> np.ndarray:
        """float32 [N, N] edge scores after the node cut (dense; for diagnostics and tests)."""
        node_mask, node_cut = self.node_mask_before_cleanup(node_threshold)
        state = self._edges_for(node_mask, node_cut)
        out = np.zeros((self.graph.n_nodes,) * 2, dtype=np.float32)
        out[np.ix_(state.kept, state.kept)] = state.scores
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

    kinds, layers, positions = graph.node_kinds(), graph.node_layers(), graph.node_positions()
    kind_names = ("feature", "error", "token", "logit")
    out = nx.DiGraph()
    for node in np.flatnonzero(result.node_mask).tolist():
        kind = int(kinds[node])
        attrs = {"kind": kind_names[kind], "layer": int(layers[node]), "pos": int(positions[node]),
                 "influence": float(result.node_influence[node]),
                 "cumulative_influence": float(result.cumulative_scores[node])}
        if kind == 0:
            _, _, attrs["feature"], attrs["activation"] = graph.feature_of(node)
        elif kind == 2:
            attrs["token"] = graph.token_strings[positions[node]]
        elif kind == 3:
            k = node - graph.logit_offset
            attrs["token"] = graph.logit_tokens[k]
            attrs["probability"] = float(graph.logit_probabilities[k])
        out.add_node(node, **attrs)
    targets, sources = result.kept_edges()
    weights = graph.adjacency_matrix[targets, sources]
    out.add_weighted_edges_from(zip(sources.tolist(), targets.tolist(), weights.tolist()))
    return out
