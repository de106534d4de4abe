"""Find feature (Ctrl+Shift+F): search the loaded feature index by label and top-example text as you type
(`core.features.search`), show the chosen feature's dashboard in the feature pane (graph or no graph), and
list the session's graphs where it is active; double-click one to open it with the feature's node selected.

The search index is built on a background thread the first time (about a second for the demo; cached
next to a big index file), then every keystroke is one ranked SQLite query of a few milliseconds."""

from __future__ import annotations

import html
import threading
import time
import weakref

import numpy as np
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QDialog, QLabel, QLineEdit, QListWidget, QListWidgetItem, QSplitter, QVBoxLayout, QWidget

from ...core.graph.display_text import feature_name, quoted
from ...core.features.search import FeatureSearch, graphs_with_feature

_SEARCHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def searcher_for(index) -> FeatureSearch:
    """One `FeatureSearch` per open feature index, made on first use."""
    s = _SEARCHES.get(index)
    if s is None:
        s = _SEARCHES[index] = FeatureSearch(index)
    return s


class FindFeatureDialog(QDialog):
    """See the module docstring. For tests: `search_box`, `results` (items carry (layer, feature)),
    `graphs` (items carry a graph id), `status`, `hits` (the last `FeatureHit`s), `search_now(text)`,
    `choose(row)`, `open_graph(row)`."""

    def __init__(self, controller, feature_pane, parent: QWidget | None = None, raise_pane=None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.feature_pane = feature_pane
        self.raise_pane = raise_pane or (lambda: None)
        self.setWindowTitle("Find feature")
        self.hits = []
        self._searcher: FeatureSearch | None = None
        self._pending: str | None = None
        self.search_box = QLineEdit()
        self.search_box.setPlaceholderText("Search labels and top examples (e.g. Sacramento, capital of), or L0#98")
        self.search_box.setClearButtonEnabled(True)
        self.search_box.textChanged.connect(self.search_now)
        self.search_box.returnPressed.connect(lambda: self.choose(0) if self.results.count() else None)
        self.results = QListWidget()
        self.results.currentRowChanged.connect(self.choose)
        self.graphs = QListWidget()
        self.graphs.itemDoubleClicked.connect(lambda it: self.open_graph(self.graphs.row(it)))
        self.graphs_title = QLabel("Active in this session's graphs:")
        self.status = QLabel("")
        self.status.setStyleSheet("color: #666;")
        bottom = QWidget()
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(self.graphs_title)
        bl.addWidget(self.graphs)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.results)
        split.addWidget(bottom)
        split.setSizes([320, 120])
        lay = QVBoxLayout(self)
        lay.addWidget(self.search_box)
        lay.addWidget(split, 1)
        lay.addWidget(self.status)
        self.resize(520, 520)
        self._poll = QTimer(self)
        self._poll.setInterval(40)
        self._poll.timeout.connect(self._check_ready)
        controller.model_changed.connect(self._index_changed)
        self._index_changed()

    # ---- the search index ----
    def _index_changed(self) -> None:
        index = self.controller.feature_index
        self._searcher = searcher_for(index) if index is not None else None
        if self._searcher is not None and not self._searcher.ready:
            self.status.setText("Preparing the search index…")
            threading.Thread(target=self._searcher.prepare, daemon=True, name="feature search index").start()
            self._poll.start()
        self.search_now(self.search_box.text())

    def _check_ready(self) -> None:
        if self._searcher is None or self._searcher.ready:
            self._poll.stop()
            self.search_now(self.search_box.text())

    @property
    def ready(self) -> bool:
        return self._searcher is not None and self._searcher.ready

    # ---- searching ----
    def search_now(self, text: str) -> None:
        """Search for `text` (what typing does); while the search index is being built, once it is ready."""
        s = self._searcher
        if s is None:
            self._show([], "No feature index is loaded: open one (File ▸ Open feature index, or the demo).")
            return
        if not s.ready:
            self._pending = text
            self.status.setText("Preparing the search index…")
            return
        t0 = time.perf_counter()
        hits = s.search(text)
        ms = (time.perf_counter() - t0) * 1000
        self._show(hits, f"{len(hits)} feature{'s' if len(hits) != 1 else ''} in {ms:.0f} ms" if text.strip() else
                   "Type to search the feature index.")

    def _show(self, hits, status: str) -> None:
        self.hits = hits
        self.results.blockSignals(True)
        self.results.clear()
        for h in hits:
            text = f"{feature_name(h.layer, h.feature)}  {h.label}"
            if h.excerpt:
                text += f"\n    {h.excerpt}"
            it = QListWidgetItem(text)
            it.setData(Qt.ItemDataRole.UserRole, (h.layer, h.feature))
            it.setToolTip(html.escape(text))
            self.results.addItem(it)
        self.results.blockSignals(False)
        self.graphs.clear()
        self.status.setText(status)

    def choose(self, row: int) -> None:
        """Show result `row` in the feature pane and list the graphs where it is active."""
        if not 0 <= row < self.results.count():
            return
        layer, feat = self.results.item(row).data(Qt.ItemDataRole.UserRole)
        if self.results.currentRow() != row:
            self.results.blockSignals(True)
            self.results.setCurrentRow(row)
            self.results.blockSignals(False)
        self.feature_pane.show_index_feature(layer, feat)
        self.raise_pane()
        self.graphs.clear()
        active = graphs_with_feature(self.controller.workspace, layer, feat)
        for a in active:
            toks = ", ".join(quoted(t) for t in a.tokens[:4]) + ("…" if len(a.tokens) > 4 else "")
            it = QListWidgetItem(f"{a.title}  — at {toks}, max {a.max_activation:.3g}{'' if a.is_node else ' (no node)'}")
            it.setData(Qt.ItemDataRole.UserRole, (a.graph_id, layer, feat))
            self.graphs.addItem(it)
        self.graphs_title.setText(f"Active in {len(active)} of this session's {len(self.controller.workspace.graphs)} "
                                  f"graph{'s' if len(self.controller.workspace.graphs) != 1 else ''}:")

    def open_graph(self, row: int) -> None:
        """Make graph `row` of the list current and select the feature's strongest node in it."""
        if not 0 <= row < self.graphs.count():
            return
        gid, layer, feat = self.graphs.item(row).data(Qt.ItemDataRole.UserRole)
        ws = self.controller.workspace
        if ws.current_id != gid:
            ws.set_current(gid)
        a = self.controller.analysis
        if a is None:
            return
        g = a.graph
        af = g.active_features
        sel = np.asarray(g.selected_features)
        nodes = np.flatnonzero((af[sel, 0] == layer) & (af[sel, 2] == feat))
        if nodes.size:
            vals = np.asarray(g.activation_values)[sel[nodes]]
            a.select(int(nodes[int(np.argmax(vals))]))
