"""Incremental saves: a graph's arrays are written once, a later save writes only what changed (in place),
Save As copies instead of encoding again; per-graph resources, labels keyed by transcoder set, and the
leftovers of killed processes. (Kills during an in-place save: test_session_crash.py.)"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from circuit_studio.core.session.analysis import Analysis
from circuit_studio.core.session.records import GraphRecord, Session, TranscoderRef, transcoder_identity
from circuit_studio.core.session.store import (load_session, read_session_info, remove_stale_files, save_session,
                                               save_session_as)
from circuit_studio.core.session.store import write as store_write
from circuit_studio.core.session.schema import SCHEMA_VERSION
from test_session_store import (INDEX, MODEL, OTHER_MODEL, OTHER_TRANSCODERS, T0, TRANSCODERS, _temporaries,
                                example_session, synthetic_graph)


@pytest.fixture
def encoded(monkeypatch) -> list[int]:
    """The ids of the graphs whose arrays the store encodes and writes, in order."""
    calls: list[int] = []
    real = store_write.array_rows

    def spy(rec, *args):
        calls.append(rec.id)
        return real(rec, *args)

    monkeypatch.setattr(store_write, "array_rows", spy)
    return calls


def _changed_pages(before: bytes, after: bytes) -> int:
    page = int.from_bytes(before[16:18], "big")
    page = 65536 if page == 1 else page
    n = max(len(before), len(after)) // page
    return sum(before[i * page:(i + 1) * page] != after[i * page:(i + 1) * page] for i in range(n))


def _array_graph_ids(path: Path) -> set[int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        ids = {gid for (gid,) in db.execute("SELECT DISTINCT graph_id FROM array_chunks")}
    db.close()
    return ids


# ---------------------------------------------------------------------------------------------
# what a save writes
# ---------------------------------------------------------------------------------------------

def test_a_label_edit_writes_a_few_pages_and_no_graph(tmp_path, encoded):
    s = example_session(n_features=400, interventions=False)
    path = tmp_path / "s.cs-session"
    save_session(s, path)
    assert encoded == [2, 5]
    encoded.clear()
    before = path.read_bytes()
    edited = replace(s, labels={**s.labels, (0, 17): "renamed", (2, 9): "new"})
    save_session(edited, path)
    after = path.read_bytes()
    assert encoded == [], "no graph array is encoded or written again"
    assert len(after) == len(before) and len(before) > 40 * 4096
    assert _changed_pages(before, after) <= 4, "the header, the labels and meta pages"
    assert _temporaries(tmp_path) == []
    assert load_session(path) == edited
    # analysis state, window state and notes: still no graph rewritten
    state = replace(edited, graphs=(replace(edited.graphs[0], pinned=(3, 1), node_threshold=0.5), edited.graphs[1]),
                    window_state=b"new layout", notes="more notes", current_graph=2)
    save_session(state, path)
    assert encoded == [] and load_session(path) == state


def test_a_save_that_changes_nothing_writes_nothing(tmp_path):
    s = example_session(interventions=False)
    path = tmp_path / "s.cs-session"
    save_session(s, path)
    before, stat = path.read_bytes(), path.stat()
    save_session(s, path)
    save_session(load_session(path), path)  # an opened file: its graphs are known too
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stat.st_mtime_ns


def test_new_graphs_are_written_once_and_removed_graphs_deleted(tmp_path, encoded):
    s = example_session(interventions=False)
    path = tmp_path / "s.cs-session"
    save_session(s, path)
    encoded.clear()
    grown = s.with_graph(GraphRecord(9, synthetic_graph(80, seed=9), created=T0, model=MODEL, transcoders=TRANSCODERS))
    save_session(grown, path)
    assert encoded == [9] and _array_graph_ids(path) == {2, 5, 9}
    shrunk = grown.without_graph(2)
    save_session(shrunk, path)
    assert encoded == [9] and _array_graph_ids(path) == {5, 9}
    assert load_session(path) == shrunk
    # the same graph under another object (e.g. re-read from its .npz) is written again: identity is what counts
    copied = shrunk.with_graph(replace(shrunk.graph(5), graph=replace(shrunk.graph(5).graph)), make_current=False)
    save_session(copied, path)
    assert encoded == [9, 5]
    reopened = load_session(path)
    save_session(replace(copied, notes="x"), path)  # the objects saved and those read back are both known
    save_session(replace(reopened, notes="y"), path)
    assert encoded == [9, 5] and load_session(path) == replace(shrunk, notes="y")


def test_save_as_copies_the_file_then_saves_in_place(tmp_path, encoded):
    s = example_session(interventions=False)
    a, b, c = (tmp_path / f"{n}.cs-session" for n in "abc")
    save_session(s, a)
    opened = load_session(a)
    encoded.clear()
    save_session_as(replace(opened, notes="as b"), b)
    assert encoded == [], "Save As copies the arrays of the file the session came from"
    assert load_session(b) == replace(opened, notes="as b")
    before = b.read_bytes()
    save_session(replace(opened, notes="as b", labels={(1, 1): "in b"}), b)
    assert encoded == [] and _changed_pages(before, b.read_bytes()) <= 4
    grown = opened.with_graph(GraphRecord(8, synthetic_graph(40, seed=8), created=T0))
    save_session_as(grown, c)
    assert encoded == [8], "only the graph no file holds yet is encoded"
    assert load_session(c) == grown and load_session(a) == s
    for p in (a, b, c):  # files that are gone are no source
        p.unlink()
    encoded.clear()
    save_session_as(grown, tmp_path / "d.cs-session")
    assert encoded == [2, 5, 8] and load_session(tmp_path / "d.cs-session") == grown


def test_a_file_changed_by_someone_else_is_written_whole(tmp_path, encoded):
    s, other = example_session(1, interventions=False), example_session(2, interventions=False)
    path, elsewhere = tmp_path / "s.cs-session", tmp_path / "other.cs-session"
    save_session(s, path)
    save_session(other, elsewhere)
    shutil.copy(elsewhere, path)  # e.g. another window saved it, or the user restored a copy
    encoded.clear()
    edited = replace(s, notes="mine")
    save_session(edited, path)
    assert encoded == [2, 5] and load_session(path) == edited


def test_a_mostly_free_file_is_compacted(tmp_path, monkeypatch):
    monkeypatch.setattr(store_write, "_COMPACT_FREE_BYTES", 0)
    s = example_session(n_features=600, interventions=False)
    path = tmp_path / "s.cs-session"
    save_session(s, path)
    full = path.stat().st_size
    small = s.without_graph(2)
    save_session(small, path)  # in place: the big graph's pages become free space
    assert path.stat().st_size == full
    save_session(replace(small, notes="next"), path)  # finds the file mostly free: writes it whole
    assert path.stat().st_size < full / 2
    assert load_session(path) == replace(small, notes="next") and _temporaries(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# per-graph resources and labels
# ---------------------------------------------------------------------------------------------

def test_per_graph_bindings_round_trip_and_each_resource_is_stored_once(tmp_path):
    moved = TranscoderRef("/elsewhere/tc", TRANSCODERS.content_hash, TRANSCODERS.summary)
    graphs = [GraphRecord(i, synthetic_graph(30, seed=i), created=T0, model=MODEL, transcoders=TRANSCODERS,
                          feature_index=INDEX) for i in range(1, 11)]
    graphs += [GraphRecord(11, synthetic_graph(30, seed=11), created=T0, model=OTHER_MODEL,
                           transcoders=OTHER_TRANSCODERS),
               GraphRecord(12, synthetic_graph(30, seed=12), created=T0, transcoders=moved),
               GraphRecord(13, synthetic_graph(30, seed=13), created=T0)]
    s = Session(model=MODEL, transcoders=TRANSCODERS, feature_index=INDEX, graphs=tuple(graphs), created=T0)
    path = tmp_path / "s.cs-session"
    save_session(s, path)
    back = load_session(path)
    assert back == s
    assert [(g.model, g.transcoders, g.feature_index) for g in back.graphs] == \
        [(g.model, g.transcoders, g.feature_index) for g in graphs]
    assert type(back.graph(1).feature_index) is type(INDEX) and back.graph(13).model is None
    with sqlite3.connect(path) as db:
        kinds = sorted(k for (k,) in db.execute("SELECT kind FROM resources"))
    db.close()
    assert kinds == ["feature_index", "model", "model", "transcoders", "transcoders", "transcoders"], \
        "ten graphs of one set store it once"
    # rebinding one graph touches its row and the resources, not the others
    rebound = s.with_graph(replace(s.graph(13), model=OTHER_MODEL), make_current=False)
    save_session(rebound, path)
    assert load_session(path).graph(13).model == OTHER_MODEL


def test_labels_are_keyed_by_transcoder_identity(tmp_path):
    s = example_session(interventions=False)
    own, other = transcoder_identity(TRANSCODERS), transcoder_identity(OTHER_TRANSCODERS)
    assert s.labels[(own, 0, 17)] == "seventeen", "(layer, feature) keys belong to the session's transcoders"
    assert s.graph_labels(2)[(0, 17)] == "seventeen" and s.graph_labels(5) == {(0, 17): "b's 17"}
    path = tmp_path / "s.cs-session"
    save_session(s, path)
    back = load_session(path)
    assert back.labels == s.labels and list(back.labels) == list(s.labels)
    # an analysis of graph 5 shows and edits its own set's labels only
    analysis = back.analysis(5)
    assert analysis.labels == {(0, 17): "b's 17"}
    analysis.set_label(analysis.graph.n_features - 1, "b's last")
    edited = Session.from_analysis(analysis, back)
    assert edited.labels_in(own) == back.labels_in(own)
    assert len(edited.labels_in(other)) == 2 and edited.graph(5).transcoders == OTHER_TRANSCODERS
    save_session(edited, path)
    assert load_session(path) == edited
    # a moved copy of a transcoder set (same content) shares its labels; a new trace is bound to what is loaded
    moved = TranscoderRef("/moved/tc", TRANSCODERS.content_hash, {})
    graph = synthetic_graph(30, seed=4)
    traced = Session.from_analysis(Analysis(graph, labels=edited.labels_in(own)), edited, transcoders=moved)
    new = traced.graph(traced.current_graph)
    assert (new.model, new.transcoders, new.feature_index) == (MODEL, moved, INDEX)
    assert traced.graph_labels(new.id) == traced.graph_labels(2)
    save_session(traced, path)
    assert load_session(path) == traced


# ---------------------------------------------------------------------------------------------
# leftovers of killed processes
# ---------------------------------------------------------------------------------------------

def _dead_pid() -> int:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(out.stdout)


def test_remove_stale_files_cleans_what_dead_processes_left(tmp_path):
    dead = _dead_pid()
    folder = tmp_path / "autosave"
    folder.mkdir()
    stale = [folder / f".autosave-{dead}.cs-session.{dead}-abcd.tmp",
             folder / f".autosave-{dead}.json.{dead}-beef.tmp",  # the marker's
             folder / "gone.cs-session-journal"]  # its session file is gone
    kept = [folder / ".autosave-1.cs-session.1-abcd.tmp",  # pid 1 is alive
            folder / f".mine.cs-session.{os.getpid()}-abcd.tmp",
            folder / f"autosave-{dead}.cs-session", folder / f"autosave-{dead}.json",  # recoverable
            folder / "open.cs-session", folder / "open.cs-session-journal", folder / "notes.txt"]
    for p in stale + kept:
        p.write_bytes(b"junk")
    (folder / f".autosave-{dead}.cs-session.{dead}-cafe.tmp").mkdir()  # a temporary folder
    remove_stale_files(folder)
    assert sorted(folder.iterdir()) == sorted(kept)
    remove_stale_files(tmp_path / "missing")  # never raises


def test_a_whole_save_replaces_an_orphan_journal(tmp_path):
    """A journal whose file was deleted must not be applied to a new file of that name."""
    path = tmp_path / "s.cs-session"
    (tmp_path / "s.cs-session-journal").write_bytes(b"not ours any more")
    s = example_session(interventions=False)
    save_session(s, path)
    assert _temporaries(tmp_path) == [] and load_session(path) == s
    assert read_session_info(path).schema_version == SCHEMA_VERSION
