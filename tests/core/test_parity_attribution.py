"""Our attribution reproduces circuit-tracer 0.5.0 on every reference case in ../shared/parity.

Tolerances are the parity README's (adjacency atol 1e-5 for a PyTorch implementation).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from circuit_studio.core.attribution import attribute
from circuit_studio.core.graph import AttributionParams, load_graph, save_graph
from circuit_studio.core.model_loading import load_model
from circuit_studio.core.pruning import graph_scores, prune_graph
from circuit_studio.core.transcoder_loading import load_transcoders
from parity_cases import case_dirs

CASES = case_dirs()
pytestmark = pytest.mark.skipif(not CASES, reason="no parity cases found (../shared/parity nor tests/fixtures/parity_extra)")


def _params(case: dict) -> AttributionParams:
    return AttributionParams(max_n_logits=case["max_n_logits"], desired_logit_prob=case["desired_logit_prob"],
                             batch_size=case["batch_size"], max_feature_nodes=case["max_feature_nodes"],
                             update_interval=case["update_interval"])


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def traced(request):
    folder = request.param
    case = json.loads((folder / "case.json").read_text())
    bundle = load_model(folder / "model", device="cpu")
    tc = load_transcoders(folder / "transcoders")
    graph = attribute(case["prompt"], bundle, tc, _params(case))
    return folder, case, graph, np.load(folder / "reference.npz")


def test_same_nodes_and_targets(traced):
    _, _, graph, ref = traced
    for key in ("input_tokens", "active_features", "selected_features", "logit_token_ids"):
        np.testing.assert_array_equal(getattr(graph, key), ref[key], err_msg=key)
    np.testing.assert_allclose(graph.activation_values, ref["activation_values"], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(graph.logit_probabilities, ref["logit_probabilities"], atol=1e-5, rtol=1e-4)


def test_same_adjacency(traced):
    _, _, graph, ref = traced
    np.testing.assert_allclose(graph.adjacency_matrix, ref["adjacency_matrix"], atol=1e-5, rtol=1e-4)


def test_same_pruning_and_scores(traced):
    folder, case, graph, ref = traced
    meta = json.loads((folder / "reference.json").read_text())
    result = prune_graph(graph, case["node_threshold"], case["edge_threshold"])
    np.testing.assert_array_equal(result.node_mask, ref["node_mask"])
    np.testing.assert_array_equal(result.edge_mask, ref["edge_mask"])
    np.testing.assert_allclose(result.cumulative_scores, ref["cumulative_scores"], atol=1e-5, rtol=1e-4)
    replacement, completeness = graph_scores(graph)
    assert replacement == pytest.approx(meta["replacement_score"], abs=1e-5)
    assert completeness == pytest.approx(meta["completeness_score"], abs=1e-5)


def test_graph_file_round_trip(traced, tmp_path):
    _, _, graph, _ = traced
    save_graph(graph, tmp_path / "g.npz")
    back = load_graph(tmp_path / "g.npz")
    np.testing.assert_array_equal(back.adjacency_matrix, graph.adjacency_matrix)
    assert back.token_strings == graph.token_strings and back.params == graph.params


def test_batch_size_does_not_change_the_graph(traced):
    folder, case, graph, _ = traced
    if case["max_feature_nodes"] is not None:
        pytest.skip("with a feature budget, batch_size sets the frontier's step size (spec §3.4)")
    bundle = load_model(folder / "model", device="cpu")
    tc = load_transcoders(folder / "transcoders")
    other = attribute(case["prompt"], bundle, tc, AttributionParams(batch_size=5))
    np.testing.assert_allclose(other.adjacency_matrix, graph.adjacency_matrix, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_cuda_matches_reference(traced):
    folder, case, _, ref = traced
    bundle = load_model(folder / "model", device="cuda")
    graph = attribute(case["prompt"], bundle, load_transcoders(folder / "transcoders"), _params(case))
    np.testing.assert_array_equal(graph.active_features, ref["active_features"])
    np.testing.assert_allclose(graph.adjacency_matrix, ref["adjacency_matrix"], atol=1e-4, rtol=1e-4)
