"""GraphCanvas: drive the view with qtbot (clicks, Ctrl-clicks, keys, sliders) and check that the
model followed, and that the view follows the model (pruning, selection, pins, labels).

The graph is a real attribution graph (an extra parity case kept in the repository): at the default
thresholds it shows a few dozen nodes and a couple of hundred edges.
"""

from __future__ import annotations


import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from parity_cases import EXTRA_CASES, reference_graph

from circuit_studio.core.session.analysis import Analysis
from circuit_studio.core.graph.attribution_graph import NodeKind
from circuit_studio.ui.canvas import edges
from circuit_studio.ui.canvas import shown_graph
from circuit_studio.ui.canvas.activation_rings import CHANGE_DOWN, CHANGE_TOLERANCE, CHANGE_UP
from circuit_studio.ui.canvas.view import GraphCanvas
from circuit_studio.ui.controller import Controller

CASE = EXTRA_CASES / "llama_relu_skip"


@pytest.fixture(scope="module")
def graph():
    return reference_graph(CASE)


@pytest.fixture
def controller(qtbot):
    c = Controller()
    yield c
    c.shutdown()


@pytest.fixture
def analysis(controller, graph):
    a = Analysis(graph)
    controller.set_analysis(a)
    return a


def make_canvas(qtbot, controller) -> GraphCanvas:
    canvas = GraphCanvas(controller)
    qtbot.addWidget(canvas)
    canvas.resize(1100, 650)
    canvas.show()
    qtbot.waitExposed(canvas)
    canvas.fit()
    return canvas


@pytest.fixture
def canvas(qtbot, controller, analysis):
    return make_canvas(qtbot, controller)


def incident_edges(analysis: Analysis, node: int) -> int:
    """Kept edges (non-zero weight) into or out of `node`, straight from the pruning result."""
    t, s = analysis.pruned.kept_edges()
    w = analysis.graph.adjacency_matrix[t, s]
    return int((((t == node) | (s == node)) & (w != 0)).sum())


def shown_of_kind(canvas: GraphCanvas, analysis: Analysis, kind: NodeKind) -> list[int]:
    return [int(n) for n in canvas.visible_nodes() if analysis.graph.kind_of(int(n)) is kind]


def empty_point(canvas: GraphCanvas) -> QPoint:
    """A point inside the plot area with no node within the picking radius."""
    vp = canvas.viewport()
    for y in range(20, vp.height() - 40, 15):
        for x in range(70, vp.width() - 20, 15):
            p = QPoint(x, y)
            if canvas.node_at(p) is None and canvas.plot.getPlotItem().getViewBox().sceneBoundingRect().contains(
                    canvas.plot.mapToScene(p)):
                return p
    raise AssertionError("no empty spot on the canvas")


# ---- the view shows the model ----

def test_shows_the_pruned_graph(canvas, analysis):
    pr = analysis.pruned
    assert np.array_equal(canvas.visible_nodes(), np.flatnonzero(pr.node_mask))
    t, s = pr.kept_edges()
    assert canvas.visible_edges() == int((analysis.graph.adjacency_matrix[t, s] != 0).sum())
    hidden = analysis.hidden_counts()
    assert hidden["features"] > 1 and hidden["errors"] > 1  # plural words below
    assert canvas.hidden_label.text() == (f"{hidden['shown']} nodes shown · {hidden['features']} features and "
                                          f"{hidden['errors']} errors hidden by thresholds")
    r, c = analysis.scores
    assert f"Replacement {r:.2f}" in canvas.scores_label.text()
    assert f"Completeness {c:.2f}" in canvas.scores_label.text()
    # every shown node is on screen, inside the plot
    vp = canvas.viewport().rect()
    for node in canvas.visible_nodes():
        assert vp.contains(canvas.node_screen_pos(int(node)))


def test_hidden_node_has_no_screen_position(canvas, analysis):
    hidden = int(np.flatnonzero(~analysis.pruned.node_mask)[0])
    assert canvas.node_screen_pos(hidden) is None


# ---- mouse and keys drive the model ----

def test_click_selects_and_highlights_its_edges(qtbot, canvas, analysis):
    node = shown_of_kind(canvas, analysis, NodeKind.FEATURE)[0]
    with qtbot.waitSignal(canvas.node_clicked) as clicked:
        qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, pos=canvas.node_screen_pos(node))
    assert clicked.args == [node]
    assert analysis.selected == node
    assert canvas.highlighted_edges() == incident_edges(analysis, node) > 0
    assert node in canvas.shown_labels()


def test_ctrl_click_pins_and_unpins(qtbot, canvas, analysis):
    node = shown_of_kind(canvas, analysis, NodeKind.FEATURE)[1]
    pos = canvas.node_screen_pos(node)
    qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, pos)
    assert analysis.pinned == [node]
    assert analysis.selected is None  # pinning is not selecting
    assert node in canvas.shown_labels()
    qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, pos)
    assert analysis.pinned == []
    assert node not in canvas.shown_labels()


def test_escape_clears_the_selection(qtbot, canvas, analysis):
    node = shown_of_kind(canvas, analysis, NodeKind.FEATURE)[0]
    qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, pos=canvas.node_screen_pos(node))
    assert analysis.selected == node
    qtbot.keyClick(canvas.plot, Qt.Key.Key_Escape)
    assert analysis.selected is None
    assert canvas.highlighted_edges() == 0
    analysis.select(node)
    qtbot.keyClick(canvas, Qt.Key.Key_Escape)  # from anywhere in the canvas
    assert analysis.selected is None


def test_click_on_empty_space_clears_the_selection(qtbot, canvas, analysis):
    analysis.select(shown_of_kind(canvas, analysis, NodeKind.FEATURE)[0])
    qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, pos=empty_point(canvas))
    assert analysis.selected is None
    assert canvas.highlighted_edges() == 0


def test_hover_shows_the_node(qtbot, canvas, analysis):
    node = shown_of_kind(canvas, analysis, NodeKind.FEATURE)[0]
    with qtbot.waitSignal(canvas.node_hovered, timeout=2000):
        qtbot.mouseMove(canvas.viewport(), canvas.node_screen_pos(node) + QPoint(3, 2))
    assert canvas.hovered == node
    info = analysis.info(node)
    text = canvas.tooltip_html(node)
    for part in (info.label, f"L{info.layer}", f"position {info.position}", "activation", "influence"):
        assert part in text


# ---- model changes reach the view ----

def test_every_selection_highlights_exactly_its_kept_edges(monkeypatch, canvas, analysis):
    calls = []
    monkeypatch.setattr(shown_graph, "layered_layout", lambda *a: calls.append(a))  # must not be needed
    positions = {int(n): canvas.node_screen_pos(int(n)) for n in canvas.visible_nodes()}
    for node in positions:
        analysis.select(node)
        assert canvas.highlighted_edges() == incident_edges(analysis, node)
    analysis.toggle_pin(next(iter(positions)))
    analysis.select(None)
    assert canvas.highlighted_edges() == 0
    assert calls == []  # selection and pins never re-layout
    assert {int(n): canvas.node_screen_pos(int(n)) for n in canvas.visible_nodes()} == positions


def test_labels_follow_set_label(canvas, analysis):
    node = shown_of_kind(canvas, analysis, NodeKind.FEATURE)[0]
    analysis.select(node)
    assert canvas.shown_labels()[node] == analysis.label_of(node)
    analysis.set_label(node, "capital city")
    assert "capital city" in canvas.shown_labels()[node]
    assert "capital city" in canvas.tooltip_html(node)
    other = shown_of_kind(canvas, analysis, NodeKind.FEATURE)[1]
    analysis.toggle_pin(other)
    analysis.set_label(other, "state names")
    assert canvas.shown_labels() == {node: "capital city", other: "state names"}


def test_slider_moves_reprune_live(qtbot, canvas, analysis):
    before_text, before_nodes = canvas.hidden_label.text(), canvas.visible_nodes().size
    prunes = []
    analysis.subscribe(lambda aspect: prunes.append(aspect) if aspect.value == "pruning" else None)
    for value in (70, 65, 60):  # a drag: the debounce prunes once, at the last value
        canvas.node_slider.setValue(value)
    assert canvas.toolbar.node_value.text() == "0.60"
    qtbot.waitUntil(lambda: analysis.node_threshold == pytest.approx(0.60), timeout=3000)
    assert len(prunes) == 1
    assert canvas.hidden_label.text() != before_text
    assert canvas.visible_nodes().size != before_nodes
    assert np.array_equal(canvas.visible_nodes(), np.flatnonzero(analysis.pruned.node_mask))

    nodes_before = canvas.visible_edges()
    canvas.edge_slider.setValue(850)
    canvas.edge_slider.sliderReleased.emit()  # releasing the handle prunes at once
    assert analysis.edge_threshold == pytest.approx(0.85)
    assert canvas.visible_edges() < nodes_before
    assert canvas.visible_edges() == int(analysis.pruned.kept_edges()[0].size)


def test_thresholds_set_elsewhere_move_the_sliders(canvas, analysis):
    analysis.set_thresholds(0.9, 0.95)
    assert canvas.node_slider.value() == 90 and canvas.edge_slider.value() == 950
    assert np.array_equal(canvas.visible_nodes(), np.flatnonzero(analysis.pruned.node_mask))


def test_find_selects_by_label(qtbot, canvas, analysis):
    node = shown_of_kind(canvas, analysis, NodeKind.FEATURE)[2]
    analysis.set_label(node, "Texas capital")
    qtbot.keyClicks(canvas.find_box, "texas")
    qtbot.keyClick(canvas.find_box, Qt.Key.Key_Return)
    assert analysis.selected == node


def wheel(canvas: GraphCanvas, pos: QPoint, steps: int) -> None:
    vp = canvas.viewport()
    QApplication.sendEvent(vp, QWheelEvent(QPointF(pos), QPointF(vp.mapToGlobal(pos)), QPoint(0, 0),
                                           QPoint(0, 120 * steps), Qt.MouseButton.NoButton,
                                           Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False))


def test_wheel_zooms_and_fit_restores(qtbot, canvas, analysis):
    vb = canvas.plot.getPlotItem().getViewBox()
    fitted = vb.viewRange()
    wheel(canvas, canvas.viewport().rect().center(), 3)
    (x0, x1), _ = vb.viewRange()
    assert x1 - x0 < 0.9 * (fitted[0][1] - fitted[0][0])  # zoomed in
    zoomed = vb.viewRange()
    analysis.set_thresholds(0.9, 0.98)  # a zoomed view is kept when the graph is re-pruned
    assert np.allclose(vb.viewRange(), zoomed)
    qtbot.mouseClick(canvas.fit_button, Qt.MouseButton.LeftButton)
    (x0, x1), (y0, y1) = vb.viewRange()
    for node in canvas.visible_nodes():  # the whole graph in view again
        assert canvas.viewport().rect().contains(canvas.node_screen_pos(int(node)))
    assert x1 - x0 > (zoomed[0][1] - zoomed[0][0])


def test_new_analysis_replaces_the_view(canvas, controller, graph):
    other = Analysis(graph, node_threshold=0.6, edge_threshold=0.9)
    controller.set_analysis(other)
    assert np.array_equal(canvas.visible_nodes(), np.flatnonzero(other.pruned.node_mask))
    assert canvas.node_slider.value() == 60


# ---- edge cases ----

def test_no_analysis(qtbot, controller):
    canvas = make_canvas(qtbot, controller)
    assert controller.analysis is None
    assert canvas.visible_nodes().size == 0 and canvas.highlighted_edges() == 0
    assert not canvas.node_slider.isEnabled()
    qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(50, 50))
    qtbot.keyClick(canvas, Qt.Key.Key_Escape)
    canvas.fit()
    assert canvas.node_screen_pos(0) is None


def test_analysis_then_none(qtbot, canvas, controller, analysis):
    analysis.select(int(canvas.visible_nodes()[0]))
    controller.set_analysis(None)
    assert canvas.visible_nodes().size == 0
    assert canvas.hidden_label.text() == ""
    qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(200, 200))


def test_raster_edge_path(qtbot, monkeypatch, controller, analysis):
    """Above VECTOR_EDGE_LIMIT the edges are rasterised off the GUI thread; the model logic is the same."""
    monkeypatch.setattr(edges, "VECTOR_EDGE_LIMIT", 20)
    canvas = make_canvas(qtbot, controller)
    qtbot.waitUntil(canvas.edges_ready, timeout=5000)
    image = canvas.plot.grab().toImage()
    assert image.pixelColor(0, 0).isValid()
    node = shown_of_kind(canvas, analysis, NodeKind.FEATURE)[0]
    qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, pos=canvas.node_screen_pos(node))
    assert canvas.highlighted_edges() == incident_edges(analysis, node)
    vb = canvas.plot.getPlotItem().getViewBox()
    vb.scaleBy((0.5, 0.5))
    canvas.viewport().repaint()
    qtbot.waitUntil(canvas.edges_ready, timeout=5000)  # a fresh image once the view rests
    canvas.close()


def test_render_svg(tmp_path, canvas, analysis):
    analysis.select(shown_of_kind(canvas, analysis, NodeKind.FEATURE)[0])
    path = tmp_path / "graph.svg"
    canvas.render_svg(str(path))
    text = path.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert text.count("<path") > 10  # edges and glyphs as vectors, not one bitmap
    assert "<image" not in text


# ---- intervention effects ----

def test_activation_change_rings(qtbot, canvas, controller, analysis):
    """Rings on the feature nodes an intervention changed: blue down, orange up, only the shown ones beyond
    the tolerance; the legend says what they mean; None (or a new graph) clears them."""
    from PySide6.QtGui import QColor

    feats = shown_of_kind(canvas, analysis, NodeKind.FEATURE)
    hidden = int(np.flatnonzero(~analysis.pruned.node_mask[: analysis.graph.n_features])[0])
    token = shown_of_kind(canvas, analysis, NodeKind.TOKEN)[0]
    small = CHANGE_TOLERANCE / 2
    changes = {feats[0]: -1.0, feats[1]: 0.4, feats[2]: -0.1, feats[3]: small, hidden: 2.0, token: 1.0}
    controller.set_intervention_changes(changes)  # how the intervention pane reaches the canvas
    assert canvas.activation_rings() == {feats[0]: -1.0, feats[1]: 0.4, feats[2]: -0.1}
    spots = canvas._change_rings.data
    assert len(spots) == 3
    colours = {QColor(p.color()).name() for p in spots["pen"]}
    assert colours == {QColor(CHANGE_DOWN).name(), QColor(CHANGE_UP).name()}
    widths = sorted(p.widthF() for p in spots["pen"])
    assert widths[0] < widths[-1]  # a larger change draws a wider ring
    assert canvas.ring_legend.isVisibleTo(canvas)
    assert "ring: activation change after intervention" in canvas.ring_legend.text()
    assert "1 hidden" in canvas.ring_legend.text()  # never silent about the changed features it cannot show
    assert "1 more changed features are hidden by the thresholds" in canvas.ring_legend.toolTip()
    assert "after intervention: activation -100% (off)" in canvas.tooltip_html(feats[0])
    assert "after intervention" not in canvas.tooltip_html(shown_of_kind(canvas, analysis, NodeKind.LOGIT)[0])
    image = canvas.plot.grab().toImage()  # the rings are drawn where the nodes are
    assert image.pixelColor(0, 0).isValid()
    # re-pruning keeps the rings on the nodes still shown
    analysis.set_thresholds(analysis.node_threshold, analysis.edge_threshold - 0.01)
    assert set(canvas.activation_rings()) == {n for n in (feats[0], feats[1], feats[2]) if n in
                                              set(canvas.visible_nodes().tolist())}
    controller.set_intervention_changes(None)
    assert canvas.activation_rings() == {} and len(canvas._change_rings.data) == 0
    assert not canvas.ring_legend.isVisibleTo(canvas)
    controller.set_intervention_changes({feats[0]: -1.0})
    controller.set_analysis(Analysis(analysis.graph))  # another graph: its nodes are other nodes
    assert canvas.activation_rings() == {}
