"""Pruning and graph scores: hand-made graphs, edge cases, cache consistency, and parity with
circuit-tracer 0.5.0 on the shared reference cases (numpy only, no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from circuit_studio.core.graph.attribution_graph import AttributionGraph
from circuit_studio.core.graph.pruning import (InfluenceDidNotConverge, Pruner, _cut, compute_influence, find_threshold,
                                         graph_scores, node_influence, prune_graph, to_networkx)
from circuit_studio.core.graph.row_normalisation import normalize_matrix

try:
    from .parity_cases import case_json, case_params, reference_arrays, reference_graph, reference_json
except ImportError:  # tests/core is not a package: pytest put this folder on sys.path
    from parity_cases import case_json, case_params, reference_arrays, reference_graph, reference_json

# ---- a 12-node hand-made graph: 2 layers, 2 positions, 4 features, 2 logits ----
# Node order: f0 f1 f2 f3 (features), e00 e01 e10 e11 (errors, layer-major), t0 t1, l0 l1.
NAMES = ["f0", "f1", "f2", "f3", "e00", "e01", "e10", "e11", "t0", "t1", "l0", "l1"]
INDEX = {name: i for i, name in enumerate(NAMES)}


def hand_graph(edges: dict[tuple[str, str], float], probs=(0.7, 0.2)) -> AttributionGraph:
    """edges: {(target, source): A[target, source]}."""
    a = np.zeros((12, 12), dtype=np.float32)
    for (target, source), w in edges.items():
        a[INDEX[target], INDEX[source]] = w
    return AttributionGraph(
        prompt="<bos> cat", input_tokens=np.array([1, 7]), token_strings=("<bos>", "cat"),
        active_features=np.array([[0, 1, 5], [0, 1, 9], [1, 1, 2], [1, 1, 7]]),
        activation_values=np.array([1.5, 0.5, 2.0, 0.25], dtype=np.float32), selected_features=np.arange(4),
        logit_token_ids=np.array([3, 4]), logit_probabilities=np.array(probs, dtype=np.float32),
        logit_tokens=("dog", "sat"), adjacency_matrix=a, n_layers=2, vocab_size=10)


# f2 carries most of l0; f0 feeds f2; f1 -> f3 is a weak side path; e11 and t0 are weak direct inputs.
BASIC = {("l0", "f2"): 4.0, ("l0", "f3"): 0.05, ("l0", "t1"): 1.0, ("l0", "e11"): -0.5, ("l0", "t0"): 0.01,
         ("l1", "f2"): -1.0, ("l1", "t1"): 1.0,
         ("f2", "f0"): 3.0, ("f2", "t1"): 1.0, ("f2", "e01"): 0.02,
         ("f3", "f1"): 1.0, ("f3", "t1"): 1.0,
         ("f0", "t1"): 2.0, ("f0", "t0"): 0.5, ("f1", "t1"): 1.0}
# f3 writes to both logits through edges too weak to keep, but reads everything from f1: once f3
# loses its outgoing edges, f1 loses its only outgoing edge on the next clean-up round.
CASCADE = {("l0", "f2"): 1.0, ("l0", "f3"): 1.0, ("l0", "t1"): 1.0, ("l1", "f3"): 1.0, ("l1", "t1"): 1.0,
           ("f3", "f1"): 1.0, ("f2", "t1"): 1.0, ("f1", "t1"): 1.0}
# f3 is influential, but its sources f1 and e01 fall below the node cut, and its remaining token
# inputs split its score in two: at edge threshold 0.85 f3 has no incoming edge left.
NO_INPUT = {("l0", "f2"): 1.0, ("l0", "t1"): 1.0, ("l1", "f3"): 1.0, ("f2", "t1"): 1.0,
            ("f3", "f1"): 1.0, ("f3", "t0"): 1.0, ("f3", "t1"): 1.0, ("f3", "e01"): 1.0, ("f1", "t1"): 1.0}


def names_of(mask) -> set[str]:
    return {NAMES[i] for i in np.flatnonzero(mask)}


def edges_of(result) -> set[tuple[str, str]]:
    t, s = result.kept_edges()
    return {(NAMES[a], NAMES[b]) for a, b in zip(t.tolist(), s.tolist())}


@pytest.mark.parametrize("edges, thresholds, nodes, kept_edges", [
    # node influences: t1 .743, f2 .604, f0 .450, t0 .091, e11 .063, ...: 80% is reached at f0;
    # then only (l0 <- t0) falls outside 98% of the edge score.
    (BASIC, (0.8, 0.98), {"f0", "f2", "t0", "t1", "l0", "l1"},
     {("l0", "f2"), ("l0", "t1"), ("l1", "f2"), ("l1", "t1"), ("f2", "f0"), ("f2", "t1"), ("f0", "t1"),
      ("f0", "t0")}),
    (BASIC, (0.5, 0.9), {"f2", "t0", "t1", "l0", "l1"},
     {("l0", "f2"), ("l0", "t1"), ("l1", "f2"), ("l1", "t1"), ("f2", "t1")}),
    # edge scores .45 .45 .35 .35 .1 .1: 85% keeps down to .35, 40% only the two .45 (f3<-f1, f1<-t1).
    (CASCADE, (0.8, 0.85), {"f1", "f3", "t0", "t1", "l0", "l1"},
     {("l0", "f3"), ("l0", "t1"), ("f3", "f1"), ("f1", "t1")}),
    (CASCADE, (0.8, 0.4), {"t0", "t1", "l0", "l1"}, set()),
    (NO_INPUT, (0.8, 0.85), {"f2", "t0", "t1", "l0", "l1"}, {("l0", "f2"), ("l0", "t1"), ("f2", "t1")}),
])
def test_hand_made_graph(edges, thresholds, nodes, kept_edges):
    result = prune_graph(hand_graph(edges), *thresholds)
    assert names_of(result.node_mask) == nodes
    assert edges_of(result) == kept_edges
    assert int(result.edge_mask.sum()) == len(kept_edges)  # nothing outside the kept nodes either


def test_hand_made_influence_by_hand():
    g = hand_graph(BASIC)
    infl = node_influence(g)
    # l0 row normalised by 5.56, l1 by 2, f2 by 4.02, f0 by 2.5; w = (.7, .2).
    f2 = 0.7 * 4 / 5.56 + 0.2 * 0.5
    f0 = f2 * 3 / 4.02
    np.testing.assert_allclose(infl[[INDEX["f2"], INDEX["f0"]]], [f2, f0], rtol=1e-6)
    assert infl[INDEX["l0"]] == infl[INDEX["l1"]] == infl[INDEX["e00"]] == 0
    np.testing.assert_allclose(Pruner(g).node_influence, infl, rtol=0, atol=0)


def test_cumulative_scores_follow_sorted_influence():
    result = prune_graph(hand_graph(BASIC))
    infl, cum = result.node_influence, result.cumulative_scores
    order = np.argsort(-infl, kind="stable")
    np.testing.assert_allclose(cum[order], np.cumsum(infl[order], dtype=np.float64) / infl.sum(), rtol=1e-6)
    assert cum[INDEX["t1"]] == cum.min() and math.isclose(cum.max(), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan")])
def test_thresholds_validated_before_computing(bad):
    cyclic = hand_graph({("f2", "f3"): 1.0, ("f3", "f2"): 1.0, ("l0", "f2"): 1.0})
    with pytest.raises(ValueError, match="node_threshold"):
        prune_graph(cyclic, bad, 0.98)
    with pytest.raises(ValueError, match="edge_threshold"):
        prune_graph(cyclic, 0.8, bad)
    with pytest.raises(ValueError, match="edge_threshold"):
        Pruner(hand_graph(BASIC)).prune(0.8, bad)


def test_non_dag_is_reported():
    cyclic = hand_graph({("f2", "f3"): 1.0, ("f3", "f2"): 1.0, ("l0", "f2"): 1.0})
    with pytest.raises(InfluenceDidNotConverge, match="DAG"):
        prune_graph(cyclic)
    with pytest.raises(RuntimeError):  # what circuit-tracer raises, for callers expecting it
        compute_influence(normalize_matrix(cyclic.adjacency_matrix), cyclic.logit_weights(), max_iter=5)


def test_find_threshold_rule():
    scores = np.array([1.0, 4.0, 0.0, 3.0, 2.0], dtype=np.float32)  # cumulative .4 .7 .9 1
    assert find_threshold(scores, 0.4) == 4  # side='left': a cumulative value equal to t stops there
    assert find_threshold(scores, 0.5) == 3
    assert find_threshold(scores, 0.95) == 1
    assert find_threshold(scores, 0.0) == 4
    assert find_threshold(scores, 1.0) == 1  # the last cumulative value is exactly 1
    assert find_threshold(np.zeros(4, dtype=np.float32), 0.8) == 0  # no influence at all: keep everything
    with pytest.raises(ValueError):
        find_threshold(np.array([1.0, -1.0]), 0.5)


def test_find_threshold_matches_full_sort():
    rng = np.random.default_rng(3)
    for _ in range(50):
        x = (rng.lognormal(0, 2, 500) * (rng.random(500) < 0.6)).astype(np.float32)
        t = float(rng.random())
        desc = np.sort(x)[::-1]  # the reference: every score, zeros included
        c = np.cumsum(desc, dtype=np.float64).astype(np.float32)
        c /= c[-1]
        i = min(int(np.searchsorted(c, np.float32(t))), x.size - 1)
        assert find_threshold(x, t) == desc[i]


def test_cut_index_in_the_zeros():
    # If the cumulative curve ends below t (the reference's float32 total can exceed the last partial
    # sum), the index is clamped to the last entry: a zero when there are zeros, so everything is kept.
    desc = np.array([3.0, 1.0], dtype=np.float32)
    short = np.array([0.75, 0.99999994], dtype=np.float32)
    assert _cut(desc, short, n_total=5, fraction=1.0) == 0
    assert _cut(desc, short, n_total=2, fraction=1.0) == 1


def test_zero_influence_keeps_everything_like_the_reference():
    g = hand_graph(BASIC, probs=(0.0, 0.0))
    result = prune_graph(g)
    assert result.node_cut == 0 and result.edge_cut == 0
    assert result.node_mask.all() and result.edge_mask.all()  # every (non-)edge, as circuit-tracer does


# ---- random DAG-shaped graphs ----

def random_graph(rng: np.random.Generator, n_layers=3, n_pos=6, n_feat=120, n_logits=4, density=0.5):
    layer, pos = rng.integers(0, n_layers, n_feat), rng.integers(1, n_pos, n_feat)
    active = np.unique(np.stack([layer, pos, rng.integers(0, 40, n_feat)], 1), axis=0)
    nf = len(active)
    layers = np.concatenate([active[:, 0], np.repeat(np.arange(n_layers), n_pos), np.full(n_pos, -1),
                             np.full(n_logits, n_layers)])
    positions = np.concatenate([active[:, 1], np.tile(np.arange(n_pos), n_layers), np.arange(n_pos),
                                np.full(n_logits, n_pos - 1)])
    allowed = (layers[None, :] < layers[:, None]) & (positions[None, :] <= positions[:, None])
    allowed[nf:nf + (n_layers + 1) * n_pos] = False  # error and token rows are sources only
    allowed[:, nf + (n_layers + 1) * n_pos:] = False  # logit columns are zero
    n = allowed.shape[0]
    a = rng.standard_normal((n, n)) * np.exp(1.5 * rng.standard_normal((n, n)))
    a = (a * (allowed & (rng.random((n, n)) < density))).astype(np.float32)
    probs = np.sort(rng.dirichlet(np.ones(n_logits)))[::-1].astype(np.float32) * 0.9
    return AttributionGraph(
        prompt="", input_tokens=np.arange(n_pos), token_strings=("t",) * n_pos, active_features=active,
        activation_values=rng.random(nf).astype(np.float32), selected_features=np.arange(nf),
        logit_token_ids=np.arange(n_logits), logit_probabilities=probs, logit_tokens=("l",) * n_logits,
        adjacency_matrix=a, n_layers=n_layers, vocab_size=100)


THRESHOLD_PAIRS = [(0.8, 0.98), (0.8, 0.5), (0.6, 0.98), (0.95, 0.9), (0.8, 0.98), (0.3, 0.7), (1.0, 0.99),
                   (0.0, 0.0), (0.6, 0.3)]


@pytest.mark.parametrize("seed", range(6))
def test_cached_reprune_equals_fresh_prune(seed):
    rng = np.random.default_rng(seed)
    g = random_graph(rng, n_layers=int(rng.integers(1, 5)), n_feat=int(rng.integers(10, 200)),
                     density=float(rng.uniform(0.1, 1)))
    pruner = Pruner(g)
    for nt, et in THRESHOLD_PAIRS:
        cached, fresh = pruner.prune(nt, et), prune_graph(g, nt, et)
        np.testing.assert_array_equal(cached.node_mask, fresh.node_mask)
        np.testing.assert_array_equal(cached.edge_mask, fresh.edge_mask)
        assert (cached.node_cut, cached.edge_cut) == (fresh.node_cut, fresh.edge_cut)


def literal_selection(g: AttributionGraph, infl: np.ndarray, scores: np.ndarray, nt: float, et: float):
    """Steps 2-5 of spec §4 written out on the full N x N scores, full sorts, reference loop."""

    def cut(x, t):
        desc = np.sort(x.ravel())[::-1]
        c = np.cumsum(desc, dtype=np.float64).astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = c / c[-1]
        return desc[min(int(np.searchsorted(c, np.float32(t))), desc.size - 1)]

    fe, f = g.token_offset, g.n_features
    node_mask = infl >= cut(infl, nt)
    node_mask[fe:] = True
    edge_mask = scores >= cut(scores, et)
    old = node_mask.copy()
    node_mask[:fe] &= edge_mask[:, :fe].any(0)
    node_mask[:f] &= edge_mask[:f].any(1)
    while not np.array_equal(node_mask, old):
        old[:] = node_mask
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:fe] &= edge_mask[:, :fe].any(0)
        node_mask[:f] &= edge_mask[:f].any(1)
    return node_mask, edge_mask


@pytest.mark.parametrize("seed", range(4))
def test_submatrix_pruning_matches_literal_spec(seed):
    rng = np.random.default_rng(100 + seed)
    g = random_graph(rng, n_layers=int(rng.integers(1, 4)), n_feat=int(rng.integers(20, 150)))
    pruner = Pruner(g)
    w = g.logit_weights()
    for nt, et in THRESHOLD_PAIRS:
        # The scores: dense pruned matrix as the reference builds it, against our submatrix ones.
        keep, _ = pruner.node_mask_before_cleanup(nt)
        pruned = g.adjacency_matrix * np.outer(keep, keep)
        a_norm = normalize_matrix(pruned)
        dense = a_norm * (compute_influence(a_norm, w) + w)[:, None]
        scores = pruner.edge_scores(nt)
        np.testing.assert_allclose(scores, dense, rtol=2e-5, atol=1e-9)
        # The selection: given the same scores, the literal full-matrix procedure must agree exactly.
        node_mask, edge_mask = literal_selection(g, pruner.node_influence, scores, nt, et)
        result = pruner.prune(nt, et)
        np.testing.assert_array_equal(result.node_mask, node_mask)
        np.testing.assert_array_equal(result.edge_mask, edge_mask)


def test_result_is_read_only_and_networkx_view():
    g = hand_graph(BASIC)
    result = prune_graph(g)
    with pytest.raises(ValueError):
        result.node_mask[0] = True
    nxg = to_networkx(g, result)
    assert set(nxg.nodes) == set(np.flatnonzero(result.node_mask).tolist())
    assert nxg.number_of_edges() == len(edges_of(result))
    assert nxg.edges[INDEX["f2"], INDEX["l0"]]["weight"] == pytest.approx(4.0)
    assert nxg.nodes[INDEX["f0"]]["kind"] == "feature" and nxg.nodes[INDEX["l0"]]["token"] == "dog"


# ---- parity with circuit-tracer 0.5.0 ----

def assert_mask_parity(ours: np.ndarray, ref: np.ndarray, scores: np.ndarray, cut: float, what: str):
    """Exact, except (README) entries whose score lies within 1e-5 relative of the cut."""
    diff = np.argwhere(ours != ref)
    near = np.abs(scores[tuple(diff.T)] - cut) <= 1e-5 * abs(cut)
    assert near.all(), (f"{what}: {len(diff)} entries differ from the reference, "
                        f"{int((~near).sum())} of them away from the cut {cut}: {diff[~near][:10].tolist()}")


@pytest.mark.parametrize("case", case_params())
def test_parity_with_circuit_tracer(case):
    g, ref, params = reference_graph(case), reference_arrays(case), case_json(case)
    pruner = Pruner(g)
    np.testing.assert_allclose(pruner.node_influence, ref["node_influence"], atol=1e-5, rtol=1e-4)
    result = pruner.prune(params["node_threshold"], params["edge_threshold"])
    np.testing.assert_allclose(result.cumulative_scores, ref["cumulative_scores"], atol=1e-5, rtol=1e-4)
    assert_mask_parity(result.node_mask, ref["node_mask"], pruner.node_influence, result.node_cut, "node_mask")
    scores = pruner.edge_scores(params["node_threshold"])
    assert_mask_parity(result.edge_mask, ref["edge_mask"], scores, result.edge_cut, "edge_mask")
    expected = reference_json(case)
    assert int(result.node_mask.sum()) == expected["n_kept_nodes"]
    assert int(result.edge_mask.sum()) == expected["n_kept_edges"]
    replacement, completeness = graph_scores(g)
    assert replacement == pytest.approx(expected["replacement_score"], abs=1e-5)
    assert completeness == pytest.approx(expected["completeness_score"], abs=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_sparse_and_dense_edge_scores_prune_alike(seed, monkeypatch):
    """Sparse graphs take the edge-list path, dense ones the matrix path: same masks either way."""
    from circuit_studio.core.graph import pruning

    rng = np.random.default_rng(100 + seed)
    g = random_graph(rng, n_layers=4, n_feat=300, density=0.03)
    monkeypatch.setattr(pruning, "SPARSE_FRACTION", 0.0)
    dense = Pruner(g)
    monkeypatch.setattr(pruning, "SPARSE_FRACTION", 1.0)
    sparse = Pruner(g)
    assert dense._entries is None and sparse._entries is not None
    for nt, et in THRESHOLD_PAIRS:
        a, b = dense.prune(nt, et), sparse.prune(nt, et)
        np.testing.assert_array_equal(a.node_mask, b.node_mask)
        np.testing.assert_array_equal(a.edge_targets, b.edge_targets)
        np.testing.assert_array_equal(a.edge_sources, b.edge_sources)


def test_layered_influence_equals_power_iteration():
    from circuit_studio.core.graph.pruning import _layer_blocks, _layered_influence

    g = random_graph(np.random.default_rng(7), n_layers=4, n_feat=200, density=0.4)
    blocks = _layer_blocks(g)
    assert blocks is not None
    a = normalize_matrix(g.adjacency_matrix)
    fast = _layered_influence(a, g.logit_weights(), blocks, slice(g.token_offset, g.logit_offset))
    np.testing.assert_allclose(fast, compute_influence(a, g.logit_weights()), rtol=1e-5, atol=1e-7)
