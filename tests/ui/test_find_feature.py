"""Find feature (Ctrl+Shift+F) on the demo: search as you type, the dashboard without a graph, the graphs of
the session where the feature is active, and opening one with its node selected."""

from __future__ import annotations

import pytest

from window_helpers import new_window, open_demo

pytest.importorskip("pytestqt")

A = "The capital of the state containing Dallas is"


def test_find_feature(qtbot, tmp_path):
    w = new_window(qtbot, tmp_path)
    c = w.controller
    open_demo(qtbot, w)
    assert c.analysis is None
    shortcut = [a for a in w.findChildren(type(w.undo_action)) if a.text() == "&Find feature…"]
    assert shortcut and shortcut[0].shortcut().toString() == "Ctrl+Shift+F"
    d = w.find_feature()
    qtbot.waitUntil(lambda: d.ready, timeout=30_000)
    qtbot.keyClicks(d.search_box, "sacr")  # as you type: every keystroke searches
    assert d.hits and any("Sacramento" in h.label for h in d.hits[:3])
    assert "features in" in d.status.text()
    d.choose(0)
    layer, feat = d.hits[0].layer, d.hits[0].feature
    pane = w.features
    assert pane.browsed == (layer, feat) and "from the feature index" in pane.title.text()
    assert pane.top_list.isVisibleTo(pane) and pane.example_rows, "the dashboard, with no graph"
    assert d.graphs.count() == 0

    # trace the two-hop prompt; a Dallas feature is active there and lists it
    w.prompt_bar.prompt.setEditText(A)
    w.prompt_bar.trace()
    qtbot.waitUntil(lambda: c.analysis is not None and not c.jobs.busy, timeout=60_000)
    d.search_box.setText("L0#98")
    assert [(h.layer, h.feature) for h in d.hits] == [(0, 98)]
    d.choose(0)
    assert d.graphs.count() == 1 and "Dallas" in d.graphs.item(0).text()
    assert "Active in this session's graphs" in pane.stats.text()
    d.open_graph(0)
    a = c.analysis
    assert a.selected is not None and a.graph.feature_of(a.selected)[0::2] == (0, 98)
    assert pane.browsed is None, "selecting a node shows the node again"
    d.close()
    w.close()
