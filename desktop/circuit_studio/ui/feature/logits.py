"""A feature's direct logit effects: the tokens it promotes or suppresses most, with their effect."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFontMetrics
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QSizePolicy, QTableWidget, QTableWidgetItem

from ...core.graph.display_text import quoted


class LogitTable(QTableWidget):
    """Token / effect, sized to its rows (no inner scrolling)."""

    def __init__(self, title: str, positive: bool, parent=None) -> None:
        super().__init__(0, 2, parent)
        self.positive = positive
        self.setHorizontalHeaderLabels([title, "effect"])
        self.verticalHeader().hide()
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.NoSelection)
        self.setFocusPolicy(Qt.NoFocus)
        self.setShowGrid(False)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        hh = self.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.Stretch)
        hh.setSectionResizeMode(1, QHeaderView.ResizeToContents)
        self.verticalHeader().setDefaultSectionSize(QFontMetrics(self.font()).height() + 4)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

    def set_effects(self, effects) -> None:
        self.setRowCount(len(effects))
        color = QColor(0, 110, 40) if self.positive else QColor(180, 30, 30)
        for r, e in enumerate(effects):
            tok = QTableWidgetItem(quoted(e.token))
            tok.setToolTip(f"token id {e.token_id}")
            val = QTableWidgetItem(f"{e.value:+.3f}")
            val.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            val.setForeground(color)
            self.setItem(r, 0, tok)
            self.setItem(r, 1, val)
        rows = sum(self.rowHeight(r) for r in range(self.rowCount()))
        self.setFixedHeight(self.horizontalHeader().sizeHint().height() + rows + 2 * self.frameWidth() + 2)
