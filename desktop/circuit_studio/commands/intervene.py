"""`circuit-studio intervene`: set feature activations and compare the model's output before and after."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from ..core.errors import CircuitStudioError
from ..core.progress import CancelToken, ProgressFn

_SET = re.compile(r"^\s*(\d+)\s*:\s*(\d+|\d*:\d*)\s*:\s*(\d+)\s*=\s*(.+?)\s*$")


def add_parser(sub) -> None:
    p = sub.add_parser("intervene", help="set feature activations and compare outputs",
                       description="Run a prompt with some transcoder features set to chosen activations "
                                   "(circuit-tracer's feature_intervention) and write the top next tokens before and "
                                   "after, and optionally generated continuations.")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--transcoders", required=True, type=Path)
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


def parse_set(text: str):
    """'LAYER:POS:FEATURE=VALUE' -> Intervention (POS may be 'a:b' or 'a:')."""
    from ..core.interventions import Intervention

    m = _SET.match(text)
    if not m:
        raise CircuitStudioError(f"--set {text!r} is not LAYER:POS:FEATURE=VALUE.", "Example: --set 1:7:42=0")
    layer, pos, feat, value = m.groups()
    if ":" in pos:
        a, b = pos.split(":")
        position = slice(int(a or 0), int(b) if b else None)
    else:
        position = int(pos)
    try:
        number = float(value)
    except ValueError:
        raise CircuitStudioError(f"--set {text!r}: value {value!r} is not a number.") from None
    return Intervention(int(layer), position, int(feat), number)


def _top(logits, tokenizer, k: int) -> list[dict]:
    import torch

    probs = torch.softmax(logits.float(), -1)
    p, idx = torch.topk(probs, k)
    return [{"token": tokenizer.decode([int(i)]), "id": int(i), "probability": float(v)} for v, i in zip(p, idx)]


def run(args: argparse.Namespace, progress: ProgressFn, cancel: CancelToken) -> int:
    from ..core.interventions import generate, intervene
    from ..core.model_loading import load_model
    from ..core.transcoder_loading import check_transcoders_fit, load_transcoders

    interventions = [parse_set(s) for s in args.sets]
    if not interventions:
        raise CircuitStudioError("No intervention given.", "Add at least one --set LAYER:POS:FEATURE=VALUE.")
    constrained = None
    if args.constrained_layers:
        a, _, b = args.constrained_layers.partition(":")
        constrained = range(int(a), int(b))
    if not args.json_out.resolve().parent.is_dir():
        raise CircuitStudioError(f"Cannot write {args.json_out}: its folder does not exist.")
    bundle = load_model(args.model, device=args.device, progress=progress, cancel=cancel)
    tc = load_transcoders(args.transcoders, device=bundle.device, dtype=bundle.dtype, progress=progress,
                          cancel=cancel)
    check_transcoders_fit(tc, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model, model_name=bundle.name)
    freeze = not args.no_freeze_attention
    before = intervene(bundle, tc, args.prompt, [], return_activations=False)
    after = intervene(bundle, tc, args.prompt, interventions, constrained_layers=constrained,
                      freeze_attention=freeze, return_activations=False)
    out = {
        "prompt": args.prompt,
        "interventions": [{"layer": iv.layer, "position": _pos(iv.position), "feature": iv.feature,
                           "value": iv.value} for iv in interventions],
        "freeze_attention": freeze,
        "constrained_layers": [constrained.start, constrained.stop] if constrained else None,
        "before": _top(before.logits[-1], bundle.tokenizer, args.top),
        "after": _top(after.logits[-1], bundle.tokenizer, args.top),
    }
    if args.generate:
        out["generated_default"] = generate(bundle, tc, args.prompt, [], args.generate).text
        out["generated_steered"] = generate(bundle, tc, args.prompt, interventions, args.generate,
                                            constrained_layers=constrained, freeze_attention=freeze).text
    tmp = args.json_out.with_name(args.json_out.name + ".part")
    tmp.write_text(json.dumps(out, indent=1, ensure_ascii=False))
    os.replace(tmp, args.json_out)
    b, a = out["before"][0], out["after"][0]
    print(f"top token before: {b['token']!r} ({b['probability']:.3f}); after: {a['token']!r} "
          f"({a['probability']:.3f}) -> {args.json_out}")
    return 0


def _pos(position) -> int | str:
    if isinstance(position, slice):
        return f"{position.start or 0}:{'' if position.stop is None else position.stop}"
    return position
