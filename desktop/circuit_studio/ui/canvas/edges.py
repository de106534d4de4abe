"""Edges on the canvas: a handful of QPainterPaths, one per (width, sign) bucket, never one item per edge.

Up to `VECTOR_EDGE_LIMIT` edges they are drawn as vectors. Above it they are rasterised into an image
of the current view on a worker thread; pan and zoom repaint that image transformed (stale for a
moment, never slow) and a fresh one is rendered once the view rests (`VIEW_SETTLE_MS`). Measured
figures: `benchmarks/canvas.py`.
"""

from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, QPointF, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QImage, QPainter, QPainterPath, QPen, QTransform

from ...core.graph.layout import ROW_HEIGHT, GraphLayout
from .shown_graph import ShownGraph
from .style import (DENSE_EDGE_WIDTHS, DENSE_EDGES, EDGE_COLOURS, EDGE_WIDTHS, GRID, NEGATIVE_COLOR,
                    POSITIVE_COLOR, cosmetic_pen)

VIEW_SETTLE_MS = 90  # re-render edges (and resize glyphs) once pan/zoom rests this long
VECTOR_EDGE_LIMIT = 4000  # more edges than this are rasterised off the GUI thread
RASTER_CHUNK = 500  # edges per drawPath call on the worker: it holds the GIL that long


@dataclass(frozen=True)
class EdgeBucket:
    colour: str
    width: float
    x: np.ndarray  # float64 [2m]: source x, target x, source x, ... (QPainterPath 'pairs')
    y: np.ndarray
    round_caps: bool = False

    def pen(self) -> QPen:
        return cosmetic_pen(self.colour, self.width, self.round_caps)


def edge_buckets(shown: ShownGraph, which: np.ndarray, highlight: bool) -> list[EdgeBucket]:
    """Edges `which` (bool over the shown edges) as (width level, sign) buckets, thin ones first;
    `highlight` draws them in the ramps' darkest colours, a little wider, with round caps."""
    src, tgt = shown.xy[shown.index[shown.edge_s]], shown.xy[shown.index[shown.edge_t]]
    neg = shown.edge_w < 0
    widths = DENSE_EDGE_WIDTHS if shown.edge_t.size > DENSE_EDGES else EDGE_WIDTHS
    out = []
    for level in range(len(EDGE_WIDTHS)):
        for negative in (True, False):  # positive edges (usually the story) on top
            sel = np.flatnonzero(which & (shown.edge_level == level) & (neg == negative))
            x, y = np.empty(2 * sel.size), np.empty(2 * sel.size)
            x[0::2], x[1::2], y[0::2], y[1::2] = src[sel, 0], tgt[sel, 0], src[sel, 1], tgt[sel, 1]
            if highlight:
                colour, width = NEGATIVE_COLOR if negative else POSITIVE_COLOR, EDGE_WIDTHS[level] + 0.6
            else:
                colour, width = EDGE_COLOURS[level][negative], widths[level]
            out.append(EdgeBucket(colour, width, x, y, round_caps=highlight))
    return out


def edge_bounds(layout: GraphLayout) -> QRectF:
    """Where the edges of a graph laid out as `layout` can be: the columns, the rows and a little more."""
    x_min, x_max = float(layout.column_left[0]), float(layout.column_left[-1])
    y_min, y_max = float(layout.row_y[0]), float(layout.row_y[-1])
    return QRectF(x_min, y_min - 1, x_max - x_min, y_max - y_min + 2)


def grid_lines(layout: GraphLayout) -> tuple[list[EdgeBucket], QRectF]:
    """Faint column separators and row lines, as buckets for an `EdgeLayer`, and their bounds."""
    y0, y1 = float(layout.row_y[0]) - 0.5 * ROW_HEIGHT, float(layout.row_y[-1]) + 0.5 * ROW_HEIGHT
    x0, x1 = float(layout.column_left[0]), float(layout.column_left[-1])
    rows = layout.row_y.astype(np.float64)
    xs = np.concatenate([np.repeat(layout.column_left.astype(np.float64), 2), np.tile([x0, x1], rows.size)])
    ys = np.concatenate([np.tile([y0, y1], layout.column_left.size), np.repeat(rows, 2)])
    return [EdgeBucket(GRID, 1.0, xs, ys)], QRectF(x0, y0, x1 - x0, y1 - y0)


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


def _rasterise(buckets: list[EdgeBucket], t: QTransform, width: int, height: int, dpr: float,
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


class EdgeLayer(pg.GraphicsObject):
    """Edges as a few bucketed paths: drawn as vectors up to VECTOR_EDGE_LIMIT, else from a raster
    image of the current view rendered on a worker thread (see the module docstring)."""

    def __init__(self, antialias: bool = True) -> None:
        super().__init__()
        self._antialias = antialias
        self._buckets: list[EdgeBucket] = []
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
    def set_edges(self, buckets: list[EdgeBucket], bounds: QRectF) -> None:
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
