"""The canvas widget: the plot, its toolbar, and the wiring from the controller's signals to the parts.

Model/view: the canvas reads `controller.analysis`, calls its methods and redraws on the controller's
signals. New thresholds lay the graph out anew (`ShownGraph`); selection, pin and label changes touch
overlays only, never the layout or the node scatter.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, QPoint, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QLabel, QStackedWidget, QToolTip, QVBoxLayout, QWidget

from ...core.session.analysis import Analysis, Aspect
from ...core.graph.display_text import layer_name
from ...core.graph.layout import ROW_HEIGHT
from ..controller import Controller
from .activation_rings import ActivationRings
from .axes import LayerAxis, TokenAxis
from .captions import LogitLabels, NodeCaptions, node_tooltip_html
from .edges import VIEW_SETTLE_MS, EdgeLayer, edge_bounds, edge_buckets, grid_lines
from .overlays import HoverRing, PinRings, SelectionOverlay
from .shown_graph import ShownGraph
from .style import BACKGROUND, KINDS, NODE_OUTLINE, TEXT, glyph_sizes
from .toolbar import CanvasToolbar

PICK_RADIUS_PX = 30  # the reference's nearest-point picking radius
HOVER_INTERVAL_MS = 30  # hover is resolved at most this often


class GraphCanvas(QWidget):
    """The attribution graph of `controller.analysis`, drawn and driven as described in `ui.canvas`.

    For tests and scripts: `node_screen_pos(node)` (a point in `viewport()` coordinates),
    `node_at(point)`, `visible_nodes()`, `highlighted_edges()`, `shown_labels()`, `edges_ready()`,
    `fit()`, `render_svg(path)`, `set_activation_changes(changes)`, `activation_rings()`, `toolbar`
    (its widgets `node_slider`, `edge_slider`, `find_box`, `fit_button`, `hidden_label`, `edges_label`,
    `message_label`, `scores_label`, `legend_label` are the canvas's too) and `ring_legend`.
    """

    node_clicked = Signal(int)
    node_hovered = Signal(object)  # node index or None
    node_context_requested = Signal(int, QPoint)  # right-click on a node: the node, the global position

    def __init__(self, controller: Controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._analysis: Analysis | None = None
        self._shown = ShownGraph.empty()
        self._node_size = 10.0
        self._auto_fit = True
        self._hover_pos: QPointF | None = None
        self.hovered: int | None = None
        self._find = ("", [], -1)  # query, matches, place
        self._brushes = [pg.mkBrush(k.fill) for k in KINDS]
        self._node_pen = pg.mkPen(NODE_OUTLINE, width=0.8)
        self._changes: dict[int, float] | None = None  # node -> relative activation change (intervention)

        tb = self.toolbar = CanvasToolbar(self, lambda: self._analysis)
        self.node_slider, self.edge_slider, self.find_box, self.fit_button = (tb.node_slider, tb.edge_slider,
                                                                              tb.find_box, tb.fit_button)
        self.hidden_label, self.edges_label, self.message_label = tb.hidden_label, tb.edges_label, tb.message_label
        self.scores_label, self.legend_label = tb.scores_label, tb.legend_label
        self.find_box.returnPressed.connect(self._find_next)
        self.fit_button.clicked.connect(self.fit)
        self._build_plot()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(3)
        layout.addLayout(tb.bar)
        layout.addLayout(tb.info_row)
        self._stack = QStackedWidget()
        self._placeholder = QLabel("No graph yet: trace a prompt or open a graph file.")
        self._placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._placeholder.setStyleSheet(f"color: #777; background: {BACKGROUND};")
        self._stack.addWidget(self._placeholder)
        self._stack.addWidget(self._plot)
        layout.addWidget(self._stack, 1)

        self._hover_timer = QTimer(self, singleShot=True, interval=HOVER_INTERVAL_MS)
        self._hover_timer.timeout.connect(self._resolve_hover)
        self._view_timer = QTimer(self, singleShot=True, interval=VIEW_SETTLE_MS)
        self._view_timer.timeout.connect(self._update_node_size)

        controller.analysis_changed.connect(self._on_analysis_changed)
        controller.aspect_changed.connect(self._on_aspect_changed)
        controller.intervention_changed.connect(self.set_activation_changes)
        self._on_analysis_changed()
        if controller.analysis is not None and controller.intervention_changes:
            self.set_activation_changes(controller.intervention_changes)

    def _build_plot(self) -> None:
        self._token_axis, self._layer_axis = TokenAxis(), LayerAxis()
        for axis in (self._token_axis, self._layer_axis):
            axis.setPen(pg.mkPen("#9a9a9a"))
            axis.setTextPen(pg.mkPen(TEXT))
        plot = pg.PlotWidget(background=BACKGROUND, axisItems={"bottom": self._token_axis, "left": self._layer_axis})
        plot.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        item = plot.getPlotItem()
        item.hideButtons()
        item.setMenuEnabled(False)
        self._vb = vb = item.getViewBox()
        vb.setMenuEnabled(False)
        vb.disableAutoRange()
        vb.setDefaultPadding(0.0)

        self._grid = EdgeLayer(antialias=False)  # column separators and row lines
        self._grid.setZValue(-20)
        self._edges = EdgeLayer(antialias=True)
        self._edges.setZValue(-10)
        self._scatter = pg.ScatterPlotItem(pxMode=True, antialias=True)
        self._selection = SelectionOverlay()
        self._pins = PinRings()
        self._hover_ring = HoverRing()
        self._change_rings = ActivationRings(plot, self._layer_axis.width() + 8)
        self.ring_legend = self._change_rings.legend
        # z order: grid, edges, nodes | veil | the selection's edges and nodes, pins, rings, captions; items
        # of equal z (pins, the selection's ring, the hover ring) stack in the order they are added
        sel = self._selection
        for it in (self._grid, self._edges, self._scatter, sel.veil, sel.edges, sel.neighbours, self._pins,
                   sel.ring, self._hover_ring, self._change_rings):
            vb.addItem(it)
        self._captions = NodeCaptions(vb)
        self._logit_labels = LogitLabels(vb)

        scene = plot.scene()
        scene.sigMouseMoved.connect(self._mouse_moved)
        scene.sigMouseClicked.connect(self._mouse_clicked)
        vb.sigRangeChanged.connect(self._view_changed)
        vb.sigRangeChangedManually.connect(self._view_moved_by_user)
        vb.sigResized.connect(self._view_resized)
        plot.installEventFilter(self)
        plot.viewport().installEventFilter(self)
        self._plot = plot

    # ---------------------------------------------------------------- public API
    @property
    def plot(self) -> pg.PlotWidget:
        return self._plot

    def viewport(self) -> QWidget:
        """The widget that receives the canvas's mouse events (what tests click on)."""
        return self._plot.viewport()

    def visible_nodes(self) -> np.ndarray:
        """int64: the node indices on the canvas (the pruned graph's kept nodes), ascending."""
        return np.sort(self._shown.nodes)

    def visible_edges(self) -> int:
        return int(self._shown.edge_t.size)

    def highlighted_edges(self) -> int:
        """How many edges are drawn highlighted (the selected node's kept input and output edges)."""
        return int(self._selection.highlight.sum())

    def shown_labels(self) -> dict[int, str]:
        """The node captions on the canvas (selected and pinned nodes), by node index."""
        return {n: item.toPlainText().strip() for n, item in self._captions.items.items()}

    def edges_ready(self) -> bool:
        return self._edges.ready()

    def apply_sliders(self) -> None:
        """Re-prune now at the sliders' values (what the debounce timer and a slider release do)."""
        self.toolbar.apply()

    def set_activation_changes(self, changes: dict[int, float] | None) -> None:
        """Ring the feature nodes whose activation an intervention changed: `changes` maps node ->
        relative change (after − before) / |before| (−1 = turned off); None clears the rings."""
        self._changes = dict(changes) if changes else None
        self._apply_changes()

    def activation_rings(self) -> dict[int, float]:
        """The ringed nodes (shown feature nodes changed by more than CHANGE_TOLERANCE) -> their change."""
        return dict(self._change_rings.rings)

    def node_screen_pos(self, node: int) -> QPoint | None:
        """Where `node` is drawn, in `viewport()` coordinates; None when it is hidden by the thresholds."""
        if self._analysis is None or not self._shown.shows(node):
            return None
        x, y = self._shown.xy[self._shown.index[node]]
        return self._plot.mapFromScene(self._vb.mapViewToScene(QPointF(float(x), float(y))))

    def node_at(self, point: QPoint | QPointF) -> int | None:
        """The node within PICK_RADIUS_PX of `point` (viewport coordinates), nearest first."""
        return self._pick(self._plot.mapToScene(QPoint(int(point.x()), int(point.y()))))

    def tooltip_html(self, node: int) -> str:
        """What hovering `node` shows (`captions.node_tooltip_html`)."""
        return node_tooltip_html(self._analysis, node, self._changes)

    def fit(self) -> None:
        """Show the whole graph, with room above the logits for their labels."""
        lay = self._shown.layout
        if lay is None:
            return
        x0, x1 = float(lay.column_left[0]), float(lay.column_left[-1])
        y0, y1 = float(lay.row_y[0]) - 0.6 * ROW_HEIGHT, float(lay.row_y[-1]) + 0.5 * ROW_HEIGHT
        w, h = self._vb.width(), self._vb.height()
        left_px, right_px, top_px = 8.0, 80.0, 70.0  # room for glyphs at the edges and the logit labels

        def grow(lo: float, hi: float, room: float, before: float, after: float) -> tuple[float, float]:
            if room <= 2 * (before + after):
                return lo - 0.02 * (hi - lo), hi + 0.1 * (hi - lo)
            unit = (hi - lo) / (room - before - after)  # data per pixel once the margins are added
            return lo - before * unit, hi + after * unit

        x0, x1 = grow(x0, x1, w, left_px, right_px)
        y0, y1 = grow(y0, y1, h, 0.0, top_px)
        self._vb.setRange(xRange=(x0, x1), yRange=(y0, y1), padding=0.0)
        self._auto_fit = True
        self._update_node_size()

    def render_svg(self, path: str, title: str = "Attribution graph") -> None:
        """Write the plot (nodes, edges, axes, labels) as vector SVG, whole or not at all (OutputError)."""
        from PySide6.QtCore import QBuffer, QIODevice
        from PySide6.QtSvg import QSvgGenerator

        from ...core.atomic_write import write_bytes_atomic

        view = self._plot
        rect = view.viewport().rect()
        buffer = QBuffer()  # in memory first: QSvgGenerator writing a file reports no failure (a full disk cuts it)
        buffer.open(QIODevice.OpenModeFlag.WriteOnly)
        gen = QSvgGenerator()
        gen.setOutputDevice(buffer)
        gen.setSize(rect.size())
        gen.setViewBox(rect)
        gen.setResolution(round(view.logicalDpiX()))  # so that text and lines keep their on-screen proportions
        gen.setTitle(title)
        gen.setDescription("Circuit Studio graph canvas")
        exporting = [it for it in view.scene().items() if hasattr(it, "setExportMode")]
        for it in exporting:
            it.setExportMode(True, {"antialias": True, "background": QColor(BACKGROUND), "painter": None})
        self._edges.set_vector_export(True)
        painter = QPainter(gen)
        try:
            painter.fillRect(QRectF(rect), QColor(BACKGROUND))
            view.render(painter, QRectF(rect), rect)
        finally:
            painter.end()
            self._edges.set_vector_export(False)
            for it in exporting:
                it.setExportMode(False)
        write_bytes_atomic(path, portable_svg(bytes(buffer.data()).decode("utf-8")).encode("utf-8"))

    def render_png(self, scale: float = 1.0) -> bytes:
        """The plot alone (nodes, edges, axes, labels; not the toolbar, sliders, legend or search box) as PNG
        bytes, `scale` times its on-screen size in pixels (edges drawn as vectors, so they stay sharp)."""
        from PySide6.QtCore import QBuffer, QIODevice
        from PySide6.QtGui import QImage

        from ...core.errors import CircuitStudioError

        if not 0.1 <= scale <= 16:
            raise CircuitStudioError(f"PNG scale {scale} is outside 0.1 .. 16.", "Choose a scale such as 1, 2 or 4.")
        view = self._plot
        rect = view.viewport().rect()
        image = QImage(max(1, round(rect.width() * scale)), max(1, round(rect.height() * scale)),
                       QImage.Format.Format_ARGB32)
        image.fill(QColor(BACKGROUND))
        exporting = [it for it in view.scene().items() if hasattr(it, "setExportMode")]
        for it in exporting:
            it.setExportMode(True, {"antialias": True, "background": QColor(BACKGROUND), "painter": None})
        self._edges.set_vector_export(True)
        painter = QPainter(image)
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            painter.setRenderHint(QPainter.RenderHint.TextAntialiasing, True)
            view.render(painter, QRectF(image.rect()), rect)
        finally:
            painter.end()
            self._edges.set_vector_export(False)
            for it in exporting:
                it.setExportMode(False)
        buffer = QBuffer()
        buffer.open(QIODevice.OpenModeFlag.WriteOnly)
        if not image.save(buffer, "PNG"):
            raise CircuitStudioError("Could not encode the canvas as PNG.", "Try the SVG export instead.")
        return bytes(buffer.data())

    def shutdown(self) -> None:
        """Stop the edge renderers; called on close."""
        self._edges.shutdown()
        self._selection.edges.shutdown()

    # ---------------------------------------------------------------- model -> view
    def _on_analysis_changed(self) -> None:
        self._edges.cancel_render()
        a = self._analysis = self.controller.analysis
        self.hovered = None
        self._find = ("", [], -1)
        self.message_label.clear()
        self.toolbar.set_enabled(a is not None)
        self._changes = None  # changes name nodes of the previous graph
        if a is None:
            self._clear()
            self._stack.setCurrentWidget(self._placeholder)
            return
        self._stack.setCurrentWidget(self._plot)
        r, c = a.scores
        self.scores_label.setText(f"<b>Replacement {r:.2f} · Completeness {c:.2f}</b>")
        self.toolbar.sync(a)
        self._rebuild()
        self.fit()

    def _on_aspect_changed(self, aspect: str) -> None:
        if self._analysis is None or self._analysis is not self.controller.analysis:
            return
        if aspect == Aspect.PRUNING.value:
            self.toolbar.sync(self._analysis)
            self._rebuild()
            if self._auto_fit:
                self.fit()
        elif aspect == Aspect.SELECTION.value:
            self._apply_selection()
            self._captions.show(self._analysis, self._shown)
        elif aspect == Aspect.PINS.value:
            self._pins.show(self._shown, self._analysis.pinned, self._node_size)
            self._captions.show(self._analysis, self._shown)
        elif aspect == Aspect.LABELS.value:
            self._captions.show(self._analysis, self._shown)
            self._resolve_hover()

    def _clear(self) -> None:
        shown = self._shown = ShownGraph.empty()
        self._edges.set_edges([], QRectF())
        self._scatter.setData([], [])
        self._selection.show(shown, None, self._node_size, self._vb.viewRange())
        self._pins.setData([], [])
        self._hover_ring.setData([], [])
        self._apply_changes()
        self._grid.set_edges([], QRectF())
        self._token_axis.set_columns(None, [])
        self._layer_axis.set_rows(None, [])
        self._logit_labels.show(None, shown)
        self._captions.show(None, shown)
        for label in (self.hidden_label, self.edges_label, self.scores_label):
            label.clear()
        QToolTip.hideText()

    def _rebuild(self) -> None:
        """Lay out and draw the pruned graph (a new analysis or new thresholds)."""
        a = self._analysis
        g = a.graph
        shown = self._shown = ShownGraph.of(a)
        lay = shown.layout
        self._edges.set_edges(edge_buckets(shown, np.ones(shown.edge_t.size, dtype=bool), highlight=False),
                              edge_bounds(lay))
        self._scatter.setData(x=shown.xy[:, 0], y=shown.xy[:, 1], symbol=[KINDS[k].symbol for k in shown.kinds],
                              size=self._sizes(), brush=[self._brushes[k] for k in shown.kinds],
                              pen=self._node_pen)
        self._grid.set_edges(*grid_lines(lay))
        self._token_axis.set_columns(lay.column_left, list(g.token_strings))
        self._layer_axis.set_rows(lay.row_y, [layer_name(i - 1, g.n_layers) for i in range(g.n_layers + 2)])
        self._logit_labels.show(a, shown)
        self.toolbar.show_counts(a.hidden_counts(), int(shown.edge_t.size))
        self._pins.show(shown, a.pinned, self._node_size)
        self._apply_selection()
        self._apply_changes()
        self._captions.show(a, shown)
        self.hovered = None
        self._hover_ring.setData([], [])

    def _sizes(self) -> np.ndarray:
        return glyph_sizes(self._shown.kinds, self._node_size)

    def _apply_selection(self) -> None:
        a = self._analysis
        self._selection.show(self._shown, a.selected, self._node_size, self._vb.viewRange())
        if a.selected is not None and not self._shown.shows(a.selected):
            self.message_label.setText(f"{a.label_of(a.selected)} is hidden by the thresholds.")
        elif a.selected is not None:
            self.message_label.clear()

    def _apply_changes(self) -> None:
        self._change_rings.show(self._shown, self._changes if self._analysis is not None else None, self._node_size)

    # ---------------------------------------------------------------- view changes
    def _view_changed(self, *args) -> None:
        self._selection.follow_view(self._vb.viewRange())
        self._logit_labels.place()
        self._captions.place()
        self._view_timer.start()

    def _view_resized(self, *args) -> None:
        if self._auto_fit:  # a fitted graph stays fitted (and its margins right) as the window changes
            self.fit()
        self._view_changed()

    def _view_moved_by_user(self, *args) -> None:
        self._auto_fit = False

    def _update_node_size(self) -> None:
        """Glyphs shrink to the spacing between neighbours on screen (4..12 px); updated when the view rests."""
        if not self._shown.nodes.size:
            return
        px = self._vb.viewPixelSize()[0]
        if not px or not np.isfinite(px) or self._vb.width() < 10:
            return
        size = float(np.clip(round(0.85 / px), 4, 12))
        if size == self._node_size:
            return
        self._node_size = size
        self._scatter.setSize(self._sizes())
        self._pins.show(self._shown, self._analysis.pinned, self._node_size)
        self._apply_selection()
        self._apply_changes()

    # ---------------------------------------------------------------- mouse and keys
    def _pick(self, scene_pos: QPointF) -> int | None:
        xy = self._shown.xy
        if self._analysis is None or not self._shown.nodes.size:
            return None
        if not self._vb.sceneBoundingRect().contains(scene_pos):
            return None
        p = self._vb.mapSceneToView(scene_pos)
        px, py = self._vb.viewPixelSize()
        if not px or not py:
            return None
        d2 = ((xy[:, 0] - p.x()) / px) ** 2 + ((xy[:, 1] - p.y()) / py) ** 2
        i = int(np.argmin(d2))
        return int(self._shown.nodes[i]) if d2[i] <= PICK_RADIUS_PX ** 2 else None

    def _mouse_moved(self, scene_pos: QPointF) -> None:
        self._hover_pos = QPointF(scene_pos)
        if not self._hover_timer.isActive():
            self._hover_timer.start()

    def _resolve_hover(self) -> None:
        a = self._analysis
        node = self._pick(self._hover_pos) if self._hover_pos is not None else None
        if node != self.hovered:
            self.hovered = node
            self._hover_ring.show(self._shown, node, self._node_size)
            self.node_hovered.emit(node)
        if node is None or a is None:
            QToolTip.hideText()
            return
        view_pt = self._plot.mapFromScene(self._hover_pos)
        QToolTip.showText(self._plot.viewport().mapToGlobal(view_pt), self.tooltip_html(node), self._plot.viewport())

    def _mouse_clicked(self, ev) -> None:
        a = self._analysis
        if a is not None and ev.button() == Qt.MouseButton.RightButton and not ev.double():
            node = self._pick(ev.scenePos())
            if node is not None:
                ev.accept()
                view_pt = self._plot.mapFromScene(ev.scenePos())
                self.node_context_requested.emit(node, self._plot.viewport().mapToGlobal(view_pt))
            return
        if a is None or ev.button() != Qt.MouseButton.LeftButton or ev.double():
            return
        if not self._vb.sceneBoundingRect().contains(ev.scenePos()):
            return
        node = self._pick(ev.scenePos())
        ev.accept()
        self._plot.setFocus()
        if ev.modifiers() & Qt.KeyboardModifier.ControlModifier:
            if node is None:
                return
            try:
                a.toggle_pin(node)
            except ValueError as e:  # MAX_PINNED
                self.message_label.setText(str(e))
            return
        a.select(node)
        if node is not None:
            self.node_clicked.emit(node)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.KeyPress and event.key() == Qt.Key.Key_Escape:
            self._escape()
            return True
        if event.type() == QEvent.Type.Leave and obj is self._plot.viewport():
            self._hover_pos = None
            self._resolve_hover()
        return super().eventFilter(obj, event)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Escape:
            self._escape()
            return
        super().keyPressEvent(event)

    def _escape(self) -> None:
        if self._analysis is not None:
            self._analysis.select(None)
            self.message_label.clear()

    def closeEvent(self, event) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(event)

    def _find_next(self) -> None:
        """Select the next node whose label contains the text (shown nodes first, then hidden ones)."""
        a = self._analysis
        query = self.find_box.text().strip().lower()
        if a is None or not query:
            return
        if self._find[0] != query:
            self._find = (query, self._shown.matches(a, query), -1)
        _, matches, place = self._find
        if not matches:
            self.message_label.setText(f"No node label contains {query!r}.")
            return
        place = (place + 1) % len(matches)
        self._find = (query, matches, place)
        node = matches[place]
        a.select(node)
        if self._shown.shows(node):
            self.message_label.setText(f"{place + 1} of {len(matches)} shown nodes match {query!r}.")
            x, y = self._shown.xy[self._shown.index[node]]
            (x0, x1), (y0, y1) = self._vb.viewRange()
            if not (x0 <= x <= x1 and y0 <= y <= y1):
                self._vb.translateBy(x=x - (x0 + x1) / 2, y=y - (y0 + y1) / 2)
        else:
            self.message_label.setText(f"{a.label_of(node)} matches {query!r} but is hidden by the thresholds; "
                                       "lower them to see it.")


SVG_FONTS = "DejaVu Sans, Arial, sans-serif"  # ends in a generic family: every renderer finds a font


def portable_svg(text: str) -> str:
    """QSvgGenerator's SVG made to render the same in browsers and ImageMagick: no
    `vector-effect="non-scaling-stroke"` (ImageMagick ignores it; each cosmetic stroke's pixel width is
    divided by its group's scale instead, so it draws as wide everywhere), and font families that end
    in a generic family (Qt's "Sans Serif" alias is no font a browser knows)."""
    import re

    out = []
    for i, part in enumerate(text.split("<g ")):  # QSvgGenerator writes flat groups: <g style...>paths</g>
        if i and "non-scaling-stroke" in part:
            head = part[: part.find(">")]
            m = re.search(r'matrix\(([^)]*)\)', head)
            w = re.search(r'stroke-width="([^"]*)"', head)
            scale = 1.0
            if m:
                a, b, c, d = (float(v) for v in m.group(1).split(",")[:4])
                scale = abs(a * d - b * c) ** 0.5 or 1.0
            # a cosmetic pen's width is in pixels: under a scaling transform, give it in user units
            width = f' stroke-width="{float(w.group(1)) / scale:.6g}"' if w and abs(scale - 1) > 1e-6 else ""
            part = part.replace(' vector-effect="non-scaling-stroke"', width)
        out.append(part)
    text = "<g ".join(out).replace(' vector-effect="non-scaling-stroke"', "")

    def family(m: re.Match) -> str:
        name = m.group(1).strip()
        if name.lower() in ("sans serif", "sans-serif", "sans", ""):
            return f'font-family="{SVG_FONTS}"'
        return f'font-family="{name}, {SVG_FONTS}"'

    return re.sub(r'font-family="([^"]*)"', family, text)
