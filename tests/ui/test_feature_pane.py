"""Feature detail pane: a real (tiny) graph and feature index; drive the pane with qtbot and check
that the view shows the index's data and that label edits reach the analysis."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QStandardPaths, Qt

from circuit_studio.core.session.analysis import Analysis
from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.features.corpus_text import read_corpus, token_windows
from circuit_studio.core.features.index import FeatureIndex
from circuit_studio.core.features.index_build import build_feature_index
from circuit_studio.core.graph.attribution_graph import AttributionParams
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.synthetic import WORDS, default_hooks, random_transcoders
from circuit_studio.core.graph.display_text import show_token
from circuit_studio.ui.controller import Controller
from circuit_studio.ui.feature.examples import ExampleList
from circuit_studio.ui.feature.index_builder import BUILD_JOB
from circuit_studio.ui.feature.pane import FeaturePane

CONTEXT = 16
PROMPT = "the capital of the state of Dallas is"


@pytest.fixture(scope="module")
def world(tiny_model_folder, tmp_path_factory):
    """Tiny model, random transcoders, a 50-line corpus, its index and a graph (built once)."""
    root = tmp_path_factory.mktemp("feature_pane")
    bundle = load_model(tiny_model_folder("llama"), device="cpu")
    rh, wh = default_hooks("llama")
    tc_dir = root / "transcoders"
    tc_dir.mkdir()
    tc = dataclasses.replace(random_transcoders(n_layers=2, d_model=64, n_features=48, seed=1,
                                                feature_input_hook=rh, feature_output_hook=wh), source=tc_dir)
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
                                for _ in range(50)) + "\n")
    windows = token_windows(bundle.tokenizer, read_corpus(corpus), context=CONTEXT)
    index_path = root / "index.sqlite"
    build_feature_index(bundle, tc, windows, index_path, batch_size=8, top_k=6, corpus_name=corpus.name).close()
    graph = attribute(PROMPT, bundle, tc, AttributionParams(batch_size=32))
    assert graph.n_features > 0
    return dict(bundle=bundle, tc=tc, corpus=corpus, index_path=index_path, graph=graph, root=root)


@pytest.fixture
def controller(world):
    c = Controller()
    c.bundle, c.transcoders = world["bundle"], world["tc"]
    yield c
    c.shutdown()
    if c.feature_index is not None:
        c.feature_index.close()


def _with_index(c: Controller, world) -> Analysis:
    c.open_feature_index(world["index_path"])
    assert c.feature_index is not None
    analysis = Analysis(world["graph"], auto_label=c.feature_index.label)
    c.set_analysis(analysis)
    return analysis


@pytest.fixture
def pane(qtbot, controller):
    p = FeaturePane(controller)
    qtbot.addWidget(p)
    p.resize(460, 900)
    p.show()
    return p


def _strongest_feature(graph) -> int:
    return int(np.argmax([graph.feature_of(n)[3] for n in range(graph.n_features)]))


def _feature_with_examples(analysis, index) -> int:
    g = analysis.graph
    for n in np.argsort([-g.feature_of(n)[3] for n in range(g.n_features)]):
        layer, _, feat, _ = g.feature_of(int(n))
        if index.feature(layer, feat).top_examples:
            return int(n)
    raise AssertionError("no feature of the graph has examples")


def test_feature_node_shows_label_examples_histogram_and_logits(world, controller, pane):
    analysis = _with_index(controller, world)
    index = controller.feature_index
    assert pane.description.isVisible() and "Select a node" in pane.description.text()
    node = _feature_with_examples(analysis, index)
    layer, pos, feat, act = analysis.graph.feature_of(node)
    d = index.feature(layer, feat)

    analysis.select(node)

    assert pane.scroll.isVisible() and not pane.no_index.isVisible()
    assert f"L{layer} #{feat}" in pane.title.text() and f"position {pos}" in pane.title.text()
    # no user label: the automatic one is the greyed placeholder, with the marker
    assert pane.label_edit.text() == "" and pane.label_edit.placeholderText() == index.label(layer, feat)
    assert pane.auto_marker.isVisible() and pane.auto_marker.text() == "auto"
    stats = pane.stats.text()
    assert f"{act / d.max_activation:.0%}" in stats and "Density" in stats
    # top examples: one row per example, tokens and activations from the index
    assert len(pane.example_rows) == len(d.top_examples) > 0
    first = pane.example_rows[0]
    assert first.raw_tokens == d.top_examples[0].tokens
    assert first.activations == pytest.approx(d.top_examples[0].activations)
    assert first.scale == pytest.approx(d.max_activation)
    # bands, strongest first, each saying how many contexts it holds
    assert [s.band.index for s in pane.band_sections] == sorted((b.index for b in d.band_examples), reverse=True)
    for sec in pane.band_sections:
        b = sec.band
        assert (f"{b.n_contexts:,} context" in sec.button.text()) if b.n_contexts else ("no contexts" in
                                                                                         sec.button.text())
        assert len(sec.examples.rows) == len(b.examples)
    # histogram: the index's counts and edges; this prompt's activation marked
    opts = pane.histogram.bars.opts
    assert list(opts["height"]) == list(d.histogram.counts)
    np.testing.assert_allclose(opts["x0"], d.histogram.edges[:-1])
    assert pane.histogram.prompt_line.value() == pytest.approx(act)
    # logit effects
    assert pane.promotes.rowCount() == len(d.top_logits) and pane.suppresses.rowCount() == len(d.bottom_logits)
    assert pane.promotes.item(0, 0).text() == f"'{show_token(d.top_logits[0].token)}'"
    assert float(pane.suppresses.item(0, 1).text()) == pytest.approx(d.bottom_logits[0].value, abs=1e-3)


def test_details_are_cached_per_feature_and_dropped_when_the_index_changes(world, controller, pane):
    analysis = _with_index(controller, world)
    node = _strongest_feature(analysis.graph)
    analysis.select(node)
    layer, _, feat, _ = analysis.graph.feature_of(node)
    d = pane.details_for(layer, feat)
    assert pane.details_for(layer, feat) is d
    controller.model_changed.emit()
    assert pane.details_for(layer, feat) is not d


def test_editing_the_label_updates_the_analysis(qtbot, world, controller, pane):
    analysis = _with_index(controller, world)
    node = _strongest_feature(analysis.graph)
    key = analysis.feature_key(node)
    analysis.select(node)
    auto = controller.feature_index.label(*key)

    pane.label_edit.setFocus()
    qtbot.keyClicks(pane.label_edit, "Texas capital")
    qtbot.keyClick(pane.label_edit, Qt.Key_Return)
    assert analysis.labels[key] == "Texas capital"
    assert analysis.label_of(node) == "Texas capital"  # what the canvas shows
    assert pane.label_edit.text() == "Texas capital" and not pane.auto_marker.isVisible()

    # Esc throws away a half-typed edit
    qtbot.keyClicks(pane.label_edit, " typo")
    qtbot.keyClick(pane.label_edit, Qt.Key_Escape)
    assert pane.label_edit.text() == "Texas capital" and analysis.labels[key] == "Texas capital"

    # emptying the label goes back to the automatic one
    pane.label_edit.selectAll()
    qtbot.keyClick(pane.label_edit, Qt.Key_Delete)
    qtbot.keyClick(pane.label_edit, Qt.Key_Return)
    assert key not in analysis.labels and analysis.label_of(node) == auto
    assert pane.auto_marker.isVisible() and pane.label_edit.placeholderText() == auto

    # a label set elsewhere (another pane, a script) shows here
    analysis.set_label(node, "from the canvas")
    assert pane.label_edit.text() == "from the canvas"


def test_an_edit_in_progress_goes_to_its_own_node_when_the_selection_moves(qtbot, world, controller, pane):
    analysis = _with_index(controller, world)
    g = analysis.graph
    a = _strongest_feature(g)
    b = next(n for n in range(g.n_features) if analysis.feature_key(n) != analysis.feature_key(a))
    analysis.select(a)
    pane.label_edit.setFocus()
    qtbot.keyClicks(pane.label_edit, "first")
    analysis.select(b)  # e.g. a click on the canvas
    assert analysis.labels == {analysis.feature_key(a): "first"}
    assert pane.label_edit.text() == ""


def test_error_token_and_logit_nodes_say_what_they_are(world, controller, pane):
    analysis = _with_index(controller, world)
    g = analysis.graph
    layer, pos = 1, 3
    analysis.select(g.error_offset + layer * g.n_pos + pos)
    text = pane.description.text()
    assert f"MLP reconstruction error at layer {layer}, position {pos}" in text
    assert g.token_strings[pos].strip() in text and "transcoder misses" in text and "Influence" in text
    assert not pane.label_row.isVisible() and not pane.scroll.isVisible()

    analysis.select(g.token_offset + 2)
    assert f"embedding of token '{g.token_strings[2]}' at position 2" in pane.description.text()

    analysis.select(g.logit_offset)
    text = pane.description.text()
    assert f"output token '{g.logit_tokens[0]}'" in text and f"{float(g.logit_probabilities[0]):.3f}" in text

    analysis.select(None)
    assert "Select a node" in pane.description.text()
    controller.set_analysis(None)
    assert "trace a prompt" in pane.description.text()


def test_without_an_index_the_pane_offers_to_build_one_and_builds_it(qtbot, world, controller, pane, tmp_path):
    analysis = Analysis(world["graph"])
    controller.set_analysis(analysis)
    node = _strongest_feature(analysis.graph)
    analysis.select(node)
    assert pane.no_index.isVisible() and not pane.scroll.isVisible()
    assert "No feature index for these transcoders." in pane.no_index.text.text()
    assert pane.no_index.build_button.isVisible() and pane.no_index.build_button.isEnabled()
    assert pane.label_row.isVisible()  # labels work without an index too

    out = tmp_path / "built.sqlite"
    with qtbot.waitSignal(controller.jobs.finished, timeout=30000) as sig:
        assert pane.no_index.build_index(world["corpus"], out, context=CONTEXT) == out
        assert not pane.no_index.build_button.isEnabled()
    assert sig.args[0] == BUILD_JOB and out.is_file()
    assert controller.feature_index is not None and controller.feature_index.path == out.resolve()
    layer, _, feat, _ = analysis.graph.feature_of(node)
    d = controller.feature_index.feature(layer, feat)
    assert pane.scroll.isVisible() and not pane.no_index.isVisible()
    assert len(pane.example_rows) == len(d.top_examples)
    assert list(pane.histogram.bars.opts["height"]) == list(d.histogram.counts)
    assert pane.label_edit.placeholderText() == d.label  # the new index's automatic label


def test_a_failed_build_says_why_and_leaves_the_button_usable(qtbot, world, controller, pane, tmp_path):
    controller.set_analysis(Analysis(world["graph"]))
    controller.analysis.select(_strongest_feature(world["graph"]))
    with qtbot.waitSignal(controller.jobs.failed, timeout=10000):
        pane.no_index.build_index(tmp_path / "missing.txt", tmp_path / "x.sqlite")
    assert "does not exist" in pane.no_index.build_status.text() and pane.no_index.build_button.isEnabled()
    assert controller.feature_index is None


def test_build_is_offered_only_with_model_and_transcoders(world, controller, pane):
    controller.transcoders = None
    controller.set_analysis(Analysis(world["graph"]))
    controller.analysis.select(_strongest_feature(world["graph"]))
    assert pane.no_index.isVisible() and not pane.no_index.build_button.isEnabled()
    assert pane.no_index.build_index(world["corpus"]) is None


def test_default_index_path_next_to_the_transcoders_or_in_the_data_folder(world, controller, pane):
    folder = world["tc"].source
    assert pane.no_index.default_index_path() == folder / "feature_index.sqlite"
    (folder / "feature_index.sqlite").write_bytes(b"")
    try:
        assert pane.no_index.default_index_path() == folder / "feature_index-2.sqlite"  # never overwrites
        # and the existing file is offered
        controller.set_analysis(Analysis(world["graph"]))
        controller.analysis.select(_strongest_feature(world["graph"]))
        assert pane.no_index.open_existing_button.isVisible()
    finally:
        (folder / "feature_index.sqlite").unlink()
    QStandardPaths.setTestModeEnabled(True)
    try:
        controller.transcoders = dataclasses.replace(world["tc"], source=None)
        path = pane.no_index.default_index_path()
        assert path.name == f"{world['tc'].scan}.sqlite" and folder not in path.parents
    finally:
        QStandardPaths.setTestModeEnabled(False)


def test_example_rows_elide_around_the_max_token_and_explain_on_hover(qtbot):
    from circuit_studio.core.features.index import Example

    acts = [0.0] * 40
    acts[30], acts[29] = 4.0, 1.0
    ex = Example(tuple(f" w{i}" for i in range(40)), tuple(acts), 30, 4.0)
    view = ExampleList()
    qtbot.addWidget(view)
    view.set_examples([ex, ex], scale=8.0)
    assert len(view.rows) == 2 and view.height() > 0
    view.resize(view.sizeHint())
    assert view.visible_range(0) == (0, 39)  # everything fits
    view.resize(260, view.height())
    lo, hi = view.visible_range(1)
    assert lo <= 30 <= hi and lo > 0 and hi - lo < 39 and 30 - lo > hi - 30  # more left context
    view.show()
    view.grab()  # paints and records the token cells
    rect = dict(view.rows[1].cells)[30]
    assert view.hit(rect.center()) == (1, 30)
    tip = view.tooltip_at(rect.center())
    assert "' w30'" in tip and "activation 4" in tip and "50% of the feature's max" in tip
    assert "max activation: 4" in view.tooltip_at(QPoint(2, 3))
    assert view.hit(QPoint(5, view.height() + 10)) is None


def test_index_for_other_transcoders_is_reported_not_shown(world, controller, pane, tmp_path):
    analysis = _with_index(controller, world)
    controller.transcoders = dataclasses.replace(
        world["tc"], w_enc=tuple(w[:10] for w in world["tc"].w_enc), b_enc=world["tc"].b_enc[:, :10])
    controller.model_changed.emit()
    analysis.select(_strongest_feature(analysis.graph))
    assert "built for other transcoders" in pane.description.text() and not pane.scroll.isVisible()
    assert isinstance(controller.feature_index, FeatureIndex)


def test_a_feature_without_cached_examples_says_so(world, controller, pane, monkeypatch):
    analysis = _with_index(controller, world)
    index = controller.feature_index
    node = _strongest_feature(analysis.graph)
    layer, _, feat, _ = analysis.graph.feature_of(node)
    d = index.feature(layer, feat)
    empty = dataclasses.replace(d, top_examples=(), band_examples=(), n_active=0, density=0.0, max_activation=0.0)
    monkeypatch.setattr(index, "feature", lambda l, f: empty)
    analysis.select(node)
    assert pane.example_rows == [] and pane.band_sections == []
    assert pane.top_empty.isVisible() and "no cached examples" in pane.top_empty.text()
    assert "never fired" in pane.stats.text()


def test_build_waits_for_a_running_job(qtbot, world, controller, pane):
    import threading

    gate = threading.Event()
    controller.jobs.submit("Tracing", lambda p, c: gate.wait(10))
    try:
        assert pane.no_index.build_index(world["corpus"]) is None
        assert "Tracing" in pane.no_index.build_status.text()
    finally:
        gate.set()
        qtbot.waitUntil(lambda: not controller.jobs.busy, timeout=10000)
