"""Trace every curated prompt of the bundled demo and print a Markdown table: time, graph size,
kept nodes and the replacement / completeness scores.

    PYTHONPATH=desktop HF_HUB_OFFLINE=1 python benchmarks/demo_graphs.py [--threads 2] [--kind plt|clt] [--demo resources/demo]

Times are wall-clock per prompt for `attribute` (one forward pass, then the backward rows) and for
pruning at the app's default thresholds (node 0.8, edge 0.98), after one warm-up trace. The model
and transcoders are loaded once, the way the app keeps them loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "desktop"))

from circuit_studio.core.attribution.attribute import attribute  # noqa: E402
from circuit_studio.core.graph.attribution_graph import AttributionParams  # noqa: E402
from circuit_studio.core.model.loading import load_model  # noqa: E402
from circuit_studio.core.graph.pruning import Pruner  # noqa: E402
from circuit_studio.core.transcoders.loading import load_transcoders  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default=str(Path(__file__).resolve().parents[1] / "resources" / "demo"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kind", choices=["plt", "clt"], default="plt", help="per-layer or cross-layer transcoders")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    demo = Path(args.demo)

    t0 = time.perf_counter()
    bundle = load_model(demo / "model", device="cpu")
    tc = load_transcoders(demo / ("clt" if args.kind == "clt" else "transcoders"), device="cpu")
    print(f"loaded model and transcoders in {time.perf_counter() - t0:.2f} s; torch threads {args.threads}\n")
    prompts = json.loads((demo / "prompts.json").read_text(encoding="utf-8"))["prompts"]
    params = AttributionParams(batch_size=256)
    attribute(prompts[0]["prompt"], bundle, tc, params)  # warm-up (allocator, first-call overheads)

    print("| behaviour | prompt | tokens | active features | top logit (p) | attribution | pruning "
          "| kept nodes | replacement | completeness |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in prompts:
        t0 = time.perf_counter()
        g = attribute(p["prompt"], bundle, tc, params)
        t_attr = time.perf_counter() - t0
        t0 = time.perf_counter()
        pruner = Pruner(g)
        res = pruner.prune(0.8, 0.98)
        t_prune = time.perf_counter() - t0
        replacement, completeness = pruner.graph_scores()
        top = bundle.tokenizer.decode([int(g.logit_token_ids[0])])
        print(f"| {p['behaviour']} | `{p['prompt']}` | {g.n_pos} | {g.n_features} "
              f"| `{top}` ({float(g.logit_probabilities[0]):.2f}) | {t_attr:.2f} s | {t_prune * 1000:.0f} ms "
              f"| {int(res.node_mask.sum())} | {replacement:.3f} | {completeness:.3f} |")


if __name__ == "__main__":
    main()
