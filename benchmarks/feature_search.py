"""Time feature search (`core.features.search`): the demo's index (4 x 1,024 features) and a synthetic
26 x 16,384-feature one (a Gemma-2-2B-sized transcoder set) written with the index writer's schema and
record format from seeded random data.

    PYTHONPATH=desktop python benchmarks/feature_search.py [--layers 26 --features 16384 --examples 4]
                                                         [--queries 300] [--skip-demo] [--skip-synthetic]

Per index: the time to build the search index (once; cached next to a big index), to reopen it from
the cache, and per query (words, prefixes as typed one letter at a time, two-word queries, feature
numbers) p50, p99 and max. The aim is under 100 ms per query.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "desktop"))

from circuit_studio.core.features.index import INDEX_FORMAT, INDEX_VERSION, FeatureIndex, pack_arrays  # noqa: E402
from circuit_studio.core.features.index_build import _create_schema, auto_label  # noqa: E402
from circuit_studio.core.features.search import FeatureSearch, has_fts5  # noqa: E402
from circuit_studio.core.synthetic import WORDS  # noqa: E402

DEMO_INDEX = ROOT / "resources" / "demo" / "features.sqlite"
SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "to", "vel", "dor", "an", "is", "qu", "bra", "tem", "ul", "fi", "gon")


def vocabulary(rng: random.Random, n: int) -> list[str]:
    words = list(WORDS)
    seen = set(words)
    while len(words) < n:
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return [" " + w for w in words]


def write_synthetic_index(path: Path, n_layers: int, n_features: int, n_examples: int, seed: int = 0,
                          vocab_size: int = 8000, n_windows: int = 20000, context: int = 64, length: int = 16) -> None:
    """An index file in the reader's format (schema and records as `feature_index_build` writes them),
    with seeded random windows (Zipf-distributed tokens), examples, histograms and logit effects."""
    rng = random.Random(seed)
    npr = np.random.default_rng(seed)
    vocab = vocabulary(rng, vocab_size)
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    p = 1 / ranks ** 1.05
    p /= p.sum()
    windows = npr.choice(vocab_size, size=(n_windows, context), p=p).astype(np.int32)
    conn = sqlite3.connect(path)
    _create_schema(conn)
    conn.executemany("INSERT INTO tokens VALUES (?, ?)", list(enumerate(vocab)))
    conn.executemany("INSERT INTO windows VALUES (?, ?)", [(i, w.astype("<i4").tobytes()) for i, w in enumerate(windows)])
    bins = 16
    for layer in range(n_layers):
        rows, blobs = [], []
        for f in range(n_features):
            fid = layer * n_features + f
            win = npr.integers(0, n_windows, n_examples)
            start = npr.integers(0, context - length, n_examples)
            maxpos = npr.integers(0, length, n_examples)
            vmax = float(npr.gamma(2.0, 2.0)) + 0.1
            ex_max = np.sort(npr.uniform(0.5, 1.0, n_examples).astype(np.float32) * vmax)[::-1]
            info = np.stack([np.full(n_examples, -1), win, start, np.full(n_examples, length), maxpos], 1)
            top = npr.integers(0, vocab_size, 4)
            blobs.append((fid, pack_arrays({
                "ex_info": info.astype(np.int32), "ex_max": ex_max,
                "ex_rel": npr.uniform(0, 1, n_examples * length).astype(np.float16),
                "band_edges": np.linspace(0, vmax, 5).astype(np.float32), "band_counts": np.zeros(4, np.int64),
                "hist_edges": np.linspace(0, vmax, bins + 1).astype(np.float32),
                "hist_counts": npr.integers(0, 100, bins).astype(np.int64),
                "top_ids": top[:2].astype(np.int32), "top_vals": np.array([1.0, 0.5], np.float32),
                "bottom_ids": top[2:].astype(np.int32), "bottom_vals": np.array([-0.5, -1.0], np.float32)})))
            reads = [vocab[int(windows[w, s + m])] for w, s, m in zip(win, start, maxpos)]
            n_active = int(npr.integers(1, 5000))
            rows.append((fid, layer, f, n_active, n_active / 1e6, vmax, vmax / 3,
                         auto_label(reads, [vocab[int(t)] for t in top[:2]])))
        conn.executemany("INSERT INTO features VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany("INSERT INTO feature_data VALUES (?, ?)", blobs)
    meta = dict(format=INDEX_FORMAT, version=INDEX_VERSION, model="synthetic", transcoder_scan="synthetic",
                transcoder_kind="plt", transcoder_source="synthetic", transcoder_fingerprint=f"seed{seed}",
                feature_input_hook="", feature_output_hook="", n_layers=n_layers, n_features=n_features,
                corpus="synthetic", n_windows=n_windows, context=context, n_tokens=n_windows * (context - 1),
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                settings=json.dumps({"synthetic": True}))
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
    conn.commit()
    conn.close()


def queries(index: FeatureIndex, rng: random.Random, n: int) -> list[str]:
    """Words from labels, each also typed letter by letter (every prefix is a query, as in the search box),
    two-word queries, and feature numbers."""
    info = index.info
    labels = [index.label(rng.randrange(info.n_layers), rng.randrange(info.n_features)) for _ in range(n)]
    words = [w for lab in labels for w in "".join(c if c.isalnum() else " " for c in lab).split() if len(w) > 2]
    out = []
    while len(out) < n:
        w = rng.choice(words)
        kind = rng.random()
        if kind < 0.5:
            out += [w[:k] for k in range(1, len(w) + 1)]
        elif kind < 0.8:
            out.append(f"{w} {rng.choice(words)}")
        elif kind < 0.9:
            out.append(w)
        else:
            out.append(f"L{rng.randrange(info.n_layers)}#{rng.randrange(info.n_features)}")
    return out[:n]


def run(name: str, path: Path, n_queries: int, cache, like_queries: int | None = None) -> None:
    with FeatureIndex.open(path) as index:
        n = index.info.n_layers * index.info.n_features
        for backend in (["fts5"] if has_fts5() else []) + ["like"]:
            s = FeatureSearch(index, cache=cache if backend == "fts5" else None, use_fts=backend == "fts5")
            t0 = time.perf_counter()
            s.prepare()
            build = time.perf_counter() - t0
            how = "built" if s.build_seconds is not None else "read from the cache"
            s.close()
            reopen = None
            if s.cache_path is not None:
                s2 = FeatureSearch(index, cache=cache, use_fts=True)
                t0 = time.perf_counter()
                s2.prepare()
                reopen = time.perf_counter() - t0
                s.close()
                s = s2
            rng = random.Random(1)
            qs = queries(index, rng, n_queries if backend == "fts5" or like_queries is None else like_queries)
            times, hits = [], []
            for q in qs:
                t0 = time.perf_counter()
                h = s.search(q)
                times.append((time.perf_counter() - t0) * 1000)
                hits.append(len(h))
            t = np.array(times)
            worst = qs[int(t.argmax())]
            print(f"{name} ({n:,} features), {backend}: search index {how} in {build:.2f} s"
                  + (f", reopened from {s.cache_path.name} in {reopen * 1000:.0f} ms" if reopen is not None else "")
                  + f"; {len(qs)} queries: p50 {np.percentile(t, 50):.1f} ms, p99 {np.percentile(t, 99):.1f} ms, "
                  f"max {t.max():.1f} ms ({worst!r}); mean hits {np.mean(hits):.1f}")
            s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=26)
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--examples", type=int, default=4, help="top examples per synthetic feature")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--like-queries", type=int, default=60, help="queries for the LIKE fallback on the big index")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--keep", type=Path, help="write the synthetic index here (and its .search cache beside it), "
                                              "or reuse it if it exists")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; FTS5: {has_fts5()}")
    if not args.skip_demo:
        run("demo", DEMO_INDEX, args.queries, None)
    if not args.skip_synthetic:
        with tempfile.TemporaryDirectory() as tmp:
            path = args.keep or Path(tmp) / "synthetic.sqlite"
            if not path.is_file():
                t0 = time.perf_counter()
                write_synthetic_index(path, args.layers, args.features, args.examples)
                print(f"synthetic index {args.layers} x {args.features:,} written in {time.perf_counter() - t0:.1f} s, "
                      f"{path.stat().st_size / 1e6:.0f} MB")
            run("synthetic", path, args.queries, "auto", like_queries=args.like_queries)


if __name__ == "__main__":
    main()
