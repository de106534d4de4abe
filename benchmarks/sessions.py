"""Time saving and opening sessions, their file sizes, and what an autosave after a small edit writes.

    PYTHONPATH=desktop python benchmarks/sessions.py [--features 7500 --layers 8 --pos 30 --density 1.0 --graphs 10]

The graphs are synthetic but shaped like real ones: feature nodes read from every feature of a lower
layer at the same or an earlier position, and from the errors and tokens there; logits read from
everything. `--density` is the fraction of those causally allowed edges that are non-zero (real
graphs: practically all of them, so 1.0 is the worst case for the file size).

1. One graph: a session holding it, pins, supernodes, labels, and a window blob; save (the whole
   file, as a first save or Save As) and open (median of `--repeat` runs; saving includes the fsync)
   and the file size.
2. `--graphs` graphs (seeds 0, 1, ...), all bound to one model and transcoder set, with 500 labels
   of that set: the first save (the whole file), opening it, then autosaves after a label edit (each
   run edits another label; in place, one transaction): their time and the bytes written, counted as
   every byte the process handed to write() during the save (`wchar` of /proc/self/io: SQLite's
   journal and the changed pages of the file, Linux only) and the growth of the file. Then an autosave
   that adds one more graph (its arrays are the only ones written) and Save As to a new file (a copy
   of the file plus the changes, no graph encoded again).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "desktop"))

from circuit_studio.core.session.analysis import Supernode  # noqa: E402
from circuit_studio.core.graph.attribution_graph import AttributionGraph  # noqa: E402
from circuit_studio.core.session.records import GraphRecord, ModelRef, Session, TranscoderRef  # noqa: E402
from circuit_studio.core.session.store import load_session, save_session, save_session_as  # noqa: E402

AUTOSAVE_AIM_BYTES, AUTOSAVE_AIM_SECONDS = 1 << 20, 0.050


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


def _bytes_written() -> int | None:
    """Bytes this process has passed to write() so far (Linux), or None where that cannot be read."""
    try:
        with open("/proc/self/io") as fh:
            return int(next(line for line in fh if line.startswith("wchar:")).split()[1])
    except (OSError, StopIteration, ValueError):
        return None


def _timed_save(save, session: Session, path: Path) -> tuple[float, int | None, int]:
    """(seconds, bytes written or None, growth of the file in bytes) of one save."""
    size, before = path.stat().st_size if path.exists() else 0, _bytes_written()
    t0 = time.perf_counter()
    save(session, path)
    seconds = time.perf_counter() - t0
    after = _bytes_written()
    return seconds, None if before is None or after is None else after - before, path.stat().st_size - size


def _size(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:,.1f} MiB" if n >= 1 << 20 else f"{n / 1024:,.1f} KiB"


def many_graphs(args: argparse.Namespace, first: AttributionGraph) -> None:
    """Part 2 of the module docstring."""
    t0 = time.perf_counter()
    graphs = [first] + [synthetic_graph(args.features, args.layers, args.pos, args.logits, args.density, args.seed + i)
                        for i in range(1, args.graphs + 1)]  # the last one is added by an autosave
    print(f"\n{args.graphs} graphs of {args.features} features (built in {time.perf_counter() - t0:.1f} s)")
    model = ModelRef("/models/x", "fh1:" + "0" * 64, {"name": "x"})
    transcoders = TranscoderRef("/models/x-plt", "fh1:" + "1" * 64, {"kind": "plt"})
    records = [GraphRecord(i + 1, g, pinned=tuple(range(0, 200, 4)), model=model, transcoders=transcoders)
               for i, g in enumerate(graphs)]
    features = [(int(layer), int(f)) for layer, _, f in first.active_features[:500]]
    session = Session(model=model, transcoders=transcoders, graphs=tuple(records[:-1]), current_graph=1,
                      labels={key: f"label {i}" for i, key in enumerate(features)},
                      window_state=os.urandom(2000), notes="benchmark")
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        path = Path(tmp) / "many.cs-session"
        seconds, written, _ = _timed_save(save_session, session, path)
        print(f"first save   {seconds:7.3f} s   {_size(path.stat().st_size)} file, {_size(written)} written")
        t0 = time.perf_counter()
        back = load_session(path)
        print(f"open         {time.perf_counter() - t0:7.3f} s")
        assert back == session, "round trip changed the session"
        del back

        runs = []
        for r in range(args.repeat):
            session = replace(session, labels={**session.labels, features[r]: f"edited {r}"})
            runs.append(_timed_save(save_session, session, path))
        seconds = statistics.median(s for s, _, _ in runs)
        written = None if runs[0][1] is None else statistics.median(w for _, w, _ in runs)
        print(f"autosave after a label edit: {seconds * 1000:.1f} ms, {_size(written)} written, file grew by "
              f"{max(g for _, _, g in runs):,} bytes (median of {args.repeat}: "
              f"{', '.join(f'{s * 1000:.1f} ms' for s, _, _ in runs)})")
        met = seconds < AUTOSAVE_AIM_SECONDS and written is not None and written < AUTOSAVE_AIM_BYTES
        print(f"  aim under {AUTOSAVE_AIM_BYTES >> 20} MB and {AUTOSAVE_AIM_SECONDS * 1000:.0f} ms: "
              f"{'met' if met else 'NOT met'}")

        session = session.with_graph(records[-1])
        seconds, written, growth = _timed_save(save_session, session, path)
        print(f"autosave adding one graph: {seconds:.3f} s, {_size(written)} written, file grew by {_size(growth)}")
        seconds, written, _ = _timed_save(save_session_as, replace(session, notes="as"), Path(tmp) / "as.cs-session")
        print(f"save as (a copy of the file): {seconds:.3f} s, {_size(written)} written")


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
    ap.add_argument("--graphs", type=int, default=10, help="graphs in the session of part 2 (0: skip it)")
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
            save_session_as(session, path)  # the whole file each time (a save in place would write nothing)
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
    del back
    if args.graphs:
        many_graphs(args, g)


if __name__ == "__main__":
    main()
