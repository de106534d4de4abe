"""Two attribution graphs side by side: what is only in one, what changed most, or what each explains.

This is how the papers argue (Dallas vs San Diego; per-layer vs cross-layer transcoders). Qt-free.

**Aligned comparison** (both graphs traced with the same transcoder set, so a (layer, feature) means the
same thing in both). Positions align where the prompts do: the common prefix of token ids (same ids at
the same position) and the common suffix (same ids at the same distance from the end, so the last
token, where the answer is read, aligns even when a city takes one token in one prompt and two in the
other). A feature at an aligned position is keyed by (layer, position, feature); the positions in
between (where the prompts differ) are one *span* per graph, and a feature there is keyed by
(layer, feature) alone, aggregated over the span's positions (activation: the largest; influence: the
sum; its node: the most influential one). The result is a ranked list of `DiffRow`s:

* ``only_a`` / ``only_b``: a feature node of one graph whose key is not active in the other (ranked by
  its node influence, `core.graph.pruning.Pruner.node_influence`);
* ``changed``: a key that is a node in both, ranked by the change of its node influence (activations
  are given too);
* ``logit``: a logit token of both graphs whose probability changed;
* ``edge``: an edge between two keys that are nodes in both, ranked by the change of its edge score
  (pruning's: |Â[t, s]| × (influence[t] + w[t]), on the influence scale, so edges and nodes rank together).

Every row says which node it is in each graph (`node_a`, `node_b`, None where absent), so a view can
select it on both canvases.

**Different transcoder sets** (features cannot align): `GraphComparison.aligned` is False, `rows` is
empty and `explains` says what each graph explains: replacement and completeness scores and its top
nodes by influence. `explains` is filled for aligned comparisons too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .display_text import layer_name, token_label
from .attribution_graph import AttributionGraph
from .pruning import Pruner
from .row_normalisation import normalize_matrix

ONLY_A, ONLY_B, CHANGED, LOGIT, EDGE = "only_a", "only_b", "changed", "logit", "edge"
MAX_EDGE_NODES = 400  # edges are compared among the most influential aligned nodes (a dense [M, M] block each)
TOP_NODES = 15  # nodes each side lists in `explains`


@dataclass(frozen=True)
class DiffRow:
    """One difference between graph A and graph B (see the module docstring for the kinds)."""

    kind: str
    label: str  # e.g. "L3 #812 @ ' Dallas'" or "L3 #812 → L5 #20"
    score: float  # what the list is ranked by (influence scale)
    node_a: int | None  # the node in graph A (an edge's target), None when absent
    node_b: int | None
    activation_a: float = 0.0  # feature activation (logits: probability); 0 where absent
    activation_b: float = 0.0
    influence_a: float = 0.0  # node influence (edges: edge score)
    influence_b: float = 0.0
    weight_a: float = 0.0  # edges: the signed edge weight A[t, s]
    weight_b: float = 0.0
    source_a: int | None = None  # edges: the source node in each graph
    source_b: int | None = None

    @property
    def activation_change(self) -> float:
        return self.activation_b - self.activation_a

    @property
    def influence_change(self) -> float:
        return self.influence_b - self.influence_a


@dataclass(frozen=True)
class Explains:
    """What one graph explains: its scores and its most influential feature (and error) nodes."""

    title: str
    transcoders: str
    replacement: float
    completeness: float
    error_share: float  # the error nodes' part of the total feature + error influence
    top_nodes: tuple[tuple[int, str, float], ...]  # (node, label, influence), most influential first


@dataclass(frozen=True)
class GraphComparison:
    aligned: bool  # False: different transcoder sets, only `explains` is meaningful
    rows: tuple[DiffRow, ...]
    explains: tuple[Explains, Explains]
    aligned_positions: tuple[tuple[int, int], ...] = ()  # (position in A, position in B)
    span_a: tuple[int, int] = (0, 0)  # [start, stop) of A's positions that do not align
    span_b: tuple[int, int] = (0, 0)
    reason: str = ""  # why the graphs were not aligned
    notes: tuple[str, ...] = field(default_factory=tuple)

    def of_kind(self, *kinds: str) -> list[DiffRow]:
        return [r for r in self.rows if r.kind in kinds]


def node_label(graph: AttributionGraph, node: int) -> str:
    """A short, graph-independent name of a node: "L3 #812 @ ' Dallas'", "Err L2 @ 'is'", "→ ' Austin'"."""
    kind = graph.kind_of(node)
    pos = int(graph.node_positions()[node])
    at = f"@ {token_label(graph.token_strings[pos])!r}"
    if node < graph.n_features:
        layer, _, feat, _ = graph.feature_of(node)
        return f"{layer_name(layer, graph.n_layers)} #{feat} {at}"
    if kind.value == "error":
        return f"Err {layer_name((node - graph.error_offset) // graph.n_pos, graph.n_layers)} {at}"
    if kind.value == "token":
        return f"Emb {at}"
    return f"→ {token_label(graph.logit_tokens[node - graph.logit_offset])!r}"


def position_alignment(a: AttributionGraph, b: AttributionGraph) -> tuple[list[tuple[int, int]], tuple[int, int],
                                                                          tuple[int, int]]:
    """(aligned (pos_a, pos_b) pairs, A's unaligned span, B's unaligned span): the common prefix and suffix
    of token ids, not overlapping."""
    ta, tb = a.input_tokens.tolist(), b.input_tokens.tolist()
    n = min(len(ta), len(tb))
    pre = 0
    while pre < n and ta[pre] == tb[pre]:
        pre += 1
    suf = 0
    while suf < n - pre and ta[-1 - suf] == tb[-1 - suf]:
        suf += 1
    pairs = [(i, i) for i in range(pre)] + [(len(ta) - suf + i, len(tb) - suf + i) for i in range(suf)]
    return pairs, (pre, len(ta) - suf), (pre, len(tb) - suf)


def same_transcoders(a: AttributionGraph, b: AttributionGraph) -> tuple[bool, str]:
    """Whether features of `a` and `b` can be aligned (same transcoder set), and if not, why."""
    if a.n_layers != b.n_layers:
        return False, f"the graphs have {a.n_layers} and {b.n_layers} layers"
    if a.transcoder_name != b.transcoder_name:
        return False, f"different transcoder sets ({a.transcoder_name or '?'} vs {b.transcoder_name or '?'})"
    return True, ""


class _Side:
    """One graph's feature keys: key -> (node or -1, activation, influence) and its nodes' keys."""

    def __init__(self, graph: AttributionGraph, pruner: Pruner, pos_key: dict[int, int], span: tuple[int, int]):
        self.graph, self.pruner = graph, pruner
        infl = pruner.node_influence
        self.present: dict[tuple, float] = {}  # key -> largest activation among active features
        for (layer, pos, feat), act in zip(graph.active_features.tolist(), graph.activation_values.tolist()):
            key = self._key(int(layer), int(pos), int(feat), pos_key, span)
            if key is not None:
                self.present[key] = max(self.present.get(key, -np.inf), float(act))
        self.nodes: dict[tuple, tuple[int, float, float]] = {}  # key -> (best node, activation, summed influence)
        self.key_of: dict[int, tuple] = {}
        for node in range(graph.n_features):
            layer, pos, feat, act = graph.feature_of(node)
            key = self._key(layer, pos, feat, pos_key, span)
            if key is None:
                continue
            self.key_of[node] = key
            best, best_act, total = self.nodes.get(key, (-1, -np.inf, 0.0))
            if best < 0 or infl[node] > infl[best]:
                best = node
            self.nodes[key] = (best, max(best_act, act), total + float(infl[node]))

    @staticmethod
    def _key(layer: int, pos: int, feat: int, pos_key: dict[int, int], span: tuple[int, int]) -> tuple | None:
        if pos in pos_key:
            return (layer, pos_key[pos], feat)
        if span[0] <= pos < span[1]:
            return (layer, None, feat)
        return None


def explains(graph: AttributionGraph, pruner: Pruner, title: str = "", k: int = TOP_NODES) -> Explains:
    """What `graph` explains: replacement / completeness and its top feature and error nodes by influence."""
    r, c = pruner.graph_scores()
    infl = pruner.node_influence
    feat = float(infl[: graph.error_offset].sum())
    err = float(infl[graph.error_offset: graph.token_offset].sum())
    order = np.argsort(-infl[: graph.token_offset], kind="stable")[:k]
    top = tuple((int(n), node_label(graph, int(n)), float(infl[n])) for n in order if infl[n] > 0)
    return Explains(title or graph.prompt, graph.transcoder_name, float(r), float(c),
                    err / (feat + err) if feat + err > 0 else 0.0, top)


def compare_graphs(a: AttributionGraph, b: AttributionGraph, *, pruner_a: Pruner | None = None,
                   pruner_b: Pruner | None = None, titles: tuple[str, str] = ("", ""),
                   aligned: bool | None = None, max_rows: int = 300) -> GraphComparison:
    """Compare graph `a` with graph `b` (see the module docstring). `aligned`: force (or refuse) feature
    alignment; by default features align when both graphs name the same transcoder set."""
    pa, pb = pruner_a or Pruner(a), pruner_b or Pruner(b)
    ex = (explains(a, pa, titles[0]), explains(b, pb, titles[1]))
    ok, reason = same_transcoders(a, b)
    if aligned is not None:  # the caller knows better (e.g. the sets' content hashes)
        ok, reason = aligned, ("" if aligned else reason or "different transcoder sets")
    if not ok:
        return GraphComparison(False, (), ex, reason=reason)
    pairs, span_a, span_b = position_alignment(a, b)
    key_a = {pa_: i for i, (pa_, _) in enumerate(pairs)}
    key_b = {pb_: i for i, (_, pb_) in enumerate(pairs)}
    side_a, side_b = _Side(a, pa, key_a, span_a), _Side(b, pb, key_b, span_b)

    def label(side: _Side, key: tuple, node: int) -> str:
        g = side.graph
        layer, idx, feat = key
        where = (f"@ {token_label(g.token_strings[int(g.node_positions()[node])])!r}" if idx is not None
                 else "in the differing tokens")
        return f"{layer_name(layer, g.n_layers)} #{feat} {where}"

    rows: list[DiffRow] = []
    for side, other, kind in ((side_a, side_b, ONLY_A), (side_b, side_a, ONLY_B)):
        for key, (node, act, infl) in side.nodes.items():
            if key in other.present:
                continue
            mine = dict(node_a=node, activation_a=act, influence_a=infl, node_b=None) if kind == ONLY_A else \
                dict(node_b=node, activation_b=act, influence_b=infl, node_a=None)
            rows.append(DiffRow(kind, label(side, key, node), infl, **mine))
    both = [k for k in side_a.nodes if k in side_b.nodes]
    for key in both:
        na, act_a, ia = side_a.nodes[key]
        nb, act_b, ib = side_b.nodes[key]
        rows.append(DiffRow(CHANGED, label(side_a, key, na), abs(ib - ia), na, nb, act_a, act_b, ia, ib))
    # logits by token id
    ids_b = {int(t): k for k, t in enumerate(b.logit_token_ids.tolist())}
    for k, t in enumerate(a.logit_token_ids.tolist()):
        if int(t) in ids_b:
            kb = ids_b[int(t)]
            p_a, p_b = float(a.logit_probabilities[k]), float(b.logit_probabilities[kb])
            rows.append(DiffRow(LOGIT, f"→ {token_label(a.logit_tokens[k])!r}", abs(p_b - p_a),
                                a.logit_offset + k, b.logit_offset + kb, p_a, p_b,
                                float(pa.node_influence[a.logit_offset + k]), float(pb.node_influence[b.logit_offset + kb])))
    rows.extend(_edge_rows(side_a, side_b, both, ids_b, label))
    rows.sort(key=lambda r: -r.score)
    return GraphComparison(True, tuple(rows[:max_rows]), ex, tuple(pairs), span_a, span_b)


def _edge_rows(side_a: _Side, side_b: _Side, both: list[tuple], ids_b: dict[int, int], label) -> list[DiffRow]:
    a, b = side_a.graph, side_b.graph
    # aligned node pairs: shared feature keys (most influential first) and shared logits
    both = sorted(both, key=lambda k: -max(side_a.nodes[k][2], side_b.nodes[k][2]))[:MAX_EDGE_NODES]
    na = [side_a.nodes[k][0] for k in both]
    nb = [side_b.nodes[k][0] for k in both]
    names = [label(side_a, k, n) for k, n in zip(both, na)]
    for k, t in enumerate(a.logit_token_ids.tolist()):
        if int(t) in ids_b:
            na.append(a.logit_offset + k)
            nb.append(b.logit_offset + ids_b[int(t)])
            names.append(f"→ {token_label(a.logit_tokens[k])!r}")
    if len(na) < 2:
        return []
    ia, ib = np.asarray(na), np.asarray(nb)

    def scores(g: AttributionGraph, pruner: Pruner, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = g.adjacency.submatrix(idx)  # [M, N]: the aligned targets' full input rows (for normalising)
        norm = normalize_matrix(rows)
        mass = pruner.node_influence[idx] + g.logit_weights()[idx]
        return rows[:, idx], norm[:, idx] * mass[:, None]

    wa, sa = scores(a, side_a.pruner, ia)
    wb, sb = scores(b, side_b.pruner, ib)
    delta = np.abs(sb - sa)
    flat = np.argsort(-delta, axis=None, kind="stable")[:200]
    out = []
    for f in flat.tolist():
        t, s = divmod(f, ia.size)
        if delta[t, s] <= 0:
            break
        out.append(DiffRow(EDGE, f"{names[s]} → {names[t]}", float(delta[t, s]), int(ia[t]), int(ib[t]),
                           influence_a=float(sa[t, s]), influence_b=float(sb[t, s]), weight_a=float(wa[t, s]),
                           weight_b=float(wb[t, s]), source_a=int(ia[s]), source_b=int(ib[s])))
    return out


def describe_row(row: DiffRow) -> str:
    """One line for a diff list: what differs, in numbers."""
    if row.kind == ONLY_A:
        return f"only in A · activation {row.activation_a:.3g} · influence {row.influence_a:.3g}"
    if row.kind == ONLY_B:
        return f"only in B · activation {row.activation_b:.3g} · influence {row.influence_b:.3g}"
    if row.kind == LOGIT:
        return f"p {row.activation_a:.3f} → {row.activation_b:.3f}"
    if row.kind == EDGE:
        return f"weight {row.weight_a:+.3g} → {row.weight_b:+.3g} · score {row.influence_a:.3g} → {row.influence_b:.3g}"
    return (f"activation {row.activation_a:.3g} → {row.activation_b:.3g} · "
            f"influence {row.influence_a:.3g} → {row.influence_b:.3g}")
