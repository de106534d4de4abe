"""Example contexts of a feature: rows of tokens shaded by activation."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QPoint, QRect, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from ...core.graph.display_text import quoted, show_token
from .style import fixed, fmt, luminance, shade


class TokenRow:
    """One context: its tokens, each shaded by its activation relative to `scale` (the feature's
    max), the max token bold and underlined. Plain data plus layout; `ExampleList` paints it."""

    def __init__(self, example, scale: float) -> None:
        self.raw_tokens = tuple(example.tokens)
        self.tokens = [show_token(t) for t in self.raw_tokens]
        self.activations = [float(a) for a in example.activations]
        self.max_position = int(example.max_position)
        self.max_activation = float(example.max_activation)
        self.scale = float(scale) if scale and scale > 0 else (max(self.activations + [0.0]) or 1.0)
        self.widths: list[int] = []
        self.cells: list[tuple[int, QRect]] = []  # (token index, rect) as last painted

    def measure(self, fm: QFontMetrics, fb: QFontMetrics, pad: int) -> None:
        self.widths = [(fb if i == self.max_position else fm).horizontalAdvance(t) + 2 * pad
                       for i, t in enumerate(self.tokens)]

    def visible_range(self, width: int, ellipsis: int) -> tuple[int, int]:
        """(first, last) token indices shown in `width` pixels: all if they fit, else a window
        around the max token with about two tokens of left context for each one on the right."""
        n, w = len(self.widths), self.widths
        if n == 0 or sum(w) <= width:
            return 0, n - 1
        room = width - 2 * ellipsis
        lo = hi = min(max(self.max_position, 0), n - 1)
        used, left_turns = w[lo], 0
        while True:
            can_left = lo > 0 and used + w[lo - 1] <= room
            can_right = hi < n - 1 and used + w[hi + 1] <= room
            if can_left and (left_turns < 2 or not can_right):
                lo -= 1
                used += w[lo]
                left_turns += 1
            elif can_right:
                hi += 1
                used += w[hi]
                left_turns = 0
            else:
                return lo, hi

    def tooltip_for(self, i: int) -> str:
        a = self.activations[i]
        tag = "  (max of this context)" if i == self.max_position else ""
        return f"{quoted(self.raw_tokens[i])}\nactivation {fmt(a)}  ·  {a / self.scale:.0%} of the feature's max{tag}"


class ExampleList(QWidget):
    """Example contexts, one row each: the context's max activation, then its tokens shaded by
    activation. A long context is elided around its max token to fit the width; hovering a token
    shows its activation. One painted widget for all rows (fast to rebuild on every selection)."""

    PAD = 1  # horizontal padding inside each token cell (more splits sub-word tokens into apparent words)
    GAP = 6  # between the value column and the tokens

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.rows: list[TokenRow] = []
        self._bold = QFont(self.font())
        self._bold.setBold(True)
        self._bold.setUnderline(True)
        fm = QFontMetrics(self.font())
        self._row_h = QFontMetrics(self._bold).height() + 6
        self._value_w = fm.horizontalAdvance("00.000") + 4
        self._ellipsis = fm.horizontalAdvance("…") + 2
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setMouseTracking(True)

    def set_examples(self, examples, scale: float) -> None:
        self.rows = [TokenRow(e, scale) for e in examples]
        fm, fb = QFontMetrics(self.font()), QFontMetrics(self._bold)
        for r in self.rows:
            r.measure(fm, fb, self.PAD)
        self._scale = scale
        self.setFixedHeight(max(1, len(self.rows)) * self._row_h if self.rows else 0)
        self.updateGeometry()
        self.update()

    def sizeHint(self) -> QSize:
        width = max((sum(r.widths) for r in self.rows), default=0)
        return QSize(self._value_w + self.GAP + width + self._ellipsis, len(self.rows) * self._row_h)

    def minimumSizeHint(self) -> QSize:
        return QSize(self._value_w + 80, len(self.rows) * self._row_h)

    def visible_range(self, row: int) -> tuple[int, int]:
        return self.rows[row].visible_range(self.width() - self._value_w - self.GAP, self._ellipsis)

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        pal = self.palette()
        base, text = pal.color(QPalette.Base), pal.color(QPalette.Text)
        grey = pal.color(QPalette.PlaceholderText)
        sep = QColor(pal.color(QPalette.Mid))
        sep.setAlpha(70)
        font = self.font()
        h = self._row_h
        clip = event.rect()
        for k, row in enumerate(self.rows):
            y = k * h
            if y + h < clip.top() or y > clip.bottom():
                continue
            p.setFont(font)
            p.setPen(grey)
            p.drawText(QRect(0, y, self._value_w, h), Qt.AlignRight | Qt.AlignVCenter,
                       fixed(row.max_activation, self._scale))
            lo, hi = self.visible_range(k)
            x = self._value_w + self.GAP
            row.cells = []
            if lo > 0:
                p.drawText(QRect(x, y, self._ellipsis, h), Qt.AlignCenter, "…")
                x += self._ellipsis
            for i in range(lo, hi + 1):
                w = row.widths[i]
                rect = QRect(x, y + 2, w, h - 4)
                a = row.activations[i]
                bg = shade(a / row.scale, base) if a > 0 else base
                if a > 0:  # token boundaries matter where the feature fires; elsewhere text reads as text
                    p.fillRect(rect, bg)
                    p.setPen(sep)
                    p.drawLine(rect.right(), rect.top() + 2, rect.right(), rect.bottom() - 2)
                p.setFont(self._bold if i == row.max_position else font)
                p.setPen(QColor(0, 0, 0) if luminance(bg) > 140 else
                         (text if luminance(text) > 140 else QColor(255, 255, 255)))
                p.drawText(rect.adjusted(self.PAD, 0, -self.PAD, 0), Qt.AlignVCenter | Qt.AlignLeft, row.tokens[i])
                row.cells.append((i, rect))
                x += w
            if hi < len(row.tokens) - 1:
                p.setFont(font)
                p.setPen(grey)
                p.drawText(QRect(x, y, self._ellipsis, h), Qt.AlignCenter, "…")
        p.end()

    def hit(self, pos: QPoint) -> tuple[int, int | None] | None:
        """(row, token index or None for the value column) under `pos`, or None."""
        k = pos.y() // self._row_h if pos.y() >= 0 else -1
        if not 0 <= k < len(self.rows):
            return None
        if pos.x() < self._value_w + self.GAP:
            return k, None
        for i, rect in self.rows[k].cells:
            if rect.left() <= pos.x() <= rect.right():
                return k, i
        return None

    def tooltip_at(self, pos: QPoint) -> str:
        h = self.hit(pos)
        if h is None:
            return ""
        k, i = h
        row = self.rows[k]
        if i is None:
            return f"The context's max activation: {fmt(row.max_activation)}"
        return row.tooltip_for(i)

    def event(self, e) -> bool:
        if e.type() == QEvent.ToolTip:
            tip = self.tooltip_at(e.pos())
            if tip:
                QToolTip.showText(e.globalPos(), tip, self)
            else:
                QToolTip.hideText()
                e.ignore()
            return True
        return super().event(e)
