"""The canvas's axes: the prompt's tokens under the columns, the layer names beside the rows."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QFontMetrics, QPainter

from ...core.graph.display_text import show_token, token_label


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


MIN_LABEL_PX = 8  # a column narrower than this on screen has no label of its own


class TokenAxis(_FastAxis):
    """Bottom axis: the prompt token under each column, elided to the column's width on screen.

    Columns too narrow for a label of their own (a long prompt, where busy columns take the room) are
    labelled as a group: each run of them gets the text it covers, elided, and its count ("The capital of
    the… (51 tokens)"; "…n tokens" or "…n" when that is all that fits), so no
    column goes unlabelled; hovering the axis names the tokens under the mouse (`labels()` says what
    is drawn where, for tests)."""

    def __init__(self) -> None:
        super().__init__("bottom")
        self.setHeight(self._fm.height() + 10)
        self._centres = np.zeros(0)
        self._widths = np.zeros(0)
        self._tokens: list[str] = []
        self._elided: dict[tuple[int, int], str] = {}
        self._drawn: list[tuple[QRectF, str, tuple[int, ...]]] = []
        self.setAcceptHoverEvents(True)

    def set_columns(self, column_left: np.ndarray | None, tokens: list[str]) -> None:
        left = np.zeros(1) if column_left is None else np.asarray(column_left, dtype=np.float64)
        self._centres = (left[:-1] + left[1:]) / 2
        self._widths = np.diff(left)
        self._tokens = [token_label(t) for t in tokens]
        self._running = [show_token(t) for t in tokens]  # as they read in running text (a group's label)
        self._elided = {}
        self.update()

    def text(self, column: int, room: int) -> str:
        """The label of `column` in `room` pixels: the token, elided, or nothing when even "x…" will not fit."""
        key = (column, room)
        if key not in self._elided:
            text = self._fm.elidedText(self._tokens[column], Qt.TextElideMode.ElideRight, room)
            self._elided[key] = "" if text in ("", "…") else text
        return self._elided[key]

    def labels(self) -> list[tuple[QRectF, str, tuple[int, ...]]]:
        """(rect in this item's coordinates, text, the columns it labels) of every label drawn now."""
        geo = self._geometry()
        if geo is None or not self._tokens:
            return []
        bounds, lo, hi = geo
        scale = bounds.width() / (hi - lo)
        top, h = bounds.top() + 5, self._fm.height()
        left_px = bounds.left() + (self._centres - self._widths / 2 - lo) * scale
        width_px = self._widths * scale
        visible = np.flatnonzero((self._centres + self._widths / 2 >= lo) & (self._centres - self._widths / 2 <= hi))
        out: list[tuple[QRectF, str, tuple[int, ...]]] = []
        run: list[int] = []

        def flush() -> None:
            if not run:
                return
            x0, x1 = left_px[run[0]], left_px[run[-1]] + width_px[run[-1]]
            n, room = len(run), x1 - x0 - 2
            # the text the run covers, elided, then how many tokens it is; else "…n tokens", "…n", "…"
            count = f" ({n} tokens)" if n > 1 else ""
            joined = "".join(self._running[c] for c in run).strip() or self._tokens[run[0]]
            head = self._fm.elidedText(joined, Qt.TextElideMode.ElideRight,
                                       int(room - self._fm.horizontalAdvance(count)))
            texts = ([head + count] if len(head) > 4 else []) + [f"…{n} tokens", f"…{n}", "…"]
            for text in texts:
                if self._fm.horizontalAdvance(text) + 2 <= x1 - x0 or text == "…":
                    break
            w = self._fm.horizontalAdvance(text) + 2
            out.append((QRectF((x0 + x1) / 2 - w / 2, top, w, h), text, tuple(run)))
            run.clear()

        for i in visible.tolist():
            room = int(width_px[i]) - 4
            text = self.text(i, room) if room > MIN_LABEL_PX else ""
            if not text:
                run.append(i)
                continue
            flush()
            out.append((QRectF(left_px[i] + 2, top, room, h), text, (i,)))
        flush()
        return out

    def paint(self, p: QPainter, *args) -> None:
        geo = self._geometry()
        if geo is None:
            return
        bounds, lo, hi = geo
        self._draw_line(p, bounds.topLeft(), bounds.topRight())
        if not self._tokens:
            return
        scale = bounds.width() / (hi - lo)
        top = bounds.top()
        p.setPen(self.textPen())
        for i in np.flatnonzero((self._centres >= lo) & (self._centres <= hi)).tolist():
            x = bounds.left() + (self._centres[i] - lo) * scale
            p.drawLine(QPointF(x, top), QPointF(x, top + 3))
        self._drawn = self.labels()
        for rect, text, cols in self._drawn:
            if len(cols) > 1:  # a group: a bracket under its columns
                x0 = bounds.left() + (self._centres[cols[0]] - lo) * scale
                x1 = bounds.left() + (self._centres[cols[-1]] - lo) * scale
                p.drawLine(QPointF(x0, top + 4), QPointF(x1, top + 4))
            p.drawText(rect, Qt.AlignmentFlag.AlignHCenter, text)

    def tokens_at(self, x: float) -> list[str]:
        """The tokens a label at `x` (this item's coordinates) stands for."""
        for rect, _, cols in self._drawn or self.labels():
            if rect.left() <= x <= rect.right():
                return [self._tokens[c] for c in cols]
        return []

    def hoverMoveEvent(self, event) -> None:  # noqa: N802
        tokens = self.tokens_at(event.pos().x())
        text = " ".join(tokens[:60]) + (" …" if len(tokens) > 60 else "")
        self.setToolTip(text)


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
