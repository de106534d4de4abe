"""The intervention pane's outputs: next-token bars before and after, the strength sweep, and the default
and steered continuations. A view of the steering model's results (`core.interventions.steering.Steering.result`, or
the `SavedOutputs` of a session opened without its model); it computes nothing."""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QComboBox, QGridLayout, QHBoxLayout, QLabel, QPushButton, QSplitter, QTextEdit, \
    QVBoxLayout, QWidget

from ..core.interventions.steering import AFTER_COLOUR, SWEEP_POINTS, SavedOutputs, SweepResult, continuation_html, show_token

TOP_K = 8  # bars in the next-token chart, at most
BAR_SLOT_PX = 56  # fewer bars when the chart is narrow: a token label needs about this much room
BEFORE_COLOUR = "#8da0b8"
TEXT = "#303030"
STEERED_CAPTION = f"<b>Steered</b> <span style='color:{AFTER_COLOUR}'>(changed tokens)</span>"


def _title(text: str) -> str:
    return text if len(text) <= 60 else text[:59] + "…"


class OutputsView(QWidget):
    """Bars, sweep and continuations (see the module docstring)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._bar_tokens: list[int] = []
        self._bar_labels: list[str] = []  # their texts, elided to the bars' width when drawn
        self._bar_source = None  # what the bars show: an InterventionUpdate or SavedOutputs (redrawn on resize)
        self.last_sweep: SweepResult | None = None

        self.bar_plot = pg.PlotWidget(background="w")
        bp = self.bar_plot.getPlotItem()
        bp.setTitle("Next token: before vs after", color=TEXT, size="9pt")
        bp.setLabel("left", "probability", color=TEXT)
        bp.hideButtons()
        bp.setMenuEnabled(False)
        bp.setMouseEnabled(x=False, y=False)
        bp.showGrid(y=True, alpha=0.25)
        bp.getAxis("left").enableAutoSIPrefix(False)
        bp.getAxis("bottom").setHeight(QFontMetrics(self.font()).height() + 16)  # room for the token labels
        bp.addLegend(offset=(-8, 4), labelTextColor=TEXT, brush=pg.mkBrush(255, 255, 255, 220))
        self._before_bars = pg.BarGraphItem(x=[], height=[], width=0.38, brush=BEFORE_COLOUR, pen=None, name="before")
        self._after_bars = pg.BarGraphItem(x=[], height=[], width=0.38, brush=AFTER_COLOUR, pen=None, name="after")
        bp.addItem(self._before_bars)
        bp.getViewBox().sigResized.connect(self._bars_resized)
        bp.addItem(self._after_bars)
        self._bar_texts: list[pg.TextItem] = []

        self.sweep_plot = pg.PlotWidget(background="w")
        sp = self.sweep_plot.getPlotItem()
        sp.setTitle("Strength sweep", color=TEXT, size="9pt")
        sp.setLabel("bottom", "multiple of activation", color=TEXT)
        sp.setLabel("left", "probability", color=TEXT)
        sp.hideButtons()
        sp.setMenuEnabled(False)
        sp.showGrid(x=True, y=True, alpha=0.25)
        for axis in ("left", "bottom"):
            sp.getAxis(axis).enableAutoSIPrefix(False)
        self._sweep_curve = sp.plot([], [], pen=pg.mkPen(AFTER_COLOUR, width=2), symbol="o", symbolSize=5,
                                    symbolBrush=AFTER_COLOUR, symbolPen=None)
        self._sweep_line = pg.InfiniteLine(angle=90, pen=pg.mkPen("#333333", width=1, style=Qt.PenStyle.DashLine))
        self._sweep_line.setVisible(False)
        sp.addItem(self._sweep_line)
        self._sweep_mark = pg.ScatterPlotItem(size=11, brush=pg.mkBrush(255, 255, 255, 0), pen=pg.mkPen("#111", width=2))
        sp.addItem(self._sweep_mark)
        self.sweep_row_combo = QComboBox()
        self.sweep_row_combo.setToolTip("Which row's multiple to sweep (the other rows stay as they are)")
        self.sweep_row_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.sweep_row_combo.setMinimumContentsLength(10)
        self.sweep_token_combo = QComboBox()
        self.sweep_token_combo.setToolTip("Whose probability to plot (the graph's logit targets)")
        self.sweep_button = QPushButton("Sweep")
        self.sweep_button.setToolTip(f"Run the row at {SWEEP_POINTS} multiples across its slider's range and plot "
                                     "the token's probability")
        sweep_bar = QHBoxLayout()
        sweep_bar.setSpacing(4)
        sweep_bar.addWidget(self.sweep_row_combo, 1)
        sweep_bar.addWidget(self.sweep_token_combo, 1)
        sweep_bar.addWidget(self.sweep_button)
        sweep_box = QWidget()
        sv = QVBoxLayout(sweep_box)
        sv.setContentsMargins(0, 0, 0, 0)
        sv.setSpacing(2)
        sv.addWidget(self.sweep_plot, 1)
        sv.addLayout(sweep_bar)

        self.default_text = QTextEdit()
        self.steered_text = QTextEdit()
        for t in (self.default_text, self.steered_text):
            t.setReadOnly(True)
            t.setMinimumHeight(QFontMetrics(t.font()).height() * 3)
        texts = QGridLayout()
        texts.setSpacing(4)
        self.default_caption = QLabel("<b>Default</b>")
        self.steered_caption = QLabel(STEERED_CAPTION)
        texts.addWidget(self.default_caption, 0, 0)
        texts.addWidget(self.steered_caption, 0, 1)
        texts.addWidget(self.default_text, 1, 0)
        texts.addWidget(self.steered_text, 1, 1)

        plots = self.plots_split = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.bar_plot)
        plots.addWidget(sweep_box)
        plots.setSizes([500, 400])
        rv = QVBoxLayout(self)
        rv.setContentsMargins(4, 4, 4, 4)
        rv.setSpacing(4)
        rv.addWidget(plots, 3)
        rv.addLayout(texts, 1)

    # ---------------------------------------------------------------- results
    def clear(self) -> None:
        self._bar_source = None
        self._before_bars.setOpts(x=[], height=[])
        self._after_bars.setOpts(x=[], height=[])
        for t in self._bar_texts:
            self.bar_plot.getPlotItem().removeItem(t)
        self._bar_texts = []
        self._bar_tokens = []
        self._bar_labels = []
        self.bar_plot.getPlotItem().getAxis("bottom").setTicks([[]])
        self.default_text.clear()
        self.steered_text.clear()
        self.steered_caption.setText(STEERED_CAPTION)
        self.clear_sweep()

    def clear_sweep(self) -> None:
        self.last_sweep = None
        self._sweep_curve.setData([], [])
        self._sweep_mark.setData([], [])
        self._sweep_line.setVisible(False)
        self.sweep_plot.getPlotItem().setTitle("Strength sweep", color=TEXT, size="9pt")

    @property
    def bar_tokens(self) -> list[int]:
        """The token ids of the bars, left to right."""
        return list(self._bar_tokens)

    def show_result(self, result) -> None:
        """An `InterventionUpdate`: its bars, and its continuations once they are computed."""
        self._bar_source = result
        top = result.top[:self._bar_count()]
        self._bar_tokens = [t.id for t in top]
        self._draw_bars([show_token(t.token) for t in top], np.array([t.before for t in top], np.float64),
                        np.array([t.after for t in top], np.float64))
        self.show_texts(result)

    def show_saved(self, saved: SavedOutputs) -> None:
        """Outputs a session kept, until the model is loaded and they are recomputed."""
        self._bar_source = saved
        self._bar_tokens = []
        bars = saved.bars[:self._bar_count()]
        if bars:
            labels, before, after = zip(*bars)
            self._draw_bars(list(labels), np.array(before, dtype=np.float64), np.array(after, dtype=np.float64))
        self.default_text.setHtml(saved.default_html)
        self.steered_text.setHtml(saved.steered_html)

    def _draw_bars(self, labels: list[str], before: np.ndarray, after: np.ndarray) -> None:
        """Bars for `labels` with next-token probabilities `before` and `after` (float [K] each)."""
        x = np.arange(len(labels), dtype=np.float64)
        self._before_bars.setOpts(x=x - 0.2, height=before)
        self._after_bars.setOpts(x=x + 0.2, height=after)
        self._bar_labels = list(labels)
        self._fit_bar_labels()
        pi = self.bar_plot.getPlotItem()
        for t in self._bar_texts:
            pi.removeItem(t)
        self._bar_texts = []
        for i, (b, a) in enumerate(zip(np.asarray(before).tolist(), np.asarray(after).tolist())):
            if abs(a - b) >= 0.005:
                item = pg.TextItem(f"{a - b:+.2f}", color=AFTER_COLOUR if a > b else "#1f5fbf", anchor=(0.5, 1.0))
                item.setPos(i + 0.2, a)
                pi.addItem(item)
                self._bar_texts.append(item)
        top_p = float(max(np.max(before, initial=0), np.max(after, initial=0)))
        pi.setXRange(-0.6, max(len(labels) - 0.4, 0.6), padding=0)
        pi.setYRange(0, max(top_p * 1.18, 0.05), padding=0)

    def _bar_count(self) -> int:
        return int(np.clip(self.bar_plot.getPlotItem().getViewBox().width() // BAR_SLOT_PX, 3, TOP_K))

    def _bars_resized(self) -> None:
        src = self._bar_source
        available = len(src.top) if hasattr(src, "top") else len(getattr(src, "bars", ()))
        if src is not None and self._bar_labels and len(self._bar_labels) != min(self._bar_count(), available):
            if isinstance(src, SavedOutputs):
                self.show_saved(src)
            else:
                self.show_result(src)
        else:
            self._fit_bar_labels()

    def _fit_bar_labels(self) -> None:
        """Token labels under the bars, each elided to its bar's slot so that neighbours never overlap."""
        labels = self._bar_labels
        if not labels:
            return
        axis = self.bar_plot.getPlotItem().getAxis("bottom")
        slot = self.bar_plot.getPlotItem().getViewBox().width() / max(len(labels), 1) - 6
        fm = QFontMetrics(axis.style.get("tickFont") or self.font())
        axis.setTicks([[(float(i), fm.elidedText(t, Qt.TextElideMode.ElideRight, max(int(slot), 12)))
                        for i, t in enumerate(labels)]])

    def show_texts(self, result) -> None:
        """The continuations; while the current state's are being computed the previous ones stay, marked."""
        if result.continuation_pending:
            self.steered_caption.setText(STEERED_CAPTION + " <span style='color:#888'>(updating…)</span>")
            return
        self.steered_caption.setText(STEERED_CAPTION)
        self.default_text.setHtml(continuation_html(result.default_text, None, False))
        self.steered_text.setHtml(continuation_html(result.steered_text, result.default_text, True))

    # ---------------------------------------------------------------- sweep
    def set_sweep_choices(self, rows, graph) -> None:
        """The rows one can sweep and the graph's logit targets whose probability to plot."""
        current = self.sweep_row_combo.currentIndex()
        self.sweep_row_combo.blockSignals(True)
        self.sweep_row_combo.clear()
        for i, r in enumerate(rows):
            self.sweep_row_combo.addItem(f"{i + 1}. {r.name}", i)
        self.sweep_row_combo.setCurrentIndex(min(max(current, 0), len(rows) - 1))
        self.sweep_row_combo.blockSignals(False)
        if graph is not None and self.sweep_token_combo.property("graph") != id(graph):
            self.sweep_token_combo.clear()
            self.sweep_token_combo.setProperty("graph", id(graph))
            for tid, tok, p in zip(graph.logit_token_ids.tolist(), graph.logit_tokens, graph.logit_probabilities.tolist()):
                self.sweep_token_combo.addItem(f"p({show_token(tok)})  [{p:.2f}]", int(tid))
        elif graph is None:
            self.sweep_token_combo.clear()
            self.sweep_token_combo.setProperty("graph", None)

    def show_sweep(self, result: SweepResult, rows, stale: bool) -> None:
        self.last_sweep = result
        row = next((i for i, r in enumerate(rows) if r.key == result.row_key), None)
        if row is not None:  # the controls name what is plotted
            self.sweep_row_combo.setCurrentIndex(row)
            k = self.sweep_token_combo.findData(result.token_id)
            if k >= 0:
                self.sweep_token_combo.setCurrentIndex(k)
        self._sweep_curve.setData(list(result.values), list(result.probabilities))
        self.sweep_plot.getPlotItem().enableAutoRange()
        self.move_sweep_mark(rows, stale)

    def move_sweep_mark(self, rows, stale: bool) -> None:
        """The current multiple of the swept row: a dashed line, and a ring on the curve."""
        s = self.last_sweep
        row = next((r for r in rows if s is not None and r.key == s.row_key), None)
        if s is None or row is None:
            self._sweep_line.setVisible(False)
            self._sweep_mark.setData([], [])
            return
        m = row.multiple
        self._sweep_line.setPos(m)
        self._sweep_line.setVisible(True)
        self._sweep_mark.setData([m], [float(np.interp(m, s.values, s.probabilities))])
        title = html.escape(_title(f"p({show_token(s.token)}) vs multiple of {s.row_name}"))
        self.sweep_plot.getPlotItem().setTitle(title + (" <i>(other settings changed: sweep again)</i>" if stale else ""),
                                               color=TEXT, size="9pt")
