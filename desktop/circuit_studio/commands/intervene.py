"""`circuit-studio intervene`: set feature activations and compare the model's output before and after."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from ..core.errors import CircuitStudioError
from ..core.progress import CancelToken, ProgressFn
from .model_options import MODEL_HELP, TRANSCODERS_HELP, add_placement_options, load_planned
from .options import check_option, check_outputs

_SET = re.compile(r"^\s*(\d+)\s*:\s*(\d+|\d*:\d*)\s*:\s*(\d+)\s*=\s*(.+?)\s*$")
_LAYERS = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def add_parser(sub) -> None:
    p = sub.add_parser("intervene", help="set feature activations and compare outputs",
                       description="Run a prompt with some transcoder features set to chosen activations "
                                   "(circuit-tracer's feature_intervention) and write the top next tokens before and "
                                   "after, and optionally generated continuations.")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--transcoders", required=True, help=TRANSCODERS_HELP)
    p.add_argument("--prompt", required=True)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="LAYER:POS:FEATURE=VALUE",
                   help="POS is a position, START:END, or START: (open-ended: also every generated token); "
                        "repeat for several features")
    p.add_argument("--no-freeze-attention", action="store_true", help="let attention patterns change")
    p.add_argument("--constrained-layers", metavar="A:B",
                   help="hold the MLPs of layers A..B-1 at their clean values (all layers = direct effects)")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="also generate N tokens, default and steered")
    p.add_argument("--top", type=int, default=10, help="how many next tokens to list")
    p.add_argument("--json", required=True, type=Path, dest="json_out")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    add_placement_options(p)


def parse_set(text: str):
    """'LAYER:POS:FEATURE=VALUE' -> Intervention (POS may be 'a:b' or 'a:')."""
    from ..core.interventions.intervene import Intervention

    m = _SET.match(text)
    if not m:
        raise CircuitStudioError(f"--set {text!r} is not LAYER:POS:FEATURE=VALUE.", "Example: --set 1:7:42=0")
    layer, pos, feat, value = m.groups()
    if ":" in pos:
        a, b = pos.split(":")
        position = slice(int(a or 0), int(b) if b else None)
        if position.stop is not None and position.stop <= position.start:
            raise CircuitStudioError(f"--set {text!r}: positions {pos} hold no position.",
                                     "Give START:END with START < END, or START: for open-ended.")
    else:
        position = int(pos)
    try:
        number = float(value)
    except ValueError:
        raise CircuitStudioError(f"--set {text!r}: value {value!r} is not a number.") from None
    if not math.isfinite(number):
        raise CircuitStudioError(f"--set {text!r}: value {value!r} is not a finite number.")
    return Intervention(int(layer), position, int(feat), number)


def parse_layers(text: str, n_layers: int) -> range:
    """'A:B' -> range(A, B), within the model's layers."""
    m = _LAYERS.match(text)
    a, b = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    if a is None or not 0 <= a < b <= n_layers:
        raise CircuitStudioError(f"--constrained-layers {text!r} is not A:B with 0 <= A < B <= {n_layers}.",
                                 f"Example: --constrained-layers 0:{n_layers} (every layer: direct effects only).")
    return range(a, b)


def _top(logits, tokenizer, k: int) -> list[dict]:
    import torch

    probs = torch.softmax(logits.float(), -1)
    p, idx = torch.topk(probs, k)
    return [{"token": tokenizer.decode([int(i)]), "id": int(i), "probability": float(v)} for v, i in zip(p, idx)]


def run(args: argparse.Namespace, progress: ProgressFn, cancel: CancelToken) -> int:
    from ..core.atomic_write import write_text_atomic
    from ..core.interventions.intervene import generate, intervene

    prompt, interventions, constrained = _check(args)
    bundle, tc = load_planned(args, progress, cancel)
    freeze = not args.no_freeze_attention
    before = intervene(bundle, tc, prompt, [], return_activations=False)
    after = intervene(bundle, tc, prompt, interventions, constrained_layers=constrained,
                      freeze_attention=freeze, return_activations=False)
    out = {
        "prompt": prompt,
        "interventions": [{"layer": iv.layer, "position": _pos(iv.position), "feature": iv.feature,
                           "value": iv.value} for iv in interventions],
        "freeze_attention": freeze,
        "constrained_layers": [constrained.start, constrained.stop] if constrained else None,
        "before": _top(before.logits[-1], bundle.tokenizer, args.top),
        "after": _top(after.logits[-1], bundle.tokenizer, args.top),
    }
    if args.generate:
        out["generated_default"] = generate(bundle, tc, prompt, [], args.generate).text
        out["generated_steered"] = generate(bundle, tc, prompt, interventions, args.generate,
                                            constrained_layers=constrained, freeze_attention=freeze).text
    write_text_atomic(args.json_out, json.dumps(out, indent=1, ensure_ascii=False))
    b, a = out["before"][0], out["after"][0]
    print(f"top token before: {b['token']!r} ({b['probability']:.3f}); after: {a['token']!r} "
          f"({a['probability']:.3f}) -> {args.json_out}")
    return 0


def _check(args: argparse.Namespace) -> tuple[str, list, range | None]:
    """Everything that can be checked from the options and the model's config, before any weight is read:
    -> (prompt, interventions, constrained layers)."""
    from ..core.model.loading import describe_model
    from ..core.text_input import prompt_text

    prompt = prompt_text(args.prompt)
    interventions = [parse_set(s) for s in args.sets]
    if not interventions:
        raise CircuitStudioError("No intervention given.", "Add at least one --set LAYER:POS:FEATURE=VALUE.")
    check_option(args, "generate", low=0)
    check_outputs(json=args.json_out)
    summary = describe_model(args.model)  # config and file headers only: vocabulary and layers, before any weight
    check_option(args, "top", low=1, high=summary.vocab_size,
                 hint=f"The vocabulary of {summary.name} has {summary.vocab_size} tokens; list at most that many.")
    constrained = parse_layers(args.constrained_layers, summary.n_layers) if args.constrained_layers else None
    return prompt, interventions, constrained


def _pos(position) -> int | str:
    if isinstance(position, slice):
        return f"{position.start or 0}:{'' if position.stop is None else position.stop}"
    return position
