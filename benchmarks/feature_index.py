"""Time a feature index: build one on a tiny random model, then load single features from it.

    PYTHONPATH=desktop python benchmarks/feature_index.py [--features 2048 --lines 600 --context 32 --reads 200]

Prints the build time, the file size (total and per 1k features), and the time of
`FeatureIndex.feature()` over `--reads` random features (mean, p50, p99; a fresh `open()` first,
so the token-string cache starts cold), plus `labels(layer)` for a whole layer.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "desktop"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from circuit_studio.core.features.corpus_text import token_windows  # noqa: E402
from circuit_studio.core.features.index import FeatureIndex, build_feature_index  # noqa: E402
from circuit_studio.core.model.loading import load_model  # noqa: E402
from circuit_studio.core.synthetic import WORDS, build_model_folder, default_hooks, random_transcoders  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=2048, help="features per layer (2 layers)")
    ap.add_argument("--lines", type=int, default=600, help="corpus lines of random words")
    ap.add_argument("--context", type=int, default=32)
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = load_model(build_model_folder("llama", tmp / "model", seed=0), device="cpu")
        rh, wh = default_hooks("llama")
        tc = random_transcoders(n_layers=2, d_model=64, n_features=args.features, seed=1,
                                feature_input_hook=rh, feature_output_hook=wh)
        rng = random.Random(0)
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))) for _ in range(args.lines)]
        windows = token_windows(bundle.tokenizer, lines, context=args.context)
        out = tmp / "bench.idx"
        t0 = time.perf_counter()
        build_feature_index(bundle, tc, windows, out, batch_size=16).close()
        build_s = time.perf_counter() - t0
        n_feat = tc.n_layers * tc.n_features
        size = out.stat().st_size
        print(f"corpus: {windows.shape[0]} windows x {windows.shape[1]} tokens; {n_feat} features")
        print(f"build: {build_s:.2f} s; file {size / 1e6:.2f} MB = {size / n_feat * 1000 / 1e6:.2f} MB per 1k features")

        with FeatureIndex.open(out) as index:
            picks = [(rng.randrange(tc.n_layers), rng.randrange(tc.n_features)) for _ in range(args.reads)]
            times = []
            n_examples = 0
            for layer, feature in picks:
                t = time.perf_counter()
                d = index.feature(layer, feature)
                times.append(time.perf_counter() - t)
                n_examples += len(d.top_examples) + sum(len(b.examples) for b in d.band_examples)
            ms = np.array(times) * 1e3
            print(f"feature(): mean {ms.mean():.3f} ms, p50 {np.percentile(ms, 50):.3f} ms, "
                  f"p99 {np.percentile(ms, 99):.3f} ms, max {ms.max():.3f} ms "
                  f"({n_examples / len(picks):.1f} examples per feature)")
            t = time.perf_counter()
            labels = index.labels(0)
            print(f"labels(0): {len(labels)} labels in {(time.perf_counter() - t) * 1e3:.2f} ms; "
                  f"e.g. {labels[:3]}")


if __name__ == "__main__":
    main()
