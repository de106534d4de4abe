"""Undo/redo of analysis changes: pins, groups, labels, thresholds, with named steps."""

from __future__ import annotations

import numpy as np
import pytest

from circuit_studio.core.session.analysis import Analysis
from circuit_studio.core.session.history import History
from parity_cases import case_dirs, reference_graph


@pytest.fixture
def setup():
    a = Analysis(reference_graph(case_dirs()[0]))
    clock = [0.0]
    h = History(a.state, a.restore, clock=lambda: clock[0])
    a.subscribe_before_change(h.record)
    return a, h, clock


def _features(a, k):
    return [int(n) for n in np.argsort(-a.pruner.node_influence[: a.graph.error_offset])[:k]]


def test_every_kind_of_change_undoes_and_redoes(setup):
    a, h, clock = setup
    n1, n2 = _features(a, 2)
    states = [a.state()]
    for change in (lambda: a.toggle_pin(n1), lambda: a.toggle_pin(n2), lambda: a.group([n1, n2], "pair"),
                   lambda: a.set_label(n1, "Texas"), lambda: a.set_thresholds(0.9, 0.99)):
        clock[0] += 10
        change()
        states.append(a.state())
    assert h.undo_description == "Change thresholds"
    for expected in reversed(states[:-1]):
        assert h.undo()
        assert a.state() == expected
    assert not h.undo() and h.redo_description.startswith("Pin")
    for expected in states[1:]:
        assert h.redo()
        assert a.state() == expected


def test_a_slider_drag_is_one_step(setup):
    a, h, clock = setup
    before = a.state()
    for i in range(10):
        clock[0] += 0.1
        a.set_thresholds(0.8 + 0.01 * i, 0.98)
    assert h.undo() and a.state() == before and h.undo_description is None


def test_a_new_change_clears_redo(setup):
    a, h, clock = setup
    n1, n2 = _features(a, 2)
    a.toggle_pin(n1)
    h.undo()
    clock[0] += 10
    a.toggle_pin(n2)
    assert h.redo_description is None and a.pinned == [n2]
