"""A canvas that stays readable at 128 tokens: every column labelled (or inside a labelled group of
collapsed columns), and logit labels that never overlap."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from circuit_studio.core.session.analysis import Analysis
from circuit_studio.core.graph.attribution_graph import AttributionGraph
from circuit_studio.ui.canvas.view import GraphCanvas
from circuit_studio.ui.controller import Controller

P, L = 128, 4
WORDS = ["The", " capital", " of", " the", " state", " containing", " Dallas", " is", " a", " city", " in",
         " Texas", ",", " and", " river", " Sacramento", " California", " San", " Diego"]
LOGITS = [" Austin", " Texas", " Sacramento", " the", " Houston", " a", " Dallas", " it", " not", " known"]


def long_graph(seed: int = 0) -> AttributionGraph:
    rng = np.random.default_rng(seed)
    active = []
    for pos in range(1, P):
        n = 14 if pos % 17 == 0 else 1 + int(rng.integers(0, 2))  # a few busy columns take the room
        for j in range(n):
            active.append((int(rng.integers(0, L)), pos, int(rng.integers(0, 500)) * 10 + j))
    active = np.array(sorted(set(active)), dtype=np.int64)
    F, K = len(active), len(LOGITS)
    N = F + L * P + P + K
    A = np.zeros((N, N), dtype=np.float32)
    tok0 = F + L * P
    for i, (layer, pos, _) in enumerate(active):
        A[i, tok0 + pos] = rng.normal()  # its token
        lower = np.flatnonzero((active[:, 0] < layer) & (active[:, 1] <= pos))
        if lower.size:
            A[i, rng.choice(lower, min(3, lower.size), replace=False)] = rng.normal(size=min(3, lower.size))
        A[i, F + layer * P + pos] = 0.1 * rng.normal()  # its error node
    for k in range(K):
        A[tok0 + P + k, rng.choice(F, 40, replace=False)] = rng.normal(size=40)
    probs = np.sort(rng.dirichlet(np.ones(K)))[::-1].astype(np.float32) * 0.95
    tokens = ("<bos>",) + tuple(WORDS[i % len(WORDS)] for i in range(P - 1))
    return AttributionGraph("".join(tokens[1:]), np.arange(P, dtype=np.int64), tokens, active,
                            rng.uniform(0.5, 5, F).astype(np.float32), np.arange(F, dtype=np.int64),
                            np.arange(K, dtype=np.int64) + 900, probs, tuple(LOGITS), adjacency_matrix=A,
                            n_layers=L, vocab_size=1000)


@pytest.fixture
def canvas(qtbot):
    c = Controller()
    c.set_analysis(Analysis(long_graph(), node_threshold=1.0, edge_threshold=0.98))
    canvas = GraphCanvas(c)
    qtbot.addWidget(canvas)
    canvas.resize(1100, 650)  # the canvas's share of the window at its default size
    canvas.show()
    qtbot.waitExposed(canvas)
    canvas.fit()
    yield canvas
    canvas.shutdown()
    c.shutdown()


def test_every_column_has_a_label(canvas, qtbot):
    axis = canvas._token_axis
    qtbot.waitUntil(lambda: bool(axis.labels()))
    labels = axis.labels()
    covered = [c for _, _, cols in labels for c in cols]
    assert sorted(covered) == list(range(P)), "each column is labelled once: alone or in a group"
    assert all(text for _, text, _ in labels)
    groups = [(text, cols) for _, text, cols in labels if len(cols) > 1]
    assert groups and all(text.startswith("…") or text.endswith(f"({len(cols)} tokens)")
                          for text, cols in groups)  # the collapsed columns say how many they are
    alone = {cols[0] for _, _, cols in labels if len(cols) == 1}
    assert alone  # the busy columns keep their own tokens
    for rect, _, _ in labels:  # inside the axis
        assert rect.left() >= -1 and rect.right() <= axis.boundingRect().right() + 1
    # zoomed in, the tokens come back one by one
    vb = canvas.plot.getViewBox()
    (x0, x1), _ = vb.viewRange()
    vb.setXRange(x0, x0 + (x1 - x0) / 8, padding=0)
    zoomed = axis.labels()
    assert sum(len(cols) == 1 for _, _, cols in zoomed) > len([c for _, _, c in zoomed if len(c) > 1])
    # a group's tokens are what hovering it names
    rect, _, cols = next(lab for lab in zoomed + labels if len(lab[2]) > 1)
    assert axis.tokens_at(rect.center().x()) == [axis._tokens[c] for c in cols]


def test_logit_labels_never_overlap(canvas, qtbot):
    labels = canvas._logit_labels
    for width in (1100, 700, 450):
        canvas.resize(width, 650)
        qtbot.wait(20)
        canvas.fit()
        labels.place(force=True)
        shown = [it for it in labels.items if it.isVisible()]
        assert shown, "the most probable logit keeps its label"
        rects = [it.sceneBoundingRect() for it in shown]
        for a, b in itertools.combinations(rects, 2):
            assert not a.intersects(b), (a, b)
        assert all(it.toolTip() for it in labels.items)  # hidden or shortened ones keep their text there


def test_screenshot_at_the_default_window_size(qtbot, tmp_path):
    """The whole window with the 128-token graph, at its default size (docs/screenshots/long_prompt.png when
    CIRCUIT_STUDIO_SCREENSHOTS is set)."""
    from PySide6.QtCore import QSettings

    from circuit_studio.ui.main_window import MainWindow

    c = Controller()
    w = MainWindow(c, settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat), autosave_dir=tmp_path / "a")
    w.sessions.answer_unsaved = "discard"
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    c.set_analysis(Analysis(long_graph()))
    qtbot.wait(300)
    out = Path(os.environ.get("CIRCUIT_STUDIO_SCREENSHOTS", tmp_path)) / "long_prompt.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    assert w.grab().save(str(out))
    labels = w.canvas._token_axis.labels()
    assert sorted(c for _, _, cols in labels for c in cols) == list(range(P))
    w.close()
