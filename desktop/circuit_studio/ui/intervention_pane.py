"""The intervention pane: steer or ablate features and supernodes, and see what changes.

A view of the workspace's steering model (`core.interventions.steering.Steering`, whose docstring says what a row,
its multiple and its position mode mean): the rows (`intervention_rows.RowView`), the controls, the
outputs (`intervention_plots.OutputsView`: next-token bars before and after, the strength sweep, the
default and steered continuations) and a status line. User actions become calls on the model; the
pane redraws on the model's events. `intervention_jobs.SteeringScheduler` runs the computations
(`core.interventions`) as controller jobs and hands the results to the model. Effects on the graph:
the model's `changes` reach the canvas through the controller (`Controller.intervention_changed`),
which draws them as rings.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFrame, QHBoxLayout, QLabel, QLineEdit, QPushButton, QScrollArea,
                               QSpinBox, QSplitter, QVBoxLayout, QWidget)

from ..core.graph.attribution_graph import NodeKind
from ..core.interventions.intervene import activation_changes  # noqa: F401 - re-exported (tests, scripts)
from ..core.interventions.steering import (AFTER_COLOUR, DEFAULT_TOKENS, MAX_TOKENS, NO_GRAPH, NO_MODEL, ContextChanged,  # noqa: F401
                             ResultChanged, RowChanged, RowsChanged, RowsRenamed, SteeringError, SteeringLoaded,
                             SteeringState, OptionsChanged, show_token)
from .canvas.activation_rings import CHANGE_TOLERANCE
from .intervention_jobs import SteeringScheduler
from .intervention_plots import BAR_SLOT_PX, TOP_K, OutputsView  # noqa: F401 - re-exported
from .intervention_rows import RowView

WIDE_PANE_PX = 1000  # narrower than this, the controls sit above the plots
ERROR_STYLE = "color: #b03000;"
EMPTY_TEXT = ("Select a feature on the graph and press “Add selected”, or pin nodes and supernodes and press “Add "
              "pinned”. Each row's slider sets a multiple of the feature's activation on this prompt: its left end (0) "
              "ablates, 1 leaves it alone; type x1.5 for a multiple or =3.44 (or press =) for an activation.")


class InterventionPane(QWidget):
    """Steer features of the current graph; see the module docstring.

    For tests and the window: `add_node(node)`, `add_selected()`, `add_pinned()`,
    `add_feature(layer, feature, position)`, `remove_row(row)`, `clear_rows()`, `reset()`,
    `set_multiple(row, m)`, `set_multiple_text(row, text)` ("x1.5", "1.5×", "=3.44", or a bare number read as
    the row's entry), `set_value(row, activation)`, `set_entry(row, "multiple"|"value")`,
    `set_position_mode(row, "token"|"all")`,
    `interventions()`, `update_now()`, `last_result` (`InterventionUpdate`), `strength_sweep(row, values,
    token_id)` (synchronous) and `run_sweep(row, token_id, values)` (a job; `sweep_finished`), `last_sweep`;
    counters `updates_submitted` / `updates_computed`; widgets `rows`, `freeze_check`, `tokens_spin`,
    `bar_plot`, `sweep_plot`, `default_text`, `steered_text`, `status_label`, `message_label`.
    Signals: `updated(InterventionUpdate)`, `sweep_finished(SweepResult)`.
    """

    updated = Signal(object)
    sweep_finished = Signal(object)

    def __init__(self, controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.steering = controller.workspace.steering
        self.rows: list[RowView] = []
        self.scheduler = SteeringScheduler(self.steering, controller.jobs, self)
        self._build()
        self.scheduler.updated.connect(self.updated)
        self.scheduler.sweep_finished.connect(self._show_sweep)
        self.scheduler.message.connect(self._say)
        self.scheduler.status.connect(self.status_label.setText)
        ev = self.steering.events
        ev.connect(self._on_rows, RowsChanged, RowsRenamed, SteeringLoaded)
        ev.connect(self._on_row, RowChanged)
        ev.connect(self._on_options, OptionsChanged, SteeringLoaded)
        ev.connect(self._on_result, ResultChanged)
        ev.connect(self._on_context, ContextChanged)
        controller.aspect_changed.connect(lambda _: self._update_buttons())
        self._on_context(None)
        self._on_rows(None)
        self._on_result(None)

    # ---------------------------------------------------------------- construction
    def _build(self) -> None:
        self.add_selected_button = QPushButton("Add selected")
        self.add_selected_button.setToolTip("Add the feature node selected on the graph")
        self.add_selected_button.clicked.connect(self.add_selected)
        self.add_pinned_button = QPushButton("Add pinned")
        self.add_pinned_button.setToolTip("Add every pinned feature node and supernode (a supernode scales all its "
                                          "features together)")
        self.add_pinned_button.clicked.connect(self.add_pinned)
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("Set every multiple back to 1 (no intervention)")
        self.reset_button.clicked.connect(self.reset)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Remove every row")
        self.clear_button.clicked.connect(self.clear_rows)
        top = QHBoxLayout()
        top.setSpacing(4)
        for b in (self.add_selected_button, self.add_pinned_button):
            top.addWidget(b)
        top.addStretch(1)
        for b in (self.reset_button, self.clear_button):
            top.addWidget(b)

        self.layer_spin = QSpinBox()
        self.layer_spin.setPrefix("L")
        self.layer_spin.setToolTip("Layer of a feature to add by hand")
        self.feature_edit = QLineEdit()
        self.feature_edit.setPlaceholderText("feature #")
        self.feature_edit.setFixedWidth(QFontMetrics(self.feature_edit.font()).horizontalAdvance("feature #0") + 12)
        self.feature_edit.setToolTip("Index of a transcoder feature to add by hand (it need not be in the graph)")
        self.feature_edit.returnPressed.connect(self._add_typed_feature)
        self.position_combo = QComboBox()
        self.position_combo.setToolTip("Where to set the typed feature")
        self.position_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.add_feature_button = QPushButton("Add feature")
        self.add_feature_button.clicked.connect(self._add_typed_feature)
        typed = QHBoxLayout()
        typed.setSpacing(4)
        for w in (self.layer_spin, self.feature_edit, QLabel("at"), self.position_combo, self.add_feature_button):
            typed.addWidget(w)
        typed.addStretch(1)

        self._rows_box = QWidget()
        self._rows_layout = QVBoxLayout(self._rows_box)
        self._rows_layout.setContentsMargins(2, 2, 2, 2)
        self._rows_layout.setSpacing(3)
        self.empty_label = QLabel(EMPTY_TEXT)
        self.empty_label.setWordWrap(True)
        self.empty_label.setStyleSheet("color: #777;")
        self._rows_layout.addWidget(self.empty_label)
        self._rows_layout.addStretch(1)
        scroll = self.rows_scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QFrame.Shape.StyledPanel)
        scroll.setWidget(self._rows_box)

        self.freeze_check = QCheckBox("Freeze attention")
        self.freeze_check.setChecked(True)
        self.freeze_check.setToolTip("Replay the clean run's attention patterns (circuit-tracer's default): the "
                                     "intervention acts through the MLPs only, and on the first generated token")
        self.freeze_check.toggled.connect(self.steering.set_freeze_attention)
        self.tokens_spin = QSpinBox()
        self.tokens_spin.setRange(0, MAX_TOKENS)
        self.tokens_spin.setValue(DEFAULT_TOKENS)
        self.tokens_spin.setToolTip("How many tokens to continue greedily (0: none)")
        self.tokens_spin.valueChanged.connect(self.steering.set_n_tokens)
        opts = QHBoxLayout()
        opts.addWidget(self.freeze_check)
        opts.addStretch(1)
        opts.addWidget(QLabel("Continue"))
        opts.addWidget(self.tokens_spin)
        opts.addWidget(QLabel("tokens"))

        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.message_label.setStyleSheet(ERROR_STYLE)
        self.message_label.hide()
        self.status_label = QLabel("No intervention yet.")
        self.status_label.setWordWrap(True)
        self.status_label.setStyleSheet("color: #555;")
        # two lines whatever it says, so that a new status never resizes the rows' list (and moves its scroll)
        self.status_label.setFixedHeight(2 * QFontMetrics(self.status_label.font()).lineSpacing() + 2)
        self.status_label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(4, 4, 4, 4)
        lv.setSpacing(4)
        lv.addLayout(top)
        lv.addWidget(scroll, 1)
        lv.addLayout(typed)
        lv.addLayout(opts)
        lv.addWidget(self.message_label)
        lv.addWidget(self.status_label)

        self.outputs = right = OutputsView()
        right.sweep_button.clicked.connect(lambda: self.run_sweep())
        split = self._split = QSplitter(Qt.Orientation.Horizontal)
        split.setChildrenCollapsible(False)
        left.setMinimumWidth(300)
        # explicit floors: stacked (narrow dock), the parts' own minimums made the window too tall for a laptop
        left.setMinimumHeight(110)
        right.setMinimumHeight(110)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([520, 780])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(split)

    # the output widgets, by their old names (tests, scripts)
    bar_plot = property(lambda self: self.outputs.bar_plot)
    sweep_plot = property(lambda self: self.outputs.sweep_plot)
    default_text = property(lambda self: self.outputs.default_text)
    steered_text = property(lambda self: self.outputs.steered_text)
    steered_caption = property(lambda self: self.outputs.steered_caption)
    sweep_row_combo = property(lambda self: self.outputs.sweep_row_combo)
    sweep_token_combo = property(lambda self: self.outputs.sweep_token_combo)
    sweep_button = property(lambda self: self.outputs.sweep_button)
    bar_tokens = property(lambda self: self.outputs.bar_tokens)
    last_sweep = property(lambda self: self.outputs.last_sweep)
    _sweep_curve = property(lambda self: self.outputs._sweep_curve)
    _sweep_line = property(lambda self: self.outputs._sweep_line)
    _sweep_mark = property(lambda self: self.outputs._sweep_mark)
    _plots_split = property(lambda self: self.outputs.plots_split)
    # the model's and the scheduler's state
    last_result = property(lambda self: self.steering.result)
    _version = property(lambda self: self.steering.version)
    pending = property(lambda self: self.scheduler.pending)
    updates_submitted = property(lambda self: self.scheduler.updates_submitted)
    updates_computed = property(lambda self: self.scheduler.updates_computed)
    continuations_computed = property(lambda self: self.scheduler.continuations_computed)

    def resizeEvent(self, event) -> None:  # noqa: N802
        """Side by side in a wide (bottom) dock, stacked in a narrow (side) one."""
        super().resizeEvent(event)
        wide = self.width() >= WIDE_PANE_PX
        split = Qt.Orientation.Horizontal if wide else Qt.Orientation.Vertical
        if self._split.orientation() != split:
            self._split.setOrientation(split)
        plots = Qt.Orientation.Horizontal if self.width() >= (WIDE_PANE_PX if wide else WIDE_PANE_PX / 2) \
            else Qt.Orientation.Vertical
        if self._plots_split.orientation() != plots:
            self._plots_split.setOrientation(plots)

    # ---------------------------------------------------------------- messages
    def _say(self, text: str) -> None:
        """A clear message about what the user asked for (bad input, nothing loaded, a failed update)."""
        self.message_label.setText(text)
        self.message_label.setVisible(bool(text))
        if text and self.steering.result is None and self.steering.saved is not None:
            self.status_label.setText("Saved result: load the model to steer further.")

    @property
    def message(self) -> str:
        """The message shown to the user ('' when none)."""
        return self.message_label.text() if not self.message_label.isHidden() else ""

    def _attempt(self, action):
        """`action()`'s result, or None with the model's refusal shown."""
        before = len(self.steering.rows)
        try:
            out = action()
        except SteeringError as e:
            self._say(e.message)
            return None
        self._say("")
        if type(out) is int and len(self.steering.rows) == before and 0 <= out < before:
            self.status_label.setText(f"{self.steering.rows[out].name} is already in row {out + 1}.")
        return out

    # ---------------------------------------------------------------- user actions -> the model
    def add_node(self, node: int) -> int | None:
        """Add a row for feature node `node` of the current graph; returns its row (None, with a message, if
        it cannot be added)."""
        return self._attempt(lambda: self.steering.add_node(node))

    def add_selected(self) -> int | None:
        return self._attempt(self.steering.add_selected)

    def add_pinned(self) -> list[int]:
        """A row per supernode (its feature members together) and per pinned feature node outside one."""
        out = self._attempt(self.steering.add_pinned)
        if out is None:
            return []
        added, skipped = out
        if skipped:
            self._say(f"Not steerable (no transcoder features): {', '.join(skipped[:4])}"
                      f"{'…' if len(skipped) > 4 else ''}.")
        return added

    def add_feature(self, layer: int, feature: int | str, position: int | str) -> int | None:
        """Add a transcoder feature by hand (it need not be a node): `position` a prompt position or "all"."""
        return self._attempt(lambda: self.steering.add_feature(layer, feature, position))

    def _add_typed_feature(self) -> None:
        self.add_feature(self.layer_spin.value(), self.feature_edit.text(), self.position_combo.currentData())

    def remove_row(self, row: int) -> None:
        self._attempt(lambda: self.steering.remove_row(row))

    def clear_rows(self) -> None:
        self.steering.clear()

    def reset(self) -> None:
        """Every multiple back to 1 and every position to "this token": no intervention."""
        self.steering.reset()

    def set_multiple(self, row: int, m: float | str) -> bool:
        """Set row `row`'s multiple (0 ablates, 1 leaves it); False, with a message, when `m` is unusable."""
        ok = self._attempt(lambda: self.steering.set_multiple(row, m) or True) is not None
        if 0 <= row < len(self.rows):
            self.rows[row].show_row(self.steering.rows[row])  # the box shows the value in force
        return ok

    def set_multiple_text(self, row: int, text: str) -> bool:
        """What typing `text` in the row's box and pressing Enter does."""
        return self.set_multiple(row, str(text))

    def set_value(self, row: int, activation: float | str) -> bool:
        """Set row `row`'s feature to the activation `activation` (a row of one feature); False, with a message,
        when it cannot."""
        ok = self._attempt(lambda: self.steering.set_value(row, activation) or True) is not None
        if 0 <= row < len(self.rows):
            self.rows[row].show_row(self.steering.rows[row])
        return ok

    def set_entry(self, row: int, entry: str) -> bool:
        """Type and show row `row` as a "multiple" or as a "value" (the activation): the row's ×/= toggle."""
        ok = self._attempt(lambda: self.steering.set_entry(row, entry) or True) is not None
        if 0 <= row < len(self.rows):
            self.rows[row].show_row(self.steering.rows[row])
        return ok

    def set_position_mode(self, row: int, mode: str) -> bool:
        return self._attempt(lambda: self.steering.set_mode(row, mode) or True) is not None

    def _step(self, view: RowView, delta: float) -> None:
        r = view.row
        self.set_multiple(self.rows.index(view), min(r.high, max(r.typed_low, round(r.multiple + delta, 6))))

    def interventions(self) -> list:
        """The interventions the rows describe now (rows later in the list win on the same feature and position)."""
        return self.steering.interventions()

    def state(self) -> SteeringState:
        return self.steering.state()

    def update_now(self) -> bool:
        """Submit the current state now (if the runner is idle); False, with a message, when it cannot run."""
        return self.scheduler.update_now()

    # ---------------------------------------------------------------- the model -> the view
    def _view_for(self, row) -> RowView:
        view = RowView(row, self.steering.range_note(row))
        view.slider_moved.connect(lambda m, v=view: v in self.rows and self.set_multiple(self.rows.index(v), m))
        view.text_entered.connect(lambda t, v=view: v in self.rows and self.set_multiple_text(self.rows.index(v), t))
        view.step_requested.connect(lambda d, v=view: v in self.rows and self._step(v, d))
        view.mode_chosen.connect(lambda m, v=view: v in self.rows and self.set_position_mode(self.rows.index(v), m))
        view.entry_chosen.connect(lambda e, v=view: v in self.rows and self.set_entry(self.rows.index(v), e))
        view.remove_requested.connect(lambda v=view: v in self.rows and self.remove_row(self.rows.index(v)))
        return view

    def _on_rows(self, _event) -> None:
        """Rows added, removed or replaced: keep the views of unchanged rows, rebuild from the first change."""
        rows = self.steering.rows
        keep = 0
        while keep < min(len(rows), len(self.rows)) and self.rows[keep].key == rows[keep].key:
            keep += 1
        for view in self.rows[keep:]:
            self._rows_layout.removeWidget(view.widget)
            view.widget.deleteLater()
        self.rows = self.rows[:keep]
        for i, view in enumerate(self.rows):
            view.show_row(rows[i])
        for row in rows[keep:]:
            view = self._view_for(row)
            self.rows.append(view)
            self._rows_layout.insertWidget(self._rows_layout.count() - 1, view.widget)
        self.empty_label.setVisible(not rows)
        a = self.steering.analysis
        self.outputs.set_sweep_choices(rows, a.graph if a is not None else None)
        self._move_sweep_mark()
        self._update_buttons()

    def _on_row(self, event: RowChanged) -> None:
        if 0 <= event.index < len(self.rows):
            self.rows[event.index].show_row(self.steering.rows[event.index])
        self.outputs.set_sweep_choices(self.steering.rows, self.steering.analysis.graph
                                       if self.steering.analysis is not None else None)
        self._move_sweep_mark()
        self._show_status()

    def _on_options(self, _event) -> None:
        s = self.steering
        for w, value in ((self.freeze_check, s.freeze_attention), (self.tokens_spin, s.n_tokens)):
            w.blockSignals(True)
            w.setChecked(value) if w is self.freeze_check else w.setValue(value)
            w.blockSignals(False)
        self._move_sweep_mark()

    def _on_result(self, _event) -> None:
        s = self.steering
        if s.result is not None:
            self.outputs.show_result(s.result)
            self._show_status()
        elif s.saved is not None:
            self.outputs.show_saved(s.saved)
            self.status_label.setText("Saved result: load the model to steer further.")
        else:
            self.outputs.clear()
            if s.analysis is not None:
                self.status_label.setText("No intervention yet.")
        self._move_sweep_mark()

    def _on_context(self, _event) -> None:
        """Another graph, or its resources loaded: the controls follow."""
        a, c = self.steering.analysis, self.steering.context
        self.position_combo.clear()
        if a is not None:
            g = a.graph
            for p in range(c.first_position, g.n_pos):
                self.position_combo.addItem(f"{p} {show_token(g.token_strings[p])}", p)
            self.position_combo.addItem("all positions", "all")
            self.position_combo.setCurrentIndex(self.position_combo.count() - 2)
            n_layers = c.transcoders.n_layers if c.transcoders is not None else g.n_layers
            self.layer_spin.setRange(0, n_layers - 1)
        self.status_label.setText("No intervention yet." if a is not None else NO_GRAPH)
        self._say("")
        self.outputs.set_sweep_choices(self.steering.rows, a.graph if a is not None else None)
        self._update_buttons()

    def _update_buttons(self) -> None:
        a = self.steering.analysis
        has_graph = a is not None
        self.add_selected_button.setEnabled(has_graph and a.selected is not None
                                            and a.graph.kind_of(a.selected) is NodeKind.FEATURE)
        self.add_pinned_button.setEnabled(has_graph and bool(a.pinned))
        for w in (self.reset_button, self.clear_button, self.sweep_button):
            w.setEnabled(bool(self.steering.rows))
        for w in (self.add_feature_button, self.feature_edit, self.layer_spin, self.position_combo):
            w.setEnabled(has_graph)

    def _show_status(self) -> None:
        r = self.steering.result
        if r is None:
            return
        parts = [f"Next token in {r.seconds * 1000:.0f} ms"]
        if r.continuation_seconds is not None:
            parts[0] += f", continuation in {r.continuation_seconds * 1000:.0f} ms"
        elif r.continuation_pending:
            parts[0] += ", continuing…"
        n = len(r.interventions)
        if n:
            down = sum(1 for v in r.changes.values() if v < -CHANGE_TOLERANCE)
            up = sum(1 for v in r.changes.values() if v > CHANGE_TOLERANCE)
            parts.append(f"{n} intervention{'' if n == 1 else 's'}")
            parts.append(f"feature nodes changed by more than {CHANGE_TOLERANCE:.0%}: {down} down, {up} up")
        else:
            parts.append("no intervention (every multiple is 1)")
        if self.scheduler.dirty or r.version != self.steering.version:
            parts.append("newer changes pending")
        self.status_label.setText(" · ".join(parts))

    # ---------------------------------------------------------------- sweep
    def strength_sweep(self, row: int, values, token_id: int) -> list[float]:
        """Synchronously: the probability of `token_id` at the last position with row `row` at each multiple
        in `values` (the other rows as they are). For tests and scripts; waits for a running job first.
        Also draws the sweep plot. Returns [] (with a message) on bad input."""
        result = self._attempt(lambda: self.scheduler.sweep_now(row, values, token_id))
        if result is None:
            return []
        self._show_sweep(result)
        return list(result.probabilities)

    def run_sweep(self, row: int | None = None, token_id: int | None = None, values=None) -> bool:
        """The Sweep button: the same as `strength_sweep`, as a job; the result arrives as `sweep_finished`."""
        row = self.sweep_row_combo.currentData() if row is None else row
        token_id = self.sweep_token_combo.currentData() if token_id is None else token_id
        if row is None or token_id is None:
            self._say("Add a row (and trace a graph with logit targets) to sweep.")
            return False
        if values is None and 0 <= row < len(self.steering.rows):
            values = self.steering.sweep_values(row)
        return self._attempt(lambda: self.scheduler.sweep(row, values if values is not None else [], token_id)
                             or True) is not None

    def _show_sweep(self, result) -> None:
        self.outputs.show_sweep(result, self.steering.rows, self._sweep_stale(result))
        self.sweep_finished.emit(result)

    def _sweep_stale(self, s) -> bool:
        row = next((i for i, r in enumerate(self.steering.rows) if s is not None and r.key == s.row_key), None)
        return row is not None and s.context != self.steering.sweep_context(row)

    def _move_sweep_mark(self) -> None:
        self.outputs.move_sweep_mark(self.steering.rows, self._sweep_stale(self.outputs.last_sweep))

    def shutdown(self) -> None:
        self.scheduler.stop()
