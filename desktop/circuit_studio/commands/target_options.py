"""The custom-target flags of every command that traces a graph (`core.attribution.targets` has the semantics):

    --target-ids 24,16,55                       token ids, in the given order
    --target-tokens TEXT                        one single-token string each (repeatable)
    --target-vector FILE.npy --target-label TEXT --target-weight P
                                                a direction in d_model (repeatable, one label and
                                                weight per vector)
    --target-diff A,B                           logit(A) - logit(B), as circuit-tracer's demo builds it

Without any of them the graph attributes from the top logits. Targets keep the order above
(ids, tokens, vectors, differences). Every file and number is checked before the model loads.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..core.errors import CircuitStudioError


def add_target_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("custom targets (default: the top logits)")
    g.add_argument("--target-ids", metavar="IDS", help="comma-separated token ids to attribute from, in order")
    g.add_argument("--target-tokens", metavar="TEXT", action="append", default=[],
                   help="a token string to attribute from (must be one token; repeatable)")
    g.add_argument("--target-vector", metavar="FILE.npy", action="append", default=[], type=Path,
                   help="a direction in d_model to attribute from (repeatable; pair with --target-label "
                        "and --target-weight)")
    g.add_argument("--target-label", metavar="TEXT", action="append", default=[],
                   help="label of the matching --target-vector")
    g.add_argument("--target-weight", metavar="P", action="append", default=[], type=float,
                   help="weight of the matching --target-vector (its 'probability' in pruning)")
    g.add_argument("--target-diff", metavar="A,B", action="append", default=[],
                   help="attribute from logit(A) - logit(B); A and B are tokens or token ids (repeatable)")


def _token(text: str):
    # spaces are kept: most tokens start with one (" Austin")
    return int(text) if text.strip().isdigit() else text


def targets_from_args(args: argparse.Namespace, d_model: int | None = None):
    """The target list for `core.attribution.attribute`, or None for the top logits. Raises
    CircuitStudioError for malformed flags; shapes are checked when `d_model` is given."""
    import numpy as np
    import torch

    from ..core.attribution.targets import CustomTarget, LogitDiff

    targets: list = []
    if args.target_ids:
        try:
            targets += [int(t) for t in args.target_ids.split(",") if t.strip()]
        except ValueError:
            raise CircuitStudioError(f"--target-ids {args.target_ids!r} is not a list of whole numbers.",
                                     "Write token ids separated by commas, e.g. --target-ids 24,16,55.") from None
        if not targets:
            raise CircuitStudioError("--target-ids is empty.", "Give at least one token id.")
    for t in args.target_tokens:
        if not t:
            raise CircuitStudioError("--target-tokens is empty.", "Give the token's text, e.g. --target-tokens ' Austin'.")
        targets.append(t)
    n = len(args.target_vector)
    if len(args.target_label) != n or len(args.target_weight) != n:
        raise CircuitStudioError(f"{n} --target-vector, {len(args.target_label)} --target-label and "
                                 f"{len(args.target_weight)} --target-weight given.",
                                 "Give one label and one weight with every vector.")
    for path, label, weight in zip(args.target_vector, args.target_label, args.target_weight):
        if not math.isfinite(weight):
            raise CircuitStudioError(f"--target-weight {weight} is not a finite number.", "Give a weight such as 0.5.")
        try:
            vec = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CircuitStudioError(f"Cannot read --target-vector {path}: {' '.join(str(exc).split())}.",
                                     "Give a .npy file holding one float vector of size d_model.") from None
        if vec.ndim != 1 or not np.issubdtype(vec.dtype, np.floating):
            raise CircuitStudioError(f"--target-vector {path} holds a {vec.dtype} array of shape {list(vec.shape)}.",
                                     "Give one float vector of size d_model.")
        if d_model is not None and vec.shape[0] != d_model:
            raise CircuitStudioError(f"--target-vector {path} has size {vec.shape[0]} but the model's d_model is "
                                     f"{d_model}.", "Give a vector of the model's residual-stream size.")
        targets.append(CustomTarget(label, weight, torch.from_numpy(vec.astype(np.float32))))
    for pair in args.target_diff:
        parts = pair.split(",")
        if len(parts) != 2 or not all(parts):
            raise CircuitStudioError(f"--target-diff {pair!r} is not two tokens A,B.",
                                     "Write --target-diff A,B, e.g. --target-diff Austin,Sacramento.")
        targets.append(LogitDiff(_token(parts[0]), _token(parts[1])))
    return targets or None
