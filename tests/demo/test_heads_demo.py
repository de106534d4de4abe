"""The demo's head that moves the city to the last position: on the curated prompt, the graph's strongest
edge from a feature at " Dallas" into a last-position feature or logit is carried, at some layer, mostly by
one head, and that head's pattern row at the last position puts its largest weight on " Dallas"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.attribution.heads import HeadAnalysis
from circuit_studio.core.attribution.heads_state import HeadsState, compute_pattern, compute_qk, compute_split, node_position
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.transcoders.loading import load_transcoders

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"
PROMPT = "The capital of the state containing Dallas is"


def city_edge(graph) -> tuple[int, int]:
    """(source, target): the strongest edge from a feature at ' Dallas' into a last-position feature or logit."""
    city, last = list(graph.token_strings).index(" Dallas"), graph.n_pos - 1
    feats = range(graph.n_features)
    src = [i for i in feats if graph.feature_of(i)[1] == city]
    tgt = [i for i in feats if graph.feature_of(i)[1] == last] + list(range(graph.logit_offset, graph.n_nodes))
    sub = graph.adjacency_matrix[np.ix_(tgt, src)]
    t, s = np.unravel_index(int(np.argmax(sub)), sub.shape)
    return src[s], tgt[t]


@pytest.fixture(scope="module")
def demo():
    bundle, tc = load_model(DEMO / "model", device="cpu"), load_transcoders(DEMO / "transcoders", device="cpu")
    graph = attribute(PROMPT, bundle, tc)
    return graph, HeadAnalysis(bundle, tc, graph)


def test_city_mover_head(demo):
    graph, ha = demo
    source, target = city_edge(graph)
    edge = float(graph.adjacency_matrix[target, source])
    assert edge > 0
    r = compute_split(ha, source, target)
    assert r.edge == pytest.approx(edge, rel=1e-3, abs=1e-5)
    for row in r.parts:  # per layer: heads + bypass = the edge
        assert sum(row) == pytest.approx(edge, rel=1e-3, abs=1e-4)
    layer, head, share = r.top_heads(1)[0]
    assert share > 0.5, f"the top head carries only {share:.2f} of the edge"
    pattern = compute_pattern(ha, layer, head).array()
    city, last = node_position(graph, source), graph.n_pos - 1
    assert graph.token_strings[city] == " Dallas"
    assert int(np.argmax(pattern[last])) == city
    assert pattern[last, city] > 0.5
    np.testing.assert_allclose(pattern.sum(1), 1.0, atol=1e-4)
    qk = compute_qk(ha, layer, head, last, city)
    assert qk.weight == pytest.approx(float(pattern[last, city]), abs=1e-5)
    q_total = sum(v for _, v in qk.query_nodes) + qk.query_rest
    k_total = sum(v for _, v in qk.key_nodes) + qk.key_rest
    assert q_total == pytest.approx(qk.score, rel=1e-3, abs=1e-3)
    assert k_total == pytest.approx(qk.score, rel=1e-3, abs=1e-3)
    assert qk.softcap is None  # Llama: no soft-cap
    print(f"\nedge {source} -> {target} ({edge:.3g}): layer {layer} head {head} carries {share:.1%}; "
          f"its weight from the last position on ' Dallas' is {pattern[last, city]:.3f}")


def test_state_round_trips_as_json(demo):
    graph, ha = demo
    source, target = city_edge(graph)
    s = HeadsState(graph)
    seen = []
    s.events.connect(lambda e: seen.append(type(e).__name__))
    s.request_edge(source, target)
    assert s.split is None
    s.put_split(compute_split(ha, source, target))
    layer, head, _ = s.split.top_heads(1)[0]
    s.choose_head(layer, head)
    assert s.cell == (graph.n_pos - 1, node_position(graph, source))
    s.put_pattern(compute_pattern(ha, layer, head))
    s.put_breakdown(compute_qk(ha, layer, head, *s.cell))
    assert {"EdgeChanged", "SplitChanged", "HeadChanged", "PatternChanged", "CellChanged",
            "BreakdownChanged"} <= set(seen)
    blob = json.loads(json.dumps(s.to_json()))
    t = HeadsState()
    t.reset(graph, blob)
    assert t.edge == s.edge and t.head == s.head and t.cell == s.cell
    assert t.split == s.split and t.pattern == s.pattern and t.breakdown == s.breakdown
    with pytest.raises(ValueError):
        s.choose_cell(1, 3)
