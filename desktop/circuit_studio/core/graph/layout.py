"""Where nodes go on the graph canvas: the layered grid analysts know from circuit-tracer's frontend.

Rows, bottom to top: token embeddings, layer 0 .. L-1 (features and errors), logits. Columns:
prompt positions, each as wide as the busiest (row, position) cell in it, so a token with many
active nodes gets room. Inside a cell nodes sit side by side, most influential first. Pure numpy;
the canvas draws what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .attribution_graph import AttributionGraph

NODE_SPACING = 1.0  # x distance between neighbours in a cell
MIN_COLUMN = 2.0  # width of a column with one node (room for the token label)
ROW_HEIGHT = 10.0


@dataclass(frozen=True)
class GraphLayout:
    """Positions of the shown nodes. `nodes` [n] are node indices; `xy` [n, 2] their positions."""

    nodes: np.ndarray  # int64 [n]
    xy: np.ndarray  # float32 [n, 2]
    column_left: np.ndarray  # float32 [P + 1] x where each position's column starts (last = right edge)
    row_y: np.ndarray  # float32 [L + 2] y of each row: embeddings, layers, logits

    def column_center(self, pos: int) -> float:
        return float((self.column_left[pos] + self.column_left[pos + 1]) / 2)


def layered_layout(graph: AttributionGraph, shown: np.ndarray, influence: np.ndarray) -> GraphLayout:
    """Lay out the nodes where `shown` (bool [N]) is true; `influence` [N] orders nodes within a cell."""
    nodes = np.flatnonzero(shown)
    rows = graph.node_layers()[nodes] + 1  # embeddings -1 -> row 0, logits L -> row L + 1
    cols = graph.node_positions()[nodes]
    P, n_rows = graph.n_pos, graph.n_layers + 2
    cell = rows * P + cols
    # order inside a cell: by cell, then influence descending, then node index (stable, deterministic)
    order = np.lexsort((nodes, -influence[nodes], cell))
    cell_sorted = cell[order]
    starts = np.searchsorted(cell_sorted, cell_sorted, side="left")
    rank = np.arange(order.size) - starts  # 0-based place inside its cell
    counts = np.bincount(cell, minlength=n_rows * P).reshape(n_rows, P)
    widths = np.maximum(counts.max(axis=0) * NODE_SPACING + NODE_SPACING, MIN_COLUMN)
    left = np.concatenate([[0.0], np.cumsum(widths)]).astype(np.float32)
    row_y = (np.arange(n_rows) * ROW_HEIGHT).astype(np.float32)

    xy = np.empty((nodes.size, 2), dtype=np.float32)
    c = cols[order]
    n_in_cell = counts[rows[order], c]
    # centre each cell's run of nodes in its column
    xy[order, 0] = left[c] + (widths[c] - (n_in_cell - 1) * NODE_SPACING) / 2 + rank * NODE_SPACING
    xy[order, 1] = row_y[rows[order]]
    return GraphLayout(nodes.astype(np.int64), xy, left, row_y)
