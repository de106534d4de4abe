"""The canvas's look: a glyph and colours per node kind, the edge ramps, pens (light background).

Edges are PRGn, as the reference frontend: green positive, purple negative, light to dark = weak to strong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QPainterPath, QPen

from ...core.graph.attribution_graph import NodeKind

BACKGROUND = "#ffffff"
TEXT = "#303030"

_TOKEN_BAR = QPainterPath()
_TOKEN_BAR.addRect(QRectF(-0.6, -0.2, 1.2, 0.4))


@dataclass(frozen=True)
class KindStyle:
    symbol: object
    fill: str
    outline: str  # for the legend
    scale: float  # glyph size relative to a feature's
    min_size: float  # px, however far out the view is zoomed


_STYLE_OF = {
    NodeKind.FEATURE: KindStyle("o", "#f2a541", "#8a5a12", 1.0, 0),
    NodeKind.ERROR: KindStyle("d", "#bdbdbd", "#5f5f5f", 1.05, 0),
    NodeKind.TOKEN: KindStyle(_TOKEN_BAR, "#4a5b6e", "#2c3846", 1.5, 14),  # one per column: there is room
    NodeKind.LOGIT: KindStyle("t1", "#2b7bba", "#133d5e", 1.4, 9),
}
KINDS = tuple(_STYLE_OF[kind] for kind in sorted(NodeKind, key=lambda k: k.code))  # indexed by NodeKind.code

POSITIVE_RAMP = ("#d9f0d3", "#a6dba0", "#5aae61", "#1b7837")
NEGATIVE_RAMP = ("#e7d4e8", "#c2a5cf", "#9970ab", "#762a83")
POSITIVE_COLOR, NEGATIVE_COLOR = POSITIVE_RAMP[-1], NEGATIVE_RAMP[-1]  # the ramps' ends, for single-colour edges
# Edge buckets by share of the target's shown input: < 10 %, < 30 %, the rest. Opaque colours on
# purpose: the raster engine fills opaque wide lines several times faster than translucent ones,
# and light opaque lines drawn first under darker ones read just like transparency.
SHARE_EDGES = (0.10, 0.30)
EDGE_WIDTHS = (1.25, 2.1, 3.4)  # px; 1.0 exactly takes Qt's slow cosmetic-stroker path
DENSE_EDGE_WIDTHS = (1.25, 1.6, 2.4)  # above DENSE_EDGES: thick lines would hide everything
DENSE_EDGES = 5_000
EDGE_COLOURS = ((POSITIVE_RAMP[1], NEGATIVE_RAMP[1]), (POSITIVE_RAMP[2], NEGATIVE_RAMP[2]),
                (POSITIVE_RAMP[3], NEGATIVE_RAMP[3]))  # [level][negative]
NODE_OUTLINE = "#4d4d4d"  # one pen for every node: per-spot pens cost pyqtgraph a Python loop
GRID = "#ececec"
PIN_PEN = "#c0392b"
RING_PEN = "#111111"
HOVER_PEN = "#7a7a7a"


def cosmetic_pen(colour: str, width: float, round_caps: bool = False) -> QPen:
    """A cosmetic pen. Flat caps unless asked: round caps make the raster engine ~10x slower."""
    pen = QPen(QColor(colour))
    pen.setWidthF(width)
    pen.setCosmetic(True)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap if round_caps else Qt.PenCapStyle.FlatCap)
    return pen


def glyph_sizes(kinds: np.ndarray, node_size: float) -> np.ndarray:
    """px per node of `kinds` (node-kind codes) when a feature's glyph is `node_size` px."""
    scale = np.array([k.scale for k in KINDS])
    least = np.array([k.min_size for k in KINDS])
    return np.maximum(scale * node_size, least)[kinds]


def legend_html() -> str:
    """The kinds' glyphs and the edge colours, for the toolbar."""
    sw = "font-size: 13px;"
    f, e, t, lg = (_STYLE_OF[k] for k in (NodeKind.FEATURE, NodeKind.ERROR, NodeKind.TOKEN, NodeKind.LOGIT))
    return (f"<span style='color:{f.fill};{sw}'>●</span> feature&nbsp; "
            f"<span style='color:{e.outline};{sw}'>◆</span> error&nbsp; "
            f"<span style='color:{t.fill};{sw}'>▬</span> token&nbsp; "
            f"<span style='color:{lg.fill};{sw}'>▲</span> logit&nbsp;&nbsp; "
            f"<span style='color:{POSITIVE_COLOR};{sw}'>━</span> positive&nbsp; "
            f"<span style='color:{NEGATIVE_COLOR};{sw}'>━</span> negative")
