"""What the canvas shows of an analysis: the pruned graph's kept nodes at their layout places, and the
kept edges between them with their width levels. Qt-free; made anew when the thresholds change, never
for a selection, a pin or a label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...core.session.analysis import Analysis
from ...core.graph.adjacency import Adjacency
from ...core.graph.layout import GraphLayout, layered_layout
from ...core.graph.pruning import PruneResult

SHARE_LEVELS = (0.10, 0.30)  # an edge's width level by its share of the target's shown input: < 10 %, < 30 %, more


@dataclass(frozen=True)
class ShownGraph:
    layout: GraphLayout | None
    nodes: np.ndarray  # int64 [n] shown node indices, layout order
    xy: np.ndarray  # float64 [n, 2] their places
    index: np.ndarray  # int64 [N] node -> row in `nodes`, -1 when hidden
    kinds: np.ndarray  # int8 [n] NodeKind.code of the shown nodes
    all_kinds: np.ndarray  # int8 [N] of every node
    edge_t: np.ndarray  # int64 [E] targets of the shown edges
    edge_s: np.ndarray  # int64 [E] their sources
    edge_w: np.ndarray  # float32 [E] their weights
    edge_level: np.ndarray  # int8 [E] width levels (SHARE_LEVELS)

    @classmethod
    def empty(cls) -> ShownGraph:
        none = np.zeros(0, dtype=np.int64)
        return cls(None, none, np.zeros((0, 2)), none, np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.int8),
                   none, none, np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int8))

    @classmethod
    def of(cls, analysis: Analysis) -> ShownGraph:
        """Lay out the pruned graph of `analysis` and find its shown edges."""
        g, pr = analysis.graph, analysis.pruned
        lay = layered_layout(g, pr.node_mask, pr.node_influence)
        index = np.full(g.n_nodes, -1, dtype=np.int64)
        index[lay.nodes] = np.arange(lay.nodes.size)
        all_kinds = g.node_kinds()
        t, s = kept_edges(pr, g.adjacency)
        w = g.adjacency.values_at(t, s)
        keep = (w != 0) & (index[t] >= 0) & (index[s] >= 0)
        t, s, w = t[keep], s[keep], w[keep]
        incoming = np.bincount(t, weights=np.abs(w), minlength=g.n_nodes)
        share = np.abs(w) / np.maximum(incoming[t], 1e-30)
        level = np.searchsorted(np.asarray(SHARE_LEVELS), share, side="right").astype(np.int8)
        return cls(lay, lay.nodes, lay.xy.astype(np.float64), index, all_kinds[lay.nodes], all_kinds, t, s, w, level)

    def shows(self, node: int) -> bool:
        return 0 <= node < self.index.size and self.index[node] >= 0

    def matches(self, analysis: Analysis, query: str) -> list[int]:
        """The shown nodes whose label contains `query` (lower case), most influential first; when none
        does, the first hidden one that does (so that find can say the thresholds hide it)."""
        shown = [int(n) for n in self.nodes if query in analysis.label_of(int(n)).lower()]
        shown.sort(key=lambda n: -float(analysis.pruner.node_influence[n]))
        if shown:
            return shown
        for n in range(analysis.graph.n_nodes):
            if self.index[n] < 0 and query in analysis.label_of(n).lower():
                return [n]
        return []


def kept_edges(pr: PruneResult, adjacency: Adjacency) -> tuple[np.ndarray, np.ndarray]:
    """(targets, sources) of the kept edges with a non-zero weight, between kept nodes, row-major.

    `PruneResult.kept_edges()`, except when the edge cut fell into the zeros (every entry among kept
    nodes "kept"): then only the non-zero weights among kept nodes (read without an N x N matrix).
    """
    if not pr.all_entries:
        return pr.kept_edges()
    kept = np.flatnonzero(pr.node_mask)
    t, s = np.nonzero(adjacency.submatrix(kept, kept))
    return kept[t], kept[s]
