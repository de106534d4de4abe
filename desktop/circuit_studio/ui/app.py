"""Starting the desktop application."""

from __future__ import annotations

import os
import sys


def run_app(model: str | None = None, transcoders: str | None = None, argv: list[str] | None = None) -> int:
    """Open the window on the given folders, or on the bundled demo."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow

    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setApplicationName("Circuit Studio")
    app.setOrganizationName("Circuit Studio")
    window = MainWindow()
    window.show()
    if window.sessions.offer_recovery():
        return app.exec()
    if model:
        window.load(model, transcoders or "")
    else:
        window.open_demo()
    return app.exec()
