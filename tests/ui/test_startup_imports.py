"""The window shows before torch is imported (importing it takes ~2 s on 2 cores): neither building and
showing the main window nor pressing Trace while the model loads imports it on the window's thread."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent('''
    import sys
    from pathlib import Path
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication
    app = QApplication([])
    from circuit_studio.ui.main_window import MainWindow
    w = MainWindow(settings=QSettings(sys.argv[1] + "/w.ini", QSettings.IniFormat), autosave_dir=Path(sys.argv[1]) / "auto")
    w.show()
    app.processEvents()
    assert "torch" not in sys.modules, "showing the window imported torch"
    assert "Device:" in w.device_label.text()
    c = w.controller
    c.resources_loading = lambda: True  # as while the demo loads: the trace waits for it
    w.prompt_bar.prompt.setEditText("a prompt")
    w.prompt_bar.trace()
    app.processEvents()
    assert c._pending_trace is not None and "torch" not in sys.modules, "pressing Trace imported torch"
    print("ok", flush=True)
    import os
    os._exit(0)  # no teardown: the compute thread is still up
''')


def test_the_window_shows_and_takes_a_prompt_without_importing_torch(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
