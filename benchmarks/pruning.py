"""Time pruning on a synthetic graph of realistic size (the app re-prunes while a slider moves).

    PYTHONPATH=desktop python benchmarks/pruning.py [--features 9000 --layers 8 --pos 26 --logits 10]

The graph is random but shaped like a real one: features only read from lower layers at the same or
earlier positions (errors and tokens likewise), logits read from everything, magnitudes are heavy
tailed. Prints the time of each step and the peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "desktop"))

from circuit_studio.core.graph.attribution_graph import AttributionGraph  # noqa: E402
from circuit_studio.core.graph.pruning import Pruner, graph_scores, node_influence, prune_graph  # noqa: E402


def synthetic_graph(n_features: int, n_layers: int, n_pos: int, n_logits: int, density: float,
                    seed: int) -> AttributionGraph:
    rng = np.random.default_rng(seed)
    # (layer, pos, feature) triples, unique and lexicographic; position 0 (BOS) has no features.
    per_slot = max(1, n_features // (n_layers * (n_pos - 1)))
    layer = np.repeat(np.arange(n_layers), (n_pos - 1) * per_slot)
    pos = np.tile(np.repeat(np.arange(1, n_pos), per_slot), n_layers)
    feat = rng.integers(0, 2**14, layer.size)
    active = np.unique(np.stack([layer, pos, feat], 1), axis=0)
    nf = len(active)
    layers = np.concatenate([active[:, 0], np.repeat(np.arange(n_layers), n_pos), np.full(n_pos, -1),
                             np.full(n_logits, n_layers)])
    positions = np.concatenate([active[:, 1], np.tile(np.arange(n_pos), n_layers), np.arange(n_pos),
                                np.full(n_logits, n_pos - 1)])
    n = layers.size
    source_ok = np.ones(n, dtype=bool)
    source_ok[nf + (n_layers + 1) * n_pos:] = False  # logits are never sources
    source_ok[nf:nf + n_layers * n_pos][np.arange(n_layers * n_pos) % n_pos == 0] = False  # no BOS errors
    a = np.zeros((n, n), dtype=np.float32)
    rows = np.r_[0:nf, nf + (n_layers + 1) * n_pos:n]  # only feature and logit rows are non-zero
    for start in range(0, rows.size, 512):  # in blocks, to keep the temporaries small
        r = rows[start:start + 512]
        allowed = ((layers[None, :] < layers[r, None]) & (positions[None, :] <= positions[r, None])
                   & source_ok[None, :] & (rng.random((r.size, n), dtype=np.float32) < density))
        values = rng.standard_normal((r.size, n), dtype=np.float32) * np.exp(
            1.5 * rng.standard_normal((r.size, n), dtype=np.float32))
        a[r] = np.where(allowed, values, np.float32(0))
    probs = np.sort(rng.dirichlet(np.ones(n_logits)))[::-1].astype(np.float32) * 0.9
    return AttributionGraph(
        prompt="synthetic", input_tokens=np.arange(n_pos), token_strings=tuple(f"t{i}" for i in range(n_pos)),
        active_features=active, activation_values=rng.random(nf, dtype=np.float32) * 3,
        selected_features=np.arange(nf), logit_token_ids=np.arange(n_logits), logit_probabilities=probs,
        logit_tokens=tuple(f"l{i}" for i in range(n_logits)), adjacency_matrix=a, n_layers=n_layers,
        vocab_size=50_000)


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    print(f"{label:<46} {time.perf_counter() - t0:8.3f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=9000)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--pos", type=int, default=26)
    ap.add_argument("--logits", type=int, default=10)
    ap.add_argument("--density", type=float, default=0.6, help="fraction of causally allowed entries that are non-zero")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    g = timed("build synthetic graph", lambda: synthetic_graph(args.features, args.layers, args.pos, args.logits,
                                                               args.density, args.seed))
    nnz = int(np.count_nonzero(g.adjacency_matrix))
    print(f"N = {g.n_nodes} nodes ({g.n_features} features), {nnz / 1e6:.1f} M non-zero edges, "
          f"A = {g.adjacency_matrix.nbytes / 2**20:.0f} MiB")
    timed("node_influence (normalise + power iteration)", lambda: node_influence(g))
    result = timed("prune_graph(0.8, 0.98) from scratch", lambda: prune_graph(g, 0.8, 0.98))
    print(f"  kept {result.n_nodes} nodes, {int(result.edge_mask.sum())} edges")
    pruner = timed("Pruner(graph) (cached state)", lambda: Pruner(g))
    timed("  prune(0.8, 0.98), first: edge scores", lambda: pruner.prune(0.8, 0.98))
    timed("  prune(0.8, 0.90): edge threshold moved", lambda: pruner.prune(0.8, 0.90))
    timed("  prune(0.7, 0.90): node threshold moved", lambda: pruner.prune(0.7, 0.90))
    timed("  prune(0.7, 0.95): edge threshold moved", lambda: pruner.prune(0.7, 0.95))
    timed("graph_scores(graph) from scratch", lambda: graph_scores(g))
    timed("pruner.graph_scores() (cached)", pruner.graph_scores)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
