"""Custom attribution targets from the canvas, on the demo: right-click a logit node, "Explain logit(A) −
logit(B)…" with B " Sacramento" traces the curated two-hop prompt again with the one target
logit( Austin) - logit( Sacramento); "Trace these tokens…" traces it with the chosen tokens."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QMenu

from circuit_studio.ui.canvas import logit_targets
from circuit_studio.ui.canvas.logit_targets import TokensDialog, typed_token, typed_tokens
from window_helpers import new_window, open_demo, trace

pytest.importorskip("pytestqt")

A = "The capital of the state containing Dallas is"


def test_typed_tokens():
    assert typed_token("' Paris'") == " Paris" and typed_token("Paris") == "Paris"
    assert typed_tokens("' Paris', ' Rome' ,Oslo, 'a,b'") == [" Paris", " Rome", "Oslo", "a,b"]
    assert typed_tokens("  ") == []


@pytest.fixture
def window(qtbot, tmp_path):
    w = new_window(qtbot, tmp_path, size=(1400, 900))
    open_demo(qtbot, w)
    assert A in [w.prompt_bar.prompt.itemText(i) for i in range(w.prompt_bar.prompt.count())], "a curated prompt"
    trace(qtbot, w, A)
    yield w
    w.close()


def _austin(g) -> int:
    k = list(g.logit_tokens).index(" Austin")
    return g.logit_offset + k


def test_explain_austin_minus_sacramento(qtbot, window, monkeypatch, tmp_path):
    w, c = window, window.controller
    g = c.analysis.graph
    node = _austin(g)
    first = c.workspace.current_id

    # a right-click on the logit node asks for the menu
    asked = []
    w.canvas.node_context_requested.disconnect()
    w.canvas.node_context_requested.connect(lambda n, where: asked.append(n))
    pos = w.canvas.node_screen_pos(node)
    assert pos is not None, "the Austin logit is on screen"
    qtbot.mouseClick(w.canvas.viewport(), Qt.MouseButton.RightButton, pos=pos)
    assert asked == [node]

    menu = w.logit_targets.menu_for(node)
    assert isinstance(menu, QMenu)
    texts = [a.text() for a in menu.actions()]
    assert texts == ["Explain logit(' Austin') − logit(B)…", "Trace these tokens…"]
    assert all(a.isEnabled() for a in menu.actions())
    assert w.logit_targets.menu_for(0) is None, "not a logit node: no menu"

    offered = []
    def answer(parent, a, choices):
        offered.extend(choices)
        return " Sacramento"
    monkeypatch.setattr(logit_targets, "ask_other_token", answer)
    menu.actions()[0].trigger()
    qtbot.waitUntil(lambda: c.workspace.current_id != first and not c.jobs.busy, timeout=60_000)
    assert " Austin" not in offered and all(t in g.logit_tokens for t in offered)

    d = c.analysis.graph
    assert d.prompt == A
    assert d.n_logits == 1 and tuple(d.logit_tokens) == ("logit( Austin) - logit( Sacramento)",)
    assert c.analysis.label_of(d.logit_offset).startswith("Output 'logit( Austin) - logit( Sacramento)'")
    assert "logit( Austin) - logit( Sacramento)" in c.workspace.entry(c.workspace.current_id).display_title
    assert len(c.workspace.graphs) == 2, "the new graph joins the session"
    assert d.logit_offset in set(w.canvas.visible_nodes().tolist()), "shown like any graph"

    # the session keeps it
    from circuit_studio.core.session.store import load_session
    path = tmp_path / "targets.cs-session"
    assert w.sessions.save_as(path)
    saved = load_session(path)
    assert any(tuple(r.graph.logit_tokens) == ("logit( Austin) - logit( Sacramento)",) for r in saved.graphs)

    # a typed B that is not one token: the trace fails with a message, and no graph is added
    errors = []
    c.jobs.failed_unhandled.disconnect()
    c.jobs.failed_unhandled.connect(lambda name, e: errors.append(e.message))
    n = len(c.workspace.graphs)
    c.workspace.set_current(first)
    qtbot.waitUntil(lambda: c.analysis is not None and c.analysis.graph is g and not c.jobs.busy, timeout=30_000)
    logit_targets.explain_difference(c, node, " Sacramento Austin")
    qtbot.waitUntil(lambda: not c.jobs.busy and bool(errors), timeout=60_000)
    assert "not one" in errors[0] and len(c.workspace.graphs) == n


def test_trace_these_tokens(qtbot, window, monkeypatch):
    w, c = window, window.controller
    g = c.analysis.graph
    node = _austin(g)
    first = c.workspace.current_id

    dialog = TokensDialog(None, list(g.logit_tokens), " Austin")
    assert dialog.tokens() == [" Austin"], "the right-clicked logit is checked"
    dialog.extra.setText("' Sacramento'")
    assert dialog.tokens() == [" Austin", " Sacramento"]
    dialog.deleteLater()

    monkeypatch.setattr(logit_targets, "ask_tokens", lambda parent, logits, checked: [checked, " Sacramento"])
    w.logit_targets.menu_for(node).actions()[1].trigger()
    qtbot.waitUntil(lambda: c.workspace.current_id != first and not c.jobs.busy, timeout=60_000)
    d = c.analysis.graph
    assert tuple(d.logit_tokens) == (" Austin", " Sacramento") and d.prompt == A
    QApplication.processEvents()
