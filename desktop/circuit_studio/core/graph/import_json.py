"""Import a circuit-tracer / Neuronpedia frontend graph JSON (shared/spec/attribution.md §5.2).

`load_graph_json(path)` (or `graph_from_json(doc)`) turns a `<slug>.json` document back into an
`AttributionGraph` plus the analysis it carries (`qParams.pinnedIds`, `qParams.supernodes`, the
features' `clerp`s), as an `ImportedGraph`.

Node-id conventions read (nodes are recognised by `feature_type`, so both work):
* circuit-tracer 0.5.0: error nodes `"0_{layer}_{pos}"` (jsNodeId `"{layer}_{pos}-0"`);
* Neuronpedia's newer files: error nodes `"{layer}_-1_{pos}"` (jsNodeId `"{layer}_-1-{pos}"`).
Features `"{layer}_{feature}_{pos}"`, tokens `"E_{token id}_{pos}"`, logits `"{L+1}_{vocab id}_{P-1}"`.
A circuit-tracer error id can equal a layer-0 feature's id; link ends with such an id are resolved
by the links' (target, source) node order, and failing that taken to be the feature.

What the file does not hold, and the imported graph therefore lacks (it is **read-only**:
`graph.provenance["imported"]` is set, and the window neither re-traces nor intervenes on it):
* every node and edge that pruning removed: the graph holds only the listed nodes (features, errors)
  and links; the other error nodes of the node order are present but unconnected, and the
  adjacency is zero outside the links; re-pruning at other thresholds is therefore not offered
  (`imported_pruning` gives the file's own pruning back, with its `influence` values);
* the active-but-pruned features, the model and transcoders (only their names), the vocabulary size
  (taken as the largest token id seen + 1), the logits' decoded tokens beyond what their clerp
  `Output "<tok>" (p=...)` says, and the full graph's replacement/completeness scores.
Node order follows `core.graph`'s contract with the nodes present (features sorted by
(layer, position, feature), then all L x P error nodes, all P tokens, the logits as listed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .adjacency import Adjacency, Block
from ..errors import GraphFileError
from .attribution_graph import AttributionGraph
from .pruning import PruneResult

FEATURE, ERROR, TOKEN, LOGIT = "cross layer transcoder", "mlp reconstruction error", "embedding", "logit"
_LOGIT_CLERP = re.compile(r'^Output "(.*)" \(p=[^)]*\)$', re.S)


@dataclass(frozen=True)
class ImportedGraph:
    """A graph read from a frontend JSON, with the analysis the file carried (node indices of `graph`)."""

    graph: AttributionGraph
    pinned: tuple[int, ...]
    supernodes: tuple[tuple[str, tuple[int, ...]], ...]
    labels: dict[tuple[int, int], str]  # (layer, feature) -> clerp
    id_style: str  # "circuit-tracer" or "neuronpedia" (how error nodes were named)

    @property
    def pruned(self) -> PruneResult:
        return imported_pruning(self.graph)

    def analysis(self, **options):
        """An `Analysis` of the graph with the file's pins, supernodes and clerps (supernode members are
        pinned too, as the window requires)."""
        from ..session.analysis import Analysis, Supernode

        analysis = Analysis(self.graph, labels={**self.labels, **options.pop("labels", {})}, **options)
        pins = list(self.pinned)
        for _, members in self.supernodes:
            pins += [m for m in members if m not in pins]
        analysis.pinned[:] = pins
        analysis.supernodes[:] = [Supernode(i + 1, name, members) for i, (name, members) in enumerate(self.supernodes)
                                  if len(members) >= 1]
        return analysis


def is_imported(graph: AttributionGraph) -> bool:
    """Whether `graph` came from a frontend JSON (read-only: no re-trace, no intervention, no re-pruning)."""
    return bool(graph.provenance.get("imported"))


def imported_pruning(graph: AttributionGraph) -> PruneResult:
    """The pruning the file was exported with: its nodes and links, its `influence` values."""
    info = graph.provenance["imported"]
    n = graph.n_nodes
    node_mask = np.zeros(n, dtype=bool)
    node_mask[np.asarray(info["kept_nodes"], dtype=np.int64)] = True
    node_mask[graph.token_offset:] = True
    cumulative = np.zeros(n, dtype=np.float32)
    cumulative[np.asarray(info["kept_nodes"], dtype=np.int64)] = np.asarray(info["influence"], dtype=np.float32)
    targets = np.asarray(info["edge_targets"], dtype=np.int64)
    sources = np.asarray(info["edge_sources"], dtype=np.int64)
    order = np.lexsort((sources, targets))
    arrays = [node_mask, targets[order], sources[order], cumulative, cumulative.copy()]
    for a in arrays:
        a.flags.writeable = False
    thr = float(info.get("node_threshold", 0.8))
    return PruneResult(arrays[0], arrays[1], arrays[2], arrays[3], arrays[4], node_threshold=thr,
                       edge_threshold=float(info.get("edge_threshold", 0.98)), node_cut=0.0, edge_cut=0.0)


def load_graph_json(path: str | Path) -> ImportedGraph:
    """Read a circuit-tracer / Neuronpedia `<slug>.json`. Raises GraphFileError."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise GraphFileError(f"{path} does not exist.") from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise GraphFileError(f"{path} is not a graph JSON file ({type(e).__name__}: {e}).") from e
    return graph_from_json(doc, source=str(path))


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError) as e:
        raise GraphFileError(f"Graph JSON: {what} {text!r} is not a number.") from e


def graph_from_json(doc: dict, *, source: str = "") -> ImportedGraph:
    """See the module docstring. Raises GraphFileError when `doc` is not a frontend graph document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) or not isinstance(doc.get("links"), list):
        raise GraphFileError("This is not a circuit-tracer / Neuronpedia graph JSON (no nodes and links).",
                             "Open a <slug>.json written by circuit-tracer, Neuronpedia or Circuit Studio.")
    meta = doc.get("metadata") or {}
    q = doc.get("qParams") or {}
    try:
        return _build(doc["nodes"], doc["links"], meta, q, source)
    except GraphFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise GraphFileError(f"The graph JSON is malformed ({type(e).__name__}: {e}).") from e


def _build(nodes: list, links: list, meta: dict, q: dict, source: str) -> ImportedGraph:
    feats, errors, tokens, logits = [], [], {}, []
    style = "circuit-tracer"
    for rec in nodes:
        kind, nid = rec["feature_type"], str(rec["node_id"])
        parts = nid.split("_")
        if kind == ERROR:
            if len(parts) == 3 and parts[1] == "-1":
                style = "neuronpedia"
            errors.append((_int(rec["layer"], "layer"), int(rec["ctx_idx"]), rec))
        elif kind == TOKEN:
            tokens[int(rec["ctx_idx"])] = (_int(parts[1], "token id"), rec)
        elif kind == LOGIT:
            logits.append(rec)
        else:  # transcoder features ("cross layer transcoder", also for PLTs; any other kind too)
            feats.append((_int(rec["layer"], "layer"), int(rec["ctx_idx"]), _int(parts[1], "feature"), rec))
    prompt_tokens = [str(t) for t in meta.get("prompt_tokens") or []]
    positions = [p for _, p, *_ in feats + errors] + list(tokens) + [int(r["ctx_idx"]) for r in logits]
    n_pos = max([len(prompt_tokens)] + [p + 1 for p in positions])
    if logits:
        n_layers = _int(logits[0]["layer"], "logit layer") - 1
    else:
        n_layers = max([l + 1 for l, *_ in feats + errors], default=1)
    if any(not 0 <= l < n_layers for l, *_ in feats + errors):
        raise GraphFileError("Graph JSON: a feature or error node lies above the logit layer.")

    feats.sort(key=lambda f: (f[0], f[1], f[2]))
    n_f = len(feats)
    active = np.array([[l, p, f] for l, p, f, _ in feats], dtype=np.int64).reshape(-1, 3)
    acts = np.array([float(r.get("activation") or 0.0) for *_, r in feats], dtype=np.float32)
    input_tokens = np.array([tokens[p][0] if p in tokens else 0 for p in range(n_pos)], dtype=np.int64)
    token_strings = tuple(prompt_tokens[p] if p < len(prompt_tokens) else "" for p in range(n_pos))
    logit_ids = np.array([_int(r["feature"], "logit id") for r in logits], dtype=np.int64)
    probs = np.array([float(r.get("token_prob") or 0.0) for r in logits], dtype=np.float32)
    logit_tokens = []
    for r in logits:
        m = _LOGIT_CLERP.match(str(r.get("clerp") or ""))
        logit_tokens.append(m.group(1) if m else str(r["feature"]))
    err_off = n_f
    tok_off = err_off + n_layers * n_pos
    logit_off = tok_off + n_pos
    n = logit_off + len(logits)

    index_of: dict[str, list[int]] = {}  # id -> node indices (ids can collide, see the module docstring)
    kept, influence, labels = [], [], {}

    def add(nid: str, node: int, rec: dict) -> None:
        index_of.setdefault(nid, []).append(node)
        kept.append(node)
        influence.append(float(rec.get("influence") or 0.0))

    for i, (l, p, f, rec) in enumerate(feats):
        add(str(rec["node_id"]), i, rec)
        if rec.get("clerp"):
            labels[(l, f)] = str(rec["clerp"])
    for l, p, rec in errors:
        add(str(rec["node_id"]), err_off + l * n_pos + p, rec)
    for p, (_, rec) in tokens.items():
        add(str(rec["node_id"]), tok_off + p, rec)
    for k, rec in enumerate(logits):
        add(str(rec["node_id"]), logit_off + k, rec)

    def one(nid: str) -> int:
        if nid not in index_of:
            raise GraphFileError(f"Graph JSON: a link or pin names node {nid!r}, which is not among the nodes.")
        return index_of[nid][0]

    # links: resolve colliding ids from the (target, source) order of the links
    targets = [one(str(link["target"])) if len(index_of.get(str(link["target"]), [])) < 2
               else _target_choice(index_of[str(link["target"])], err_off) for link in links]
    sources = _resolve_sources(links, targets, index_of, one)
    weights = np.array([float(link["weight"]) for link in links], dtype=np.float32)
    adjacency = _adjacency(n, np.array(targets, dtype=np.int64), np.array(sources, dtype=np.int64), weights)

    pinned = tuple(dict.fromkeys(one(str(i)) for i in q.get("pinnedIds") or [] if str(i) in index_of))
    supernodes = []
    for sn in q.get("supernodes") or []:
        if isinstance(sn, list) and sn:
            members = tuple(dict.fromkeys(one(str(i)) for i in sn[1:] if str(i) in index_of))
            if members:
                supernodes.append((str(sn[0]), members))
    order = np.argsort(kept, kind="stable")
    provenance = {"imported": {
        "source": source, "format": style, "metadata": meta,
        "node_threshold": float(meta.get("node_threshold", 0.8) or 0.8),
        "kept_nodes": [int(kept[i]) for i in order], "influence": [influence[i] for i in order],
        "edge_targets": [int(t) for t in targets], "edge_sources": [int(s) for s in sources],
        "lost": "pruned-away nodes and edges, inactive/unselected features, model and transcoders, vocabulary size",
    }}
    vocab = int(max([int(input_tokens.max(initial=0)), int(logit_ids.max(initial=0))]) + 1)
    graph = AttributionGraph(
        prompt=str(meta.get("prompt", " ".join(token_strings))), input_tokens=input_tokens,
        token_strings=token_strings, active_features=active, activation_values=acts,
        selected_features=np.arange(n_f, dtype=np.int64), logit_token_ids=logit_ids, logit_probabilities=probs,
        logit_tokens=tuple(logit_tokens), n_layers=n_layers, vocab_size=vocab,
        model_name=str(meta.get("model", "") or ""), transcoder_name=str(meta.get("scan", "") or ""),
        provenance=provenance, adjacency=adjacency)
    return ImportedGraph(graph, pinned, tuple(supernodes), labels, style)


def _target_choice(candidates: list[int], err_off: int) -> int:
    """A colliding id as a link target: error nodes receive no edges, so it is the feature."""
    feats = [c for c in candidates if c < err_off]
    return feats[0] if feats else candidates[0]


def _resolve_sources(links: list, targets: list[int], index_of: dict, one) -> list[int]:
    """Source node of each link; a colliding id takes the candidate that keeps the sources of its
    target in ascending node order (the order exports list them in), else the first (the feature)."""
    sources: list[int | None] = []
    for link in links:
        cands = index_of.get(str(link["source"]))
        sources.append(one(str(link["source"])) if not cands or len(cands) == 1 else None)
    for i, s in enumerate(sources):
        if s is not None:
            continue
        cands = sorted(index_of[str(links[i]["source"])])
        prev = next((sources[j] for j in range(i - 1, -1, -1) if targets[j] == targets[i] and sources[j] is not None),
                    -1)
        nxt = next((sources[j] for j in range(i + 1, len(links)) if targets[j] == targets[i]
                    and sources[j] is not None), None)
        same = [j for j in range(len(links)) if targets[j] == targets[i] and links[j]["source"] == links[i]["source"]]
        fit = [c for c in cands if c > prev and (nxt is None or c < nxt)
               and not any(sources[j] == c for j in same if j != i)]
        sources[i] = fit[0] if fit else cands[0]
    return [int(s) for s in sources]  # type: ignore[arg-type]


def _adjacency(n: int, targets: np.ndarray, sources: np.ndarray, weights: np.ndarray) -> Adjacency:
    """The links as blocks, one per target row (no N x N matrix for a big file)."""
    blocks = []
    if targets.size:
        order = np.lexsort((sources, targets))
        t, s, w = targets[order], sources[order], weights[order]
        starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
        ends = np.r_[starts[1:], t.size]
        for a, b in zip(starts.tolist(), ends.tolist()):
            cols, idx = np.unique(s[a:b], return_index=True)  # a repeated link: the first one counts
            blocks.append(Block(np.array([t[a]]), cols, w[a:b][idx].reshape(-1, 1).astype(np.float32)))
    return Adjacency(n, blocks)
