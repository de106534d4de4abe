"""What a new user sees first: `circuit-studio` with no arguments opens the window on the bundled demo,
with its curated prompts in the prompt box, and a curated prompt traces with feature labels from the
demo's index."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from circuit_studio.ui.controller import read_curated_prompts
from window_helpers import new_window


def test_opening_the_demo_offers_its_curated_prompts_and_traces_them(qtbot, tmp_path):
    w = new_window(qtbot, tmp_path)
    c = w.controller
    w.open_demo()  # what File ▸ Open demo and a start with no arguments do
    qtbot.waitUntil(lambda: c.feature_index is not None and not c.jobs.busy, timeout=60_000)
    curated = read_curated_prompts()
    box = w.prompt_bar.prompt
    assert [box.itemText(i) for i in range(box.count())] == [p.prompt for p in curated]
    assert box.currentText() == curated[0].prompt
    assert "4 layers" in w.loaded_label.text() and "Feature index loaded" in w.loaded_label.text()
    assert "CPU" in w.device_label.text() or "CUDA" in w.device_label.text()

    box.setCurrentIndex(2)  # the two-hop prompt
    w.prompt_bar.trace()
    qtbot.waitUntil(lambda: c.analysis is not None and not c.jobs.busy, timeout=60_000)
    a = c.analysis
    assert a.graph.prompt == curated[2].prompt
    for n in range(a.graph.n_features):  # feature nodes carry the index's automatic labels
        layer, _, feature, _ = a.graph.feature_of(n)
        assert a.label_of(n) == c.feature_index.label(layer, feature)
    w.close()


def test_a_prompt_typed_while_the_demo_loads_is_traced_when_it_is_in(qtbot, tmp_path):
    w = new_window(qtbot, tmp_path)
    c = w.controller
    errors = []
    c.error.connect(lambda *a: errors.append(a))
    w.open_demo()
    assert c.resources_loading(), "the demo loads in the background"
    bar = w.prompt_bar
    assert bar.prompt.isEnabled() and bar.prompt.lineEdit().isEnabled(), "the prompt can be typed at once"
    bar.prompt.setEditText("A prompt typed before the demo was in")  # not one of the curated prompts
    bar.trace()
    assert errors == [] and c.analysis is None
    qtbot.waitUntil(lambda: c.analysis is not None and c.analysis.graph.prompt == "A prompt typed before the demo was in"
                    and not c.jobs.busy, timeout=60_000)
    assert errors == [] and c.feature_index is not None
    w.close()


def test_the_demo_with_its_cross_layer_transcoder_traces_with_labels(qtbot, tmp_path):
    w = new_window(qtbot, tmp_path)
    c = w.controller
    w.open_demo("clt")
    qtbot.waitUntil(lambda: c.feature_index is not None and not c.jobs.busy, timeout=60_000)
    assert c.transcoders.kind == "clt" and c.feature_index.info.transcoder_kind == "clt"
    w.prompt_bar.trace()
    qtbot.waitUntil(lambda: c.analysis is not None and not c.jobs.busy, timeout=60_000)
    a = c.analysis
    assert int(a.graph.logit_token_ids[0]) == c.bundle.tokenizer(read_curated_prompts()[0].answer,
                                                                 add_special_tokens=False)["input_ids"][0]
    layer, _, feature, _ = a.graph.feature_of(0)
    assert a.label_of(0) == c.feature_index.label(layer, feature)
    w.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_the_command_with_no_arguments_starts_the_window(tmp_path):
    """The README's first command ends in `circuit-studio`: start it for real and check it stays up cleanly."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1",
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "circuit_studio.cli"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(20)  # long enough to import, build the window and load the demo in the background
        alive = proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert alive, f"the app exited early: {err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
