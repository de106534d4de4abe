"""Contrasting two prompts at a token: only features the other prompt lacks there, most influential first;
the swap ablates ours and sets theirs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from parity_cases import EXTRA_CASES, reference_graph

from circuit_studio.core.interventions.contrast import distinct_features, swap_interventions
from circuit_studio.core.graph.pruning import node_influence


@pytest.fixture(scope="module")
def graph():
    return reference_graph(EXTRA_CASES / "llama_relu_skip")


def test_only_features_the_other_prompt_lacks_there_most_influential_first(graph):
    pos = graph.n_pos - 1
    influence = node_influence(graph)
    # the "other prompt": the same graph with half of the last position's features switched off
    here = np.flatnonzero(graph.active_features[:, 1] == pos)
    keep = np.ones(len(graph.active_features), bool)
    keep[here[::2]] = False
    other = dataclasses.replace(graph, active_features=graph.active_features[keep])
    found = distinct_features(graph, influence, pos, other, pos)
    active_there = {(int(l), int(f)) for l, p, f in other.active_features if p == pos}
    ours_there = {graph.feature_of(n)[:3] for n in range(graph.n_features) if graph.feature_of(n)[1] == pos}
    assert found, "switched-off features that are nodes must be found"
    assert {(d.layer, pos, d.feature) for d in found} == {t for t in ours_there if (t[0], t[2]) not in active_there}
    assert [d.influence for d in found] == sorted((d.influence for d in found), reverse=True)
    assert all(d.activation == graph.feature_of(d.node)[3] for d in found)
    assert distinct_features(graph, influence, pos, graph, pos) == [], "a prompt has nothing the same prompt lacks"


def test_swap_ablates_ours_and_sets_theirs(graph):
    found = distinct_features(graph, node_influence(graph), graph.n_pos - 1,
                              dataclasses.replace(graph, active_features=graph.active_features[:0]), 0)
    ivs = swap_interventions(found, found[::-1], 3, 2)
    assert [(i.layer, i.position, i.feature, i.value) for i in ivs] == (
        [(d.layer, 3, d.feature, 0.0) for d in found[:2]]
        + [(d.layer, 3, d.feature, d.activation) for d in found[::-1][:2]])


def test_a_position_outside_the_prompt_is_refused(graph):
    with pytest.raises(ValueError, match="outside the prompt"):
        distinct_features(graph, node_influence(graph), graph.n_pos, graph, 0)
