"""The Qt-free analysis state and the canvas layout, on a real reference graph."""

from __future__ import annotations

import numpy as np
import pytest

from circuit_studio.core.session.analysis import MAX_PINNED, Analysis, Aspect
from circuit_studio.core.graph.layout import layered_layout
from parity_cases import case_dirs, reference_graph


@pytest.fixture
def analysis():
    return Analysis(reference_graph(case_dirs()[0]))


def _features(a: Analysis, k: int) -> list[int]:
    """The k most influential feature nodes."""
    order = np.argsort(-a.pruner.node_influence[: a.graph.error_offset], kind="stable")
    return [int(n) for n in order[:k]]


def test_thresholds_re_prune_and_report_what_is_hidden(analysis):
    events = []
    analysis.subscribe(events.append)
    shown = analysis.hidden_counts()["shown"]
    analysis.set_thresholds(0.95, 0.99)
    assert events == [Aspect.PRUNING]
    counts = analysis.hidden_counts()
    assert counts["shown"] > shown == int(analysis.pruner.prune(0.8, 0.98).node_mask.sum())
    g = analysis.graph
    assert counts["features"] + counts["errors"] + counts["shown"] == g.n_nodes
    analysis.set_thresholds(0.95, 0.99)
    assert events == [Aspect.PRUNING], "no event when nothing changes"


def test_groups_sum_member_edges_and_absorb_overlapping_groups(analysis):
    a, b, c, d = _features(analysis, 4)
    for n in (a, b, c, d):
        analysis.toggle_pin(n)
    first = analysis.group([a, b], "pair")
    groups = analysis.subgraph_groups()
    assert groups[0] == ("pair", (a, b)) and [m for _, m in groups[1:]] == [(c,), (d,)]
    A = analysis.graph.adjacency_matrix
    E = analysis.subgraph_edges()
    assert E[0, 1] == pytest.approx(A[a, c] + A[b, c])
    assert E[1, 0] == pytest.approx(A[c, a] + A[c, b])
    assert E[0, 0] == 0
    merged = analysis.group([b, c])  # b already belongs to "pair": the pair is absorbed
    assert set(merged.members) == {a, b, c} and len(analysis.supernodes) == 1
    analysis.rename_supernode(merged.id, "trio")
    assert analysis.subgraph_groups()[0][0] == "trio"
    analysis.ungroup(merged.id)
    assert analysis.supernodes == [] and first not in analysis.supernodes


def test_unpinning_removes_the_node_from_its_supernode(analysis):
    a, b, c = _features(analysis, 3)
    for n in (a, b, c):
        analysis.toggle_pin(n)
    sn = analysis.group([a, b, c])
    analysis.toggle_pin(b)
    assert analysis.supernodes[0].members == (a, c) and analysis.supernodes[0].id == sn.id


def test_grouping_needs_pinned_nodes(analysis):
    a, b = _features(analysis, 2)
    analysis.toggle_pin(a)
    with pytest.raises(ValueError, match="not pinned"):
        analysis.group([a, b])
    with pytest.raises(ValueError, match="at least two"):
        analysis.group([a])


def test_pin_limit(analysis):
    for n in range(MAX_PINNED):
        analysis.toggle_pin(n)
    with pytest.raises(ValueError, match=str(MAX_PINNED)):
        analysis.toggle_pin(MAX_PINNED)


def test_labels_are_keyed_by_transcoder_feature(analysis):
    node = _features(analysis, 1)[0]
    layer, _, feat, _ = analysis.graph.feature_of(node)
    analysis.set_label(node, "  Texas  ")
    assert analysis.labels == {(layer, feat): "Texas"} and analysis.label_of(node) == "Texas"
    # every node of the same feature (other positions) carries the label
    same = [n for n in range(analysis.graph.n_features) if analysis.feature_key(n) == (layer, feat)]
    assert all(analysis.label_of(n) == "Texas" for n in same)
    analysis.set_label(node, "")
    assert analysis.label_of(node) == f"L{layer} #{feat}"
    with pytest.raises(ValueError):
        analysis.set_label(analysis.graph.token_offset, "x")


def test_layout_rows_columns_and_no_overlaps(analysis):
    analysis.set_thresholds(1.0, 1.0)
    g = analysis.graph
    lay = layered_layout(g, analysis.pruned.node_mask, analysis.pruner.node_influence)
    layers, positions = g.node_layers()[lay.nodes], g.node_positions()[lay.nodes]
    np.testing.assert_array_equal(lay.xy[:, 1], lay.row_y[layers + 1])  # rows: emb, layers, logits
    assert (lay.xy[:, 0] > lay.column_left[positions]).all()
    assert (lay.xy[:, 0] < lay.column_left[positions + 1]).all()
    assert len({(float(x), float(y)) for x, y in lay.xy}) == len(lay.nodes)
    widths = np.diff(lay.column_left)
    busiest = np.bincount(positions[layers >= 0]).argmax()
    assert widths[busiest] == widths.max() > widths.min()
