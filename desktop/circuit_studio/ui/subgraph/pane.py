"""The subgraph pane: pinned nodes and supernodes, laid out like the main graph, grouped by hand.

Vertices are `Analysis.subgraph_groups()` (each supernode, then each pinned node outside one), placed
by `layout.subgraph_layout`; edges are `Analysis.subgraph_edges()` (the sums of the members' direct
edges); `plot.SubgraphPlot` draws both.

Interaction (the circuit-tracer / Neuronpedia conventions, plus a few more):
* click a vertex: select it in the pane (a plain pinned node is also selected in the analysis, so
  the graph and the feature pane follow); Ctrl- or Shift-click: add/remove; click empty space: clear;
* `g` (or the Group button) groups the selected vertices; holding `g` while clicking adds to the
  selection and groups on release, as in the frontends;
* double-click (or Rename / F2) renames a supernode, or relabels a plain feature node;
* Ungroup, Unpin (Delete) and Clear buttons; Esc clears the pane's selection.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from PySide6.QtCore import QEvent, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (QApplication, QHBoxLayout, QLabel, QLineEdit, QPushButton, QStackedWidget, QVBoxLayout,
                               QWidget)

from ...core.session.analysis import Analysis, Aspect
from ...core.graph.display_text import elide, layer_name
from ...core.graph.attribution_graph import NodeKind
from .layout import SubgraphVertex, VertexKey, subgraph_layout
from .plot import SubgraphPlot

EMPTY_TEXT = "Pin nodes with Ctrl-click on the graph"


class SubgraphPane(QWidget):
    """Pinned nodes and supernodes of the current analysis, drawn with pyqtgraph.

    Public for tests and the window: `vertices` (list of `SubgraphVertex`, in `subgraph_groups()`
    order), `edges` (float32 [G, G], target × source, as drawn), `selected_keys()` / `selected_indices()`,
    `set_selected(keys)`, `group_selected()`, `ungroup_selected()`, `unpin_selected()`, `clear_all()`,
    `start_rename(key=None)`, `vertex_widget_pos(i)` (where to click in `plot_widget.viewport()`),
    `plot_widget` (the `SubgraphPlot`), the buttons (`group_button`, `rename_button`, `ungroup_button`,
    `unpin_button`, `clear_button`), `rename_edit`, `count_label`, `empty_label`, `stack`.
    Signal `selection_changed()`.
    """

    selection_changed = Signal()

    def __init__(self, controller, parent=None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.vertices: list[SubgraphVertex] = []
        self.edges = np.zeros((0, 0), dtype=np.float32)
        self._selected: list[VertexKey] = []
        self._edges_for: tuple | None = None  # the groups `edges` was computed for
        self._g_held = False
        self._defer = 0
        self._dirty = False
        self._rename_key: VertexKey | None = None
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

        # toolbar
        self.count_label = QLabel()
        self.group_button = QPushButton("Group")
        self.group_button.setToolTip("Group the selected vertices into one supernode (g)")
        self.rename_button = QPushButton("Rename")
        self.rename_button.setToolTip("Rename the selected supernode, or relabel the selected feature "
                                      "(F2, or double-click it)")
        self.ungroup_button = QPushButton("Ungroup")
        self.ungroup_button.setToolTip("Split the selected supernodes back into their members")
        self.unpin_button = QPushButton("Unpin")
        self.unpin_button.setToolTip("Remove the selected vertices (all members of a supernode) from the "
                                     "subgraph (Delete)")
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Unpin every node and drop every supernode")
        self.group_button.clicked.connect(self.group_selected)
        self.rename_button.clicked.connect(lambda: self.start_rename())
        self.ungroup_button.clicked.connect(self.ungroup_selected)
        self.unpin_button.clicked.connect(self.unpin_selected)
        self.clear_button.clicked.connect(self.clear_all)
        bar = QHBoxLayout()
        bar.addWidget(self.count_label, 1)
        for b in (self.group_button, self.rename_button, self.ungroup_button, self.unpin_button, self.clear_button):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keep `g` and Delete going to the pane
            bar.addWidget(b)

        self.rename_edit = QLineEdit()
        self.rename_edit.setPlaceholderText("New name, Enter to apply, Esc to cancel")
        self.rename_edit.hide()
        self.rename_edit.returnPressed.connect(self._commit_rename)
        self.rename_edit.installEventFilter(self)

        palette = self.palette()
        self.plot_widget = SubgraphPlot(palette.color(QPalette.ColorRole.Base), palette.color(QPalette.ColorRole.Text),
                                        self.font(), self._tip)
        self.plot_widget.scene().sigMouseClicked.connect(self._on_scene_click)
        self._fit_timer = QTimer(self, singleShot=True, interval=0)
        self._fit_timer.timeout.connect(self.fit)
        self.plot_widget.installEventFilter(self)
        self.plot_widget.viewport().installEventFilter(self)

        self.empty_label = QLabel(EMPTY_TEXT)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setWordWrap(True)
        self.empty_label.setEnabled(False)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty_label)
        self.stack.addWidget(self.plot_widget)
        self.hint_label = QLabel("Click: select · Ctrl-click: add · g: group · double-click: rename · "
                                 "Del: unpin · Esc: clear selection · drag/wheel: pan/zoom")
        self.hint_label.setEnabled(False)
        self.hint_label.setWordWrap(True)

        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.addLayout(bar)
        outer.addWidget(self.rename_edit)
        outer.addWidget(self.stack, 1)
        outer.addWidget(self.hint_label)

        controller.analysis_changed.connect(self._on_analysis_changed)
        controller.aspect_changed.connect(self._on_aspect)
        self._on_analysis_changed()

    # ---- model → view ----
    @property
    def analysis(self) -> Analysis | None:
        return self.controller.analysis

    def _on_analysis_changed(self) -> None:
        self._selected = []
        self._edges_for = None
        self._cancel_rename()
        self.redraw(fit=True)

    def _on_aspect(self, aspect: str) -> None:
        if aspect in (Aspect.PINS.value, Aspect.SUPERNODES.value, Aspect.LABELS.value, Aspect.SELECTION.value):
            self.redraw()

    @contextmanager
    def _batch(self):
        """Several model changes, one redraw."""
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1
            if not self._defer and self._dirty:
                self.redraw()

    def redraw(self, fit: bool = False) -> None:
        if self._defer:
            self._dirty = True
            return
        self._dirty = False
        analysis = self.analysis
        old_keys = [v.key for v in self.vertices]
        self.vertices = self._build_vertices(analysis) if analysis is not None else []
        keys = {v.key for v in self.vertices}
        before = list(self._selected)
        self._selected = [k for k in self._selected if k in keys]
        if self._rename_key is not None and self._rename_key not in keys:
            self._cancel_rename()
        self._update_count()
        if not self.vertices:
            self.empty_label.setText(EMPTY_TEXT if analysis is not None
                                     else f"Open or trace a graph. {EMPTY_TEXT}.")
            self.stack.setCurrentWidget(self.empty_label)
            self.plot_widget.clear_items()
            self.edges = np.zeros((0, 0), dtype=np.float32)
        else:
            self.stack.setCurrentWidget(self.plot_widget)
            self._compute_edges(analysis)
            self.plot_widget.draw(analysis, self.vertices, self.edges, self._selected)
            if fit or [v.key for v in self.vertices] != old_keys:
                self.fit()
        self._update_buttons()
        if self._selected != before:
            self.selection_changed.emit()

    def _build_vertices(self, analysis: Analysis) -> list[SubgraphVertex]:
        groups = analysis.subgraph_groups()
        g = analysis.graph
        layers, positions = g.node_layers(), g.node_positions()
        rows = [float(np.mean(layers[list(m)] + 1)) for _, m in groups]  # embeddings -1 -> row 0
        cols = [float(np.mean(positions[list(m)])) for _, m in groups]
        x, y, col_keys = subgraph_layout(rows, cols)
        self.plot_widget.set_axes(g, x, cols, col_keys)
        n_super = len(analysis.supernodes)
        out = []
        for i, (name, members) in enumerate(groups):
            if i < n_super:
                sid = analysis.supernodes[i].id
                key = ("s", sid)
            else:
                sid, key = None, ("n", members[0])
            out.append(SubgraphVertex(key, name, tuple(int(m) for m in members), sid, float(x[i]), float(y[i])))
        return out

    def _compute_edges(self, analysis: Analysis) -> None:
        signature = tuple(v.members for v in self.vertices)
        if signature != self._edges_for:
            self.edges = analysis.subgraph_edges()
            self._edges_for = signature

    def fit(self) -> None:
        """Show every vertex, with room for the labels right of the rightmost column."""
        if self.vertices:
            self.plot_widget.fit()

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self.vertices and self.plot_widget.is_fitted():  # keep a view the user zoomed or panned
            self._fit_timer.start()

    def _update_count(self) -> None:
        a = self.analysis
        n_pin = len(a.pinned) if a else 0
        n_sup = len(a.supernodes) if a else 0
        text = f"{n_pin} pinned · {n_sup} supernode{'' if n_sup == 1 else 's'}"
        if self._selected:
            text += f" · {len(self._selected)} selected"
        if self._g_held:
            text += " · grouping (release g)"
        self.count_label.setText(text)

    def _update_buttons(self) -> None:
        sel = [v for v in self.vertices if v.key in set(self._selected)]
        members = {m for v in sel for m in v.members}
        a = self.analysis
        self.group_button.setEnabled(len(sel) >= 2 and len(members) >= 2)
        one = sel[0] if len(sel) == 1 else None
        self.rename_button.setEnabled(one is not None and (one.is_supernode or (
            a is not None and a.graph.kind_of(one.members[0]) is NodeKind.FEATURE)))
        self.ungroup_button.setEnabled(any(v.is_supernode for v in sel))
        self.unpin_button.setEnabled(bool(sel))
        self.clear_button.setEnabled(bool(a is not None and a.pinned))

    def _tip(self, x=None, y=None, data=None) -> str:
        try:
            v = self.vertices[int(data)]
        except (TypeError, IndexError, ValueError):
            return ""
        a = self.analysis
        if a is None:
            return ""
        lines = [v.name]
        if v.is_supernode:
            lines.append(f"Supernode of {len(v.members)}:")
            lines += [f"  • {a.label_of(m)}" for m in v.members[:20]]
            if len(v.members) > 20:
                lines.append(f"  … and {len(v.members) - 20} more")
        else:
            info = a.info(v.members[0])
            lines.append(f"{info.kind.value}, {layer_name(info.layer, a.graph.n_layers)}, position "
                         f"{info.position} {info.token!r}"
                         + (f", activation {info.activation:.3g}" if info.activation is not None else ""))
        i = self.vertices.index(v)
        names = [u.name for u in self.vertices]
        for title, line in (("Inputs here", self.edges[i, :]), ("Outputs here", self.edges[:, i])):
            top = [j for j in np.argsort(-np.abs(line)) if line[j] != 0][:5]
            if top:
                lines.append(f"{title}: " + ", ".join(f"{elide(names[j], 24)} {line[j]:+.3g}" for j in top))
        return "\n".join(lines)

    # ---- selection ----
    def selected_keys(self) -> list[VertexKey]:
        return list(self._selected)

    def selected_indices(self) -> list[int]:
        index = {v.key: i for i, v in enumerate(self.vertices)}
        return [index[k] for k in self._selected if k in index]

    def set_selected(self, keys) -> None:
        valid = {v.key for v in self.vertices}
        new = []
        for k in keys:
            k = tuple(k)
            if k in valid and k not in new:
                new.append(k)
        if new != self._selected:
            self._selected = new
            self._restyle()
            self.selection_changed.emit()

    def _restyle(self) -> None:
        self._update_count()
        self._update_buttons()
        if self.vertices and self.analysis is not None:
            self.plot_widget.draw(self.analysis, self.vertices, self.edges, self._selected)

    def vertex_widget_pos(self, i: int) -> QPoint:
        """Where vertex i is drawn, in `plot_widget.viewport()` coordinates (for clicks in tests)."""
        return self.plot_widget.vertex_widget_pos(i)

    def _on_scene_click(self, ev) -> None:
        if ev.button() != Qt.MouseButton.LeftButton or self.analysis is None:
            return
        hit = self.plot_widget.vertex_at(ev.scenePos())
        additive = self._g_held or bool(ev.modifiers() & (Qt.KeyboardModifier.ControlModifier
                                                           | Qt.KeyboardModifier.ShiftModifier))
        if ev.double():
            return  # handled on the viewport's double-click event (see eventFilter)
        if hit is None:
            if not additive:
                self.set_selected([])
            return
        key = self.vertices[hit].key
        if additive:
            self.set_selected([k for k in self._selected if k != key] if key in self._selected
                              else self._selected + [key])
        else:
            self.set_selected([key])
            v = self.vertices[hit]
            if not v.is_supernode:
                self.analysis.select(v.members[0])  # the graph and the feature pane follow
        ev.accept()
    # ---- actions ----
    def _say(self, text: str) -> None:
        self.controller.message.emit(text)
        self.count_label.setToolTip(text)

    def group_selected(self):
        """Group the selected vertices (their members' union) into a new supernode; returns it or None."""
        a = self.analysis
        sel = [v for v in self.vertices if v.key in self._selected]
        sel.sort(key=lambda v: self._selected.index(v.key))
        members: list[int] = []
        for v in sel:
            members += [m for m in v.members if m not in members]
        if a is None or len(sel) < 2 or len(members) < 2:
            self._say("Select at least two vertices to group (Ctrl-click them).")
            return None
        try:
            with self._batch():
                sn = a.group(members)
                self._selected = [("s", sn.id)]
        except ValueError as e:
            self._say(str(e))
            return None
        self.selection_changed.emit()
        return sn

    def ungroup_selected(self) -> None:
        a = self.analysis
        sel = [v for v in self.vertices if v.key in self._selected and v.is_supernode]
        if a is None or not sel:
            return
        with self._batch():
            keys = []
            for v in sel:
                a.ungroup(v.supernode_id)
                keys += [("n", m) for m in v.members]
            self._selected = keys
        self.selection_changed.emit()

    def unpin_selected(self) -> None:
        a = self.analysis
        sel = [v for v in self.vertices if v.key in self._selected]
        if a is None or not sel:
            return
        with self._batch():
            self._selected = []
            for v in sel:
                for m in v.members:
                    if m in a.pinned:
                        a.toggle_pin(m)
        self.selection_changed.emit()

    def clear_all(self) -> None:
        a = self.analysis
        if a is not None and (a.pinned or a.supernodes):
            self._selected = []
            a.clear_pins()
            self.selection_changed.emit()

    def start_rename(self, key: VertexKey | None = None) -> bool:
        """Open the inline name editor for a supernode or a plain feature vertex (the selected one by default)."""
        a = self.analysis
        if key is None:
            if len(self._selected) != 1:
                self._say("Select one supernode or feature to rename.")
                return False
            key = self._selected[0]
        v = next((v for v in self.vertices if v.key == tuple(key)), None)
        if a is None or v is None:
            return False
        if not v.is_supernode and a.graph.kind_of(v.members[0]) is not NodeKind.FEATURE:
            self._say("Only supernodes and features can be renamed.")
            return False
        self._rename_key = v.key
        self.rename_edit.setText(v.name)
        self.rename_edit.setPlaceholderText("Supernode name (Enter applies, Esc cancels)" if v.is_supernode
                                            else "Feature label, empty for the automatic one (Enter, Esc)")
        self.rename_edit.show()
        self.rename_edit.selectAll()
        self.rename_edit.setFocus(Qt.FocusReason.OtherFocusReason)
        return True

    def _commit_rename(self) -> None:
        a, key = self.analysis, self._rename_key
        text = self.rename_edit.text().strip()
        self._cancel_rename()
        if a is None or key is None:
            return
        if key[0] == "s":
            if text:
                a.rename_supernode(key[1], text)
        else:
            a.set_label(key[1], text)  # empty: back to the automatic label
        self.setFocus(Qt.FocusReason.OtherFocusReason)

    def _cancel_rename(self) -> None:
        self._rename_key = None
        self.rename_edit.hide()

    # ---- keys ----
    def eventFilter(self, obj, event) -> bool:  # noqa: N802
        if obj is self.rename_edit:
            if event.type() == QEvent.Type.KeyPress and event.key() == Qt.Key.Key_Escape:
                self._cancel_rename()
                self.setFocus(Qt.FocusReason.OtherFocusReason)
                return True
            return False
        if (event.type() == QEvent.Type.MouseButtonDblClick and obj is self.plot_widget.viewport()
                and event.button() == Qt.MouseButton.LeftButton):
            hit = self.plot_widget.vertex_at(self.plot_widget.mapToScene(event.position().toPoint()))
            if hit is not None:
                self.set_selected([self.vertices[hit].key])
                self.start_rename(self.vertices[hit].key)
            return False
        if event.type() == QEvent.Type.KeyPress and self._key_press(event):
            return True
        if event.type() == QEvent.Type.KeyRelease and self._key_release(event):
            return True
        if event.type() == QEvent.Type.FocusOut and obj is self.plot_widget:
            QTimer.singleShot(0, self._check_focus)
        return super().eventFilter(obj, event)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if not self._key_press(event):
            super().keyPressEvent(event)

    def keyReleaseEvent(self, event) -> None:  # noqa: N802
        if not self._key_release(event):
            super().keyReleaseEvent(event)

    def focusOutEvent(self, event) -> None:  # noqa: N802
        QTimer.singleShot(0, self._check_focus)
        super().focusOutEvent(event)

    def _check_focus(self) -> None:
        """A held `g` ends when the keyboard focus leaves the pane (its release would go elsewhere)."""
        focus = QApplication.focusWidget()
        if focus is None or not (focus is self or self.isAncestorOf(focus)):
            self._end_grouping_mode()

    def _key_press(self, event) -> bool:
        key, mods = event.key(), event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        if key == Qt.Key.Key_G and mods in (Qt.KeyboardModifier.NoModifier, Qt.KeyboardModifier.ShiftModifier):
            if not event.isAutoRepeat():
                self._g_held = True  # clicks add to the selection until g is released
                self._update_count()
            return True
        if mods != Qt.KeyboardModifier.NoModifier:
            return False
        if key == Qt.Key.Key_Escape and self._selected:
            self.set_selected([])
            return True
        if key in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and self._selected:
            self.unpin_selected()
            return True
        if key == Qt.Key.Key_F2:
            self.start_rename()
            return True
        return False

    def _key_release(self, event) -> bool:
        if event.key() != Qt.Key.Key_G or event.isAutoRepeat():
            return False
        if self._g_held:
            self._g_held = False
            self._update_count()
            if len(self._selected) >= 2:
                self.group_selected()
            else:
                self._say("Select two or more vertices, then press g (or hold g and click them).")
        return True

    def _end_grouping_mode(self) -> None:
        if self._g_held:
            self._g_held = False
            self._update_count()
