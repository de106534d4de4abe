"""Subgraph pane: pin real graph nodes, click / Ctrl-click / `g` in the pane with qtbot, and check the
vertices, the supernodes and the summed edges against the Analysis and the adjacency matrix."""

from __future__ import annotations


import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt

from parity_cases import case_dirs, reference_graph

from circuit_studio.core.session.analysis import Analysis
from circuit_studio.ui.controller import Controller
from circuit_studio.ui.subgraph.layout import subgraph_layout
from circuit_studio.ui.subgraph.pane import EMPTY_TEXT, SubgraphPane

NO_MOD = Qt.KeyboardModifier.NoModifier
CTRL = Qt.KeyboardModifier.ControlModifier
LEFT = Qt.MouseButton.LeftButton


@pytest.fixture
def pane(qtbot, controller):
    p = SubgraphPane(controller)
    qtbot.addWidget(p)
    p.resize(900, 600)
    p.show()
    qtbot.waitExposed(p)
    return p


@pytest.fixture
def three(analysis):
    """A logit and the two features with the largest direct effect on it: (f1, f2, logit)."""
    A, g = analysis.graph.adjacency_matrix, analysis.graph
    logit = g.logit_offset
    f1, f2 = (int(f) for f in np.argsort(-np.abs(A[logit, :g.n_features]))[:2])
    assert A[logit, f1] != 0 and A[logit, f2] != 0
    return f1, f2, logit


def settle(qtbot, pane):
    """Let layouts, range changes and the label timer run."""
    qtbot.wait(20)


def click(qtbot, pane, i, modifier=NO_MOD):
    settle(qtbot, pane)
    qtbot.mouseClick(pane.plot_widget.viewport(), LEFT, modifier, pane.vertex_widget_pos(i))


def vertex_of(pane, node) -> int:
    return next(i for i, v in enumerate(pane.vertices) if node in v.members)


def expected_edges(analysis, vertices) -> np.ndarray:
    A = analysis.graph.adjacency_matrix.astype(np.float64)
    out = np.zeros((len(vertices), len(vertices)))
    for t, vt in enumerate(vertices):
        for s, vs in enumerate(vertices):
            if s != t:
                out[t, s] = A[np.ix_(list(vt.members), list(vs.members))].sum()
    return out


# ---- tests ----

def test_empty_states_render(qtbot):
    c = Controller()
    try:
        p = SubgraphPane(c)
        qtbot.addWidget(p)
        p.show()
        assert p.stack.currentWidget() is p.empty_label and EMPTY_TEXT in p.empty_label.text()
        assert not p.grab().isNull()
        c.set_analysis(Analysis(reference_graph(case_dirs()[0])))
        assert p.stack.currentWidget() is p.empty_label and p.empty_label.text() == EMPTY_TEXT
        assert p.count_label.text() == "0 pinned · 0 supernodes"
        assert not p.clear_button.isEnabled() and not p.group_button.isEnabled()
        assert not p.grab().isNull()
        p.group_selected()  # nothing selected: a message, no exception
        p.ungroup_selected(), p.unpin_selected(), p.clear_all()
        assert p.start_rename() is False
        qtbot.keyClick(p, "g")
        c.set_analysis(None)
        assert p.vertices == [] and not p.grab().isNull()
    finally:
        c.shutdown()


def test_pinning_three_nodes_shows_three_vertices(qtbot, pane, analysis, three):
    for n in three:
        analysis.toggle_pin(n)
    assert pane.stack.currentWidget() is pane.plot_widget
    assert len(pane.vertices) == 3 and len(pane.plot_widget.vertex_scatter.data) == 3
    assert [v.members for v in pane.vertices] == [(n,) for n in three]
    assert pane.count_label.text() == "3 pinned · 0 supernodes"
    np.testing.assert_allclose(pane.edges, expected_edges(analysis, pane.vertices), rtol=1e-5, atol=1e-7)
    assert len(pane.plot_widget.edge_curves) > 0  # the two feature -> logit edges are drawn
    # laid out like the main graph: y = layer row (embeddings 0, logits n_layers + 1)
    layers = analysis.graph.node_layers()
    for v in pane.vertices:
        assert v.y == layers[v.members[0]] + 1
    xy = {(v.x, v.y) for v in pane.vertices}
    assert len(xy) == 3  # no two vertices on one spot
    analysis.toggle_pin(three[0])  # changes from elsewhere redraw the pane
    assert len(pane.vertices) == 2 and pane.count_label.text() == "2 pinned · 0 supernodes"


def test_click_selects_and_follows_in_analysis(qtbot, pane, analysis, three):
    for n in three:
        analysis.toggle_pin(n)
    click(qtbot, pane, 1)
    assert pane.selected_indices() == [1]
    assert analysis.selected == three[1]  # a plain pinned node is also selected on the canvas
    click(qtbot, pane, 2, CTRL)
    assert pane.selected_indices() == [1, 2] and analysis.selected == three[1]
    click(qtbot, pane, 2, CTRL)  # Ctrl-click again removes it
    assert pane.selected_indices() == [1]
    # empty space clears the pane's selection
    corner = QPoint(pane.plot_widget.viewport().width() - 5, 5)
    qtbot.mouseClick(pane.plot_widget.viewport(), LEFT, NO_MOD, corner)
    assert pane.selected_indices() == []
    assert "3 pinned" in pane.count_label.text()


def test_group_with_g_sums_member_edges_then_rename_and_ungroup(qtbot, pane, analysis, three):
    f1, f2, logit = three
    A = analysis.graph.adjacency_matrix
    for n in three:
        analysis.toggle_pin(n)
    click(qtbot, pane, vertex_of(pane, f1))
    click(qtbot, pane, vertex_of(pane, f2), CTRL)
    assert pane.group_button.isEnabled()
    qtbot.keyClick(pane, "g")

    assert len(analysis.supernodes) == 1
    sn = analysis.supernodes[0]
    assert set(sn.members) == {f1, f2}
    assert len(pane.vertices) == 2 and pane.vertices[0].is_supernode
    assert pane.selected_keys() == [("s", sn.id)]  # the new supernode is selected, ready to rename
    assert pane.count_label.text().startswith("3 pinned · 1 supernode")
    s_idx, l_idx = vertex_of(pane, f1), vertex_of(pane, logit)
    assert pane.edges[l_idx, s_idx] == pytest.approx(float(A[logit, f1]) + float(A[logit, f2]), rel=1e-5)
    assert pane.edges[s_idx, l_idx] == pytest.approx(float(A[f1, logit]) + float(A[f2, logit]), abs=1e-7)
    np.testing.assert_allclose(pane.edges, expected_edges(analysis, pane.vertices), rtol=1e-5, atol=1e-7)
    # supernode: mean layer / position of its members
    layers, positions = analysis.graph.node_layers(), analysis.graph.node_positions()
    assert pane.vertices[s_idx].y == pytest.approx(np.mean(layers[[f1, f2]] + 1))
    assert pane.vertices[s_idx].x < pane.vertices[l_idx].x or np.mean(positions[[f1, f2]]) >= positions[logit]

    # rename through the pane
    qtbot.mouseClick(pane.rename_button, LEFT)
    assert pane.rename_edit.isVisible() and pane.rename_edit.text() == sn.name
    qtbot.keyClicks(pane.rename_edit, "capital of")  # the old name is selected, typing replaces it
    qtbot.keyClick(pane.rename_edit, Qt.Key.Key_Return)
    assert analysis.supernodes[0].name == "capital of"
    assert not pane.rename_edit.isVisible()
    assert pane.vertices[s_idx].name == "capital of"
    qtbot.waitUntil(lambda: pane.plot_widget.vertex_labels[s_idx].textItem.toPlainText().endswith("(2)"), timeout=2000)
    assert "(2)" in pane._tip(data=s_idx) or "Supernode of 2" in pane._tip(data=s_idx)

    # ungroup restores the three vertices and the plain edges
    qtbot.mouseClick(pane.ungroup_button, LEFT)
    assert analysis.supernodes == []
    assert len(pane.vertices) == 3
    assert set(pane.selected_keys()) == {("n", f1), ("n", f2)}
    assert pane.edges[vertex_of(pane, logit), vertex_of(pane, f1)] == pytest.approx(float(A[logit, f1]))
    np.testing.assert_allclose(pane.edges, expected_edges(analysis, pane.vertices), rtol=1e-5, atol=1e-7)


def test_hold_g_and_click_groups_on_release(qtbot, pane, analysis, three):
    for n in three:
        analysis.toggle_pin(n)
    settle(qtbot, pane)
    qtbot.keyPress(pane, "g")
    assert "grouping" in pane.count_label.text()
    click(qtbot, pane, 0)  # plain clicks add while g is held
    click(qtbot, pane, 2)
    assert pane.selected_indices() == [0, 2]
    qtbot.keyRelease(pane, "g")
    assert len(analysis.supernodes) == 1 and set(analysis.supernodes[0].members) == {three[0], three[2]}


def test_group_absorbs_a_supernode_and_double_click_renames(qtbot, pane, analysis, three):
    f1, f2, logit = three
    for n in three:
        analysis.toggle_pin(n)
    pane.set_selected([("n", f1), ("n", f2)])
    first = pane.group_selected()
    pane.set_selected([("s", first.id), ("n", logit)])
    qtbot.mouseClick(pane.group_button, LEFT)
    assert len(analysis.supernodes) == 1 and set(analysis.supernodes[0].members) == {f1, f2, logit}
    assert len(pane.vertices) == 1
    settle(qtbot, pane)
    qtbot.mouseDClick(pane.plot_widget.viewport(), LEFT, NO_MOD, pane.vertex_widget_pos(0))
    assert pane.rename_edit.isVisible()
    qtbot.keyClick(pane.rename_edit, Qt.Key.Key_Escape)  # Esc cancels
    assert not pane.rename_edit.isVisible()
    assert analysis.supernodes[0].name == first.name


def test_rename_plain_feature_sets_its_label(qtbot, pane, analysis, three):
    f1 = three[0]
    analysis.toggle_pin(f1)
    click(qtbot, pane, 0)
    qtbot.keyClick(pane, Qt.Key.Key_F2)
    assert pane.rename_edit.isVisible()
    pane.rename_edit.setText("Paris")
    qtbot.keyClick(pane.rename_edit, Qt.Key.Key_Return)
    assert analysis.label_of(f1) == "Paris" and pane.vertices[0].name == "Paris"


def test_unpin_and_clear_buttons(qtbot, pane, analysis, three):
    f1, f2, logit = three
    for n in three:
        analysis.toggle_pin(n)
    pane.set_selected([("n", f1), ("n", f2)])
    pane.group_selected()
    pane.set_selected([("n", logit)])
    qtbot.mouseClick(pane.unpin_button, LEFT)
    assert analysis.pinned == [f1, f2] and len(pane.vertices) == 1
    pane.set_selected([pane.vertices[0].key])
    qtbot.keyClick(pane, Qt.Key.Key_Delete)  # unpinning a supernode unpins its members
    assert analysis.pinned == [] and analysis.supernodes == []
    assert pane.stack.currentWidget() is pane.empty_label
    for n in three:
        analysis.toggle_pin(n)
    qtbot.mouseClick(pane.clear_button, LEFT)
    assert analysis.pinned == [] and pane.vertices == []
    assert pane.count_label.text() == "0 pinned · 0 supernodes"


def test_redraws_on_new_analysis(qtbot, pane, controller, analysis, three):
    for n in three:
        analysis.toggle_pin(n)
    pane.set_selected([pane.vertices[0].key])
    fresh = Analysis(analysis.graph)
    controller.set_analysis(fresh)
    assert pane.vertices == [] and pane.selected_keys() == []
    fresh.toggle_pin(three[2])
    assert len(pane.vertices) == 1


def test_layout_spreads_vertices_of_one_cell():
    rows = [1.0, 1.0, 1.0, 2.0, 1.5]
    cols = [3.0, 3.0, 5.0, 3.0, 4.0]
    x, y, keys = subgraph_layout(rows, cols)
    assert keys == [3.0, 4.0, 5.0]
    assert len({(a, b) for a, b in zip(x, y)}) == 5
    assert abs(x[0] - x[1]) >= 1.0  # same cell: side by side
    assert x[0] < x[4] < x[2] and x[1] < x[4]  # columns keep the order of positions
    assert list(y) == rows
    assert subgraph_layout([], [])[0].size == 0
