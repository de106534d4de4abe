"""Graph comparison on the shipped demo: Dallas vs San Diego (features align: the city features differ at
the city and "only in one" lists them), and one prompt under the per-layer vs the cross-layer transcoders
(features cannot align: what each explains, side by side)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.graph.compare import (CHANGED, EDGE, LOGIT, ONLY_A, ONLY_B, compare_graphs, describe_row,
                                               position_alignment)
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.graph.pruning import Pruner
from circuit_studio.core.transcoders.loading import load_transcoders

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"
A = "The capital of the state containing Dallas is"
B = "The capital of the state containing San Diego is"


@pytest.fixture(scope="module")
def demo():
    return (load_model(DEMO / "model", device="cpu"), load_transcoders(DEMO / "transcoders", device="cpu"),
            load_transcoders(DEMO / "clt", device="cpu"))


@pytest.fixture(scope="module")
def cities(demo):
    bundle, plt, _ = demo
    return attribute(A, bundle, plt), attribute(B, bundle, plt)


def test_prompts_align_on_their_common_prefix_and_suffix(cities):
    ga, gb = cities
    pairs, span_a, span_b = position_alignment(ga, gb)
    city_a, city_b = ga.n_pos - 2, gb.n_pos - 2
    assert ga.token_strings[city_a] == " Dallas" and gb.token_strings[city_b] == " Diego"
    assert (ga.n_pos - 1, gb.n_pos - 1) in pairs  # " is" aligns although B is one token longer
    assert all(ga.input_tokens[i] == gb.input_tokens[j] for i, j in pairs)
    assert span_a == (city_a, city_a + 1) and span_b == (city_b - 1, city_b + 1)  # " Dallas" vs " San Diego"


def test_city_features_are_only_in_one(cities):
    ga, gb = cities
    cmp = compare_graphs(ga, gb)
    assert cmp.aligned and cmp.rows
    only_a, only_b = cmp.of_kind(ONLY_A), cmp.of_kind(ONLY_B)
    assert only_a and only_b
    city_a = ga.n_pos - 2
    # the most influential features at " Dallas" that San Diego's span lacks are listed, with their nodes
    at_city = [r for r in only_a if ga.feature_of(r.node_a)[1] == city_a]
    assert at_city and all(r.node_b is None for r in at_city)
    best = max((n for n in range(ga.n_features) if ga.feature_of(n)[1] == city_a
                and not any((gb.active_features[:, 0] == ga.feature_of(n)[0])
                            & (gb.active_features[:, 2] == ga.feature_of(n)[2])
                            & np.isin(gb.active_features[:, 1], [gb.n_pos - 3, gb.n_pos - 2]))),
               key=lambda n: Pruner(ga).node_influence[n])
    assert best in {r.node_a for r in at_city}
    # B's city features sit in its differing tokens (" San", " Diego")
    in_span = [r for r in only_b if "differing" in r.label]
    assert in_span and all(gb.feature_of(r.node_b)[1] in (gb.n_pos - 3, gb.n_pos - 2) for r in in_span)
    # the ranking is one list, most different first; every kind says something
    scores = [r.score for r in cmp.rows]
    assert scores == sorted(scores, reverse=True)
    kinds = {r.kind for r in cmp.rows}
    assert {ONLY_A, ONLY_B, CHANGED, EDGE} <= kinds
    assert all(describe_row(r) for r in cmp.rows)
    # aligned rows name a node of each graph with the same (layer, feature)
    for r in cmp.of_kind(CHANGED)[:20]:
        la, _, fa, _ = ga.feature_of(r.node_a)
        lb, _, fb, _ = gb.feature_of(r.node_b)
        assert (la, fa) == (lb, fb)
    for r in cmp.of_kind(LOGIT):
        assert ga.logit_token_ids[r.node_a - ga.logit_offset] == gb.logit_token_ids[r.node_b - gb.logit_offset]


def test_a_graph_compared_with_itself_has_no_differences(cities):
    ga, _ = cities
    cmp = compare_graphs(ga, ga)
    assert cmp.aligned and not cmp.of_kind(ONLY_A, ONLY_B)
    assert all(r.score == 0 for r in cmp.rows)


def test_per_layer_vs_cross_layer_shows_what_each_explains(demo):
    bundle, plt, clt = demo
    g_plt, g_clt = attribute(A, bundle, plt), attribute(A, bundle, clt)
    cmp = compare_graphs(g_plt, g_clt, titles=("per-layer", "cross-layer"))
    assert not cmp.aligned and not cmp.rows and "transcoder" in cmp.reason
    left, right = cmp.explains
    assert (left.title, right.title) == ("per-layer", "cross-layer")
    for ex, g in ((left, g_plt), (right, g_clt)):
        r, c = Pruner(g).graph_scores()
        assert (ex.replacement, ex.completeness) == pytest.approx((r, c))
        assert 0 < ex.replacement <= 1 and 0 < ex.completeness <= 1
        assert ex.top_nodes and [i for _, _, i in ex.top_nodes] == sorted([i for _, _, i in ex.top_nodes], reverse=True)
    assert left.transcoders != right.transcoders
