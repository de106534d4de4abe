"""The Heads pane: which attention heads carried an edge, and why the chosen head attended where it did.

A view of `core.attribution.heads_state.HeadsState` (one per shown graph; its JSON is kept in the workspace's settings
under "heads", keyed by graph id, so it is saved with the session). Choosing an edge (an input or output
row of Node connections, or Graph ▸ Heads of selected edge) shows its split as a layer × head heat map
(share of the edge per head; the bypass, what does not pass the layer's attention, in its own column) with
the top heads listed; clicking a head shows its clean attention pattern (query rows × key columns), and for
the chosen cell (by default the target's position attending to the source's; click another) the QK
breakdown: the pre-softmax score's terms per graph node, query side and key side, as ranked bars. Clicking
a bar selects that node. Computations run as background jobs (progress, Cancel) and are cached per graph.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QProgressBar, QPushButton, QSplitter, QVBoxLayout, QWidget)

from ..core.graph.attribution_graph import NodeKind
from ..core.attribution.heads_state import (BreakdownChanged, CellChanged, EdgeChanged, HeadChanged, HeadsReset, HeadsState,
                                PatternChanged, SplitChanged, compute_pattern, compute_qk, compute_split)
from .canvas.style import NEGATIVE_COLOR, POSITIVE_COLOR

SETTINGS_KEY = "heads"  # Workspace.settings["heads"][str(graph_id)] = HeadsState.to_json()
SPLIT_JOB, PATTERN_JOB, QK_JOB = "Head split", "Head pattern", "QK breakdown"
EMPTY_TEXT = ("Click an input or output row in Node connections (or Graph ▸ Heads of selected edge) to see "
              "which attention heads carried that edge.")
TOP_HEADS = 5


def _mix(a: QColor, b: QColor, t: float) -> QColor:
    t = float(min(max(t, 0.0), 1.0))
    return QColor(int(a.red() + (b.red() - a.red()) * t), int(a.green() + (b.green() - a.green()) * t),
                  int(a.blue() + (b.blue() - a.blue()) * t))


class CellGrid(QWidget):
    """A clickable heat map: `values` [R, C] with row and column labels. Signed values use the graph's
    edge colours (white at 0), unsigned ones a white-to-blue ramp; NaN cells are blank and not clickable."""

    cell_clicked = Signal(int, int)  # row, column

    def __init__(self, signed: bool, show_values: bool = True, parent=None) -> None:
        super().__init__(parent)
        self.signed, self.show_values = signed, show_values
        self.values = np.zeros((0, 0))
        self.row_labels: list[str] = []
        self.col_labels: list[str] = []
        self.marked: tuple[int, int] | None = None
        self.title = ""
        self.setMouseTracking(True)
        self.setMinimumSize(80, 60)

    def set_data(self, values: np.ndarray, rows: list[str], cols: list[str], title: str = "") -> None:
        self.values = np.asarray(values, dtype=np.float64)
        self.row_labels, self.col_labels, self.title = rows, cols, title
        self.update()

    def set_marked(self, cell: tuple[int, int] | None) -> None:
        self.marked = cell
        self.update()

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(260, 200)

    def _geometry(self) -> tuple[int, int, float, float]:
        fm = self.fontMetrics()
        left = max([fm.horizontalAdvance(s) for s in self.row_labels] + [0]) + 8
        top = fm.height() * (2 if self.title else 1) + 6
        R, C = self.values.shape if self.values.size else (0, 0)
        cw = (self.width() - left - 4) / max(C, 1)
        ch = (self.height() - top - 4) / max(R, 1)
        return left, top, cw, ch

    def cell_rect(self, r: int, c: int) -> QRect:
        left, top, cw, ch = self._geometry()
        return QRect(int(left + c * cw), int(top + r * ch), max(int(cw), 1), max(int(ch), 1))

    def _color(self, v: float, vmax: float) -> QColor:
        white = QColor("white")
        if not self.signed:
            return _mix(white, QColor("#1f4e99"), v / vmax if vmax else 0.0)
        return _mix(white, QColor(POSITIVE_COLOR if v >= 0 else NEGATIVE_COLOR), abs(v) / vmax if vmax else 0.0)

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), self.palette().window())
        fm = self.fontMetrics()
        if self.title:
            p.drawText(QRect(0, 0, self.width(), fm.height() + 2), Qt.AlignmentFlag.AlignLeft, self.title)
        if not self.values.size:
            return
        R, C = self.values.shape
        left, top, cw, ch = self._geometry()
        finite = self.values[np.isfinite(self.values)]
        vmax = float(np.abs(finite).max()) if finite.size else 0.0
        vmax = 1.0 if not self.signed and vmax <= 1.0 else vmax
        for c, text in enumerate(self.col_labels):
            r = QRect(int(left + c * cw), top - fm.height() - 2, int(cw), fm.height())
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, fm.elidedText(text, Qt.TextElideMode.ElideRight, int(cw)))
        for r, text in enumerate(self.row_labels):
            p.drawText(QRect(0, int(top + r * ch), left - 4, int(ch)),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, text)
        for r in range(R):
            for c in range(C):
                v = self.values[r, c]
                rect = self.cell_rect(r, c)
                if not np.isfinite(v):
                    p.fillRect(rect, QColor("#f2f2f2"))
                    continue
                p.fillRect(rect, self._color(v, vmax))
                if self.show_values and cw >= fm.horizontalAdvance("-00%") + 4 and ch >= fm.height():
                    p.setPen(QColor("black" if abs(v) < 0.6 * vmax else "white"))
                    p.drawText(rect, Qt.AlignmentFlag.AlignCenter, f"{100 * v + 0.0:.0f}%" if abs(v) >= 0.005
                               else "0%")
        p.setPen(QPen(QColor("#bbbbbb"), 1))
        p.drawRect(QRect(int(left), int(top), int(C * cw), int(R * ch)))
        if self.marked is not None:
            p.setPen(QPen(QColor("#ff9900"), 3))
            p.drawRect(self.cell_rect(*self.marked).adjusted(1, 1, -1, -1))
        p.end()

    def mousePressEvent(self, event) -> None:  # noqa: N802
        if not self.values.size:
            return
        left, top, cw, ch = self._geometry()
        pos = event.position()
        c, r = int((pos.x() - left) // cw), int((pos.y() - top) // ch)
        R, C = self.values.shape
        if 0 <= r < R and 0 <= c < C and np.isfinite(self.values[r, c]):
            self.cell_clicked.emit(r, c)


class BarList(QWidget):
    """Ranked signed bars, one row per (label, value, node); clicking a row with a node emits it."""

    bar_clicked = Signal(int)  # graph node

    def __init__(self, title: str, parent=None) -> None:
        super().__init__(parent)
        self.title = title
        self.rows: list[tuple[str, float, int | None]] = []
        self.setMinimumSize(160, 80)

    def set_rows(self, rows: list[tuple[str, float, int | None]]) -> None:
        self.rows = rows
        self.updateGeometry()
        self.update()

    def _row_h(self) -> int:
        return self.fontMetrics().height() + 4

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(300, self._row_h() * (len(self.rows) + 1) + 4)

    def row_rect(self, i: int) -> QRect:
        h = self._row_h()
        return QRect(0, h * (i + 1), self.width(), h)

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), self.palette().base())
        fm, h = self.fontMetrics(), self._row_h()
        p.drawText(QRect(4, 0, self.width() - 8, h), Qt.AlignmentFlag.AlignVCenter, self.title)
        if not self.rows:
            return
        label_w = int(self.width() * 0.42)
        value_w = fm.horizontalAdvance("+0.000e+0")
        bar_w = max(self.width() - label_w - value_w - 16, 10)
        pos = max([v for _, v, _ in self.rows if v > 0] + [0.0])
        neg = max([-v for _, v, _ in self.rows if v < 0] + [0.0])
        span = (pos + neg) or 1.0  # the bars share one scale; zero sits where the negatives end
        zero = label_w + 8 + int(bar_w * neg / span)
        for i, (label, v, node) in enumerate(self.rows):
            r = self.row_rect(i)
            p.setPen(QColor("black") if node is not None else QColor("gray"))
            p.drawText(QRect(4, r.top(), label_w, h), Qt.AlignmentFlag.AlignVCenter,
                       fm.elidedText(label, Qt.TextElideMode.ElideRight, label_w))
            w = int(abs(v) / span * bar_w)
            x = zero if v >= 0 else zero - w
            p.fillRect(QRect(x, r.top() + 3, max(w, 1), h - 6), QColor(POSITIVE_COLOR if v >= 0 else NEGATIVE_COLOR))
            p.setPen(QColor("black"))
            p.drawText(QRect(label_w + 12 + bar_w, r.top(), value_w, h), Qt.AlignmentFlag.AlignVCenter, f"{v:+.3g}")
        p.setPen(QPen(QColor("#999999"), 1))
        p.drawLine(zero, h, zero, h * (len(self.rows) + 1))
        p.end()

    def mousePressEvent(self, event) -> None:  # noqa: N802
        i = int(event.position().y() // self._row_h()) - 1
        if 0 <= i < len(self.rows) and self.rows[i][2] is not None:
            self.bar_clicked.emit(int(self.rows[i][2]))


class HeadsPane(QWidget):
    """See the module docstring. Public for tests and the window: `state`, `heat`, `bypass`, `top_label`,
    `pattern`, `query_bars`, `key_bars`, `score_label`, `softcap_label`, `cancel_button`, `progress`,
    `request_edge`, `request_selected`, `wait_idle`."""

    def __init__(self, controller, parent=None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.state = HeadsState()
        self._analyses: dict[int, object] = {}  # id(graph) -> HeadAnalysis (built by the first job)
        self._splits: dict[int, dict] = {}  # id(graph) -> {target: HeadSplit}
        self._handles: list = []
        self._graph = None

        self.edge_label = QLabel(EMPTY_TEXT)
        self.edge_label.setWordWrap(True)
        self.edge_label.setTextFormat(Qt.TextFormat.RichText)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(180)
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        top = QHBoxLayout()
        top.addWidget(self.edge_label, 1)
        top.addWidget(self.progress)
        top.addWidget(self.cancel_button)

        self.heat = CellGrid(signed=True)
        self.heat.cell_clicked.connect(self._heat_clicked)
        self.bypass = CellGrid(signed=True)
        self.bypass.setMinimumWidth(50)
        self.bypass.setMaximumWidth(70)
        self.top_label = QLabel()
        self.top_label.setTextFormat(Qt.TextFormat.RichText)
        self.top_label.setWordWrap(True)
        heat_row = QHBoxLayout()
        heat_row.setSpacing(2)
        heat_row.addWidget(self.heat, 1)
        heat_row.addWidget(self.bypass)
        split_box = QWidget()
        lay = QVBoxLayout(split_box)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(heat_row, 1)
        lay.addWidget(self.top_label)

        self.pattern = CellGrid(signed=False, show_values=False)
        self.pattern.cell_clicked.connect(self._pattern_clicked)

        self.score_label = QLabel()
        self.score_label.setWordWrap(True)
        self.softcap_label = QLabel()
        self.softcap_label.setWordWrap(True)
        self.softcap_label.setStyleSheet("color: #664d03;")
        self.softcap_label.hide()
        self.query_bars = BarList("Query side")
        self.key_bars = BarList("Key side")
        for bars in (self.query_bars, self.key_bars):
            bars.bar_clicked.connect(self._bar_clicked)
        qk_box = QWidget()
        ql = QVBoxLayout(qk_box)
        ql.setContentsMargins(0, 0, 0, 0)
        ql.addWidget(self.score_label)
        ql.addWidget(self.softcap_label)
        bars_row = QHBoxLayout()
        bars_row.addWidget(self.query_bars, 1)
        bars_row.addWidget(self.key_bars, 1)
        ql.addLayout(bars_row, 1)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        for w in (split_box, self.pattern, qk_box):
            self.splitter.addWidget(w)
        self.splitter.setSizes([300, 300, 500])
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.addLayout(top)
        outer.addWidget(self.splitter, 1)

        self.state.events.connect(self._on_state)
        self.state.on_change(self._store)
        controller.analysis_changed.connect(self._graph_changed)
        controller.aspect_changed.connect(self._on_aspect)
        self._graph_changed()

    # ---- the graph and the session ----
    def _gid(self):
        return self.controller.workspace.current_id

    def _graph_changed(self) -> None:
        a = self.controller.analysis
        graph = a.graph if a is not None else None
        if graph is self._graph and graph is not None:
            return
        self._graph = graph
        stored = None
        if graph is not None and self._gid() is not None:
            stored = self.controller.workspace.settings.get(SETTINGS_KEY, {}).get(str(self._gid()))
        self.state.reset(graph, stored)

    def _store(self, blob: dict) -> None:
        gid = self._gid()
        if gid is not None and self.state.graph is not None:
            self.controller.workspace.settings.setdefault(SETTINGS_KEY, {})[str(gid)] = blob

    def _on_aspect(self, aspect: str) -> None:
        if aspect == "labels":
            self._show_all()

    # ---- requests ----
    def request_edge(self, source: int, target: int) -> None:
        """Show the split of the edge source -> target (computed in the background unless cached)."""
        if self.state.graph is None:
            return
        try:
            self.state.request_edge(source, target)
        except ValueError as e:
            self.controller.message.emit(str(e))
            return
        self._ensure()

    def request_selected(self) -> bool:
        """The selected node's strongest incoming edge (a feature or logit), else its strongest outgoing one."""
        a = self.controller.analysis
        if a is None or a.selected is None:
            self.controller.message.emit("Select a node first (or click a row in Node connections).")
            return False
        s, t = self.state.edge or (None, None)
        node, g = a.selected, a.graph
        if node in (s, t):
            self._ensure()
            return True
        inputs = g.adjacency.row(node)[:g.logit_offset]
        if g.kind_of(node) in (NodeKind.FEATURE, NodeKind.LOGIT) and np.any(inputs):
            self.request_edge(int(np.argmax(np.abs(inputs))), node)
            return True
        col = np.abs(g.adjacency.column(node))
        col[[i for i in range(g.n_nodes) if g.kind_of(i) not in (NodeKind.FEATURE, NodeKind.LOGIT)]] = 0
        if node < g.logit_offset and col.any():
            self.request_edge(node, int(np.argmax(col)))
            return True
        self.controller.message.emit("The selected node has no edges to split.")
        return False

    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        self._ensure()

    def _ensure(self) -> None:
        """Submit what the shown state still lacks (only while the pane can be seen)."""
        st = self.state
        if st.graph is None or not self.isVisible():
            return
        if st.edge is not None and st.split is None:
            self._submit(SPLIT_JOB, self._split_job(*st.edge), st.put_split)
        if st.head is not None and st.pattern is None:
            self._submit(PATTERN_JOB, self._pattern_job(*st.head), st.put_pattern)
        if st.head is not None and st.cell is not None and st.breakdown is None:
            self._submit(QK_JOB, self._qk_job(*st.head, *st.cell), st.put_breakdown)

    # ---- jobs ----
    def _resources(self):
        """What a job needs, read on the GUI thread: the graph and its model and transcoders."""
        return self.state.graph, self.controller.bundle, self.controller.transcoders

    def _head_analysis(self, graph, bundle, tc, progress, cancel):
        ha = self._analyses.get(id(graph))
        if ha is None or ha.graph is not graph or ha.bundle is not bundle or ha.tc is not tc:
            from ..core.attribution.heads import HeadAnalysis

            if bundle is None or tc is None:
                from ..core.errors import CircuitStudioError

                raise CircuitStudioError("This graph's model and transcoders are not loaded.",
                                         "Load them (File ▸ Open demo, or the folders it was traced with).")
            ha = HeadAnalysis(bundle, tc, graph, progress=progress, cancel=cancel)
            self._analyses = {id(graph): ha}  # one graph's analysis at a time (it holds a clean run)
            self._splits = {id(graph): {}}
        return ha

    def _split_job(self, source: int, target: int):
        graph, bundle, tc = self._resources()

        def job(progress, cancel):
            ha = self._head_analysis(graph, bundle, tc, progress, cancel)
            return compute_split(ha, source, target, progress=progress, cancel=cancel,
                                 cache=self._splits.setdefault(id(graph), {}))
        return job

    def _pattern_job(self, layer: int, head: int):
        graph, bundle, tc = self._resources()
        return lambda progress, cancel: compute_pattern(self._head_analysis(graph, bundle, tc, progress, cancel),
                                                        layer, head)

    def _qk_job(self, layer: int, head: int, q: int, k: int):
        graph, bundle, tc = self._resources()
        return lambda progress, cancel: compute_qk(self._head_analysis(graph, bundle, tc, progress, cancel), layer,
                                                   head, q, k, cancel=cancel)

    def _submit(self, name: str, fn, put) -> None:
        graph = self.state.graph

        def done(result):
            if self.state.graph is graph:
                put(result)
            self._job_over()

        def failed(e):
            self.controller.message.emit(f"{name} failed: {e.message}" + (f" {e.hint}" if e.hint else ""))
            self.edge_label.setText(self.edge_label.text() + f"<br><span style='color:#a00'>{name} failed: "
                                    f"{e.message}</span>")
            self._job_over()

        self.progress.setFormat(f"{name}…")
        self.progress.setRange(0, 0)
        self.progress.show()
        self.cancel_button.setEnabled(True)
        self._handles.append(self.controller.jobs.submit(
            name, fn, done, key=name, on_error=failed, on_cancel=self._job_over, on_progress=self._on_progress))

    def _on_progress(self, p) -> None:
        self.progress.setRange(0, max(p.total, 0))
        self.progress.setValue(p.done)
        self.progress.setFormat(f"{p.phase} {p.done}/{p.total}" if p.total else p.phase)

    def _job_over(self) -> None:
        self._handles = [h for h in self._handles if h.active]
        if not self._handles:
            self.progress.hide()
            self.cancel_button.setEnabled(False)

    def cancel(self) -> None:
        for h in list(self._handles):
            h.cancel()

    @property
    def busy(self) -> bool:
        self._handles = [h for h in self._handles if h.active]
        return bool(self._handles)

    def wait_idle(self, timeout_s: float = 120.0) -> None:
        import time

        from PySide6.QtCore import QCoreApplication

        end = time.monotonic() + timeout_s
        while self.busy and time.monotonic() < end:
            QCoreApplication.processEvents()
            time.sleep(0.005)

    # ---- clicks ----
    def choose_head(self, layer: int, head: int) -> None:
        """Show `head` of `layer`: its pattern and the QK breakdown of the default cell."""
        if self.state.graph is not None:
            self.state.choose_head(layer, head)
            self._ensure()

    def _heat_clicked(self, r: int, c: int) -> None:
        split = self.state.split
        if split is not None:
            self.choose_head(split.layers[r], c)

    def _pattern_clicked(self, q: int, k: int) -> None:
        if k <= q and self.state.head is not None:
            self.state.choose_cell(q, k)
            self._ensure()

    def _bar_clicked(self, node: int) -> None:
        a = self.controller.analysis
        if a is not None:
            a.select(node)

    # ---- display ----
    def _on_state(self, event) -> None:
        if isinstance(event, HeadsReset):
            self._show_all()
            self._ensure()
        elif isinstance(event, (EdgeChanged, SplitChanged)):
            self._show_split()
        elif isinstance(event, (HeadChanged, PatternChanged, CellChanged)):
            self._show_split()
            self._show_pattern()
        elif isinstance(event, BreakdownChanged):
            self._show_breakdown()

    def _show_all(self) -> None:
        self._show_split()
        self._show_pattern()
        self._show_breakdown()

    def _label(self, node: int) -> str:
        a = self.controller.analysis
        return a.label_of(node) if a is not None else f"#{node}"

    def _show_split(self) -> None:
        st, g = self.state, self.state.graph
        split = st.split
        if st.edge is None or g is None:
            self.edge_label.setText(EMPTY_TEXT)
            self.heat.set_data(np.zeros((0, 0)), [], [])
            self.bypass.set_data(np.zeros((0, 0)), [], [])
            self.top_label.setText("")
            return
        s, t = st.edge
        w = float(g.adjacency.values_at(np.array([t]), np.array([s]))[0])
        self.edge_label.setText(f"<b>{self._label(s)}</b> → <b>{self._label(t)}</b> · edge {w:+.3g}"
                                + ("" if split is not None else " · <i>splitting…</i>"))
        if split is None:
            self.heat.set_data(np.zeros((0, 0)), [], [])
            self.bypass.set_data(np.zeros((0, 0)), [], [])
            self.top_label.setText("")
            return
        shares = split.shares()
        rows = [f"L{j}" for j in split.layers]
        self.heat.set_data(shares[:, :split.n_heads], rows, [f"H{h}" for h in range(split.n_heads)],
                           "Share of the edge per head")
        self.bypass.set_data(shares[:, split.n_heads:], [""] * len(rows), ["bypass"], " ")
        head = st.head
        self.heat.set_marked(None if head is None or head[0] not in split.layers
                             else (split.layers.index(head[0]), head[1]))
        tops = [f"L{l} H{h} {100 * v:+.1f}%" for l, h, v in split.top_heads(TOP_HEADS)]
        self.top_label.setText("<b>Top heads</b>: " + " · ".join(tops) + "<br><span style='color:gray'>per layer, "
                               "heads + bypass = the edge; click a head for its pattern</span>")

    def _show_pattern(self) -> None:
        st, g = self.state, self.state.graph
        pat = st.pattern
        if pat is None or g is None:
            title = "" if st.head is None else f"L{st.head[0]} H{st.head[1]}: computing the pattern…"
            self.pattern.set_data(np.zeros((0, 0)), [], [], title)
            return
        w = pat.array().astype(np.float64)
        w[np.triu_indices(w.shape[0], 1)] = np.nan  # causal: no weight above the diagonal
        toks = [f"{i} {t!r}" for i, t in enumerate(g.token_strings)]
        self.pattern.set_data(w, toks, [str(i) for i in range(len(toks))],
                              f"L{pat.layer} H{pat.head} attention (query rows × key columns)")
        self.pattern.set_marked(st.cell)

    def _show_breakdown(self) -> None:
        st = self.state
        bd = st.breakdown
        if bd is None:
            self.score_label.setText("" if st.cell is None else f"QK of cell {st.cell}: computing…")
            self.softcap_label.hide()
            self.query_bars.set_rows([])
            self.key_bars.set_rows([])
            return
        g = st.graph
        qt, kt = g.token_strings[bd.query_pos], g.token_strings[bd.key_pos]
        self.score_label.setText(f"L{bd.layer} H{bd.head}: query {bd.query_pos} {qt!r} → key {bd.key_pos} {kt!r} · "
                                 f"score {bd.score:+.3g} · weight {bd.weight:.3f}"
                                 + (" (outside the sliding window)" if bd.masked else ""))
        if bd.softcap is not None:
            self.softcap_label.setText(f"Soft-cap {bd.softcap:g}: the pattern sees {bd.softcap:g}·tanh(score/"
                                       f"{bd.softcap:g}) = {bd.capped_score:+.3g}, which is not linear in the score: "
                                       "the terms below add up to the pre-cap score.")
            self.softcap_label.show()
        else:
            self.softcap_label.hide()
        for bars, nodes, rest in ((self.query_bars, bd.query_nodes, bd.query_rest),
                                  (self.key_bars, bd.key_nodes, bd.key_rest)):
            rows = [(self._label(n), v, n) for n, v in nodes] + [("rest (biases, other nodes)", rest, None)]
            bars.set_rows(rows)


__all__ = ["HeadsPane", "CellGrid", "BarList", "SETTINGS_KEY"]
