"""The graph canvas: the layered attribution-graph view analysts know from circuit-tracer's frontend.

Rows, bottom to top: token embeddings ("Emb"), layers L0..L{n-1}, logits; columns: prompt positions,
a busy column wider (`core.graph.layout`). One `ScatterPlotItem` draws every node, with a glyph per kind
(feature ●, error ◆, token ▬, logit ▲); one `EdgeLayer` draws every edge, green when positive and
purple when negative (PRGn, as the reference), its width bucketed by the edge's share of its target's
shown input (the reference's `pctInput`).

Interaction follows the reference: hover shows the nearest node within 30 px, click selects (its input
and output edges are drawn on top, every other edge dimmed, its neighbours coloured by their edge
weight to it), Ctrl-click pins, Esc clears. Beyond it: wheel zoom and drag pan (pyqtgraph's ViewBox)
with a Fit button, live node/edge threshold sliders re-pruning the full graph kept in memory, a line
that always says how many nodes the thresholds hide, the graph's replacement and completeness scores,
and rings on the features an intervention changed.

Modules: `view` (the `GraphCanvas` widget and its wiring), `shown_graph` (what is shown, Qt-free),
`edges` (bucketed and rasterised edges), `overlays` (selection, pins, hover), `activation_rings`,
`captions` (node captions, logit labels, tooltips), `axes`, `toolbar`, `style`.
"""
