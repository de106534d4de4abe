"""The canvas's two rows above the plot: live node and edge threshold sliders (re-pruning the full graph
kept in memory once a slider rests), the legend, find-by-label and Fit; then how many nodes the
thresholds hide, the edge count, messages and the graph's replacement and completeness scores."""

from __future__ import annotations

from typing import Callable

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QSizePolicy, QSlider, QWidget

from ...core.session.analysis import Analysis
from .style import legend_html

SLIDER_DEBOUNCE_MS = 60  # re-prune once a slider rests this long (or is released)
NODE_SLIDER = (0.50, 1.00, 100)  # min, max, steps per unit
EDGE_SLIDER = (0.80, 1.00, 1000)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


class CanvasToolbar(QObject):
    """The widgets, laid out in `bar` and `info_row` for the canvas to add. The sliders set the
    thresholds of `analysis()`; the canvas connects `find_box` and `fit_button`."""

    def __init__(self, parent: QWidget, analysis: Callable[[], Analysis | None]) -> None:
        super().__init__(parent)
        self._analysis = analysis
        self.node_slider, self.node_value = self._slider(*NODE_SLIDER, (
            "Node threshold: keep the nodes that hold this fraction of the total influence on the "
            "logits (circuit-tracer's node_threshold). Lower it to hide more nodes."))
        self.edge_slider, self.edge_value = self._slider(*EDGE_SLIDER, (
            "Edge threshold: keep the edges that hold this fraction of the total edge score "
            "(circuit-tracer's edge_threshold)."))
        self.find_box = QLineEdit()
        self.find_box.setPlaceholderText("Find node by label…")
        self.find_box.setClearButtonEnabled(True)
        self.find_box.setMaximumWidth(220)
        self.fit_button = QPushButton("Fit")
        self.fit_button.setToolTip("Fit the whole graph in view (wheel zooms, drag pans)")

        bar = QHBoxLayout()
        bar.setSpacing(6)
        for widget in (QLabel("Nodes"), self.node_slider, self.node_value, QLabel("Edges"), self.edge_slider,
                       self.edge_value):
            bar.addWidget(widget)
        bar.addStretch(1)
        bar.addWidget(self.find_box)
        bar.addWidget(self.fit_button)
        self.bar = bar

        self.hidden_label = QLabel()
        self.hidden_label.setToolTip("Nodes the node and edge thresholds hide. Lower them to see more.")
        self.edges_label = QLabel()
        self.message_label = QLabel()
        self.message_label.setStyleSheet("color: #a04000;")
        self.scores_label = QLabel()
        self.scores_label.setToolTip("Replacement and completeness scores of the full (unpruned) graph, "
                                     "as circuit-tracer's compute_graph_scores.")
        self.legend_label = QLabel(legend_html())
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
        self.info_row = row
        # the legend sits in the slider row: one row holding everything was wider than a laptop screen
        bar.insertWidget(bar.count() - 2, self.legend_label)

        self._timer = QTimer(parent, singleShot=True, interval=SLIDER_DEBOUNCE_MS)
        self._timer.timeout.connect(self.apply)

    def _slider(self, lo: float, hi: float, steps: int, tip: str) -> tuple[QSlider, QLabel]:
        s = QSlider(Qt.Orientation.Horizontal)
        s.setRange(round(lo * steps), round(hi * steps))
        s.setMinimumWidth(140)
        s.setToolTip(tip)
        s.valueChanged.connect(self._moved)
        s.sliderReleased.connect(self.apply)
        value = QLabel()
        value.setMinimumWidth(QFontMetrics(value.font()).horizontalAdvance("0.000") + 6)
        return s, value

    def set_enabled(self, on: bool) -> None:
        for w in (self.node_slider, self.edge_slider, self.find_box, self.fit_button):
            w.setEnabled(on)

    def sync(self, a: Analysis) -> None:
        """Show the thresholds of `a` (without re-pruning)."""
        for s, value, steps, label in ((self.node_slider, a.node_threshold, NODE_SLIDER[2], self.node_value),
                                       (self.edge_slider, a.edge_threshold, EDGE_SLIDER[2], self.edge_value)):
            s.blockSignals(True)
            s.setValue(round(value * steps))
            s.blockSignals(False)
            label.setText(f"{value:.2f}" if steps == 100 else f"{value:.3f}")

    def show_counts(self, hidden: dict[str, int], n_edges: int) -> None:
        """What the thresholds keep and hide (`Analysis.hidden_counts()`), and the shown edges."""
        self.hidden_label.setText(f"{_plural(hidden['shown'], 'node')} shown · "
                                  f"{_plural(hidden['features'], 'feature')} and {_plural(hidden['errors'], 'error')}"
                                  " hidden by thresholds")
        self.edges_label.setText(_plural(n_edges, "edge"))

    def _moved(self) -> None:
        node, edge = self._thresholds()
        self.node_value.setText(f"{node:.2f}")
        self.edge_value.setText(f"{edge:.3f}")
        self._timer.start()

    def _thresholds(self) -> tuple[float, float]:
        return self.node_slider.value() / NODE_SLIDER[2], self.edge_slider.value() / EDGE_SLIDER[2]

    def apply(self) -> None:
        """Re-prune now at the sliders' values."""
        self._timer.stop()
        a = self._analysis()
        if a is None:
            return
        node, edge = self._thresholds()
        # a slider showing a clamped model value has not been moved: keep the model's value
        if self.node_slider.value() == round(a.node_threshold * NODE_SLIDER[2]):
            node = a.node_threshold
        if self.edge_slider.value() == round(a.edge_threshold * EDGE_SLIDER[2]):
            edge = a.edge_threshold
        a.set_thresholds(node, edge)
