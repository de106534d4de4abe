"""Pruning a big graph held in blocks (as attribution writes it) on its blocks, never forming N x N.

`pruning.Pruner` takes this path for graphs held in blocks with more than `DENSE_PRUNE_MAX_NODES`
nodes: `_BlockedMatrix` computes the node influence and, for a node cut, the edge scores block by
block, and `_BlockEdgeState` keeps those scores packed as sorted uint64 keys (score bits high, entry
id low), with the same float32 cumulative curve and cut as the dense path's `_EdgeState`.
"""

from __future__ import annotations

import numpy as np

from .attribution_graph import AttributionGraph
from .row_normalisation import ROW_SUM_FLOOR


class _BlockEdgeState:
    """Edge scores for one node mask from the blocks: every non-zero score packed with its entry id into
    one uint64 (score bits high, so the keys sort like the scores), ascending; the cumulative curve in
    descending order; and what it takes to turn an entry id back into (target, source)."""

    def __init__(self, node_cut: float, kept: np.ndarray, keys: np.ndarray, cumulative: np.ndarray,
                 starts: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.node_cut, self.kept, self.keys, self.cumulative = node_cut, kept, keys, cumulative
        self._starts, self._parts = starts, parts  # entry-id offset of each part; its (rows, cols) in kept coords

    @property
    def size(self) -> int:
        return int(self.keys.size)

    def _desc(self, i: int) -> np.float32:
        return np.uint32(self.keys[self.keys.size - 1 - i] >> np.uint64(32)).view(np.float32)

    def cut(self, n_total: int, fraction: float) -> np.float32:
        n = self.size
        i = int(np.searchsorted(self.cumulative, np.float32(fraction), side="left"))
        if i < n:
            return np.float32(self._desc(i))
        return np.float32(0) if n_total > n or n == 0 else np.float32(self._desc(n - 1))

    def _decode(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
        part = np.searchsorted(self._starts, ids, side="right") - 1
        t = np.empty(ids.size, dtype=np.int64)
        s = np.empty(ids.size, dtype=np.int64)
        for k in np.unique(part).tolist():
            sel = part == k
            rows, cols = self._parts[k]
            c, r = np.divmod(ids[sel] - self._starts[k], rows.size)
            t[sel], s[sel] = rows[r], cols[c]
        return t, s

    def at_least(self, cut: float) -> tuple[np.ndarray, np.ndarray]:
        threshold = np.uint64(np.float32(cut).view(np.uint32)) << np.uint64(32)
        first = int(np.searchsorted(self.keys, threshold, side="left"))
        return self._decode(self.keys[first:][::-1])

    def scores(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t, s = self._decode(self.keys)
        return t, s, (self.keys >> np.uint64(32)).astype(np.uint32).view(np.float32)


class _BlockedMatrix:
    """Influence and edge scores computed block by block (`core.graph.adjacency`), never forming N x N.

    Blocks are visited by the highest layer among their sources, deepest first: a block's targets all
    sit in higher layers, so their influence is final by then (the layered pass of
    `pruning._layered_influence`)."""

    def __init__(self, graph: AttributionGraph, order: list) -> None:
        self.graph, self.order = graph, order  # [(source layer, Block)], deepest first

    @classmethod
    def of(cls, graph: AttributionGraph) -> "_BlockedMatrix | None":
        """None when some block breaks the layer order (the dense path then applies)."""
        layers = graph.node_layers()
        order = []
        for b in graph.adjacency.blocks:
            if b.rows.size == 0 or b.cols.size == 0:
                continue
            top = int(layers[b.cols].max())
            if top >= int(layers[b.rows].min()):
                return None
            order.append((top, b))
        order.sort(key=lambda x: -x[0])
        return cls(graph, order)

    def influence(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(node influence [N], Σ over error columns of Â per row [N]), both float32."""
        g = self.graph
        sums = np.maximum(g.adjacency.abs_row_sums(), ROW_SUM_FLOOR)
        influence = np.zeros(g.n_nodes, dtype=np.float32)
        error_share = np.zeros(g.n_nodes, dtype=np.float32)
        for _, b in self.order:
            a = np.abs(b.values)
            influence[b.cols] += a @ ((weights[b.rows] + influence[b.rows]) / sums[b.rows])
            err = (b.cols >= g.error_offset) & (b.cols < g.token_offset)
            if err.any():
                error_share[b.rows] += a[err].sum(axis=0, dtype=np.float32) / sums[b.rows]
        return influence, error_share

    def edge_state(self, kept: np.ndarray, weights: np.ndarray, node_cut: float) -> _BlockEdgeState:
        g = self.graph
        index = np.full(g.n_nodes, -1, dtype=np.int64)
        index[kept] = np.arange(kept.size)
        parts = []
        sums = np.zeros(kept.size, dtype=np.float64)
        for _, b in self.order:  # |A| restricted to the kept nodes, block by block
            ri = index[b.rows]
            rs = np.flatnonzero(ri >= 0)
            ci = index[b.cols]
            cs = np.flatnonzero(ci >= 0)
            if rs.size == 0 or cs.size == 0:
                continue
            v = np.abs(b.values[np.ix_(cs, rs)])
            sums[ri[rs]] += v.sum(axis=0, dtype=np.float64)
            parts.append((ri[rs], ci[cs], v))
        sums = np.maximum(sums.astype(np.float32), ROW_SUM_FLOOR)
        w = weights[kept]
        influence = np.zeros(kept.size, dtype=np.float32)
        for rows, cols, v in parts:  # still deepest first
            v /= sums[rows][None, :]
            influence[cols] += v @ (w[rows] + influence[rows])
        starts, keys, offset = [], [], 0
        for rows, cols, v in parts:
            v *= (influence[rows] + w[rows])[None, :]
            flat = np.flatnonzero(v > 0)
            keys.append((v.ravel()[flat].view(np.uint32).astype(np.uint64) << np.uint64(32))
                        | (flat + offset).astype(np.uint64))
            starts.append(offset)
            offset += v.size
        if offset >= 1 << 32:
            raise MemoryError("too many edge scores for one pruning (more than 2**32 entries)")
        meta = [(rows, cols) for rows, cols, _ in parts]
        del parts
        keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
        keys.sort()
        cumulative = _cumulative_of_keys(keys)
        return _BlockEdgeState(node_cut, kept, keys, cumulative, np.asarray(starts, dtype=np.int64), meta)


def _cumulative_of_keys(keys: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """`pruning._cumulative` of the scores in `keys` (ascending) taken in descending order, a chunk at
    a time (the same sequential float64 sums, without a float64 array of them all)."""
    n = keys.size
    out = np.empty(n, dtype=np.float32)
    desc = keys[::-1]
    carry = np.zeros(1, dtype=np.float64)
    for i in range(0, n, chunk):
        part = (desc[i: i + chunk] >> np.uint64(32)).astype(np.uint32).view(np.float32)
        c = np.cumsum(np.concatenate([carry, part.astype(np.float64)]))[1:]
        carry[0] = c[-1]
        out[i: i + part.size] = c
    total = np.float32(carry[0])
    with np.errstate(invalid="ignore", divide="ignore"):  # all-zero scores: NaN, as in torch
        out /= total
    return out
