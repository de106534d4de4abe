"""The intervention pane: steer or ablate features and supernodes, and see what changes.

What analysts know from Neuronpedia's steer modal and circuit-tracer's `feature_intervention`, tied to
the graph (spec §7):

* one row per intervened item: a feature node ("Add selected"), every pinned node and supernode
  ("Add pinned"), or a feature typed by layer and index ("Add feature"). The row's slider and box
  hold a **multiple m of the item's activation on this prompt**: 0 ablates, 1 leaves it alone, −2 …
  k where k × activation reaches about twice the feature index's largest activation (10× without an
  index). A supernode row scales every feature member by the same m of its own activation. A typed
  feature that is not active here is scaled by its index maximum (Neuronpedia's convention), or taken
  as a plain value when there is no index;
* a position per row: "this token" (the node's own position) or "all positions" (an open-ended slice
  from the first real token, which also applies to the generated tokens);
* freeze attention (default on, circuit-tracer's default), how many tokens to continue, Reset;
* output: the next-token distribution before and after as side-by-side bars, the default and the
  steered continuation (steered tokens that differ are highlighted), a strength sweep (probability
  of a chosen logit against the row's multiple, the current value marked), and a status line with
  the time the last update took;
* effects on the graph: every feature node's relative activation change goes to the controller
  (`Controller.set_intervention_changes`), which the canvas draws as rings.

Updates run as controller jobs, in two parts: the next-token logits and the activation changes
(one forward pass with the cached clean run's attention: bars and rings follow a drag), then the
continuations, only for a state that is still current once its first part is shown. The pane has at
most one job in flight and never queues one behind another job: while the runner is busy it only
remembers that the state changed, and submits the latest state once the runner is idle (slider drags
queue no backlog, and a waiting trace or load is never displaced). The clean run and the default
continuation are cached per graph.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pyqtgraph as pg
import torch
from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFrame, QGridLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QScrollArea, QSizePolicy, QSlider, QSpinBox, QSplitter, QTextEdit, QVBoxLayout, QWidget)

from ..core.analysis import Aspect
from ..core.graph import AttributionGraph, NodeKind
from ..core.interventions import Generation, Intervention, InterventionError, check_interventions, generate, intervene
from .graph_canvas import CHANGE_TOLERANCE

JOB_NAME = "Intervention"
CONTINUATION_JOB_NAME = "Continuation"
SWEEP_JOB_NAME = "Strength sweep"
MULTIPLE_MIN = -2.0  # the slider's bottom: twice the activation, negated
DEFAULT_TOP = 10.0  # the slider's top without a feature index
INDEX_HEADROOM = 2.0  # with an index, the top reaches this times the feature's largest activation there
MAX_MULTIPLE = 1000.0
SLIDER_STEPS = 1200  # at most this many slider positions; 0 and 1 always fall on one
COALESCE_MS = 15  # slider moves closer together than this become one update
DEFAULT_TOKENS = 8
MAX_TOKENS = 64
TOP_K = 8  # bars in the next-token chart, at most
BAR_SLOT_PX = 56  # fewer bars when the chart is narrow: a token label needs about this much room
SWEEP_POINTS = 21
WIDE_PANE_PX = 1000  # narrower than this, the controls sit above the plots
CHANGE_EPS = 1e-4  # relative activation changes smaller than this are not sent to the canvas
BEFORE_COLOUR = "#8da0b8"
AFTER_COLOUR = "#e8590c"
TEXT = "#303030"
ERROR_STYLE = "color: #b03000;"
STEERED_CAPTION = f"<b>Steered</b> <span style='color:{AFTER_COLOUR}'>(changed tokens)</span>"
NO_GRAPH = "No graph is loaded: trace a prompt (or open a graph) first, then add its features here."
NO_MODEL = ("The model and transcoders of this graph are not loaded: open them (File ▸ Open demo, or the model and "
            "transcoder folders) to run interventions.")


def _show_token(tok: str) -> str:
    return tok.replace("\n", "⏎").replace("\t", "⇥") if tok.strip() else repr(tok)


def _show_piece(piece: str) -> str:
    return piece.replace("\n", "⏎").replace("\t", "⇥")


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _fmt_multiple(m: float) -> str:
    return f"{m:.4g}"


# ---------------------------------------------------------------- plain data

@dataclass(frozen=True)
class Target:
    """One transcoder feature a row sets: to `multiple × base`."""

    node: int | None  # the graph's feature node; None for a feature typed in that is not a node
    layer: int
    position: int
    feature: int
    base: float  # the activation the multiple scales
    base_kind: str = "prompt"  # "prompt" (its activation here), "prompt max" (its largest on this prompt),
    # "index max" (its largest in the feature index) or "value" (no scale known: the multiple is the value)


@dataclass(frozen=True)
class InterventionUpdate:
    """One computed intervention state (what the pane shows). P positions, V vocabulary, L layers, F features."""

    version: int
    interventions: tuple[Intervention, ...]
    before: torch.Tensor  # [P, V] clean logits
    after: torch.Tensor  # [P, V] logits with the interventions
    activations: torch.Tensor | None  # [L, P, F] as `intervene` returns them (a set feature reads its own input)
    changes: dict[int, float]  # feature node -> (after − before) / |before|, set values included; |change| > CHANGE_EPS
    freeze_attention: bool
    seconds: float  # wall time of the next-token computation
    n_tokens: int = 0  # continuation length asked for
    default: Generation | None = None  # continuation without interventions; None until computed (or 0 tokens)
    steered: Generation | None = None
    continuation_seconds: float | None = None

    @property
    def continuation_pending(self) -> bool:
        return self.n_tokens > 0 and self.steered is None

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        """Next-token probabilities (float64 [V]) before and after, at the last position. Computed once:
        the bars, the session's saved tokens and every autosave read them."""
        probs = self.__dict__.get("_probabilities")
        if probs is None:
            probs = (torch.softmax(self.before[-1].double(), -1).numpy(), torch.softmax(self.after[-1].double(), -1).numpy())
            object.__setattr__(self, "_probabilities", probs)  # a memo, not state: frozen otherwise
        return probs


@dataclass(frozen=True)
class RowState:
    """One row as undo and sessions keep it."""

    key: tuple
    name: str
    targets: tuple[Target, ...]
    detail: str
    multiple: float
    mode: str


@dataclass(frozen=True)
class PaneState:
    rows: tuple[RowState, ...] = ()
    freeze_attention: bool = True
    n_tokens: int = 0

    def to_json(self) -> dict:
        return {"rows": [{"key": _jsonable(r.key), "name": r.name, "detail": r.detail, "multiple": r.multiple,
                          "mode": r.mode, "targets": [vars(t) for t in r.targets]} for r in self.rows],
                "freeze_attention": self.freeze_attention, "n_tokens": self.n_tokens}

    @classmethod
    def from_json(cls, data: dict) -> "PaneState":
        rows = tuple(RowState(_tupled(r["key"]), r["name"], tuple(Target(**t) for t in r["targets"]), r["detail"],
                              float(r["multiple"]), r["mode"]) for r in data.get("rows", []))
        return cls(rows, bool(data.get("freeze_attention", True)), int(data.get("n_tokens", 0)))


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x


@dataclass(frozen=True)
class SweepResult:
    row_key: tuple
    row_name: str
    token_id: int
    token: str
    values: tuple[float, ...]
    probabilities: tuple[float, ...]
    seconds: float
    context: tuple = ()  # the other rows' state the sweep was run with


@dataclass
class _Cache:
    """Per graph (and model): the clean run and the default continuations. Filled on the compute thread."""

    bundle: object
    tc: object
    graph: AttributionGraph
    ids: torch.Tensor
    clean: object = None
    defaults: dict[int, Generation] = field(default_factory=dict)

    def clean_run(self):
        if self.clean is None:
            from ..core.replacement import record_clean_run

            self.clean = record_clean_run(self.bundle, self.ids, self.tc)
        return self.clean

    def default(self, n_tokens: int) -> Generation:
        if n_tokens not in self.defaults:
            self.defaults[n_tokens] = generate(self.bundle, self.tc, self.ids, [], n_tokens)
        return self.defaults[n_tokens]


def activation_changes(graph: AttributionGraph, activations: torch.Tensor,
                       interventions: list[Intervention] | tuple[Intervention, ...]) -> dict[int, float]:
    """Feature node -> relative activation change, (after − before) / |before|, where before is the graph's
    `activation_values` and after is `activations` [L, P, F] with each intervention's set value written in
    (`intervene` reports a set feature's activation before it is set). Changes under CHANGE_EPS are left out."""
    acts = activations.detach().float().cpu().clone()
    for iv in interventions:
        acts[iv.layer, iv.position, iv.feature] = float(iv.value)
    sel = graph.active_features[graph.selected_features]
    after = acts[torch.from_numpy(sel[:, 0].copy()), torch.from_numpy(sel[:, 1].copy()),
                 torch.from_numpy(sel[:, 2].copy())].numpy().astype(np.float64)
    before = graph.activation_values[graph.selected_features].astype(np.float64)
    ratio = (after - before) / np.maximum(np.abs(before), 1e-6)
    keep = np.flatnonzero(np.abs(ratio) > CHANGE_EPS)
    return dict(zip(keep.tolist(), ratio[keep].tolist()))


def _compute(bundle, tc, cache: _Cache, interventions: tuple[Intervention, ...], freeze: bool, n_tokens: int,
             version: int) -> InterventionUpdate:
    """An update's first part, on the compute thread: next-token logits and activation changes."""
    t0 = time.perf_counter()
    clean = cache.clean_run()
    ivs = list(interventions)
    result = intervene(bundle, tc, cache.ids, ivs, freeze_attention=freeze, clean=clean)
    changes = activation_changes(cache.graph, result.activations, ivs) if ivs else {}
    return InterventionUpdate(version, interventions, clean.logits, result.logits, result.activations, changes,
                              freeze, time.perf_counter() - t0, n_tokens)


def _continue(bundle, tc, cache: _Cache, interventions: tuple[Intervention, ...], freeze: bool,
              n_tokens: int) -> tuple[Generation, Generation, float]:
    """An update's second part: the default and the steered continuation (greedy, `n_tokens` long)."""
    t0 = time.perf_counter()
    default = cache.default(n_tokens)
    ivs = list(interventions)
    steered = generate(bundle, tc, cache.ids, ivs, n_tokens, freeze_attention=freeze) if ivs else default
    return default, steered, time.perf_counter() - t0


def _sweep(bundle, tc, cache: _Cache, build: Callable[[float], list[Intervention]], values: list[float],
           token_id: int, freeze: bool, progress=None, cancel=None) -> list[float]:
    from ..core.progress import check, report

    clean = cache.clean_run()
    out = []
    for i, v in enumerate(values):
        check(cancel)
        report(progress, SWEEP_JOB_NAME, i, len(values))
        r = intervene(bundle, tc, cache.ids, build(v), freeze_attention=freeze, clean=clean, return_activations=False)
        out.append(float(torch.softmax(r.logits[-1].double(), -1)[token_id]))
    return out


# ---------------------------------------------------------------- rows

class _ElidedLabel(QLabel):
    """A one-line label that elides its text to whatever width it gets."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self._full = text
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(40)
        self.setText(text)

    def full_text(self) -> str:
        return self._full

    def set_full_text(self, text: str) -> None:
        self._full = text
        self.setText(self.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, max(self.width() - 2, 10)))

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self.setText(self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, max(self.width() - 2, 10)))


class _Row(QObject):
    """One intervened item: its targets, multiple, position mode and widgets."""

    changed = Signal()
    about_to_change = Signal()  # before the multiple or the position mode changes (undo snapshots)
    remove_requested = Signal()

    def __init__(self, key: tuple, name: str, targets: tuple[Target, ...], top: float, tip: str) -> None:
        super().__init__()
        self.key, self.name, self.targets = key, name, targets
        self.low, self.high = MULTIPLE_MIN, top
        self.step = next(s for s in (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
                         if (self.high - self.low) / s <= SLIDER_STEPS)
        self.multiple = 1.0
        self.mode = "token"

        self.widget = QFrame()
        self.widget.setObjectName("interventionRow")
        self.widget.setStyleSheet("QFrame#interventionRow { border-bottom: 1px solid #d8d8d8; }")
        self.name_label = _ElidedLabel(name)
        self.name_label.setToolTip(tip)
        fm = QFontMetrics(self.name_label.font())
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(round(self.low / self.step), round(self.high / self.step))
        self.slider.setMinimumWidth(70)
        self.slider.setToolTip(f"Multiple of the activation: {_fmt_multiple(self.low)} … {_fmt_multiple(self.high)}; "
                               "0 ablates, 1 leaves it unchanged")
        self.box = QLineEdit()
        self.box.setFixedWidth(fm.horizontalAdvance("-000.00") + 14)
        self.box.setAlignment(Qt.AlignmentFlag.AlignRight)
        self.box.setToolTip(f"Exact multiple ({_fmt_multiple(self.low)} … {_fmt_multiple(self.high)}); Enter applies, "
                            "↑/↓ step by 0.1, PgUp/PgDn by 1")
        self.value_label = QLabel()
        self.value_label.setFixedWidth(fm.horizontalAdvance("unchanged") + 4)
        self.value_label.setStyleSheet("color: #666;")
        self.position = QComboBox()
        self.position.addItem("this token" if len({t.position for t in targets}) == 1 else "their tokens", "token")
        self.position.addItem("all positions", "all")
        self.position.setToolTip("This token: set the feature at its own position.\nAll positions: set it to the same "
                                 "value at every position from the first real token on, generated tokens included.")
        self.remove_button = QPushButton("✕")
        self.remove_button.setFixedWidth(fm.horizontalAdvance("✕") + 16)
        self.remove_button.setToolTip("Remove this intervention")
        grid = QGridLayout(self.widget)  # name, position, remove / slider, multiple, value: fits a narrow dock
        grid.setContentsMargins(2, 2, 2, 4)
        grid.setHorizontalSpacing(4)
        grid.setVerticalSpacing(1)
        grid.addWidget(self.name_label, 0, 0, 1, 2)
        grid.addWidget(self.position, 0, 2)
        grid.addWidget(self.remove_button, 0, 3)
        grid.addWidget(self.slider, 1, 0)
        grid.addWidget(self.box, 1, 1)
        grid.addWidget(self.value_label, 1, 2, 1, 2)
        grid.setColumnStretch(0, 1)
        self.slider.valueChanged.connect(self._slider_moved)
        self.position.currentIndexChanged.connect(self._position_changed)
        self.remove_button.clicked.connect(self.remove_requested)
        self.box.installEventFilter(self)
        self._show()

    # state -> widgets
    def _show(self) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round(self.multiple / self.step))
        self.slider.blockSignals(False)
        self.box.setText(_fmt_multiple(self.multiple))
        if self.multiple == 0:
            text = "ablate"
        elif self.multiple == 1 and self.mode == "token" and self.is_relative:
            text = "unchanged"
        elif len(self.targets) == 1:
            text = f"= {_fmt(self.multiple * self.targets[0].base)}"
        else:
            text = f"{len(self.targets)} features"
        self.value_label.setText(text)

    @property
    def is_relative(self) -> bool:
        """Every target is scaled by its own activation here (so m = 1 changes nothing)."""
        return all(t.base_kind == "prompt" for t in self.targets)

    def set_multiple(self, m: float) -> None:
        if float(m) != self.multiple:
            self.about_to_change.emit()
        self.multiple = float(m)
        self._show()
        self.changed.emit()

    def set_mode(self, mode: str) -> None:
        if mode != self.mode:
            self.about_to_change.emit()
        self.mode = mode
        self.position.blockSignals(True)
        self.position.setCurrentIndex(0 if mode == "token" else 1)
        self.position.blockSignals(False)
        self._show()
        self.changed.emit()

    def _slider_moved(self, value: int) -> None:
        self.about_to_change.emit()
        self.multiple = round(value * self.step, 6)
        self._show()
        self.changed.emit()

    def _position_changed(self, index: int) -> None:
        self.set_mode(self.position.itemData(index))

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        if obj is self.box and event.type() == QEvent.Type.KeyPress:
            steps = {Qt.Key.Key_Up: 0.1, Qt.Key.Key_Down: -0.1, Qt.Key.Key_PageUp: 1.0, Qt.Key.Key_PageDown: -1.0}
            if event.key() in steps:
                m = min(self.high, max(self.low, round(self.multiple + steps[event.key()], 6)))
                self.set_multiple(m)
                return True
        return super().eventFilter(obj, event)

    def interventions(self, first_position: int, multiple: float | None = None) -> list[Intervention]:
        """What this row sets at `multiple` (its own by default); nothing when it changes nothing."""
        m = self.multiple if multiple is None else float(multiple)
        if m == 1 and self.mode == "token" and self.is_relative:
            return []
        if self.mode == "token":
            return [Intervention(t.layer, t.position, t.feature, m * t.base) for t in self.targets]
        base: dict[tuple[int, int], float] = {}  # one open-ended intervention per feature, at its largest base
        for t in self.targets:
            key = (t.layer, t.feature)
            base[key] = max(base.get(key, t.base), t.base)
        return [Intervention(layer, slice(first_position, None), feat, m * b) for (layer, feat), b in base.items()]


# ---------------------------------------------------------------- the pane

class InterventionPane(QWidget):
    """Steer features of the current graph; see the module docstring.

    For tests and the window: `add_node(node)`, `add_selected()`, `add_pinned()`,
    `add_feature(layer, feature, position)`, `remove_row(row)`, `clear_rows()`, `reset()`,
    `set_multiple(row, m)`, `set_multiple_text(row, text)`, `set_position_mode(row, "token"|"all")`,
    `interventions()`, `update_now()`, `last_result` (`InterventionUpdate`), `strength_sweep(row, values,
    token_id)` (synchronous) and `run_sweep(row, token_id, values)` (a job; `sweep_finished`), `last_sweep`;
    counters `updates_submitted` / `updates_computed`; widgets `rows`, `freeze_check`, `tokens_spin`,
    `bar_plot`, `sweep_plot`, `default_text`, `steered_text`, `status_label`, `message_label`.
    Signals: `updated(InterventionUpdate)`, `sweep_finished(SweepResult)`.
    """

    updated = Signal(object)
    sweep_finished = Signal(object)
    will_change = Signal(str)  # before an undoable change of the rows (description)

    def __init__(self, controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.rows: list[_Row] = []
        self.last_result: InterventionUpdate | None = None
        self.last_sweep: SweepResult | None = None
        self.updates_submitted = 0
        self.updates_computed = 0  # next-token updates run (a burst of slider moves should run one)
        self.continuations_computed = 0
        self._continuing: int | None = None  # the version whose continuation is being computed
        self._continuation_failed: int | None = None
        self._version = 0  # bumped on every state change
        self._epoch = 0  # bumped when the graph or the model changes: older results are dropped
        self._dirty = False
        self._cache: _Cache | None = None
        self._max_act: dict[tuple[int, int], np.ndarray | None] = {}  # (id(index), layer) -> max_act per feature
        self._bar_tokens: list[int] = []
        self._bar_labels: list[str] = []  # their texts, elided to the bars' width when drawn

        self._build()
        self._coalesce = QTimer(self, singleShot=True, interval=COALESCE_MS)
        self._coalesce.timeout.connect(self._submit_if_idle)
        c = controller
        c.analysis_changed.connect(self._on_graph_changed)
        c.model_changed.connect(self._on_model_changed)
        c.aspect_changed.connect(self._on_aspect_changed)
        c.jobs.busy_changed.connect(self._on_busy_changed)
        c.jobs.failed.connect(self._on_job_failed)
        c.jobs.cancelled.connect(self._on_job_cancelled)
        self._on_graph_changed()

    # ---------------------------------------------------------------- construction
    def _build(self) -> None:
        # left: rows and controls
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
        self.empty_label = QLabel("Select a feature on the graph and press “Add selected”, or pin nodes and "
                                  "supernodes and press “Add pinned”. Each row's slider sets a multiple of the "
                                  "feature's activation on this prompt: 0 ablates, 1 leaves it alone.")
        self.empty_label.setWordWrap(True)
        self.empty_label.setStyleSheet("color: #777;")
        self._rows_layout.addWidget(self.empty_label)
        self._rows_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QFrame.Shape.StyledPanel)
        scroll.setWidget(self._rows_box)

        self.freeze_check = QCheckBox("Freeze attention")
        self.freeze_check.setChecked(True)
        self.freeze_check.setToolTip("Replay the clean run's attention patterns (circuit-tracer's default): the "
                                     "intervention acts through the MLPs only, and on the first generated token")
        self.freeze_check.toggled.connect(lambda _: self._state_changed())
        self.tokens_spin = QSpinBox()
        self.tokens_spin.setRange(0, MAX_TOKENS)
        self.tokens_spin.setValue(DEFAULT_TOKENS)
        self.tokens_spin.setToolTip("How many tokens to continue greedily (0: none)")
        self.tokens_spin.valueChanged.connect(lambda _: self._state_changed())
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

        # right: bars, sweep, continuations
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
        self.sweep_button.clicked.connect(lambda: self.run_sweep())
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

        plots = self._plots_split = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.bar_plot)
        plots.addWidget(sweep_box)
        plots.setSizes([500, 400])
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(4, 4, 4, 4)
        rv.setSpacing(4)
        rv.addWidget(plots, 3)
        rv.addLayout(texts, 1)

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

    @property
    def message(self) -> str:
        """The message shown to the user ('' when none)."""
        return self.message_label.text() if not self.message_label.isHidden() else ""

    @property
    def pending(self) -> bool:
        """An update (or its continuation) is waiting or running (tests wait for this to clear)."""
        return (self._dirty or self._coalesce.isActive() or self._continuing is not None or self._wants_continuation()
                or self.controller.jobs.current_name in (JOB_NAME, CONTINUATION_JOB_NAME, SWEEP_JOB_NAME))

    # ---------------------------------------------------------------- what is loaded
    def _ready(self) -> str:
        """Why no intervention can run now ('' when it can)."""
        a, c = self.controller.analysis, self.controller
        if a is None:
            return NO_GRAPH
        if c.bundle is None or c.transcoders is None:
            return NO_MODEL
        tc = c.transcoders
        g = a.graph
        if g.n_layers != tc.n_layers or (g.active_features.size and int(g.active_features[:, 2].max()) >= tc.n_features):
            return (f"This graph was traced with other transcoders ({g.n_layers} layers) than the loaded ones "
                    f"({tc.n_layers} layers × {tc.n_features} features): load the matching model and transcoders.")
        return ""

    def _first_position(self) -> int:
        b = self.controller.bundle
        return int(b.n_zeroed_positions) if b is not None else 1

    def _index_max(self, layer: int, feature: int) -> float | None:
        """The feature's largest activation in the feature index, when one is open and knows it."""
        index = self.controller.feature_index
        if index is None:
            return None
        key = (id(index), layer)
        if key not in self._max_act:
            try:
                self._max_act[key] = index.layer_statistics(layer)["max_act"]
            except Exception:  # noqa: BLE001 - a missing or broken index only loses the slider's scale
                self._max_act[key] = None
        arr = self._max_act[key]
        if arr is None or not 0 <= feature < arr.size or not arr[feature] > 0:
            return None
        return float(arr[feature])

    def _top_for(self, targets: tuple[Target, ...]) -> tuple[float, str]:
        """The slider's top multiple for `targets`, and how it was chosen."""
        tops, known = [], 0
        for t in targets:
            peak = self._index_max(t.layer, t.feature)
            if t.base_kind == "value" or peak is None or t.base <= 0:
                tops.append(DEFAULT_TOP)
            else:
                tops.append(INDEX_HEADROOM * peak / t.base)
                known += 1
        top = float(min(MAX_MULTIPLE, max(2.0, math.ceil(max(tops)))))
        how = (f"the top reaches {INDEX_HEADROOM:g}× the largest activation in the feature index" if known
               else f"no feature index: the top is {DEFAULT_TOP:g}×")
        return top, how

    # ---------------------------------------------------------------- rows
    def _target_of(self, node: int) -> Target:
        layer, pos, feat, act = self.controller.analysis.graph.feature_of(node)
        return Target(node, layer, pos, feat, act)

    def _add_row(self, key: tuple, name: str, targets: tuple[Target, ...], detail: str) -> int:
        for i, r in enumerate(self.rows):
            if r.key == key:
                self._say("")
                self.status_label.setText(f"{name} is already in row {i + 1}.")
                return i
        self.will_change.emit(f"Add {name}")
        return self._make_row(key, name, targets, detail)

    def _make_row(self, key: tuple, name: str, targets: tuple[Target, ...], detail: str) -> int:
        top, how = self._top_for(targets)
        tip = f"{html.escape(name)}<br>{detail}<br>Slider: {_fmt_multiple(MULTIPLE_MIN)} … {_fmt_multiple(top)} ({how})"
        row = _Row(key, name, targets, top, tip)
        row.detail = detail
        row.changed.connect(self._state_changed)
        row.about_to_change.connect(lambda r=row: self.will_change.emit(f"Steer {r.name}"))
        row.remove_requested.connect(lambda r=row: self.remove_row(self.rows.index(r)))
        row.box.editingFinished.connect(lambda r=row: r in self.rows and self.set_multiple_text(self.rows.index(r),
                                                                                                  r.box.text()))
        self.rows.append(row)
        self._rows_layout.insertWidget(self._rows_layout.count() - 1, row.widget)
        self._rows_changed()
        self._say("")
        self._state_changed()
        return len(self.rows) - 1

    def add_node(self, node: int) -> int | None:
        """Add a row for feature node `node` of the current graph; returns its row (None, with a message, if
        it cannot be added)."""
        a = self.controller.analysis
        if a is None:
            self._say(NO_GRAPH)
            return None
        if not 0 <= node < a.graph.n_nodes:
            self._say(f"Node {node} is not in this graph (0..{a.graph.n_nodes - 1}).")
            return None
        kind = a.graph.kind_of(node)
        if kind is not NodeKind.FEATURE:
            self._say(f"{a.label_of(node)} is {'an' if kind is NodeKind.ERROR else 'a'} {kind.value} node: only "
                      "transcoder features can be steered.")
            return None
        t = self._target_of(node)
        detail = (f"L{t.layer} feature #{t.feature} at position {t.position} "
                  f"{html.escape(repr(a.graph.token_strings[t.position]))}; activation {_fmt(t.base)}")
        return self._add_row(("n", node), self._node_row_name(node), (t,), detail)

    def add_selected(self) -> int | None:
        a = self.controller.analysis
        if a is None:
            self._say(NO_GRAPH)
            return None
        if a.selected is None:
            self._say("Nothing is selected: click a feature node on the graph first.")
            return None
        return self.add_node(a.selected)

    def add_pinned(self) -> list[int]:
        """A row per supernode (its feature members together) and per pinned feature node outside one."""
        a = self.controller.analysis
        if a is None:
            self._say(NO_GRAPH)
            return []
        if not a.pinned:
            self._say("Nothing is pinned: Ctrl-click nodes on the graph to pin them.")
            return []
        added, skipped = [], []
        grouped = {m for s in a.supernodes for m in s.members}
        for s in a.supernodes:
            members = tuple(m for m in s.members if a.graph.kind_of(m) is NodeKind.FEATURE)
            if not members:
                skipped.append(s.name)
                continue
            targets = tuple(self._target_of(m) for m in members)
            detail = f"supernode of {len(members)} features; each is set to the multiple of its own activation"
            added.append(self._add_row(("s", s.id, members), f"{s.name} ({len(members)} features)", targets, detail))
        for n in a.pinned:
            if n in grouped:
                continue
            if a.graph.kind_of(n) is NodeKind.FEATURE:
                added.append(self.add_node(n))
            else:
                skipped.append(a.label_of(n))
        if skipped:
            self._say(f"Not steerable (no transcoder features): {', '.join(skipped[:4])}"
                      f"{'…' if len(skipped) > 4 else ''}.")
        return [i for i in added if i is not None]

    def add_feature(self, layer: int, feature: int | str, position: int | str) -> int | None:
        """Add a transcoder feature by hand (it need not be a node): `position` a prompt position or "all"."""
        a, c = self.controller.analysis, self.controller
        if a is None:
            self._say(NO_GRAPH)
            return None
        why = self._ready()
        if why:
            self._say(why)
            return None
        try:
            feature = int(str(feature).strip().lstrip("#"))
        except ValueError:
            self._say(f"Feature {str(feature)!r} is not a whole number: type a feature index "
                      f"(0..{c.transcoders.n_features - 1}).")
            return None
        g = a.graph
        all_positions = position == "all"
        pos = self._first_position() if all_positions else position
        try:
            pos = int(pos)
            check_interventions([Intervention(int(layer), pos, feature, 0.0)], c.transcoders, g.n_pos)
        except ValueError:
            self._say(f"Position {position!r} is not a prompt position (0..{g.n_pos - 1}) or \"all\".")
            return None
        except InterventionError as e:
            self._say(e.message + (f" {e.hint}" if e.hint else ""))
            return None
        layer = int(layer)
        if pos < self._first_position():
            self._say(f"Position {pos} is the BOS, whose features are always zero: pick a later token.")
            return None
        same = (g.active_features[:, 0] == layer) & (g.active_features[:, 2] == feature)
        hit = np.flatnonzero(same & (g.active_features[:, 1] == pos))
        node = None
        if all_positions and same.any():  # the same value everywhere: scale its largest activation here
            base, kind = float(g.activation_values[same].max()), "prompt max"
        elif hit.size:
            sel = np.flatnonzero(g.selected_features == hit[0])
            if sel.size:  # a node of the graph: the same row as "Add selected" gives
                return self.add_node(int(sel[0]))
            base, kind = float(g.activation_values[hit[0]]), "prompt"
        else:
            peak = self._index_max(layer, feature)
            base, kind = (peak, "index max") if peak else (1.0, "value")
        where = "all positions" if all_positions else f"position {pos} {g.token_strings[pos]!r}"
        detail = {"prompt": f"activation here {_fmt(base)}",
                  "prompt max": f"the multiple scales its largest activation on this prompt ({_fmt(base)})",
                  "index max": f"not active here: the multiple scales its largest activation in the index ({_fmt(base)})",
                  "value": "not active here and no feature index: the multiple is the value itself"}[kind]
        label = ""
        if c.feature_index is not None:
            try:
                label = c.feature_index.label(layer, feature)
            except Exception:  # noqa: BLE001 - an index for other transcoders only loses the label
                label = ""
        name = f"{label or f'L{layer} #{feature}'} @{'all' if all_positions else _show_token(g.token_strings[pos])}"
        row = self._add_row(("f", layer, pos, feature), name, (Target(node, layer, pos, feature, base, kind),),
                            f"L{layer} feature #{feature} at {html.escape(where)}; {detail}")
        if all_positions:
            self.set_position_mode(row, "all")
        return row

    def _add_typed_feature(self) -> None:
        self.add_feature(self.layer_spin.value(), self.feature_edit.text(), self.position_combo.currentData())

    def remove_row(self, row: int) -> None:
        self.will_change.emit(f"Remove {self.rows[row].name}")
        r = self.rows.pop(row)
        self._rows_layout.removeWidget(r.widget)
        r.widget.deleteLater()
        self._rows_changed()
        self._state_changed()

    def clear_rows(self) -> None:
        if self.rows:
            self.will_change.emit("Clear interventions")
        self._drop_rows()
        self._rows_changed()
        self._state_changed()

    def _drop_rows(self) -> None:
        for r in self.rows:
            self._rows_layout.removeWidget(r.widget)
            r.widget.deleteLater()
        self.rows = []

    def state(self) -> PaneState:
        rows = tuple(RowState(r.key, r.name, r.targets, r.detail, r.multiple, r.mode) for r in self.rows)
        return PaneState(rows, self.freeze_check.isChecked(), self.tokens_spin.value())

    def restore(self, state: PaneState) -> None:
        """Put rows and settings back (undo, reopening a session), without a before-change notice."""
        self._drop_rows()
        for r in state.rows:
            i = self._make_row(r.key, r.name, r.targets, r.detail)
            row = self.rows[i]
            row.blockSignals(True)
            row.set_multiple(r.multiple)
            row.set_mode(r.mode)
            row.blockSignals(False)
        self.freeze_check.blockSignals(True)
        self.freeze_check.setChecked(state.freeze_attention)
        self.freeze_check.blockSignals(False)
        self.tokens_spin.blockSignals(True)
        self.tokens_spin.setValue(state.n_tokens)
        self.tokens_spin.blockSignals(False)
        self._rows_changed()
        self._state_changed()

    def reset(self) -> None:
        """Every multiple back to 1 and every position to "this token": no intervention."""
        if self.rows:
            self.will_change.emit("Reset interventions")
        for r in self.rows:
            r.blockSignals(True)
            r.set_multiple(1.0)
            r.set_mode("token")
            r.blockSignals(False)
        self._state_changed()

    def _check_row(self, row: int) -> _Row | None:
        if not 0 <= row < len(self.rows):
            self._say(f"There is no row {row} (the pane has {len(self.rows)}).")
            return None
        return self.rows[row]

    def set_multiple(self, row: int, m: float | str) -> bool:
        """Set row `row`'s multiple (0 ablates, 1 leaves it); False, with a message, when `m` is unusable."""
        r = self._check_row(row)
        if r is None:
            return False
        try:
            value = float(str(m).strip().rstrip("x×").strip()) if isinstance(m, str) else float(m)
        except (TypeError, ValueError):
            self._say(f"{str(m)!r} is not a number: type a multiple of the activation, e.g. 0 to ablate, "
                      "1 to leave it, 2 to double it, −1 to flip it.")
            r._show()
            return False
        if not math.isfinite(value):
            self._say(f"{m!r} is not a finite number: type a multiple between {_fmt_multiple(r.low)} and "
                      f"{_fmt_multiple(r.high)}.")
            r._show()
            return False
        if not r.low <= value <= r.high:
            self._say(f"{_fmt_multiple(value)} is outside this row's range {_fmt_multiple(r.low)} … "
                      f"{_fmt_multiple(r.high)} (the top is {INDEX_HEADROOM:g}× the feature's largest activation in "
                      f"the index, or {DEFAULT_TOP:g}× without one).")
            r._show()
            return False
        self._say("")
        if value != r.multiple:
            r.set_multiple(value)
        else:
            r._show()
        return True

    def set_multiple_text(self, row: int, text: str) -> bool:
        """What typing `text` in the row's box and pressing Enter does."""
        return self.set_multiple(row, str(text))

    def set_position_mode(self, row: int, mode: str) -> bool:
        r = self._check_row(row)
        if r is None:
            return False
        if mode not in ("token", "all"):
            self._say(f"Position mode {mode!r} is not one of \"token\" and \"all\".")
            return False
        r.set_mode(mode)
        return True

    def interventions(self) -> list[Intervention]:
        """The interventions the rows describe now (rows later in the list win on the same feature and position)."""
        first = self._first_position()
        return [iv for r in self.rows for iv in r.interventions(first)]

    def _rows_changed(self) -> None:
        self.empty_label.setVisible(not self.rows)
        current = self.sweep_row_combo.currentIndex()
        self.sweep_row_combo.blockSignals(True)
        self.sweep_row_combo.clear()
        for i, r in enumerate(self.rows):
            self.sweep_row_combo.addItem(f"{i + 1}. {r.name}", i)
        self.sweep_row_combo.setCurrentIndex(min(max(current, 0), len(self.rows) - 1))
        self.sweep_row_combo.blockSignals(False)
        self._update_buttons()

    def _update_buttons(self) -> None:
        a = self.controller.analysis
        has_graph = a is not None
        self.add_selected_button.setEnabled(has_graph and a.selected is not None
                                            and a.graph.kind_of(a.selected) is NodeKind.FEATURE)
        self.add_pinned_button.setEnabled(has_graph and bool(a.pinned))
        for w in (self.reset_button, self.clear_button, self.sweep_button):
            w.setEnabled(bool(self.rows))
        for w in (self.add_feature_button, self.feature_edit, self.layer_spin, self.position_combo):
            w.setEnabled(has_graph)

    # ---------------------------------------------------------------- controller events
    def _on_graph_changed(self) -> None:
        """A new graph (or none): rows name nodes of the old one, so they go."""
        self._epoch += 1
        self._cache = None
        self._dirty = False
        self._continuation_failed = None
        for r in self.rows:
            self._rows_layout.removeWidget(r.widget)
            r.widget.deleteLater()
        self.rows = []
        self.last_result = None
        self.last_sweep = None
        self._clear_outputs()
        self._rows_changed()
        a = self.controller.analysis
        self.position_combo.clear()
        self.sweep_token_combo.clear()
        if a is not None:
            g = a.graph
            for p in range(self._first_position(), g.n_pos):
                self.position_combo.addItem(f"{p} {_show_token(g.token_strings[p])}", p)
            self.position_combo.addItem("all positions", "all")
            self.position_combo.setCurrentIndex(self.position_combo.count() - 2)
            for tid, tok, p in zip(g.logit_token_ids.tolist(), g.logit_tokens, g.logit_probabilities.tolist()):
                self.sweep_token_combo.addItem(f"p({_show_token(tok)})  [{p:.2f}]", int(tid))
        if self.controller.transcoders is not None:
            self.layer_spin.setRange(0, self.controller.transcoders.n_layers - 1)
        elif a is not None:
            self.layer_spin.setRange(0, a.graph.n_layers - 1)
        self.status_label.setText("No intervention yet." if a is not None else NO_GRAPH)
        self._say("")
        if self.controller.intervention_changes is not None:
            self.controller.set_intervention_changes(None)

    def _on_model_changed(self) -> None:
        self._epoch += 1
        self._cache = None
        self._max_act = {}
        if self.controller.transcoders is not None:
            self.layer_spin.setRange(0, self.controller.transcoders.n_layers - 1)
        if self.rows:
            self._state_changed()

    def _on_aspect_changed(self, aspect: str) -> None:
        if aspect in (Aspect.SELECTION.value, Aspect.PINS.value, Aspect.SUPERNODES.value):
            self._update_buttons()
        if aspect in (Aspect.LABELS.value, Aspect.SUPERNODES.value):
            self._refresh_names()

    def _node_row_name(self, node: int) -> str:
        a = self.controller.analysis
        return f"{a.label_of(node)} @{_show_token(a.graph.token_strings[int(a.graph.feature_of(node)[1])])}"

    def _refresh_names(self) -> None:
        """Rows follow relabelled features and renamed supernodes (a supernode that is gone keeps its name)."""
        a = self.controller.analysis
        if a is None:
            return
        names = {s.id: s.name for s in a.supernodes}
        changed = False
        for r in self.rows:
            if r.key[0] == "n":
                name = self._node_row_name(r.key[1])
            elif r.key[0] == "s" and r.key[1] in names:
                name = f"{names[r.key[1]]} ({len(r.targets)} features)"
            else:
                continue
            if name != r.name:
                r.name = name
                r.name_label.set_full_text(name)
                changed = True
        if changed:
            self._rows_changed()

    def _on_busy_changed(self, busy: bool) -> None:
        if not busy and (self._dirty or self._wants_continuation()):
            self._coalesce.start()

    def _on_job_failed(self, name: str, error) -> None:
        if name == JOB_NAME:
            self._say(f"The intervention failed: {error.message}" + (f" {error.hint}" if error.hint else ""))
        elif name == CONTINUATION_JOB_NAME:
            self._continuation_failed, self._continuing = self._continuing, None
            self._say(f"The continuation failed: {error.message}")
        elif name == SWEEP_JOB_NAME:
            self._say(f"The sweep failed: {error.message}")

    def _on_job_cancelled(self, name: str) -> None:
        if name == CONTINUATION_JOB_NAME:
            self._continuation_failed, self._continuing = self._continuing, None
        if name in (JOB_NAME, CONTINUATION_JOB_NAME) and self.rows:
            self.status_label.setText("Update cancelled; move a slider to run it again.")

    # ---------------------------------------------------------------- updates
    def _state_changed(self) -> None:
        self._version += 1
        self._move_sweep_mark()
        if not self.rows:
            self._dirty = False
            self._clear_outputs()
            self.controller.set_intervention_changes(None)
            return
        self._dirty = True
        self._coalesce.start()

    def update_now(self) -> bool:
        """Submit the current state now (if the runner is idle); False, with a message, when it cannot run."""
        self._dirty = True
        return self._submit_if_idle()

    def _wants_continuation(self) -> bool:
        """The shown result is the current state and still lacks its continuation."""
        r = self.last_result
        return (r is not None and r.continuation_pending and r.version == self._version and not self._dirty
                and self._continuing is None and self._continuation_failed != r.version)

    def _submit_if_idle(self) -> bool:
        """Submit what the current state still needs (its next token, then its continuation) if the runner is
        free; a busy runner calls back through `_on_busy_changed`. Never queues behind another job."""
        if not self._dirty:
            if self._wants_continuation() and not self.controller.jobs.busy and not self._ready():
                self._submit_continuation()
                return True
            return False
        why = self._ready()
        if why:
            self._dirty = False
            self._say(why)
            return False
        if self.controller.jobs.busy:
            return True
        ivs = self.interventions()
        try:
            check_interventions(ivs, self.controller.transcoders, self.controller.analysis.graph.n_pos)
        except InterventionError as e:
            self._dirty = False
            self._say(e.message + (f" {e.hint}" if e.hint else ""))
            return False
        self._dirty = False
        self._submit(tuple(ivs))
        return True

    def _cache_for(self) -> _Cache:
        c, g = self.controller, self.controller.analysis.graph
        if self._cache is None or self._cache.graph is not g or self._cache.bundle is not c.bundle \
                or self._cache.tc is not c.transcoders:
            ids = torch.tensor(np.asarray(g.input_tokens, dtype=np.int64))
            self._cache = _Cache(c.bundle, c.transcoders, g, ids)
        return self._cache

    def _submit(self, ivs: tuple[Intervention, ...]) -> None:
        c = self.controller
        bundle, tc, cache = c.bundle, c.transcoders, self._cache_for()
        freeze, n_tokens, version, epoch = self.freeze_check.isChecked(), self.tokens_spin.value(), self._version, \
            self._epoch

        def job(progress, cancel):
            self.updates_computed += 1
            return _compute(bundle, tc, cache, ivs, freeze, n_tokens, version)

        self.updates_submitted += 1
        self.status_label.setText("Updating…")
        c.jobs.submit(JOB_NAME, job, lambda result, epoch=epoch: self._apply(result, epoch))

    def _submit_continuation(self) -> None:
        c, r = self.controller, self.last_result
        bundle, tc, cache, epoch = c.bundle, c.transcoders, self._cache_for(), self._epoch
        ivs, freeze, n_tokens, version = r.interventions, r.freeze_attention, r.n_tokens, r.version

        def job(progress, cancel):
            self.continuations_computed += 1
            return _continue(bundle, tc, cache, ivs, freeze, n_tokens)

        def done(out, version=version, epoch=epoch):
            self._continuing = None
            r = self.last_result
            if epoch != self._epoch or r is None or r.version != version:
                return  # a newer state is on its way
            default, steered, seconds = out
            self.last_result = replace(r, default=default, steered=steered, continuation_seconds=seconds)
            self._show_texts(self.last_result)
            self._show_status()
            self.updated.emit(self.last_result)

        self._continuing = version
        c.jobs.submit(CONTINUATION_JOB_NAME, job, done)

    def _apply(self, result: InterventionUpdate, epoch: int) -> None:
        if epoch != self._epoch:
            return
        self.last_result = result
        self._say("")
        self._show_bars(result)
        self._show_texts(result)
        self._move_sweep_mark()
        self._show_status()
        self.controller.set_intervention_changes(dict(result.changes) if result.interventions else None)
        self.updated.emit(result)
        self._submit_if_idle()  # the continuation, or a newer state

    def _show_status(self) -> None:
        r = self.last_result
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
        if self._dirty or r.version != self._version:
            parts.append("newer changes pending")
        self.status_label.setText(" · ".join(parts))

    # ---------------------------------------------------------------- outputs
    def _clear_outputs(self) -> None:
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
        self._sweep_curve.setData([], [])
        self._sweep_mark.setData([], [])
        self._sweep_line.setVisible(False)
        self.sweep_plot.getPlotItem().setTitle("Strength sweep", color=TEXT, size="9pt")

    @property
    def bar_tokens(self) -> list[int]:
        """The token ids of the bars, left to right."""
        return list(self._bar_tokens)

    def _decode(self, token_id: int) -> str:
        return self.controller.bundle.tokenizer.decode([int(token_id)]) if self.controller.bundle else str(token_id)

    def _show_bars(self, result: InterventionUpdate) -> None:
        before, after = result.probabilities()
        top = np.argsort(-np.maximum(before, after), kind="stable")[:self._bar_count()]
        self._bar_tokens = top.tolist()
        self._draw_bars([_show_token(self._decode(t)) for t in top.tolist()], before[top], after[top])

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

    def saved_outputs(self) -> dict:
        """What the pane shows of its last result, as JSON (kept in a session so that it reopens as it was,
        even without the model): the bars and the two continuations."""
        r = self.last_result
        if r is None or not self._bar_tokens:
            return {}
        before, after = r.probabilities()
        ids = self._bar_tokens
        return {"bars": [[label, float(before[i]), float(after[i])] for label, i in zip(self._bar_labels, ids)],
                "default": self.default_text.toHtml() if r.default else "",
                "steered": self.steered_text.toHtml() if r.steered else ""}

    def show_saved(self, outputs: dict) -> None:
        """Show outputs from `saved_outputs` until the model is loaded and they are recomputed."""
        bars = outputs.get("bars") or []
        if bars:
            labels, before, after = zip(*bars)
            self._draw_bars(list(labels), np.array(before, dtype=np.float64), np.array(after, dtype=np.float64))
        self.default_text.setHtml(outputs.get("default", ""))
        self.steered_text.setHtml(outputs.get("steered", ""))
        self.status_label.setText("Saved result: load the model to steer further.")

    def _bar_count(self) -> int:
        return int(np.clip(self.bar_plot.getPlotItem().getViewBox().width() // BAR_SLOT_PX, 3, TOP_K))

    def _bars_resized(self) -> None:
        if self.last_result is not None and self._bar_tokens and len(self._bar_tokens) != self._bar_count():
            self._show_bars(self.last_result)
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

    def _pieces(self, ids: list[int]) -> list[str]:
        """Each token's text as it reads inside the decoded string (spaces as the tokenizer puts them)."""
        prompt = [int(i) for i in self.controller.analysis.graph.input_tokens[1:]]
        decode = self.controller.bundle.tokenizer.decode
        out, prev = [], decode(prompt)
        for k in range(1, len(ids) + 1):
            text = decode(prompt + ids[:k])
            out.append(text[len(prev):] if text.startswith(prev) else decode([ids[k - 1]]))
            prev = text
        return out

    def _continuation_html(self, gen: Generation | None, other: Generation | None, highlight: bool) -> str:
        if gen is None:
            return "<span style='color:#888'>(continue 0 tokens: no text)</span>"
        ids = [int(i) for i in self.controller.analysis.graph.input_tokens[1:]]
        tail = self.controller.bundle.tokenizer.decode(ids[-6:])
        parts = [f"<span style='color:#999'>{'…' if len(ids) > 6 else ''}{html.escape(tail)}</span>"]
        for i, (t, piece) in enumerate(zip(gen.token_ids, self._pieces(list(gen.token_ids)))):
            differs = highlight and (other is None or i >= len(other.token_ids) or other.token_ids[i] != t)
            style = f" style='color:{AFTER_COLOUR}; text-decoration: underline'" if differs else ""
            word = piece.lstrip(" ")
            parts.append(f"{' ' * (len(piece) - len(word))}<b{style}>{html.escape(_show_piece(word))}</b>")
        return "".join(parts)

    def _show_texts(self, result: InterventionUpdate) -> None:
        """The continuations; while the current state's are being computed the previous ones stay, marked."""
        if result.continuation_pending:
            self.steered_caption.setText(STEERED_CAPTION + " <span style='color:#888'>(updating…)</span>")
            return
        self.steered_caption.setText(STEERED_CAPTION)
        self.default_text.setHtml(self._continuation_html(result.default, None, False))
        self.steered_text.setHtml(self._continuation_html(result.steered, result.default, True))

    # ---------------------------------------------------------------- sweep
    def _sweep_values(self, r: _Row) -> list[float]:
        values = set(np.round(np.linspace(r.low, r.high, SWEEP_POINTS), 6).tolist()) | {0.0, 1.0, r.multiple}
        return sorted(v for v in values if r.low <= v <= r.high)

    def _sweep_builder(self, row: int) -> Callable[[float], list[Intervention]]:
        first = self._first_position()
        before = [iv for r in self.rows[:row] for iv in r.interventions(first)]
        after = [iv for r in self.rows[row + 1:] for iv in r.interventions(first)]
        r = self.rows[row]
        return lambda v: before + r.interventions(first, v) + after

    def _sweep_context(self, row: int) -> tuple:
        """What a sweep of `row` depends on besides the row's multiple: the other rows, its mode, the freeze."""
        others = tuple((r.key, r.multiple, r.mode) for i, r in enumerate(self.rows) if i != row)
        return others, self.rows[row].mode, self.freeze_check.isChecked()

    def _check_sweep(self, row: int, values, token_id) -> tuple[list[float], int] | None:
        why = self._ready()
        if why:
            self._say(why)
            return None
        if self._check_row(row) is None:
            return None
        try:
            vals = [float(v) for v in values]
        except (TypeError, ValueError):
            self._say("The sweep's values must be numbers.")
            return None
        if not vals or not all(math.isfinite(v) for v in vals):
            self._say("The sweep needs at least one finite value.")
            return None
        try:
            token_id = int(token_id)
        except (TypeError, ValueError):
            self._say(f"Token id {token_id!r} is not a whole number.")
            return None
        vocab = int(self.controller.bundle.arch.unembed.shape[0])
        if not 0 <= token_id < vocab:
            self._say(f"Token id {token_id} is outside the vocabulary (0..{vocab - 1}).")
            return None
        try:
            check_interventions(self._sweep_builder(row)(vals[0]), self.controller.transcoders,
                                self.controller.analysis.graph.n_pos)
        except InterventionError as e:
            self._say(e.message)
            return None
        return vals, token_id

    def strength_sweep(self, row: int, values, token_id: int) -> list[float]:
        """Synchronously: the probability of `token_id` at the last position with row `row` at each multiple
        in `values` (the other rows as they are). For tests and scripts; waits for a running job first.
        Also draws the sweep plot. Returns [] (with a message) on bad input."""
        checked = self._check_sweep(row, values, token_id)
        if checked is None:
            return []
        vals, token_id = checked
        self._wait_idle()
        t0 = time.perf_counter()
        c = self.controller
        probs = _sweep(c.bundle, c.transcoders, self._cache_for(), self._sweep_builder(row), vals, token_id,
                       self.freeze_check.isChecked())
        self._show_sweep(SweepResult(self.rows[row].key, self.rows[row].name, token_id, self._decode(token_id), tuple(vals), tuple(probs),
                                     time.perf_counter() - t0, self._sweep_context(row)))
        return probs

    def run_sweep(self, row: int | None = None, token_id: int | None = None, values=None) -> bool:
        """The Sweep button: the same as `strength_sweep`, as a job; the result arrives as `sweep_finished`."""
        row = self.sweep_row_combo.currentData() if row is None else row
        token_id = self.sweep_token_combo.currentData() if token_id is None else token_id
        if row is None or token_id is None:
            self._say("Add a row (and trace a graph with logit targets) to sweep.")
            return False
        values = self._sweep_values(self.rows[row]) if values is None and 0 <= row < len(self.rows) else values
        checked = self._check_sweep(row, values if values is not None else [], token_id)
        if checked is None:
            return False
        vals, token_id = checked
        c = self.controller
        bundle, tc, cache, build = c.bundle, c.transcoders, self._cache_for(), self._sweep_builder(row)
        freeze, key, name, context, epoch = self.freeze_check.isChecked(), self.rows[row].key, self.rows[row].name, \
            self._sweep_context(row), self._epoch
        token = self._decode(token_id)

        def job(progress, cancel):
            t0 = time.perf_counter()
            probs = _sweep(bundle, tc, cache, build, vals, token_id, freeze, progress, cancel)
            return SweepResult(key, name, token_id, token, tuple(vals), tuple(probs), time.perf_counter() - t0, context)

        def done(result, epoch=epoch):
            if epoch == self._epoch:
                self._show_sweep(result)

        c.jobs.submit(SWEEP_JOB_NAME, job, done)
        return True

    def _wait_idle(self, timeout_s: float = 60.0) -> None:
        from PySide6.QtCore import QCoreApplication, QEventLoop

        end = time.monotonic() + timeout_s
        while self.controller.jobs.busy and time.monotonic() < end:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.002)

    def _show_sweep(self, result: SweepResult) -> None:
        self.last_sweep = result
        row = next((i for i, r in enumerate(self.rows) if r.key == result.row_key), None)
        if row is not None:  # the controls name what is plotted
            self.sweep_row_combo.setCurrentIndex(row)
            k = self.sweep_token_combo.findData(result.token_id)
            if k >= 0:
                self.sweep_token_combo.setCurrentIndex(k)
        self._sweep_curve.setData(list(result.values), list(result.probabilities))
        pi = self.sweep_plot.getPlotItem()
        title = f"p({_show_token(result.token)}) vs multiple of {result.row_name}"
        pi.setTitle(html.escape(title if len(title) <= 60 else title[:59] + "…"), color=TEXT, size="9pt")
        pi.enableAutoRange()
        self._move_sweep_mark()
        self.sweep_finished.emit(result)

    def _move_sweep_mark(self) -> None:
        """The current multiple of the swept row: a dashed line, and a ring on the curve."""
        s = self.last_sweep
        row = next((i for i, r in enumerate(self.rows) if s is not None and r.key == s.row_key), None)
        if s is None or row is None:
            self._sweep_line.setVisible(False)
            self._sweep_mark.setData([], [])
            return
        m = self.rows[row].multiple
        self._sweep_line.setPos(m)
        self._sweep_line.setVisible(True)
        p = float(np.interp(m, s.values, s.probabilities))
        self._sweep_mark.setData([m], [p])
        stale = s.context != self._sweep_context(row)
        title = f"p({_show_token(s.token)}) vs multiple of {s.row_name}"
        title = title if len(title) <= 60 else title[:59] + "…"
        self.sweep_plot.getPlotItem().setTitle(html.escape(title) + (" <i>(other settings changed: sweep again)</i>"
                                                                      if stale else ""), color=TEXT, size="9pt")

    def shutdown(self) -> None:
        self._coalesce.stop()

