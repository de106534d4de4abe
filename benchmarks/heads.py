"""Head attribution speed on the medium benchmark graph (benchmarks/attribution.py's model, transcoders and prompt).

Prints the time to prepare a `HeadAnalysis` (one clean forward pass), to split every input edge of one
feature per head of every layer below it (top layer, last position: the deepest split), to split the
top logit's inputs (every layer), and one QK breakdown (a middle layer's head, last position attending
to an earlier one); each the best of a few runs, with the invariant sum(parts) == edge row checked.

    python benchmarks/heads.py [--threads 2] [--device cpu|cuda] [--keep DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "desktop"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from circuit_studio.core.attribution.attribute import attribute  # noqa: E402
from circuit_studio.core.graph.attribution_graph import AttributionParams, load_graph, save_graph  # noqa: E402
from circuit_studio.core.attribution.heads import HeadAnalysis  # noqa: E402
from circuit_studio.core.model.loading import load_model  # noqa: E402
from circuit_studio.core.transcoders.loading import load_transcoders  # noqa: E402


def _attribution_benchmark():
    spec = importlib.util.spec_from_file_location("bench_attribution", HERE / "attribution.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best_of(n: int, fn):
    times, result = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="build into this folder and keep it, with the graph (reused if present)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench = _attribution_benchmark()

    tmp = None
    folder = args.keep or Path(tmp := tempfile.mkdtemp(prefix="cs_bench_heads_"))
    if not (folder / "transcoders" / "config.yaml").exists():
        bench.build(folder)
    bundle = load_model(folder / "model", device=args.device)
    tc = load_transcoders(folder / "transcoders", device=bundle.device)
    cached = folder / "graph.npz"
    if args.keep and cached.exists():
        graph = load_graph(cached)
    else:
        graph = attribute(bench.PROMPT, bundle, tc, AttributionParams(batch_size=256))
        if args.keep:
            save_graph(graph, cached)
    H = bundle.arch.layers[0].n_heads
    print(f"graph: {graph.n_pos} tokens, {graph.n_features} features, {graph.logit_offset} sources, "
          f"{graph.n_layers} layers x {H} heads")

    t, analysis = best_of(1, lambda: HeadAnalysis(bundle, tc, graph))
    print(f"prepare (clean forward pass)      {t:7.3f} s")

    layers = graph.active_features[graph.selected_features]
    top = np.flatnonzero((layers[:, 0] == graph.n_layers - 1) & (layers[:, 1] == graph.n_pos - 1))
    feature = int(top[0])
    A = graph.adjacency_matrix
    for name, target in (("feature", feature), ("logit", graph.logit_offset)):
        t, split = best_of(args.repeat, lambda: analysis.split(target))
        row = A[target, :graph.logit_offset]
        err = max(float(np.abs(split.parts[i].sum(0) - row).max()) for i in range(len(split.layers)))
        n_in = int(np.count_nonzero(row))
        print(f"split {name} {target:5d} ({n_in} inputs, {len(split.layers)} layers x {H + 1} rows)"
              f"  {t:7.3f} s   max |sum(parts) - edge| / max|edge| = {err / float(np.abs(row).max()):.1e}")
        totals = split.head_totals()
        j = int(np.argmax(np.abs(totals[:, :H]).max(1)))
        h = int(np.argmax(np.abs(totals[j, :H])))
        print(f"    largest head share: layer {split.layers[j]} head {h}: {totals[j, h]:+.3f} "
              f"of {float(row.sum()):+.3f} (bypass at that layer {totals[j, H]:+.3f})")

    layer, head, q, k = graph.n_layers // 2, 3, graph.n_pos - 1, graph.n_pos // 2
    t, bd = best_of(args.repeat, lambda: analysis.qk(layer, head, q, k))
    sums = [float(m.sum(dtype=np.float64)) for m in (bd.query_marginals, bd.key_marginals)]
    print(f"QK layer {layer} head {head} ({q} -> {k})        {t:7.3f} s   score {bd.score:+.4f}; marginals sum "
          f"{sums[0]:+.4f} / {sums[1]:+.4f}; pair terms sum {float(bd.pair_matrix().sum(dtype=np.float64)):+.4f}")
    t, pairs = best_of(args.repeat, lambda: bd.top_pairs(10))
    print(f"QK top 10 pairs                   {t:7.3f} s   largest {pairs[0][2]:+.4f} "
          f"(nodes {pairs[0][0]} x {pairs[0][1]})")
    if tmp:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
