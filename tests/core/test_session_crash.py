"""Crash safety: a process killed (SIGKILL) at random moments while it saves leaves a file that opens
with either the old or the new state, never a broken one.

This file is also the helper process: `python test_session_crash.py SERVER PATH` builds the two
states once, saves state A, then for every "go" on stdin forks a worker that saves A and B in turn
(with a .bak) until the test kills it. Forking from one warm process keeps each round to a fraction of
a second, so the test can kill many saves without paying Python's start-up and imports each time.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

N_FEATURES = 1500  # a save takes tens of milliseconds: a wide window to be killed in
KILLS = 24


def crash_states():
    """The two sessions the worker alternates between (no interventions: the helper never imports torch)."""
    from test_session_store import example_session

    return (example_session(1, N_FEATURES, interventions=False),
            example_session(2, N_FEATURES, interventions=False))


def _server(path: Path) -> None:
    from circuit_studio.core.session_store import save_session

    states = crash_states()
    t0 = time.perf_counter()
    save_session(states[0], path, backup=True)
    print(f"ready {time.perf_counter() - t0:.4f}", flush=True)
    for round_, line in enumerate(sys.stdin):
        if line.strip() != "go":
            break
        pid = os.fork()
        if pid == 0:  # the worker: save until killed
            try:
                i = round_
                while True:
                    save_session(states[i % 2], path, backup=True)
                    i += 1
            finally:
                os._exit(1)
        print(f"worker {pid}", flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)


@pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"), reason="needs fork and SIGKILL")
def test_killed_saves_leave_the_old_or_the_new_file(tmp_path):
    from circuit_studio.core.session_store import load_session

    path = tmp_path / "crash.cs-session"
    desktop = Path(__file__).resolve().parents[2] / "desktop"
    env = dict(os.environ, PYTHONPATH=str(desktop))
    proc = subprocess.Popen([sys.executable, __file__, "SERVER", str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready"), f"helper failed to start: {line!r}"
        save_seconds = float(line.split()[1])
        states = crash_states()
        rng = random.Random(20250607)
        seen, killed_mid_save = set(), 0
        for _ in range(KILLS):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            pid = int(proc.stdout.readline().split()[1])
            time.sleep(rng.uniform(0.0, 3.0 * save_seconds))
            os.kill(pid, signal.SIGKILL)
            assert proc.stdout.readline().strip() == "reaped"
            if list(tmp_path.glob(".*.tmp")):
                killed_mid_save += 1  # it died between creating its temporary file and renaming it
            for candidate in (path, tmp_path / "crash.cs-session.bak"):
                if candidate == path or candidate.exists():
                    back = load_session(candidate)  # must open...
                    which = [name for name, s in zip("AB", states) if back == s]
                    assert which, f"{candidate.name} holds neither state"  # ...and be one of the two exactly
                    if candidate == path:
                        seen.add(which[0])
        assert killed_mid_save >= 3, f"only {killed_mid_save} of {KILLS} kills landed inside a save"
        assert seen == {"A", "B"}, f"only saw {seen}: the kills did not land on both sides of a rename"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    # the next save clears the temporary files the killed workers left behind
    from circuit_studio.core.session_store import save_session

    save_session(states[0], path)
    assert list(tmp_path.glob(".*.tmp")) == []


if __name__ == "__main__" and sys.argv[1:2] == ["SERVER"]:
    _server(Path(sys.argv[2]))
