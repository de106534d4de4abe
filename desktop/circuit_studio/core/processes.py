"""Whether another process still runs: what tells a dead writer's leftovers (stale temporary files, an
autosave after a crash) from a live one's."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True unless process `pid` is known to be gone. Any doubt (another user's process, an error, a
    system where it cannot be checked) counts as alive: what a live process owns is never taken."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) is no probe on Windows: signal 0 is CTRL_C_EVENT there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True
