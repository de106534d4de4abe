"""`circuit-studio index-features`: model + transcoders + text corpus -> feature index (SQLite)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import CircuitStudioError
from ..core.progress import CancelToken, ProgressFn


def add_parser(sub) -> None:
    p = sub.add_parser("index-features", help="index every transcoder feature's top activating contexts",
                       description="Run a model and its transcoders over a text corpus (one document per line) "
                                   "and write a feature index: for every feature its top activating contexts, "
                                   "examples from lower activation bands, an activation histogram, its density, "
                                   "its top logit effects and an automatic label.")
    p.add_argument("--model", required=True, type=Path, help="local HuggingFace model folder")
    p.add_argument("--transcoders", required=True, type=Path, help="transcoder folder (config.yaml + weights)")
    p.add_argument("--corpus", required=True, type=Path, help="UTF-8 text file, one document per line")
    p.add_argument("--out", required=True, type=Path, help="feature index file to write (SQLite)")
    p.add_argument("--context", type=int, default=64, help="tokens per window, BOS included (default 64)")
    p.add_argument("--max-windows", type=int, default=None, help="index at most this many windows (default: all)")
    p.add_argument("--top-k", type=int, default=20, help="top activating contexts kept per feature (default 20)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")


def run(args: argparse.Namespace, progress: ProgressFn, cancel: CancelToken) -> int:
    from ..core.corpus_text import read_corpus, token_windows
    from ..core.feature_index_build import build_feature_index
    from ..core.model_loading import load_model
    from ..core.transcoder_loading import check_transcoders_fit, load_transcoders

    for name in ("context", "top_k", "batch_size"):
        value = getattr(args, name)
        if value < (2 if name == "context" else 1):
            raise CircuitStudioError(f"--{name.replace('_', '-')} must be at least {2 if name == 'context' else 1} "
                                     f"(got {value}).")
    if args.max_windows is not None and args.max_windows < 1:
        raise CircuitStudioError(f"--max-windows must be at least 1 (got {args.max_windows}).")
    if not args.out.resolve().parent.is_dir():
        raise CircuitStudioError(f"Cannot write {args.out}: folder {args.out.resolve().parent} does not exist.")
    lines = read_corpus(args.corpus)  # fails fast, before the model is loaded
    bundle = load_model(args.model, device=args.device, progress=progress, cancel=cancel)
    tc = load_transcoders(args.transcoders, device=bundle.device, progress=progress, cancel=cancel)
    check_transcoders_fit(tc, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model, model_name=bundle.name)
    limit = bundle.summary.max_positions
    if limit and args.context > limit:
        raise CircuitStudioError(f"--context {args.context} is longer than {bundle.name} takes ({limit}).",
                                 f"Use --context {limit} or less.")
    windows = token_windows(bundle.tokenizer, lines, context=args.context)
    if args.max_windows is not None:
        windows = windows[:args.max_windows]
    index = build_feature_index(bundle, tc, windows, args.out, top_k=args.top_k, batch_size=args.batch_size,
                                corpus_name=args.corpus.name, progress=progress, cancel=cancel)
    info = index.info
    index.close()
    print(f"{info.n_windows} windows, {info.n_tokens} tokens; {info.n_layers} x {info.n_features} features "
          f"indexed -> {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0
