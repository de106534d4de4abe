"""The graph canvas: the layered attribution-graph view analysts know from circuit-tracer's frontend.

Rows, bottom to top: token embeddings ("Emb"), layers L0..L{n-1}, logits; columns: prompt positions,
a busy column wider (`core.layout`). One `ScatterPlotItem` draws every node, with a glyph per kind
(feature ●, error ◆, token ▬, logit ▲); one `_EdgeLayer` draws every edge, green when positive and
purple when negative (PRGn, as the reference), its width bucketed by the edge's share of its target's
shown input (the reference's `pctInput`).

Interaction follows the reference: hover shows the nearest node within 30 px, click selects (its input
and output edges are drawn on top, every other edge dimmed, its neighbours coloured by their edge
weight to it), Ctrl-click pins, Esc clears. Beyond it: wheel zoom and drag pan (pyqtgraph's ViewBox)
with a Fit button, live node/edge threshold sliders re-pruning the full graph kept in memory, a line
that always says how many nodes the thresholds hide, and the graph's replacement and completeness
scores in view.

Speed with 100k edges: edges are a handful of QPainterPaths, one per (width, sign) bucket, never one
item per edge. Above `VECTOR_EDGE_LIMIT` edges they are rasterised into an image of the current view
on a worker thread; pan and zoom repaint that image transformed (stale for a moment, never slow) and a
fresh one is rendered once the view rests (`VIEW_SETTLE_MS`). A selection lays a translucent veil over
the graph and draws the selected node's edges and neighbours above it: its cost does not grow with
the graph, and nothing is re-rendered. Measured figures: `benchmarks/canvas.py`.

Model/view: the canvas reads `controller.analysis`, calls its methods and redraws on the controller's
signals. Selection, pin and label changes touch overlays only, never the layout or the node scatter.

Interventions: `set_activation_changes({feature node: relative change})` (sent through the controller's
`intervention_changed` by the intervention pane) rings every shown feature whose activation moved by
more than `CHANGE_TOLERANCE`: blue when turned down or off, orange when turned up, wider and more
opaque the larger the change. One overlay scatter with a handful of shared pens; nothing else redraws.
"""

from __future__ import annotations

import atexit
import html
import threading
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, QPoint, QPointF, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFontMetrics, QImage, QPainter, QPainterPath, QPen, QTransform
from PySide6.QtWidgets import (QGraphicsRectItem, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSizePolicy, QSlider,
                               QStackedWidget, QToolTip, QVBoxLayout, QWidget)

from ..core.analysis import Analysis, Aspect
from ..core.graph import NodeKind
from ..core.layout import ROW_HEIGHT, GraphLayout, layered_layout
from ..core.pruning import PruneResult
from .controller import Controller

PICK_RADIUS_PX = 30  # the reference's nearest-point picking radius
HOVER_INTERVAL_MS = 30  # hover is resolved at most this often
SLIDER_DEBOUNCE_MS = 60  # re-prune once a slider rests this long (or is released)
VIEW_SETTLE_MS = 90  # re-render edges and resize glyphs once pan/zoom rests this long
VECTOR_EDGE_LIMIT = 4000  # more edges than this are rasterised off the GUI thread
RASTER_CHUNK = 500  # edges per drawPath call on the worker: it holds the GIL that long
VEIL_ALPHA = 190  # how strongly a selection dims the rest of the graph (0..255)
NODE_SLIDER = (0.50, 1.00, 100)  # min, max, steps per unit
EDGE_SLIDER = (0.80, 1.00, 1000)
MAX_NODE_LABELS = 50  # pinned-node captions drawn on the canvas
CHANGE_TOLERANCE = 0.05  # relative activation changes smaller than this draw no ring
CHANGE_LEVELS = (0.25, 0.6)  # |relative change| bounds of the three ring strengths
BACKGROUND = "#ffffff"
TEXT = "#303030"

# ---- glyphs and colours (light background) ----
_TOKEN_BAR = QPainterPath()
_TOKEN_BAR.addRect(QRectF(-0.6, -0.2, 1.2, 0.4))


@dataclass(frozen=True)
class _KindStyle:
    symbol: object
    fill: str
    outline: str  # for the legend
    scale: float  # glyph size relative to a feature's
    min_size: float  # px, however far out the view is zoomed


_KINDS = (  # indexed by graph.node_kinds(): feature, error, token, logit
    _KindStyle("o", "#f2a541", "#8a5a12", 1.0, 0),
    _KindStyle("d", "#bdbdbd", "#5f5f5f", 1.05, 0),
    _KindStyle(_TOKEN_BAR, "#4a5b6e", "#2c3846", 1.5, 14),  # one per column: there is room
    _KindStyle("t1", "#2b7bba", "#133d5e", 1.4, 9),
)
# PRGn, as the reference: green positive, purple negative; light to dark = weak to strong.
_POS = ("#d9f0d3", "#a6dba0", "#5aae61", "#1b7837")
_NEG = ("#e7d4e8", "#c2a5cf", "#9970ab", "#762a83")
# Edge buckets by share of the target's shown input: < 10 %, < 30 %, the rest. Opaque colours on
# purpose: the raster engine fills opaque wide lines several times faster than translucent ones,
# and light opaque lines drawn first under darker ones read just like transparency.
SHARE_EDGES = (0.10, 0.30)
_EDGE_WIDTHS = (1.25, 2.1, 3.4)  # px; 1.0 exactly takes Qt's slow cosmetic-stroker path
_DENSE_EDGE_WIDTHS = (1.25, 1.6, 2.4)  # above DENSE_EDGES: thick lines would hide everything
DENSE_EDGES = 5_000
_EDGE_COLOURS = ((_POS[1], _NEG[1]), (_POS[2], _NEG[2]), (_POS[3], _NEG[3]))  # [level][negative]
_NODE_OUTLINE = "#4d4d4d"  # one pen for every node: per-spot pens cost pyqtgraph a Python loop
_PIN_PEN = "#c0392b"
_GRID = "#ececec"
_RING_PEN = "#111111"
_HOVER_PEN = "#7a7a7a"
_CHANGE_DOWN = "#1f5fbf"  # activation turned down / off by an intervention
_CHANGE_UP = "#f76707"  # turned up (orange: pins are red)
_CHANGE_WIDTHS = (1.7, 2.5, 3.4)  # px, by CHANGE_LEVELS
_CHANGE_ALPHAS = (150, 215, 255)
_CHANGE_RING_PAD = 7.0  # px beyond the glyph: just outside a pin's ring (+5)


def _pen(colour: str, width: float, round_caps: bool = False) -> QPen:
    """A cosmetic pen. Flat caps unless asked: round caps make the raster engine ~10x slower."""
    pen = QPen(QColor(colour))
    pen.setWidthF(width)
    pen.setCosmetic(True)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap if round_caps else Qt.PenCapStyle.FlatCap)
    return pen


def _change_pen(up: bool, level: int) -> QPen:
    colour = QColor(_CHANGE_UP if up else _CHANGE_DOWN)
    colour.setAlpha(_CHANGE_ALPHAS[level])
    pen = QPen(colour)
    pen.setWidthF(_CHANGE_WIDTHS[level])
    pen.setCosmetic(True)
    return pen


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _layer_name(layer: int, n_layers: int) -> str:
    return "Emb" if layer < 0 else "Logit" if layer >= n_layers else f"L{layer}"


def _show_token(tok: str) -> str:
    return tok.replace("\n", "⏎").replace("\t", "⇥") if tok.strip() else repr(tok)


# ---- axes ----

class _FastAxis(pg.AxisItem):
    """An axis with fixed labels at fixed places, painted straight: pyqtgraph's general AxisItem
    measures every label into a QPicture on each pan/zoom, a third of a frame at 7,500 nodes."""

    def __init__(self, orientation: str) -> None:
        super().__init__(orientation)
        self.enableAutoSIPrefix(False)
        self._fm = QFontMetrics(self.font())

    def _geometry(self) -> tuple[QRectF, float, float] | None:
        bounds = self.mapRectFromParent(self.geometry())
        lo, hi = (float(v) for v in self.range)
        return (bounds, lo, hi) if hi > lo else None

    def _draw_line(self, p: QPainter, a: QPointF, b: QPointF) -> None:
        p.setPen(self.pen())
        p.drawLine(a, b)


class _TokenAxis(_FastAxis):
    """Bottom axis: the prompt token under each column, elided to the column's width on screen."""

    def __init__(self) -> None:
        super().__init__("bottom")
        self.setHeight(self._fm.height() + 10)
        self._centres = np.zeros(0)
        self._widths = np.zeros(0)
        self._tokens: list[str] = []
        self._elided: dict[tuple[int, int], str] = {}

    def set_columns(self, column_left: np.ndarray | None, tokens: list[str]) -> None:
        left = np.zeros(1) if column_left is None else np.asarray(column_left, dtype=np.float64)
        self._centres = (left[:-1] + left[1:]) / 2
        self._widths = np.diff(left)
        self._tokens = [_show_token(t) for t in tokens]
        self._elided = {}
        self.update()

    def text(self, column: int, room: int) -> str:
        """The label of `column` in `room` pixels: the token, elided, or nothing when even "x…" will not fit."""
        key = (column, room)
        if key not in self._elided:
            text = self._fm.elidedText(self._tokens[column], Qt.TextElideMode.ElideRight, room)
            self._elided[key] = "" if text in ("", "…") else text
        return self._elided[key]

    def paint(self, p: QPainter, *args) -> None:
        geo = self._geometry()
        if geo is None:
            return
        bounds, lo, hi = geo
        self._draw_line(p, bounds.topLeft(), bounds.topRight())
        if not self._tokens:
            return
        scale = bounds.width() / (hi - lo)
        top, h = bounds.top(), self._fm.height()
        p.setPen(self.textPen())
        for i in np.flatnonzero((self._centres >= lo) & (self._centres <= hi)).tolist():
            x = bounds.left() + (self._centres[i] - lo) * scale
            room = int(self._widths[i] * scale) - 4
            p.drawLine(QPointF(x, top), QPointF(x, top + 3))
            text = self.text(i, room) if room > 8 else ""
            if text:
                p.drawText(QRectF(x - room / 2, top + 5, room, h), Qt.AlignmentFlag.AlignHCenter, text)


class _LayerAxis(_FastAxis):
    """Left axis: "Emb", "L0" .. "L{n-1}", "Logit" at the rows."""

    def __init__(self) -> None:
        super().__init__("left")
        self.setWidth(self._fm.horizontalAdvance("Logit") + 14)
        self._rows = np.zeros(0)
        self._names: list[str] = []

    def set_rows(self, row_y: np.ndarray | None, names: list[str]) -> None:
        self._rows = np.zeros(0) if row_y is None else np.asarray(row_y, dtype=np.float64)
        self._names = names
        self.update()

    def paint(self, p: QPainter, *args) -> None:
        geo = self._geometry()
        if geo is None:
            return
        bounds, lo, hi = geo
        self._draw_line(p, bounds.topRight(), bounds.bottomRight())
        scale = bounds.height() / (hi - lo)
        h = self._fm.height()
        p.setPen(self.textPen())
        for i in np.flatnonzero((self._rows >= lo) & (self._rows <= hi)).tolist():
            y = bounds.bottom() - (self._rows[i] - lo) * scale
            p.drawText(QRectF(bounds.left(), y - h / 2, bounds.width() - 6, h),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, self._names[i])


# ---- edges ----

@dataclass(frozen=True)
class _Bucket:
    colour: str
    width: float
    x: np.ndarray  # float64 [2m]: source x, target x, source x, ... (QPainterPath 'pairs')
    y: np.ndarray
    round_caps: bool = False

    def pen(self) -> QPen:
        return _pen(self.colour, self.width, self.round_caps)


def _path(x: np.ndarray, y: np.ndarray) -> QPainterPath:
    return pg.arrayToQPath(x, y, connect="pairs", finiteCheck=False) if x.size else QPainterPath()


class _RenderSink(QObject):
    done = Signal(int, object, object)  # generation, QImage, QTransform (item -> viewport) it was drawn for


_LIVE_RENDERS: dict[threading.Thread, threading.Event] = {}  # worker -> its cancel flag


@atexit.register
def _stop_renders() -> None:
    """A worker still inside Qt when the interpreter exits would abort the process."""
    for th, cancel in list(_LIVE_RENDERS.items()):
        cancel.set()
        th.join(timeout=5)


def _rasterise(buckets: list[_Bucket], t: QTransform, width: int, height: int, dpr: float,
               cancelled: threading.Event) -> QImage | None:
    """Draw the buckets, as seen through item->viewport transform `t`, into a transparent image of the
    viewport. Runs on a worker thread; returns None once `cancelled` is set."""
    img = QImage(max(1, round(width * dpr)), max(1, round(height * dpr)), QImage.Format.Format_ARGB32_Premultiplied)
    img.setDevicePixelRatio(dpr)
    img.fill(Qt.GlobalColor.transparent)
    painter = QPainter(img)
    try:
        m = 4.0  # room for line caps
        for b in buckets:
            if not b.x.size:
                continue
            X = b.x * t.m11() + b.y * t.m21() + t.m31()
            Y = b.x * t.m12() + b.y * t.m22() + t.m32()
            x0, x1, y0, y1 = X[0::2], X[1::2], Y[0::2], Y[1::2]
            off = (((x0 < -m) & (x1 < -m)) | ((x0 > width + m) & (x1 > width + m))
                   | ((y0 < -m) & (y1 < -m)) | ((y0 > height + m) & (y1 > height + m)))
            keep = np.flatnonzero(~off)
            painter.setPen(b.pen())
            for start in range(0, keep.size, RASTER_CHUNK):
                if cancelled.is_set():
                    return None
                k = keep[start:start + RASTER_CHUNK]
                xs, ys = np.empty(2 * k.size), np.empty(2 * k.size)
                xs[0::2], xs[1::2], ys[0::2], ys[1::2] = x0[k], x1[k], y0[k], y1[k]
                painter.drawPath(_path(xs, ys))
    finally:
        painter.end()
    return img


class _EdgeLayer(pg.GraphicsObject):
    """Edges as a few bucketed paths: drawn as vectors up to VECTOR_EDGE_LIMIT, else from a raster
    image of the current view rendered on a worker thread (see the module docstring)."""

    def __init__(self, antialias: bool = True) -> None:
        super().__init__()
        self._antialias = antialias
        self._buckets: list[_Bucket] = []
        self._paths: list[tuple[QPen, QPainterPath]] | None = None  # vector mode
        self._bounds = QRectF()
        self._n_edges = 0
        self._vector_export = False
        self._generation = 0
        self._image: QImage | None = None
        self._image_generation = -1
        self._image_transform: QTransform | None = None
        self._pending_transform: QTransform | None = None
        self._cancel: threading.Event | None = None
        self._sink = _RenderSink()
        self._sink.done.connect(self._rendered)
        self._timer = QTimer(singleShot=True)
        self._timer.timeout.connect(self._start_render)

    # -- data --
    def set_edges(self, buckets: list[_Bucket], bounds: QRectF) -> None:
        self.prepareGeometryChange()
        self.cancel_render()
        self._buckets = buckets
        self._n_edges = sum(b.x.size // 2 for b in buckets)
        self._bounds = bounds
        self._generation += 1
        self._image = None
        self._pending_transform = None  # the next paint schedules a render
        self._paths = [(b.pen(), _path(b.x, b.y)) for b in buckets] if self.vector_mode else None
        self.update()

    @property
    def vector_mode(self) -> bool:
        return self._n_edges <= VECTOR_EDGE_LIMIT

    @property
    def n_edges(self) -> int:
        return self._n_edges

    def ready(self) -> bool:
        """All edges are drawn sharp for the current view (vector mode, or an up-to-date raster image)."""
        if self.vector_mode:
            return True
        view = self.getViewWidget()
        return (self._image_generation == self._generation and view is not None
                and self._image_transform == self.deviceTransform(view.viewportTransform()))

    def set_vector_export(self, on: bool) -> None:
        self._vector_export = on

    # -- QGraphicsItem --
    def boundingRect(self) -> QRectF:  # noqa: N802
        return self._bounds

    def paint(self, p: QPainter, *args) -> None:
        if not self._n_edges:
            return
        if self.vector_mode or self._vector_export:
            # Map to device pixels first: Qt strokes an antialiased cosmetic pen along a path under a
            # scaling transform ~50x slower than the same path given in pixels.
            t = p.transform()
            p.save()
            p.resetTransform()
            p.setRenderHint(QPainter.RenderHint.Antialiasing, self._antialias or self._vector_export)
            for pen, path in self._paths or [(b.pen(), _path(b.x, b.y)) for b in self._buckets]:
                if not path.isEmpty():
                    p.setPen(pen)
                    p.drawPath(t.map(path))
            p.restore()
            return
        if self._image is not None and self._image_generation == self._generation:
            p.save()
            p.setTransform(self._image_transform.inverted()[0] * p.transform())  # image px -> item -> device
            p.drawImage(QPointF(0, 0), self._image)
            p.restore()
        view = self.getViewWidget()
        if view is None:
            return
        t = self.deviceTransform(view.viewportTransform())  # not p.transform(): grab() paints elsewhere
        if (self._image_transform != t or self._image_generation != self._generation) and self._pending_transform != t:
            self._pending_transform = t  # new edges or the view moved: render once it rests
            self._timer.start(VIEW_SETTLE_MS if self._image is not None else 20)

    # -- raster cache --
    def _start_render(self) -> None:
        view = self.getViewWidget()
        if view is None or not view.isVisible() or not self._buckets:
            self._pending_transform = None  # the next paint asks again
            return
        self.cancel_render()
        t = QTransform(self.deviceTransform(view.viewportTransform()))  # the worker's own copy
        self._pending_transform = t
        size: QSize = view.viewport().size()
        cancel = self._cancel = threading.Event()
        generation, buckets, dpr, sink = self._generation, self._buckets, view.devicePixelRatioF(), self._sink

        def work() -> None:
            try:
                img = _rasterise(buckets, t, size.width(), size.height(), dpr, cancel)
                if img is not None and not cancel.is_set():
                    sink.done.emit(generation, img, t)
            except RuntimeError:  # the canvas went away meanwhile
                pass
            finally:
                _LIVE_RENDERS.pop(threading.current_thread(), None)

        th = threading.Thread(target=work, name="edge-raster", daemon=True)
        _LIVE_RENDERS[th] = cancel
        th.start()

    def _rendered(self, generation: int, img: QImage, t: QTransform) -> None:
        if generation == self._generation:
            self._image, self._image_generation, self._image_transform = img, generation, t
            self.update()

    def cancel_render(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self._cancel = None

    def shutdown(self) -> None:
        """Stop this layer's worker (it stops within one chunk) and wait for it."""
        self._timer.stop()
        self._pending_transform = None  # shown again, it renders again
        cancel = self._cancel
        self.cancel_render()
        for th, ev in list(_LIVE_RENDERS.items()):
            if ev is cancel:
                th.join(timeout=5)


class _Overlay(pg.ScatterPlotItem):
    """A few highlighted glyphs (pins, rings, the selection's neighbours); hidden when empty, so that it
    costs nothing per frame."""

    def setData(self, *args, **kwargs) -> None:  # noqa: N802
        super().setData(*args, **kwargs)
        self.setVisible(len(self.data) > 0)


class _Veil(QGraphicsRectItem):
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


# ---- the widget ----

class GraphCanvas(QWidget):
    """The attribution graph of `controller.analysis`, drawn and driven as described in the module docstring.

    For tests and scripts: `node_screen_pos(node)` (a point in `viewport()` coordinates),
    `node_at(point)`, `visible_nodes()`, `highlighted_edges()`, `shown_labels()`, `edges_ready()`,
    `fit()`, `render_svg(path)`, `set_activation_changes(changes)`, `activation_rings()`.
    """

    node_clicked = Signal(int)
    node_hovered = Signal(object)  # node index or None

    def __init__(self, controller: Controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._analysis: Analysis | None = None
        self._layout: GraphLayout | None = None
        self._nodes = np.zeros(0, dtype=np.int64)  # shown node indices, layout order
        self._xy = np.zeros((0, 2))
        self._index = np.zeros(0, dtype=np.int64)  # node -> row in _nodes, -1 when hidden
        self._kinds = np.zeros(0, dtype=np.int8)  # of the shown nodes
        self._all_kinds = np.zeros(0, dtype=np.int8)
        self._edge_t = self._edge_s = np.zeros(0, dtype=np.int64)
        self._edge_w = np.zeros(0, dtype=np.float32)
        self._edge_level = np.zeros(0, dtype=np.int8)
        self._highlight = np.zeros(0, dtype=bool)
        self._node_size = 10.0
        self._auto_fit = True
        self._hover_pos: QPointF | None = None
        self.hovered: int | None = None
        self._find = ("", [], -1)  # query, matches, place
        self._label_items: dict[int, pg.TextItem] = {}
        self._logit_items: list[tuple[int, float, pg.TextItem]] = []  # node, x, item
        self._logit_px = 0.0  # the x scale the logit labels were placed for
        self._brushes = [pg.mkBrush(k.fill) for k in _KINDS]
        self._node_pen = pg.mkPen(_NODE_OUTLINE, width=0.8)
        self._near_brushes = {(lvl, neg): pg.mkBrush((_NEG if neg else _POS)[lvl])  # neighbours of the selection
                              for lvl in range(1, 4) for neg in (0, 1)}
        self._near_pen = pg.mkPen("#333333", width=1)
        self._changes: dict[int, float] | None = None  # node -> relative activation change (intervention)
        self._rings: dict[int, float] = {}  # the ringed (shown, changed) feature nodes
        self._change_pens = {(up, lvl): _change_pen(up, lvl) for up in (False, True) for lvl in range(3)}

        self._build_controls()
        self._build_plot()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(3)
        layout.addLayout(self._toolbar)
        layout.addLayout(self._info_row)
        self._stack = QStackedWidget()
        self._placeholder = QLabel("No graph yet: trace a prompt or open a graph file.")
        self._placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._placeholder.setStyleSheet(f"color: #777; background: {BACKGROUND};")
        self._stack.addWidget(self._placeholder)
        self._stack.addWidget(self._plot)
        layout.addWidget(self._stack, 1)

        self._slider_timer = QTimer(self, singleShot=True, interval=SLIDER_DEBOUNCE_MS)
        self._slider_timer.timeout.connect(self._push_thresholds)
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

    # ---------------------------------------------------------------- construction
    def _build_controls(self) -> None:
        def slider(lo: float, hi: float, steps: int, tip: str) -> tuple[QSlider, QLabel]:
            s = QSlider(Qt.Orientation.Horizontal)
            s.setRange(round(lo * steps), round(hi * steps))
            s.setMinimumWidth(140)
            s.setToolTip(tip)
            s.valueChanged.connect(self._slider_moved)
            s.sliderReleased.connect(self._push_thresholds)
            value = QLabel()
            value.setMinimumWidth(QFontMetrics(value.font()).horizontalAdvance("0.000") + 6)
            return s, value

        self.node_slider, self._node_value = slider(*NODE_SLIDER, (
            "Node threshold: keep the nodes that hold this fraction of the total influence on the "
            "logits (circuit-tracer's node_threshold). Lower it to hide more nodes."))
        self.edge_slider, self._edge_value = slider(*EDGE_SLIDER, (
            "Edge threshold: keep the edges that hold this fraction of the total edge score "
            "(circuit-tracer's edge_threshold)."))
        self.find_box = QLineEdit()
        self.find_box.setPlaceholderText("Find node by label…")
        self.find_box.setClearButtonEnabled(True)
        self.find_box.setMaximumWidth(220)
        self.find_box.returnPressed.connect(self._find_next)
        self.fit_button = QPushButton("Fit")
        self.fit_button.setToolTip("Fit the whole graph in view (wheel zooms, drag pans)")
        self.fit_button.clicked.connect(self.fit)

        bar = QHBoxLayout()
        bar.setSpacing(6)
        for widget in (QLabel("Nodes"), self.node_slider, self._node_value, QLabel("Edges"), self.edge_slider,
                       self._edge_value):
            bar.addWidget(widget)
        bar.addStretch(1)
        bar.addWidget(self.find_box)
        bar.addWidget(self.fit_button)
        self._toolbar = bar

        self.hidden_label = QLabel()
        self.hidden_label.setToolTip("Nodes the node and edge thresholds hide. Lower them to see more.")
        self.edges_label = QLabel()
        self.message_label = QLabel()
        self.message_label.setStyleSheet("color: #a04000;")
        self.scores_label = QLabel()
        self.scores_label.setToolTip("Replacement and completeness scores of the full (unpruned) graph, "
                                     "as circuit-tracer's compute_graph_scores.")
        sw = "font-size: 13px;"
        self.legend_label = QLabel(
            f"<span style='color:{_KINDS[0].fill};{sw}'>●</span> feature&nbsp; "
            f"<span style='color:{_KINDS[1].outline};{sw}'>◆</span> error&nbsp; "
            f"<span style='color:{_KINDS[2].fill};{sw}'>▬</span> token&nbsp; "
            f"<span style='color:{_KINDS[3].fill};{sw}'>▲</span> logit&nbsp;&nbsp; "
            f"<span style='color:{_POS[3]};{sw}'>━</span> positive&nbsp; "
            f"<span style='color:{_NEG[3]};{sw}'>━</span> negative")
        for label in (self.hidden_label, self.edges_label, self.scores_label, self.legend_label):
            label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        # a long message is clipped rather than widening the window past a laptop screen
        self.message_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        row = QHBoxLayout()
        row.setSpacing(12)
        row.addWidget(self.hidden_label)
        row.addWidget(self.edges_label)
        row.addWidget(self.message_label, 1)
        row.addWidget(self.scores_label)
        self._info_row = row
        # the legend sits in the slider row: one row holding everything was wider than a laptop screen
        self._toolbar.insertWidget(self._toolbar.count() - 2, self.legend_label)

    def _build_plot(self) -> None:
        self._token_axis, self._layer_axis = _TokenAxis(), _LayerAxis()
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

        self._grid = _EdgeLayer(antialias=False)  # column separators and row lines
        self._grid.setZValue(-20)
        # z order: grid, edges, nodes | veil | the selection's edges and nodes, pins, rings, captions
        self._edges = _EdgeLayer(antialias=True)
        self._edges.setZValue(-10)
        self._scatter = pg.ScatterPlotItem(pxMode=True, antialias=True)
        self._veil = _Veil()
        self._veil.setZValue(5)
        self._veil.setVisible(False)
        self._hl_edges = _EdgeLayer(antialias=True)
        self._hl_edges.setZValue(6)
        self._focus = _Overlay(pxMode=True, antialias=True)
        self._focus.setZValue(7)
        self._pins = _Overlay(pxMode=True, antialias=True, brush=None, pen=_pen(_PIN_PEN, 2.2))
        self._pins.setZValue(8)
        self._ring = _Overlay(pxMode=True, antialias=True, symbol="o", brush=None, pen=_pen(_RING_PEN, 2.4))
        self._ring.setZValue(8)
        self._hover_ring = _Overlay(pxMode=True, antialias=True, symbol="o", brush=None, pen=_pen(_HOVER_PEN, 1.5))
        self._hover_ring.setZValue(8)
        self._change_rings = _Overlay(pxMode=True, antialias=True, symbol="o", brush=None)
        self._change_rings.setZValue(8.5)  # above the veil: a selection does not hide them
        for it in (self._grid, self._edges, self._scatter, self._veil, self._hl_edges, self._focus, self._pins,
                   self._ring, self._hover_ring, self._change_rings):
            vb.addItem(it)

        scene = plot.scene()
        scene.sigMouseMoved.connect(self._mouse_moved)
        scene.sigMouseClicked.connect(self._mouse_clicked)
        vb.sigRangeChanged.connect(self._view_changed)
        vb.sigRangeChangedManually.connect(self._view_moved_by_user)
        vb.sigResized.connect(self._view_resized)
        plot.installEventFilter(self)
        plot.viewport().installEventFilter(self)
        self._plot = plot

        # the rings' legend floats in the plot's top-left corner (in no layout: it never widens the window)
        self.ring_legend = QLabel(plot)
        self.ring_legend.setStyleSheet(f"background: rgba(255, 255, 255, 225); color: {TEXT}; padding: 2px 5px;"
                                       "border: 1px solid #d0d0d0;")
        self._ring_tip = ("Rings: how each feature's activation changed after the intervention (changes under "
                          f"{CHANGE_TOLERANCE:.0%} are not ringed). Thicker = larger change.")
        self.ring_legend.setToolTip(self._ring_tip)
        self.ring_legend.move(self._layer_axis.width() + 8, 6)
        self.ring_legend.hide()

    # ---------------------------------------------------------------- public API
    @property
    def plot(self) -> pg.PlotWidget:
        return self._plot

    def viewport(self) -> QWidget:
        """The widget that receives the canvas's mouse events (what tests click on)."""
        return self._plot.viewport()

    def visible_nodes(self) -> np.ndarray:
        """int64: the node indices on the canvas (the pruned graph's kept nodes), ascending."""
        return np.sort(self._nodes)

    def visible_edges(self) -> int:
        return int(self._edge_t.size)

    def highlighted_edges(self) -> int:
        """How many edges are drawn highlighted (the selected node's kept input and output edges)."""
        return int(self._highlight.sum())

    def shown_labels(self) -> dict[int, str]:
        """The node captions on the canvas (selected and pinned nodes), by node index."""
        return {n: item.toPlainText().strip() for n, item in self._label_items.items()}

    def edges_ready(self) -> bool:
        return self._edges.ready()

    def set_activation_changes(self, changes: dict[int, float] | None) -> None:
        """Ring the feature nodes whose activation an intervention changed: `changes` maps node ->
        relative change (after − before) / |before| (−1 = turned off); None clears the rings."""
        self._changes = dict(changes) if changes else None
        self._apply_changes()

    def activation_rings(self) -> dict[int, float]:
        """The ringed nodes (shown feature nodes changed by more than CHANGE_TOLERANCE) -> their change."""
        return dict(self._rings)

    def node_screen_pos(self, node: int) -> QPoint | None:
        """Where `node` is drawn, in `viewport()` coordinates; None when it is hidden by the thresholds."""
        if self._analysis is None or not 0 <= node < self._index.size or self._index[node] < 0:
            return None
        x, y = self._xy[self._index[node]]
        return self._plot.mapFromScene(self._vb.mapViewToScene(QPointF(float(x), float(y))))

    def node_at(self, point: QPoint | QPointF) -> int | None:
        """The node within PICK_RADIUS_PX of `point` (viewport coordinates), nearest first."""
        return self._pick(self._plot.mapToScene(QPoint(int(point.x()), int(point.y()))))

    def fit(self) -> None:
        """Show the whole graph, with room above the logits for their labels."""
        lay = self._layout
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

        from ..core.atomic_write import write_bytes_atomic

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
        write_bytes_atomic(path, bytes(buffer.data()))

    def shutdown(self) -> None:
        """Stop the edge renderers; called on close."""
        self._edges.shutdown()
        self._hl_edges.shutdown()

    # ---------------------------------------------------------------- model -> view
    def _on_analysis_changed(self) -> None:
        self._edges.cancel_render()
        a = self._analysis = self.controller.analysis
        self.hovered = None
        self._find = ("", [], -1)
        self.message_label.clear()
        for w in (self.node_slider, self.edge_slider, self.find_box, self.fit_button):
            w.setEnabled(a is not None)
        if a is None:
            self._changes = None
            self._clear()
            self._stack.setCurrentWidget(self._placeholder)
            return
        self._stack.setCurrentWidget(self._plot)
        self._changes = None  # changes name nodes of the previous graph
        self._all_kinds = a.graph.node_kinds()
        r, c = a.scores
        self.scores_label.setText(f"<b>Replacement {r:.2f} · Completeness {c:.2f}</b>")
        self._sync_sliders()
        self._rebuild()
        self.fit()

    def _on_aspect_changed(self, aspect: str) -> None:
        if self._analysis is None or self._analysis is not self.controller.analysis:
            return
        if aspect == Aspect.PRUNING.value:
            self._sync_sliders()
            self._rebuild()
            if self._auto_fit:
                self.fit()
        elif aspect == Aspect.SELECTION.value:
            self._apply_selection()
            self._update_captions()
        elif aspect == Aspect.PINS.value:
            self._apply_pins()
            self._update_captions()
        elif aspect == Aspect.LABELS.value:
            self._update_captions()
            self._resolve_hover()

    def _clear(self) -> None:
        self._layout = None
        self._nodes = np.zeros(0, dtype=np.int64)
        self._xy = np.zeros((0, 2))
        self._index = np.zeros(0, dtype=np.int64)
        self._kinds = np.zeros(0, dtype=np.int8)
        self._edge_t = self._edge_s = np.zeros(0, dtype=np.int64)
        self._edge_w = np.zeros(0, dtype=np.float32)
        self._edge_level = np.zeros(0, dtype=np.int8)
        self._highlight = np.zeros(0, dtype=bool)
        self._edges.set_edges([], QRectF())
        for it in (self._scatter, self._focus, self._pins, self._ring, self._hover_ring):
            it.setData([], [])
        self._apply_changes()
        self._grid.set_edges([], QRectF())
        self._hl_edges.set_edges([], QRectF())
        self._veil.setVisible(False)
        self._token_axis.set_columns(None, [])
        self._layer_axis.set_rows(None, [])
        self._set_logit_labels([])
        self._update_captions()
        for label in (self.hidden_label, self.edges_label, self.scores_label):
            label.clear()
        QToolTip.hideText()

    def _sync_sliders(self) -> None:
        a = self._analysis
        for s, value, steps, label in ((self.node_slider, a.node_threshold, NODE_SLIDER[2], self._node_value),
                                       (self.edge_slider, a.edge_threshold, EDGE_SLIDER[2], self._edge_value)):
            s.blockSignals(True)
            s.setValue(round(value * steps))
            s.blockSignals(False)
            label.setText(f"{value:.2f}" if steps == 100 else f"{value:.3f}")

    def _rebuild(self) -> None:
        """Lay out and draw the pruned graph (a new analysis or new thresholds)."""
        a = self._analysis
        g, pr = a.graph, a.pruned
        lay = self._layout = layered_layout(g, pr.node_mask, pr.node_influence)
        self._nodes = lay.nodes
        self._xy = lay.xy.astype(np.float64)
        self._index = np.full(g.n_nodes, -1, dtype=np.int64)
        self._index[self._nodes] = np.arange(self._nodes.size)
        self._kinds = self._all_kinds[self._nodes]

        t, s = _kept_edges(pr, g.adjacency_matrix)
        w = g.adjacency_matrix[t, s]
        keep = (w != 0) & (self._index[t] >= 0) & (self._index[s] >= 0)
        t, s, w = t[keep], s[keep], w[keep]
        incoming = np.bincount(t, weights=np.abs(w), minlength=g.n_nodes)
        share = np.abs(w) / np.maximum(incoming[t], 1e-30)
        self._edge_t, self._edge_s, self._edge_w = t, s, w
        self._edge_level = np.searchsorted(np.asarray(SHARE_EDGES), share, side="right").astype(np.int8)
        self._highlight = np.zeros(t.size, dtype=bool)
        x_min, x_max = float(lay.column_left[0]), float(lay.column_left[-1])
        y_min, y_max = float(lay.row_y[0]), float(lay.row_y[-1])
        self._edges.set_edges(self._buckets(np.ones(t.size, dtype=bool), highlight=False),
                              QRectF(x_min, y_min - 1, x_max - x_min, y_max - y_min + 2))

        self._scatter.setData(x=self._xy[:, 0], y=self._xy[:, 1], symbol=[_KINDS[k].symbol for k in self._kinds],
                              size=self._sizes(), brush=[self._brushes[k] for k in self._kinds],
                              pen=self._node_pen)
        self._draw_grid(lay)
        self._token_axis.set_columns(lay.column_left, list(g.token_strings))
        self._layer_axis.set_rows(lay.row_y, [_layer_name(i - 1, g.n_layers) for i in range(g.n_layers + 2)])
        logits = self._nodes[self._kinds == 3]
        self._set_logit_labels([(int(n), a.label_of(int(n))) for n in logits])

        hidden = a.hidden_counts()
        self.hidden_label.setText(f"{_plural(hidden['shown'], 'node')} shown · "
                                  f"{_plural(hidden['features'], 'feature')} and {_plural(hidden['errors'], 'error')}"
                                  " hidden by thresholds")
        self.edges_label.setText(_plural(int(t.size), "edge"))
        self._apply_pins()
        self._apply_selection()
        self._apply_changes()
        self._update_captions()
        self.hovered = None
        self._hover_ring.setData([], [])

    def _buckets(self, which: np.ndarray, highlight: bool) -> list[_Bucket]:
        """Edges `which` (bool over the shown edges) as (width level, sign) buckets, thin ones first."""
        src, tgt = self._xy[self._index[self._edge_s]], self._xy[self._index[self._edge_t]]
        neg = self._edge_w < 0
        widths = _DENSE_EDGE_WIDTHS if self._edge_t.size > DENSE_EDGES else _EDGE_WIDTHS
        out = []
        for level in range(len(_EDGE_WIDTHS)):
            for negative in (True, False):  # positive edges (usually the story) on top
                sel = np.flatnonzero(which & (self._edge_level == level) & (neg == negative))
                x, y = np.empty(2 * sel.size), np.empty(2 * sel.size)
                x[0::2], x[1::2], y[0::2], y[1::2] = src[sel, 0], tgt[sel, 0], src[sel, 1], tgt[sel, 1]
                if highlight:
                    colour, width = (_NEG if negative else _POS)[3], _EDGE_WIDTHS[level] + 0.6
                else:
                    colour, width = _EDGE_COLOURS[level][negative], widths[level]
                out.append(_Bucket(colour, width, x, y, round_caps=highlight))
        return out

    def _draw_grid(self, lay: GraphLayout) -> None:
        """Faint column separators and row lines."""
        y0, y1 = float(lay.row_y[0]) - 0.5 * ROW_HEIGHT, float(lay.row_y[-1]) + 0.5 * ROW_HEIGHT
        x0, x1 = float(lay.column_left[0]), float(lay.column_left[-1])
        rows = lay.row_y.astype(np.float64)
        xs = np.concatenate([np.repeat(lay.column_left.astype(np.float64), 2), np.tile([x0, x1], rows.size)])
        ys = np.concatenate([np.tile([y0, y1], lay.column_left.size), np.repeat(rows, 2)])
        self._grid.set_edges([_Bucket(_GRID, 1.0, xs, ys)], QRectF(x0, y0, x1 - x0, y1 - y0))

    def _sizes(self, kinds: np.ndarray | None = None) -> np.ndarray:
        kinds = self._kinds if kinds is None else kinds
        scale = np.array([k.scale for k in _KINDS])
        least = np.array([k.min_size for k in _KINDS])
        return np.maximum(scale * self._node_size, least)[kinds]

    def _apply_selection(self) -> None:
        """The selection's overlay: veil, highlighted edges, neighbours coloured by edge weight, ring.
        Touches only the overlay items, never the layout or the main scatter."""
        a = self._analysis
        sel = a.selected
        if sel is None or self._index[sel] < 0:
            self._highlight = np.zeros(self._edge_t.size, dtype=bool)
            self._veil.setVisible(False)
            self._hl_edges.set_edges([], QRectF())
            self._focus.setData([], [])
            self._ring.setData([], [])
            if sel is not None:
                self.message_label.setText(f"{a.label_of(sel)} is hidden by the thresholds.")
            return
        self.message_label.clear()
        into, out_of = self._edge_t == sel, self._edge_s == sel
        self._highlight = into | out_of
        rows = np.append(self._index[np.where(into, self._edge_s, self._edge_t)[self._highlight]], self._index[sel])
        weights = self._edge_w[self._highlight]
        strength = np.abs(weights) / max(float(np.abs(weights).max(initial=0)), 1e-30)  # relative to the strongest
        levels = 1 + np.minimum((strength * 3).astype(int), 2)  # the PRGn ramp minus its near-white end
        brushes = [self._near_brushes[(lvl, neg)] for lvl, neg in zip(levels.tolist(), (weights < 0).tolist())]
        pens = [self._near_pen] * len(brushes)
        i = int(self._index[sel])
        brushes.append(self._brushes[self._kinds[i]])
        pens.append(self._node_pen)
        kinds = self._kinds[rows]
        self._focus.setData(x=self._xy[rows, 0], y=self._xy[rows, 1], symbol=[_KINDS[k].symbol for k in kinds],
                            size=np.maximum(self._sizes(kinds), 8), brush=brushes, pen=pens)  # legible when zoomed out
        self._hl_edges.set_edges(self._buckets(self._highlight, highlight=True), self._edges.boundingRect())
        self._veil.cover(self._vb.viewRange())
        self._veil.setVisible(True)
        x, y = self._xy[i]
        self._ring.setData([x], [y], size=max(float(self._sizes(self._kinds[i:i + 1])[0]), 8) + 9)

    def _apply_pins(self) -> None:
        pinned = [n for n in self._analysis.pinned if self._index[n] >= 0]
        if not pinned:
            self._pins.setData([], [])
            return
        rows = self._index[pinned]
        kinds = self._kinds[rows]
        self._pins.setData(x=self._xy[rows, 0], y=self._xy[rows, 1], symbol=[_KINDS[k].symbol for k in kinds],
                           size=self._sizes(kinds) + 5)

    def _apply_changes(self) -> None:
        """The intervention rings: shown feature nodes whose |change| > CHANGE_TOLERANCE, coloured by sign,
        one of three pens by size. Touches only the ring overlay and the ring legend."""
        changes = self._changes
        self._rings = {}
        if not changes or self._analysis is None or not self._nodes.size:
            self._change_rings.setData([], [])
            self.ring_legend.hide()
            return
        nodes = np.fromiter(changes.keys(), dtype=np.int64, count=len(changes))
        values = np.fromiter(changes.values(), dtype=np.float64, count=len(changes))
        ok = (nodes >= 0) & (nodes < self._index.size) & ~np.isnan(values) & (np.abs(values) > CHANGE_TOLERANCE)
        nodes, values = nodes[ok], values[ok]
        features = self._all_kinds[nodes] == 0
        rows = self._index[nodes]
        ok = features & (rows >= 0)  # feature nodes that are on the canvas
        hidden = int((features & (rows < 0)).sum())
        nodes, values, rows = nodes[ok], values[ok], rows[ok]
        self._rings = dict(zip(nodes.tolist(), values.tolist()))
        levels = np.searchsorted(np.asarray(CHANGE_LEVELS), np.abs(values), side="right").tolist()
        pens = [self._change_pens[(up, lvl)] for up, lvl in zip((values > 0).tolist(), levels)]
        self._change_rings.setData(x=self._xy[rows, 0], y=self._xy[rows, 1], size=self._sizes(self._kinds[rows])
                                   + _CHANGE_RING_PAD, pen=pens)
        down, up = int((values < 0).sum()), int((values > 0).sum())
        sw = "font-size: 13px;"
        self.ring_legend.setText(f"ring: activation change after intervention "
                                 f"<span style='color:{_CHANGE_DOWN};{sw}'>◯</span> {down} down&nbsp; "
                                 f"<span style='color:{_CHANGE_UP};{sw}'>◯</span> {up} up"
                                 + (f" · {hidden} hidden" if hidden else ""))
        self.ring_legend.setToolTip(self._ring_tip + (f"\n{hidden} more changed features are hidden by the thresholds: "
                                                      "lower them to see their rings." if hidden else ""))
        self.ring_legend.adjustSize()
        self.ring_legend.show()
        self.ring_legend.raise_()

    def _update_captions(self) -> None:
        """Text captions beside the selected node and the pinned ones (their current labels)."""
        for item in self._label_items.values():
            self._vb.removeItem(item)
        self._label_items = {}
        a = self._analysis
        if a is None:
            return
        nodes = list(a.pinned[:MAX_NODE_LABELS])
        if a.selected is not None and a.selected not in nodes:
            nodes.append(a.selected)
        for node in nodes:
            if self._index[node] < 0:
                continue
            label = a.label_of(node)
            text = label if len(label) <= 40 else label[:39] + "…"
            bold = node == a.selected
            item = pg.TextItem(text="  " + text, color=TEXT, anchor=(0, 1.15), fill=pg.mkBrush(255, 255, 255, 215))
            font = item.textItem.font()
            font.setPointSizeF(8.5)
            font.setBold(bold)
            item.setFont(font)
            item.setZValue(9)
            x, y = self._xy[self._index[node]]
            item.setPos(float(x), float(y))
            self._vb.addItem(item)
            self._label_items[node] = item
        self._place_captions()

    def _place_captions(self) -> None:
        """Stack captions that would overlap on screen (same row, overlapping in x) one line higher; a
        caption that would run off the right edge of the view goes to the left of its node."""
        if not self._label_items:
            return
        px = self._vb.viewPixelSize()[0] or 1.0
        edge = self._vb.viewRange()[0][1] / px
        placed: list[tuple[float, float, float, int]] = []  # row y, left px, right px, level
        for node, item in sorted(self._label_items.items(), key=lambda e: tuple(self._xy[self._index[e[0]]][::-1])):
            x, y = self._xy[self._index[node]]
            width = item.textItem.boundingRect().width()
            flip = x / px + width > edge
            left = x / px - width if flip else x / px
            right = left + width
            level = 0
            while any(r == y and lv == level and left < rr and ll < right for r, ll, rr, lv in placed):
                level += 1
            placed.append((y, left, right, level))
            item.setAnchor((1 if flip else 0, 1.15 + level))

    def _set_logit_labels(self, logits: list[tuple[int, str]]) -> None:
        for _, _, item in self._logit_items:
            self._vb.removeItem(item)
        self._logit_items = []
        for node, label in logits:
            a = self._analysis
            k = node - a.graph.logit_offset
            tok = _show_token(a.graph.logit_tokens[k])
            tok = tok if len(tok) <= 14 else tok[:13] + "…"
            item = pg.TextItem(text=f"  {tok} {float(a.graph.logit_probabilities[k]):.0%}", color=_KINDS[3].outline,
                               anchor=(0, 0.5), angle=55)
            item.setZValue(8)
            x, y = self._xy[self._index[node]]
            item.setPos(float(x), float(y))
            item.setToolTip(label)
            self._vb.addItem(item)
            self._logit_items.append((node, float(x), item))
        self._place_logit_labels(force=True)

    def _place_logit_labels(self, force: bool = False) -> None:
        """Show the most probable logits' labels that have room (≥ 18 px apart); redone when the x scale changes."""
        if not self._logit_items:
            return
        (x0, x1), width = self._vb.viewRange()[0], self._vb.width()
        px = (x1 - x0) / width if width > 0 else 1.0
        if not force and px == self._logit_px:
            return
        self._logit_px = px
        probs = self._analysis.graph.logit_probabilities
        off = self._analysis.graph.logit_offset
        taken: list[float] = []
        for node, x, item in sorted(self._logit_items, key=lambda e: -float(probs[e[0] - off])):
            free = all(abs(x - other) / px >= 18 for other in taken)
            item.setVisible(free)
            if free:
                taken.append(x)

    # ---------------------------------------------------------------- view changes
    def _view_changed(self, *args) -> None:
        if self._veil.isVisible():
            self._veil.cover(self._vb.viewRange())
        self._place_logit_labels()
        self._place_captions()
        self._view_timer.start()

    def _view_resized(self, *args) -> None:
        if self._auto_fit:  # a fitted graph stays fitted (and its margins right) as the window changes
            self.fit()
        self._view_changed()

    def _view_moved_by_user(self, *args) -> None:
        self._auto_fit = False

    def _update_node_size(self) -> None:
        """Glyphs shrink to the spacing between neighbours on screen (4..12 px); updated when the view rests."""
        if not self._nodes.size:
            return
        px = self._vb.viewPixelSize()[0]
        if not px or not np.isfinite(px) or self._vb.width() < 10:
            return
        size = float(np.clip(round(0.85 / px), 4, 12))
        if size == self._node_size:
            return
        self._node_size = size
        self._scatter.setSize(self._sizes())
        self._apply_pins()
        self._apply_selection()
        self._apply_changes()

    # ---------------------------------------------------------------- mouse and keys
    def _pick(self, scene_pos: QPointF) -> int | None:
        if self._analysis is None or not self._nodes.size:
            return None
        if not self._vb.sceneBoundingRect().contains(scene_pos):
            return None
        p = self._vb.mapSceneToView(scene_pos)
        px, py = self._vb.viewPixelSize()
        if not px or not py:
            return None
        d2 = ((self._xy[:, 0] - p.x()) / px) ** 2 + ((self._xy[:, 1] - p.y()) / py) ** 2
        i = int(np.argmin(d2))
        return int(self._nodes[i]) if d2[i] <= PICK_RADIUS_PX ** 2 else None

    def _mouse_moved(self, scene_pos: QPointF) -> None:
        self._hover_pos = QPointF(scene_pos)
        if not self._hover_timer.isActive():
            self._hover_timer.start()

    def _resolve_hover(self) -> None:
        a = self._analysis
        node = self._pick(self._hover_pos) if self._hover_pos is not None else None
        if node != self.hovered:
            self.hovered = node
            if node is None:
                self._hover_ring.setData([], [])
            else:
                i = int(self._index[node])
                self._hover_ring.setData([self._xy[i, 0]], [self._xy[i, 1]],
                                         size=float(self._sizes(self._kinds[i:i + 1])[0]) + 7)
            self.node_hovered.emit(node)
        if node is None or a is None:
            QToolTip.hideText()
            return
        view_pt = self._plot.mapFromScene(self._hover_pos)
        QToolTip.showText(self._plot.viewport().mapToGlobal(view_pt), self.tooltip_html(node), self._plot.viewport())

    def tooltip_html(self, node: int) -> str:
        """What hovering `node` shows: label, kind, layer, position, activation, influence (and the
        edge to the selected node, if any)."""
        a = self._analysis
        info = a.info(node)
        rows = [f"<b>{html.escape(info.label)}</b>",
                f"{info.kind.value} · {_layer_name(info.layer, a.graph.n_layers)} · "
                f"position {info.position} {html.escape(repr(info.token))}"]
        facts = []
        if info.kind is NodeKind.FEATURE:
            facts.append(f"feature #{info.feature} · activation {info.activation:.3g}")
        facts.append(f"influence {info.influence:.3g}")
        if info.kind is NodeKind.LOGIT:
            facts.append(f"p = {float(a.graph.logit_probabilities[node - a.graph.logit_offset]):.3f}")
        rows.append(" · ".join(facts))
        sel = a.selected
        if sel is not None and sel != node:
            A = a.graph.adjacency_matrix
            if A[sel, node]:
                rows.append(f"edge to selected: {float(A[sel, node]):+.3g}")
            elif A[node, sel]:
                rows.append(f"edge from selected: {float(A[node, sel]):+.3g}")
        if self._changes and node in self._changes and np.isfinite(self._changes[node]):
            change = self._changes[node]
            rows.append(f"after intervention: activation {change:+.0%}" + (" (off)" if change <= -0.999 else ""))
        if node in a.pinned:
            rows.append("<i>pinned</i>")
        return "<br>".join(rows)

    def _mouse_clicked(self, ev) -> None:
        a = self._analysis
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

    # ---------------------------------------------------------------- controls
    def _slider_moved(self) -> None:
        node, edge = self._slider_thresholds()
        self._node_value.setText(f"{node:.2f}")
        self._edge_value.setText(f"{edge:.3f}")
        self._slider_timer.start()

    def _slider_thresholds(self) -> tuple[float, float]:
        return self.node_slider.value() / NODE_SLIDER[2], self.edge_slider.value() / EDGE_SLIDER[2]

    def apply_sliders(self) -> None:
        """Re-prune now at the sliders' values (what the debounce timer and a slider release do)."""
        self._push_thresholds()

    def _push_thresholds(self) -> None:
        self._slider_timer.stop()
        a = self._analysis
        if a is None:
            return
        node, edge = self._slider_thresholds()
        # a slider showing a clamped model value has not been moved: keep the model's value
        if self.node_slider.value() == round(a.node_threshold * NODE_SLIDER[2]):
            node = a.node_threshold
        if self.edge_slider.value() == round(a.edge_threshold * EDGE_SLIDER[2]):
            edge = a.edge_threshold
        a.set_thresholds(node, edge)

    def _find_next(self) -> None:
        """Select the next node whose label contains the text (shown nodes first, then hidden ones)."""
        a = self._analysis
        query = self.find_box.text().strip().lower()
        if a is None or not query:
            return
        if self._find[0] != query:
            shown = [int(n) for n in self._nodes if query in a.label_of(int(n)).lower()]
            shown.sort(key=lambda n: -float(a.pruner.node_influence[n]))
            matches = shown
            if not matches:
                for n in range(a.graph.n_nodes):
                    if self._index[n] < 0 and query in a.label_of(n).lower():
                        matches.append(n)
                        break
            self._find = (query, matches, -1)
        _, matches, place = self._find
        if not matches:
            self.message_label.setText(f"No node label contains {query!r}.")
            return
        place = (place + 1) % len(matches)
        self._find = (query, matches, place)
        node = matches[place]
        a.select(node)
        if self._index[node] >= 0:
            self.message_label.setText(f"{place + 1} of {len(matches)} shown nodes match {query!r}.")
            x, y = self._xy[self._index[node]]
            (x0, x1), (y0, y1) = self._vb.viewRange()
            if not (x0 <= x <= x1 and y0 <= y <= y1):
                self._vb.translateBy(x=x - (x0 + x1) / 2, y=y - (y0 + y1) / 2)
        else:
            self.message_label.setText(f"{a.label_of(node)} matches {query!r} but is hidden by the thresholds; "
                                       "lower them to see it.")


def _kept_edges(pr: PruneResult, adjacency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(targets, sources) of the kept edges with a non-zero weight, between kept nodes.

    Equivalent to `PruneResult.kept_edges()` but one scan of the mask instead of a [K, K] gather; when
    the edge cut fell into the zeros (every entry "kept"), only the non-zero weights among kept nodes.
    """
    n = pr.node_mask.size
    if pr.edge_cut > 0:
        t, s = np.divmod(np.flatnonzero(pr.edge_mask), n)
        return t, s
    kept = np.flatnonzero(pr.node_mask)
    sub = pr.edge_mask[np.ix_(kept, kept)] & (adjacency[np.ix_(kept, kept)] != 0)
    t, s = np.nonzero(sub)
    return kept[t], kept[s]
