"""The name `main_window` imports from here; the pane itself is `ui.subgraph`. Goes once it imports
`ui.subgraph.pane` instead."""

from .subgraph.pane import SubgraphPane

__all__ = ["SubgraphPane"]
