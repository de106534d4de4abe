"""Session files: exact round trips, incremental saves, per-graph resources and labels per transcoder
set, the v1 and v2 migrations, and every kind of bad input.

Each bad-input test checks three things: a SessionError with a message saying what is wrong, the
previous file byte for byte unchanged, and no temporary file left in the folder; most run for both
ways of saving: in place (`save_session` to a file this process saved) and whole (`save_session_as`).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from circuit_studio.core.session.analysis import Analysis, Supernode
from circuit_studio.core.graph.attribution_graph import AttributionGraph, AttributionParams
from circuit_studio.core.session.records import (CanvasView, FeatureIndexRef, FolderStatus, GraphRecord, InterventionRecord,
                                         ModelRef, Session, TokenProb, TranscoderRef, arrays_identical, content_hash,
                                         graphs_equal, session_differences, transcoder_identity)
from circuit_studio.core.session.schema import APPLICATION_ID, SCHEMA_VERSION
from circuit_studio.core.session.store import (SessionError, load_session, read_session_info, save_session,
                                               save_session_as)
from circuit_studio.core.session.store import write as store_write

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sessions"
T0 = datetime(2025, 6, 7, 8, 9, 10, 123456, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------
# example sessions (also used by test_session_crash.py, in a process without torch)
# ---------------------------------------------------------------------------------------------

def synthetic_graph(n_features: int, *, n_layers: int = 4, n_pos: int = 8, n_logits: int = 5, seed: int = 0,
                    density: float = 0.5) -> AttributionGraph:
    """A random graph with the node order and sparsity pattern of a real one, plus -0.0 and a NaN payload."""
    rng = np.random.default_rng(seed)
    slots = [(layer, pos) for layer in range(n_layers) for pos in range(1, n_pos)]
    per = np.full(len(slots), n_features // len(slots))
    per[: n_features % len(slots)] += 1
    active = np.array([(layer, pos, f) for (layer, pos), k in zip(slots, per)
                       for f in np.sort(rng.choice(4096, size=k, replace=False))], dtype=np.int64)
    n = n_features + n_layers * n_pos + n_pos + n_logits
    layers = np.concatenate([active[:, 0], np.repeat(np.arange(n_layers), n_pos), np.full(n_pos, -1),
                             np.full(n_logits, n_layers)])
    positions = np.concatenate([active[:, 1], np.tile(np.arange(n_pos), n_layers), np.arange(n_pos),
                                np.full(n_logits, n_pos - 1)])
    allowed = (layers[None, :] < layers[:, None]) & (positions[None, :] <= positions[:, None])
    allowed[n_features:n - n_logits] = False
    allowed[:, n - n_logits:] = False
    adj = np.where(allowed & (rng.random((n, n)) < density), rng.standard_normal((n, n)), 0).astype(np.float32)
    rows, cols = np.nonzero(allowed)
    adj[rows[0], cols[0]] = -0.0
    adj.view(np.uint32)[rows[1], cols[1]] = 0x7FC0_1234  # a NaN with a payload
    return AttributionGraph(
        prompt=f"prompt {seed} ✓", input_tokens=np.arange(n_pos, dtype=np.int64),
        token_strings=tuple(f"tok{i}" for i in range(n_pos)), active_features=active,
        activation_values=rng.random(n_features, dtype=np.float32),
        selected_features=np.arange(n_features, dtype=np.int64),
        logit_token_ids=np.arange(n_logits, dtype=np.int64) * 3,
        logit_probabilities=np.linspace(0.5, 0.1, n_logits, dtype=np.float32),
        logit_tokens=tuple(f" l{i}" for i in range(n_logits)), adjacency_matrix=adj, n_layers=n_layers,
        vocab_size=100, params=AttributionParams(max_feature_nodes=n_features),
        model_name="synthetic", transcoder_name="synthetic-plt",
        provenance={"versions": {"torch": "2.13.0"}, "device": "cpu", "dtype": "float32", "created": "now"})


MODEL = ModelRef("/nowhere/model", "fh1:" + "0" * 64, {"name": "m", "n_layers": 4, "max_positions": None})
TRANSCODERS = TranscoderRef("/nowhere/tc", "fh1:" + "1" * 64, {"kind": "plt", "source": "/nowhere/tc"})
INDEX = FeatureIndexRef("/nowhere/features.sqlite", "fh1:" + "2" * 64, {"n_features": 4096})
OTHER_MODEL = ModelRef("/nowhere/model-b", "fh1:" + "3" * 64, {"name": "b"})
OTHER_TRANSCODERS = TranscoderRef("/nowhere/tc-b", "fh1:" + "4" * 64, {"kind": "clt"})


def example_session(seed: int = 0, n_features: int = 60, *, interventions: bool = True) -> Session:
    """Two graphs with every kind of state, traced with different models and transcoder sets, or
    (interventions=False) no torch import at all."""
    g1 = synthetic_graph(n_features, seed=seed)
    g2 = synthetic_graph(max(n_features // 3, 30), n_layers=3, n_pos=5, seed=seed + 1)
    ivs = ()
    if interventions:
        from circuit_studio.core.interventions.intervene import Intervention

        ivs = (InterventionRecord(
            id=3, interventions=(Intervention(2, 5, 17, 0.0), Intervention(1, slice(3, None), 8, 4.5),
                                 Intervention(0, slice(1, 6, 1), 2, -2.0)),
            options={"freeze_attention": False, "constrained_layers": None, "position_mode": "open-ended"},
            top_before=(TokenProb(" a", 1, 0.75), TokenProb(" b", 2, 0.125)),
            top_after=(TokenProb(" b", 2, 0.5),), extra={"generated_default": "x y", "n": [1, 2.5]}, created=T0),
            InterventionRecord(id=7, interventions=(), created=T0))
    r1 = GraphRecord(id=2, graph=g1, created=T0, node_threshold=0.6, edge_threshold=0.9, selected=7,
                     pinned=(9, 1, 4, 30), supernodes=(Supernode(5, "group ✓", (1, 4)), Supernode(1, "b", (30,))),
                     view=CanvasView(-3.25, 12.5, 0.1, 7.0), interventions=ivs, title="first", notes="graph notes",
                     model=MODEL, transcoders=TRANSCODERS, feature_index=INDEX)
    r2 = GraphRecord(id=5, graph=g2, created=T0, selected=None, model=OTHER_MODEL, transcoders=OTHER_TRANSCODERS)
    other = OTHER_TRANSCODERS.content_hash
    return Session(
        model=MODEL, transcoders=TRANSCODERS, feature_index=INDEX, graphs=(r1, r2),
        labels={(0, 17): "seventeen", (3, 4000): "ünïcode", (1, seed): f"seed {seed}", (other, 0, 17): "b's 17"},
        notes=f"session notes {seed}\n…", current_graph=5, window_state=bytes(range(256)) * 3 + bytes([seed % 256]),
        settings={"theme": "dark", "panes": {"left": 0.3}, "recent": ["a", "b"]}, created=T0)


def _temporaries(folder: Path) -> list[Path]:
    """Temporaries of whole-file saves and SQLite journals of in-place ones."""
    return sorted(folder.glob(".*.tmp")) + sorted(folder.glob("*-journal"))


SAVERS = pytest.mark.parametrize("save", [save_session, save_session_as], ids=["in_place", "whole"])


@pytest.fixture
def saved(tmp_path):
    """(session, path, bytes) of a saved example session."""
    s = example_session()
    path = tmp_path / "s.cs-session"
    save_session(s, path)
    return s, path, path.read_bytes()


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------

def test_round_trip_keeps_every_field(saved):
    s, path, _ = saved
    back = load_session(path)
    assert session_differences(back, s) == []
    assert back == s
    g, h = s.graphs[0].graph, back.graphs[0].graph
    for name in ("adjacency_matrix", "active_features", "activation_values", "input_tokens", "selected_features",
                 "logit_token_ids", "logit_probabilities"):
        a, b = getattr(g, name), getattr(h, name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
        assert b.flags.writeable and b.flags.c_contiguous
    assert np.signbit(h.adjacency_matrix[g.adjacency_matrix.view(np.uint32) == 0x8000_0000]).all()
    assert (h.adjacency_matrix.view(np.uint32) == 0x7FC0_1234).sum() == 1
    r = back.graphs[0]
    assert r.pinned == (9, 1, 4, 30) and r.selected == 7 and r.view == CanvasView(-3.25, 12.5, 0.1, 7.0)
    assert [sn.name for sn in r.supernodes] == ["group ✓", "b"]
    iv = r.interventions[0].interventions
    assert iv[1].position == slice(3, None) and iv[2].position == slice(1, 6, 1) and iv[0].position == 5
    assert r.interventions[0].top_after == (TokenProb(" b", 2, 0.5),)
    assert back.window_state == s.window_state and back.labels == s.labels and back.notes == s.notes
    assert back.graphs[1].selected is None and back.graphs[1].view is None and back.current_graph == 5
    assert back.created == T0 and back.graphs[0].created == T0
    assert back.model == s.model and back.transcoders == s.transcoders and back.settings == s.settings
    assert list(back.labels) == list(s.labels), "label order is kept"


def test_empty_session_round_trips(tmp_path):
    s = Session(created=T0)
    save_session(s, tmp_path / "e.cs-session")
    back = load_session(tmp_path / "e.cs-session")
    assert back == s and back.graphs == () and back.model is None and back.window_state is None


def test_saving_again_replaces_and_keeps_a_backup_when_asked(tmp_path):
    a, b, c = (example_session(i, interventions=False) for i in (1, 2, 3))
    path, bak = tmp_path / "s.cs-session", tmp_path / "s.cs-session.bak"
    save_session(a, path)
    save_session(b, path, backup=True)  # in place: the first such save copies the file first
    assert load_session(path) == b
    assert load_session(bak) == a
    save_session(c, path, backup=True)
    assert load_session(path) == c and load_session(bak) == a, "the .bak is the file before this process wrote it"
    save_session_as(a, path, backup=True)  # a whole write keeps the file it replaces
    assert load_session(path) == a and load_session(bak) == c
    assert _temporaries(tmp_path) == []


def test_equality_helpers_see_a_single_bit(saved):
    s, _, _ = saved
    g = s.graphs[0].graph
    adj = g.adjacency_matrix.copy()
    adj.view(np.uint32)[0, 0] ^= 1
    other = replace(s, graphs=(replace(s.graphs[0], graph=replace(g, adjacency_matrix=adj)), s.graphs[1]))
    assert not graphs_equal(g, other.graphs[0].graph)
    (difference,) = session_differences(s, other)
    assert difference.startswith("graphs[0].graph.adjacency")  # the field holding the matrix
    assert session_differences(s, replace(s, notes="x")) == ["notes"]
    assert not arrays_identical(np.zeros(3, np.float32), np.zeros(3, np.float64))
    assert not arrays_identical(np.zeros(1, np.float32), -np.zeros(1, np.float32))


def test_a_real_graph_round_trips(tmp_path):
    from parity_cases import case_dirs, reference_graph

    dirs = case_dirs()
    if not dirs:
        pytest.skip("no parity fixtures")
    graph = reference_graph(dirs[0])
    s = Session(graphs=(GraphRecord(1, graph),), current_graph=1)
    save_session(s, tmp_path / "r.cs-session")
    assert load_session(tmp_path / "r.cs-session") == s


def test_analysis_state_goes_into_the_session_and_comes_back(tmp_path):
    graph = synthetic_graph(80, seed=3)
    analysis = Analysis(graph, labels={(0, 1): "kept"})
    features = [n for n in range(graph.n_features)][:4]
    for n in features:
        analysis.toggle_pin(n)
    analysis.group(features[:2], "pair")
    analysis.set_thresholds(0.7, 0.9)
    analysis.select(features[2])
    analysis.set_label(features[3], "my label")
    session = Session.from_analysis(analysis, Session(created=T0), view=CanvasView(0, 1, 2, 3),
                                    notes="n", window_state=b"\x00blob")
    assert session.current_graph == 1 and session.graph(1).pinned == tuple(features)
    # the same analysis again updates its record instead of adding one
    analysis.toggle_pin(features[3])
    session = Session.from_analysis(analysis, session)
    assert len(session.graphs) == 1 and session.graph(1).view == CanvasView(0, 1, 2, 3)
    session = session.with_intervention(1, InterventionRecord(session.next_intervention_id(1), (),
                                                              {"freeze_attention": True}, created=T0))
    assert session.next_intervention_id(1) == 2
    save_session(session, tmp_path / "a.cs-session")
    back = load_session(tmp_path / "a.cs-session")
    assert back == session
    rebuilt = back.analysis()
    assert rebuilt.pinned == analysis.pinned and rebuilt.supernodes == analysis.supernodes
    assert rebuilt.selected == analysis.selected and rebuilt.labels == analysis.labels
    assert (rebuilt.node_threshold, rebuilt.edge_threshold) == (0.7, 0.9)
    assert rebuilt.label_of(features[3]) == "my label"
    assert back.window_state == b"\x00blob" and back.notes == "n"
    rebuilt.toggle_pin(features[0])  # the rebuilt analysis shares the stored graph, so its record is updated
    again = Session.from_analysis(rebuilt, back)
    assert len(again.graphs) == 1 and again.graph(1).pinned == tuple(features[1:3])
    assert again.graph(1).interventions == back.graph(1).interventions


def test_opening_never_needs_the_model(tmp_path, saved):
    s, path, _ = saved
    assert not Path(s.model.path).exists() and not Path(s.transcoders.path).exists()
    back = load_session(path)
    assert back.model.check() is FolderStatus.MISSING
    analysis = back.analysis(2)
    assert analysis.pinned == [9, 1, 4, 30] and analysis.pruned.node_mask.any()


def test_the_store_does_not_import_torch_or_qt():
    """Opening a session stays light: torch is imported only to rebuild stored interventions."""
    code = ("import sys; import circuit_studio.core.session.store; "
            "print(sorted(m for m in ('torch', 'PySide6', 'transformers') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "desktop"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_read_session_info(saved):
    _, path, _ = saved
    info = read_session_info(path)
    assert info.schema_version == SCHEMA_VERSION and info.created == T0 and info.saved >= T0


# ---------------------------------------------------------------------------------------------
# content hash
# ---------------------------------------------------------------------------------------------

def test_content_hash_is_stable_fast_and_sees_real_changes(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    big = np.random.default_rng(0).integers(0, 256, 5 << 20, dtype=np.uint8)
    (folder / "sub" / "weights.bin").write_bytes(big.tobytes())
    h = content_hash(folder)
    assert h.startswith("fh1:") and h == content_hash(folder)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    os.utime(copy / "config.json", (0, 0))
    (copy / ".cache").mkdir()
    (copy / ".cache" / "lock").write_text("ignored")
    assert content_hash(copy) == h, "moved/copied folders, mtimes and hidden files do not count"
    ref = ModelRef.from_folder(folder, {"name": "m"})
    assert ref.check() is FolderStatus.OK and ref.summary == {"name": "m"}

    (copy / "config.json").write_text('{"a": 2}')
    assert content_hash(copy) != h
    (copy / "config.json").write_text('{"a": 1}')
    edited = big.copy()
    edited[-10] ^= 1  # the last MiB of a weight file
    (copy / "sub" / "weights.bin").write_bytes(edited.tobytes())
    assert content_hash(copy) != h
    edited = big.copy()
    edited[len(big) // 2] ^= 1  # the documented blind spot: the middle of a large file
    (copy / "sub" / "weights.bin").write_bytes(edited.tobytes())
    assert content_hash(copy) == h
    (folder / "config.json").write_text("changed")
    assert ref.check() is FolderStatus.CHANGED
    shutil.rmtree(folder)
    assert ref.check() is FolderStatus.MISSING


# ---------------------------------------------------------------------------------------------
# schema migration
# ---------------------------------------------------------------------------------------------

def _fixture_module(name: str):
    spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bound_to_session(s: Session) -> Session:
    """What a migrated v1 or v2 session holds: every graph bound to the session's model and transcoders."""
    return replace(s, graphs=tuple(replace(g, model=s.model, transcoders=s.transcoders) for g in s.graphs))


def test_v1_fixture_opens_with_every_field(tmp_path):
    fixture = FIXTURES / "v1_example.cs-session"
    before = fixture.read_bytes()
    with sqlite3.connect(f"file:{fixture}?mode=ro", uri=True) as db:  # it really is version 1
        assert dict(db.execute("SELECT key, value FROM meta"))["schema_version"] == "1"
        assert "title" not in [r[1] for r in db.execute("PRAGMA table_info(graphs)")]
    db.close()
    expected = _bound_to_session(_fixture_module("make_v1").build_example())
    back = load_session(fixture)
    assert session_differences(back, expected) == []
    assert [(g.title, g.notes) for g in back.graphs] == [("", ""), ("", "")], "v2 fields default to empty"
    assert all(g.model == back.model and g.transcoders == back.transcoders for g in back.graphs)
    assert back.graph_labels(1) == {(0, 10): "say a capital", (1, 131): "France ✓"}
    assert back.graphs[0].interventions[0].interventions[1].position == slice(2, None)
    assert fixture.read_bytes() == before, "opening must not modify the file"
    # a migrated session saves in the current schema and can use the new fields
    out = tmp_path / "v2.cs-session"
    upgraded = replace(back, graphs=(replace(back.graphs[0], title="t", notes="n"), back.graphs[1]))
    save_session(upgraded, out)
    assert read_session_info(out).schema_version == SCHEMA_VERSION
    assert load_session(out) == upgraded


def test_v2_fixture_opens_with_graphs_bound_and_labels_of_its_transcoders(tmp_path):
    fixture = FIXTURES / "v2_example.cs-session"
    before = fixture.read_bytes()
    with sqlite3.connect(f"file:{fixture}?mode=ro", uri=True) as db:  # it really is version 2
        assert dict(db.execute("SELECT key, value FROM meta"))["schema_version"] == "2"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "sources" in tables and "resources" not in tables
    db.close()
    expected = _bound_to_session(_fixture_module("make_v2").build_example())
    back = load_session(fixture)
    assert session_differences(back, expected) == []
    assert fixture.read_bytes() == before, "opening must not modify the file"
    assert all(g.model == back.model and g.transcoders == back.transcoders and g.feature_index is None
               for g in back.graphs)
    scope = transcoder_identity(back.transcoders)
    assert {k[0] for k in back.labels} == {scope}, "old labels belong to the session's transcoder set"
    assert list(back.graph_labels(6)) == [(1, 121), (0, 11), (2, 5)], "in their saved order"
    assert [(g.title, g.notes) for g in back.graphs] == [("capitals", "first\n…"), ("", "only notes"), ("third", "")]
    # saving onto a v2 file writes it whole in the current schema and keeps the v2 file as .bak
    old = tmp_path / "old.cs-session"
    shutil.copy(fixture, old)
    save_session(replace(load_session(old), notes="upgraded"), old)
    assert (tmp_path / "old.cs-session.bak").read_bytes() == before
    assert read_session_info(old).schema_version == SCHEMA_VERSION
    assert load_session(old) == replace(expected, notes="upgraded")
    with sqlite3.connect(old) as db:  # three graphs of one model and one transcoder set: each stored once
        assert sorted(db.execute("SELECT kind FROM resources")) == [("model",), ("transcoders",)]
        assert set(db.execute("SELECT model_id, transcoders_id FROM graphs")) == {(1, 2)}
    db.close()


def test_old_schema_writer_refuses_to_drop_new_fields(tmp_path):
    s = example_session(interventions=False)
    old = tmp_path / "old.cs-session"
    with pytest.raises(ValueError, match="schema 2 cannot store session"):  # a feature index
        store_write._save(s, old, backup=False, schema_version=2)
    s = replace(s, feature_index=None)
    with pytest.raises(ValueError, match="schema 1 cannot store graphs"):  # titles and notes
        store_write._save(s, old, backup=False, schema_version=1)
    with pytest.raises(ValueError, match="schema 2 cannot store graphs"):  # graph 5's other model
        store_write._save(s, old, backup=False, schema_version=2)
    with pytest.raises(ValueError, match="schema 2 cannot store labels"):  # another set's labels
        store_write._save(Session(labels={("fh1:x", 0, 1): "l"}), old, backup=False, schema_version=2)
    assert list(tmp_path.iterdir()) == []
    # what v2 can hold (graphs bound to the session's own resources) goes there and migrates back exactly
    v2 = _bound_to_session(_fixture_module("make_v2").build_example())
    store_write._save(v2, old, backup=False, schema_version=2)
    assert read_session_info(old).schema_version == 2 and load_session(old) == v2
    no_transcoders = Session(model=MODEL, graphs=(GraphRecord(1, synthetic_graph(30), created=T0),),
                             labels={(0, 1): "of an unknown set"}, created=T0)
    store_write._save(no_transcoders, old, backup=False, schema_version=2)
    back = load_session(old)
    assert back.graph(1).model == MODEL and back.graph(1).transcoders is None
    assert back.labels == {("", 0, 1): "of an unknown set"} and back.graph_labels(1) == {(0, 1): "of an unknown set"}


# ---------------------------------------------------------------------------------------------
# bad input on open
# ---------------------------------------------------------------------------------------------

def _open_fails(path: Path, match: str) -> SessionError:
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(SessionError, match=match) as info:
        load_session(path)
    if before is not None:
        assert path.read_bytes() == before, "a failed open must leave the file alone"
    assert str(info.value.hint)
    return info.value


def test_open_not_a_session(tmp_path):
    text = tmp_path / "notes.cs-session"
    text.write_text("just some text\n" * 100)
    _open_fails(text, "not a Circuit Studio session: it is not an SQLite database")
    empty = tmp_path / "empty.cs-session"
    empty.write_bytes(b"")
    _open_fails(empty, "not a Circuit Studio session: it is empty")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE things(x)")
        db.execute("INSERT INTO things VALUES (1)")
    db.close()
    _open_fails(other, "SQLite database of another program")
    ours_but_wrong = tmp_path / "wrong.cs-session"
    with sqlite3.connect(ours_but_wrong) as db:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("CREATE TABLE stuff(x)")
    db.close()
    _open_fails(ours_but_wrong, "no meta table")
    with pytest.raises(SessionError, match="does not exist"):
        load_session(tmp_path / "missing.cs-session")
    with pytest.raises(SessionError, match="it is a folder"):
        load_session(tmp_path)


def test_open_truncated(saved, tmp_path):
    _, _, data = saved
    for keep in (len(data) // 2, 50, len(data) - 1):
        cut = tmp_path / f"cut{keep}.cs-session"
        cut.write_bytes(data[:keep])
        _open_fails(cut, "damaged|truncated")


def test_open_corrupted_reports_damage_or_reads_exactly(saved, tmp_path):
    s, _, data = saved
    rng = np.random.default_rng(7)
    damaged = 0
    offsets = [len(data) // 2] + [int(o) for o in rng.integers(100, len(data) - 64, 30)]
    for i, offset in enumerate(offsets):
        bad = bytearray(data)
        bad[offset:offset + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        path = tmp_path / f"bad{i}.cs-session"
        path.write_bytes(bytes(bad))
        try:
            back = load_session(path)
        except SessionError as e:
            assert "damaged" in str(e) or "not a Circuit Studio session" in str(e), str(e)
            damaged += 1
        else:  # only bytes SQLite never reads (free space in a page) may change without notice
            assert back == s, f"offset {offset}: read a different session without noticing"
        assert path.read_bytes() == bytes(bad)
    assert damaged >= 3
    # bytes inside the adjacency values: SQLite sees nothing wrong, the chunk checksum does
    values = s.graphs[0].graph.adjacency_matrix
    tail = values[values.view(np.uint32) != 0][-16:].tobytes()
    at = data.find(tail)
    assert at > 0
    bad = bytearray(data)
    bad[at + 5] ^= 0xFF
    (tmp_path / "values.cs-session").write_bytes(bytes(bad))
    _open_fails(tmp_path / "values.cs-session", "damaged.*checksum")


def test_open_catches_a_changed_cell(saved, tmp_path):
    """A valid SQLite edit to any row (here one label) no longer matches the digest."""
    _, path, _ = saved
    copy = tmp_path / "edited.cs-session"
    shutil.copy(path, copy)
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE labels SET label = 'tampered' WHERE layer = 0")
    db.close()
    _open_fails(copy, "do not match their checksum")


def test_open_newer_schema(saved, tmp_path):
    _, path, _ = saved
    newer = tmp_path / "newer.cs-session"
    shutil.copy(path, newer)
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
        db.execute("UPDATE meta SET value = '9.9.9' WHERE key = 'app_version'")
    db.close()
    err = _open_fails(newer, "written by a newer Circuit Studio")
    assert "9.9.9" in str(err) and "Update Circuit Studio" in str(err)


# ---------------------------------------------------------------------------------------------
# bad conditions on save: the previous file stays byte-identical
# ---------------------------------------------------------------------------------------------

def _save_fails(session: Session, path: Path, match: str, before: bytes, save=save_session) -> None:
    with pytest.raises(SessionError, match=match) as info:
        save(session, path)
    assert path.read_bytes() == before, "the previous file must be untouched"
    assert _temporaries(path.parent) == [], "no temporary file or journal may be left behind"
    assert "unchanged" in str(info.value) or "another" in str(info.value)
    assert load_session(path) is not None


def _root_ignores_permissions(path: Path) -> bool:
    return os.access(path, os.W_OK)


@SAVERS
def test_save_onto_read_only_file(saved, save):
    _, path, before = saved
    path.chmod(0o444)
    try:
        if _root_ignores_permissions(path):
            pytest.skip("running as root: chmod does not make the file read-only")
        _save_fails(example_session(1), path, "the file is read-only", before, save)
    finally:
        path.chmod(0o644)


@SAVERS
def test_save_into_read_only_folder(saved, save):
    _, path, before = saved
    folder = path.parent
    folder.chmod(0o555)
    try:
        if _root_ignores_permissions(folder):
            pytest.skip("running as root: chmod does not make the folder read-only")
        _save_fails(example_session(1), path, "read-only", before, save)
    finally:
        folder.chmod(0o755)


@SAVERS
def test_save_read_only_simulated(saved, monkeypatch, save):
    """The same two cases by simulation, so that they also run as root."""
    _, path, before = saved
    real_access, real_open = os.access, os.open
    for denied, match in ((path, "the file is read-only"), (path.parent, "the folder .* is read-only")):
        monkeypatch.setattr(os, "access",
                            lambda p, mode, **kw: False if Path(p) == denied else real_access(p, mode, **kw))
        _save_fails(example_session(1), path, match, before, save)
    monkeypatch.setattr(os, "access", real_access)

    def no_new_files(p, flags, *args, **kw):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real_open(p, flags, *args, **kw)

    monkeypatch.setattr(os, "open", no_new_files)  # the temporary of a whole write cannot be created
    _save_fails(example_session(1), path, "read-only", before, save_session_as)


@SAVERS
def test_save_disk_full_before_writing(saved, monkeypatch, save):
    _, path, before = saved
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=10**9, used=10**9 - 1000, free=1000))
    _save_fails(example_session(1), path, "Not enough disk space.*needs about", before, save)


@SAVERS
def test_save_disk_full_while_sqlite_writes(saved, monkeypatch, save):
    _, path, before = saved
    monkeypatch.setattr(store_write, "_MAX_PAGE_COUNT", 5)  # SQLite reports SQLITE_FULL (in place: on growing)
    _save_fails(example_session(1, 300), path, "Not enough disk space", before, save)


def test_save_disk_full_on_flush(saved, monkeypatch):
    _, path, before = saved

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the whole write's fsync of its temporary
    _save_fails(example_session(1), path, "Not enough disk space", before, save_session_as)


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(SessionError, match="does not exist"):
        save_session(example_session(interventions=False), tmp_path / "no" / "s.cs-session")


def test_save_removes_temporaries_of_dead_processes(saved):
    s, path, _ = saved
    dead = path.parent / f".{path.name}.999999999-abcd.tmp"
    alive = path.parent / f".{path.name}.1-abcd.tmp"  # pid 1 is always running
    dead.write_bytes(b"junk")
    alive.write_bytes(b"junk")
    save_session_as(s, path)
    assert not dead.exists() and alive.exists()


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------

def test_records_reject_bad_state_early():
    g = synthetic_graph(30)
    with pytest.raises(ValueError, match="not in the graph"):
        GraphRecord(1, g, pinned=(g.n_nodes,))
    with pytest.raises(ValueError, match="pinned twice"):
        GraphRecord(1, g, pinned=(1, 1))
    with pytest.raises(ValueError, match="outside"):
        GraphRecord(1, g, node_threshold=1.5)
    with pytest.raises(ValueError, match="plain JSON"):
        Session(settings={"t": (1, 2)})
    with pytest.raises(ValueError, match="plain JSON"):
        Session(settings={1: "int key"})
    with pytest.raises(ValueError, match="used twice"):
        Session(graphs=(GraphRecord(1, g), GraphRecord(1, g)))
    with pytest.raises(ValueError, match="current_graph"):
        Session(graphs=(GraphRecord(1, g),), current_graph=2)
