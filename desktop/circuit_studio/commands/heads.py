"""`circuit-studio heads`: which attention heads carried a node's edges, and why a head attended where it did.

Computes (or reads, with --graph) the prompt's attribution graph, then
* --target NODE: every edge into NODE split per head of each attention layer (`core.attribution.heads`):
  per layer, each head's and the bypass's share of the target's input, with the top sources of each;
  with --source NODE, that one edge's split;
* --qk LAYER,HEAD,Q,K: the pre-softmax score of that head, query Q attending to key K, decomposed over
  the graph's nodes (query-side marginals, key-side marginals, top node pairs).
The report is written as JSON (whole or not at all).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..core.errors import CircuitStudioError
from ..core.progress import CancelToken, ProgressFn
from .model_options import MODEL_HELP, TRANSCODERS_HELP, add_placement_options, load_planned
from .options import check_option, check_outputs

_QK = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*$")
FORMAT, VERSION = "circuit-studio-heads", 1
NODE_HELP = ("a node: LAYER_FEATURE_POS (feature), logit:TOKEN or logit:#K (logit), error:LAYER_POS, "
             "token:POS, or #N (node index)")


def add_parser(sub) -> None:
    p = sub.add_parser("heads", help="split a node's edges per attention head; explain an attention score",
                       description="Split every edge into a node of the attribution graph per attention head "
                                   "(exactly: per layer, the heads' parts and the bypass add up to the edge), "
                                   "and decompose one head's attention score over the graph's nodes.")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--transcoders", required=True, help=TRANSCODERS_HELP)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text to trace (the graph is computed first)")
    src.add_argument("--graph", type=Path, help="a graph .npz written by `attribute --npz` for this model and "
                                                "transcoders, instead of --prompt")
    p.add_argument("--target", help=f"node whose incoming edges to split: {NODE_HELP}")
    p.add_argument("--source", help="report only the edge from this node into --target")
    p.add_argument("--layer", type=int, action="append", dest="layers", metavar="J",
                   help="attention layer to split (repeat for several; default: every layer a path can pass)")
    p.add_argument("--qk", metavar="LAYER,HEAD,Q,K", help="decompose head HEAD of LAYER, query position Q "
                                                          "attending to key position K")
    p.add_argument("--top", type=int, default=10, help="how many sources / nodes / pairs to list (default 10)")
    p.add_argument("--out", required=True, type=Path, help="JSON report to write")
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--desired-logit-prob", type=float, default=0.95)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-feature-nodes", type=int, default=7500,
                   help="feature budget of the graph (default 7500; 0 or less = no budget)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    add_placement_options(p)


def parse_qk(text: str) -> tuple[int, int, int, int]:
    m = _QK.match(text)
    if not m:
        raise CircuitStudioError(f"--qk {text!r} is not LAYER,HEAD,Q,K.", "Example: --qk 3,5,12,4")
    return tuple(int(v) for v in m.groups())  # type: ignore[return-value]


def run(args: argparse.Namespace, progress: ProgressFn, cancel: CancelToken) -> int:
    from ..core.atomic_write import write_text_atomic
    from ..core.attribution.attribute import attribute
    from ..core.graph.attribution_graph import AttributionParams, load_graph
    from ..core.attribution.heads import HeadAnalysis
    from ..core.model.memory_plan import RunSize
    from ..core.text_input import prompt_text

    qk = _check(args)
    graph = load_graph(args.graph) if args.graph is not None else None
    prompt = graph.prompt if graph is not None else prompt_text(args.prompt)
    budget = args.max_feature_nodes if args.max_feature_nodes and args.max_feature_nodes > 0 else None
    size = RunSize(batch_size=args.batch_size, max_feature_nodes=budget, max_n_logits=args.max_n_logits)
    bundle, tc = load_planned(args, progress, cancel, run=size, prompt=prompt)
    if graph is None:
        params = AttributionParams(max_n_logits=args.max_n_logits, desired_logit_prob=args.desired_logit_prob,
                                   batch_size=args.batch_size, max_feature_nodes=budget)
        graph = attribute(prompt, bundle, tc, params, progress=progress, cancel=cancel)
    elif graph.n_layers != bundle.arch.n_layers:
        raise CircuitStudioError(f"{args.graph} has {graph.n_layers} layers, the model {bundle.arch.n_layers}.",
                                 "Give the graph computed with this model.")
    target, source = _nodes(args, graph)
    analysis = HeadAnalysis(bundle, tc, graph, progress=progress, cancel=cancel)
    report = {"format": FORMAT, "version": VERSION, "model": bundle.name, "transcoders": graph.transcoder_name,
              "prompt": graph.prompt, "tokens": list(graph.token_strings)}
    lines = []
    if target is not None:
        split = analysis.split(target, args.layers, batch_size=args.batch_size, progress=progress, cancel=cancel)
        report.update(split_report(graph, split, source, args.top))
        lines += _split_lines(report)
    if qk is not None:
        bd = _qk(analysis, graph, qk, cancel)
        report["qk"] = qk_report(graph, bd, args.top)
        q = report["qk"]
        cap = f", {q['capped_score']:.4g} after the soft-cap" if bd.softcap is not None else ""
        lines.append(f"layer {bd.layer} head {bd.head}, {bd.query_pos} -> {bd.key_pos}: score {bd.score:.4g}{cap}, "
                     f"weight {bd.pattern:.3g}{' (outside the sliding window)' if bd.masked else ''}")
    write_text_atomic(args.out, json.dumps(report, indent=1, ensure_ascii=False))
    for line in lines:
        print(line)
    print(f"-> {args.out}")
    return 0


def _check(args: argparse.Namespace) -> tuple[int, int, int, int] | None:
    """What can be checked before anything is loaded; returns the --qk quadruple (or None)."""
    from ..core.text_input import prompt_text

    if args.prompt is not None:
        prompt_text(args.prompt)
    if args.source is not None and args.target is None:
        raise CircuitStudioError("--source needs --target.", "Give the edge's target with --target NODE.")
    if args.target is None and args.qk is None:
        raise CircuitStudioError("Nothing to do.", "Give --target NODE (edges split by head) and/or "
                                                   "--qk LAYER,HEAD,Q,K (an attention score explained).")
    if args.layers and args.target is None:
        raise CircuitStudioError("--layer needs --target.", "Give the node whose edges to split with --target.")
    check_option(args, "top", low=1)
    check_option(args, "batch_size", low=1)
    check_option(args, "max_n_logits", low=1)
    check_option(args, "desired_logit_prob", above=0, high=1)
    if args.graph is not None and not args.graph.is_file():
        raise CircuitStudioError(f"Graph file {args.graph} does not exist.")
    check_outputs(out=args.out)
    return parse_qk(args.qk) if args.qk is not None else None


def _nodes(args: argparse.Namespace, graph) -> tuple[int | None, int | None]:
    from ..core.graph.attribution_graph import NodeKind
    from ..core.attribution.node_refs import parse_node

    def parse(option: str, text: str | None) -> int | None:
        if text is None:
            return None
        try:
            return parse_node(graph, text)
        except ValueError as e:
            raise CircuitStudioError(f"--{option}: {e}.") from None

    target, source = parse("target", args.target), parse("source", args.source)
    if target is not None and graph.kind_of(target) not in (NodeKind.FEATURE, NodeKind.LOGIT):
        raise CircuitStudioError(f"--target {args.target!r} is not a feature or logit node; only those have "
                                 "incoming edges.")
    if source is not None and source >= graph.logit_offset:
        raise CircuitStudioError(f"--source {args.source!r} is a logit node, which is never a source.")
    return target, source


def _qk(analysis, graph, qk: tuple[int, int, int, int], cancel):
    layer, head, q, k = qk
    try:
        return analysis.qk(layer, head, q, k, cancel=cancel)
    except ValueError as e:
        raise CircuitStudioError(f"--qk {layer},{head},{q},{k}: {e}.") from None


def _node_json(graph, node: int, value: float | None = None, key: str = "value") -> dict:
    from ..core.attribution.node_refs import node_label, node_ref

    out = {"node": int(node), "ref": node_ref(graph, node), "label": node_label(graph, node)}
    if value is not None:
        out[key] = float(value)
    return out


def _top(values, n: int):
    import numpy as np

    order = np.argsort(-np.abs(values), kind="stable")[:n]
    return [int(i) for i in order if values[i] != 0]


def split_report(graph, split, source: int | None, top: int) -> dict:
    """The JSON part for a HeadSplit: per layer, each head's (and the bypass's) total, |total| and top sources;
    with `source`, that edge's parts instead of the top lists."""
    H = split.n_heads
    out: dict = {"target": _node_json(graph, split.target), "n_heads": H}
    if source is not None:
        out["source"] = _node_json(graph, source)
        out["edge"] = float(split.edges[source])
        out["graph_edge"] = float(graph.adjacency.row(split.target)[source])
    layers = []
    for i, layer in enumerate(split.layers):
        rows = split.parts[i]
        entries = []
        for h in range(H + 1):
            e = {"head": h if h < H else "bypass", "total": float(rows[h].sum()),
                 "abs_total": float(abs(rows[h]).sum())}
            if source is not None:
                e["part"] = float(rows[h, source])
            else:
                e["top_sources"] = [_node_json(graph, s, rows[h, s], "part") for s in _top(rows[h], top)]
            entries.append(e)
        layers.append({"layer": layer, "heads": entries[:H], "bypass": entries[H]})
    out["layers"] = layers
    return out


def qk_report(graph, bd, top: int) -> dict:
    """The JSON part for a QKBreakdown; node `rest` is reported as {"node": "rest"}."""
    import numpy as np

    def node(i: int, value: float | None = None) -> dict:
        if i == bd.rest:
            return {"node": "rest", "ref": "rest", "label": "biases and everything that is not a graph node",
                    **({} if value is None else {"value": float(value)})}
        return _node_json(graph, i, value)

    tokens = graph.token_strings
    return {
        "layer": bd.layer, "head": bd.head, "query_pos": bd.query_pos, "key_pos": bd.key_pos,
        "query_token": tokens[bd.query_pos], "key_token": tokens[bd.key_pos],
        "score": bd.score, "scaling": bd.scaling, "softcap": bd.softcap, "capped_score": bd.capped_score,
        "softcap_note": (None if bd.softcap is None else
                         "the softmax sees softcap * tanh(score / softcap): the decomposition is of the "
                         "pre-cap score, the cap is not linear"),
        "pattern": bd.pattern, "masked": bd.masked,
        "query_marginals": [node(i, bd.query_marginals[i]) for i in _top(bd.query_marginals, top)],
        "key_marginals": [node(i, bd.key_marginals[i]) for i in _top(bd.key_marginals, top)],
        "rest": {"query": float(bd.query_marginals[bd.rest]), "key": float(bd.key_marginals[bd.rest])},
        "pairs": [{"query": node(q), "key": node(k), "value": v} for q, k, v in bd.top_pairs(top)],
        "sums": {"query_marginals": float(np.sum(bd.query_marginals, dtype=np.float64)),
                 "key_marginals": float(np.sum(bd.key_marginals, dtype=np.float64))},
    }


def _split_lines(report: dict) -> list[str]:
    lines = [f"target {report['target']['label']}"]
    if "source" in report:
        lines[0] += f" <- {report['source']['label']}: edge {report['edge']:.4g}"
    for layer in report["layers"]:
        key = "part" if "source" in report else "total"
        heads = sorted(layer["heads"], key=lambda e: -abs(e[key]))[:3]
        text = ", ".join(f"head {e['head']} {e[key]:+.3g}" for e in heads)
        lines.append(f"  layer {layer['layer']}: {text}; bypass {layer['bypass'][key]:+.3g}")
    return lines
