"""Grab the window on each curated demo prompt into docs/screenshots/ (offscreen, reproducible).

For each prompt: trace it, select the most influential feature, pin the three most influential
features and group two of them, then save the whole window.

    QT_QPA_PLATFORM=offscreen python docs/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "desktop"))

from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from circuit_studio.ui.main_window import MainWindow  # noqa: E402


def wait(app: QApplication, condition, timeout_s: float = 300.0) -> None:
    import time

    end = time.monotonic() + timeout_s
    while not condition():
        app.processEvents()
        if time.monotonic() > end:
            raise TimeoutError("timed out waiting for the window")
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "screenshots")
    ap.add_argument("--only", choices=["heads"], help="grab only this screenshot (heads.png: the Heads pane)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication([])
    scratch = Path(tempfile.mkdtemp(prefix="circuit_studio_shots_"))  # not the user's settings or autosaves
    settings = QSettings(str(scratch / "settings.ini"), QSettings.IniFormat)
    window = MainWindow(settings=settings, autosave_dir=scratch / "autosave")
    window.sessions.answer_unsaved = "discard"
    window.resize(1600, 1000)
    window.show()
    c = window.controller
    c.open_demo()
    wait(app, lambda: c.transcoders is not None and not c.jobs.busy)
    if args.only == "heads":
        heads(app, window, args.out)
        window.close()
        shutil.rmtree(scratch, ignore_errors=True)
        return
    for item in c.curated:
        window.prompt_bar.prompt.setEditText(item.prompt)
        window.prompt_bar.trace()
        wait(app, lambda: not c.jobs.busy)
        analysis = c.analysis
        features = [int(n) for n in analysis.pruned.node_mask.nonzero()[0] if n < analysis.graph.error_offset]
        features.sort(key=lambda n: -analysis.pruner.node_influence[n])
        for n in features[:3]:
            analysis.toggle_pin(n)
        if len(features) >= 2:
            analysis.group(features[:2])
        if features:
            analysis.select(features[0])
        for _ in range(20):
            app.processEvents()
        name = re.sub(r"[^a-z0-9]+", "_", item.behaviour.lower()).strip("_") or "prompt"
        window.grab().save(str(args.out / f"{name}.png"))
        print(f"{name}.png  {item.prompt!r}")
    case_study(app, window, args.out)
    heads(app, window, args.out)
    window.close()
    shutil.rmtree(scratch, ignore_errors=True)


def case_study(app: QApplication, window: MainWindow, out: Path) -> None:
    """The README's case study in the intervention pane: Dallas's two most influential city features
    ablated, San Diego's two set, on the two-hop prompt."""
    from circuit_studio.core.interventions.contrast import distinct_features

    c = window.controller
    graphs = {}
    for prompt in ("The capital of the state containing San Diego is", "The capital of the state containing Dallas is"):
        window.prompt_bar.prompt.setEditText(prompt)
        window.prompt_bar.trace()
        wait(app, lambda: not c.jobs.busy)
        graphs[prompt] = c.analysis
    b, a = graphs.values()
    city_a, city_b = a.graph.n_pos - 2, b.graph.n_pos - 2
    ours = distinct_features(a.graph, a.pruner.node_influence, city_a, b.graph, city_b)[:2]
    theirs = distinct_features(b.graph, b.pruner.node_influence, city_b, a.graph, city_a)[:2]
    pane = window.interventions
    for d in ours:
        pane.set_multiple(pane.add_node(d.node), 0.0)
    for d in theirs:
        row = pane.add_feature(d.layer, d.feature, city_a)
        pane.set_multiple(row, d.activation / pane.rows[row].targets[0].base)
    window.docks["interventions"].raise_()
    a.select(ours[0].node)
    wait(app, lambda: not pane.pending)
    for _ in range(20):
        app.processEvents()
    window.grab().save(str(out / "interventions_case_study.png"))
    print("interventions_case_study.png")


def heads(app: QApplication, window: MainWindow, out: Path) -> None:
    """The Heads pane on the two-hop prompt: the strongest edge from a ' Dallas' feature into the last
    position, split per head; its top head's pattern and the QK breakdown of last -> ' Dallas'."""
    import numpy as np

    c = window.controller
    window.prompt_bar.prompt.setEditText("The capital of the state containing Dallas is")
    window.prompt_bar.trace()
    wait(app, lambda: not c.jobs.busy)
    a = c.analysis
    g = a.graph
    city, last = list(g.token_strings).index(" Dallas"), g.n_pos - 1
    src = [i for i in range(g.n_features) if g.feature_of(i)[1] == city]
    tgt = [i for i in range(g.n_features) if g.feature_of(i)[1] == last] + list(range(g.logit_offset, g.n_nodes))
    sub = g.adjacency_matrix[np.ix_(tgt, src)]
    t, s = np.unravel_index(int(np.argmax(sub)), sub.shape)
    pane = window.heads
    window.docks["heads"].show()
    window.docks["heads"].raise_()
    window.resizeDocks([window.docks["heads"]], [380], Qt.Orientation.Vertical)
    a.select(tgt[t])
    pane.request_edge(src[s], tgt[t])
    wait(app, lambda: pane.state.split is not None and not pane.busy)
    layer, head, _ = pane.state.split.top_heads(1)[0]
    pane.choose_head(layer, head)
    wait(app, lambda: pane.state.breakdown is not None and not pane.busy)
    for _ in range(20):
        app.processEvents()
    window.grab().save(str(out / "heads.png"))
    print("heads.png")


if __name__ == "__main__":
    main()
