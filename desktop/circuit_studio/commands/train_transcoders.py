"""`circuit-studio train-transcoders`: model + text corpus -> JumpReLU transcoders in circuit-tracer's format.

Writes the transcoder folder (`config.yaml` + `layer_{i}.safetensors`, or the CLT files) and
`training_report.md` in it, and prints one line per layer: FVU, L0, dead features, loss recovered.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import CircuitStudioError
from ..core.progress import CancelToken, ProgressFn


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
    from ..core.corpus_text import read_corpus, token_windows
    from ..core.model_loading import load_model
    from ..core.transcoder_loading import load_transcoders
    from ..core.transcoder_training import train_transcoders
    from ..core.transcoder_writing import save_transcoders

    out = args.out.expanduser().resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.yaml").exists())):
        raise CircuitStudioError(f"{out} exists and is not a transcoder folder; not replacing it.",
                                 "Choose a new or empty folder for --out.")
    if args.max_lines is not None and args.max_lines <= 0:
        raise CircuitStudioError(f"--max-lines must be positive (got {args.max_lines}).")
    lines = read_corpus(args.corpus)  # fails fast, before the model is loaded
    if args.max_lines is not None:
        lines = lines[:args.max_lines]
    bundle = load_model(args.model, device=args.device, progress=progress, cancel=cancel)
    limit = bundle.summary.max_positions
    context = min(args.context, limit) if limit else args.context
    if context < 2:
        raise CircuitStudioError(f"--context must be at least 2 (got {args.context}).")
    windows = token_windows(bundle.tokenizer, lines, context=context)
    init = load_transcoders(args.init, device=bundle.device, progress=progress, cancel=cancel) if args.init else None
    options = {k: v for k, v in (("steps", args.steps), ("batch_tokens", args.batch_tokens), ("lr", args.lr),
                                 ("l0_coefficient", args.l0_coefficient), ("buffer_tokens", args.buffer_tokens))
               if v is not None}
    tc, rep = train_transcoders(bundle, windows, width=args.width, kind=args.kind, skip=args.skip,
                                measure_loss=not args.no_loss, init=init, seed=args.seed, progress=progress,
                                cancel=cancel, **options)
    folder = save_transcoders(tc, out)
    (folder / "training_report.md").write_text(rep.to_markdown(), encoding="utf-8")
    print(f"{windows.shape[0]} windows of {context} tokens; {rep.kind.upper()} width {rep.width}, "
          f"{rep.steps} steps in {rep.seconds:.0f} s -> {folder}")
    for line in rep.summary_lines():
        print(line)
    return 0
