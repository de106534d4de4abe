"""Sessions in the window: New / Open / Save / Save As, recent files, unsaved-changes prompts,
autosave with crash recovery, and undo / redo.

The session file is written from the workspace alone (`core.session.workspace.Workspace.to_session`) and
read back into it (`load_session`); nothing here reads a widget. The workspace's events say when the
user changed something a session keeps (`modifies_session`): that, and only that, marks the session
modified. Computed results arriving, the canvas view and the window layout are saved but do not.
Every graph traced in the session stays in it; the Graph menu switches between them.

Autosave writes the whole session every few seconds while there are unsaved changes, on a
background thread, to a file in the user's data folder, next to a marker holding this process's
id. A later start that finds an autosave whose process is gone offers to recover it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, QStandardPaths, QTimer, Signal
from PySide6.QtWidgets import QFileDialog, QMessageBox

from ..core.atomic_write import OutputError, write_text_atomic
from ..core.session.records import SESSION_SUFFIX, FolderStatus, Session
from ..core.session.store import (SessionError, SessionLockedError, load_session, remove_stale_files,
                                  save_session, save_session_as)
from ..core.session.workspace_events import HistoryChanged
from .jobs import JobError
from .settings import string_list

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
        self.workspace = self.controller.workspace
        self.path: Path | None = None
        self.dirty = False
        self._restoring = False
        self.autosave_dir = autosave_dir or autosave_folder()
        self.autosave_path = self.autosave_dir / f"autosave-{os.getpid()}{SESSION_SUFFIX}"
        # what killed runs left there: autosave names carry the pid, so no later save would clean it up
        remove_stale_files(self.autosave_dir)
        self._autosave_thread: threading.Thread | None = None
        self._autosave_pending = False
        # "save" | "discard" | "cancel" for unsaved changes; None asks with a dialog (tests answer here)
        self.answer_unsaved = None
        self.timer = QTimer(self)
        self.timer.setInterval(AUTOSAVE_SECONDS * 1000)
        self.timer.timeout.connect(self.autosave)
        self.timer.start()
        self.workspace.events.connect(self._on_event)

    # ---- the workspace -> the session ----
    @property
    def history(self):
        return self.workspace.history

    @property
    def session(self) -> Session:
        return self.capture()

    def capture(self) -> Session:
        """The session as it would be saved now (from the workspace)."""
        return self.workspace.to_session()

    def _on_event(self, event) -> None:
        if isinstance(event, HistoryChanged):
            self.state_changed.emit()
        if getattr(event, "modifies_session", False) and not self._restoring:
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
        self.workspace.undo()

    def redo(self) -> None:
        self.workspace.redo()

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
            self.workspace.clear()
        finally:
            self._restoring = False
        self.path, self.dirty = None, False
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
        write = save_session if self.path is not None and path == self.path else save_session_as

        def save() -> bool:
            write(session, path)  # onto this session's own file: in place, only what changed
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
            self.workspace.load_session(session, graph_id)
        finally:
            self._restoring = False

    def switch_graph(self, graph_id: int) -> None:
        """Show another graph of the session, with its own transcoders and index (see the workspace)."""
        self.workspace.set_current(graph_id)

    def _check_sources(self, session: Session) -> None:
        """Saved graphs open without the model; computing anything new needs it, so say where it stands."""
        current = session.current()
        ref = (current.model if current is not None and current.model is not None else None) or session.model
        if ref is None:
            return
        status = ref.check()
        loaded = self.workspace.loaded(ref.content_hash) is not None
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
        return [p for p in string_list(self.settings, "recentSessions") if p]

    def _remember(self, path: Path) -> None:
        items = [p for p in self.recent() if p != str(path)]
        self.settings.setValue("recentSessions", [str(path), *items][:MAX_RECENT])

    def _default_folder(self) -> Path:
        return self.path.parent if self.path else Path.home()

