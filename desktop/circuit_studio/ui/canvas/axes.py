"""The canvas's axes: the prompt's tokens under the columns, the layer names beside the rows."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QFontMetrics, QPainter

from ...core.display_text import token_label


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


class TokenAxis(_FastAxis):
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
        self._tokens = [token_label(t) for t in tokens]
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


class LayerAxis(_FastAxis):
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
