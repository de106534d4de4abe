"""Graph ▸ Compare graphs…: two graphs of the session side by side, with the ranked diff list between them.

Each side is a `GraphCanvas` on its own `Controller` (its own `Analysis` of the entry's graph, with the
labels of the entry's transcoders), so selecting here does not move the main window's canvas. The diff
list is `core.graph.compare`'s: clicking a row selects its node on both canvases (an edge row selects
its target). Graphs of different transcoder sets cannot be aligned feature by feature: the list then
gives way to what each explains (replacement / completeness and the top nodes by influence).
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDialog, QHBoxLayout, QHeaderView, QLabel, QSplitter,
                               QTableWidget, QTableWidgetItem, QTextBrowser, QVBoxLayout, QWidget)

from ..core.session.analysis import Analysis
from ..core.graph.compare import EDGE, LOGIT, ONLY_A, ONLY_B, Explains, GraphComparison, compare_graphs, describe_row
from ..core.session.workspace import Workspace
from .canvas.view import GraphCanvas
from .controller import Controller

KIND_TEXT = {ONLY_A: "only in A", ONLY_B: "only in B", "changed": "changed", LOGIT: "logit", EDGE: "edge"}
KIND_COLOUR = {ONLY_A: "#c0392b", ONLY_B: "#2471a3", "changed": "#555555", LOGIT: "#7d3c98", EDGE: "#1e8449"}


class CompareView(QDialog):
    """Pick graph A and graph B of `workspace` (`combo_a`, `combo_b`); `comparison` is their
    `GraphComparison`, `diff_table` its rows, `canvas_a` / `canvas_b` the two graphs, `explains_a` /
    `explains_b` what each explains. `select_row(i)` does what clicking row i does."""

    def __init__(self, workspace: Workspace, parent: QWidget | None = None, *, graph_a: int | None = None,
                 graph_b: int | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Compare graphs")
        self.resize(1500, 900)
        self.workspace = workspace
        self.comparison: GraphComparison | None = None
        self.controller_a, self.controller_b = Controller(self), Controller(self)
        self.canvas_a, self.canvas_b = GraphCanvas(self.controller_a), GraphCanvas(self.controller_b)
        self.combo_a, self.combo_b = QComboBox(), QComboBox()
        ids = list(workspace.graphs)
        for combo in (self.combo_a, self.combo_b):
            combo.setMinimumContentsLength(30)
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            for gid in ids:
                d = workspace.describe(gid)
                combo.addItem(f"{d.title} · {d.transcoders or '?'}", gid)
        if graph_a is None:
            graph_a = ids[0] if ids else None
        if graph_b is None:
            graph_b = next((g for g in ids if g != graph_a), graph_a)
        for combo, gid in ((self.combo_a, graph_a), (self.combo_b, graph_b)):
            if gid is not None:
                combo.setCurrentIndex(ids.index(gid))
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.diff_table = QTableWidget(0, 3)
        self.diff_table.setHorizontalHeaderLabels(["Kind", "Node", "What changed"])
        self.diff_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.diff_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.diff_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.diff_table.verticalHeader().hide()
        header = self.diff_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        header.resizeSection(1, 260)
        self.diff_table.cellClicked.connect(lambda row, _col: self.select_row(row))
        self.diff_table.currentCellChanged.connect(lambda row, *_: self.select_row(row) if row >= 0 else None)
        self.explains_a, self.explains_b = QTextBrowser(), QTextBrowser()
        self.explains_row = QWidget()
        ex_layout = QHBoxLayout(self.explains_row)
        ex_layout.setContentsMargins(0, 0, 0, 0)
        ex_layout.addWidget(self.explains_a)
        ex_layout.addWidget(self.explains_b)

        pickers = QHBoxLayout()
        pickers.addWidget(QLabel("A:"))
        pickers.addWidget(self.combo_a, 1)
        pickers.addSpacing(16)
        pickers.addWidget(QLabel("B:"))
        pickers.addWidget(self.combo_b, 1)
        canvases = QSplitter(Qt.Orientation.Horizontal)
        canvases.addWidget(self.canvas_a)
        canvases.addWidget(self.canvas_b)
        bottom = QWidget()
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(self.summary)
        bl.addWidget(self.diff_table, 1)
        bl.addWidget(self.explains_row, 1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(canvases)
        split.addWidget(bottom)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(pickers)
        layout.addWidget(split, 1)
        self.combo_a.currentIndexChanged.connect(self.refresh)
        self.combo_b.currentIndexChanged.connect(self.refresh)
        self.refresh()

    # ---------------------------------------------------------------- model -> view
    def _analysis(self, gid: int) -> Analysis:
        ws = self.workspace
        e = ws.entry(gid)
        if gid == ws.current_id and ws.analysis is not None:  # the thresholds the analyst is looking at
            a = ws.analysis
            return Analysis(e.graph, node_threshold=a.node_threshold, edge_threshold=a.edge_threshold,
                            labels=dict(a.labels), auto_label=a.auto_label)
        return Analysis(e.graph, labels=ws.labels_for(e.binding))

    def refresh(self) -> None:
        """Compare the two picked graphs and show them."""
        ga, gb = self.combo_a.currentData(), self.combo_b.currentData()
        if ga is None or gb is None:
            self.summary.setText("The session needs graphs to compare: trace two prompts first.")
            return
        aa, ab = self._analysis(ga), self._analysis(gb)
        self.controller_a.set_analysis(aa)
        self.controller_b.set_analysis(ab)
        ta, tb = (self.workspace.entry(g).binding.transcoders for g in (ga, gb))
        aligned = (ta.identity == tb.identity) if ta is not None and tb is not None else None
        titles = tuple(self.workspace.entry(g).display_title for g in (ga, gb))
        self.comparison = cmp = compare_graphs(aa.graph, ab.graph, pruner_a=aa.pruner, pruner_b=ab.pruner,
                                               titles=titles, aligned=aligned)
        self._fill_table(cmp)
        self._fill_explains(cmp)

    def _fill_table(self, cmp: GraphComparison) -> None:
        t = self.diff_table
        t.blockSignals(True)
        t.setRowCount(len(cmp.rows))
        for i, row in enumerate(cmp.rows):
            kind = QTableWidgetItem(KIND_TEXT.get(row.kind, row.kind))
            kind.setForeground(QColor(KIND_COLOUR.get(row.kind, "#333")))
            name = QTableWidgetItem(row.label)
            name.setToolTip(row.label)
            what = QTableWidgetItem(describe_row(row))
            what.setToolTip(describe_row(row))
            for col, item in enumerate((kind, name, what)):
                t.setItem(i, col, item)
        t.blockSignals(False)
        t.setVisible(cmp.aligned)
        if cmp.aligned:
            n = {k: len(cmp.of_kind(k)) for k in (ONLY_A, ONLY_B)}
            self.summary.setText(f"{len(cmp.aligned_positions)} positions align; features keyed by (layer, "
                                 f"position, feature) there and by (layer, feature) in the tokens that differ. "
                                 f"{n[ONLY_A]} features only in A, {n[ONLY_B]} only in B. Most different first; "
                                 "click a row to select it on both canvases.")
        else:
            self.summary.setText(f"Features cannot be aligned ({cmp.reason}): what each graph explains.")

    def _fill_explains(self, cmp: GraphComparison) -> None:
        for browser, ex, side in ((self.explains_a, cmp.explains[0], "A"), (self.explains_b, cmp.explains[1], "B")):
            browser.setHtml(explains_html(ex, side))

    # ---------------------------------------------------------------- view -> model
    def select_row(self, i: int) -> None:
        """Select row `i`'s node on both canvases (None where the graph lacks it)."""
        if self.comparison is None or not 0 <= i < len(self.comparison.rows):
            return
        row = self.comparison.rows[i]
        for controller, node in ((self.controller_a, row.node_a), (self.controller_b, row.node_b)):
            a = controller.analysis
            if a is not None:
                a.select(node)

    def closeEvent(self, event) -> None:  # noqa: N802
        for c in (self.canvas_a, self.canvas_b):
            c.shutdown()
        for c in (self.controller_a, self.controller_b):
            c.shutdown()
        super().closeEvent(event)


def explains_html(ex: Explains, side: str) -> str:
    import html

    rows = "".join(f"<tr><td>{html.escape(label)}</td><td align='right'>{infl:.3g}</td></tr>"
                   for _, label, infl in ex.top_nodes)
    return (f"<b>{side}: {html.escape(ex.title)}</b><br>{html.escape(ex.transcoders or '?')}<br>"
            f"<b>Replacement {ex.replacement:.2f} · Completeness {ex.completeness:.2f}</b> · errors carry "
            f"{ex.error_share:.0%} of the influence<br><table width='100%'><tr><th align='left'>Top nodes</th>"
            f"<th align='right'>influence</th></tr>{rows}</table>")
