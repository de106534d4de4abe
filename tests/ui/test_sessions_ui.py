"""Sessions through the window: an analysis built with the mouse is saved, reopened in a new window
exactly as it was, survives a crash through autosave, and every change can be undone by name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from circuit_studio.core.session.store import load_session
from circuit_studio.core.synthetic import default_hooks, random_transcoders
from circuit_studio.core.transcoders.writing import save_transcoders
from window_helpers import new_window

PROMPT = "the capital of the state of Dallas is"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model_folder):
    root = tmp_path_factory.mktemp("sessions")
    model = root / "model"
    shutil.copytree(tiny_model_folder("llama"), model)
    rh, wh = default_hooks("llama")
    save_transcoders(random_transcoders(n_layers=2, d_model=64, n_features=64, seed=2, feature_input_hook=rh,
                                        feature_output_hook=wh), root / "tc")
    return {"model": model, "tc": root / "tc", "root": root}


def _window(qtbot, tmp_path, name="w"):
    return new_window(qtbot, tmp_path, name, size=(1400, 900), autosave_dir=tmp_path / "autosave")


def _analysis_by_hand(qtbot, w, folders):
    c = w.controller
    w.load(str(folders["model"]), str(folders["tc"]))
    qtbot.waitUntil(lambda: c.transcoders is not None and not c.jobs.busy, timeout=30000)
    w.prompt_bar.prompt.setEditText(PROMPT)
    w.prompt_bar.trace()
    qtbot.waitUntil(lambda: c.analysis is not None and not c.jobs.busy, timeout=60000)
    a = c.analysis
    top = [int(n) for n in np.argsort(-a.pruner.node_influence[: a.graph.error_offset])[:3]]
    for n in top:
        a.toggle_pin(n)
    a.group(top[:2], "capital")
    a.set_label(top[2], "Texas-ish")
    w.canvas.node_slider.setValue(w.canvas.node_slider.value() + 5)
    w.canvas.apply_sliders()
    a.select(top[2])
    row = w.interventions.add_node(top[2])
    w.interventions.set_multiple(row, 0.0)
    qtbot.waitUntil(lambda: w.interventions.last_result is not None and not w.interventions.pending
                    and not c.jobs.busy, timeout=30000)
    w.canvas.plot.getViewBox().scaleBy((0.7, 0.8))
    return top


def _state(w):
    a = w.controller.analysis
    (x0, x1), (y0, y1) = w.canvas.plot.getViewBox().viewRange()
    return {"thresholds": (a.node_threshold, a.edge_threshold), "pinned": list(a.pinned),
            "supernodes": [(s.name, s.members) for s in a.supernodes], "labels": dict(a.labels),
            "selected": a.selected, "view": np.round([x0, x1, y0, y1], 4).tolist(),
            "rows": [(r.key, r.multiple, r.mode) for r in w.interventions.rows],
            "visible": w.canvas.visible_nodes().tolist(), "prompt": w.prompt_bar.prompt.currentText(),
            "docks": {k: d.isVisible() for k, d in w.docks.items()}}


def test_save_close_reopen_shows_the_same_analysis(qtbot, tmp_path, folders):
    w = _window(qtbot, tmp_path)
    _analysis_by_hand(qtbot, w, folders)
    w.docks["connections"].close()
    before = _state(w)
    picture = w.canvas.plot.grab().toImage()
    bars = w.interventions.bar_plot.grab().toImage()
    texts = (w.interventions.default_text.toPlainText(), w.interventions.steered_text.toPlainText())
    path = tmp_path / "study.cs-session"
    assert w.sessions.save_as(path) and not w.sessions.dirty and "study" in w.windowTitle()
    w.close()

    again = _window(qtbot, tmp_path, "again")
    assert again.sessions.open(path)
    qtbot.waitUntil(lambda: again.canvas.edges_ready(), timeout=10000)
    assert _state(again) == before
    assert again.canvas.plot.grab().toImage() == picture, "the canvas looks the same, pixel for pixel"
    pane = again.interventions
    assert pane.bar_plot.grab().toImage() == bars, "the intervention's bars look the same, without the model"
    assert (pane.default_text.toPlainText(), pane.steered_text.toPlainText()) == texts and texts[1]
    assert again.controller.bundle is None, "opening a session computes nothing and needs no model"
    saved = load_session(path)
    assert saved.graphs[0].interventions[-1].top_after, "the intervention's result is in the file"
    assert len(saved.graphs[0].interventions[-1].extra["outputs"]["bars"]) >= 3
    again.controller.analysis.toggle_pin(0)  # a change made without the model, then saved again
    assert again.sessions.save_as(tmp_path / "again.cs-session")
    resaved = load_session(tmp_path / "again.cs-session").graphs[0].interventions[-1]
    assert resaved == saved.graphs[0].interventions[-1], "re-saving without the model keeps the results"
    again.close()


def test_undo_and_redo_name_each_step(qtbot, tmp_path, folders):
    w = _window(qtbot, tmp_path)
    top = _analysis_by_hand(qtbot, w, folders)
    a = w.controller.analysis
    assert w.undo_action.text().startswith("Undo Steer")
    w.undo_action.trigger()  # the slider move of the intervention
    assert w.interventions.rows[0].multiple == 1.0
    w.undo_action.trigger()  # adding the intervention row
    assert not w.interventions.rows
    w.undo_action.trigger()  # the threshold move
    assert a.node_threshold == pytest.approx(0.8)
    assert w.undo_action.text() == "Undo Label 'Texas-ish'"
    w.undo_action.trigger()
    assert (a.graph.feature_of(top[2])[0], a.graph.feature_of(top[2])[2]) not in a.labels
    w.undo_action.trigger()
    assert a.supernodes == []
    assert w.redo_action.text() == "Redo Group nodes"
    w.redo_action.trigger()
    assert a.supernodes[0].name == "capital"
    w.close()


def test_a_killed_session_is_recovered_from_autosave(qtbot, tmp_path, folders):
    w = _window(qtbot, tmp_path)
    _analysis_by_hand(qtbot, w, folders)
    before = _state(w)
    w.sessions.autosave()
    w.sessions.wait_for_autosave()
    autosave = w.sessions.autosave_path
    assert autosave.is_file()
    # pretend the process died: its marker now names a process that is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    marker = autosave.with_suffix(".json")
    marker.write_text(json.dumps({"pid": int(dead.stdout), "file": None}))
    kept = tmp_path / "kept.cs-session"
    shutil.copy(autosave, kept)
    shutil.copy(marker, tmp_path / "kept.json")
    w.sessions.timer.stop()
    w.close()  # a clean close removes its own autosave: put the "crashed" one back
    shutil.copy(kept, autosave)
    shutil.copy(tmp_path / "kept.json", marker)

    again = _window(qtbot, tmp_path, "again")
    asked = []
    assert again.sessions.offer_recovery(ask=lambda text: asked.append(text) or True)
    assert "did not close normally" in asked[0]
    qtbot.waitUntil(lambda: again.canvas.edges_ready(), timeout=10000)
    assert _state(again) == before and again.sessions.dirty
    assert not autosave.exists(), "a recovered autosave is not offered twice"
    again.close()


def test_model_moved_graphs_still_open(qtbot, tmp_path, folders):
    w = _window(qtbot, tmp_path)
    _analysis_by_hand(qtbot, w, folders)
    path = tmp_path / "moved.cs-session"
    w.sessions.save_as(path)
    w.close()
    moved = folders["root"] / "model_moved"
    folders["model"].rename(moved)
    try:
        again = _window(qtbot, tmp_path, "again")
        assert again.sessions.open(path)
        qtbot.waitUntil(lambda: hasattr(again, "last_error"), timeout=5000)
        assert "is gone" in again.last_error.text()
        assert again.controller.analysis.graph.n_features > 0  # explorable without the model
        again.close()
    finally:
        moved.rename(folders["model"])


def test_bad_session_file_gives_a_clear_message(qtbot, tmp_path):
    w = _window(qtbot, tmp_path)
    bad = tmp_path / "notes.cs-session"
    bad.write_text("not a session")
    assert not w.sessions.open(bad)
    assert "not a Circuit Studio session" in w.last_error.text() or "not" in w.last_error.text()
    w.close()
