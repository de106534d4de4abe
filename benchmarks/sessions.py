"""Time saving and opening a session holding one large graph, and report the file size.

    PYTHONPATH=desktop python benchmarks/sessions.py [--features 7500 --layers 8 --pos 30 --density 1.0]

The graph is synthetic but shaped like a real one: feature nodes read from every feature of a lower
layer at the same or an earlier position, and from the errors and tokens there; logits read from
everything. `--density` is the fraction of those causally allowed edges that are non-zero (real
graphs: practically all of them, so 1.0 is the worst case for the file size). The session also holds
pins, supernodes, labels, an intervention and a window blob. Times are the median of `--repeat` runs;
saving includes the fsync.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "desktop"))

from circuit_studio.core.analysis import Supernode  # noqa: E402
from circuit_studio.core.graph import AttributionGraph  # noqa: E402
from circuit_studio.core.session import GraphRecord, ModelRef, Session  # noqa: E402
from circuit_studio.core.session_store import load_session, save_session  # noqa: E402


def synthetic_graph(n_features: int, n_layers: int, n_pos: int, n_logits: int, density: float,
                    seed: int) -> AttributionGraph:
    rng = np.random.default_rng(seed)
    # exactly n_features distinct (layer, pos, feature), lexicographic, none at position 0 (BOS)
    slots = n_layers * (n_pos - 1)
    per_slot = np.full(slots, n_features // slots)
    per_slot[: n_features % slots] += 1
    rows = []
    for s, k in enumerate(per_slot):
        layer, pos = divmod(s, n_pos - 1)
        feats = np.sort(rng.choice(16384, size=k, replace=False))
        rows.append(np.stack([np.full(k, layer), np.full(k, pos + 1), feats], 1))
    active = np.concatenate(rows).astype(np.int64)
    nf = n_features
    layers = np.concatenate([active[:, 0], np.repeat(np.arange(n_layers), n_pos), np.full(n_pos, -1),
                             np.full(n_logits, n_layers)])
    positions = np.concatenate([active[:, 1], np.tile(np.arange(n_pos), n_layers), np.arange(n_pos),
                                np.full(n_logits, n_pos - 1)])
    n = layers.size
    is_source = np.ones(n, dtype=bool)
    is_source[n - n_logits:] = False
    a = np.zeros((n, n), dtype=np.float32)
    targets = np.r_[0:nf, n - n_logits:n]  # only feature and logit rows hold edges
    for start in range(0, targets.size, 1024):
        r = targets[start:start + 1024]
        allowed = (layers[None, :] < layers[r, None]) & (positions[None, :] <= positions[r, None]) & is_source
        if density < 1.0:
            allowed &= rng.random((r.size, n), dtype=np.float32) < density
        values = rng.standard_normal((r.size, n), dtype=np.float32) * np.exp(
            1.5 * rng.standard_normal((r.size, n), dtype=np.float32))
        a[r] = np.where(allowed, values, np.float32(0))
    probs = np.sort(rng.dirichlet(np.ones(n_logits)))[::-1].astype(np.float32) * 0.9
    return AttributionGraph(
        prompt="synthetic " * n_pos, input_tokens=np.arange(n_pos, dtype=np.int64),
        token_strings=tuple(f"t{i}" for i in range(n_pos)), active_features=active,
        activation_values=rng.random(nf, dtype=np.float32) * 3, selected_features=np.arange(nf, dtype=np.int64),
        logit_token_ids=np.arange(n_logits, dtype=np.int64), logit_probabilities=probs,
        logit_tokens=tuple(f"l{i}" for i in range(n_logits)), adjacency_matrix=a, n_layers=n_layers,
        vocab_size=50_000, provenance={"versions": {"torch": "x"}, "device": "cpu", "dtype": "float32"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=7500)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--pos", type=int, default=30)
    ap.add_argument("--logits", type=int, default=10)
    ap.add_argument("--density", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--folder", type=Path, default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    g = synthetic_graph(args.features, args.layers, args.pos, args.logits, args.density, args.seed)
    nnz = int(np.count_nonzero(g.adjacency_matrix))
    print(f"graph: {g.n_features} features, N = {g.n_nodes} nodes, {nnz / 1e6:.1f} M non-zero edges, "
          f"dense A = {g.adjacency_matrix.nbytes / 2**20:.0f} MiB (built in {time.perf_counter() - t0:.1f} s)")
    record = GraphRecord(1, g, pinned=tuple(range(0, 400, 4)), supernodes=(Supernode(1, "group", (0, 4, 8)),))
    session = Session(model=ModelRef("/models/x", "fh1:0", {"name": "x"}), graphs=(record,), current_graph=1,
                      labels={(int(l), int(f)): f"label {i}" for i, (l, _, f) in enumerate(g.active_features[:500])},
                      window_state=os.urandom(2000), notes="benchmark")

    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        path = Path(tmp) / "bench.cs-session"
        saves, opens = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            save_session(session, path)
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            back = load_session(path)
            opens.append(time.perf_counter() - t0)
        size = path.stat().st_size
        assert back == session, "round trip changed the session"
    print(f"save  {statistics.median(saves):6.3f} s  (runs: {', '.join(f'{s:.3f}' for s in saves)})")
    print(f"open  {statistics.median(opens):6.3f} s  (runs: {', '.join(f'{s:.3f}' for s in opens)})")
    print(f"file  {size / 2**20:6.1f} MiB  ({size / max(nnz, 1):.2f} bytes per non-zero edge; "
          f"dense float32 would be {g.adjacency_matrix.nbytes / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
