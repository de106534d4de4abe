"""Bad conditions met through the window: a session another program holds asks Retry / Cancel (the real
dialog, answered by clicking it), and exports on a full disk say so and leave no file behind."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from circuit_studio.core.session.store import load_session, save_session
from circuit_studio.ui.main_window import MainWindow
from test_session_store import example_session
from window_helpers import new_window


def _window(qtbot, tmp_path) -> MainWindow:
    return new_window(qtbot, tmp_path, autosave_dir=tmp_path / "autosave")


def _answer(clicks: list[tuple[QMessageBox.StandardButton, object]]) -> list[str]:
    """Click the buttons of the modal message boxes as they appear, in order (each after calling its
    function, e.g. to let go of a lock); returns the texts the boxes showed."""
    seen: list[str] = []
    pending = list(clicks)

    def poll(tries: int = 250) -> None:
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox) and box.isVisible():
            seen.append(f"{box.text()} {box.informativeText()}")
            button, before = pending.pop(0)
            assert box.button(QMessageBox.Retry) is not None and box.button(QMessageBox.Cancel) is not None
            if before is not None:
                before()
            box.button(button).click()
            if pending:
                QTimer.singleShot(20, poll)
        elif tries:
            QTimer.singleShot(20, lambda: poll(tries - 1))

    QTimer.singleShot(0, poll)
    return seen


@pytest.fixture
def session_file(tmp_path) -> Path:
    path = tmp_path / "s.cs-session"
    save_session(example_session(), path)
    return path


class Holder:
    """Another program's connection to the session file."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


@pytest.fixture
def holder(session_file):
    h = Holder(session_file)
    yield h
    h.release()
    h.conn.close()


def test_opening_a_locked_session_asks_retry_and_retries(qtbot, tmp_path, session_file, holder):
    w = _window(qtbot, tmp_path)
    holder.execute("BEGIN EXCLUSIVE")
    seen = _answer([(QMessageBox.Retry, None), (QMessageBox.Retry, holder.release)])  # still held, then let go
    assert w.sessions.open(session_file)
    assert len(seen) == 2
    assert "is open in another program (or another Circuit Studio window)" in seen[0] and "retry" in seen[0]
    assert w.sessions.path == session_file and w.controller.analysis is not None


def test_opening_a_locked_session_can_be_cancelled(qtbot, tmp_path, session_file, holder):
    w = _window(qtbot, tmp_path)
    holder.execute("BEGIN EXCLUSIVE")
    seen = _answer([(QMessageBox.Cancel, None)])
    assert not w.sessions.open(session_file)
    assert len(seen) == 1 and w.sessions.path is None and w.controller.analysis is None
    assert not hasattr(w, "last_error"), "a lock is not reported as damage"


def test_saving_over_a_locked_session_asks_retry(qtbot, tmp_path, session_file, holder):
    w = _window(qtbot, tmp_path)
    before = session_file.read_bytes()
    holder.execute("BEGIN IMMEDIATE")  # another program's open write transaction
    seen = _answer([(QMessageBox.Cancel, None)])
    assert not w.sessions.save_as(session_file)
    assert "has it open and is writing to it" in seen[0]
    assert session_file.read_bytes() == before
    assert sorted(p.name for p in session_file.parent.iterdir() if p.name.startswith(".")) == []
    seen = _answer([(QMessageBox.Retry, holder.release)])
    assert w.sessions.save_as(session_file)
    assert len(seen) == 1 and load_session(session_file).graphs == ()  # the window's (empty) session


def _full_disk(monkeypatch, method: str) -> None:
    """Path.<method> of our temporary files fails as a full disk does, after writing part of the data."""
    real = getattr(Path, method)

    def full(self, data, *args, **kwargs):
        if self.name.startswith(".export."):
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, method, full)


@pytest.mark.parametrize("kind, method, magic", [("json", "write_text", b"{"), ("svg", "write_bytes", b"<?xml"),
                                                 ("png", "write_bytes", b"\x89PNG")])
def test_exports_on_a_full_disk_say_so_and_leave_nothing(qtbot, tmp_path, monkeypatch, analysis, kind, method,
                                                         magic):
    w = _window(qtbot, tmp_path)
    w.controller.set_analysis(analysis)
    folder = tmp_path / "exports"
    folder.mkdir()
    export = getattr(w, f"export_{kind}")
    assert export(str(folder / f"export.{kind}"))
    assert (folder / f"export.{kind}").read_bytes().lstrip().startswith(magic)
    (folder / f"export.{kind}").unlink()
    _full_disk(monkeypatch, method)
    assert not export(str(folder / f"export.{kind}"))
    assert w.last_error.text() == f"Not enough disk space to write {folder / f'export.{kind}'}."
    assert "Free some space" in w.last_error.informativeText()
    assert list(folder.iterdir()) == []


def test_autosave_where_nothing_can_be_written_says_so_in_the_status_bar(qtbot, tmp_path, analysis):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    w = new_window(qtbot, tmp_path, autosave_dir=blocker / "autosave", show=False)  # inside a file: every write fails
    w.controller.set_analysis(analysis)  # unsaved changes: autosave has work to do
    w.sessions.autosave()  # must not raise: it runs from a timer, where nobody would catch it
    assert w.statusBar().currentMessage().startswith("Autosave failed: ")
    assert w.sessions._autosave_pending, "tried again at the next tick"
    assert [p.name for p in tmp_path.iterdir() if p.name != "w.ini"] == ["not-a-folder"]
