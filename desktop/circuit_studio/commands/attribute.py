"""`circuit-studio attribute`: prompt -> attribution graph (frontend JSON, optionally the full .npz)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..core.errors import CircuitStudioError
from ..core.progress import CancelToken, ProgressFn


def add_parser(sub) -> None:
    p = sub.add_parser("attribute", help="compute an attribution graph for a prompt",
                       description="Compute the attribution graph of a prompt (circuit-tracer's method) and write "
                                   "the frontend JSON (and optionally the full graph as .npz).")
    p.add_argument("--model", required=True, type=Path, help="local HuggingFace model folder")
    p.add_argument("--transcoders", required=True, type=Path, help="transcoder folder (config.yaml + weights)")
    p.add_argument("--prompt", required=True, help="text to trace")
    p.add_argument("--out", required=True, type=Path, help="frontend graph JSON to write")
    p.add_argument("--npz", type=Path, help="also write the full graph and masks as .npz")
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--desired-logit-prob", type=float, default=0.95)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-feature-nodes", type=int, default=7500,
                   help="feature budget (default 7500, as circuit-tracer's CLI; 0 or less = no budget)")
    p.add_argument("--node-threshold", type=float, default=0.8)
    p.add_argument("--edge-threshold", type=float, default=0.98)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--slug", default=None, help="graph name in the JSON (default: the output file's stem)")


def run(args: argparse.Namespace, progress: ProgressFn, cancel: CancelToken) -> int:
    import torch

    from ..core.attribution import attribute
    from ..core.export import write_frontend_json
    from ..core.graph import AttributionParams, save_graph
    from ..core.model_loading import load_model
    from ..core.pruning import Pruner
    from ..core.transcoder_loading import check_transcoders_fit, load_transcoders

    for name in ("node_threshold", "edge_threshold"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            raise CircuitStudioError(f"--{name.replace('_', '-')} must be between 0 and 1 (got {value}).")
    for path in filter(None, (args.out, args.npz)):
        if not path.resolve().parent.is_dir():
            raise CircuitStudioError(f"Cannot write {path}: folder {path.resolve().parent} does not exist.")
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    bundle = load_model(args.model, device=args.device, dtype=dtype, progress=progress, cancel=cancel)
    tc = load_transcoders(args.transcoders, device=bundle.device, dtype=dtype, progress=progress, cancel=cancel)
    check_transcoders_fit(tc, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model, model_name=bundle.name)
    budget = args.max_feature_nodes if args.max_feature_nodes and args.max_feature_nodes > 0 else None
    params = AttributionParams(max_n_logits=args.max_n_logits, desired_logit_prob=args.desired_logit_prob,
                               batch_size=args.batch_size, max_feature_nodes=budget)
    graph = attribute(args.prompt, bundle, tc, params, progress=progress, cancel=cancel)
    t0 = time.perf_counter()
    pruner = Pruner(graph)
    pruned = pruner.prune(args.node_threshold, args.edge_threshold)
    replacement, completeness = pruner.graph_scores()
    graph.provenance["seconds"]["prune_and_scores"] = time.perf_counter() - t0
    write_frontend_json(args.out, graph, pruned, slug=args.slug or args.out.stem,
                        tokenizer_decode=bundle.tokenizer.decode)
    if args.npz:
        save_graph(graph, args.npz, extra={"node_mask": pruned.node_mask, "edge_mask": pruned.edge_mask})
    s = graph.provenance["seconds"]
    print(f"{graph.n_pos} tokens, {graph.active_features.shape[0]} active features, {graph.n_features} in graph, "
          f"{graph.n_logits} logits; kept {int(pruned.node_mask.sum())} nodes / {int(pruned.edge_mask.sum())} edges; "
          f"replacement {replacement:.3f}, completeness {completeness:.3f}; "
          f"attribution {s['total']:.2f}s, pruning {s['prune_and_scores']:.2f}s -> {args.out}")
    return 0
