"""A big graph held in blocks (as attribution writes one without a feature budget) goes through the
window without ever becoming an N x N matrix: shown, pruned, a node's connections listed, saved in a
session and reopened."""

from __future__ import annotations

import numpy as np
import pytest

from circuit_studio.core.graph import pruning
from circuit_studio.ui.node_connections import INPUTS_NEG, INPUTS_POS, OUTPUTS_NEG, OUTPUTS_POS
from test_session_blocks import blocked, no_dense  # noqa: F401 (a fixture)
from test_session_store import synthetic_graph
from window_helpers import new_window


@pytest.fixture
def no_dense_pruning(no_dense, monkeypatch):
    """`no_dense`, and pruning on the blocks as above 4,096 nodes."""
    monkeypatch.setattr(pruning, "DENSE_PRUNE_MAX_NODES", 0)


def test_a_blocked_graph_is_shown_explored_saved_and_reopened_in_blocks(qtbot, tmp_path, no_dense_pruning):
    graph = blocked(synthetic_graph(400, seed=11))
    w = new_window(qtbot, tmp_path, "a")
    c = w.controller
    c.workspace.add_graph(graph)
    qtbot.waitUntil(lambda: c.analysis is not None, timeout=20_000)
    a = c.analysis
    assert a.pruned.n_edges > 0 and w.canvas.visible_edges() > 0
    target = int(a.pruned.edge_targets[0])
    a.select(target)
    qtbot.wait(50)
    listed = sum(w.connections.models[k].rowCount() for k in (INPUTS_POS, INPUTS_NEG, OUTPUTS_POS, OUTPUTS_NEG))
    assert listed > 0
    row = graph.adjacency.row(target)
    shown = {int(n) for k in (INPUTS_POS, INPUTS_NEG) for n in w.connections.models[k].nodes}
    assert shown and all(row[n] != 0 for n in shown)
    path = tmp_path / "big.cs-session"
    assert w.sessions.save_as(str(path))
    w.close()

    w2 = new_window(qtbot, tmp_path, "b")
    assert w2.sessions.open(str(path))
    qtbot.waitUntil(lambda: w2.controller.analysis is not None, timeout=20_000)
    back = w2.controller.analysis
    assert not back.graph.adjacency.is_dense and back.graph.adjacency.identical(graph.adjacency)
    assert np.array_equal(back.pruned.node_mask, a.pruned.node_mask)
    assert back.selected == target
    w2.close()
