"""`circuit-studio index-features`: model + transcoders + text corpus -> feature index (SQLite)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.progress import CancelToken, ProgressFn
from .options import check_option, check_outputs
from .model_options import TRANSCODERS_HELP


def add_parser(sub) -> None:
    p = sub.add_parser("index-features", help="index every transcoder feature's top activating contexts",
                       description="Run a model and its transcoders over a text corpus (one document per line) "
                                   "and write a feature index: for every feature its top activating contexts, "
                                   "examples from lower activation bands, an activation histogram, its density, "
                                   "its top logit effects and an automatic label.")
    p.add_argument("--model", required=True, type=Path, help="local HuggingFace model folder")
    p.add_argument("--transcoders", required=True, help=TRANSCODERS_HELP)
    p.add_argument("--corpus", required=True, type=Path, help="UTF-8 text file, one document per line")
    p.add_argument("--out", required=True, type=Path, help="feature index file to write (SQLite)")
    p.add_argument("--context", type=int, default=64, help="tokens per window, BOS included (default 64)")
    p.add_argument("--max-windows", type=int, default=None, help="index at most this many windows (default: all)")
    p.add_argument("--top-k", type=int, default=20, help="top activating contexts kept per feature (default 20)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--shard-batches", type=int, default=64,
                   help="batches per shard of the corpus (default 64); the same value gives the same index with "
                        "or without --ray")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the shards on Ray actors: alone, a local instance on this machine's cores; 'auto' or "
                        "HOST:PORT joins a running cluster (needs circuit-studio[scale])")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray actors, each holding the model (default: one per GPU, else one per CPU)")


def run(args: argparse.Namespace, progress: ProgressFn, cancel: CancelToken) -> int:
    from ..core.features.corpus_text import token_windows
    from ..core.features.index_build import build_feature_index
    from ..core.model.loading import load_model
    from ..core.transcoders.loading import check_transcoders_fit, load_transcoders

    lines = _check(args)
    check_option(args, "shard_batches", low=1)
    if args.ray is not None or args.workers is not None:
        return _run_on_ray(args, lines, progress, cancel)
    bundle = load_model(args.model, device=args.device, progress=progress, cancel=cancel)
    tc = load_transcoders(args.transcoders, device=bundle.device, progress=progress, cancel=cancel)
    check_transcoders_fit(tc, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model, model_name=bundle.name)
    windows = token_windows(bundle.tokenizer, lines, context=args.context)
    if args.max_windows is not None:
        windows = windows[:args.max_windows]
    index = build_feature_index(bundle, tc, windows, args.out, top_k=args.top_k, batch_size=args.batch_size,
                                shard_batches=args.shard_batches, corpus_name=args.corpus.name, progress=progress,
                                cancel=cancel)
    _done(args, index)
    return 0


def _run_on_ray(args: argparse.Namespace, lines: list[str], progress: ProgressFn, cancel: CancelToken) -> int:
    """The same index, its shards run on Ray actors (`scale.ray_index`); here only the tokenizer."""
    from ..core.features.corpus_text import token_windows
    from ..core.errors import CircuitStudioError
    from ..core.features.index_shards import IndexSettings
    from ..core.model.loading import describe_model, load_tokenizer
    from ..core.transcoders.loading import check_transcoders_fit, describe_transcoders
    from ..scale import import_ray

    if args.ray is None:
        raise CircuitStudioError("--workers needs --ray.", "Add --ray (a local Ray instance) or drop --workers.")
    check_option(args, "workers", low=1)
    import_ray()  # one line saying how to install it, before anything slow
    from ..scale.ray_index import ray_build_feature_index

    summary = describe_model(args.model)
    check_transcoders_fit(describe_transcoders(args.transcoders), n_layers=summary.n_layers,
                          d_model=summary.d_model, model_name=summary.name)
    tokenizer = load_tokenizer(summary)
    windows = token_windows(tokenizer, lines, context=args.context)
    if args.max_windows is not None:
        windows = windows[:args.max_windows]
    settings = IndexSettings(top_k=args.top_k, batch_size=args.batch_size, shard_batches=args.shard_batches)
    index = ray_build_feature_index(args.model, args.transcoders, tokenizer, windows, args.out, settings,
                                    address=None if args.ray == "local" else args.ray, workers=args.workers,
                                    device=args.device, corpus_name=args.corpus.name, progress=progress,
                                    cancel=cancel)
    _done(args, index)
    return 0


def _done(args: argparse.Namespace, index) -> None:
    info = index.info
    index.close()
    print(f"{info.n_windows} windows, {info.n_tokens} tokens; {info.n_layers} x {info.n_features} features "
          f"indexed -> {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


def _check(args: argparse.Namespace) -> list[str]:
    """Everything that can be checked before the model is loaded: -> the corpus lines."""
    from ..core.features.corpus_text import read_corpus
    from ..core.features.index_build import check_index_output
    from ..core.model.loading import describe_model
    from ..core.transcoders.loading import describe_transcoders

    check_option(args, "context", low=2, hint="A window holds the BOS and at least one token.")
    for name in ("top_k", "batch_size", "max_windows"):
        check_option(args, name, low=1)
    check_outputs(out=args.out)
    check_index_output(args.out)  # an existing file is replaced only when it is a feature index
    lines = read_corpus(args.corpus)
    summary = describe_model(args.model)  # config and file headers only, before any weight is read
    describe_transcoders(args.transcoders)
    limit = summary.max_positions
    check_option(args, "context", high=limit, hint=f"{summary.name} reads at most {limit} tokens; use --context "
                                                   f"{limit} or less.")
    return lines
