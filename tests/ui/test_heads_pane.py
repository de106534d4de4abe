"""The Heads pane in the real window on the demo: choose an edge in Node connections, see its split per head,
click the head, see its pattern and the QK bars, click a bar to select that node; the state is kept in the
session (the workspace's settings, keyed by graph id)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PySide6.QtCore import Qt

from circuit_studio.core.attribution.heads_state import node_position
from circuit_studio.ui.heads_pane import SETTINGS_KEY
from window_helpers import new_window, open_demo, trace

PROMPT = "The capital of the state containing Dallas is"


def _city_edge(graph):
    city, last = list(graph.token_strings).index(" Dallas"), graph.n_pos - 1
    src = [i for i in range(graph.n_features) if graph.feature_of(i)[1] == city]
    tgt = [i for i in range(graph.n_features) if graph.feature_of(i)[1] == last] + \
        list(range(graph.logit_offset, graph.n_nodes))
    sub = graph.adjacency_matrix[np.ix_(tgt, src)]
    t, s = np.unravel_index(int(np.argmax(sub)), sub.shape)
    return src[s], tgt[t]


@pytest.fixture
def window(qtbot, tmp_path):
    w = new_window(qtbot, tmp_path)
    open_demo(qtbot, w, timeout=120_000)
    trace(qtbot, w, PROMPT, timeout=120_000)
    yield w
    w.close()


def _click(qtbot, widget, rect):
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton, pos=rect.center())


def test_edge_heat_map_head_pattern_and_qk_bars(qtbot, window):
    w, c = window, window.controller
    a, pane = c.analysis, window.heads
    source, target = _city_edge(a.graph)
    # choose the edge the way a user does: select the target, click the source's row among its inputs
    a.select(target)
    w.docks["heads"].show()
    w.docks["heads"].raise_()
    model = w.connections.models["inputs+"]
    row = next(r for r in range(model.rowCount()) if model.node_at(r) == source)
    view = w.connections.views["inputs+"]
    _click(qtbot, view.viewport(), view.visualRect(model.index(row, 2)))
    assert a.selected == source  # the row also selects the source, as before
    assert pane.state.edge == (source, target)
    qtbot.waitUntil(lambda: pane.state.split is not None and not pane.busy, timeout=60_000)
    split = pane.state.split
    assert pane.heat.values.shape == (len(split.layers), split.n_heads)
    assert pane.bypass.values.shape == (len(split.layers), 1)
    np.testing.assert_allclose(pane.heat.values.sum(1) + pane.bypass.values[:, 0], 1.0, atol=1e-3)
    layer, head, share = split.top_heads(1)[0]
    assert share > 0.5 and f"L{layer} H{head}" in pane.top_label.text()

    _click(qtbot, pane.heat, pane.heat.cell_rect(split.layers.index(layer), head))
    assert pane.state.head == (layer, head)
    last, city = a.graph.n_pos - 1, node_position(a.graph, source)
    assert pane.state.cell == (last, city)  # default: the target's position attending to the source's
    qtbot.waitUntil(lambda: pane.state.breakdown is not None and not pane.busy, timeout=60_000)
    p = pane.state.pattern.array()
    assert pane.pattern.values.shape == p.shape and int(np.argmax(p[last])) == city
    assert pane.pattern.marked == (last, city)
    assert pane.query_bars.rows and pane.key_bars.rows
    assert "score" in pane.score_label.text() and not pane.softcap_label.isVisible()  # Llama: no soft-cap

    # a bar selects its node
    first = pane.key_bars.rows[0][2]
    _click(qtbot, pane.key_bars, pane.key_bars.row_rect(0))
    assert a.selected == first

    # another cell of the pattern: another breakdown
    _click(qtbot, pane.pattern, pane.pattern.cell_rect(last, last))
    assert pane.state.cell == (last, last)
    qtbot.waitUntil(lambda: pane.state.breakdown is not None and not pane.busy, timeout=60_000)
    assert pane.state.breakdown.key_pos == last

    # the state is plain JSON in the session, under the graph's id
    gid = c.workspace.current_id
    stored = c.workspace.settings[SETTINGS_KEY][str(gid)]
    assert stored["edge"] == [source, target] and stored["head"] == [layer, head]
    session = c.workspace.to_session()
    assert json.loads(json.dumps(session.settings))[SETTINGS_KEY][str(gid)]["cell"] == [last, last]


def test_menu_action_uses_the_selected_node_and_cancel(qtbot, window):
    w, c = window, window.controller
    a, pane = c.analysis, window.heads
    target = a.graph.logit_offset  # the top logit: its strongest input edge
    a.select(target)
    w.show_heads()
    assert pane.state.edge is not None and pane.state.edge[1] == target
    qtbot.waitUntil(lambda: pane.state.split is not None and not pane.busy, timeout=60_000)
    assert pane.heat.values.size
    pane.cancel()  # nothing running: harmless
    assert not pane.cancel_button.isEnabled()


def test_results_come_back_with_the_session(qtbot, window, tmp_path):
    w, c = window, window.controller
    a, pane = c.analysis, window.heads
    source, target = _city_edge(a.graph)
    w.docks["heads"].show()
    w.docks["heads"].raise_()
    pane.request_edge(source, target)
    qtbot.waitUntil(lambda: pane.state.split is not None and not pane.busy, timeout=60_000)
    layer, head, share = pane.state.split.top_heads(1)[0]
    pane.choose_head(layer, head)
    qtbot.waitUntil(lambda: pane.state.breakdown is not None and not pane.busy, timeout=60_000)
    path = tmp_path / "heads.cs-session"
    assert w.sessions.save_as(path)
    w.sessions.new()
    assert pane.state.edge is None and not pane.heat.values.size
    assert w.sessions.open(path)
    qtbot.waitUntil(lambda: c.analysis is not None, timeout=60_000)
    # shown from the session, nothing recomputed
    assert pane.state.edge == (source, target) and pane.state.head == (layer, head)
    assert not pane.busy and pane.state.split.top_heads(1)[0][2] == pytest.approx(share)
    assert pane.heat.values.size and pane.pattern.values.size and pane.query_bars.rows
