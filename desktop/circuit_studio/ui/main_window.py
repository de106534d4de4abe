"""The main window: the prompt bar (`ui.prompt_bar`), graph canvas, panes as dock widgets, menus and status bar."""

from __future__ import annotations

import base64
import json
import sys
import traceback
from pathlib import Path

from PySide6.QtCore import QEvent, QSettings, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox, QVBoxLayout, QWidget

from ..core.errors import CircuitStudioError
from ..core.session.records import CanvasView
from ..core.session.workspace_events import SessionReplaced
from .canvas.logit_targets import LogitTargetsMenu
from .canvas.view import GraphCanvas
from .controller import Controller
from .feature_pane import FeaturePane
from .heads_pane import HeadsPane
from .intervention_pane import InterventionPane
from .intervention_rows import ElidedLabel
from .jobs import JobError
from .model_dialog import ModelDialog
from .node_connections import NodeConnectionsPane
from .prompt_bar import PromptBar
from .session_manager import SessionManager
from .settings import string_list
from .subgraph_pane import SubgraphPane

MAX_RECENT = 8


class MainWindow(QMainWindow):
    def __init__(self, controller: Controller | None = None, settings: QSettings | None = None,
                 autosave_dir: Path | None = None) -> None:
        super().__init__()
        self.controller = controller or Controller(self)
        self.settings = settings or QSettings("Circuit Studio", "Circuit Studio")
        self.setWindowTitle("Circuit Studio")
        self.resize(1500, 900)
        self.prompt_bar = PromptBar(self.controller)
        self.canvas = GraphCanvas(self.controller)
        self.logit_targets = LogitTargetsMenu(self.controller, self)  # right-click a logit: custom targets
        self.canvas.node_context_requested.connect(self.logit_targets.show)
        # what the graph on screen was traced with, and whether that is loaded: one line whatever it says, so
        # that the canvas keeps its size
        self.provenance = ElidedLabel("")
        self.provenance.setContentsMargins(8, 2, 8, 2)
        self.provenance.setFixedHeight(self.provenance.fontMetrics().height() + 9)
        self.provenance.hide()
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.prompt_bar)
        layout.addWidget(self.provenance)
        layout.addWidget(self.canvas, 1)
        self.setCentralWidget(central)
        self.connections = NodeConnectionsPane(self.controller)
        self.features = FeaturePane(self.controller)
        self.subgraph = SubgraphPane(self.controller)
        self.interventions = InterventionPane(self.controller)
        self.heads = HeadsPane(self.controller)
        self.docks = {
            "connections": self._dock("Node connections", self.connections, Qt.RightDockWidgetArea),
            "features": self._dock("Feature detail", self.features, Qt.RightDockWidgetArea),
            "subgraph": self._dock("Subgraph", self.subgraph, Qt.BottomDockWidgetArea),
            "interventions": self._dock("Interventions", self.interventions, Qt.BottomDockWidgetArea),
            "heads": self._dock("Heads", self.heads, Qt.BottomDockWidgetArea),
        }
        # Neuronpedia's quadrants: the right column (connections over feature detail) runs the full height,
        # the bottom panes sit under the canvas only
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        self.tabifyDockWidget(self.docks["subgraph"], self.docks["interventions"])
        self.tabifyDockWidget(self.docks["interventions"], self.docks["heads"])
        self.connections.edge_chosen.connect(self.heads.request_edge)  # a row of Node connections = an edge
        self.docks["subgraph"].raise_()
        self._default_state = self.saveState()
        self._restoring_window = False
        self._switching_graph = False
        self.sessions = SessionManager(self, self.settings, autosave_dir)
        self.device_label = QLabel()
        self.loaded_label = QLabel()
        self.statusBar().addPermanentWidget(self.loaded_label)
        self.statusBar().addPermanentWidget(self.device_label)
        self._menus()
        c = self.controller
        c.model_changed.connect(self._update_status)
        c.message.connect(lambda text: self.statusBar().showMessage(text, 8000))
        c.error.connect(self.show_error)
        self.sessions.state_changed.connect(self._update_session_ui)
        # the workspace follows the canvas view and the layout as they change; the window follows sessions
        vb = self.canvas.plot.getViewBox()
        vb.sigRangeChanged.connect(self._canvas_view_changed)
        for signal in (c.analysis_changed, c.model_changed, c.loading_changed):
            signal.connect(self._update_provenance)  # first: the banner's height changes the canvas's
        c.analysis_will_change.connect(self._graph_will_change)
        c.analysis_changed.connect(self._graph_changed)  # after the canvas has drawn (and fitted) the graph
        c.workspace.events.connect(self._session_replaced, SessionReplaced)
        for dock in self.docks.values():
            dock.visibilityChanged.connect(self._window_changed)
            dock.dockLocationChanged.connect(self._window_changed)
            dock.topLevelChanged.connect(self._window_changed)
            dock.installEventFilter(self)  # resized by a splitter drag: no signal, a resize event
        self._update_status()
        self._update_session_ui()
        self._update_provenance()
        self._restore()

    # ---- construction ----
    def _dock(self, title: str, widget: QWidget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title.replace(" ", "_"))
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _action(self, menu, text: str, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _menus(self) -> None:
        file = self.menuBar().addMenu("&File")
        self._action(file, "&New session", lambda: self.sessions.new(), QKeySequence.New)
        self._action(file, "&Open session…", lambda: self.sessions.open(), QKeySequence.Open)
        self.recent_sessions_menu = file.addMenu("Recent sessions")
        self.recent_sessions_menu.aboutToShow.connect(self._fill_recent_sessions)
        self._action(file, "&Save session", lambda: self.sessions.save(), QKeySequence.Save)
        self._action(file, "Save session &as…", lambda: self.sessions.save_as(None), QKeySequence.SaveAs)
        file.addSeparator()
        self._action(file, "Open &demo", self.open_demo)
        self._action(file, "Open demo with its cross-&layer transcoder", lambda: self.open_demo("clt"))
        self._action(file, "Open &model folder…", self.open_model, "Ctrl+Shift+O")
        self._action(file, "Open &transcoder folder…", self.open_transcoders)
        self._action(file, "Open feature &index…", self.open_index)
        self.recent_menu = file.addMenu("&Recent")
        self._fill_recent()
        file.addSeparator()
        self._action(file, "&Import graph JSON…", lambda: self.import_json())
        self._action(file, "&Export graph JSON…", lambda: self.export_json())
        self._action(file, "Export canvas as &SVG…", lambda: self.export_svg())
        self._action(file, "Export canvas as &PNG…", lambda: self.export_png())
        file.addSeparator()
        self._action(file, "&Quit", self.close, QKeySequence.Quit)
        edit = self.menuBar().addMenu("&Edit")
        self.undo_action = self._action(edit, "Undo", lambda: self.sessions.undo(), QKeySequence.Undo)
        self.redo_action = self._action(edit, "Redo", lambda: self.sessions.redo(), QKeySequence.Redo)
        view = self.menuBar().addMenu("&View")
        for dock in self.docks.values():
            view.addAction(dock.toggleViewAction())
        view.addSeparator()
        self._action(view, "&Reset layout", self.reset_layout)
        graph = self.menuBar().addMenu("&Graph")
        self._action(graph, "&Find feature…", self.find_feature, "Ctrl+Shift+F")
        self._action(graph, "&Steer selected feature", self._steer_selected, "Ctrl+I")
        self._action(graph, "Steer &pinned nodes", self._steer_pinned)
        self._action(graph, "&Heads of selected edge", self.show_heads)
        graph.addSeparator()
        self._action(graph, "&Compare graphs…", self.compare_graphs)
        self.graphs_menu = graph.addMenu("Graphs in this session")
        self.graphs_menu.aboutToShow.connect(self._fill_graphs)
        help_menu = self.menuBar().addMenu("&Help")
        self._action(help_menu, "&About Circuit Studio", self._about)

    # ---- actions ----
    def compare_graphs(self):
        """Graph ▸ Compare graphs…: two graphs of the session side by side (`ui.compare_view`)."""
        from .compare_view import CompareView

        ws = self.controller.workspace
        if len(ws.graphs) < 2:
            self.show_error("Nothing to compare", JobError("Compare needs two graphs in the session.",
                                                           "Trace another prompt first.", ""))
            return None
        others = [g for g in ws.graphs if g != ws.current_id]
        view = CompareView(ws, self, graph_a=ws.current_id if ws.current_id is not None else others[0],
                           graph_b=others[-1])
        view.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        view.show()
        return view

    def open_demo(self, kind: str = "plt") -> None:
        self.controller.open_demo(on_done=self._after_demo, kind=kind)

    def _after_demo(self) -> None:
        self.prompt_bar.refresh_prompts()

    def open_model(self) -> None:
        recent = self._recent()
        dialog = ModelDialog(self, *(recent[0] if recent else ("", "")))
        if dialog.exec():
            self.load(dialog.model_folder, dialog.transcoder_folder)

    def load(self, model: str, transcoders: str = "") -> None:
        self._remember(model, transcoders)
        after = (lambda: self.controller.load_transcoders(transcoders)) if transcoders else None
        self.controller.curated = []
        self.controller.load_model(model, on_done=after)

    def open_transcoders(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Transcoder folder")
        if folder:
            self.controller.load_transcoders(folder)

    def open_index(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Feature index", "", "Feature index (*.sqlite *.db)")
        if path:
            self.controller.open_feature_index(path)

    # Exports take a path (tests, scripts) or ask for one; each file is written whole or not at all, and a
    # failure (full disk, read-only folder) is shown in a dialog. -> whether the file was written.
    def import_json(self, path: str | None = None) -> int | None:
        """File ▸ Import graph JSON: a circuit-tracer / Neuronpedia `<slug>.json` joins the session as a
        read-only graph with its pins, supernodes and clerps (`core.graph.import_json`). -> its graph id."""
        from ..core.graph.import_json import load_graph_json
        from ..core.session.workspace import Binding

        path = path or QFileDialog.getOpenFileName(self, "Import graph JSON", "", "Graph JSON (*.json)")[0]
        if not path:
            return None
        try:
            imported = load_graph_json(path)
        except CircuitStudioError as e:
            self.show_error("Import failed", JobError(e.message, e.hint, ""))
            return None
        gid = self.controller.workspace.add_graph(imported.graph, Binding(), analysis=imported.analysis(),
                                                  title=f"Imported {Path(path).name}")
        self.statusBar().showMessage(f"Imported {Path(path).name} (read-only: only its kept nodes and links).", 8000)
        return gid

    def export_json(self, path: str | None = None) -> bool:
        from ..core.graph.export import analysis_options, write_frontend_json

        analysis = self.controller.analysis
        if analysis is None:
            self.show_error("Nothing to export", JobError("Trace a prompt first.", "", ""))
            return False
        path = path or QFileDialog.getSaveFileName(self, "Export graph JSON", "graph.json", "JSON (*.json)")[0]
        return bool(path) and self._export(path, lambda: write_frontend_json(
            path, analysis.graph, analysis.pruned, slug=Path(path).stem, **analysis_options(analysis)))

    def export_svg(self, path: str | None = None) -> bool:
        path = path or QFileDialog.getSaveFileName(self, "Export canvas", "graph.svg", "SVG (*.svg)")[0]
        return bool(path) and self._export(path, lambda: self.canvas.render_svg(path))

    def export_png(self, path: str | None = None, scale: float | None = None) -> bool:
        """The canvas's plot alone (no toolbar, sliders, legend), `scale` times its size on screen (asked for
        when not given and no path is given; 1 with a path)."""
        from PySide6.QtWidgets import QInputDialog

        from ..core.atomic_write import write_bytes_atomic

        if scale is None and not path:
            plot = self.canvas._plot.viewport()
            scale, ok = QInputDialog.getDouble(self, "Export canvas as PNG", f"Scale (1 = {plot.width()} × "
                                               f"{plot.height()} px):", 2.0, 0.5, 8.0, 1)
            if not ok:
                return False
        scale = 1.0 if scale is None else scale
        path = path or QFileDialog.getSaveFileName(self, "Export canvas", "graph.png", "PNG (*.png)")[0]
        return bool(path) and self._export(path, lambda: write_bytes_atomic(path, self.canvas.render_png(scale)))

    def _export(self, path: str, write) -> bool:
        try:
            write()
        except CircuitStudioError as e:
            self.show_error("Export failed", JobError(e.message, e.hint, ""))
            return False
        except Exception as e:  # noqa: BLE001 - a bug: shown with its details, the window stays usable
            self.show_error("Export failed", JobError(f"{type(e).__name__}: {e}", "This looks like a bug; the "
                                                      "details can be copied for a report.", traceback.format_exc()))
            return False
        self.statusBar().showMessage(f"Exported {Path(path).name}.", 8000)
        return True

    def _update_session_ui(self) -> None:
        s = self.sessions
        self.setWindowTitle(s.title)
        h = s.history
        undo, redo = (h.undo_description, h.redo_description) if h else (None, None)
        self.undo_action.setEnabled(undo is not None)
        self.undo_action.setText(f"Undo {undo}" if undo else "Undo")
        self.redo_action.setEnabled(redo is not None)
        self.redo_action.setText(f"Redo {redo}" if redo else "Redo")

    def _fill_recent_sessions(self) -> None:
        self.recent_sessions_menu.clear()
        for path in self.sessions.recent():
            action = self.recent_sessions_menu.addAction(Path(path).name)
            action.setToolTip(path)
            action.triggered.connect(lambda _=False, p=path: self.sessions.open(p))

    def _fill_graphs(self) -> None:
        """Each graph by its title, the transcoder set it was traced with and when."""
        self.graphs_menu.clear()
        ws = self.controller.workspace
        for gid in ws.graphs:
            d = ws.describe(gid)
            action = self.graphs_menu.addAction(d.menu_text)
            action.setToolTip(f"Model {d.model or '?'} · transcoders {d.transcoders or '?'}"
                              f"{' · index ' + d.index if d.index else ''}")
            action.setCheckable(True)
            action.setChecked(gid == ws.current_id)
            action.triggered.connect(lambda _=False, g=gid: self.sessions.switch_graph(g))

    # ---- the workspace's view, layout and provenance ----
    def _graph_will_change(self) -> None:
        self._switching_graph = True  # the canvas refits the next graph: not a view to remember

    def _graph_changed(self) -> None:
        self._switching_graph = False
        self._apply_graph_view()

    def _apply_graph_view(self) -> None:
        """Show the current graph where it was left (its view in the workspace), or report the fitted view."""
        view = self.controller.workspace.view
        vb = self.canvas.plot.getViewBox()
        if view is not None:
            vb.setRange(xRange=(view.x0, view.x1), yRange=(view.y0, view.y1), padding=0)
        else:
            self._canvas_view_changed()

    def _canvas_view_changed(self, *_) -> None:
        if self._switching_graph or self._restoring_window or self.controller.analysis is None:
            return
        (x0, x1), (y0, y1) = self.canvas.plot.getViewBox().viewRange()
        self.controller.workspace.set_view(CanvasView(x0, x1, y0, y1))

    def _window_blob(self) -> bytes:
        return json.dumps({"state": base64.b64encode(bytes(self.saveState().data())).decode(),
                           "geometry": base64.b64encode(bytes(self.saveGeometry().data())).decode()}).encode()

    def _window_changed(self, *_) -> None:
        if not self._restoring_window and hasattr(self, "sessions"):
            self.controller.workspace.set_window_state(self._window_blob())

    def _session_replaced(self, _event) -> None:
        """A session was opened: its layout, then its graph's view (the layout resizes the canvas)."""
        ws = self.controller.workspace
        blob, view = ws.window_state, ws.view
        if blob:
            self._restoring_window = True  # the canvas refits as the layout resizes it: not the graph's view
            try:
                data = json.loads(blob.decode())
                self.restoreGeometry(base64.b64decode(data["geometry"]))
                self.restoreState(base64.b64decode(data["state"]))
            except (ValueError, KeyError):  # a layout we cannot read is not worth refusing the session for
                pass
            finally:
                self._restoring_window = False
        if self.controller.analysis is not None:
            ws.set_view(view)
            self._apply_graph_view()

    def eventFilter(self, obj, event) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.Resize and obj in self.docks.values():
            self._window_changed()
        return super().eventFilter(obj, event)

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._window_changed()

    def moveEvent(self, event) -> None:  # noqa: N802
        super().moveEvent(event)
        self._window_changed()

    def _update_provenance(self) -> None:
        """The banner above the canvas: the graph's transcoder set, index and time; a warning when they are
        not loaded and the graph is shown as saved."""
        ws = self.controller.workspace
        gid = ws.current_id
        if gid is None:
            self.provenance.hide()
            return
        d = ws.describe(gid)
        where = (f"Graph {list(ws.graphs).index(gid) + 1} of {len(ws.graphs)} · traced "
                 f"{d.created.astimezone():%Y-%m-%d %H:%M} with {d.model or 'an unknown model'} + "
                 f"{d.transcoders or 'unknown transcoders'}"
                 f"{' · feature index ' + d.index if d.index else ' · no feature index'}")
        binding = ws.entry(gid).binding
        missing = [k for k in d.missing if k in ("model", "transcoders")]
        imported = ws.entry(gid).graph.provenance.get("imported")
        if imported:  # read from a graph JSON: nothing to re-trace or intervene with
            text = (f"Imported from {Path(imported.get('source') or 'a graph JSON').name} — read-only: only its kept "
                    f"nodes and links are known (no re-trace, re-pruning or interventions)")
            self.provenance.setStyleSheet("background: #e8f0fe; color: #1a3d7c; border-bottom: 1px solid #b6c8ef;")
        elif missing:
            loading = binding.transcoders is not None and binding.transcoders.identity in self.controller.loading
            head = ("Loading this graph's transcoders… showing saved results" if loading else
                    f"{' and '.join(missing).capitalize()} not loaded: showing saved results")
            text = f"⚠ {head} — {where}"
            self.provenance.setStyleSheet("background: #fff3cd; color: #664d03; border-bottom: 1px solid #e0c36a;")
        else:
            text = where
            self.provenance.setStyleSheet("color: #555; border-bottom: 1px solid #e4e4e4;")
        self.provenance.set_full_text(text)
        self.provenance.setToolTip(text)
        self.provenance.show()

    def _steer_selected(self) -> None:
        self.interventions.add_selected()
        self.docks["interventions"].raise_()

    def find_feature(self):
        """Graph ▸ Find feature… (Ctrl+Shift+F): search the feature index (`ui.feature.search_dialog`)."""
        from .feature.search_dialog import FindFeatureDialog

        d = getattr(self, "_find_feature", None)
        if d is None:
            d = self._find_feature = FindFeatureDialog(self.controller, self.features, self,
                                                       raise_pane=lambda: self.docks["features"].raise_())
        d.show()
        d.raise_()
        d.search_box.setFocus()
        d.search_box.selectAll()
        return d

    def show_heads(self) -> None:
        """Graph ▸ Heads of selected edge: the Heads pane, for the edge last chosen in Node connections (or
        the selected node's strongest edge)."""
        self.docks["heads"].show()
        self.docks["heads"].raise_()
        self.heads.request_selected()

    def _steer_pinned(self) -> None:
        self.interventions.add_pinned()
        self.docks["interventions"].raise_()

    def reset_layout(self) -> None:
        self.restoreState(self._default_state)
        for dock in self.docks.values():
            dock.show()
        self._default_proportions()

    def _default_proportions(self) -> None:
        """The canvas gets most of the room, the bottom panes a third of its column, and the right column is
        split evenly between connections and feature detail (Qt alone sizes docks from their size hints)."""
        h, w = max(self.height(), 600), max(self.width(), 900)
        d = self.docks
        self.resizeDocks([d["connections"]], [max(380, int(0.28 * w))], Qt.Orientation.Horizontal)
        self.resizeDocks([d["subgraph"]], [int(0.35 * h)], Qt.Orientation.Vertical)  # room for 3+ intervention rows
        self.resizeDocks([d["connections"], d["features"]], [h // 2, h // 2], Qt.Orientation.Vertical)

    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        if self._needs_proportions:  # first start: no saved layout
            self._needs_proportions = False
            self._default_proportions()

    def show_error(self, title: str, error: JobError) -> None:
        box = QMessageBox(QMessageBox.Warning, title, error.message, QMessageBox.Ok, self)
        box.setInformativeText(error.hint)
        if error.details:
            box.setDetailedText(error.details)
        box.open()  # not exec(): the window (and its jobs) keep running
        self.last_error = box

    def ask_retry(self, title: str, error: JobError) -> bool:
        """Say what stands in the way (e.g. a file another program holds) and ask: True for Retry."""
        box = QMessageBox(QMessageBox.Warning, title, error.message, QMessageBox.Retry | QMessageBox.Cancel, self)
        box.setInformativeText(error.hint)
        box.setDefaultButton(QMessageBox.Retry)
        return box.exec() == QMessageBox.Retry  # modal: the action waits for the answer

    def _about(self) -> None:
        from .. import __version__

        QMessageBox.about(self, "Circuit Studio", f"Circuit Studio {__version__}\nAttribution graphs for local "
                                                  "language models and their transcoders.")

    # ---- status and settings ----
    def _update_status(self) -> None:
        """What a new trace would use (the graph on screen names its own in the banner above the canvas)."""
        from ..core.model.loading import device_name

        ws = self.controller.workspace
        bundle, tc = ws.resource(ws.active.model), ws.resource(ws.active.transcoders)
        if bundle is not None:
            device = device_name(bundle.device)
        elif "torch" in sys.modules:
            device = device_name()
        else:  # importing torch takes ~2 s: never before the window shows (loading a model imports it)
            device = "set when a model loads"
        self.device_label.setText(f"  Device: {device}  ")
        index = ws.resource(ws.active.index) or ws.resource(ws.index_ref_for(ws.active.transcoders))
        parts = []
        if bundle is not None:
            parts.append(f"Model: {bundle.name} ({bundle.summary.n_layers} layers)")
        if tc is not None:
            parts.append(f"Transcoders: {tc.scan or '?'} ({tc.activation_name}, {tc.n_features}/layer)")
        if index is not None:
            parts.append("Feature index loaded")
        self.loaded_label.setText("  ·  ".join(parts) or "Nothing loaded: File ▸ Open demo")

    def _recent(self) -> list[tuple[str, str]]:
        items = string_list(self.settings, "recent")
        return [tuple(x.split("\n", 1)) if "\n" in x else (x, "") for x in items if x]

    def _remember(self, model: str, transcoders: str) -> None:
        entry = f"{model}\n{transcoders}"
        items = [x for x in string_list(self.settings, "recent") if x != entry]
        self.settings.setValue("recent", [entry, *items][:MAX_RECENT])
        self._fill_recent()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for model, transcoders in self._recent():
            action = self.recent_menu.addAction(f"{Path(model).name}  +  {Path(transcoders).name or '—'}")
            action.triggered.connect(lambda _=False, m=model, t=transcoders: self.load(m, t))
        self.recent_menu.setEnabled(bool(self.recent_menu.actions()))

    def _restore(self) -> None:
        geometry, state = self.settings.value("geometry"), self.settings.value("windowState")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)
        self._needs_proportions = state is None

    def closeEvent(self, event) -> None:
        if not self.sessions.maybe_save():
            event.ignore()
            return
        self.sessions.timer.stop()
        self.sessions.discard_autosave()
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("windowState", self.saveState())
        self.controller.shutdown()
        super().closeEvent(event)
