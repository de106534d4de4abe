"""Node connections: the selected node's direct inputs and outputs, split by sign, largest first.

What the circuit-tracer frontend and Neuronpedia show in their top-right panel, with two additions:
the share of each connection is stated exactly (see below) and connections hidden by pruning are
counted, never silently dropped (circuit-tracer issue #77).

Weights are entries of the adjacency matrix A (rows = targets, columns = sources):

* inputs of the selected node n: sources s with A[n, s] != 0; weight A[n, s];
  share = |A[n, s]| / Σ_s' |A[n, s']| (the part of n's total input that s provides);
* outputs of n: targets t with A[t, n] != 0; weight A[t, n];
  share = |A[t, n]| / Σ_s' |A[t, s']| (the part of t's total input that comes from n).

Shares use the full (unpruned) matrix, so the inputs' shares sum to 1 whatever the filter shows.
Click a row to select that node, Ctrl-click to pin it, Enter selects the current row.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QRect, Qt, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (QCheckBox, QHBoxLayout, QHeaderView, QLabel, QPushButton, QSplitter,
                               QStackedWidget, QStyledItemDelegate, QTableView, QVBoxLayout, QWidget)

from ..core.session.analysis import Analysis, Aspect
from ..core.graph.adjacency import Adjacency
from ..core.graph.display_text import layer_name
from ..core.graph.attribution_graph import NodeKind
from .canvas.style import NEGATIVE_COLOR, POSITIVE_COLOR

TOP_N = 50  # rows per list unless "Show all" is on
EMPTY_TEXT = "Click a node on the graph to see its connections."

# One look per node kind, shared with the subgraph pane: (glyph, fill colour, pyqtgraph symbol).
KIND_STYLE: dict[NodeKind, tuple[str, str, str]] = {
    NodeKind.FEATURE: ("●", "#4a90c2", "o"),
    NodeKind.ERROR: ("◆", "#9e9e9e", "d"),
    NodeKind.TOKEN: ("■", "#5d6d7e", "s"),
    NodeKind.LOGIT: ("▲", "#e08a2c", "t1"),
}

NODE_ROLE = Qt.ItemDataRole.UserRole + 1  # int: the row's node index
VALUE_ROLE = Qt.ItemDataRole.UserRole + 2  # float: weight / share column's raw value

INPUTS_POS, INPUTS_NEG, OUTPUTS_POS, OUTPUTS_NEG = "inputs+", "inputs-", "outputs+", "outputs-"
LISTS = (INPUTS_POS, INPUTS_NEG, OUTPUTS_POS, OUTPUTS_NEG)
_TITLES = {INPUTS_POS: "Inputs +", INPUTS_NEG: "Inputs −", OUTPUTS_POS: "Outputs +", OUTPUTS_NEG: "Outputs −"}
INPUT_SHARE_TIP = ("Share of the selected node's total input that this source provides:\n"
                   "|A[selected, source]| / Σ |A[selected, :]| (unpruned graph).")
OUTPUT_SHARE_TIP = ("Share of this target's total input that comes from the selected node:\n"
                    "|A[target, selected]| / Σ |A[target, :]| (unpruned graph).")


# ---- the numbers (no Qt) ----

@dataclass(frozen=True)
class Connections:
    """One direction's connections of a node, largest |weight| first. Arrays have one entry per row."""

    nodes: np.ndarray  # int64 [R]
    weights: np.ndarray  # float32 [R] signed direct effect
    shares: np.ndarray  # float64 [R] see the module docstring
    n_hidden_pos: int  # positive connections left out because `keep` hid the other end
    n_hidden_neg: int  # negative ones


def node_connections(adjacency: Adjacency, node: int, *, inputs: bool, keep: np.ndarray | None = None) -> Connections:
    """The inputs (`inputs=True`) or outputs of `node`; `keep` (bool [N]) filters the other end."""
    abs_sums = adjacency.abs_row_sums(np.float64)  # summed once per graph, shared with pruning
    line = adjacency.row(node) if inputs else adjacency.column(node)
    others = np.flatnonzero(line)
    others = others[others != node]
    n_hidden_pos = n_hidden_neg = 0
    if keep is not None:
        kept = keep[others]
        n_hidden_pos = int((line[others[~kept]] > 0).sum())
        n_hidden_neg = int((~kept).sum()) - n_hidden_pos
        others = others[kept]
    weights = line[others].astype(np.float32)
    denom = np.full(others.shape, abs_sums[node]) if inputs else abs_sums[others]
    shares = np.abs(weights.astype(np.float64)) / np.maximum(denom, 1e-30)
    order = np.lexsort((others, -np.abs(weights)))  # |weight| descending, then node index
    return Connections(others[order].astype(np.int64), weights[order], shares[order], n_hidden_pos, n_hidden_neg)


# ---- Qt model and view ----

class ConnectionsModel(QAbstractTableModel):
    """Rows of one list (e.g. "Inputs +"): kind glyph, node label, layer/position, weight, share."""

    KIND, NODE, WHERE, WEIGHT, SHARE = range(5)
    HEADERS = ("", "Node", "Layer · pos", "Weight", "Share")

    def __init__(self, inputs: bool, parent=None) -> None:
        super().__init__(parent)
        self.inputs = inputs
        self.analysis: Analysis | None = None
        self.nodes = np.zeros(0, dtype=np.int64)
        self.weights = np.zeros(0, dtype=np.float32)
        self.shares = np.zeros(0, dtype=np.float64)
        self._labels: dict[int, str] = {}  # label_of is looked up lazily (it may ask the feature index)
        self._bold = QFont()
        self._bold.setBold(True)

    def set_rows(self, analysis: Analysis | None, nodes: np.ndarray, weights: np.ndarray,
                 shares: np.ndarray) -> None:
        self.beginResetModel()
        self.analysis, self.nodes, self.weights, self.shares = analysis, nodes, weights, shares
        self._labels.clear()
        self.endResetModel()

    def refresh_labels(self) -> None:
        """Labels or pins changed: same rows, new text and fonts."""
        self._labels.clear()
        if self.rowCount():
            self.dataChanged.emit(self.index(0, 0), self.index(self.rowCount() - 1, self.columnCount() - 1))

    def node_at(self, row: int) -> int:
        return int(self.nodes[row])

    def label(self, row: int) -> str:
        node = int(self.nodes[row])
        if node not in self._labels:
            self._labels[node] = self.analysis.label_of(node)
        return self._labels[node]

    # -- QAbstractTableModel --
    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else int(self.nodes.shape[0])

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(self.HEADERS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            if section == self.SHARE:
                return INPUT_SHARE_TIP if self.inputs else OUTPUT_SHARE_TIP
            if section == self.WEIGHT:
                return ("Direct effect of this source on the selected node, A[selected, source]." if self.inputs
                        else "Direct effect of the selected node on this target, A[target, selected].")
            if section == self.KIND:
                return "Node kind: ● feature, ◆ error, ■ token embedding, ▲ output logit"
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or self.analysis is None or not 0 <= index.row() < self.rowCount():
            return None
        row, col = index.row(), index.column()
        node = int(self.nodes[row])
        graph = self.analysis.graph
        if role == Qt.ItemDataRole.DisplayRole:
            if col == self.KIND:
                return KIND_STYLE[graph.kind_of(node)][0]
            if col == self.NODE:
                return self.label(row)
            if col == self.WHERE:
                info = self.analysis.info(node)
                return f"{layer_name(info.layer, graph.n_layers)} @{info.position} {info.token!r}"
            if col == self.WEIGHT:
                return f"{float(self.weights[row]):+.3g}"
            if col == self.SHARE:
                return f"{100 * float(self.shares[row]):.1f}%"
        elif role == NODE_ROLE:
            return node
        elif role == VALUE_ROLE:
            if col == self.WEIGHT:
                return float(self.weights[row])
            if col == self.SHARE:
                return float(self.shares[row])
        elif role == Qt.ItemDataRole.ForegroundRole:
            if col == self.KIND:
                return QColor(KIND_STYLE[graph.kind_of(node)][1])
            if col == self.WEIGHT:
                return QColor(POSITIVE_COLOR if self.weights[row] > 0 else NEGATIVE_COLOR)
        elif role == Qt.ItemDataRole.TextAlignmentRole:
            if col in (self.WEIGHT, self.SHARE):
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if col == self.KIND:
                return int(Qt.AlignmentFlag.AlignCenter)
        elif role == Qt.ItemDataRole.FontRole:
            if col == self.NODE and node in self.analysis.pinned:
                return self._bold
        elif role == Qt.ItemDataRole.ToolTipRole:
            info = self.analysis.info(node)
            pinned = "\nPinned" if node in self.analysis.pinned else ""
            kept = "" if self.analysis.pruned.node_mask[node] else "\nHidden by pruning"
            act = f"\nActivation {info.activation:.3g}" if info.activation is not None else ""
            return (f"{self.label(row)}\n{info.kind.value}, {layer_name(info.layer, graph.n_layers)}, "
                    f"position {info.position} {info.token!r}{act}\nWeight {float(self.weights[row]):+.4g}, "
                    f"share {100 * float(self.shares[row]):.2f}%{pinned}{kept}\n"
                    "Click to select · Ctrl-click to pin")
        return None

    def flags(self, index):
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable


class _ShareBarDelegate(QStyledItemDelegate):
    """Draws the share as a faint bar behind the percentage."""

    def __init__(self, color: str, parent=None) -> None:
        super().__init__(parent)
        self.color = QColor(color)
        self.color.setAlpha(60)

    def paint(self, painter, option, index) -> None:
        share = index.data(VALUE_ROLE)
        if share is not None:
            r = option.rect
            painter.fillRect(QRect(r.x() + 1, r.y() + 2, max(1, int((r.width() - 2) * min(share, 1.0))),
                                   r.height() - 4), self.color)
        super().paint(painter, option, index)


class ConnectionsView(QTableView):
    """A compact table whose clicks say which node and whether Ctrl was held."""

    node_clicked = Signal(int, bool)  # node, ctrl (pin)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._press_modifiers = Qt.KeyboardModifier.NoModifier
        self.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QTableView.SelectionMode.SingleSelection)
        self.setEditTriggers(QTableView.EditTrigger.NoEditTriggers)
        self.setShowGrid(False)
        self.setAlternatingRowColors(True)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.setMouseTracking(True)
        self.verticalHeader().hide()
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.clicked.connect(self._on_clicked)

    def setModel(self, model) -> None:  # noqa: N802 - Qt name
        super().setModel(model)
        h = self.horizontalHeader()
        h.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        h.setSectionResizeMode(ConnectionsModel.NODE, QHeaderView.ResizeMode.Stretch)
        h.setHighlightSections(False)
        width = self.fontMetrics().horizontalAdvance
        h.resizeSection(ConnectionsModel.KIND, width("●") + 14)
        h.resizeSection(ConnectionsModel.WHERE, width("L12 @10 'France'") + 10)
        h.resizeSection(ConnectionsModel.WEIGHT, width("+0.000e-00") + 8)
        h.resizeSection(ConnectionsModel.SHARE, width("100.0%") + 14)
        h.setMinimumSectionSize(16)

    def mousePressEvent(self, event) -> None:  # noqa: N802
        self._press_modifiers = event.modifiers()
        super().mousePressEvent(event)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentIndex().isValid():
            ctrl = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
            self.node_clicked.emit(int(self.currentIndex().data(NODE_ROLE)), ctrl)
            return
        super().keyPressEvent(event)

    def _on_clicked(self, index) -> None:
        node = index.data(NODE_ROLE)
        if node is not None:
            self.node_clicked.emit(int(node), bool(self._press_modifiers & Qt.KeyboardModifier.ControlModifier))


# ---- the pane ----

class NodeConnectionsPane(QWidget):
    """Header about the selected node, then four tables: Inputs +/−, Outputs +/−.

    Public for tests and the window: `models` / `views` (keyed by `LISTS`), `only_kept` and `show_all`
    (check boxes), `pin_button`, `title_label`, `details_label`, `empty_label`, `stack`, `node()`.
    """

    edge_chosen = Signal(int, int)  # (source, target): an input or output row was clicked (before it is selected)

    def __init__(self, controller, parent=None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._wide = True

        # header
        self.title_label = QLabel()
        font = self.title_label.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.1)
        self.title_label.setFont(font)
        self.title_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.title_label.setMinimumWidth(40)
        self.details_label = QLabel()
        self.details_label.setTextFormat(Qt.TextFormat.RichText)
        self.details_label.setWordWrap(True)
        self.pin_button = QPushButton("Pin")
        self.pin_button.setToolTip("Pin the selected node to the subgraph (or Ctrl-click it on the graph)")
        self.pin_button.clicked.connect(self._toggle_pin)
        self.only_kept = QCheckBox("Only nodes kept by pruning")
        self.only_kept.setChecked(True)
        self.only_kept.setToolTip("List only connections to nodes that the pruning thresholds keep; the titles "
                                  "count the hidden ones.")
        self.show_all = QCheckBox(f"Show all (else top {TOP_N})")
        self.only_kept.toggled.connect(self.refresh)
        self.show_all.toggled.connect(self.refresh)

        top = QHBoxLayout()
        top.addWidget(self.title_label, 1)
        top.addWidget(self.pin_button)
        options = QHBoxLayout()
        options.addWidget(self.only_kept)
        options.addWidget(self.show_all)
        options.addStretch(1)

        # the four lists: Inputs | Outputs side by side, + above −
        self.models: dict[str, ConnectionsModel] = {}
        self.views: dict[str, ConnectionsView] = {}
        self.list_titles: dict[str, QLabel] = {}
        self._boxes: dict[str, QWidget] = {}
        self.columns = QSplitter(Qt.Orientation.Horizontal)
        for side in ((INPUTS_POS, INPUTS_NEG), (OUTPUTS_POS, OUTPUTS_NEG)):
            column = QSplitter(Qt.Orientation.Vertical)
            for key in side:
                column.addWidget(self._make_list(key))
            self.columns.addWidget(column)
        self.columns.setChildrenCollapsible(False)
        # an explicit floor: the splitter's own minimum (from its tables' size hints) made the window too tall
        # for a laptop screen
        self.columns.setMinimumSize(140, 120)

        content = QWidget()
        lay = QVBoxLayout(content)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.details_label)
        lay.addLayout(options)
        lay.addWidget(self.columns, 1)

        self.empty_label = QLabel(EMPTY_TEXT)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setWordWrap(True)
        self.empty_label.setEnabled(False)  # greyed, like a placeholder
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty_label)
        self.stack.addWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.addWidget(self.stack)

        controller.analysis_changed.connect(self.refresh)
        controller.aspect_changed.connect(self._on_aspect)
        self.refresh()

    def _make_list(self, key: str) -> QWidget:
        inputs = key.startswith("inputs")
        model = ConnectionsModel(inputs, self)
        view = ConnectionsView()
        view.setModel(model)
        positive = key.endswith("+")
        view.setItemDelegateForColumn(ConnectionsModel.SHARE,
                                      _ShareBarDelegate(POSITIVE_COLOR if positive else NEGATIVE_COLOR, view))
        view.node_clicked.connect(lambda node, ctrl, inputs=inputs: self._on_edge_clicked(node, ctrl, inputs))
        view.node_clicked.connect(self._on_node_clicked)
        title = QLabel(_TITLES[key])
        title.setToolTip(INPUT_SHARE_TIP if inputs else OUTPUT_SHARE_TIP)
        box = QWidget()
        self.models[key], self.views[key], self.list_titles[key], self._boxes[key] = model, view, title, box
        lay = QVBoxLayout(box)
        lay.setContentsMargins(0, 2, 0, 0)
        lay.setSpacing(1)
        lay.addWidget(title)
        lay.addWidget(view, 1)
        return box

    # ---- state ----
    def node(self) -> int | None:
        a = self.controller.analysis
        return None if a is None else a.selected

    def _on_aspect(self, aspect: str) -> None:
        if aspect in (Aspect.SELECTION.value, Aspect.PRUNING.value):
            self.refresh()
        elif aspect in (Aspect.LABELS.value, Aspect.PINS.value):
            # same rows: keep the scroll position, only the text, fonts and header change
            for model in self.models.values():
                model.refresh_labels()
            self._update_header()

    def refresh(self) -> None:
        analysis, node = self.controller.analysis, self.node()
        if analysis is None or node is None:
            self.empty_label.setText(EMPTY_TEXT if analysis is not None
                                     else "Open or trace a graph, then click a node to see its connections.")
            for model in self.models.values():
                model.set_rows(None, np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0))
            self.stack.setCurrentWidget(self.empty_label)
            return
        self.stack.setCurrentIndex(1)
        keep = analysis.pruned.node_mask if self.only_kept.isChecked() else None
        limit = None if self.show_all.isChecked() else TOP_N
        A = analysis.graph.adjacency
        column_rows = []
        for column, (inputs, pos_key, neg_key) in enumerate(((True, INPUTS_POS, INPUTS_NEG),
                                                              (False, OUTPUTS_POS, OUTPUTS_NEG))):
            c = node_connections(A, node, inputs=inputs, keep=keep)
            for key, sel, hidden in ((pos_key, c.weights > 0, c.n_hidden_pos),
                                     (neg_key, c.weights < 0, c.n_hidden_neg)):
                nodes, weights, shares = c.nodes[sel], c.weights[sel], c.shares[sel]
                total = nodes.shape[0]
                if limit is not None:
                    nodes, weights, shares = nodes[:limit], weights[:limit], shares[:limit]
                self.models[key].set_rows(analysis, nodes, weights, shares)
                self.list_titles[key].setText(self._list_title(key, nodes.shape[0], total, float(shares.sum()),
                                                               hidden))
                self.views[key].scrollToTop()
                self._show_table(key, total > 0)
            # the + and − lists share their column by how many rows each has (a long list gets the room)
            rows = [self.models[k].rowCount() for k in (pos_key, neg_key)]
            self.columns.widget(column).setSizes([100 * (min(n, 12) + 2) for n in rows])
            column_rows.append(sum(min(n, 12) + 2 for n in rows))
        if self.columns.orientation() == Qt.Orientation.Vertical:  # stacked: Inputs over Outputs, likewise
            self.columns.setSizes([100 * n for n in column_rows])
        self._update_header()

    def _show_table(self, key: str, visible: bool) -> None:
        """An empty list folds to its title, so that its splitter neighbour gets the room."""
        view, box = self.views[key], self._boxes[key]
        view.setVisible(visible)
        box.setMaximumHeight(16777215 if visible else self.list_titles[key].sizeHint().height() + 4)

    @staticmethod
    def _list_title(key: str, shown: int, total: int, share: float, hidden: int) -> str:
        count = f"{total}" if shown == total else f"top {shown} of {total}"
        text = f"<b>{_TITLES[key]}</b> · {count}"
        if shown and key.startswith("inputs"):  # (output shares are of different targets: no sum)
            text += f" · {100 * share:.1f}% of the input"
        if hidden:
            text += f" <span style='color:gray'>· {hidden} hidden by pruning</span>"
        return text

    def _update_header(self) -> None:
        analysis, node = self.controller.analysis, self.node()
        if analysis is None or node is None:
            return
        info = analysis.info(node)
        g = analysis.graph
        glyph, color, _ = KIND_STYLE[info.kind]
        self.title_label.setText(info.label)
        self.title_label.setToolTip(info.label)
        parts = [f"<span style='color:{color}'>{glyph}</span> {info.kind.value}"
                 + (f" #{info.feature}" if info.feature is not None else ""),
                 layer_name(info.layer, g.n_layers),
                 f"position {info.position} {html.escape(repr(info.token))}"]
        if info.activation is not None:
            parts.append(f"activation {info.activation:.3g}")
        if info.kind is NodeKind.LOGIT:
            parts.append(f"probability {float(g.logit_probabilities[node - g.logit_offset]):.3g}")
        else:
            parts.append(f"influence {info.influence:.3g}")
        if not analysis.pruned.node_mask[node]:
            parts.append("<i>hidden by pruning</i>")
        if node in analysis.pinned:
            parts.append("<b>pinned</b>")
        self.details_label.setText(" · ".join(parts))
        self.pin_button.setText("Unpin" if node in analysis.pinned else "Pin")

    # ---- actions ----
    def _on_edge_clicked(self, node: int, ctrl: bool, inputs: bool) -> None:
        selected = self.node()
        if not ctrl and selected is not None:
            self.edge_chosen.emit(*((node, selected) if inputs else (selected, node)))

    def _on_node_clicked(self, node: int, ctrl: bool) -> None:
        analysis = self.controller.analysis
        if analysis is None:
            return
        if ctrl:
            try:
                analysis.toggle_pin(node)
            except ValueError as e:  # the pin cap
                self.controller.message.emit(str(e))
        else:
            analysis.select(node)

    def _toggle_pin(self) -> None:
        node = self.node()
        if node is not None:
            self._on_node_clicked(node, True)

    def resizeEvent(self, event) -> None:  # noqa: N802
        # narrow docks stack Outputs under Inputs instead of squeezing two tables side by side
        wide = event.size().width() >= 640
        if wide != self._wide:
            self._wide = wide
            self.columns.setOrientation(Qt.Orientation.Horizontal if wide else Qt.Orientation.Vertical)
        super().resizeEvent(event)


__all__ = ["NodeConnectionsPane", "ConnectionsModel", "ConnectionsView", "Connections", "node_connections",
           "KIND_STYLE", "LISTS", "INPUTS_POS", "INPUTS_NEG", "OUTPUTS_POS", "OUTPUTS_NEG",
           "NODE_ROLE", "VALUE_ROLE", "EMPTY_TEXT", "TOP_N"]
