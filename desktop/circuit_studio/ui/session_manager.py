"""Sessions in the window: New / Open / Save / Save As, recent files, unsaved-changes prompts,
autosave with crash recovery, and undo / redo.

The session (`core.session.Session`) is immutable; this object keeps the latest one and folds the
live state into it when saving: the current analysis (thresholds, pins, supernodes, labels,
selection), the canvas view, the intervention pane's rows and the window layout. Every graph
traced in the session stays in it; the Graph menu switches between them.

Autosave writes the whole session every few seconds while there are unsaved changes, on a
background thread, to a file in the user's data folder, next to a marker holding this process's
id. A later start that finds an autosave whose process is gone offers to recover it.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, QStandardPaths, QTimer, Signal
from PySide6.QtWidgets import QFileDialog, QMessageBox

from ..core.atomic_write import OutputError, write_text_atomic
from ..core.history import History
from ..core.session import (SESSION_SUFFIX, CanvasView, FolderStatus, InterventionRecord, ModelRef, Session,
                            TranscoderRef)
from ..core.session_store import SessionError, SessionLockedError, load_session, save_session
from .jobs import JobError
from .intervention_pane import PaneState

AUTOSAVE_SECONDS = 5
MAX_RECENT = 8
FILTER = f"Circuit Studio session (*{SESSION_SUFFIX})"


def autosave_folder() -> Path:
    base = QStandardPaths.writableLocation(QStandardPaths.AppDataLocation) or str(Path.home() / ".circuit-studio")
    return Path(base) / "autosave"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SessionManager(QObject):
    state_changed = Signal()  # title, dirty flag or undo/redo names changed

    def __init__(self, window, settings: QSettings, autosave_dir: Path | None = None) -> None:
        super().__init__(window)
        self.window, self.settings = window, settings
        self.controller = window.controller
        self.session = Session()
        self.path: Path | None = None
        self.dirty = False
        self.history: History | None = None
        self._graph_id: int | None = None  # the record of the analysis on screen
        self._restoring = False
        self.autosave_dir = autosave_dir or autosave_folder()
        self.autosave_path = self.autosave_dir / f"autosave-{os.getpid()}{SESSION_SUFFIX}"
        self._autosave_thread: threading.Thread | None = None
        self._autosave_pending = False
        # "save" | "discard" | "cancel" for unsaved changes; None asks with a dialog (tests answer here)
        self.answer_unsaved = None
        self.timer = QTimer(self)
        self.timer.setInterval(AUTOSAVE_SECONDS * 1000)
        self.timer.timeout.connect(self.autosave)
        self.timer.start()
        c = self.controller
        c.analysis_will_change.connect(self._fold_in)
        c.analysis_changed.connect(self._analysis_changed)
        c.aspect_changed.connect(self._aspect_changed)
        window.interventions.will_change.connect(self._record)
        window.interventions.updated.connect(lambda _: self._mark_dirty())

    # ---- the live state <-> the session ----
    def _canvas_view(self) -> CanvasView | None:
        if self.controller.analysis is None:
            return None
        (x0, x1), (y0, y1) = self.window.canvas.plot.getViewBox().viewRange()
        return CanvasView(x0, x1, y0, y1)

    def _window_blob(self) -> bytes:
        w = self.window
        return json.dumps({"state": base64.b64encode(bytes(w.saveState().data())).decode(),
                           "geometry": base64.b64encode(bytes(w.saveGeometry().data())).decode()}).encode()

    def capture(self) -> Session:
        """The session with everything on screen folded in."""
        self._fold_in()
        return self.session

    def _fold_in(self) -> None:
        """Fold the live analysis, view, pane and window into `self.session`."""
        if self._restoring:  # the screen is being replaced by the session itself
            return
        c = self.controller
        session = self.session
        changes = {"window_state": self._window_blob(),
                   "settings": {**session.settings, "prompt": self.window.prompt_bar.prompt.currentText()}}
        if c.bundle is not None and (session.model is None or session.model.path != str(c.bundle.summary.folder)):
            changes["model"] = ModelRef.from_folder(c.bundle.summary.folder, c.bundle.summary)
        if c.transcoders is not None and c.transcoders.source is not None and (
                session.transcoders is None or session.transcoders.path != str(Path(c.transcoders.source).resolve())):
            from ..core.transcoder_loading import describe_transcoders

            changes["transcoders"] = TranscoderRef.from_folder(c.transcoders.source,
                                                               describe_transcoders(c.transcoders.source))
        if c.analysis is None:
            self.session = Session.from_analysis(None, session, **changes)
            return
        session = Session.from_analysis(c.analysis, session, graph_id=self._graph_id, view=self._canvas_view(),
                                        **changes)
        self._graph_id = session.current_graph
        pane = self.window.interventions.state()
        result = self.window.interventions.last_result
        record = InterventionRecord(
            id=1, interventions=tuple(self.window.interventions.interventions()),
            options={"pane": pane.to_json(), "freeze_attention": pane.freeze_attention},
            top_before=_top_tokens(result, 0, c), top_after=_top_tokens(result, 1, c),
            extra={"default": result.default.text if result and result.default else "",
                   "steered": result.steered.text if result and result.steered else "",
                   # the canvas rings, so that a session reopened without its model looks as it was
                   "changes": sorted([int(n), float(v)] for n, v in (c.intervention_changes or {}).items()),
                   "outputs": self.window.interventions.saved_outputs()})
        if result is None:  # shown from the file, no model loaded: keep what was computed then
            saved = [r for r in session.graph(self._graph_id).interventions if r.id == record.id]
            if saved and saved[0].options.get("pane") == record.options["pane"]:
                record = saved[0]
        if pane.rows:
            session = session.with_intervention(self._graph_id, record)
        self.session = session

    def _analysis_changed(self) -> None:
        a = self.controller.analysis
        self.history = None
        if a is not None:
            if not self._restoring:
                self._graph_id = None  # a new trace: a new record
                self._fold_in()
            pane = self.window.interventions
            self.history = History(lambda: (a.state(), pane.state()),
                                   lambda s: (a.restore(s[0]), pane.restore(s[1])), on_change=self.state_changed.emit)
            a.subscribe_before_change(self._record)
            if not self._restoring:
                self._mark_dirty()
        self.state_changed.emit()

    def _record(self, description: str) -> None:
        if self.history is not None and not self._restoring:
            self.history.record(description)

    def _aspect_changed(self, aspect: str) -> None:
        if not self._restoring:
            self._mark_dirty()

    def _mark_dirty(self) -> None:
        if self._restoring:
            return
        self._autosave_pending = True
        if not self.dirty:
            self.dirty = True
            self.state_changed.emit()

    # ---- undo ----
    def undo(self) -> None:
        if self.history and self.history.undo():
            self._mark_dirty()

    def redo(self) -> None:
        if self.history and self.history.redo():
            self._mark_dirty()

    # ---- titles ----
    @property
    def title(self) -> str:
        name = self.path.name if self.path else "Untitled session"
        return f"{'*' if self.dirty else ''}{name} — Circuit Studio"

    # ---- file actions ----
    def new(self) -> bool:
        if not self.maybe_save():
            return False
        self._restoring = True
        try:
            self.controller.set_analysis(None)
        finally:
            self._restoring = False
        self.session, self.path, self.dirty, self._graph_id = Session(), None, False, None
        self.state_changed.emit()
        return True

    def save(self) -> bool:
        return self.save_as(self.path) if self.path else self.save_as(None)

    def save_as(self, path: str | Path | None) -> bool:
        if path is None:
            name, _ = QFileDialog.getSaveFileName(self.window, "Save session", str(self._default_folder()), FILTER)
            if not name:
                return False
            path = name if name.endswith(SESSION_SUFFIX) else name + SESSION_SUFFIX
        path = Path(path)
        session = self.capture()

        def save() -> bool:
            save_session(session, path)
            return True

        if not self._attempt("Session not saved", save):
            return False
        self.path, self.dirty = path, False
        self._remember(path)
        self.controller.message.emit(f"Saved {path.name}.")
        self.state_changed.emit()
        return True

    def open(self, path: str | Path | None = None) -> bool:
        if path is None:
            name, _ = QFileDialog.getOpenFileName(self.window, "Open session", str(self._default_folder()), FILTER)
            if not name:
                return False
            path = name
        if not self.maybe_save():
            return False
        session = self._attempt("Cannot open session", lambda: load_session(path))
        if session is None:
            return False
        self.show_session(session)
        self.path, self.dirty = Path(path), False
        self._remember(Path(path))
        self.state_changed.emit()
        self._check_sources(session)
        return True

    def _attempt(self, title: str, action):
        """`action()`'s result, or None when it failed and the user was told why. While another program holds
        the file, the user is asked whether to retry (it may have let go by then)."""
        while True:
            try:
                return action()
            except SessionLockedError as e:
                if not self.window.ask_retry(title, JobError(e.message, e.hint, "")):
                    return None
            except SessionError as e:
                self.window.show_error(title, JobError(e.message, e.hint, ""))
                return None

    def show_session(self, session: Session, graph_id: int | None = None) -> None:
        """Put a session on screen as it was saved (its current graph, or `graph_id`)."""
        self._restoring = True
        try:
            self.session = session
            index = self.controller.feature_index
            record = None
            gid = session.current_graph if graph_id is None else graph_id
            if gid is not None:
                record = session.graph(gid)
                self._graph_id = gid
                self.controller.set_analysis(session.analysis(gid, auto_label=index.label if index else None))
            else:
                self._graph_id = None
                self.controller.set_analysis(None)
            self._restore_window(session)
            if record is not None:
                self._restore_graph_view(record)
            prompt = record.graph.prompt if record else session.settings.get("prompt", "")
            self.window.prompt_bar.prompt.setEditText(prompt)
        finally:
            self._restoring = False
        if self.history is not None:
            self.history.clear()

    def switch_graph(self, graph_id: int) -> None:
        self._fold_in()
        self.show_session(self.session, graph_id)
        self._mark_dirty()

    def _restore_graph_view(self, record) -> None:
        pane = self.window.interventions
        if record.interventions and "pane" in record.interventions[-1].options:
            last = record.interventions[-1]
            pane.restore(PaneState.from_json(last.options["pane"]))
            # shown as saved; recomputed (and replaced) as soon as the model is loaded
            if last.extra.get("changes"):
                self.controller.set_intervention_changes({int(n): float(v) for n, v in last.extra["changes"]})
            if last.extra.get("outputs") and self.controller.bundle is None:
                pane.show_saved(last.extra["outputs"])
        if record.view is not None:
            v = record.view
            self.window.canvas.plot.getViewBox().setRange(xRange=(v.x0, v.x1), yRange=(v.y0, v.y1), padding=0)

    def _restore_window(self, session: Session) -> None:
        if not session.window_state:
            return
        try:
            blob = json.loads(session.window_state.decode())
            self.window.restoreGeometry(base64.b64decode(blob["geometry"]))
            self.window.restoreState(base64.b64decode(blob["state"]))
        except (ValueError, KeyError):  # a layout we cannot read is not worth refusing the session for
            pass

    def _check_sources(self, session: Session) -> None:
        """Saved graphs open without the model; computing anything new needs it, so say where it stands."""
        c = self.controller
        ref = session.model
        if ref is None:
            return
        status = ref.check()
        loaded = c.bundle is not None and str(c.bundle.summary.folder) == ref.path
        if status is FolderStatus.OK and loaded:
            return
        if status is FolderStatus.OK:
            text = (f"This session's model is {ref.path}. Its graphs are open; to trace or steer, load the model "
                    "(File ▸ Open model folder…).")
        elif status is FolderStatus.MISSING:
            text = (f"This session's model folder {ref.path} is gone. The saved graphs are open and can be explored; "
                    "to compute anything new, open the folder where the model is now.")
        else:
            text = (f"The model folder {ref.path} changed since this session was saved (its files differ). The saved "
                    "graphs are as they were; new traces would come from the changed model.")
        self.window.show_error("Model not loaded", JobError(text, "File ▸ Open model folder…", ""))

    # ---- prompts ----
    def maybe_save(self) -> bool:
        """Ask about unsaved changes: True when it is fine to go on."""
        if not self.dirty:
            return True
        if self.answer_unsaved is not None:
            answer = self.answer_unsaved
            return self.save() if answer == "save" else answer == "discard"
        box = QMessageBox(QMessageBox.Warning, "Unsaved changes",
                          f"{self.path.name if self.path else 'This session'} has unsaved changes.",
                          QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel, self.window)
        box.setInformativeText("Save them first?")
        answer = box.exec()
        if answer == QMessageBox.Save:
            return self.save()
        return answer == QMessageBox.Discard

    # ---- autosave and recovery ----
    def autosave(self) -> None:
        if not self._autosave_pending or (self._autosave_thread and self._autosave_thread.is_alive()):
            return
        self._autosave_pending = False
        session = self.capture()
        marker = self.autosave_path.with_suffix(".json")
        try:
            self.autosave_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(marker, json.dumps({"pid": os.getpid(), "file": str(self.path) if self.path else None}))
        except (OSError, OutputError) as e:
            self._autosave_failed(e)
            return

        def work() -> None:
            try:
                save_session(session, self.autosave_path)
            except SessionError as e:
                self._autosave_failed(e)

        self._autosave_thread = threading.Thread(target=work, name="autosave", daemon=True)
        self._autosave_thread.start()

    def _autosave_failed(self, e: Exception) -> None:
        """Said in the status bar, not in a dialog every few seconds; tried again at the next tick."""
        self._autosave_pending = True
        self.controller.message.emit(f"Autosave failed: {e}")  # a signal: safe from the autosave thread

    def wait_for_autosave(self) -> None:
        if self._autosave_thread is not None:
            self._autosave_thread.join()

    def discard_autosave(self) -> None:
        self.wait_for_autosave()
        for p in (self.autosave_path, self.autosave_path.with_suffix(".json")):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass  # the folder is unusable, so autosave never wrote there: nothing to remove

    def recoverable(self) -> list[tuple[Path, dict]]:
        """Autosaves left by processes that are gone (a crash or a kill)."""
        found = []
        for marker in sorted(self.autosave_dir.glob("autosave-*.json")):
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError):
                continue
            session_file = marker.with_suffix(SESSION_SUFFIX)
            if session_file.is_file() and not _pid_alive(int(info.get("pid", 0))):
                found.append((session_file, info))
        return found

    def offer_recovery(self, ask=None) -> bool:
        """Offer to reopen the newest autosave of a crashed run; `ask(text) -> bool` replaces the dialog."""
        found = self.recoverable()
        if not found:
            return False
        path, info = max(found, key=lambda item: item[0].stat().st_mtime)
        text = ("Circuit Studio did not close normally last time. Recover the session it was working on"
                f"{' (' + Path(info['file']).name + ')' if info.get('file') else ''}?")
        if ask is None:
            ask = lambda t: QMessageBox.question(self.window, "Recover session", t) == QMessageBox.Yes  # noqa: E731
        recovered = False
        if ask(text):
            try:
                session = load_session(path)
            except SessionError as e:
                self.window.show_error("Cannot recover", JobError(e.message, e.hint, ""))
            else:
                self.show_session(session)
                self.path = Path(info["file"]) if info.get("file") else None
                self.dirty = True
                self._autosave_pending = True
                self.state_changed.emit()
                recovered = True
        for old, _ in found:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
        return recovered

    # ---- recent files ----
    def recent(self) -> list[str]:
        return [p for p in (self.settings.value("recentSessions", []) or []) if p]

    def _remember(self, path: Path) -> None:
        items = [p for p in self.recent() if p != str(path)]
        self.settings.setValue("recentSessions", [str(path), *items][:MAX_RECENT])

    def _default_folder(self) -> Path:
        return self.path.parent if self.path else Path.home()


def _top_tokens(result, which: int, controller, k: int = 10) -> tuple:
    """Top next tokens before (0) or after (1) the last intervention update, as TokenProb dicts."""
    if result is None or controller.bundle is None:
        return ()
    import numpy as np

    probs = result.probabilities()[which]
    top = np.argsort(-probs)[:k]
    decode = controller.bundle.tokenizer.decode
    return tuple({"token": decode([int(i)]), "id": int(i), "probability": float(probs[i])} for i in top)

