"""File ▸ Import graph JSON / Export graph JSON, PNG and SVG of the canvas: the analysis travels with the graph."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PySide6.QtGui import QImage

from circuit_studio.core.session.analysis import Analysis
from circuit_studio.core.graph.attribution_graph import NodeKind
from parity_cases import case_dirs, reference_graph
from window_helpers import new_window


def _imagemagick() -> bool:
    if not shutil.which("convert"):
        return False
    res = subprocess.run(["convert", "-version"], capture_output=True, text=True, timeout=30)
    return res.returncode == 0 and "ImageMagick" in res.stdout and "Version" in res.stdout


@pytest.fixture
def window(qtbot, tmp_path):
    yield new_window(qtbot, tmp_path, size=(1100, 750))


def _case_with_features():
    for case in case_dirs():
        g = reference_graph(case)
        a = Analysis(g)
        feats = [n for n in np.flatnonzero(a.pruned.node_mask) if g.kind_of(int(n)) is NodeKind.FEATURE]
        if len(feats) >= 3:
            return a, [int(n) for n in feats]
    pytest.skip("no parity case with three kept features")


def test_pin_group_label_export_import_export_is_lossless(qtbot, window, tmp_path):
    a, feats = _case_with_features()
    window.controller.set_analysis(a)
    a.toggle_pin(feats[0])
    a.toggle_pin(feats[1])
    a.toggle_pin(feats[2])
    a.group([feats[1], feats[2]], "my group")
    a.set_label(feats[0], "a feature I named")
    first = tmp_path / "first.json"
    assert window.export_json(str(first))
    doc = json.loads(first.read_text())
    assert len(doc["qParams"]["pinnedIds"]) == 3
    assert doc["qParams"]["supernodes"][0][0] == "my group" and len(doc["qParams"]["supernodes"][0]) == 3
    assert "a feature I named" in [n["clerp"] for n in doc["nodes"]]

    n_before = len(window.controller.workspace.graphs)
    gid = window.import_json(str(first))
    assert gid is not None and len(window.controller.workspace.graphs) == n_before + 1
    b = window.controller.analysis
    assert b.imported and b.graph.provenance["imported"]["source"] == str(first)
    assert [s.name for s in b.supernodes] == ["my group"] and len(b.pinned) == 3
    assert "Imported from first.json" in window.provenance.toolTip()
    second = tmp_path / "first.json.again"
    assert window.export_json(str(second))
    again = json.loads(second.read_text())
    again["metadata"]["slug"] = doc["metadata"]["slug"]  # the slug is the file name
    assert again == doc  # node for node, link for link, pins, supernodes, clerps


def test_import_of_a_bad_file_shows_an_error(window, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": 3}')
    assert window.import_json(str(bad)) is None
    assert "not a circuit-tracer" in window.last_error.text()


def test_png_is_the_plot_alone_at_the_chosen_scale(qtbot, window, tmp_path, analysis):
    window.controller.set_analysis(analysis)
    qtbot.wait(50)
    plot = window.canvas._plot.viewport()
    for scale in (1.0, 2.5):
        path = tmp_path / f"g{scale}.png"
        assert window.export_png(str(path), scale=scale)
        img = QImage(str(path))
        assert (img.width(), img.height()) == (round(plot.width() * scale), round(plot.height() * scale))
    assert plot.height() < window.canvas.height() - window.canvas.node_slider.height()  # toolbar not included


def test_svg_has_no_non_scaling_strokes_and_generic_fonts(qtbot, window, tmp_path, analysis):
    window.controller.set_analysis(analysis)
    qtbot.wait(50)
    path = tmp_path / "g.svg"
    assert window.export_svg(str(path))
    text = path.read_text()
    assert "non-scaling-stroke" not in text
    families = set(re.findall(r'font-family="([^"]*)"', text))
    assert families and all(f.endswith("sans-serif") for f in families)
    # node glyphs are unit shapes scaled by their size: their outline width is given in user units
    glyph = re.search(r'<g [^>]*stroke-width="0.8"[^>]*matrix\((\d+(?:\.\d+)?),0,0,[^>]*>\s*<path ([^>]*)>', text)
    assert glyph, "a scaled node glyph"
    width = float(re.search(r'stroke-width="([^"]*)"', glyph.group(2)).group(1))
    assert abs(width * float(glyph.group(1)) - 0.8) < 1e-3
    if _imagemagick():  # ImageMagick renders it (not blank)
        out = tmp_path / "g_im.png"
        subprocess.run(["convert", str(path), str(out)], check=True, timeout=60, capture_output=True)
        img = QImage(str(out))
        assert img.width() > 100 and len({img.pixel(x, y) for x in range(0, img.width(), 7)
                                          for y in range(0, img.height(), 7)}) > 3
