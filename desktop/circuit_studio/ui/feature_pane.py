"""The feature detail pane: what the selected node is, and for a feature its dashboard.

For a feature node: its label (editable; the automatic label from the feature index shows greyed
when the user has none), layer and feature id, position and token, its activation on this prompt
and its ratio to the feature's max in the index, density; then from the feature index its top
activating examples (tokens shaded by activation relative to the feature's max), examples from
lower quantile bands (collapsible), an activation histogram with this prompt's activation marked,
and its top positive and negative logit effects. Error, token and logit nodes say what they are.

Without a feature index the pane says so and offers to build one from a text file: a background
job on the controller's `JobRunner` (its progress shows in the window's progress bar and here),
after which the index is opened with `controller.open_feature_index`.

Reading one feature from the index is a single small SQLite read (well under a millisecond), so it
happens on the GUI thread, only for the selected node, and is cached per (layer, feature).
"""

from __future__ import annotations

import html
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPoint, QRect, QSize, QStandardPaths, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import (QAbstractItemView, QFileDialog, QFrame, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QProgressBar, QPushButton, QScrollArea, QSizePolicy, QTableWidget,
                               QTableWidgetItem, QToolButton, QToolTip, QVBoxLayout, QWidget)

from ..core.analysis import Aspect
from ..core.graph import NodeKind

BUILD_JOB = "Building feature index"
INDEX_FILE = "feature_index.sqlite"
DEFAULT_CONTEXT = 64  # tokens per corpus window, BOS included (as `circuit-studio index-features`)
ACT_COLOR = QColor(255, 127, 14)  # the top of the shading ramp (white -> orange)
LINE_COLOR = QColor(31, 119, 180)  # this prompt's activation on the histogram
_CACHE_SIZE = 256


# ---- small helpers ----
def show_token(s: str) -> str:
    """A token as displayed: newlines and tabs made visible, empty strings marked."""
    if s == "":
        return "∅"
    return s.replace("\r", "").replace("\n", "↵").replace("\t", "⇥")


def quoted(s: str) -> str:
    return f"'{show_token(s)}'"


def fmt(x: float) -> str:
    """A short number: 3 significant digits, no exponent for everyday magnitudes."""
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.3g}"


def fixed(x: float, scale: float) -> str:
    """`x` with as many decimals as three significant digits of `scale` need (aligned columns)."""
    scale = abs(float(scale))
    digits = 2 if scale <= 0 else int(min(6, max(0, 2 - np.floor(np.log10(scale)))))
    return f"{float(x):.{digits}f}"


def shade(t: float, base: QColor) -> QColor:
    """`base` blended towards the activation colour by t in [0, 1]."""
    t = min(max(float(t), 0.0), 1.0)
    return QColor(round(base.red() + (ACT_COLOR.red() - base.red()) * t),
                  round(base.green() + (ACT_COLOR.green() - base.green()) * t),
                  round(base.blue() + (ACT_COLOR.blue() - base.blue()) * t))


def muted(widget: QWidget) -> str:
    """The palette's greyed text colour, as a name for style sheets and rich text."""
    return widget.palette().color(QPalette.PlaceholderText).name()


def _luminance(c: QColor) -> float:
    return 0.299 * c.red() + 0.587 * c.green() + 0.114 * c.blue()


# ---- examples: rows of shaded tokens ----
class TokenRow:
    """One context: its tokens, each shaded by its activation relative to `scale` (the feature's
    max), the max token bold and underlined. Plain data plus layout; `ExampleList` paints it."""

    def __init__(self, example, scale: float) -> None:
        self.example = example
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
                p.setPen(QColor(0, 0, 0) if _luminance(bg) > 140 else
                         (text if _luminance(text) > 140 else QColor(255, 255, 255)))
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


class Collapsible(QWidget):
    """A header button with an arrow that shows or hides its body."""

    toggled = Signal(bool)

    def __init__(self, title: str, expanded: bool = False, parent=None) -> None:
        super().__init__(parent)
        self.button = QToolButton()
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setChecked(expanded)
        self.button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.button.setArrowType(Qt.DownArrow if expanded else Qt.RightArrow)
        self.button.setAutoRaise(True)
        self.button.setStyleSheet("QToolButton { border: none; padding: 1px 0px; }")
        self.button.toggled.connect(self._toggle)
        self.body = QWidget()
        self.body_layout = QVBoxLayout(self.body)
        self.body_layout.setContentsMargins(14, 0, 0, 4)
        self.body_layout.setSpacing(1)
        self.body.setVisible(expanded)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.button)
        lay.addWidget(self.body)

    def _toggle(self, on: bool) -> None:
        self.button.setArrowType(Qt.DownArrow if on else Qt.RightArrow)
        self.body.setVisible(on)
        self.toggled.emit(on)

    @property
    def expanded(self) -> bool:
        return self.button.isChecked()


class _LabelEdit(QLineEdit):
    reverted = Signal()

    def keyPressEvent(self, e) -> None:
        if e.key() == Qt.Key_Escape:
            self.reverted.emit()
            return
        super().keyPressEvent(e)


def _section_title(text: str) -> QLabel:
    label = QLabel(text)
    f = label.font()
    f.setBold(True)
    label.setFont(f)
    label.setContentsMargins(0, 8, 0, 2)
    return label


def _clear(layout) -> None:
    while layout.count():
        item = layout.takeAt(0)
        w = item.widget()
        if w is not None:
            w.hide()
            w.setParent(None)
            w.deleteLater()


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

    def tokens(self) -> list[str]:
        return [self.item(r, 0).text() for r in range(self.rowCount())]


# ---- the pane ----
class FeaturePane(QWidget):
    """Details of `controller.analysis.selected` (see the module docstring).

    Public for scripts and tests: `build_index(corpus_path, out_path=None)`, `default_index_path()`,
    `details_for(layer, feature)`, `example_rows` (the top examples' TokenRows), and the widgets
    `label_edit`, `auto_marker`, `stats`, `description`, `top_list`, `band_sections` (Collapsibles
    with `.band` and `.examples`), `histogram_item`, `prompt_line`, `promotes`, `suppresses`,
    `no_index`, `build_button`, `build_status`."""

    def __init__(self, controller, parent=None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._cache: OrderedDict[tuple[int, int], object] = OrderedDict()
        self._node: int | None = None  # the node shown
        self._label_target: tuple[object, int] | None = None  # (analysis, node) the label edit writes to
        self._details_key = None  # what the details area shows, to skip rebuilding it
        self._expanded_bands: set[int] = set()
        self._refreshing = False
        self._build_out: Path | None = None
        self.band_sections: list[Collapsible] = []
        self._build_ui()
        controller.aspect_changed.connect(self._on_aspect)
        controller.analysis_changed.connect(self.refresh)
        controller.model_changed.connect(self._on_model_changed)
        jobs = controller.jobs
        jobs.progress.connect(self._on_job_progress)
        jobs.finished.connect(lambda name, _: self._on_job_end(name, ""))
        jobs.failed.connect(lambda name, err: self._on_job_end(name, f"Building the index failed: {err.message}"))
        jobs.cancelled.connect(lambda name: self._on_job_end(name, "Building the index was cancelled."))
        self.refresh()

    # ---- construction ----
    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(6, 6, 6, 6)
        outer.setSpacing(4)

        # header: what the node is, its label, its numbers
        self.title = QLabel()
        f = self.title.font()
        f.setBold(True)
        f.setPointSizeF(f.pointSizeF() * 1.1)
        self.title.setFont(f)
        self.title.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.title.setWordWrap(True)
        self.label_edit = _LabelEdit()
        self.label_edit.setToolTip("Your label for this feature, used in every graph of the session.\n"
                                   "Enter to apply, Esc to undo; empty = the automatic label.")
        self.label_edit.editingFinished.connect(self._commit_label)
        self.label_edit.reverted.connect(self._revert_label)
        self.auto_marker = QLabel("auto")
        self.auto_marker.setToolTip("The label shown is the automatic one from the feature index; type to "
                                    "give your own.")
        self.auto_marker.setStyleSheet(f"QLabel {{ color: {muted(self)}; border: 1px solid {muted(self)}; "
                                       "border-radius: 3px; padding: 0px 3px; }")
        small = self.auto_marker.font()
        small.setPointSizeF(small.pointSizeF() * 0.85)
        self.auto_marker.setFont(small)
        self.auto_marker.setSizePolicy(QSizePolicy.Fixed, QSizePolicy.Fixed)
        self.label_row = QWidget()
        lr = QHBoxLayout(self.label_row)
        lr.setContentsMargins(0, 0, 0, 0)
        lr.addWidget(self.label_edit, 1)
        lr.addWidget(self.auto_marker, 0, Qt.AlignVCenter)
        self.stats = QLabel()
        self.stats.setWordWrap(True)
        self.stats.setTextFormat(Qt.RichText)
        self.stats.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.description = QLabel()
        self.description.setWordWrap(True)
        self.description.setTextFormat(Qt.RichText)
        self.description.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.description.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        for w in (self.title, self.label_row, self.stats, self.description):
            outer.addWidget(w)

        # the no-index box
        self.no_index = QFrame()
        self.no_index.setFrameShape(QFrame.StyledPanel)
        nl = QVBoxLayout(self.no_index)
        self.no_index_text = QLabel()
        self.no_index_text.setWordWrap(True)
        self.no_index_text.setTextFormat(Qt.RichText)
        self.build_button = QPushButton("Build index from a text file…")
        self.build_button.setToolTip("Run the model and transcoders over a UTF-8 text file (one document per "
                                     "line) and record every feature's top activating contexts.")
        self.build_button.clicked.connect(self.choose_corpus_and_build)
        self.open_button = QPushButton("Open an index file…")
        self.open_button.clicked.connect(self.choose_index_file)
        self.open_existing_button = QPushButton()
        self.open_existing_button.clicked.connect(self._open_existing)
        buttons = QHBoxLayout()
        buttons.addWidget(self.build_button)
        buttons.addWidget(self.open_button)
        buttons.addStretch(1)
        self.build_progress = QProgressBar()
        self.build_progress.setTextVisible(True)
        self.build_progress.hide()
        self.build_status = QLabel()
        self.build_status.setWordWrap(True)
        self.build_status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        nl.addWidget(self.no_index_text)
        nl.addLayout(buttons)
        nl.addWidget(self.open_existing_button, 0, Qt.AlignLeft)
        nl.addWidget(self.build_progress)
        nl.addWidget(self.build_status)
        outer.addWidget(self.no_index)

        # the dashboard (scrolls)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.details = QWidget()
        dl = QVBoxLayout(self.details)
        dl.setContentsMargins(0, 0, 4, 0)
        dl.setSpacing(2)
        self.index_note = QLabel()
        self.index_note.setWordWrap(True)
        self.index_note.setStyleSheet(f"color: {muted(self)};")
        dl.addWidget(self.index_note)
        self.top_title = _section_title("Top activations")
        dl.addWidget(self.top_title)
        self.top_list = ExampleList()
        dl.addWidget(self.top_list)
        self.top_empty = QLabel("This feature never fired on the index's corpus: no cached examples.")
        self.top_empty.setWordWrap(True)
        self.top_empty.setStyleSheet(f"color: {muted(self)};")
        dl.addWidget(self.top_empty)
        self.bands_title = _section_title("Lower activations, by interval of the max")
        dl.addWidget(self.bands_title)
        self.bands_box = QWidget()
        self.bands_layout = QVBoxLayout(self.bands_box)
        self.bands_layout.setContentsMargins(0, 0, 0, 0)
        self.bands_layout.setSpacing(0)
        dl.addWidget(self.bands_box)
        self.hist_title = _section_title("Activation histogram")
        dl.addWidget(self.hist_title)
        self.plot = pg.PlotWidget()
        self.plot.setFixedHeight(170)
        self.plot.setBackground(self.palette().color(QPalette.Base))
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.getPlotItem().setLabel("bottom", "activation")
        self.plot.getPlotItem().setLabel("left", "tokens")
        self.plot.setToolTip("How often the feature takes each non-zero activation on the corpus; the blue "
                             "line is its activation on this prompt.")
        self.histogram_item = pg.BarGraphItem(x0=[0], x1=[1], height=[0], brush=pg.mkBrush(ACT_COLOR),
                                              pen=pg.mkPen(QColor(200, 90, 0), width=0.5))
        self.prompt_line = pg.InfiniteLine(pos=0, angle=90, pen=pg.mkPen(LINE_COLOR, width=2, style=Qt.DashLine))
        self.prompt_text = pg.TextItem("this prompt", color=LINE_COLOR, anchor=(1.05, 0))
        for item in (self.histogram_item, self.prompt_line, self.prompt_text):
            self.plot.addItem(item)
        dl.addWidget(self.plot)
        self.hist_note = QLabel()
        self.hist_note.setStyleSheet(f"color: {muted(self)};")
        self.hist_note.setWordWrap(True)
        dl.addWidget(self.hist_note)
        self.logits_title = _section_title("Logit effects (direct, through the unembedding)")
        dl.addWidget(self.logits_title)
        tables = QHBoxLayout()
        self.promotes = LogitTable("Promotes", True)
        self.suppresses = LogitTable("Suppresses", False)
        tables.addWidget(self.promotes)
        tables.addWidget(self.suppresses)
        dl.addLayout(tables)
        dl.addStretch(1)
        self.scroll.setWidget(self.details)
        outer.addWidget(self.scroll, 1)
        self.filler = QWidget()  # takes the space when there is no dashboard
        outer.addWidget(self.filler, 1)

    @property
    def example_rows(self) -> list[TokenRow]:
        return self.top_list.rows if self.top_list.isVisibleTo(self) else []

    # ---- signals ----
    def _on_aspect(self, aspect: str) -> None:
        if aspect in (Aspect.SELECTION.value, Aspect.LABELS.value):
            self.refresh()

    def _on_model_changed(self) -> None:
        self._cache.clear()
        self._details_key = None
        self.refresh()

    # ---- reading the index ----
    def details_for(self, layer: int, feature: int):
        """The index's FeatureDetails of (layer, feature), cached; None without an index.
        Raises FeatureIndexError when the index does not cover it."""
        index = self.controller.feature_index
        if index is None:
            return None
        key = (int(layer), int(feature))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        d = index.feature(*key)
        self._cache[key] = d
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return d

    def _index_mismatch(self) -> str:
        """Why the loaded index cannot belong to the loaded transcoders ('' when it may)."""
        index, tc = self.controller.feature_index, self.controller.transcoders
        if index is None or tc is None:
            return ""
        i = index.info
        if (i.n_layers, i.n_features) != (tc.n_layers, tc.n_features):
            return (f"The feature index has {i.n_layers} layers × {i.n_features} features, the transcoders "
                    f"{tc.n_layers} × {tc.n_features}: it was built for other transcoders.")
        return ""

    # ---- drawing ----
    def refresh(self) -> None:
        if self._refreshing:
            return
        self._refreshing = True
        try:
            self._refresh()
        finally:
            self._refreshing = False

    def _refresh(self) -> None:
        analysis = self.controller.analysis
        node = analysis.selected if analysis is not None else None
        # an edit in progress on another node is applied before the pane moves on
        if (self._label_target is not None and self.label_edit.isModified()
                and self._label_target != (analysis, node)):
            self._commit_label()
        self._node = node
        if analysis is None or node is None:
            self._show_message("No graph yet: trace a prompt to see its nodes here." if analysis is None else
                               "Select a node in the graph to see what it is; for a feature, its top "
                               "activating examples, histogram and logit effects.")
            return
        info = analysis.info(node)
        if info.kind is NodeKind.FEATURE:
            self._show_feature(analysis, info)
        else:
            self._show_other(analysis, info)

    def _set_mode(self, *, label: bool, stats: bool, description: bool, no_index: bool, details: bool) -> None:
        self.label_row.setVisible(label)
        self.stats.setVisible(stats)
        self.description.setVisible(description)
        self.no_index.setVisible(no_index)
        self.scroll.setVisible(details)
        self.filler.setVisible(not details)
        if not label:
            self._label_target = None

    def _show_message(self, text: str) -> None:
        self.title.setText("Feature detail")
        self.description.setText(html.escape(text))
        self._set_mode(label=False, stats=False, description=True, no_index=False, details=False)
        self._details_key = None

    def _show_other(self, analysis, info) -> None:
        g = analysis.graph
        tok = html.escape(quoted(info.token), quote=False)
        infl = f"Influence on the output: <b>{fmt(info.influence)}</b>."
        if info.kind is NodeKind.ERROR:
            self.title.setText(f"Error node · layer {info.layer} · position {info.position}")
            text = (f"MLP reconstruction error at layer {info.layer}, position {info.position} ({tok}): the part "
                    f"of the MLP output the transcoder misses.<br>{infl}<br><span style='color: {muted(self)}'>"
                    "A large influence here means that part of the computation is not explained by features."
                    "</span>")
        elif info.kind is NodeKind.TOKEN:
            self.title.setText(f"Token node · position {info.position}")
            text = f"The embedding of token {tok} at position {info.position}.<br>{infl}"
        else:
            k = info.index - g.logit_offset
            p = float(g.logit_probabilities[k])
            self.title.setText(f"Output node · {quoted(info.token)}")
            text = (f"The output token {tok} (token id {int(g.logit_token_ids[k])}), predicted with probability "
                    f"<b>{p:.3f}</b> ({p:.1%}) after the last position; target {k + 1} of {g.n_logits}.<br>"
                    f"Its influence weight in pruning is its probability.")
        self.description.setText(text)
        self._set_mode(label=False, stats=False, description=True, no_index=False, details=False)
        self._details_key = None

    def _show_feature(self, analysis, info) -> None:
        layer, feat = info.layer, info.feature
        key = (layer, feat)
        self.title.setText(f"Feature L{layer} #{feat}  ·  position {info.position} {quoted(info.token)}")
        self._show_label(analysis, info.index, key)

        index = self.controller.feature_index
        details, problem = None, self._index_mismatch()
        if index is not None and not problem:
            try:
                details = self.details_for(layer, feat)
            except Exception as e:  # noqa: BLE001 - a bad index must not break the pane
                problem = f"The feature index cannot show this feature: {getattr(e, 'message', e)}"
        self.stats.setText(self._stats_html(info, details, index))

        if index is None:
            self._show_no_index()
            self._set_mode(label=True, stats=True, description=False, no_index=True, details=False)
            self._details_key = None
            return
        if problem:
            self.description.setText(html.escape(problem))
            self._set_mode(label=True, stats=True, description=True, no_index=False, details=False)
            self._details_key = None
            return
        self._set_mode(label=True, stats=True, description=False, no_index=False, details=True)
        shown = (id(index), layer, feat, info.activation)
        if shown != self._details_key:
            self._show_details(details, info.activation, index)
            self._details_key = shown

    def _show_label(self, analysis, node: int, key: tuple[int, int]) -> None:
        user = analysis.labels.get(key, "")
        auto = ""
        if analysis.auto_label is not None:
            try:
                auto = analysis.auto_label(*key) or ""
            except Exception:  # noqa: BLE001 - an index that does not cover the feature: no automatic label
                auto = ""
        target = (analysis, node)
        editing = (self._label_target == target and self.label_edit.hasFocus() and self.label_edit.isModified())
        self._label_target = target
        if not editing:
            self.label_edit.setText(user)
            self.label_edit.setModified(False)
        self.label_edit.setPlaceholderText(auto or f"L{key[0]} #{key[1]} (no label yet: type one)")
        self.auto_marker.setVisible(not user)
        self.auto_marker.setText("auto" if auto else "no label")

    def _stats_html(self, info, details, index) -> str:
        act = info.activation or 0.0
        parts = [f"Activation on this prompt: <b>{fmt(act)}</b>"]
        if details is not None:
            if details.max_activation > 0:
                parts[0] += f" = <b>{act / details.max_activation:.0%}</b> of its max in the index " \
                            f"({fmt(details.max_activation)})"
            else:
                parts[0] += " (it never fired on the index's corpus)"
            n_tokens = index.info.n_tokens
            parts.append(f"Density: <b>{details.density * 100:.3g}%</b> of corpus tokens ({details.n_active:,} of "
                         f"{n_tokens:,}); mean when active {fmt(details.mean_activation)}")
        parts.append(f"Influence on the output: {fmt(info.influence)}")
        return "<br>".join(parts)

    def _show_no_index(self) -> None:
        c = self.controller
        busy = c.jobs.busy and c.jobs.current_name == BUILD_JOB
        if busy and self._build_out is not None:
            hint = f"Building an index into {self._build_out}; it opens here when it is ready."
        elif c.bundle is None or c.transcoders is None:
            hint = "Load the model and its transcoders to build one, or open an index file."
        else:
            hint = ("Build one from a text file (one document per line; a few thousand lines are enough): "
                    "the model and transcoders run over it in the background. The index is saved as "
                    f"{self.default_index_path()} and opened when it is ready.")
        self.no_index_text.setText("<b>No feature index for these transcoders.</b><br>"
                                   "Without one there are no example contexts, histogram or logit effects "
                                   f"for this feature.<br><span style='color: {muted(self)}'>"
                                   f"{html.escape(hint)}</span>")
        self.build_button.setEnabled(c.bundle is not None and c.transcoders is not None and not busy)
        existing = None
        if c.transcoders is not None and getattr(c.transcoders, "source", None):
            candidate = Path(c.transcoders.source) / INDEX_FILE
            existing = candidate if candidate.is_file() else None
        self.open_existing_button.setVisible(existing is not None and not busy)
        if existing is not None:
            self.open_existing_button.setText(f"Open {existing.name} found next to the transcoders")
            self.open_existing_button.setToolTip(str(existing))
            self.open_existing_button.setProperty("path", str(existing))

    def _show_details(self, d, activation: float | None, index) -> None:
        scale = d.max_activation if d.max_activation > 0 else 1.0
        i = index.info
        self.index_note.setText(f"From the index of {i.corpus or 'a corpus'}: {i.n_windows:,} windows of "
                                f"{i.context} tokens. Automatic label: {d.label}")
        # top examples
        self.top_list.set_examples(d.top_examples, scale)
        self.top_list.setVisible(bool(d.top_examples))
        self.top_empty.setVisible(not d.top_examples)
        self.top_title.setText(f"Top activations ({len(d.top_examples)})")
        # quantile bands, strongest first
        _clear(self.bands_layout)
        self.band_sections = []
        for b in sorted(d.band_examples, key=lambda b: -b.index):
            lo, hi = (b.low / scale, b.high / scale) if d.max_activation > 0 else (0.0, 0.0)
            n = b.n_contexts
            title = (f"Interval {lo:.2f}–{hi:.2f} of max ({fmt(b.low)}–{fmt(b.high)}): "
                     f"{n:,} context{'s' if n != 1 else ''}" if n else
                     f"Interval {lo:.2f}–{hi:.2f} of max: no contexts")
            if n > len(b.examples) > 0:
                title += f", {len(b.examples)} shown"
            sec = Collapsible(title, expanded=b.index in self._expanded_bands and bool(b.examples))
            sec.band = b
            if not b.examples:
                sec.button.setCheckable(False)
                sec.button.setArrowType(Qt.NoArrow)
                sec.button.setEnabled(False)
            sec.toggled.connect(lambda on, j=b.index: (self._expanded_bands.add(j) if on
                                                       else self._expanded_bands.discard(j)))
            sec.examples = ExampleList()
            sec.examples.set_examples(b.examples, scale)
            sec.body_layout.addWidget(sec.examples)
            self.bands_layout.addWidget(sec)
            self.band_sections.append(sec)
        self.bands_title.setVisible(bool(self.band_sections))
        # histogram
        h = d.histogram
        edges, counts = np.asarray(h.edges, float), np.asarray(h.counts, float)
        if len(counts):
            self.histogram_item.setOpts(x0=edges[:-1], x1=edges[1:], height=counts)
        act = float(activation or 0.0)
        self.prompt_line.setPos(act)
        top = float(counts.max()) if len(counts) and counts.max() > 0 else 1.0
        self.prompt_text.setPos(act, top)
        self.prompt_text.setAnchor((1.05, 0) if act > 0.6 * max(edges[-1] if len(edges) else 1.0, act) else
                                   (-0.05, 0))
        right = max(float(edges[-1]) if len(edges) else 1.0, act) or 1.0
        self.plot.setXRange(0, right * 1.03, padding=0)
        self.plot.setYRange(0, top * 1.08, padding=0)
        self.hist_note.setText(f"{d.n_active:,} non-zero activations in {len(counts)} bins; the dashed line is "
                               f"this prompt ({fmt(act)}).")
        # logits
        self.promotes.set_effects(d.top_logits)
        self.suppresses.set_effects(d.bottom_logits)
        self.scroll.verticalScrollBar().setValue(0)

    # ---- labels ----
    def _commit_label(self) -> None:
        target = self._label_target
        if target is None or not self.label_edit.isModified():
            return
        analysis, node = target
        self.label_edit.setModified(False)
        if analysis is not self.controller.analysis:
            return  # the graph was replaced while typing
        text = self.label_edit.text().strip()
        key = analysis.feature_key(node)
        if key is None or analysis.labels.get(key, "") == text:
            return
        analysis.set_label(node, text)

    def _revert_label(self) -> None:
        if self._label_target is None:
            return
        analysis, node = self._label_target
        key = analysis.feature_key(node)
        self.label_edit.setText(analysis.labels.get(key, "") if key else "")
        self.label_edit.setModified(False)

    # ---- building an index ----
    def default_index_path(self) -> Path:
        """`<transcoders folder>/feature_index.sqlite` when that folder is writable (a numbered name if
        the file exists), else a file in the user's data folder."""
        tc = self.controller.transcoders
        source = Path(tc.source) if tc is not None and getattr(tc, "source", None) else None
        if source is not None and source.is_file():
            source = source.parent
        if source is not None and source.is_dir() and os.access(source, os.W_OK):
            folder, stem = source, "feature_index"
        else:
            folder = Path(QStandardPaths.writableLocation(QStandardPaths.AppDataLocation) or
                          Path.home() / ".circuit-studio") / "feature_indexes"
            scan = (tc.scan if tc is not None else "") or (source.name if source else "transcoders")
            stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in scan) or "transcoders"
        path = folder / f"{stem}.sqlite"
        k = 2
        while path.exists():
            path = folder / f"{stem}-{k}.sqlite"
            k += 1
        return path

    def choose_corpus_and_build(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Text corpus for the feature index", "",
                                              "Text files (*.txt);;All files (*)")
        if path:
            self.build_index(path)

    def choose_index_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Feature index", "", "Feature index (*.sqlite *.db)")
        if path:
            self.controller.open_feature_index(path)

    def _open_existing(self) -> None:
        path = self.open_existing_button.property("path")
        if path:
            self.controller.open_feature_index(path)

    def build_index(self, corpus_path, out_path=None, *, context: int = DEFAULT_CONTEXT,
                    max_windows: int | None = None, batch_size: int = 8) -> Path | None:
        """Index the loaded transcoders on the text file `corpus_path` in the background, then open the
        index. Returns the output path, or None (with the reason shown) when no model and transcoders are
        loaded or another job is running."""
        from ..core.corpus_text import read_corpus, token_windows
        from ..core.feature_index_build import build_feature_index

        c = self.controller
        bundle, tc = c.bundle, c.transcoders
        if bundle is None or tc is None:
            self.build_status.setText("Load the model and its transcoders first.")
            return None
        if c.jobs.busy:  # a waiting job can be replaced by a newer one: start only on an idle runner
            self.build_status.setText(f"Wait for “{c.jobs.current_name}” to finish (or cancel it), then build.")
            return None
        corpus = Path(corpus_path).expanduser()
        out = Path(out_path).expanduser() if out_path else self.default_index_path()
        limit = bundle.summary.max_positions
        ctx = min(context, limit) if limit else context

        def job(progress, cancel):
            out.parent.mkdir(parents=True, exist_ok=True)
            lines = read_corpus(corpus)
            windows = token_windows(bundle.tokenizer, lines, context=ctx)
            if max_windows is not None:
                windows = windows[:max_windows]
            index = build_feature_index(bundle, tc, windows, out, batch_size=batch_size, corpus_name=corpus.name,
                                        progress=progress, cancel=cancel)
            index.close()
            return out

        def done(path):
            if c.transcoders is tc:  # still the same transcoders
                c.open_feature_index(path)
                c.message.emit(f"Feature index written to {path}.")

        self._build_out = out
        c.jobs.submit(BUILD_JOB, job, done)
        self.build_button.setEnabled(False)
        self.open_existing_button.hide()
        self.build_progress.setRange(0, 0)
        self.build_progress.setFormat("Starting…")
        self.build_progress.show()
        self.build_status.setText(f"Indexing {corpus.name} (Cancel in the prompt bar stops it).")
        self.refresh()
        return out

    def _on_job_progress(self, name: str, p) -> None:
        if name != BUILD_JOB:
            return
        self.build_progress.setRange(0, max(int(p.total), 0))
        self.build_progress.setValue(int(p.done))
        self.build_progress.setFormat(f"{p.phase} {p.done}/{p.total}" if p.total else p.phase)

    def _on_job_end(self, name: str, message: str) -> None:
        if name != BUILD_JOB:
            return
        self._build_out = None
        self.build_progress.hide()
        self.build_status.setText(message)
        self.refresh()
