"""The `circuit-studio` command line.

    circuit-studio attribute --model DIR --transcoders DIR --prompt TEXT --out GRAPH.json [--npz GRAPH.npz] ...

Bad input ends with a one-line reason on stderr and exit status 2; Ctrl-C cancels cleanly (130).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .core.errors import Cancelled, CircuitStudioError
from .core.progress import CancelToken, Progress


class TerminalProgress:
    """A one-line progress bar on stderr when it is a terminal; phase changes only otherwise."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.phase = ""
        self.started = time.perf_counter()

    def __call__(self, p: Progress) -> None:
        elapsed = time.perf_counter() - self.started
        if self.tty:
            width = 30
            filled = int(width * p.fraction)
            self.stream.write(f"\r{p.phase:<14} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{p.done}/{p.total} {elapsed:6.1f}s")
            if p.done >= p.total:
                self.stream.write("\n")
            self.stream.flush()
        elif p.phase != self.phase:
            self.stream.write(f"{p.phase}... ({elapsed:.1f}s)\n")
        self.phase = p.phase


def _add_attribute(sub) -> None:
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


def _attribute(args: argparse.Namespace, progress, cancel: CancelToken) -> int:
    import torch

    from .core.attribution import attribute
    from .core.export import write_frontend_json
    from .core.graph import AttributionParams, save_graph
    from .core.model_loading import load_model
    from .core.pruning import Pruner
    from .core.transcoder_loading import check_transcoders_fit, load_transcoders

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="circuit-studio", description="Attribution graphs for local language models.")
    sub = parser.add_subparsers(dest="command")
    _add_attribute(sub)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cancel = CancelToken()
    try:
        return _attribute(args, TerminalProgress(), cancel)
    except KeyboardInterrupt:
        print("\ncircuit-studio: cancelled; nothing was written.", file=sys.stderr)
        return 130
    except Cancelled:
        print("circuit-studio: cancelled; nothing was written.", file=sys.stderr)
        return 130
    except (CircuitStudioError, ValueError) as e:
        print(f"circuit-studio: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
