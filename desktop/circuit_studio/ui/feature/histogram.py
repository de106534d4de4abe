"""A feature's activation histogram over the index's corpus, with this prompt's activation marked."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor

from .style import ACT_COLOR, LINE_COLOR

HEIGHT_PX = 170


class ActivationHistogram(pg.PlotWidget):
    """Bars of how often the feature takes each non-zero activation (`bars`), and a dashed line at this
    prompt's activation (`prompt_line`) with its caption; on a `background` of the pane's base colour."""

    def __init__(self, background: QColor, parent=None) -> None:
        super().__init__(parent)
        self.setFixedHeight(HEIGHT_PX)
        self.setBackground(background)
        self.setMenuEnabled(False)
        self.hideButtons()
        self.setMouseEnabled(x=False, y=False)
        self.getPlotItem().setLabel("bottom", "activation")
        self.getPlotItem().setLabel("left", "tokens")
        self.setToolTip("How often the feature takes each non-zero activation on the corpus; the blue "
                        "line is its activation on this prompt.")
        self.bars = pg.BarGraphItem(x0=[0], x1=[1], height=[0], brush=pg.mkBrush(ACT_COLOR),
                                    pen=pg.mkPen(QColor(200, 90, 0), width=0.5))
        self.prompt_line = pg.InfiniteLine(pos=0, angle=90, pen=pg.mkPen(LINE_COLOR, width=2, style=Qt.DashLine))
        self.prompt_text = pg.TextItem("this prompt", color=LINE_COLOR, anchor=(1.05, 0))
        for item in (self.bars, self.prompt_line, self.prompt_text):
            self.addItem(item)

    def show_histogram(self, histogram, activation: float | None) -> None:
        """Draw `histogram` (a FeatureDetails histogram: `edges`, `counts`) and mark `activation`."""
        edges, counts = np.asarray(histogram.edges, float), np.asarray(histogram.counts, float)
        if len(counts):
            self.bars.setOpts(x0=edges[:-1], x1=edges[1:], height=counts)
        act = float(activation or 0.0)
        self.prompt_line.setPos(act)
        top = float(counts.max()) if len(counts) and counts.max() > 0 else 1.0
        self.prompt_text.setPos(act, top)
        self.prompt_text.setAnchor((1.05, 0) if act > 0.6 * max(edges[-1] if len(edges) else 1.0, act) else
                                   (-0.05, 0))
        right = max(float(edges[-1]) if len(edges) else 1.0, act) or 1.0
        self.setXRange(0, right * 1.03, padding=0)
        self.setYRange(0, top * 1.08, padding=0)
