"""The attribution graph: node order, adjacency, pruning and scores, layout, export and import."""
