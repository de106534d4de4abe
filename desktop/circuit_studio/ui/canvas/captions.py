"""Text about nodes on the canvas: captions beside the selected and pinned nodes, the logits' labels, and
what hovering a node shows."""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg

from ...core.session.analysis import Analysis
from ...core.graph.display_text import elide, layer_name, token_label
from ...core.graph.attribution_graph import NodeKind
from .shown_graph import ShownGraph
from .style import KINDS, TEXT

MAX_NODE_LABELS = 50  # pinned-node captions drawn on the canvas
LOGIT_LABEL_GAP_PX = 4  # px kept free between two logit labels on a line
LOGIT_LABEL_LEVELS = 3  # lines of logit labels above the logits


class NodeCaptions:
    """Captions beside the selected node and the pinned ones (their current labels), in view box `vb`."""

    def __init__(self, vb: pg.ViewBox) -> None:
        self._vb = vb
        self._shown = ShownGraph.empty()
        self.items: dict[int, pg.TextItem] = {}  # node -> its caption

    def show(self, analysis: Analysis | None, shown: ShownGraph) -> None:
        for item in self.items.values():
            self._vb.removeItem(item)
        self.items = {}
        self._shown = shown
        if analysis is None:
            return
        nodes = list(analysis.pinned[:MAX_NODE_LABELS])
        if analysis.selected is not None and analysis.selected not in nodes:
            nodes.append(analysis.selected)
        for node in nodes:
            if shown.index[node] < 0:
                continue
            item = pg.TextItem(text="  " + elide(analysis.label_of(node), 40), color=TEXT, anchor=(0, 1.15),
                               fill=pg.mkBrush(255, 255, 255, 215))
            font = item.textItem.font()
            font.setPointSizeF(8.5)
            font.setBold(node == analysis.selected)
            item.setFont(font)
            item.setZValue(9)
            x, y = shown.xy[shown.index[node]]
            item.setPos(float(x), float(y))
            self._vb.addItem(item)
            self.items[node] = item
        self.place()

    def place(self) -> None:
        """Stack captions that would overlap on screen (same row, overlapping in x) one line higher; a
        caption that would run off the right edge of the view goes to the left of its node."""
        if not self.items:
            return
        xy, index = self._shown.xy, self._shown.index
        px = self._vb.viewPixelSize()[0] or 1.0
        edge = self._vb.viewRange()[0][1] / px
        placed: list[tuple[float, float, float, int]] = []  # row y, left px, right px, level
        for node, item in sorted(self.items.items(), key=lambda e: tuple(xy[index[e[0]]][::-1])):
            x, y = xy[index[node]]
            width = item.textItem.boundingRect().width()
            flip = x / px + width > edge
            left = x / px - width if flip else x / px
            right = left + width
            level = 0
            while any(r == y and lv == level and left < rr and ll < right for r, ll, rr, lv in placed):
                level += 1
            placed.append((y, left, right, level))
            item.setAnchor((1 if flip else 0, 1.15 + level))


class LogitLabels:
    """Each shown logit's token and probability above it, in view box `vb`, never overlapping on screen:
    the most probable first, each on the lowest of `LOGIT_LABEL_LEVELS` lines where it fits, shortened
    to its probability when the token does not fit, hidden when nothing fits (its tooltip, and the
    node's, keep the whole text). Redone when the x scale changes."""

    def __init__(self, vb: pg.ViewBox) -> None:
        self._vb = vb
        self._items: list[tuple[float, float, pg.TextItem, str, str]] = []  # x, probability, item, full, short
        self._px = 0.0  # the x scale the labels were placed for

    @property
    def items(self) -> list[pg.TextItem]:
        return [e[2] for e in self._items]

    def show(self, analysis: Analysis | None, shown: ShownGraph) -> None:
        for _, _, item, _, _ in self._items:
            self._vb.removeItem(item)
        self._items = []
        if analysis is None:
            return
        g = analysis.graph
        for node in shown.nodes[shown.kinds == NodeKind.LOGIT.code].tolist():
            k = node - g.logit_offset
            p = float(g.logit_probabilities[k])
            full, short = f"{elide(token_label(g.logit_tokens[k]), 14)} {p:.0%}", f"{p:.0%}"
            item = pg.TextItem(text=full, color=KINDS[NodeKind.LOGIT.code].outline, anchor=(0.5, 1.3))
            item.setZValue(8)
            x, y = shown.xy[shown.index[node]]
            item.setPos(float(x), float(y))
            item.setToolTip(f"{analysis.label_of(node)} · p = {p:.3f}")
            self._vb.addItem(item)
            self._items.append((float(x), p, item, full, short))
        self.place(force=True)

    def place(self, force: bool = False) -> None:
        """Place the most probable labels that have room (see the class docstring)."""
        if not self._items:
            return
        (x0, x1), width = self._vb.viewRange()[0], self._vb.width()
        px = (x1 - x0) / width if width > 0 else 1.0
        if not force and px == self._px:
            return
        self._px = px
        taken: list[list[tuple[float, float]]] = [[] for _ in range(LOGIT_LABEL_LEVELS)]  # per line: (left, right) px
        for x, _, item, full, short in sorted(self._items, key=lambda e: -e[1]):
            placed = False
            for text in (full, short):
                item.setText(text)
                w = item.textItem.boundingRect().width()
                left, right = x / px - w / 2 - LOGIT_LABEL_GAP_PX / 2, x / px + w / 2 + LOGIT_LABEL_GAP_PX / 2
                for level, line in enumerate(taken):
                    if all(right <= l or r <= left for l, r in line):
                        line.append((left, right))
                        item.setAnchor((0.5, 1.3 + level))
                        placed = True
                        break
                if placed:
                    break
            item.setVisible(placed)


def node_tooltip_html(analysis: Analysis, node: int, changes: dict[int, float] | None) -> str:
    """What hovering `node` shows: label, kind, layer, position, activation, influence (the edge to the
    selected node, if any, and the activation change of an intervention in `changes`)."""
    a = analysis
    info = a.info(node)
    rows = [f"<b>{html.escape(info.label)}</b>",
            f"{info.kind.value} · {layer_name(info.layer, a.graph.n_layers)} · "
            f"position {info.position} {html.escape(repr(info.token))}"]
    facts = []
    if info.kind is NodeKind.FEATURE:
        facts.append(f"feature #{info.feature} · activation {info.activation:.3g}")
    facts.append(f"influence {info.influence:.3g}")
    if info.kind is NodeKind.LOGIT:
        facts.append(f"p = {float(a.graph.logit_probabilities[node - a.graph.logit_offset]):.3f}")
    rows.append(" · ".join(facts))
    sel = a.selected
    if sel is not None and sel != node:
        to_sel, from_sel = a.graph.adjacency.values_at(np.array([sel, node]), np.array([node, sel]))
        if to_sel:
            rows.append(f"edge to selected: {float(to_sel):+.3g}")
        elif from_sel:
            rows.append(f"edge from selected: {float(from_sel):+.3g}")
    if changes and node in changes and np.isfinite(changes[node]):
        change = changes[node]
        rows.append(f"after intervention: activation {change:+.0%}" + (" (off)" if change <= -0.999 else ""))
    if node in a.pinned:
        rows.append("<i>pinned</i>")
    return "<br>".join(rows)
