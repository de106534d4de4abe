"""Naming graph nodes in text (command-line options, reports): parse a reference, write one back.

Accepted references (`parse_node`), for a graph of L layers and P positions:

    #N                 node N in graph order
    LAYER_FEATURE_POS  a feature node (circuit-tracer's frontend id), e.g. 1_423_5
    {L+1}_VOCAB_{P-1}  a logit node by its frontend id
    logit:#K           the K-th logit node (0 = the first target, the most probable for salient targets)
    logit:TOKEN        the logit node of that token string (exact, else ignoring surrounding spaces);
                       logit:K with an integer K that is no logit's token means logit:#K
    error:LAYER_POS    an error node (its frontend id 0_LAYER_POS collides with layer-0 features)
    token:POS, E_TOKENID_POS   a token (embedding) node

`node_ref` writes the canonical reference of a node (one `parse_node` reads back), `node_label` a
short human description.
"""

from __future__ import annotations

import re

import numpy as np

from ..graph.attribution_graph import AttributionGraph, NodeKind

_TRIPLE = re.compile(r"^(\d+)_(\d+)_(\d+)$")
_PAIR = re.compile(r"^(\d+)[_,:](\d+)$")


def parse_node(graph: AttributionGraph, text: str) -> int:
    """The graph node index `text` refers to (see the module docstring); ValueError saying why not."""
    s = text.strip()
    if s.startswith("#") and s[1:].isdigit():
        node = int(s[1:])
        if not 0 <= node < graph.n_nodes:
            raise ValueError(f"node {s} is outside the graph's {graph.n_nodes} nodes")
        return node
    low = s.lower()
    if low.startswith("logit:"):
        return _logit(graph, s[len("logit:"):])
    if low.startswith("error:"):
        m = _PAIR.match(s[len("error:"):].strip())
        if not m:
            raise ValueError(f"{text!r}: an error node is error:LAYER_POS, e.g. error:1_5")
        layer, pos = int(m.group(1)), int(m.group(2))
        _check_pos(graph, pos, text)
        if not 0 <= layer < graph.n_layers:
            raise ValueError(f"{text!r}: layer {layer} is outside 0..{graph.n_layers - 1}")
        return graph.error_offset + layer * graph.n_pos + pos
    if low.startswith("token:"):
        rest = s[len("token:"):].strip()
        if not rest.isdigit():
            raise ValueError(f"{text!r}: a token node is token:POS, e.g. token:3")
        _check_pos(graph, int(rest), text)
        return graph.token_offset + int(rest)
    m = re.match(r"^E_(\d+)_(\d+)$", s)
    if m:
        tok, pos = int(m.group(1)), int(m.group(2))
        _check_pos(graph, pos, text)
        if int(graph.input_tokens[pos]) != tok:
            raise ValueError(f"{text!r}: position {pos} holds token {int(graph.input_tokens[pos])}, not {tok}")
        return graph.token_offset + pos
    m = _TRIPLE.match(s)
    if m:
        a, b, c = (int(v) for v in m.groups())
        if a == graph.n_layers + 1:
            hits = np.flatnonzero(graph.logit_token_ids == b)
            if hits.size and c == graph.n_pos - 1:
                return graph.logit_offset + int(hits[0])
            raise ValueError(f"{text!r}: token id {b} is not a logit node of this graph")
        return _feature(graph, a, b, c, text)
    raise ValueError(f"{text!r} is not a node reference: use LAYER_FEATURE_POS for a feature, logit:TOKEN or "
                     "logit:#K for a logit, error:LAYER_POS, token:POS, or #N for a node index")


def _check_pos(graph: AttributionGraph, pos: int, text: str) -> None:
    if not 0 <= pos < graph.n_pos:
        raise ValueError(f"{text!r}: position {pos} is outside the prompt's 0..{graph.n_pos - 1}")


def _feature(graph: AttributionGraph, layer: int, feat: int, pos: int, text: str) -> int:
    af = graph.active_features
    hit = np.flatnonzero((af[:, 0] == layer) & (af[:, 1] == pos) & (af[:, 2] == feat))
    if not hit.size:
        raise ValueError(f"{text!r}: feature {feat} of layer {layer} is not active at position {pos}")
    where = np.flatnonzero(graph.selected_features == hit[0])
    if not where.size:
        raise ValueError(f"{text!r}: the feature is active but outside the graph (its feature budget left it out)")
    return int(where[0])


def _logit(graph: AttributionGraph, spec: str) -> int:
    spec_stripped = spec.strip()
    if spec_stripped.startswith("#") and spec_stripped[1:].isdigit():
        k = int(spec_stripped[1:])
    else:
        tokens = list(graph.logit_tokens)
        for match in (lambda t: t == spec, lambda t: t.strip() == spec_stripped):
            hits = [i for i, t in enumerate(tokens) if match(t)]
            if hits:
                return graph.logit_offset + hits[0]
        if not spec_stripped.isdigit():
            raise ValueError(f"logit {spec!r} is not among the graph's targets "
                             f"({', '.join(repr(t) for t in tokens[:10])})")
        k = int(spec_stripped)
    if not 0 <= k < graph.n_logits:
        raise ValueError(f"logit #{k} is outside the graph's {graph.n_logits} logit nodes")
    return graph.logit_offset + k


def node_ref(graph: AttributionGraph, node: int) -> str:
    """The canonical reference of `node` (read back by `parse_node`)."""
    kind = graph.kind_of(node)
    if kind is NodeKind.FEATURE:
        layer, pos, feat, _ = graph.feature_of(node)
        return f"{layer}_{feat}_{pos}"
    if kind is NodeKind.ERROR:
        layer, pos = divmod(node - graph.error_offset, graph.n_pos)
        return f"error:{layer}_{pos}"
    if kind is NodeKind.TOKEN:
        return f"token:{node - graph.token_offset}"
    return f"logit:#{node - graph.logit_offset}"


def node_label(graph: AttributionGraph, node: int) -> str:
    """A short description, e.g. "feature 423 of layer 1 at 5 ('Austin')"."""
    kind = graph.kind_of(node)
    tokens = graph.token_strings
    if kind is NodeKind.FEATURE:
        layer, pos, feat, act = graph.feature_of(node)
        return f"feature {feat} of layer {layer} at {pos} ({tokens[pos]!r}, activation {act:.3g})"
    if kind is NodeKind.ERROR:
        layer, pos = divmod(node - graph.error_offset, graph.n_pos)
        return f"error of layer {layer} at {pos} ({tokens[pos]!r})"
    if kind is NodeKind.TOKEN:
        pos = node - graph.token_offset
        return f"token {tokens[pos]!r} at {pos}"
    k = node - graph.logit_offset
    return f"logit {graph.logit_tokens[k]!r} (p = {float(graph.logit_probabilities[k]):.3g})"
