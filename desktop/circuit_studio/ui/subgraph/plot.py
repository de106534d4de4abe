"""The subgraph drawn with pyqtgraph: edges green when positive and purple when negative (the
frontends' PRGn ends), wider with sqrt(|weight|); vertices with their kind's glyph (supernodes as
hexagons), the pane's selection haloed; labels elided to the room before the next vertex."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPoint, QPointF, Qt, QTimer
from PySide6.QtGui import QColor, QFont, QFontMetrics

from ...core.session.analysis import Analysis
from ...core.graph.display_text import elide, layer_name
from ...core.graph.attribution_graph import AttributionGraph
from ..canvas.style import NEGATIVE_COLOR, POSITIVE_COLOR
from ..node_connections import KIND_STYLE
from .layout import SubgraphVertex, VertexKey, edge_paths

SUPERNODE_COLOR = "#f2b134"
SELECTED_COLOR = "#1e88e5"  # the pane's selection halo
FOCUS_COLOR = "#e53935"  # ring around the analysis' selected node
PICK_RADIUS_PX = 14  # a click this close to a vertex hits it (AG picks the nearest node within 30 px)
_N_WIDTHS = 6  # edges are drawn in this many width classes per sign (a few items instead of one per edge)


class SubgraphPlot(pg.PlotWidget):
    """`draw()` shows vertices and edges; `vertex_at()` / `vertex_widget_pos()` map between vertices and
    the screen; `fit()` frames them. Hovering vertex i shows `tip(data=i)`. Items for tests:
    `vertex_scatter`, `edge_curves`, `vertex_labels`."""

    def __init__(self, base: QColor, text_color: QColor, font: QFont, tip: Callable[..., str]) -> None:
        super().__init__(background=base)
        self._text_color = text_color
        self.plot_item = self.getPlotItem()
        self.plot_item.hideButtons()
        self.plot_item.setMenuEnabled(False)
        self.plot_item.showGrid(x=False, y=True, alpha=0.15)
        self.view_box = self.plot_item.getViewBox()
        self.view_box.setDefaultPadding(0.08)
        for name in ("left", "bottom"):
            axis = self.plot_item.getAxis(name)
            axis.setTextPen(text_color)
            axis.setPen(pg.mkPen(text_color.lighter(250) if text_color.lightness() < 128 else text_color))
        self.edge_curves: list[pg.PlotCurveItem] = []
        self._halo = pg.ScatterPlotItem(pxMode=True)
        self._halo.setZValue(5)
        self.vertex_scatter = pg.ScatterPlotItem(pxMode=True, hoverable=True, tip=tip)
        self.vertex_scatter.setZValue(10)
        self.plot_item.addItem(self._halo)
        self.plot_item.addItem(self.vertex_scatter)
        self.vertex_labels: list[pg.TextItem] = []
        self._label_font = QFont(font)
        self._label_font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        self._label_bold = QFont(self._label_font)
        self._label_bold.setBold(True)
        self._vertices: list[SubgraphVertex] = []  # as last drawn
        self._selected: list[VertexKey] = []
        self._sizes: list[int] = []
        self.view_box.sigResized.connect(self._schedule_labels)
        self.view_box.sigXRangeChanged.connect(self._schedule_labels)
        self._label_timer = QTimer(self, singleShot=True, interval=0)
        self._label_timer.timeout.connect(self._update_labels)
        self._fitted_range = None  # the view range `fit` set; another one means the user zoomed or panned

    def set_axes(self, g: AttributionGraph, x: np.ndarray, cols: list[float], col_keys: list[float]) -> None:
        # one bottom tick per column: the token at that position (mean positions get "a…b")
        ticks = []
        rounded = np.round(np.asarray(cols) * 2) / 2
        for key in col_keys:
            xs = x[rounded == key]
            if float(key).is_integer():
                text = f"{g.token_strings[int(key)]}"
            else:
                text = f"{g.token_strings[int(key)]}…{g.token_strings[int(key) + 1]}"
            ticks.append((float((xs.min() + xs.max()) / 2), elide(text, 12)))
        self.plot_item.getAxis("bottom").setTicks([ticks, []])
        self.plot_item.getAxis("left").setTicks(
            [[(float(r), layer_name(r - 1, g.n_layers)) for r in range(g.n_layers + 2)], []])

    def clear_items(self) -> None:
        for item in self.edge_curves + self.vertex_labels:
            self.plot_item.removeItem(item)
        self.edge_curves, self.vertex_labels = [], []
        self.vertex_scatter.clear()
        self._halo.clear()
        self._vertices = []

    def draw(self, analysis: Analysis, vertices: list[SubgraphVertex], edges: np.ndarray,
             selected: list[VertexKey]) -> None:
        """Draw `vertices` and `edges` (float32 [G, G], target × source), the `selected` keys haloed."""
        self.clear_items()
        self._vertices, self._selected = list(vertices), list(selected)
        xy = np.array([(v.x, v.y) for v in vertices], dtype=np.float64)
        chosen = {i for i, v in enumerate(vertices) if v.key in selected}

        # edges: source -> target, one curve per (sign, width class, touches the selection)
        t_idx, s_idx = np.nonzero(edges)
        if t_idx.size:
            w = edges[t_idx, s_idx].astype(np.float64)
            rel = np.sqrt(np.abs(w) / np.abs(w).max())
            cls = np.minimum((rel * _N_WIDTHS).astype(int), _N_WIDTHS - 1)
            touches = np.array([t in chosen or s in chosen for t, s in zip(t_idx, s_idx)], dtype=bool)
            px, py, connect = edge_paths(xy[s_idx], xy[t_idx], w > 0)
            for positive, color in ((True, POSITIVE_COLOR), (False, NEGATIVE_COLOR)):
                for c in range(_N_WIDTHS):
                    for touch in (False, True):
                        m = ((w > 0) == positive) & (cls == c) & (touches == touch)
                        if not m.any():
                            continue
                        col = QColor(color)
                        alpha = 90 + 165 * (c + 1) / _N_WIDTHS
                        if chosen and not touch:
                            alpha *= 0.3  # the selection's own edges stand out
                        col.setAlpha(int(alpha))
                        item = pg.PlotCurveItem(px[m].ravel(), py[m].ravel(), connect=connect[m].ravel(),
                                                pen=pg.mkPen(col, width=0.8 + c * 1.1))
                        item.setZValue(1 + c / 10 + (2 if touch else 0))
                        self.plot_item.addItem(item)
                        self.edge_curves.append(item)

        # vertices
        g = analysis.graph
        symbols, sizes, brushes, pens = [], [], [], []
        focus = analysis.selected
        for v in vertices:
            if v.is_supernode:
                symbols.append("h")
                sizes.append(min(26, 16 + 2 * len(v.members)))
                brushes.append(pg.mkBrush(SUPERNODE_COLOR))
            else:
                _, color, symbol = KIND_STYLE[g.kind_of(v.members[0])]
                symbols.append(symbol)
                sizes.append(13)
                brushes.append(pg.mkBrush(color))
            if focus is not None and focus in v.members:
                pens.append(pg.mkPen(FOCUS_COLOR, width=2.5))
            else:
                pens.append(pg.mkPen("#333333", width=1))
        self._sizes = sizes
        self.vertex_scatter.setData(x=xy[:, 0], y=xy[:, 1], symbol=symbols, size=sizes, brush=brushes, pen=pens,
                                    data=np.arange(len(vertices)))
        if chosen:
            sel = sorted(chosen)
            halo = QColor(SELECTED_COLOR)
            halo.setAlpha(110)
            self._halo.setData(x=xy[sel, 0], y=xy[sel, 1], symbol="o", size=[sizes[i] + 14 for i in sel],
                               brush=pg.mkBrush(halo), pen=pg.mkPen(SELECTED_COLOR, width=2))

        # labels, elided later to the room they have
        for i, v in enumerate(vertices):
            item = pg.TextItem("", color=self._text_color, anchor=(0, 0.5))
            item.setFont(self._label_bold if v.is_supernode or i in chosen else self._label_font)
            item.setPos(v.x, v.y)
            item.setZValue(20)
            self.plot_item.addItem(item)
            self.vertex_labels.append(item)
        self._schedule_labels()

    def fit(self) -> None:
        """Show every vertex, with room for the labels right of the rightmost column."""
        if not self._vertices:
            return
        xs = np.array([v.x for v in self._vertices])
        ys = np.array([v.y for v in self._vertices])
        lo, hi = xs.min() - 0.6, xs.max() + 0.4
        width_px = max(self.view_box.width(), 1.0)
        label_px = min(150.0, 0.4 * width_px)  # room for the last column's labels
        hi += (hi - lo) * label_px / max(width_px - label_px, 1.0)
        self.view_box.setRange(xRange=(lo, hi), yRange=(ys.min() - 0.35, ys.max() + 0.35), padding=0)
        self._fitted_range = self.view_box.viewRange()

    def is_fitted(self) -> bool:
        """The view is still the one `fit` chose (the user has not zoomed or panned)."""
        return self._fitted_range is not None and np.allclose(self.view_box.viewRange(), self._fitted_range)

    def vertex_widget_pos(self, i: int) -> QPoint:
        """Where vertex i is drawn, in `viewport()` coordinates."""
        v = self._vertices[i]
        return self.mapFromScene(self.view_box.mapViewToScene(QPointF(v.x, v.y)))

    def vertex_at(self, scene_pos: QPointF) -> int | None:
        """The vertex nearest to a scene position, if within `PICK_RADIUS_PX`."""
        best, best_d = None, PICK_RADIUS_PX ** 2
        for i, v in enumerate(self._vertices):
            p = self.view_box.mapViewToScene(QPointF(v.x, v.y))
            d = (p.x() - scene_pos.x()) ** 2 + (p.y() - scene_pos.y()) ** 2
            if d <= best_d:
                best, best_d = i, d
        return best

    def _schedule_labels(self, *args) -> None:
        self._label_timer.start()

    def _update_labels(self) -> None:
        """Elide each label to the room before the next vertex on its right (or the view's edge)."""
        if not self.vertex_labels or len(self.vertex_labels) != len(self._vertices):
            return
        (x0, x1), _ = self.view_box.viewRange()
        px_per_unit = self.view_box.width() / max(x1 - x0, 1e-9)
        xs = np.array([v.x for v in self._vertices])
        ys = np.array([v.y for v in self._vertices])
        for i, (v, item) in enumerate(zip(self._vertices, self.vertex_labels)):
            metrics = QFontMetrics(item.textItem.font())
            start_px = self._sizes[i] / 2 + (9 if v.key in self._selected else 3)  # clear of symbol and halo
            right = (np.abs(ys - ys[i]) < 0.35) & (xs > xs[i])
            if right.any():
                j = int(np.flatnonzero(right)[np.argmin(xs[right])])
                room = (xs[j] - xs[i]) * px_per_unit - start_px - self._sizes[j] / 2 - 10
            else:
                room = max(x1 - xs[i], 0.0) * px_per_unit - start_px - 4
            count = f" ({len(v.members)})" if v.is_supernode else ""
            room_name = int(room) - metrics.horizontalAdvance(count)
            name = metrics.elidedText(v.name, Qt.TextElideMode.ElideRight, max(0, room_name))
            if room_name < metrics.horizontalAdvance("Wi…"):
                name = ""  # too tight: the tooltip has it
            item.setText(name + count if name or v.is_supernode else "")
            item.setPos(v.x + start_px / max(px_per_unit, 1e-9), v.y)
