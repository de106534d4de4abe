"""The demo's case study (tests/demo/test_case_study.py) done the way an analyst does it in the window:
trace both prompts on the bundled demo, ablate Dallas's city features from the graph with the pane's
sliders, type in San Diego's, and watch the next token become " Sacramento" and the rings mark the
features turned off."""

from __future__ import annotations

import numpy as np
import pytest

from circuit_studio.core.interventions.contrast import distinct_features
from window_helpers import new_window, open_demo, trace

A = "The capital of the state containing Dallas is"
B = "The capital of the state containing San Diego is"
K = 2


@pytest.fixture
def window(qtbot, tmp_path):
    w = new_window(qtbot, tmp_path, size=(1400, 900))
    open_demo(qtbot, w)
    yield w
    w.close()


def test_swapping_city_features_in_the_pane_flips_the_answer(qtbot, window):
    w, c = window, window.controller
    b = trace(qtbot, w, B)
    gb, influence_b = b.graph, b.pruner.node_influence
    a = trace(qtbot, w, A)
    ga = a.graph
    city_a, city_b = ga.n_pos - 2, gb.n_pos - 2
    ours = distinct_features(ga, a.pruner.node_influence, city_a, gb, city_b)[:K]
    theirs = distinct_features(gb, influence_b, city_b, ga, city_a)[:K]

    pane = w.interventions
    for d in ours:  # Dallas's features are nodes of this graph: slide them to 0
        row = pane.add_node(d.node)
        assert pane.set_multiple(row, 0.0)
    for d in theirs:  # San Diego's are not active here: type them in and set their San Diego activation
        row = pane.add_feature(d.layer, d.feature, city_a)
        assert row is not None, pane.message()
        base = pane.rows[row].targets[0].base
        assert pane.rows[row].targets[0].base_kind == "index max", "scaled by the feature index's maximum"
        assert pane.set_multiple(row, d.activation / base)
    qtbot.waitUntil(lambda: not pane.pending and pane.last_result is not None
                    and len(pane.last_result.interventions) == 2 * K, timeout=30_000)

    tok = c.bundle.tokenizer
    before, after = pane.last_result.probabilities()
    assert tok.decode([int(np.argmax(before))]) == " Austin"
    assert tok.decode([int(np.argmax(after))]) == " Sacramento"
    assert after.max() > 0.9
    rings = w.canvas.activation_rings()
    assert all(rings.get(d.node) == pytest.approx(-1.0) for d in ours), "the ablated features are ringed as off"
