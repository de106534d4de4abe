"""What tells two prompts apart at one token, and the swap experiment built on it.

The "Biology" paper tests a two-hop circuit by replacing the features of one prompt's intermediate
concept with another prompt's (Texas → California) and watching the answer follow. Here the
candidates come from the graphs themselves: the feature nodes at a token of prompt A that are not
active at the matching token of prompt B, most influential first (influence on the logits, as
pruning ranks nodes), and the same from B's side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph.attribution_graph import AttributionGraph
from .intervene import Intervention


@dataclass(frozen=True)
class DistinctFeature:
    """A feature node of one graph that is silent at the matching token of another prompt."""

    node: int  # feature node index in its graph
    layer: int
    feature: int
    activation: float  # its activation in its own prompt
    influence: float  # its node influence in its own graph


def distinct_features(graph: AttributionGraph, influence: np.ndarray, position: int, other: AttributionGraph,
                      other_position: int) -> list[DistinctFeature]:
    """Feature nodes of `graph` at `position` that are not active in `other` at `other_position`, most
    influential first. `influence`: float [N] node influence of `graph` (`Pruner.node_influence`)."""
    for g, p in ((graph, position), (other, other_position)):
        if not 0 <= p < g.n_pos:
            raise ValueError(f"Position {p} is outside the prompt ({g.n_pos} tokens).")
    theirs = other.active_features[other.active_features[:, 1] == other_position]
    active_there = {(int(l), int(f)) for l, _, f in theirs}
    out = []
    for node in range(graph.n_features):
        layer, pos, feature, act = graph.feature_of(node)
        if pos == position and (layer, feature) not in active_there:
            out.append(DistinctFeature(node, layer, feature, act, float(influence[node])))
    out.sort(key=lambda d: -d.influence)
    return out


def swap_interventions(ours: list[DistinctFeature], theirs: list[DistinctFeature], position: int,
                       k: int) -> list[Intervention]:
    """Our `k` most influential distinct features ablated and their `k` set to their own activations,
    all at `position` of our prompt."""
    return ([Intervention(d.layer, position, d.feature, 0.0) for d in ours[:k]]
            + [Intervention(d.layer, position, d.feature, d.activation) for d in theirs[:k]])
