"""The steering model: the interventions on the current graph, as plain state (no Qt, no widgets).

What an analyst knows from Neuronpedia's steer modal and circuit-tracer's `feature_intervention`, tied
to the graph (spec §7); the window's intervention pane is a view of this model, and the session file is
written from it (`record`):

* `rows`: one `SteeringRow` per intervened item: a feature node (`add_node`, `add_selected`), every
  pinned node and supernode (`add_pinned`), or a feature typed by layer and index (`add_feature`). A
  row holds a **multiple m of each target's base**: 0 ablates, 1 leaves it alone; the slider runs
  0 … `top` (its left end ablates), where `top` × activation reaches about twice the feature index's
  largest activation (10× without an index), and typing reaches −`top` (a flipped feature). A row of
  one feature can also be typed and shown by **value** (`entry` "value", `set_value`): the activation
  itself, e.g. 3.44, stored as the multiple 3.44 / base; text says which it is ("x1.5", "1.5×" a
  multiple, "=3.44" a value; a bare number follows the row's `entry`). The base is the target's activation on this prompt, or, for a typed feature not active here,
  its index maximum (Neuronpedia's convention) or 1 (then the multiple is the absolute value);
* a position mode per row: "token" (the node's own position) or "all" (an open-ended slice from the
  first real token, which also applies to the generated tokens);
* `freeze_attention` (default on, circuit-tracer's default) and `n_tokens`, the continuation length;
* `result`: the last computed `core.interventions.InterventionUpdate` (its `version` says which state
  it belongs to), or `saved`: what a session file kept of it, shown until it is recomputed;
* `changes`: every feature node's relative activation change under the interventions (the canvas
  rings them).

Its plain values (`Target`, `SteeringRow`, `SteeringState`, `SavedOutputs`) are in `core.interventions.steering_data`.
The computation is in `core.interventions` (`SteeringRun`, `compute_update`, `compute_continuation`,
`sweep_probabilities`); whoever runs it (the window's scheduler, a script) reads `interventions()` and
`version`, and hands the result back with `set_result`.

Changes go through methods. Each bumps `version` and emits one of the events below on `events`
(`core.session.events.EventHub`); undoable ones first call the before-change listeners with a description
(`subscribe_before_change`), so that `core.session.history.History` can snapshot `state()`. Refusals raise
`SteeringError` with a message for the user, before anything changes.
"""

from __future__ import annotations

import html
import math
from dataclasses import replace
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from ..session.analysis import Analysis
from ..graph.display_text import feature_name
from ..errors import CircuitStudioError
from ..session.events import EventHub
from ..graph.attribution_graph import NodeKind
from .steering_data import (AFTER_COLOUR, BAR_COUNT, DEFAULT_TOKENS, DEFAULT_TOP, INDEX_HEADROOM,  # noqa: F401
                            MAX_MULTIPLE, MAX_TOKENS, MULTIPLE_MIN, NO_GRAPH, NO_MODEL, SLIDER_STEPS, STEPS,
                            SWEEP_POINTS, SavedOutputs, SteeringRow, SteeringState, SweepResult, Target,
                            SteeringContext, SteeringSnapshot, _same_rows, continuation_html, fmt, fmt_multiple,
                            show_token)
from .steering_events import (ContextChanged, OptionsChanged, ResultChanged, RowChanged, RowsChanged,  # noqa: F401
                              RowsRenamed, SteeringEvent, SteeringLoaded)


class SteeringError(CircuitStudioError):
    """A steering action that cannot be done; the message says why and what to do instead."""


# ---------------------------------------------------------------- the model

class Steering:
    """The interventions of the current graph; see the module docstring."""

    def __init__(self) -> None:
        self.events = EventHub()
        self.context = SteeringContext()
        self.rows: tuple[SteeringRow, ...] = ()
        self.freeze_attention = True
        self.n_tokens = DEFAULT_TOKENS
        self.version = 0
        self.result = None  # core.interventions.InterventionUpdate
        self.saved: SavedOutputs | None = None
        self.saved_record = None  # core.session.InterventionRecord this steering was loaded from
        self.record_id = 1
        self.record_created: datetime | None = None
        self._before_change: list[Callable[[str], None]] = []
        self._max_act: dict[tuple[int, int], np.ndarray | None] = {}

    # ---- events ----
    def subscribe_before_change(self, listener: Callable[[str], None]) -> None:
        self._before_change.append(listener)

    def _will_change(self, description: str) -> None:
        for listener in list(self._before_change):
            listener(description)

    def _changed(self, event: SteeringEvent) -> None:
        self.version += 1
        if not self.rows and (self.result is not None or self.saved is not None):
            self.result, self.saved = None, None
            self.events.emit(event)
            self.events.emit(ResultChanged())
            return
        self.events.emit(event)

    # ---- context ----
    def set_context(self, context: SteeringContext) -> None:
        if context.index is not self.context.index:
            self._max_act = {}
        self.context = context
        self.events.emit(ContextChanged())

    @property
    def analysis(self) -> Analysis | None:
        return self.context.analysis

    def _graph(self):
        a = self.context.analysis
        if a is None:
            raise SteeringError(NO_GRAPH)
        return a

    @property
    def first_position(self) -> int:
        return self.context.first_position

    # ---- the feature index's scale ----
    def index_max(self, layer: int, feature: int) -> float | None:
        """The feature's largest activation in the feature index, when one is loaded and knows it."""
        index = self.context.index
        if index is None:
            return None
        if layer not in self._max_act:
            try:
                self._max_act[layer] = index.layer_statistics(layer)["max_act"]
            except Exception:  # noqa: BLE001 - a missing or broken index only loses the slider's scale
                self._max_act[layer] = None
        arr = self._max_act[layer]
        if arr is None or not 0 <= feature < arr.size or not arr[feature] > 0:
            return None
        return float(arr[feature])

    def top_for(self, targets: tuple[Target, ...]) -> tuple[float, str]:
        """The top multiple of a row with `targets`, and how it was chosen."""
        tops, known = [], 0
        for t in targets:
            peak = self.index_max(t.layer, t.feature)
            if t.base_kind == "value" or peak is None or t.base <= 0:
                tops.append(DEFAULT_TOP)
            else:
                tops.append(INDEX_HEADROOM * peak / t.base)
                known += 1
        top = float(min(MAX_MULTIPLE, max(2.0, math.ceil(max(tops)))))
        how = (f"the top reaches {INDEX_HEADROOM:g}× the largest activation in the feature index" if known
               else f"no feature index: the top is {DEFAULT_TOP:g}×")
        return top, how

    def range_note(self, row: SteeringRow) -> str:
        """The row's tooltip: its detail and its range."""
        _, how = self.top_for(row.targets)
        return (f"{html.escape(row.name)}<br>{row.detail}<br>Slider: {fmt_multiple(row.low)} (ablate) … "
                f"{fmt_multiple(row.high)}× ({how}); type down to {fmt_multiple(row.typed_low)}× to flip it")

    # ---- adding rows ----
    def _target_of(self, node: int) -> Target:
        layer, pos, feat, act = self._graph().graph.feature_of(node)
        return Target(node, layer, pos, feat, act)

    def _add_row(self, key: tuple, name: str, targets: tuple[Target, ...], detail: str, mode: str = "token") -> int:
        for i, r in enumerate(self.rows):
            if r.key == key:
                return i
        self._will_change(f"Add {name}")
        if self.record_created is None:  # the session's record of these interventions dates from the first row
            self.record_created = datetime.now(timezone.utc)
        top, _ = self.top_for(targets)
        self.rows = self.rows + (SteeringRow(key, name, targets, detail, 1.0, mode, top),)
        self._changed(RowsChanged())
        return len(self.rows) - 1

    def node_row_name(self, node: int) -> str:
        a = self._graph()
        return f"{a.label_of(node)} @{show_token(a.graph.token_strings[int(a.graph.feature_of(node)[1])])}"

    def add_node(self, node: int) -> int:
        """A row for feature node `node` of the current graph (the existing one if it has one): its index."""
        a = self._graph()
        if not 0 <= node < a.graph.n_nodes:
            raise SteeringError(f"Node {node} is not in this graph (0..{a.graph.n_nodes - 1}).")
        kind = a.graph.kind_of(node)
        if kind is not NodeKind.FEATURE:
            raise SteeringError(f"{a.label_of(node)} is {'an' if kind is NodeKind.ERROR else 'a'} {kind.value} node: "
                                "only transcoder features can be steered.")
        t = self._target_of(node)
        detail = (f"L{t.layer} feature #{t.feature} at position {t.position} "
                  f"{html.escape(repr(a.graph.token_strings[t.position]))}; activation {fmt(t.base)}")
        return self._add_row(("n", node), self.node_row_name(node), (t,), detail)

    def add_selected(self) -> int:
        a = self._graph()
        if a.selected is None:
            raise SteeringError("Nothing is selected: click a feature node on the graph first.")
        return self.add_node(a.selected)

    def add_pinned(self) -> tuple[list[int], list[str]]:
        """A row per supernode (its feature members together) and per pinned feature node outside one:
        (their rows, the names of pinned items that have no transcoder features)."""
        a = self._graph()
        if not a.pinned:
            raise SteeringError("Nothing is pinned: Ctrl-click nodes on the graph to pin them.")
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
        return added, skipped

    def add_feature(self, layer: int, feature: int | str, position: int | str) -> int:
        """A transcoder feature typed by hand (it need not be a node): `position` a prompt position or "all"."""
        from .intervene import Intervention, InterventionError, check_interventions

        a = self._graph()
        c = self.context
        if c.unavailable:
            raise SteeringError(c.unavailable)
        tc = c.transcoders
        try:
            feature = int(str(feature).strip().lstrip("#"))
        except ValueError:
            raise SteeringError(f"Feature {str(feature)!r} is not a whole number: type a feature index "
                                f"(0..{tc.n_features - 1}).") from None
        g = a.graph
        all_positions = position == "all"
        pos = self.first_position if all_positions else position
        try:
            pos = int(pos)
            check_interventions([Intervention(int(layer), pos, feature, 0.0)], tc, g.n_pos)
        except ValueError:
            raise SteeringError(f"Position {position!r} is not a prompt position (0..{g.n_pos - 1}) or \"all\".") \
                from None
        except InterventionError as e:
            raise SteeringError(e.message + (f" {e.hint}" if e.hint else "")) from None
        layer = int(layer)
        if pos < self.first_position:
            raise SteeringError(f"Position {pos} is the BOS, whose features are always zero: pick a later token.")
        same = (g.active_features[:, 0] == layer) & (g.active_features[:, 2] == feature)
        hit = np.flatnonzero(same & (g.active_features[:, 1] == pos))
        if all_positions and same.any():  # the same value everywhere: scale its largest activation here
            base, kind = float(g.activation_values[same].max()), "prompt max"
        elif hit.size:
            sel = np.flatnonzero(g.selected_features == hit[0])
            if sel.size:  # a node of the graph: the same row as "Add selected" gives
                return self.add_node(int(sel[0]))
            base, kind = float(g.activation_values[hit[0]]), "prompt"
        else:
            peak = self.index_max(layer, feature)
            base, kind = (peak, "index max") if peak else (1.0, "value")
        where = "all positions" if all_positions else f"position {pos} {g.token_strings[pos]!r}"
        detail = {"prompt": f"activation here {fmt(base)}",
                  "prompt max": f"the multiple scales its largest activation on this prompt ({fmt(base)})",
                  "index max": f"not active here: the multiple scales its largest activation in the index ({fmt(base)})",
                  "value": "not active here and no feature index: the multiple is the value itself"}[kind]
        label = ""
        if c.index is not None:
            try:
                label = c.index.label(layer, feature)
            except Exception:  # noqa: BLE001 - an index for other transcoders only loses the label
                label = ""
        name = f"{label or feature_name(layer, feature)} @{'all' if all_positions else show_token(g.token_strings[pos])}"
        return self._add_row(("f", layer, pos, feature), name, (Target(None, layer, pos, feature, base, kind),),
                             f"L{layer} feature #{feature} at {html.escape(where)}; {detail}",
                             "all" if all_positions else "token")

    # ---- changing rows ----
    def _row(self, index: int) -> SteeringRow:
        if not 0 <= index < len(self.rows):
            raise SteeringError(f"There is no row {index} (the pane has {len(self.rows)}).")
        return self.rows[index]

    def _replace_row(self, index: int, row: SteeringRow) -> None:
        self.rows = self.rows[:index] + (row,) + self.rows[index + 1:]

    @staticmethod
    def parse_multiple(row: SteeringRow, m: float | str, entry: str | None = None) -> float:
        """`m` as a multiple within the row's typed range (-top … top). A number is read as the row's `entry`
        says (a multiple, or with entry "value" an activation); text can say which: "x1.5", "1.5x", "1.5×"
        are multiples, "=3.44" is an activation."""
        entry = row.entry if entry is None else entry
        text = str(m).strip() if isinstance(m, str) else None
        if text is not None:
            if text[:1] in "xX×*" and text[:1]:
                text, entry = text[1:].strip(), "multiple"
            elif text[-1:] in ("x", "X", "×"):
                text, entry = text[:-1].strip(), "multiple"
            elif text.startswith("="):
                text, entry = text[1:].strip(), "value"
            text = text.replace("−", "-")
        try:
            value = float(text) if text is not None else float(m)
        except (TypeError, ValueError):
            raise SteeringError(f"{str(m)!r} is not a number: type a multiple of the activation (x0 ablates, x1 "
                                "leaves it, x2 doubles it, x-1 flips it) or an activation (=3.44).") from None
        if not math.isfinite(value):
            raise SteeringError(f"{m!r} is not a finite number: type a multiple between {fmt_multiple(row.typed_low)} "
                                f"and {fmt_multiple(row.high)}.")
        if entry == "value":
            base = row.value_base
            if base is None:
                raise SteeringError(f"{row.name} sets {len(row.targets)} features with different activations: type a "
                                    "multiple (e.g. x1.5) for it, not one activation.")
            activation, value = value, value / base
            if not row.typed_low <= value <= row.high:
                lo, hi = sorted((row.typed_low * base, row.high * base))
                raise SteeringError(f"Activation {fmt(activation)} is outside this row's range {fmt(lo)} … {fmt(hi)} "
                                    f"({fmt_multiple(row.typed_low)}× … {fmt_multiple(row.high)}× of {fmt(base)}).")
            return value
        if not row.typed_low <= value <= row.high:
            raise SteeringError(f"{fmt_multiple(value)} is outside this row's range {fmt_multiple(row.typed_low)} … "
                                f"{fmt_multiple(row.high)} (the top is {INDEX_HEADROOM:g}× the feature's largest "
                                f"activation in the index, or {DEFAULT_TOP:g}× without one).")
        return value

    def set_multiple(self, index: int, m: float | str) -> None:
        """Row `index`'s multiple: a number (a multiple), or text as `parse_multiple` reads it."""
        r = self._row(index)
        value = self.parse_multiple(r, m, None if isinstance(m, str) else "multiple")
        if value == r.multiple:
            return
        self._will_change(f"Steer {r.name}")
        self._replace_row(index, replace(r, multiple=value))
        self._changed(RowChanged(index))

    def set_value(self, index: int, activation: float | str) -> None:
        """Set row `index`'s feature to this activation (the multiple becomes activation / base)."""
        r = self._row(index)
        text = activation if isinstance(activation, str) else repr(float(activation))
        value = self.parse_multiple(r, text, "value")
        if value == r.multiple:
            return
        self._will_change(f"Steer {r.name}")
        self._replace_row(index, replace(r, multiple=value))
        self._changed(RowChanged(index))

    def set_entry(self, index: int, entry: str) -> None:
        """How row `index` is typed and shown: "multiple" or "value" (an activation; rows of one feature)."""
        r = self._row(index)
        if entry not in ("multiple", "value"):
            raise SteeringError(f"Entry {entry!r} is not one of \"multiple\" and \"value\".")
        if entry == "value" and r.value_base is None:
            raise SteeringError(f"{r.name} sets {len(r.targets)} features with different activations: it is set by "
                                "a multiple of each one's own.")
        if entry == r.entry:
            return
        self._replace_row(index, replace(r, entry=entry))
        self._changed(RowChanged(index))

    def set_mode(self, index: int, mode: str) -> None:
        r = self._row(index)
        if mode not in ("token", "all"):
            raise SteeringError(f"Position mode {mode!r} is not one of \"token\" and \"all\".")
        if mode == r.mode:
            return
        self._will_change(f"Steer {r.name}")
        self._replace_row(index, replace(r, mode=mode))
        self._changed(RowChanged(index))

    def remove_row(self, index: int) -> None:
        r = self._row(index)
        self._will_change(f"Remove {r.name}")
        self.rows = self.rows[:index] + self.rows[index + 1:]
        self._changed(RowsChanged())

    def clear(self) -> None:
        if not self.rows:
            return
        self._will_change("Clear interventions")
        self.rows = ()
        self._changed(RowsChanged())

    def reset(self) -> None:
        """Every multiple back to 1 and every position to "this token": no intervention."""
        if not self.rows:
            return
        self._will_change("Reset interventions")
        self.rows = tuple(replace(r, multiple=1.0, mode="token") for r in self.rows)
        self._changed(RowsChanged())

    def set_freeze_attention(self, on: bool) -> None:
        if bool(on) != self.freeze_attention:
            self.freeze_attention = bool(on)
            self._changed(OptionsChanged())

    def set_n_tokens(self, n: int) -> None:
        n = int(n)
        if not 0 <= n <= MAX_TOKENS:
            raise SteeringError(f"Continue 0 … {MAX_TOKENS} tokens, not {n}.")
        if n != self.n_tokens:
            self.n_tokens = n
            self._changed(OptionsChanged())

    def rename_rows(self) -> bool:
        """Rows follow relabelled features and renamed supernodes (a supernode that is gone keeps its name).
        Not an undoable change: it follows the analysis. True if a name changed."""
        a = self.context.analysis
        if a is None:
            return False
        names = {s.id: s.name for s in a.supernodes}
        rows, changed = list(self.rows), False
        for i, r in enumerate(rows):
            if r.key[0] == "n" and 0 <= r.key[1] < a.graph.n_nodes:
                name = self.node_row_name(r.key[1])
            elif r.key[0] == "s" and r.key[1] in names:
                name = f"{names[r.key[1]]} ({len(r.targets)} features)"
            else:
                continue
            if name != r.name:
                rows[i], changed = replace(r, name=name), True
        if changed:
            self.rows = tuple(rows)
            self.events.emit(RowsRenamed())
        return changed

    # ---- what the rows set ----
    def interventions(self) -> list:
        """The interventions the rows describe now (rows later in the list win on the same feature and position)."""
        first = self.first_position
        return [iv for r in self.rows for iv in r.interventions(first)]

    def check(self) -> str:
        """Why the current rows cannot run now ('' when they can)."""
        from .intervene import InterventionError, check_interventions

        c = self.context
        if c.unavailable:
            return c.unavailable
        try:
            check_interventions(self.interventions(), c.transcoders, c.analysis.graph.n_pos)
        except InterventionError as e:
            return e.message + (f" {e.hint}" if e.hint else "")
        return ""

    # ---- strength sweeps ----
    def sweep_values(self, index: int) -> list[float]:
        r = self._row(index)
        values = set(np.round(np.linspace(r.low, r.high, SWEEP_POINTS), 6).tolist()) | {0.0, 1.0, r.multiple}
        return sorted(v for v in values if r.low <= v <= r.high)

    def sweep_builder(self, index: int) -> Callable[[float], list]:
        """v -> the interventions with row `index` at multiple v and the other rows as they are."""
        first = self.first_position
        before = [iv for r in self.rows[:index] for iv in r.interventions(first)]
        after = [iv for r in self.rows[index + 1:] for iv in r.interventions(first)]
        r = self._row(index)
        return lambda v: before + r.interventions(first, v) + after

    def sweep_context(self, index: int) -> tuple:
        """What a sweep of row `index` depends on besides its multiple: the other rows, its mode, the freeze."""
        others = tuple((r.key, r.multiple, r.mode) for i, r in enumerate(self.rows) if i != index)
        return others, self.rows[index].mode, self.freeze_attention

    def check_sweep(self, index: int, values, token_id) -> tuple[list[float], int]:
        """The sweep's values and token id, checked (SteeringError otherwise)."""
        from .intervene import InterventionError, check_interventions, vocabulary_size

        c = self.context
        if c.unavailable:
            raise SteeringError(c.unavailable)
        self._row(index)
        try:
            vals = [float(v) for v in values]
        except (TypeError, ValueError):
            raise SteeringError("The sweep's values must be numbers.") from None
        if not vals or not all(math.isfinite(v) for v in vals):
            raise SteeringError("The sweep needs at least one finite value.")
        try:
            token_id = int(token_id)
        except (TypeError, ValueError):
            raise SteeringError(f"Token id {token_id!r} is not a whole number.") from None
        vocab = vocabulary_size(c.bundle)
        if not 0 <= token_id < vocab:
            raise SteeringError(f"Token id {token_id} is outside the vocabulary (0..{vocab - 1}).")
        try:
            check_interventions(self.sweep_builder(index)(vals[0]), c.transcoders, c.analysis.graph.n_pos)
        except InterventionError as e:
            raise SteeringError(e.message) from None
        return vals, token_id

    def decode(self, token_id: int) -> str:
        b = self.context.bundle
        return b.tokenizer.decode([int(token_id)]) if b is not None else str(token_id)

    # ---- results ----
    def set_result(self, result) -> None:
        """A computed `InterventionUpdate` (or its continuation) for the current state."""
        self.result = result
        self.saved = None
        self.events.emit(ResultChanged())

    @property
    def changes(self) -> dict[int, float] | None:
        """Feature node -> relative activation change under the interventions (None: no intervention)."""
        r = self.result
        if r is not None:
            return dict(r.changes) if r.interventions else None
        if self.saved is not None and self.saved.changes:
            return dict(self.saved.changes)
        return None

    # ---- snapshots (undo, graph switches, sessions) ----
    def state(self) -> SteeringState:
        return SteeringState(self.rows, self.freeze_attention, self.n_tokens)

    def restore(self, state: SteeringState) -> None:
        """Put rows and options back (undo), without a before-change notice."""
        self.rows = tuple(r if r.top is not None else replace(r, top=self.top_for(r.targets)[0]) for r in state.rows)
        self.freeze_attention, self.n_tokens = state.freeze_attention, state.n_tokens
        self._changed(RowsChanged())

    def snapshot(self) -> SteeringSnapshot:
        return SteeringSnapshot(self.state(), self.result, self.saved, self.saved_record, self.record_id,
                                self.record_created)

    def load(self, snapshot: SteeringSnapshot | None) -> None:
        """Put another graph's steering in place (or none); its result stays if it is one of its state."""
        s = snapshot or SteeringSnapshot(SteeringState())
        self.rows = tuple(r if r.top is not None else replace(r, top=self.top_for(r.targets)[0]) for r in s.state.rows)
        self.freeze_attention, self.n_tokens = s.state.freeze_attention, s.state.n_tokens
        self.version += 1
        result = s.result
        if result is not None:
            result = _rebased(result, self.version)
        self.result, self.saved = result, s.saved
        self.saved_record, self.record_id, self.record_created = s.saved_record, s.record_id, s.record_created
        self.events.emit(SteeringLoaded())
        self.events.emit(RowsChanged())
        self.events.emit(ResultChanged())

    # ---- sessions ----
    def outputs(self) -> dict:
        """What is shown of the last result, as JSON: the bars and the two continuations (HTML)."""
        r = self.result
        if r is None:
            s = self.saved
            return {} if s is None else {"bars": [list(b) for b in s.bars], "default": s.default_html,
                                         "steered": s.steered_html}
        bars = [[show_token(t.token), t.before, t.after] for t in r.top[:BAR_COUNT]]
        return {"bars": bars,
                "default": continuation_html(r.default_text, None, False) if r.default else "",
                "steered": continuation_html(r.steered_text, r.default_text, True) if r.steered else ""}

    def record(self):
        """The session's `InterventionRecord` of these rows and their last result (None without rows)."""
        from ..session.records import InterventionRecord

        if not self.rows:
            return None
        state = self.state().to_json()
        saved = self.saved_record
        if self.result is None and saved is not None and _same_rows(saved.options.get("pane", {}), state):
            return saved  # shown from the file, nothing recomputed: keep what was computed then
        r = self.result
        changes = self.changes or {}
        return InterventionRecord(
            id=self.record_id, interventions=tuple(self.interventions()),
            options={"pane": state, "freeze_attention": self.freeze_attention},
            top_before=tuple({"token": t.token, "id": t.id, "probability": t.before} for t in r.top_before) if r else (),
            top_after=tuple({"token": t.token, "id": t.id, "probability": t.after} for t in r.top_after) if r else (),
            extra={"default": r.default.text if r and r.default else "",
                   "steered": r.steered.text if r and r.steered else "",
                   "changes": sorted([int(n), float(v)] for n, v in changes.items()),
                   "outputs": self.outputs()},
            **({} if self.record_created is None else {"created": self.record_created}))

    @staticmethod
    def snapshot_from_records(records) -> SteeringSnapshot | None:
        """The steering a session's intervention records describe (its last one made by the pane)."""
        ours = [r for r in records if "pane" in r.options]
        if not ours:
            return None
        last = ours[-1]
        saved = SavedOutputs.from_extra(last.extra)
        return SteeringSnapshot(SteeringState.from_json(last.options["pane"]), None,
                                saved if (saved.bars or saved.changes or saved.default_html) else None,
                                last, last.id, last.created)


def _rebased(result, version: int):
    """`result` renumbered to `version` (its probabilities memo kept)."""
    out = replace(result, version=version)
    if "_probabilities" in result.__dict__:
        object.__setattr__(out, "_probabilities", result.__dict__["_probabilities"])
    return out
