"""The name `main_window` imports from here; the pane itself is `ui.feature`. Goes once it imports
`ui.feature.pane` instead."""

from .feature.pane import FeaturePane

__all__ = ["FeaturePane"]
