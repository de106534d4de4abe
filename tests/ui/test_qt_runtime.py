"""The Qt binding the project installs survives what the window does all day: many signal emits.

PySide6 6.12.0's `SignalInstance.emit()` drops a reference to `True`, which aborts the process
after a few thousand emits (pyproject.toml excludes that release). The check runs in a
subprocess, because the failure is a fatal abort, not an exception.
"""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from PySide6.QtCore import QCoreApplication, QObject, Signal
app = QCoreApplication([])
class A(QObject):
    s = Signal(int)
a = A()
before = sys.getrefcount(True)
for i in range(20000):
    a.s.emit(i)
print(sys.getrefcount(True) - before)
"""


def test_signal_emits_keep_reference_counts_intact():
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120,
                         env={"QT_QPA_PLATFORM": "offscreen", "PATH": ""})
    assert res.returncode == 0, f"the Qt binding crashed: {res.stderr[-500:]}"
    assert abs(int(res.stdout.strip())) < 100
