"""core.processes.pid_alive: a live process is alive, a finished one is gone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from circuit_studio.core.processes import pid_alive


@pytest.mark.skipif(os.name != "posix", reason="elsewhere every process counts as alive")
def test_pid_alive():
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    assert not pid_alive(child.pid)
