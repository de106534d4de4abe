"""The main window end to end on a tiny model: load, trace, panes follow, settings persist, and bad
input through the GUI ends in a clear message with the window still usable."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QSettings, Qt

from circuit_studio.core.synthetic import ModelDims, build_model_folder, default_hooks, random_transcoders
from circuit_studio.core.transcoders.writing import save_transcoders
from circuit_studio.ui.main_window import MainWindow
from circuit_studio.ui.model_dialog import ModelDialog

PROMPT = "the capital of the state of Dallas is"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model_folder):
    root = tmp_path_factory.mktemp("gui")
    model = tiny_model_folder("llama")
    rh, wh = default_hooks("llama")
    tc = random_transcoders(n_layers=2, d_model=64, n_features=64, seed=2, feature_input_hook=rh,
                            feature_output_hook=wh)
    save_transcoders(tc, root / "tc")
    wrong = random_transcoders(n_layers=3, d_model=64, n_features=64, seed=2, feature_input_hook=rh,
                               feature_output_hook=wh)
    save_transcoders(wrong, root / "tc_wrong")
    big = build_model_folder("llama", root / "short_ctx", dims=ModelDims(max_positions=8), seed=0)
    return {"model": model, "tc": root / "tc", "tc_wrong": root / "tc_wrong", "short_ctx": big}


@pytest.fixture
def window(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    w = MainWindow(settings=settings, autosave_dir=tmp_path / "autosave")
    w.sessions.answer_unsaved = "discard"
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def _load(qtbot, window, model, tc=""):
    with qtbot.waitSignal(window.controller.model_changed, timeout=30000):
        window.load(str(model), str(tc))
    if tc:
        qtbot.waitUntil(lambda: window.controller.transcoders is not None or hasattr(window, "last_error"),
                        timeout=30000)


def _trace(qtbot, window, prompt=PROMPT):
    window.prompt_bar.prompt.setEditText(prompt)
    with qtbot.waitSignals([window.controller.jobs.busy_changed], timeout=5000):
        qtbot.mouseClick(window.prompt_bar.trace_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not window.controller.jobs.busy, timeout=60000)


def test_trace_fills_the_canvas_and_panes_follow_a_click(qtbot, window, folders):
    _load(qtbot, window, folders["model"], folders["tc"])
    assert "Model:" in window.loaded_label.text() and "Device" in window.device_label.text()
    _trace(qtbot, window)
    analysis = window.controller.analysis
    assert analysis is not None and analysis.graph.n_features > 0
    node = int(analysis.pruner.node_influence[: analysis.graph.error_offset].argmax())
    analysis.select(node)
    assert window.connections.title_label.text() == analysis.label_of(node)
    layer, _, feat, _ = analysis.graph.feature_of(node)
    assert f"L{layer} #{feat}" in window.features.label_edit.placeholderText()


def test_layout_and_recent_folders_persist(qtbot, tmp_path, folders):
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat)
    w = MainWindow(settings=settings, autosave_dir=tmp_path / "autosave")
    w.sessions.answer_unsaved = "discard"
    qtbot.addWidget(w)
    w.show()
    _load(qtbot, w, folders["model"], folders["tc"])
    w.docks["subgraph"].close()
    w.close()
    again = MainWindow(settings=settings, autosave_dir=tmp_path / "autosave")
    again.sessions.answer_unsaved = "discard"
    qtbot.addWidget(again)
    again.show()
    assert not again.docks["subgraph"].isVisible()
    assert again._recent()[0] == (str(folders["model"]), str(folders["tc"]))
    assert again.recent_menu.actions()
    again.reset_layout()
    assert again.docks["subgraph"].isVisible()
    again.close()


def _expect_error(qtbot, window, contains: str):
    qtbot.waitUntil(lambda: hasattr(window, "last_error"), timeout=30000)
    text = window.last_error.text() + " " + window.last_error.informativeText()
    assert contains in text, text
    window.last_error.close()
    del window.last_error
    assert window.prompt_bar.trace_button.isEnabled(), "the window stays usable"


def test_wrong_folder_gives_a_clear_message(qtbot, window, tmp_path):
    window.load(str(tmp_path))
    _expect_error(qtbot, window, "no config.json")


def test_mismatched_transcoders_give_a_clear_message(qtbot, window, folders):
    _load(qtbot, window, folders["model"])
    window.controller.load_transcoders(folders["tc_wrong"])
    _expect_error(qtbot, window, "3 layers")


def test_over_long_prompt_gives_a_clear_message(qtbot, window, folders):
    _load(qtbot, window, folders["short_ctx"], folders["tc"])
    _trace(qtbot, window, "the cat " * 20)
    _expect_error(qtbot, window, "at most 8")


def test_cancel_during_a_trace(qtbot, window, folders):
    _load(qtbot, window, folders["model"], folders["tc"])
    c = window.controller
    from circuit_studio.core.graph.attribution_graph import AttributionParams

    c.params = AttributionParams(batch_size=1)  # hundreds of backward passes: long enough to cancel
    window.prompt_bar.prompt.setEditText(PROMPT * 3)
    qtbot.mouseClick(window.prompt_bar.trace_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: window.prompt_bar.cancel_button.isEnabled(), timeout=5000)
    with qtbot.waitSignal(c.jobs.cancelled, timeout=2000):
        qtbot.mouseClick(window.prompt_bar.cancel_button, Qt.LeftButton)
    assert "cancelled" in window.prompt_bar.progress.format()
    assert c.analysis is None and window.prompt_bar.trace_button.isEnabled()


def test_model_dialog_validates_before_loading(qtbot, folders, tmp_path):
    dialog = ModelDialog(model=str(folders["model"]), transcoders=str(folders["tc"]))
    qtbot.addWidget(dialog)
    assert dialog.validate() and "2 layers" in dialog.model_info.text() and "width 64" in dialog.tc_info.text()
    dialog.tc_field.edit.setText(str(folders["tc_wrong"]))
    assert not dialog.validate() and "3 layers" in dialog.tc_info.text()
    dialog.model_field.edit.setText(str(tmp_path))
    assert not dialog.validate() and "no config.json" in dialog.model_info.text()
