"""The main window as the whole-window tests open it: private settings and autosave folder under
tmp_path, unsaved changes discarded without asking, shown; and the two waits they share (the demo in,
a prompt traced)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

from circuit_studio.ui.main_window import MainWindow


def new_window(qtbot, tmp_path: Path, name: str = "w", *, size: tuple[int, int] | None = None,
               settings: QSettings | None = None, autosave_dir: Path | None = None, show: bool = True) -> MainWindow:
    w = MainWindow(settings=settings or QSettings(str(tmp_path / f"{name}.ini"), QSettings.IniFormat),
                   autosave_dir=autosave_dir or tmp_path / f"autosave-{name}")
    w.sessions.answer_unsaved = "discard"
    if size is not None:
        w.resize(*size)
    qtbot.addWidget(w)
    if show:
        w.show()
    return w


def open_demo(qtbot, w: MainWindow, *args, timeout: int = 60_000) -> None:
    """File ▸ Open demo (`args`: its transcoder kind), then wait until its feature index is in and the window idle."""
    c = w.controller
    w.open_demo(*args)
    qtbot.waitUntil(lambda: c.feature_index is not None and not c.jobs.busy, timeout=timeout)


def trace(qtbot, w: MainWindow, prompt: str, timeout: int = 60_000):
    """Type `prompt`, press Trace, wait for its graph; -> its Analysis."""
    c = w.controller
    w.prompt_bar.prompt.setEditText(prompt)
    w.prompt_bar.trace()
    qtbot.waitUntil(lambda: c.analysis is not None and c.analysis.graph.prompt == prompt and not c.jobs.busy,
                    timeout=timeout)
    return c.analysis
