"""Crash safety: a process killed (SIGKILL) at random moments while it saves leaves a file that opens
with either the old or the new state, never a broken one; for whole-file saves (a temporary file
renamed onto the target) and for in-place saves (one SQLite transaction; the journal a kill leaves is
applied by the next open).

This file is also the helper process: `python test_session_crash.py SERVER MODE PATH` builds the two
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
from dataclasses import replace
from pathlib import Path

import pytest

N_FEATURES = 1500  # a save takes tens of milliseconds: a wide window to be killed in
KILLS = 24
DESKTOP = Path(__file__).resolve().parents[2] / "desktop"


def crash_states(mode: str):
    """The two sessions the worker alternates between (no interventions: the helper never imports torch).

    "whole": two unrelated sessions, each save writes every graph. "in_place": B is A plus a graph,
    labels, pins and notes, sharing A's graph objects, so that each save writes only the difference."""
    from test_session_store import example_session, synthetic_graph

    from circuit_studio.core.session.records import GraphRecord

    a = example_session(1, N_FEATURES, interventions=False)
    if mode == "whole":
        return a, example_session(2, N_FEATURES, interventions=False)
    grown = a.with_graph(GraphRecord(7, synthetic_graph(N_FEATURES, seed=7), created=a.created), make_current=False)
    b = replace(grown, labels={**a.labels, (2, 2): "only in B"}, notes="B",
                graphs=(replace(grown.graphs[0], pinned=(3, 2)), *grown.graphs[1:]))
    return a, b


def _server(mode: str, path: Path) -> None:
    from circuit_studio.core.session.store import save_session, save_session_as

    save = save_session_as if mode == "whole" else save_session
    states = crash_states(mode)
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
                    save(states[i % 2], path, backup=True)
                    i += 1
            finally:
                os._exit(1)
        print(f"worker {pid}", flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)


@pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"), reason="needs fork and SIGKILL")
@pytest.mark.parametrize("mode", ["whole", "in_place"])
def test_killed_saves_leave_the_old_or_the_new_file(tmp_path, mode):
    from circuit_studio.core.session.store import load_session, save_session

    path = tmp_path / "crash.cs-session"
    journal = tmp_path / "crash.cs-session-journal"
    env = dict(os.environ, PYTHONPATH=str(DESKTOP))
    proc = subprocess.Popen([sys.executable, __file__, "SERVER", mode, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready"), f"helper failed to start: {line!r}"
        save_seconds = float(line.split()[1])
        states = crash_states(mode)
        rng = random.Random(20250607)
        seen, killed_mid_save = set(), 0
        for _ in range(KILLS):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            pid = int(proc.stdout.readline().split()[1])
            time.sleep(rng.uniform(0.0, 3.0 * save_seconds))
            os.kill(pid, signal.SIGKILL)
            assert proc.stdout.readline().strip() == "reaped"
            # it died inside a save: after creating its temporary file and before renaming it (whole), or
            # between its transaction's first write and its commit (in place)
            killed_mid_save += bool(list(tmp_path.glob(".*.tmp")) if mode == "whole" else journal.exists())
            for candidate in (path, tmp_path / "crash.cs-session.bak"):
                if candidate == path or candidate.exists():
                    back = load_session(candidate)  # must open...
                    which = [name for name, s in zip("AB", states) if back == s]
                    assert which, f"{candidate.name} holds neither state"  # ...and be one of the two exactly
                    if candidate == path:
                        seen.add(which[0])
            assert not journal.exists(), "opening settled the journal of the killed save"
        assert killed_mid_save >= 3, f"only {killed_mid_save} of {KILLS} kills landed inside a save"
        assert seen == {"A", "B"}, f"only saw {seen}: the kills did not land on both sides of a save"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    # the next save clears the temporary files the killed workers left behind
    save_session(states[0], path)
    assert list(tmp_path.glob(".*.tmp")) == [] and not journal.exists()


_DIE_BEFORE_COMMIT = """
import os, sys
sys.path.insert(0, sys.argv[2])
from test_session_crash import crash_states
from circuit_studio.core.session.store import save_session
from circuit_studio.core.session.store import write
a, b = crash_states("in_place")
save_session(a, sys.argv[1])
print("saved", flush=True)
write._stamp = lambda *args: os._exit(3)  # every row of B is written, the commit never comes
save_session(b, sys.argv[1])
"""


def test_an_in_place_save_killed_before_its_commit_is_undone_on_open(tmp_path):
    from circuit_studio.core.session.store import load_session, save_session

    path = tmp_path / "s.cs-session"
    env = dict(os.environ, PYTHONPATH=str(DESKTOP))
    out = subprocess.run([sys.executable, "-c", _DIE_BEFORE_COMMIT, str(path), str(Path(__file__).parent)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 3 and out.stdout.startswith("saved"), out.stderr
    assert (tmp_path / "s.cs-session-journal").exists(), "SQLite's undo log of the unfinished transaction"
    a, b = crash_states("in_place")
    assert load_session(path) == a
    assert not (tmp_path / "s.cs-session-journal").exists()
    save_session(b, path)
    assert load_session(path) == b


if __name__ == "__main__" and sys.argv[1:2] == ["SERVER"]:
    _server(sys.argv[2], Path(sys.argv[3]))
