"""The feature detail pane: what the selected node is, and for a feature its dashboard.

For a feature node: its label (editable; the automatic label from the feature index shows greyed
when the user has none), layer and feature id, position and token, its activation on this prompt
and its ratio to the feature's max in the index, density; then from the feature index its top
activating examples (tokens shaded by activation relative to the feature's max), examples from
lower quantile bands (collapsible), an activation histogram with this prompt's activation marked,
and its top positive and negative logit effects. Error, token and logit nodes say what they are.
Without a feature index the pane says so and offers to build one (`IndexBuilder`).

Reading one feature from the index is a single small SQLite read (well under a millisecond), so it
happens on the GUI thread, only for the selected node, and is cached per (layer, feature).
"""

from __future__ import annotations

import html
from collections import OrderedDict

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QLineEdit, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from ...core.session.analysis import Aspect
from ...core.graph.display_text import feature_name, quoted
from ...core.graph.attribution_graph import NodeKind
from .examples import ExampleList, TokenRow
from .histogram import ActivationHistogram
from .index_builder import IndexBuilder
from .logits import LogitTable
from .sections import Collapsible, clear_layout, section_title
from .style import fmt, muted

_CACHE_SIZE = 256


class _LabelEdit(QLineEdit):
    """The label editor: Esc throws the edit away (`reverted`)."""

    reverted = Signal()

    def keyPressEvent(self, e) -> None:
        if e.key() == Qt.Key_Escape:
            self.reverted.emit()
            return
        super().keyPressEvent(e)


class FeaturePane(QWidget):
    """Details of `controller.analysis.selected` (see the module docstring).

    Public for scripts and tests: `details_for(layer, feature)`, `example_rows` (the top examples'
    TokenRows), and the widgets `label_edit`, `auto_marker`, `stats`, `description`, `top_list`,
    `band_sections` (Collapsibles with `.band` and `.examples`), `histogram` (an `ActivationHistogram`),
    `promotes`, `suppresses`, `no_index` (the `IndexBuilder`, which builds indexes)."""

    def __init__(self, controller, parent=None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._cache: OrderedDict[tuple[int, int], object] = OrderedDict()
        self._node: int | None = None  # the node shown
        self._label_target: tuple[object, int] | None = None  # (analysis, node) the label edit writes to
        self._details_key = None  # what the details area shows, to skip rebuilding it
        self._expanded_bands: set[int] = set()
        self._refreshing = False
        self.browsed: tuple[int, int] | None = None  # a feature shown from the index, not a node (Find feature)
        self.band_sections: list[Collapsible] = []
        self._build_ui()
        controller.aspect_changed.connect(self._on_aspect)
        controller.analysis_changed.connect(self.refresh)
        controller.model_changed.connect(self._on_model_changed)
        self.no_index.changed.connect(self.refresh)
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
        self.no_index = IndexBuilder(self.controller)
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
        self.top_title = section_title("Top activations")
        dl.addWidget(self.top_title)
        self.top_list = ExampleList()
        dl.addWidget(self.top_list)
        self.top_empty = QLabel("This feature never fired on the index's corpus: no cached examples.")
        self.top_empty.setWordWrap(True)
        self.top_empty.setStyleSheet(f"color: {muted(self)};")
        dl.addWidget(self.top_empty)
        self.bands_title = section_title("Lower activations, by interval of the max")
        dl.addWidget(self.bands_title)
        self.bands_box = QWidget()
        self.bands_layout = QVBoxLayout(self.bands_box)
        self.bands_layout.setContentsMargins(0, 0, 0, 0)
        self.bands_layout.setSpacing(0)
        dl.addWidget(self.bands_box)
        self.hist_title = section_title("Activation histogram")
        dl.addWidget(self.hist_title)
        self.histogram = ActivationHistogram(self.palette().color(QPalette.Base))
        dl.addWidget(self.histogram)
        self.hist_note = QLabel()
        self.hist_note.setStyleSheet(f"color: {muted(self)};")
        self.hist_note.setWordWrap(True)
        dl.addWidget(self.hist_note)
        self.logits_title = section_title("Logit effects (direct, through the unembedding)")
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
        if aspect == Aspect.SELECTION.value:
            self.browsed = None  # a node was selected: show it
        if aspect in (Aspect.SELECTION.value, Aspect.LABELS.value):
            self.refresh()

    def show_index_feature(self, layer: int, feature: int) -> None:
        """Show the dashboard of (layer, feature) from the feature index, graph or no graph (Find feature);
        selecting a node returns to the node."""
        self.browsed = (int(layer), int(feature))
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
        if self.browsed is not None:
            if self._label_target is not None and self.label_edit.isModified():
                self._commit_label()
            self._node = None
            self._show_browsed(*self.browsed)
            return
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
        self.title.setText(f"Feature {feature_name(layer, feat)}  ·  position {info.position} {quoted(info.token)}")
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
            self.no_index.refresh()
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

    def _show_browsed(self, layer: int, feat: int) -> None:
        from ...core.features.search import graphs_with_feature

        index = self.controller.feature_index
        self.title.setText(f"Feature {feature_name(layer, feat)}  ·  from the feature index")
        if index is None:
            self._show_message("No feature index is loaded: open one (File ▸ Open feature index) to browse features.")
            self.title.setText(f"Feature {feature_name(layer, feat)}")
            return
        try:
            d = self.details_for(layer, feat)
        except Exception as e:  # noqa: BLE001 - a bad index must not break the pane
            self._show_message(f"The feature index cannot show this feature: {getattr(e, 'message', e)}")
            return
        active = graphs_with_feature(self.controller.workspace, layer, feat)
        where = ("; ".join(f"“{html.escape(a.title[:40])}” at {', '.join(quoted(t) for t in a.tokens[:3])}"
                           f"{'…' if len(a.tokens) > 3 else ''} (max {fmt(a.max_activation)})" for a in active[:4])
                 if active else "none")
        self.active_graphs = active
        self.stats.setText(f"Label: <b>{html.escape(d.label)}</b><br>Max activation in the index: "
                           f"<b>{fmt(d.max_activation)}</b>; density <b>{d.density * 100:.3g}%</b><br>"
                           f"Active in this session's graphs: {where}")
        self._set_mode(label=False, stats=True, description=False, no_index=False, details=True)
        shown = (id(index), layer, feat, None)
        if shown != self._details_key:
            self._show_details(d, None, index)
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
        self.label_edit.setPlaceholderText(auto or f"{feature_name(*key)} (no label yet: type one)")
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
        clear_layout(self.bands_layout)
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
        self.histogram.show_histogram(d.histogram, activation)
        self.hist_note.setText(f"{d.n_active:,} non-zero activations in {len(d.histogram.counts)} bins; the dashed "
                               f"line is this prompt ({fmt(float(activation or 0.0))}).")
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
