"""One source of truth, through the window: every graph is shown and steered with its own model, transcoders and
feature index; loading never throws away the graph on screen; a reopened session is not "modified" until the
user changes it; the recent-files menus survive a one-item list.

Whole-window tests: qtbot drives the real window (its menus, the prompt bar, the panes) and the assertions are
on what the user sees (menu entries, the window title, labels in the feature pane, the banner over the canvas,
the intervention pane's result)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings

from circuit_studio.core.interventions.contrast import distinct_features
from circuit_studio.core.features.index import FeatureIndex
from circuit_studio.core.synthetic import default_hooks, random_transcoders
from circuit_studio.core.transcoders.writing import save_transcoders
from circuit_studio.ui.controller import DEMO
from circuit_studio.ui.main_window import MainWindow
from window_helpers import new_window

PROMPT = "the capital of the state of Dallas is"
A = "The capital of the state containing Dallas is"
B = "The capital of the state containing San Diego is"
K = 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model_folder):
    root = tmp_path_factory.mktemp("workspace")
    model = root / "model"
    shutil.copytree(tiny_model_folder("llama"), model)
    rh, wh = default_hooks("llama")
    save_transcoders(random_transcoders(n_layers=2, d_model=64, n_features=64, seed=2, feature_input_hook=rh,
                                        feature_output_hook=wh), root / "tc")
    return {"model": model, "tc": root / "tc"}


def _window(qtbot, tmp_path, name="w", settings: QSettings | None = None) -> MainWindow:
    return new_window(qtbot, tmp_path, name, size=(1400, 900), settings=settings)


def _action(menu, text: str):
    for action in menu.actions():
        if action.text().replace("&", "") == text:
            return action
    raise AssertionError(f"no menu entry {text!r} in {[a.text() for a in menu.actions()]}")


def _file_menu(w):
    return next(a.menu() for a in w.menuBar().actions() if a.text() == "&File")


def _load(qtbot, w, model, transcoders, timeout=30_000):
    """File ▸ Open model folder… with both folders; waits until the status bar says they are loaded."""
    w.load(str(model), str(transcoders))
    assert w.controller.jobs.busy
    qtbot.waitUntil(lambda: "Transcoders:" in w.loaded_label.text() and not w.controller.jobs.busy, timeout=timeout)


def _trace(qtbot, w, prompt):
    c = w.controller
    before = c.analysis
    w.prompt_bar.prompt.setEditText(prompt)
    w.prompt_bar.trace()
    qtbot.waitUntil(lambda: c.analysis is not None and c.analysis is not before and not c.jobs.busy, timeout=90_000)
    assert c.analysis.graph.prompt == prompt
    return c.analysis


def _steered(qtbot, w, node: int, multiple: float = 0.0):
    pane = w.interventions
    row = pane.add_node(node)
    assert pane.set_multiple(row, multiple)
    qtbot.waitUntil(lambda: pane.last_result is not None and not pane.pending and not w.controller.jobs.busy,
                    timeout=30_000)


def _top_feature(a) -> int:
    return int(np.argmax(a.pruner.node_influence[: a.graph.error_offset]))


# ---------------------------------------------------------------- recent menus

def test_recent_menus_with_one_entry_list_it_whole(qtbot, tmp_path, folders):
    """QSettings (INI) reads a one-item list back as a plain string: the menus showed its characters."""
    ini = tmp_path / "settings.ini"
    w = _window(qtbot, tmp_path, settings=QSettings(str(ini), QSettings.IniFormat))
    _load(qtbot, w, folders["model"], folders["tc"])  # File ▸ Open model folder…: one recent model
    assert w.sessions.save_as(tmp_path / "only.cs-session")  # one recent session
    w.close()
    w.settings.sync()
    # the next start of the app: a file this process has not read yet (Qt caches a file's values per process)
    next_start = tmp_path / "next-start.ini"
    shutil.copy(ini, next_start)
    again = _window(qtbot, tmp_path, "again", settings=QSettings(str(next_start), QSettings.IniFormat))
    assert [a.text() for a in again.recent_menu.actions()] == [f"{folders['model'].name}  +  {folders['tc'].name}"]
    assert again.recent_menu.isEnabled()
    again.recent_sessions_menu.aboutToShow.emit()  # what opening the menu does
    assert [a.text() for a in again.recent_sessions_menu.actions()] == ["only.cs-session"]
    again.close()


# ---------------------------------------------------------------- no spurious "modified"

def test_a_reopened_session_is_not_marked_modified(qtbot, tmp_path, folders):
    w = _window(qtbot, tmp_path)
    _load(qtbot, w, folders["model"], folders["tc"])
    a = _trace(qtbot, w, PROMPT)
    _steered(qtbot, w, _top_feature(a))
    path = tmp_path / "study.cs-session"
    assert w.sessions.save_as(path)
    assert w.sessions.open(path)  # with the model loaded: its interventions are recomputed
    qtbot.waitUntil(lambda: w.interventions.last_result is not None and not w.interventions.pending, timeout=30_000)
    qtbot.wait(3000)  # results arrive, the canvas settles, autosave ticks: none of it is a change by the user
    assert not w.windowTitle().startswith("*"), w.windowTitle()
    assert w.windowTitle() == "study.cs-session — Circuit Studio"
    w.close()

    fresh = _window(qtbot, tmp_path, "fresh")  # and without the model: shown from the file
    assert fresh.sessions.open(path)
    qtbot.wait(3000)
    assert fresh.windowTitle() == "study.cs-session — Circuit Studio"
    fresh.controller.analysis.toggle_pin(_top_feature(fresh.controller.analysis))  # a real change marks it
    assert fresh.windowTitle().startswith("*")
    fresh.close()


# ---------------------------------------------------------------- loading keeps the graph on screen

def test_loading_a_model_keeps_the_graph_and_its_unsaved_work(qtbot, tmp_path, folders):
    w = _window(qtbot, tmp_path)
    c = w.controller
    _load(qtbot, w, folders["model"], folders["tc"])
    a = _trace(qtbot, w, PROMPT)
    node = _top_feature(a)
    a.toggle_pin(node)  # unsaved work
    visible = w.canvas.visible_nodes().tolist()
    assert w.windowTitle().startswith("*")
    _load(qtbot, w, folders["model"], folders["tc"])  # File ▸ Open model folder… again (or another model): the graph stays
    assert c.analysis is a and c.analysis.pinned == [node]
    assert w.canvas.visible_nodes().tolist() == visible
    assert w.windowTitle().startswith("*"), "the unsaved work is still unsaved, not gone"
    w.close()


def test_opening_the_model_keeps_a_reopened_graph(qtbot, tmp_path, folders):
    w = _window(qtbot, tmp_path)
    _load(qtbot, w, folders["model"], folders["tc"])
    a = _trace(qtbot, w, PROMPT)
    node = _top_feature(a)
    a.toggle_pin(node)
    _steered(qtbot, w, node)
    path = tmp_path / "recovered.cs-session"
    assert w.sessions.save_as(path)
    w.close()

    again = _window(qtbot, tmp_path, "again")  # as after a crash (or a reopen): the graph is back, the model is not
    assert again.sessions.open(path)
    c = again.controller
    assert c.analysis is not None and c.bundle is None
    graph = c.analysis.graph
    _load(qtbot, again, folders["model"], folders["tc"])  # File ▸ Open model folder…
    assert c.analysis is not None and c.analysis.graph is graph and c.analysis.pinned == [node]
    qtbot.waitUntil(lambda: again.interventions.last_result is not None and not again.interventions.pending,
                    timeout=30_000)  # the saved intervention now runs against the loaded model
    assert again.interventions.last_result.interventions
    assert "not loaded" not in again.provenance.full_text()
    again.close()


def test_opening_the_demo_folders_finds_their_feature_index(qtbot, tmp_path):
    w = _window(qtbot, tmp_path)
    c = w.controller
    _load(qtbot, w, DEMO / "model", DEMO / "clt", timeout=60_000)  # the model dialog's folders, not Open demo
    assert c.feature_index is not None and Path(c.feature_index.path).name == "clt_features.sqlite"
    assert "Feature index loaded" in w.loaded_label.text()
    w.close()


# ---------------------------------------------------------------- each graph with its own transcoders

def test_per_layer_graph_keeps_its_labels_and_interventions_after_the_cross_layer_demo(qtbot, tmp_path):
    w = _window(qtbot, tmp_path)
    c = w.controller
    file = _file_menu(w)
    _action(file, "Open demo").trigger()
    qtbot.waitUntil(lambda: c.feature_index is not None and not c.jobs.busy, timeout=60_000)
    b = _trace(qtbot, w, B)
    gb, influence_b = b.graph, b.pruner.node_influence
    a = _trace(qtbot, w, A)
    ga = a.graph
    city_a, city_b = ga.n_pos - 2, gb.n_pos - 2
    ours = distinct_features(ga, a.pruner.node_influence, city_a, gb, city_b)[:K]
    theirs = distinct_features(gb, influence_b, city_b, ga, city_a)[:K]
    pane = w.interventions
    for d in ours:
        assert pane.set_multiple(pane.add_node(d.node), 0.0)
    for d in theirs:
        row = pane.add_feature(d.layer, d.feature, city_a)
        assert pane.set_multiple(row, d.activation / pane.rows[row].targets[0].base)
    qtbot.waitUntil(lambda: not pane.pending and pane.last_result is not None
                    and len(pane.last_result.interventions) == 2 * K and not c.jobs.busy, timeout=30_000)
    tok = c.bundle.tokenizer
    node = ours[0].node
    layer, _, feature, _ = ga.feature_of(node)
    with FeatureIndex.open(DEMO / "features.sqlite") as plt_index, \
            FeatureIndex.open(DEMO / "clt_features.sqlite") as clt_index:
        plt_label, clt_label = plt_index.label(layer, feature), clt_index.label(layer, feature)
    assert plt_label != clt_label
    a.select(node)
    assert w.features.label_edit.placeholderText() == plt_label

    _action(file, "Open demo with its cross-layer transcoder").trigger()
    qtbot.waitUntil(lambda: "clt" in w.loaded_label.text() and not c.jobs.busy, timeout=60_000)
    assert c.analysis is a, "loading the cross-layer transcoder leaves the graph on screen"
    assert w.features.label_edit.placeholderText() == plt_label, "…with its own labels"
    assert "per-layer" in w.provenance.full_text()
    clt = _trace(qtbot, w, A)  # the same prompt, traced with the cross-layer transcoder
    assert "cross-layer" in w.provenance.full_text()
    clt.select(0)  # the feature pane shows a feature of the cross-layer graph now

    w.graphs_menu.aboutToShow.emit()  # Graph ▸ Graphs in this session
    entries = [act.text() for act in w.graphs_menu.actions()]
    assert len(entries) == 3 and len(set(entries)) == 3, entries
    assert [("per-layer" in e, "cross-layer" in e) for e in entries] == [(True, False), (True, False), (False, True)]
    w.graphs_menu.actions()[1].trigger()  # back to the per-layer graph of A

    a2 = c.analysis
    assert a2.graph is ga and "per-layer" in w.provenance.full_text()
    assert "not loaded" not in w.provenance.full_text()
    a2.select(node)
    assert w.features.label_edit.placeholderText() == plt_label, "the per-layer index's label, not the CLT's"
    assert a2.label_of(node) == plt_label
    assert [r.multiple for r in pane.rows] == [0.0] * K + [pytest.approx(d.activation / r.targets[0].base)
                                                          for d, r in zip(theirs, pane.rows[K:])]
    before, after = pane.last_result.probabilities()
    assert tok.decode([int(np.argmax(after))]) == " Sacramento" and after.max() > 0.9
    assert pane.update_now()  # run again: against the graph's own (per-layer) transcoders
    qtbot.waitUntil(lambda: not pane.pending and not c.jobs.busy, timeout=30_000)
    before, after = pane.last_result.probabilities()
    assert tok.decode([int(np.argmax(before))]) == " Austin"
    assert tok.decode([int(np.argmax(after))]) == " Sacramento" and after.max() > 0.9
    bars = dict(zip((t.token for t in pane.last_result.top), (t.after for t in pane.last_result.top)))
    assert bars[" Sacramento"] > 0.9
    rings = w.canvas.activation_rings()
    assert all(rings.get(d.node) == pytest.approx(-1.0) for d in ours)
    w.graphs_menu.aboutToShow.emit()
    w.graphs_menu.actions()[2].trigger()  # the cross-layer graph is current in the file
    path = tmp_path / "both.cs-session"
    assert w.sessions.save_as(path)
    w.close()

    # another day: the per-layer demo is open, the session's current graph is a cross-layer one
    again = _window(qtbot, tmp_path, "again")
    c = again.controller
    _action(_file_menu(again), "Open demo").trigger()
    qtbot.waitUntil(lambda: c.feature_index is not None and not c.jobs.busy, timeout=60_000)
    assert again.sessions.open(path)
    assert "cross-layer" in again.provenance.full_text()
    assert "per-layer" not in again.provenance.full_text() and c.feature_index is None, \
        "never another set's index, not even for a moment"
    qtbot.waitUntil(lambda: not c.jobs.busy and c.transcoders is not None, timeout=60_000)  # loaded in the background
    assert c.transcoders.kind == "clt" and Path(c.feature_index.path).name == "clt_features.sqlite"
    assert "not loaded" not in again.provenance.full_text()
    assert "plt" in again.loaded_label.text(), "what new traces use is still the per-layer demo"
    again.close()
