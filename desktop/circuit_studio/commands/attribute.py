"""`circuit-studio attribute`: prompt -> attribution graph (frontend JSON, optionally the full .npz)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..core.progress import CancelToken, ProgressFn
from .model_options import MODEL_HELP, TRANSCODERS_HELP, add_attribution_options, add_placement_options, load_planned
from .options import check_option, check_outputs
from .target_options import add_target_options, targets_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("attribute", help="compute an attribution graph for a prompt",
                       description="Compute the attribution graph of a prompt (circuit-tracer's method) and write "
                                   "the frontend JSON (and optionally the full graph as .npz).")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--transcoders", required=True, help=TRANSCODERS_HELP)
    p.add_argument("--prompt", required=True, help="text to trace")
    p.add_argument("--chat", action="store_true",
                   help="trace the prompt as a user turn under the tokenizer's chat template (instruct models)")
    p.add_argument("--out", required=True, type=Path, help="frontend graph JSON to write")
    p.add_argument("--npz", type=Path, help="also write the full graph and masks as .npz")
    add_attribution_options(p)
    add_placement_options(p)
    p.add_argument("--slug", default=None, help="graph name in the JSON (default: the output file's stem)")
    add_target_options(p)


def run(args: argparse.Namespace, progress: ProgressFn, cancel: CancelToken) -> int:
    from ..core.atomic_write import replace_all_or_none
    from ..core.attribution.attribute import attribute
    from ..core.graph.export import INDEX_FILE, dump_frontend_json, frontend_json, updated_index_text
    from ..core.graph.attribution_graph import DENSE_FILE_MAX_NODES, AttributionParams, write_graph_npz
    from ..core.model.memory_plan import RunSize
    from ..core.graph.pruning import Pruner

    prompt = _check(args)
    budget = args.max_feature_nodes if args.max_feature_nodes and args.max_feature_nodes > 0 else None
    params = AttributionParams(max_n_logits=args.max_n_logits, desired_logit_prob=args.desired_logit_prob,
                               batch_size=args.batch_size, max_feature_nodes=budget)
    targets = targets_from_args(args)  # files and numbers checked before anything loads
    size = RunSize(batch_size=args.batch_size, max_feature_nodes=budget,
                   max_n_logits=len(targets) if targets else args.max_n_logits)
    bundle, tc = load_planned(args, progress, cancel, run=size, prompt=prompt)
    if args.chat:  # the tokenizer's chat template; one line if it has none
        from ..core.model.chat_template import chat_prompt_ids
        prompt = chat_prompt_ids(bundle.tokenizer, prompt)
    graph = attribute(prompt, bundle, tc, params, targets=targets, progress=progress, cancel=cancel)
    t0 = time.perf_counter()
    pruner = Pruner(graph)
    pruned = pruner.prune(args.node_threshold, args.edge_threshold)
    replacement, completeness = pruner.graph_scores()
    graph.provenance["seconds"]["prune_and_scores"] = time.perf_counter() - t0
    doc = frontend_json(graph, pruned, slug=args.slug or args.out.stem, tokenizer_decode=bundle.tokenizer.decode)
    text = dump_frontend_json(doc)
    # graph-metadata.json beside the JSON (circuit-tracer's create_graph_files index, entry replaced by slug)
    index_path = args.out.absolute().parent / INDEX_FILE
    index = updated_index_text(index_path, doc["metadata"])
    with replace_all_or_none([args.out, index_path, args.npz]) as (tmp_json, tmp_index, tmp_npz):  # all or none
        tmp_json.write_text(text, encoding="utf-8")
        tmp_index.write_text(index, encoding="utf-8")
        if tmp_npz is not None:
            write_graph_npz(graph, tmp_npz, extra=pruned.file_arrays(dense=graph.n_nodes <= DENSE_FILE_MAX_NODES))
    s = graph.provenance["seconds"]
    print(f"{graph.n_pos} tokens, {graph.active_features.shape[0]} active features, {graph.n_features} in graph, "
          f"{graph.n_logits} logits; kept {pruned.n_nodes} nodes / {pruned.n_edges} edges; "
          f"replacement {replacement:.3f}, completeness {completeness:.3f}; "
          f"attribution {s['total']:.2f}s, pruning {s['prune_and_scores']:.2f}s -> {args.out}")
    return 0


def _check(args: argparse.Namespace) -> str:
    """Everything that can be checked before the model is described and loaded; returns the prompt as text."""
    from ..core.text_input import prompt_text, utf8_text

    prompt = prompt_text(args.prompt)
    if args.slug is not None:
        utf8_text(args.slug, "--slug")  # it goes into the JSON, written as UTF-8
    check_option(args, "max_n_logits", low=1)
    check_option(args, "desired_logit_prob", above=0, high=1)
    check_option(args, "batch_size", low=1, hint="256 is a good default; lower it if memory runs out.")
    check_option(args, "node_threshold", low=0, high=1)
    check_option(args, "edge_threshold", low=0, high=1)
    check_outputs(out=args.out, npz=args.npz)
    return prompt
