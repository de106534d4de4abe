"""A graph held in blocks (as attribution writes big graphs) is saved and reopened in blocks: no N x N
matrix on the way in or out, the same bits back, and older (v3) files still open and upgrade."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import numpy as np
import pytest

from circuit_studio.core.graph.adjacency import Adjacency, Block
from circuit_studio.core.session.records import GraphRecord, Session, graphs_equal
from circuit_studio.core.session.schema import SCHEMA_VERSION
from circuit_studio.core.session.store import load_session, read_session_info, save_session
from circuit_studio.core.session.store import write as store_write
from circuit_studio.core.session.store.codec import decode_adjacency, encode_adjacency
from circuit_studio.core.session.store.rows import graph_payload_bound

from test_session_store import synthetic_graph


def blocked(graph):
    """The same graph with its adjacency as blocks, as attribution holds it: up to 37 target rows of one
    layer x the columns those rows use (all of lower layers)."""
    dense = graph.adjacency_matrix
    layers = graph.node_layers()
    blocks = []
    for layer in np.unique(layers):
        of_layer = np.flatnonzero(layers == layer)
        for rows in np.array_split(of_layer, -(-of_layer.size // 37)):
            cols = np.flatnonzero((dense[rows].view(np.uint32) != 0).any(axis=0))
            if cols.size:
                blocks.append(Block(rows, cols, np.ascontiguousarray(dense[np.ix_(rows, cols)].T)))
    out = replace(graph, adjacency_matrix=None, adjacency=Adjacency(graph.n_nodes, blocks))
    assert not out.adjacency.is_dense
    return out


@pytest.fixture
def no_dense(monkeypatch):
    """Fails the test if anything builds the dense matrix of a blocked adjacency."""
    def refuse(self):
        if not self.is_dense:
            raise AssertionError("an N x N matrix was built")
        return self._dense
    monkeypatch.setattr(Adjacency, "dense", refuse)


def _encodings(path):
    with sqlite3.connect(path) as db:
        out = dict(db.execute("SELECT name, encoding FROM graph_arrays WHERE graph_id = 1"))
    db.close()
    return out


def test_a_blocked_graph_round_trips_through_a_session_in_blocks(tmp_path, no_dense):
    graph = blocked(synthetic_graph(300, seed=3))
    session = Session(graphs=(GraphRecord(id=1, graph=graph),), current_graph=1)
    path = tmp_path / "big.cs-session"
    save_session(session, path)
    assert _encodings(path)["adjacency_matrix"] == "blocks"
    back = load_session(path)
    adj = back.graphs[0].graph.adjacency
    assert not adj.is_dense and adj.identical(graph.adjacency)  # bit for bit: -0.0 and the NaN payload too
    assert graphs_equal(back.graphs[0].graph, graph)
    # the free-space estimate is made from the blocks too, and bounds what was stored
    stored = sum(len(v) for (v,) in sqlite3.connect(path).execute("SELECT data FROM array_chunks"))
    assert stored <= graph_payload_bound(graph)


def test_blocks_and_the_dense_matrix_store_the_same_graph(tmp_path):
    dense = synthetic_graph(200, seed=4)
    paths = []
    for name, g in (("dense", dense), ("blocks", blocked(dense))):
        paths.append(tmp_path / f"{name}.cs-session")
        save_session(Session(graphs=(GraphRecord(id=1, graph=g),)), paths[-1])
    a, b = (load_session(p).graphs[0].graph for p in paths)
    assert a.adjacency.is_dense and not b.adjacency.is_dense
    assert np.array_equal(a.adjacency_matrix.view(np.uint32), b.adjacency_matrix.view(np.uint32))


def test_a_v3_file_holds_the_matrix_and_upgrades_when_saved(tmp_path):
    graph = blocked(synthetic_graph(150, seed=5))
    session = Session(graphs=(GraphRecord(id=1, graph=graph),), notes="v3")
    old = tmp_path / "old.cs-session"
    store_write._save(session, old, backup=False, schema_version=3)
    assert read_session_info(old).schema_version == 3 < SCHEMA_VERSION
    assert _encodings(old)["adjacency_matrix"] == "nonzero", "a v3 reader knows no blocks"
    before = old.read_bytes()
    back = load_session(old)
    assert graphs_equal(back.graphs[0].graph, graph) and back.notes == "v3"
    save_session(replace(back, notes="upgraded"), old)
    assert (tmp_path / "old.cs-session.bak").read_bytes() == before, "the old file is kept for older versions"
    assert read_session_info(old).schema_version == SCHEMA_VERSION
    assert load_session(old).notes == "upgraded"


@pytest.mark.parametrize("cut", [1, 9, 100])
def test_a_damaged_block_payload_is_refused(cut):
    graph = blocked(synthetic_graph(60, seed=6))
    encoding, parts = encode_adjacency(graph.adjacency)
    payload = b"".join(parts)
    n = graph.n_nodes
    assert decode_adjacency(bytes(payload), "<f4", (n, n), encoding).identical(graph.adjacency)
    with pytest.raises(ValueError):
        decode_adjacency(bytes(payload)[:-cut], "<f4", (n, n), encoding)
    with pytest.raises(ValueError):
        decode_adjacency(bytes(payload) + b"\0" * cut, "<f4", (n, n), encoding)


def test_big_arrays_are_written_and_read_in_chunks(tmp_path, monkeypatch):
    from circuit_studio.core.session.store import rows as store_rows

    monkeypatch.setattr(store_rows, "CHUNK_BYTES", 1000)  # blocks, rows and values all cross chunk edges
    graph = blocked(synthetic_graph(120, seed=7))
    path = tmp_path / "chunks.cs-session"
    save_session(Session(graphs=(GraphRecord(id=1, graph=graph),)), path)
    with sqlite3.connect(path) as db:
        n_chunks, nbytes = db.execute("SELECT n_chunks, nbytes FROM graph_arrays WHERE name = 'adjacency_matrix'"
                                      ).fetchone()
        sizes = [len(d) for (d,) in db.execute("SELECT data FROM array_chunks WHERE name = 'adjacency_matrix' "
                                               "ORDER BY seq")]
    db.close()
    assert n_chunks == len(sizes) == -(-nbytes // 1000) > 5 and sizes[:-1] == [1000] * (len(sizes) - 1)
    back = load_session(path).graphs[0].graph
    assert back.adjacency.identical(graph.adjacency) and graphs_equal(back, graph)


@pytest.mark.parametrize("sizes", [[0], [5], [3, 0, 7, 1], [10, 10], [1] * 23, [0, 0]])
def test_chunks_cut_the_concatenated_parts(sizes):
    from circuit_studio.core.session.store.rows import _chunked

    rng = np.random.default_rng(len(sizes))
    parts = [memoryview(rng.integers(0, 256, n, dtype=np.uint8).tobytes()) for n in sizes]
    pieces = [bytes(p) for p in _chunked(parts, 4)]
    assert b"".join(pieces) == b"".join(parts)
    total = sum(sizes)
    assert len(pieces) == max(1, -(-total // 4)) and all(len(p) == 4 for p in pieces[:-1])
