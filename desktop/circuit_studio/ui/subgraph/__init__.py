"""The subgraph pane (`pane.SubgraphPane`): pinned nodes and supernodes, laid out like the main graph
(`layout`, Qt-free) and drawn with pyqtgraph (`plot`)."""
