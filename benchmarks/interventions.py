"""Time what one move of an intervention slider costs on the bundled demo: the README's case-study swap
on "The capital of the state containing Dallas is".

    PYTHONPATH=desktop HF_HUB_OFFLINE=1 python benchmarks/interventions.py [--threads 2 --repeat 20 --tokens 8]

Prints the median and worst of `--repeat` runs of: the next-token pass with all feature activations (what
the pane runs for the bars and the rings, reusing the recorded clean run as the pane does), and the
steered greedy continuation of `--tokens` tokens (which the pane runs after it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "desktop"))

from circuit_studio.core.attribution.attribute import attribute  # noqa: E402
from circuit_studio.core.interventions.contrast import distinct_features, swap_interventions  # noqa: E402
from circuit_studio.core.interventions.intervene import generate, intervene  # noqa: E402
from circuit_studio.core.model.loading import load_model, tokenize_prompt  # noqa: E402
from circuit_studio.core.graph.pruning import Pruner  # noqa: E402
from circuit_studio.core.model.replacement import record_clean_run  # noqa: E402
from circuit_studio.core.transcoders.loading import load_transcoders  # noqa: E402

A = "The capital of the state containing Dallas is"
B = "The capital of the state containing San Diego is"


def timed(fn, repeat: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default=str(Path(__file__).resolve().parents[1] / "resources" / "demo"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_model(Path(args.demo) / "model", device="cpu")
    tc = load_transcoders(Path(args.demo) / "transcoders", device="cpu")
    ga, gb = attribute(A, bundle, tc), attribute(B, bundle, tc)
    city_a, city_b = ga.n_pos - 2, gb.n_pos - 2
    ivs = swap_interventions(distinct_features(ga, Pruner(ga).node_influence, city_a, gb, city_b),
                             distinct_features(gb, Pruner(gb).node_influence, city_b, ga, city_a), city_a, 2)
    ids = tokenize_prompt(bundle, A)
    clean = record_clean_run(bundle, ids, tc)

    med, worst, result = timed(lambda: intervene(bundle, tc, ids, ivs, clean=clean), args.repeat)
    top = bundle.tokenizer.decode([int(result.logits[-1].argmax())])
    print(f"{len(ivs)} interventions on {len(ids)} tokens, torch threads {args.threads}")
    print(f"next token + all activations: median {med * 1000:.1f} ms, worst {worst * 1000:.1f} ms  (top: {top!r})")
    med, worst, gen = timed(lambda: generate(bundle, tc, ids, ivs, args.tokens), max(3, args.repeat // 4))
    print(f"steered continuation of {args.tokens} tokens: median {med * 1000:.1f} ms, worst {worst * 1000:.1f} ms "
          f"({gen.text!r})")


if __name__ == "__main__":
    main()
