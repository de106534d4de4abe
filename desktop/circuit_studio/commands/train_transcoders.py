"""`circuit-studio train-transcoders`: model + text corpus -> JumpReLU transcoders in circuit-tracer's format.

Writes the transcoder folder (`config.yaml` + `layer_{i}.safetensors`, or the CLT files) and
`training_report.md` in it, and prints one line per layer: FVU, L0, dead features, loss recovered.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..core.errors import CircuitStudioError
from ..core.progress import CancelToken, ProgressFn
from .options import check_option


def add_parser(sub) -> None:
    p = sub.add_parser("train-transcoders", help="train transcoders for a model on a text corpus",
                       description="Train JumpReLU transcoders (per-layer, or cross-layer) for a local model on a "
                                   "UTF-8 text corpus (one document per line) and write them in circuit-tracer's "
                                   "format, with a report of FVU, L0, dead features and loss recovered per layer.")
    p.add_argument("--model", required=True, type=Path, help="local HuggingFace model folder")
    p.add_argument("--corpus", required=True, type=Path, help="UTF-8 text file, one document per line")
    p.add_argument("--width", required=True, type=int, help="features per layer (e.g. 1024)")
    p.add_argument("--out", required=True, type=Path, help="transcoder folder to write (replaced if it is one)")
    p.add_argument("--kind", choices=["plt", "clt"], default="plt",
                   help="per-layer (plt, default) or cross-layer (clt) transcoders")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per layer (default: the trainer's, 4000)")
    p.add_argument("--batch-tokens", type=int, default=None, help="tokens per step (default: the trainer's, 1024)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the trainer's)")
    p.add_argument("--l0-coefficient", type=float, default=None,
                   help="weight of the L0 (sparsity) penalty; larger gives fewer active features")
    p.add_argument("--context", type=int, default=128,
                   help="tokens per training window, BOS included (default 128, capped at the model's context)")
    p.add_argument("--max-lines", type=int, default=None, help="use only the first N corpus lines")
    p.add_argument("--buffer-tokens", type=int, default=None,
                   help="training tokens held in memory per layer (default 131072)")
    p.add_argument("--skip", action="store_true",
                   help="also train a linear skip connection per layer (W_skip; per-layer transcoders only)")
    p.add_argument("--init", type=Path, default=None, help="continue from this transcoder folder")
    p.add_argument("--no-loss", action="store_true", help="skip measuring loss recovered")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")


def run(args: argparse.Namespace, progress: ProgressFn, cancel: CancelToken) -> int:
    from ..core.features.corpus_text import token_windows
    from ..core.model.loading import load_model
    from ..core.transcoders.loading import load_transcoders
    from ..core.transcoders.training import train_transcoders
    from ..core.transcoders.writing import save_transcoders

    out, lines = _check(args)
    bundle = load_model(args.model, device=args.device, progress=progress, cancel=cancel)
    limit = bundle.summary.max_positions
    context = min(args.context, limit) if limit else args.context
    windows = token_windows(bundle.tokenizer, lines, context=context)
    init = load_transcoders(args.init, device=bundle.device, progress=progress, cancel=cancel) if args.init else None
    options = {k: v for k, v in (("steps", args.steps), ("batch_tokens", args.batch_tokens), ("lr", args.lr),
                                 ("l0_coefficient", args.l0_coefficient), ("buffer_tokens", args.buffer_tokens))
               if v is not None}
    tc, rep = train_transcoders(bundle, windows, width=args.width, kind=args.kind, skip=args.skip,
                                measure_loss=not args.no_loss, init=init, seed=args.seed, progress=progress,
                                cancel=cancel, **options)
    folder = save_transcoders(tc, out, extra_files={"training_report.md": rep.to_markdown()})  # all or nothing
    print(f"{windows.shape[0]} windows of {context} tokens; {rep.kind.upper()} width {rep.width}, "
          f"{rep.steps} steps in {rep.seconds:.0f} s -> {folder}")
    for line in rep.summary_lines():
        print(line)
    return 0


def _check(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Everything that can be checked before the model is loaded: -> (the output folder, the corpus lines)."""
    from ..core.features.corpus_text import read_corpus
    from ..core.model.loading import describe_model
    from ..core.transcoders.loading import describe_transcoders

    for name, low in (("width", 1), ("steps", 0), ("batch_tokens", 1), ("buffer_tokens", 1), ("max_lines", 1),
                      ("l0_coefficient", 0)):
        check_option(args, name, low=low)
    check_option(args, "context", low=2, hint="A window holds the BOS and at least one token.")
    check_option(args, "lr", above=0)
    check_option(args, "seed", low=0, high=2**64 - 1)  # what torch's generator takes
    if args.skip and args.kind == "clt":
        raise CircuitStudioError("--skip works only with per-layer transcoders (circuit-tracer's CLT format has "
                                 "no skip matrices).", "Drop --skip or use --kind plt.")
    out = _check_out_folder(args.out.expanduser().resolve())
    lines = read_corpus(args.corpus)
    describe_model(args.model)  # config and file headers only, before any weight is read
    if args.init:
        describe_transcoders(args.init)
    return out, lines[:args.max_lines] if args.max_lines is not None else lines


def _check_out_folder(out: Path) -> Path:
    """`out` when it can become the transcoder folder: new, empty or a transcoder folder, and writable."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.yaml").exists())):
        raise CircuitStudioError(f"{out} exists and is not a transcoder folder; not replacing it.",
                                 "Choose a new or empty folder for --out.")
    existing = out.parent
    while not existing.exists():  # the missing folders are created when the set is written
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CircuitStudioError(f"Cannot write --out {out}: {existing} is not a folder you can write to.",
                                 "Choose another folder for --out.")
    return out
