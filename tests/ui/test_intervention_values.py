"""Interventions by value: the README's case study done by typing San Diego's activations (3.44 and 3.07)
into the rows in = mode, the slider's left end at 0 ("ablate"), negative multiples by typing, text that says
multiple or value ("x1.5", "1.5×", "=3.44"), and a pane that shows several rows and keeps its scroll
position after an edit at the window's default size."""

from __future__ import annotations

import numpy as np
import pytest

from circuit_studio.core.interventions.steering_data import SteeringRow, SteeringState, Target
from window_helpers import new_window, open_demo, trace

pytest.importorskip("pytestqt")

A = "The capital of the state containing Dallas is"
DALLAS = [(0, 98), (0, 900)]  # README: --set 0:7:98=0 --set 0:7:900=0
SAN_DIEGO = [(0, 242, 3.44), (0, 315, 3.07)]  # --set 0:7:242=3.44 --set 0:7:315=3.07
CITY = 7


@pytest.fixture
def window(qtbot, tmp_path):
    w = new_window(qtbot, tmp_path)  # the default size
    open_demo(qtbot, w)
    trace(qtbot, w, A)
    yield w
    w.close()


def test_row_values_in_the_model():
    t = Target(None, 0, 7, 242, 2.0, "index max")
    r = SteeringRow(("f", 0, 7, 242), "f", (t,), "", top=4.0)
    from circuit_studio.core.interventions.steering import Steering, SteeringError
    assert r.low == 0.0 and r.typed_low == -4.0 and r.value == 2.0
    assert Steering.parse_multiple(r, "x1.5") == 1.5 == Steering.parse_multiple(r, "1.5×")
    assert Steering.parse_multiple(r, "=3") == 1.5 and Steering.parse_multiple(r, "3", "value") == 1.5
    assert Steering.parse_multiple(r, "−2") == -2.0  # negative by typing, the typographic minus too
    with pytest.raises(SteeringError, match="outside"):
        Steering.parse_multiple(r, "=100")
    multi = SteeringRow(("s", 1, (1, 2)), "s", (t, t), "", top=4.0)
    assert multi.value_base is None
    with pytest.raises(SteeringError, match="multiple"):
        Steering.parse_multiple(multi, "=3")
    back = SteeringState.from_json(SteeringState((SteeringRow(r.key, r.name, r.targets, "", 1.0, "token", 4.0,
                                                              "value"),)).to_json())
    assert back.rows[0].entry == "value"


def test_case_study_by_typed_values(qtbot, window):
    w, c = window, window.controller
    pane = w.interventions
    g = c.analysis.graph
    assert g.token_strings[CITY] == " Dallas"
    rows = []
    for layer, feat in DALLAS:
        row = pane.add_feature(layer, feat, CITY)
        assert row is not None, pane.message
        view = pane.rows[row]
        assert view.slider.minimum() == 0 and view.low_label.text() == "ablate", "the left end is 0, ablation"
        view.slider.setValue(view.slider.minimum())  # drag to the left end
        assert pane.rows[row].multiple == 0.0 and pane.rows[row].row.value_text() == "ablate"
        rows.append(row)
    for layer, feat, value in SAN_DIEGO:
        row = pane.add_feature(layer, feat, CITY)
        assert row is not None, pane.message
        view = pane.rows[row]
        view.entry_button.click()  # × -> =: type the activation itself
        assert view.entry == "value" and view.entry_button.text() == "="
        view.box.setText(f"{value}")
        view.box.editingFinished.emit()
        assert pane.rows[row].value == pytest.approx(value) and view.box.text() == f"{value:g}", pane.message
        rows.append(row)
    ivs = {(iv.layer, iv.position, iv.feature): iv.value for iv in pane.interventions()}
    assert ivs == pytest.approx({(0, CITY, 98): 0.0, (0, CITY, 900): 0.0, (0, CITY, 242): 3.44, (0, CITY, 315): 3.07})
    qtbot.waitUntil(lambda: not pane.pending and pane.last_result is not None
                    and len(pane.last_result.interventions) == 4, timeout=30_000)
    tok = c.bundle.tokenizer
    before, after = pane.last_result.probabilities()
    assert tok.decode([int(np.argmax(before))]) == " Austin"
    assert tok.decode([int(np.argmax(after))]) == " Sacramento"
    assert after.max() > 0.9

    # negative values by typing, below the slider's 0; the slider stays at its left end
    view = pane.rows[0]
    view.box.setText("x-1")
    view.box.editingFinished.emit()
    assert pane.rows[0].multiple == -1.0 and view.slider.value() == view.slider.minimum()

    # readable at the default size: more than two rows in view, and an edit keeps the list where it is
    for feat in (10, 11, 12, 13):
        assert pane.add_feature(1, feat, CITY) is not None, pane.message
    w.docks["interventions"].raise_()  # Graph ▸ Steer selected feature raises it
    qtbot.wait(100)
    scroll = pane.rows_scroll
    viewport = scroll.viewport()
    visible = [v for v in pane.rows if v.widget.isVisible() and v.widget.visibleRegion().boundingRect().height()
               >= v.widget.height() - 1]
    assert len(visible) > 2, f"{len(visible)} whole rows visible in {viewport.height()} px"
    bar = scroll.verticalScrollBar()
    bar.setValue(bar.maximum())
    at = bar.value()
    assert at > 0
    last = pane.rows[-1]
    last.box.setFocus()
    last.box.setText("x2")
    last.box.editingFinished.emit()
    qtbot.wait(50)
    qtbot.waitUntil(lambda: not pane.pending, timeout=30_000)
    qtbot.wait(50)
    assert pane.rows[-1].multiple == 2.0 and bar.value() == at, (at, bar.value(), bar.maximum())
