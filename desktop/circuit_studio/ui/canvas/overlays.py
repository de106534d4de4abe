"""What the canvas draws over the graph for a selection, the pins and the hovered node.

A selection lays a translucent veil over the graph and draws the selected node's kept edges and its
neighbours (coloured by their edge weight to it) above it: its cost does not grow with the graph, and
nothing under the veil is redrawn. Each overlay touches only its own items, never the layout or the
node scatter.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import QGraphicsRectItem

from .edges import EdgeLayer, edge_bounds, edge_buckets
from .shown_graph import ShownGraph
from .style import (HOVER_PEN, KINDS, NEGATIVE_RAMP, NODE_OUTLINE, PIN_PEN, POSITIVE_RAMP, RING_PEN, cosmetic_pen,
                    glyph_sizes)

VEIL_ALPHA = 190  # how strongly a selection dims the rest of the graph (0..255)


class Overlay(pg.ScatterPlotItem):
    """A few highlighted glyphs (pins, rings, the selection's neighbours); hidden when empty, so that it
    costs nothing per frame."""

    def setData(self, *args, **kwargs) -> None:  # noqa: N802
        super().setData(*args, **kwargs)
        self.setVisible(len(self.data) > 0)


class Veil(QGraphicsRectItem):
    """A translucent white sheet between the graph and the selection's overlay: dims everything else
    at the cost of one fill, whatever the graph's size. Kept a little larger than the view."""

    def __init__(self) -> None:
        super().__init__()
        self.setBrush(QColor(255, 255, 255, VEIL_ALPHA))
        self.setPen(QPen(Qt.PenStyle.NoPen))

    def cover(self, view_range: list[list[float]]) -> None:
        (x0, x1), (y0, y1) = view_range
        w, h = x1 - x0, y1 - y0
        self.setRect(QRectF(x0 - w, y0 - h, 3 * w, 3 * h))

    def setExportMode(self, export: bool, opts=None) -> None:  # noqa: N802 - as pyqtgraph's items
        pass


class SelectionOverlay:
    """The selected node's overlay: veil, highlighted edges, neighbours coloured by edge weight, ring.
    Its items (`veil`, `edges`, `neighbours`, `ring`) are the canvas's to add, in its z order."""

    def __init__(self) -> None:
        self.veil = Veil()
        self.veil.setZValue(5)
        self.veil.setVisible(False)
        self.edges = EdgeLayer(antialias=True)
        self.edges.setZValue(6)
        self.neighbours = Overlay(pxMode=True, antialias=True)
        self.neighbours.setZValue(7)
        self.ring = Overlay(pxMode=True, antialias=True, symbol="o", brush=None, pen=cosmetic_pen(RING_PEN, 2.4))
        self.ring.setZValue(8)
        self.highlight = np.zeros(0, dtype=bool)  # over the shown edges: those of the selected node
        self._brushes = [pg.mkBrush(k.fill) for k in KINDS]
        self._node_pen = pg.mkPen(NODE_OUTLINE, width=0.8)
        self._near_brushes = {(lvl, neg): pg.mkBrush((NEGATIVE_RAMP if neg else POSITIVE_RAMP)[lvl])
                              for lvl in range(1, 4) for neg in (0, 1)}
        self._near_pen = pg.mkPen("#333333", width=1)

    def show(self, shown: ShownGraph, node: int | None, node_size: float, view_range: list[list[float]]) -> None:
        """Draw the overlay of `node`, or clear it when `node` is None or hidden."""
        if node is None or not shown.shows(node):
            self.highlight = np.zeros(shown.edge_t.size, dtype=bool)
            self.veil.setVisible(False)
            self.edges.set_edges([], QRectF())
            self.neighbours.setData([], [])
            self.ring.setData([], [])
            return
        into, out_of = shown.edge_t == node, shown.edge_s == node
        self.highlight = into | out_of
        rows = np.append(shown.index[np.where(into, shown.edge_s, shown.edge_t)[self.highlight]], shown.index[node])
        weights = shown.edge_w[self.highlight]
        strength = np.abs(weights) / max(float(np.abs(weights).max(initial=0)), 1e-30)  # relative to the strongest
        levels = 1 + np.minimum((strength * 3).astype(int), 2)  # the PRGn ramp minus its near-white end
        brushes = [self._near_brushes[(lvl, neg)] for lvl, neg in zip(levels.tolist(), (weights < 0).tolist())]
        pens = [self._near_pen] * len(brushes)
        i = int(shown.index[node])
        brushes.append(self._brushes[shown.kinds[i]])
        pens.append(self._node_pen)
        kinds = shown.kinds[rows]
        self.neighbours.setData(x=shown.xy[rows, 0], y=shown.xy[rows, 1], symbol=[KINDS[k].symbol for k in kinds],
                                size=np.maximum(glyph_sizes(kinds, node_size), 8),  # legible when zoomed out
                                brush=brushes, pen=pens)
        self.edges.set_edges(edge_buckets(shown, self.highlight, highlight=True), edge_bounds(shown.layout))
        self.veil.cover(view_range)
        self.veil.setVisible(True)
        x, y = shown.xy[i]
        self.ring.setData([x], [y], size=max(float(glyph_sizes(shown.kinds[i:i + 1], node_size)[0]), 8) + 9)

    def follow_view(self, view_range: list[list[float]]) -> None:
        """Keep the veil over the view as it pans and zooms."""
        if self.veil.isVisible():
            self.veil.cover(view_range)


class PinRings(Overlay):
    """A red ring around each pinned node that is shown."""

    def __init__(self) -> None:
        super().__init__(pxMode=True, antialias=True, brush=None, pen=cosmetic_pen(PIN_PEN, 2.2))
        self.setZValue(8)

    def show(self, shown: ShownGraph, pinned: list[int], node_size: float) -> None:
        pinned = [n for n in pinned if shown.index[n] >= 0]
        if not pinned:
            self.setData([], [])
            return
        rows = shown.index[pinned]
        kinds = shown.kinds[rows]
        self.setData(x=shown.xy[rows, 0], y=shown.xy[rows, 1], symbol=[KINDS[k].symbol for k in kinds],
                     size=glyph_sizes(kinds, node_size) + 5)


class HoverRing(Overlay):
    """A grey ring around the node under the mouse."""

    def __init__(self) -> None:
        super().__init__(pxMode=True, antialias=True, symbol="o", brush=None, pen=cosmetic_pen(HOVER_PEN, 1.5))
        self.setZValue(8)

    def show(self, shown: ShownGraph, node: int | None, node_size: float) -> None:
        if node is None:
            self.setData([], [])
            return
        i = int(shown.index[node])
        size = float(glyph_sizes(shown.kinds[i:i + 1], node_size)[0]) + 7
        self.setData([shown.xy[i, 0]], [shown.xy[i, 1]], size=size)
