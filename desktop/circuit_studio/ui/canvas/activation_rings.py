"""Rings on the features an intervention changed, and their legend.

`show(changes)` ({feature node: relative change}, from the controller's `intervention_changed`) rings
every shown feature whose activation moved by more than `CHANGE_TOLERANCE`: blue when turned down or
off, orange when turned up, wider and more opaque the larger the change. One overlay scatter with a
handful of shared pens; nothing else redraws. The legend floats in the plot's top-left corner.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import QLabel, QWidget

from ...core.graph.attribution_graph import NodeKind
from .overlays import Overlay
from .shown_graph import ShownGraph
from .style import TEXT, glyph_sizes

CHANGE_TOLERANCE = 0.05  # relative activation changes smaller than this draw no ring
CHANGE_LEVELS = (0.25, 0.6)  # |relative change| bounds of the three ring strengths
CHANGE_DOWN = "#1f5fbf"  # activation turned down / off by an intervention
CHANGE_UP = "#f76707"  # turned up (orange: pins are red)
_CHANGE_WIDTHS = (1.7, 2.5, 3.4)  # px, by CHANGE_LEVELS
_CHANGE_ALPHAS = (150, 215, 255)
_CHANGE_RING_PAD = 7.0  # px beyond the glyph: just outside a pin's ring (+5)
_TIP = ("Rings: how each feature's activation changed after the intervention (changes under "
        f"{CHANGE_TOLERANCE:.0%} are not ringed). Thicker = larger change.")


def _change_pen(up: bool, level: int) -> QPen:
    colour = QColor(CHANGE_UP if up else CHANGE_DOWN)
    colour.setAlpha(_CHANGE_ALPHAS[level])
    pen = QPen(colour)
    pen.setWidthF(_CHANGE_WIDTHS[level])
    pen.setCosmetic(True)
    return pen


class ActivationRings(Overlay):
    """The rings (this scatter, above the selection's veil) and `legend`, a label on `legend_parent`."""

    def __init__(self, legend_parent: QWidget, legend_x: int) -> None:
        super().__init__(pxMode=True, antialias=True, symbol="o", brush=None)
        self.setZValue(8.5)  # above the veil: a selection does not hide them
        self.rings: dict[int, float] = {}  # the ringed (shown, changed) feature nodes -> their change
        self._pens = {(up, lvl): _change_pen(up, lvl) for up in (False, True) for lvl in range(3)}
        # in no layout: it never widens the window
        self.legend = QLabel(legend_parent)
        self.legend.setStyleSheet(f"background: rgba(255, 255, 255, 225); color: {TEXT}; padding: 2px 5px;"
                                  "border: 1px solid #d0d0d0;")
        self.legend.setToolTip(_TIP)
        self.legend.move(legend_x, 6)
        self.legend.hide()

    def show(self, shown: ShownGraph, changes: dict[int, float] | None, node_size: float) -> None:
        """Ring the shown feature nodes whose |change| > CHANGE_TOLERANCE, coloured by sign, one of three
        pens by size; None or no shown nodes clears the rings and hides the legend."""
        self.rings = {}
        if not changes or not shown.nodes.size:
            self.setData([], [])
            self.legend.hide()
            return
        nodes = np.fromiter(changes.keys(), dtype=np.int64, count=len(changes))
        values = np.fromiter(changes.values(), dtype=np.float64, count=len(changes))
        ok = (nodes >= 0) & (nodes < shown.index.size) & ~np.isnan(values) & (np.abs(values) > CHANGE_TOLERANCE)
        nodes, values = nodes[ok], values[ok]
        features = shown.all_kinds[nodes] == NodeKind.FEATURE.code
        rows = shown.index[nodes]
        ok = features & (rows >= 0)  # feature nodes that are on the canvas
        hidden = int((features & (rows < 0)).sum())
        nodes, values, rows = nodes[ok], values[ok], rows[ok]
        self.rings = dict(zip(nodes.tolist(), values.tolist()))
        levels = np.searchsorted(np.asarray(CHANGE_LEVELS), np.abs(values), side="right").tolist()
        pens = [self._pens[(up, lvl)] for up, lvl in zip((values > 0).tolist(), levels)]
        self.setData(x=shown.xy[rows, 0], y=shown.xy[rows, 1],
                     size=glyph_sizes(shown.kinds[rows], node_size) + _CHANGE_RING_PAD, pen=pens)
        self._show_legend(int((values < 0).sum()), int((values > 0).sum()), hidden)

    def _show_legend(self, down: int, up: int, hidden: int) -> None:
        sw = "font-size: 13px;"
        self.legend.setText(f"ring: activation change after intervention "
                            f"<span style='color:{CHANGE_DOWN};{sw}'>◯</span> {down} down&nbsp; "
                            f"<span style='color:{CHANGE_UP};{sw}'>◯</span> {up} up"
                            + (f" · {hidden} hidden" if hidden else ""))
        self.legend.setToolTip(_TIP + (f"\n{hidden} more changed features are hidden by the thresholds: "
                                       "lower them to see their rings." if hidden else ""))
        self.legend.adjustSize()
        self.legend.show()
        self.legend.raise_()
