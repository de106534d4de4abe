"""The graph as circuit-tracer's frontend JSON (`create_graph_files`, shared/spec/attribution.md §5.2).

`frontend_json` builds the `<slug>.json` document {metadata, qParams, nodes, links} that
circuit-tracer's local server and Neuronpedia read; `write_graph_files` also keeps the folder's
`graph-metadata.json` index up to date, as `create_graph_files` does.

Matching the reference, field for field and in the same order:
* nodes: the kept nodes in node order (features, errors, tokens, logits), restricted to those a kept
  link touches, plus every token and logit node;
* links: kept edges between kept nodes, ordered by (target, source) node index; weight = raw A[t, s];
* ids: feature "{layer}_{feature}_{pos}", error "0_{layer}_{pos}" (can equal a layer-0 feature's id:
  a reference quirk we keep, since the frontend expects it), token "E_{token id}_{pos}",
  logit "{L+1}_{vocab id}_{P-1}".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..atomic_write import replace_all_or_none, write_text_atomic
from ..errors import GraphFileError
from .attribution_graph import AttributionGraph, graph_write_error
from .pruning import PruneResult

SCHEMA_VERSION = 1
INDEX_FILE = "graph-metadata.json"

TokenDecoder = Callable[[Sequence[int]], str]  # e.g. lambda ids: tokenizer.decode(ids)


def cantor_pairing(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def node_ids(graph: AttributionGraph) -> list[str]:
    """Frontend id of every node, in node order (ids can collide; key by index, not id)."""
    n_layers, n_pos = graph.n_layers, graph.n_pos
    ids = []
    for node in range(graph.n_features):
        layer, pos, feat, _ = graph.feature_of(node)
        ids.append(f"{layer}_{feat}_{pos}")
    ids += [f"0_{layer}_{pos}" for layer in range(n_layers) for pos in range(n_pos)]
    ids += [f"E_{int(tok)}_{pos}" for pos, tok in enumerate(graph.input_tokens.tolist())]
    ids += [f"{n_layers + 1}_{int(v)}_{n_pos - 1}" for v in graph.logit_token_ids.tolist()]
    return ids


def _node(node_id: str, feature: int, layer: str, ctx_idx: int, feature_type: str, js_node_id: str, *,
          influence: float | None = None, activation: float | None = None, token_prob: float = 0.0,
          is_target_logit: bool = False, clerp: str = "") -> dict:
    # Key order is the reference's (pydantic field order).
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": ctx_idx,
            "feature_type": feature_type, "token_prob": token_prob, "is_target_logit": is_target_logit,
            "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": js_node_id, "clerp": clerp,
            "influence": influence, "activation": activation}


def _node_record(graph: AttributionGraph, node: int, node_id: str, influence: float) -> dict:
    if node < graph.error_offset:
        layer, pos, feat, act = graph.feature_of(node)
        return _node(node_id, cantor_pairing(layer, feat), str(layer), pos, "cross layer transcoder",
                     f"{layer}_{feat}-0", influence=influence, activation=act)
    if node < graph.token_offset:
        layer, pos = divmod(node - graph.error_offset, graph.n_pos)
        return _node(node_id, -1, str(layer), pos, "mlp reconstruction error", f"{layer}_{pos}-0",
                     influence=influence)
    if node < graph.logit_offset:
        pos = node - graph.token_offset
        tok = int(graph.input_tokens[pos])
        return _node(node_id, pos, "E", pos, "embedding", f"E_{tok}-{pos}", influence=influence)
    k = node - graph.logit_offset
    vocab, prob = int(graph.logit_token_ids[k]), float(graph.logit_probabilities[k])
    last = graph.n_pos - 1
    # Logit nodes carry no influence in the reference.
    return _node(node_id, vocab, str(graph.n_layers + 1), last, "logit", f"L_{vocab}-{last}",
                 token_prob=prob, is_target_logit=k == 0,
                 clerp=f'Output "{graph.logit_tokens[k]}" (p={prob:.3f})')


def frontend_json(graph: AttributionGraph, result: PruneResult, *, slug: str, node_threshold: float | None = None,
                  scan: str | None = None, transcoder_list: Sequence[str] | None = None,
                  tokenizer_decode: TokenDecoder | None = None, pinned: Sequence[int] = (),
                  supernodes: Sequence[tuple[str, Sequence[int]]] = (),
                  clerps: Mapping[tuple[int, int], str] | None = None) -> dict:
    """The `<slug>.json` document for `graph` pruned as `result`.

    scan: transcoder-set identifier (default `graph.transcoder_name`). node_threshold: recorded in
    the metadata (default the one `result` was pruned with). tokenizer_decode: decodes token ids
    as the reference does (each prompt token alone, and the whole prompt for `prompt`); without it
    `graph.token_strings` and `graph.prompt` are used. Logit labels come from `graph.logit_tokens`,
    which is what circuit-tracer stores in its logit targets.

    The analysis (empty in circuit-tracer's own output; see `analysis_options`): `pinned` node indices
    become `qParams.pinnedIds`, `supernodes` (name, member node indices) `qParams.supernodes` as
    `[name, id, id, ...]`, and `clerps` ((layer, feature) -> label) the feature nodes' `clerp`.
    An imported graph (`core.graph.import_json`) keeps its file's `transcoder_list` unless one is given.
    """
    if result.node_mask.shape != (graph.n_nodes,):
        raise ValueError(f"The pruning result has {result.node_mask.shape[0]} nodes, the graph {graph.n_nodes}.")
    ids = node_ids(graph)
    targets, sources = result.kept_edges()
    weights = graph.adjacency.values_at(targets, sources).tolist()
    links = [{"source": ids[s], "target": ids[t], "weight": w}
             for t, s, w in zip(targets.tolist(), sources.tolist(), weights)]

    touched = np.zeros(graph.n_nodes, dtype=bool)
    touched[targets] = True
    touched[sources] = True
    touched[graph.token_offset:] = True  # tokens and logits are listed even without links
    listed = np.flatnonzero(result.node_mask & touched).tolist()
    cumulative = result.cumulative_scores
    nodes = [_node_record(graph, n, ids[n], float(cumulative[n])) for n in listed]
    if clerps:
        for rec, n in zip(nodes, listed):
            if n < graph.error_offset:
                layer, _, feat, _ = graph.feature_of(n)
                rec["clerp"] = clerps.get((layer, feat), "")
    if transcoder_list is None:
        transcoder_list = (graph.provenance.get("imported") or {}).get("metadata", {}).get("transcoder_list") or ()

    tokens = graph.input_tokens.tolist()
    if tokenizer_decode is not None:
        prompt_tokens = [tokenizer_decode([t]) for t in tokens]
        prompt = tokenizer_decode(tokens)
    else:
        prompt_tokens, prompt = list(graph.token_strings), graph.prompt
    metadata = {
        "slug": slug,
        "scan": graph.transcoder_name if scan is None else scan,
        "transcoder_list": list(transcoder_list),
        "prompt_tokens": prompt_tokens,
        "prompt": prompt,
        "node_threshold": float(result.node_threshold if node_threshold is None else node_threshold),
        "schema_version": SCHEMA_VERSION,
    }
    q_params = {"pinnedIds": [ids[n] for n in pinned],
                "supernodes": [[str(name), *(ids[m] for m in members)] for name, members in supernodes],
                "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": q_params, "nodes": nodes, "links": links}


def analysis_options(analysis) -> dict:
    """`frontend_json` keyword arguments carrying an `core.session.analysis.Analysis`'s pins, supernodes and
    (user-given) feature labels."""
    return {"pinned": list(analysis.pinned),
            "supernodes": [(s.name, s.members) for s in analysis.supernodes],
            "clerps": dict(analysis.labels)}


def _check_slug(slug: str) -> None:
    if not slug or slug in (".", "..") or any(c in slug for c in "/\\\0"):
        raise ValueError(f"Slug {slug!r} cannot be used as a file name (no slashes, not empty).")


def dump_frontend_json(doc: dict) -> str:
    """The text of a frontend document: ensure_ascii=False and indent=2, as pydantic's
    model_dump_json(indent=2) in the reference."""
    return json.dumps(doc, indent=2, ensure_ascii=False)


def write_frontend_json(path: str | Path, graph: AttributionGraph, result: PruneResult, *, slug: str,
                        **options) -> dict:
    """Write `frontend_json(graph, result, slug=slug, **options)` to `path`, whole or not at all;
    returns the document. Raises GraphFileError."""
    doc = frontend_json(graph, result, slug=slug, **options)
    write_text_atomic(path, dump_frontend_json(doc), error=graph_write_error)
    return doc


def write_graph_files(folder: str | Path, graph: AttributionGraph, result: PruneResult, *, slug: str,
                      **options) -> Path:
    """`<folder>/<slug>.json` plus the `graph-metadata.json` index entry for it (replaced by slug),
    the layout `circuit-tracer start-server --graph_file_dir <folder>` serves; both files are
    replaced together or neither is. Returns the graph file."""
    _check_slug(slug)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise graph_write_error(e, folder) from e
    path, index_path = folder / f"{slug}.json", folder / INDEX_FILE
    doc = frontend_json(graph, result, slug=slug, **options)
    index = updated_index_text(index_path, doc["metadata"])
    with replace_all_or_none([path, index_path], error=graph_write_error) as (tmp, tmp_index):
        tmp.write_text(dump_frontend_json(doc), encoding="utf-8")
        tmp_index.write_text(index, encoding="utf-8")
    return path


def updated_index_text(index_path: str | Path, metadata: dict) -> str:
    """The text of the `graph-metadata.json` at `index_path` (`{"graphs": [metadata, ...]}`) with
    `metadata` added, replacing the entry of the same slug, as `create_graph_files` does. Raises
    GraphFileError when the file exists but is no index."""
    index_path = Path(index_path)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists() else {"graphs": []}
        graphs = [g for g in index.get("graphs", []) if g.get("slug") != metadata["slug"]]
    except (OSError, ValueError, AttributeError) as e:
        raise GraphFileError(f"{index_path} exists but is not a graph index ({e}).",
                             "Move it away or choose another folder.") from e
    index["graphs"] = graphs + [metadata]
    return json.dumps(index, indent=2, ensure_ascii=False)
