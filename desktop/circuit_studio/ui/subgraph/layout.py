"""Where the subgraph's vertices go, and the curves of its edges (Qt-free).

As the main graph: y = layer (embeddings at the bottom, logits on top), x = prompt position; a
supernode sits at the mean layer and mean position of its members. Only positions that hold a vertex
get a column, and a column is as wide as its busiest cell, so vertices never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VertexKey = tuple  # ("s", supernode id) or ("n", node index): survives redraws, unlike a vertex's index
EDGE_SAMPLES = 12  # points along each edge's curve


@dataclass(frozen=True)
class SubgraphVertex:
    key: VertexKey
    name: str
    members: tuple[int, ...]
    supernode_id: int | None  # None for a plain pinned node
    x: float  # layout position (view coordinates)
    y: float

    @property
    def is_supernode(self) -> bool:
        return self.supernode_id is not None


def subgraph_layout(rows: list[float], cols: list[float]) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Place vertices given each one's (mean) row and (mean) prompt position.

    Returns (x [G], y [G], column keys): y is the row itself; x puts each distinct position (rounded
    to halves) in a column as wide as its busiest cell (vertices of a row closer than half a row),
    side by side and centred. The column keys are the positions of the columns, left to right.
    """
    rows_a, cols_a = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
    g = rows_a.shape[0]
    if g == 0:
        return np.zeros(0), np.zeros(0), []
    col_keys = sorted(set(np.round(cols_a * 2) / 2))
    col_of = np.searchsorted(col_keys, np.round(cols_a * 2) / 2)
    row_bin = np.round(rows_a * 2).astype(np.int64)
    # order inside a cell: by row then original order (stable), so a redraw keeps the places
    cells: dict[tuple[int, int], list[int]] = {}
    for i in np.lexsort((np.arange(g), rows_a, col_of)):
        cells.setdefault((int(row_bin[i]), int(col_of[i])), []).append(int(i))
    widths = np.ones(len(col_keys))
    for (_, c), members in cells.items():
        widths[c] = max(widths[c], len(members))
    left = np.concatenate([[0.0], np.cumsum(widths)])
    x = np.empty(g)
    for (_, c), members in cells.items():
        start = left[c] + (widths[c] - len(members)) / 2 + 0.5
        for rank, i in enumerate(members):
            x[i] = start + rank
    return x, rows_a.copy(), [float(k) for k in col_keys]


def edge_paths(src: np.ndarray, dst: np.ndarray, positive: np.ndarray):
    """Polylines [E, S] (x, y, connect) from src [E, 2] to dst [E, 2].

    Edges that skip a row bow sideways (positive to the right, negative to the left), so that an
    edge from an embedding to a logit in the same column does not run through the vertices between.
    """
    t = np.linspace(0.0, 1.0, EDGE_SAMPLES)[None, :]  # [1, S]
    span = np.abs(dst[:, 1] - src[:, 1])
    bow = np.where(span > 1.01, 0.18 + 0.12 * np.minimum(span - 1, 3), 0.0) * np.where(positive, 1.0, -1.0)
    x = src[:, :1] + (dst[:, :1] - src[:, :1]) * t + (4 * t * (1 - t)) * bow[:, None]
    y = src[:, 1:] + (dst[:, 1:] - src[:, 1:]) * t
    connect = np.ones(x.shape, dtype=bool)
    connect[:, -1] = False  # no segment from one edge's end to the next edge's start
    return x, y, connect
