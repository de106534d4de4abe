"""The packed backward pass and the block-held adjacency: only the work the answer needs, memory that
follows the non-zeros, and the same graph, pruning, export and files as the dense matrix gives."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from circuit_studio.core.graph import attribution_graph as graph_module
from circuit_studio.core.graph import pruning
from circuit_studio.core.graph.adjacency import Adjacency, Block
from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.graph.export import frontend_json
from circuit_studio.core.attribution.frozen_backward import needed_macs, plan_batches
from circuit_studio.core.graph.attribution_graph import AttributionParams, load_graph, save_graph
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.synthetic import default_hooks, random_transcoders

PROMPT = "the capital of the state of Dallas is Austin and the opposite of hot is"
THRESHOLDS = [(0.8, 0.98), (0.5, 0.9), (0.95, 0.5), (0.3, 0.99)]


@pytest.fixture(scope="module", params=[("llama", "plt", False), ("gemma2", "plt", True), ("llama", "clt", False),
                                        ("gpt2", "plt", True)], ids=lambda c: "-".join(map(str, c)))
def traced(request, tiny_model_folder):
    family, kind, skip = request.param
    bundle = load_model(tiny_model_folder(family), device="cpu")
    rh, wh = default_hooks(family)
    tc = random_transcoders(n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model, n_features=96, kind=kind,
                            skip=skip, seed=5, feature_input_hook=rh, feature_output_hook=wh)
    return bundle, tc, attribute(PROMPT, bundle, tc, AttributionParams(batch_size=16))


def _random_blocks(rng, n=40):
    """A layered block matrix by hand: rows 20..39 receive from columns below their own index."""
    blocks = []
    for r0 in (20, 30):
        rows = np.arange(r0, r0 + 10)
        cols = np.sort(rng.choice(r0, size=12, replace=False))
        blocks.append(Block(rows, cols, rng.standard_normal((cols.size, rows.size)).astype(np.float32)))
    return Adjacency(n, blocks)


def test_blocks_read_like_the_dense_matrix():
    rng = np.random.default_rng(0)
    adj = _random_blocks(rng)
    dense = adj.dense()
    assert dense.shape == (40, 40) and np.count_nonzero(dense) == adj.n_stored == 240
    t, s = rng.integers(0, 40, 500), rng.integers(0, 40, 500)
    np.testing.assert_array_equal(adj.values_at(t, s), dense[t, s])
    np.testing.assert_array_equal(adj.row(25), dense[25])
    np.testing.assert_array_equal(adj.column(3), dense[:, 3])
    r, c = rng.permutation(40)[:15], rng.permutation(40)[:9]
    np.testing.assert_array_equal(adj.submatrix(r, c), dense[np.ix_(r, c)])
    np.testing.assert_array_equal(adj.submatrix(r), dense[r])
    np.testing.assert_allclose(adj.abs_row_sums(), np.abs(dense).sum(1), rtol=1e-6)
    back = Adjacency.from_file_arrays(40, adj.file_arrays())
    assert back.identical(adj) and back.identical(Adjacency.from_dense(dense))
    other = dense.copy()
    other[25, 3] = np.nextafter(other[25, 3], np.float32(np.inf))
    assert not adj.identical(Adjacency.from_dense(other))


def test_the_graph_holds_blocks_and_gives_the_dense_matrix_on_demand(traced):
    _, _, graph = traced
    adj = graph.adjacency
    assert not adj.is_dense
    # only what can be non-zero is held: no error/token rows, no later positions, no own or later layers
    assert adj.n_stored < 0.5 * graph.n_nodes ** 2
    dense = graph.adjacency_matrix
    assert dense is graph.adjacency_matrix, "built once"
    layers, pos = graph.node_layers(), graph.node_positions()
    t, s = np.nonzero(dense)
    assert np.all(layers[s] < layers[t]) and np.all(pos[s] <= pos[t])
    moved = dataclasses.replace(graph, adjacency_matrix=dense * 2)
    np.testing.assert_array_equal(moved.adjacency_matrix, dense * 2)
    assert dataclasses.replace(graph, prompt="x").adjacency is adj


def test_pruning_on_blocks_equals_pruning_on_the_matrix(traced, monkeypatch):
    _, _, graph = traced
    monkeypatch.setattr(pruning, "DENSE_PRUNE_MAX_NODES", 10**9)
    dense = pruning.Pruner(graph)
    monkeypatch.setattr(pruning, "DENSE_PRUNE_MAX_NODES", 0)
    blocked = pruning.Pruner(graph)
    assert dense._blocked is None and blocked._blocked is not None
    np.testing.assert_allclose(blocked.node_influence, dense.node_influence, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(blocked.graph_scores(), dense.graph_scores(), atol=1e-6)
    for nt, et in THRESHOLDS:
        a, b = dense.prune(nt, et), blocked.prune(nt, et)
        np.testing.assert_array_equal(a.node_mask, b.node_mask)
        np.testing.assert_array_equal(a.edge_targets, b.edge_targets)
        np.testing.assert_array_equal(a.edge_sources, b.edge_sources)
    np.testing.assert_allclose(blocked.edge_scores(0.8), dense.edge_scores(0.8), rtol=1e-5, atol=1e-9)


def test_the_big_path_never_builds_the_matrix(traced, monkeypatch, tmp_path):
    """attribute -> prune -> frontend JSON -> .npz on blocks only (thresholds lowered so a tiny graph counts as big)."""
    _, _, graph = traced
    want_doc = frontend_json(graph, pruning.prune_graph(graph), slug="g")
    fresh = dataclasses.replace(graph, prompt=graph.prompt)  # no dense view built yet
    monkeypatch.setattr(pruning, "DENSE_PRUNE_MAX_NODES", 0)
    monkeypatch.setattr(graph_module, "DENSE_FILE_MAX_NODES", 0)

    def refuse(self):
        raise AssertionError("the dense matrix was built")

    monkeypatch.setattr(Adjacency, "dense", refuse)
    result = pruning.Pruner(fresh).prune(0.8, 0.98)
    doc = frontend_json(fresh, result, slug="g")
    assert [n["node_id"] for n in doc["nodes"]] == [n["node_id"] for n in want_doc["nodes"]]
    assert [(link["source"], link["target"]) for link in doc["links"]] == \
        [(link["source"], link["target"]) for link in want_doc["links"]]
    np.testing.assert_allclose([link["weight"] for link in doc["links"]],
                               [link["weight"] for link in want_doc["links"]], rtol=0, atol=0)
    save_graph(fresh, tmp_path / "g.npz", extra=result.file_arrays(dense=False))
    with np.load(tmp_path / "g.npz") as z:
        assert "adjacency_matrix" not in z.files and "edge_mask" not in z.files
        assert json.loads(bytes(z["header"]).decode())["version"] == 2
        np.testing.assert_array_equal(z["edge_targets"], result.edge_targets)
    back = load_graph(tmp_path / "g.npz")
    assert back.adjacency.identical(graph.adjacency)
    monkeypatch.undo()
    np.testing.assert_array_equal(back.adjacency_matrix, graph.adjacency_matrix)


def test_small_graph_files_keep_the_dense_layout(traced, tmp_path):
    _, _, graph = traced
    save_graph(graph, tmp_path / "g.npz")
    with np.load(tmp_path / "g.npz") as z:
        assert json.loads(bytes(z["header"]).decode())["version"] == 1
        np.testing.assert_array_equal(z["adjacency_matrix"], graph.adjacency_matrix)
    assert load_graph(tmp_path / "g.npz").adjacency.identical(graph.adjacency)


def test_batches_cover_every_row_once_and_share_positions():
    rng = np.random.default_rng(1)
    layers, positions = rng.integers(0, 6, 900), rng.integers(1, 40, 900)
    batches = plan_batches(layers, positions, max_row_positions=2000, min_rows=48, max_padding=0.25)
    seen = np.concatenate([rows for rows, _ in batches])
    np.testing.assert_array_equal(np.sort(seen), np.arange(900))
    for rows, n_pos in batches:
        assert np.all(np.diff(layers[rows]) <= 0), "layers descending"
        assert positions[rows].max() + 1 == n_pos
        assert rows.size * n_pos <= 2000 or rows.size == 1
        assert np.all(n_pos - (positions[rows] + 1) <= 0.25 * n_pos)
    alone = plan_batches(layers, positions, max_row_positions=10**6, min_rows=1)
    assert all(np.unique(positions[rows]).size == 1 for rows, _ in alone), "one position per batch"


def test_only_the_needed_multiply_adds_are_done(traced, monkeypatch):
    """With one position per batch (and edges one product per position, not padded to a batched one)
    the work done is the exact need, plus only the pattern's upper triangle (applied as a square, in
    one product per layer)."""
    import circuit_studio.core.attribution.attribute as attribution_module
    from circuit_studio.core.attribution.frozen_backward import PackedBackward
    from circuit_studio.core.attribution.frozen_backward import plan_batches as plan

    bundle, tc, graph = traced
    monkeypatch.setattr(attribution_module, "plan_batches", lambda *a, **k: plan(*a, **{**k, "min_rows": 1}))
    monkeypatch.setattr(PackedBackward, "EDGE_BMM_BELOW", 0)
    monkeypatch.setattr(PackedBackward, "EDGE_BMM_MAX_PADDING", -1.0)  # never padded
    again = attribute(PROMPT, bundle, tc, AttributionParams(batch_size=16))
    np.testing.assert_allclose(again.adjacency_matrix, graph.adjacency_matrix, atol=1e-6)
    af = graph.active_features
    counts = np.zeros((graph.n_layers, graph.n_pos), dtype=np.int64)
    np.add.at(counts, (af[:, 0], af[:, 1]), 1)
    need = needed_macs(af[:, 0], af[:, 1], counts, bundle.arch, tc)
    a = bundle.arch.layers[0]
    square_extra = sum(l * (p + 1) * p // 2 * a.n_heads * a.head_dim for l, p in zip(af[:, 0], af[:, 1]))
    assert again.provenance["work"]["feature_row_macs"] == need + square_extra
