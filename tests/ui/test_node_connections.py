"""Node connections pane: build an Analysis of a real (parity) graph, drive the pane with qtbot, and
check the view and the model against the adjacency matrix."""

from __future__ import annotations


import numpy as np
import pytest
from PySide6.QtCore import Qt

from parity_cases import case_dirs, reference_graph

from circuit_studio.core.graph.adjacency import Adjacency, Block
from circuit_studio.core.session.analysis import Analysis
from circuit_studio.ui.controller import Controller
from circuit_studio.ui.node_connections import (EMPTY_TEXT, INPUTS_NEG, INPUTS_POS, LISTS,
                                                 NODE_ROLE, OUTPUTS_NEG, OUTPUTS_POS, TOP_N, VALUE_ROLE,
                                                 ConnectionsModel, NodeConnectionsPane, node_connections)


@pytest.fixture
def pane(qtbot, controller):
    p = NodeConnectionsPane(controller)
    qtbot.addWidget(p)
    p.resize(1000, 700)
    p.show()
    qtbot.waitExposed(p)
    return p


def busiest_node(analysis: Analysis) -> int:
    """The node with the most non-zero inputs (a logit in these graphs)."""
    return int(np.argmax((analysis.graph.adjacency_matrix != 0).sum(axis=1)))


def feature_with_both(analysis: Analysis) -> int:
    """A feature node with non-zero inputs and outputs of both signs."""
    A = analysis.graph.adjacency_matrix
    for n in np.argsort(-(A != 0).sum(axis=1)):
        n = int(n)
        if n >= analysis.graph.n_features:
            continue
        row, col = A[n], A[:, n]
        if (row > 0).any() and (row < 0).any() and (col > 0).any() and (col < 0).any():
            return n
    pytest.skip("no feature with inputs and outputs of both signs in this graph")


def rows(model: ConnectionsModel) -> list[tuple[int, float, float]]:
    out = []
    for r in range(model.rowCount()):
        out.append((model.index(r, 0).data(NODE_ROLE), model.index(r, ConnectionsModel.WEIGHT).data(VALUE_ROLE),
                    model.index(r, ConnectionsModel.SHARE).data(VALUE_ROLE)))
    return out


def show_everything(pane: NodeConnectionsPane) -> None:
    pane.only_kept.setChecked(False)
    pane.show_all.setChecked(True)


# ---- tests ----

def test_empty_states_render(qtbot):
    c = Controller()
    try:
        p = NodeConnectionsPane(c)
        qtbot.addWidget(p)
        p.show()
        assert p.stack.currentWidget() is p.empty_label
        assert "Open or trace a graph" in p.empty_label.text()
        assert not p.grab().isNull()
        c.set_analysis(Analysis(reference_graph(case_dirs()[0])))
        assert p.stack.currentWidget() is p.empty_label
        assert p.empty_label.text() == EMPTY_TEXT
        assert all(m.rowCount() == 0 for m in p.models.values())
        c.analysis.select(0)
        assert p.stack.currentWidget() is not p.empty_label
        c.analysis.select(None)
        assert p.empty_label.text() == EMPTY_TEXT and p.stack.currentWidget() is p.empty_label
        c.set_analysis(None)
        assert not p.grab().isNull()
    finally:
        c.shutdown()


def test_models_pass_qtmodeltester(pane, analysis, qtmodeltester):
    qtmodeltester.check(pane.models[INPUTS_POS])  # empty
    analysis.select(busiest_node(analysis))
    show_everything(pane)
    for key in LISTS:
        qtmodeltester.check(pane.models[key])
    analysis.select(feature_with_both(analysis))
    for key in LISTS:
        assert pane.models[key].rowCount() > 0, key
        qtmodeltester.check(pane.models[key])


def test_input_shares_sum_to_one(pane, analysis):
    show_everything(pane)
    A = analysis.graph.adjacency_matrix
    for node in (busiest_node(analysis), feature_with_both(analysis)):
        analysis.select(node)
        got = rows(pane.models[INPUTS_POS]) + rows(pane.models[INPUTS_NEG])
        assert sum(share for _, _, share in got) == pytest.approx(1.0, abs=1e-9)
        # every non-zero input is listed once, with its weight and |A[n, s]| / Σ|A[n, :]|
        expected = {int(s) for s in np.flatnonzero(A[node]) if s != node}
        assert {n for n, _, _ in got} == expected
        total = np.abs(A[node].astype(np.float64)).sum()
        for s, w, share in got:
            assert w == pytest.approx(float(A[node, s]))
            assert share == pytest.approx(abs(float(A[node, s])) / total, rel=1e-6)


def test_output_shares_are_of_the_targets_input(pane, analysis):
    show_everything(pane)
    A = analysis.graph.adjacency_matrix
    node = feature_with_both(analysis)
    analysis.select(node)
    got = rows(pane.models[OUTPUTS_POS]) + rows(pane.models[OUTPUTS_NEG])
    assert {n for n, _, _ in got} == {int(t) for t in np.flatnonzero(A[:, node]) if t != node}
    for t, w, share in got:
        assert w == pytest.approx(float(A[t, node]))
        assert share == pytest.approx(abs(float(A[t, node])) / np.abs(A[t].astype(np.float64)).sum(), rel=1e-6)
    tip = pane.models[OUTPUTS_POS].headerData(ConnectionsModel.SHARE, Qt.Orientation.Horizontal,
                                              Qt.ItemDataRole.ToolTipRole)
    assert "target" in tip and "|A[target, selected]|" in tip
    tip = pane.models[INPUTS_POS].headerData(ConnectionsModel.SHARE, Qt.Orientation.Horizontal,
                                             Qt.ItemDataRole.ToolTipRole)
    assert "|A[selected, source]|" in tip


def test_rows_sorted_by_abs_weight_and_split_by_sign(pane, analysis):
    show_everything(pane)
    analysis.select(feature_with_both(analysis))
    for key in LISTS:
        weights = np.array([w for _, w, _ in rows(pane.models[key])])
        assert weights.size
        assert (np.diff(np.abs(weights)) <= 0).all(), key
        assert (weights > 0).all() if key.endswith("+") else (weights < 0).all()


def test_top_n_then_show_all(pane, analysis):
    pane.only_kept.setChecked(False)
    node = busiest_node(analysis)
    analysis.select(node)
    n_pos = int((analysis.graph.adjacency_matrix[node] > 0).sum())
    assert n_pos > TOP_N, "the test needs a node with many inputs"
    assert pane.models[INPUTS_POS].rowCount() == TOP_N
    assert f"top {TOP_N} of {n_pos}" in pane.list_titles[INPUTS_POS].text()
    pane.show_all.setChecked(True)
    assert pane.models[INPUTS_POS].rowCount() == n_pos


def test_pruning_filter(pane, analysis):
    node = busiest_node(analysis)
    analysis.select(node)
    mask = analysis.pruned.node_mask
    assert pane.only_kept.isChecked()  # on by default, like the frontends
    shown = [n for key in LISTS for n, _, _ in rows(pane.models[key])]
    assert shown and all(mask[n] for n in shown)
    hidden = int(sum(1 for s in np.flatnonzero(analysis.graph.adjacency_matrix[node] > 0) if not mask[s]))
    assert hidden and f"{hidden} hidden by pruning" in pane.list_titles[INPUTS_POS].text()
    pane.only_kept.setChecked(False)
    assert any(not mask[n] for key in LISTS for n, _, _ in rows(pane.models[key]))
    # new thresholds re-filter the lists
    pane.only_kept.setChecked(True)
    before = pane.models[INPUTS_POS].rowCount() + pane.models[INPUTS_NEG].rowCount()
    analysis.set_thresholds(0.99, 0.999)
    after = pane.models[INPUTS_POS].rowCount() + pane.models[INPUTS_NEG].rowCount()
    assert after >= before
    assert all(analysis.pruned.node_mask[n] for key in LISTS for n, _, _ in rows(pane.models[key]))


def test_click_row_selects_node(qtbot, pane, analysis):
    analysis.select(busiest_node(analysis))
    view, model = pane.views[INPUTS_POS], pane.models[INPUTS_POS]
    target = model.node_at(1)
    rect = view.visualRect(model.index(1, ConnectionsModel.NODE))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())
    assert analysis.selected == target
    assert pane.title_label.text() == analysis.label_of(target)  # the pane now shows the clicked node


def test_ctrl_click_pins_without_selecting(qtbot, pane, analysis):
    node = busiest_node(analysis)
    analysis.select(node)
    view, model = pane.views[INPUTS_NEG], pane.models[INPUTS_NEG]
    target = model.node_at(0)
    rect = view.visualRect(model.index(0, ConnectionsModel.NODE))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, rect.center())
    assert target in analysis.pinned
    assert analysis.selected == node
    assert model.index(0, ConnectionsModel.NODE).data(Qt.ItemDataRole.FontRole).bold()
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, rect.center())
    assert target not in analysis.pinned


def test_enter_selects_current_row_and_pin_button(qtbot, pane, analysis):
    analysis.select(busiest_node(analysis))
    view, model = pane.views[INPUTS_POS], pane.models[INPUTS_POS]
    target = model.node_at(2)
    view.setCurrentIndex(model.index(2, ConnectionsModel.NODE))
    qtbot.keyClick(view, Qt.Key.Key_Return)
    assert analysis.selected == target
    assert pane.pin_button.text() == "Pin"
    qtbot.mouseClick(pane.pin_button, Qt.MouseButton.LeftButton)
    assert target in analysis.pinned and pane.pin_button.text() == "Unpin"


def test_header_and_labels_follow_the_model(pane, analysis):
    node = feature_with_both(analysis)
    analysis.select(node)
    info = analysis.info(node)
    assert pane.title_label.text() == info.label
    details = pane.details_label.text()
    assert f"L{info.layer}" in details and f"position {info.position}" in details
    assert "activation" in details and "influence" in details
    # relabel a listed feature: its row text changes, the rows stay put
    show_everything(pane)
    model, feature_row = next((m, r) for m in pane.models.values() for r in range(m.rowCount())
                              if m.node_at(r) < analysis.graph.n_features)
    listed = model.node_at(feature_row)
    analysis.set_label(listed, "capital cities")
    assert model.index(feature_row, ConnectionsModel.NODE).data() == "capital cities"
    analysis.set_label(node, "my feature")
    assert pane.title_label.text() == "my feature"


def test_node_connections_function_matches_matrix(graph):
    A = graph.adjacency_matrix
    n = graph.n_nodes
    dense = Adjacency.from_dense(A)
    blocks = Adjacency(n, [Block(np.arange(n), np.arange(n), np.ascontiguousarray(A.T))])  # as attribution holds it
    node = int(np.argmax((A != 0).sum(axis=1)))
    keep = np.zeros(n, dtype=bool)
    keep[::2] = True
    nz = [s for s in np.flatnonzero(A[node]) if s != node]
    for adj in (dense, blocks):
        sums = adj.abs_row_sums(np.float64)
        assert np.allclose(sums, np.abs(A.astype(np.float64)).sum(axis=1))
        c = node_connections(adj, node, inputs=True, keep=keep)
        assert set(c.nodes.tolist()) == {s for s in nz if keep[s]}
        assert c.n_hidden_pos + c.n_hidden_neg == sum(1 for s in nz if not keep[s])
        out = node_connections(adj, node, inputs=False)
        assert set(out.nodes.tolist()) == {t for t in np.flatnonzero(A[:, node]) if t != node}
