"""Graph ▸ Compare graphs…: pick two graphs of the session, click a diff row, both canvases select it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt

from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.graph.compare import CHANGED, ONLY_A
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.transcoders.loading import load_transcoders
from circuit_studio.core.session.workspace import Binding, Workspace
from circuit_studio.ui.compare_view import CompareView

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"
A = "The capital of the state containing Dallas is"
B = "The capital of the state containing San Diego is"


@pytest.fixture(scope="module")
def demo():
    bundle = load_model(DEMO / "model", device="cpu")
    plt, clt = load_transcoders(DEMO / "transcoders", device="cpu"), load_transcoders(DEMO / "clt", device="cpu")
    return bundle, plt, clt, attribute(A, bundle, plt), attribute(B, bundle, plt), attribute(A, bundle, clt)


@pytest.fixture
def workspace(demo):
    bundle, plt, clt, ga, gb, gc = demo
    ws = Workspace()
    model = ws.register("model", bundle)
    b_plt, b_clt = (Binding(model, ws.register("transcoders", t)) for t in (plt, clt))
    ids = [ws.add_graph(ga, b_plt, title="Dallas"), ws.add_graph(gb, b_plt, title="San Diego"),
           ws.add_graph(gc, b_clt, title="Dallas (CLT)")]
    return ws, ids


def make_view(qtbot, ws, a, b) -> CompareView:
    view = CompareView(ws, graph_a=a, graph_b=b)
    qtbot.addWidget(view)
    view.show()
    qtbot.waitExposed(view)
    return view


def click_row(qtbot, view: CompareView, i: int) -> None:
    table = view.diff_table
    table.scrollToItem(table.item(i, 1))
    rect = table.visualItemRect(table.item(i, 1))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_clicking_a_diff_row_selects_it_on_both_canvases(qtbot, workspace):
    ws, (dallas, san_diego, _) = workspace
    view = make_view(qtbot, ws, dallas, dallas)
    # pick the two graphs as an analyst does, in the combo boxes
    view.combo_b.setCurrentIndex(view.combo_b.findData(san_diego))
    cmp = view.comparison
    assert cmp.aligned and view.diff_table.rowCount() == len(cmp.rows) > 0 and view.diff_table.isVisible()
    assert view.controller_a.analysis.graph.prompt == A and view.controller_b.analysis.graph.prompt == B
    shown_a, shown_b = set(view.canvas_a.visible_nodes().tolist()), set(view.canvas_b.visible_nodes().tolist())
    i = next(i for i, r in enumerate(cmp.rows) if r.kind == CHANGED and r.node_a in shown_a and r.node_b in shown_b)
    click_row(qtbot, view, i)
    row = cmp.rows[i]
    assert view.controller_a.analysis.selected == row.node_a
    assert view.controller_b.analysis.selected == row.node_b
    # both canvases drew the selection (its caption, its edges)
    assert row.node_a in view.canvas_a.shown_labels() and row.node_b in view.canvas_b.shown_labels()
    # a feature only in A: selected on A, nothing on B
    j = next(j for j, r in enumerate(cmp.rows) if r.kind == ONLY_A)
    click_row(qtbot, view, j)
    assert view.controller_a.analysis.selected == cmp.rows[j].node_a
    assert view.controller_b.analysis.selected is None
    # the main window's graph is untouched
    assert ws.analysis.selected is None
    view.close()


def test_different_transcoders_show_what_each_explains(qtbot, workspace):
    ws, (dallas, _, dallas_clt) = workspace
    view = make_view(qtbot, ws, dallas, dallas_clt)
    assert not view.comparison.aligned and not view.diff_table.isVisible()
    for browser, ctl in ((view.explains_a, view.controller_a), (view.explains_b, view.controller_b)):
        r, c = ctl.analysis.scores
        assert f"Replacement {r:.2f} · Completeness {c:.2f}" in browser.toPlainText()
    assert "cannot be aligned" in view.summary.text()
    view.close()


def test_the_graph_menu_opens_it(qtbot, tmp_path, demo):
    from circuit_studio.ui.controller import Controller
    from circuit_studio.ui.main_window import MainWindow

    bundle, plt, _, ga, gb, _ = demo
    c = Controller()
    c.bundle, c.transcoders = bundle, plt
    w = MainWindow(c, settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat), autosave_dir=tmp_path / "auto")
    w.sessions.answer_unsaved = "discard"
    qtbot.addWidget(w)
    binding = c.workspace.live().binding
    c.workspace.add_graph(ga, binding)
    c.workspace.add_graph(gb, binding)
    graph_menu = next(a.menu() for a in w.menuBar().actions() if a.text() == "&Graph")
    action = next(a for a in graph_menu.actions() if a.text() == "&Compare graphs…")
    action.trigger()
    view = w.findChild(CompareView)
    assert view is not None and view.comparison.aligned
    assert {view.combo_a.currentData(), view.combo_b.currentData()} == set(c.workspace.graphs)
    view.close()
    w.close()
