"""Feature-index throughput on the bundled demo: one process, then Ray with 1 and 2 workers.

    python benchmarks/index_scale.py [--windows 512] [--shard-batches 8] [--workers 1 2] [--threads 1 2]
                                     [--worker-threads 1]

Indexes the first `--windows` windows (128 tokens) of resources/demo/corpus_sample.txt with the demo
model and its per-layer transcoders (4 layers x 1,024 features), and prints per run the wall time
and the tokens per second of the whole build (both passes, contexts, logit effects, labels and the
SQLite file). For Ray (a local instance on this machine's cores), starting Ray and the workers
(each loads the model) is timed apart and left out of the throughput. Every Ray index is checked
to be equal, table by table, to the single-process one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "desktop"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from circuit_studio.core.features.corpus_text import read_corpus, token_windows  # noqa: E402
from circuit_studio.core.features.index_build import build_feature_index  # noqa: E402
from circuit_studio.core.features.index_shards import IndexSettings  # noqa: E402
from circuit_studio.core.model.loading import load_model  # noqa: E402
from circuit_studio.core.transcoders.loading import load_transcoders  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "scale"))  # the scale tests' table comparison, to check the shards
from scale_helpers import index_tables as tables  # noqa: E402

DEMO = ROOT / "resources" / "demo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=512, help="corpus windows to index (128 tokens each)")
    ap.add_argument("--shard-batches", type=int, default=8, help="batches of 8 windows per shard")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--worker-threads", type=int, default=1,
                    help="torch threads per Ray worker (default 1; 0: each worker's share of the cores)")
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}),
                    help="torch threads of the single-process runs (default: 1 and all cores)")
    args = ap.parse_args()

    model, transcoders = DEMO / "model", DEMO / "transcoders"
    bundle = load_model(model, device="cpu")
    tc = load_transcoders(transcoders, device="cpu")
    windows = token_windows(bundle.tokenizer, read_corpus(DEMO / "corpus_sample.txt"), context=128)[:args.windows]
    n_tokens = windows.shape[0] * (windows.shape[1] - 1)
    settings = IndexSettings(shard_batches=args.shard_batches)
    shard = settings.batch_size * settings.shard_batches
    print(f"demo model, {tc.n_layers} x {tc.n_features} features; {windows.shape[0]} windows = {n_tokens} tokens, "
          f"{-(-windows.shape[0] // shard)} shards of {shard} windows; {os.cpu_count()} CPU cores")

    print(f"load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference = None
        for threads in args.threads:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            build_feature_index(bundle, tc, windows, tmp / "one.idx", shard_batches=args.shard_batches).close()
            one = time.perf_counter() - t0
            print(f"{'single process':<24} {one:7.1f} s  {n_tokens / one:8.0f} tokens/s   ({threads} thread"
                  f"{'s' if threads > 1 else ''})")
            reference = reference or tables(tmp / "one.idx")

        try:
            import ray
        except ImportError:
            print("Ray is not installed (pip install -e '.[scale]'): no Ray runs.")
            return
        from circuit_studio.scale.cluster import Cluster, worker_pool
        from circuit_studio.scale.ray_index import ray_build_feature_index

        t0 = time.perf_counter()
        with Cluster() as cluster:
            print(f"{'start Ray':<24} {time.perf_counter() - t0:7.1f} s")
            for n in args.workers:
                t0 = time.perf_counter()
                threads = args.worker_threads or None
                pool = worker_pool(cluster, model, transcoders, workers=n, threads=threads)
                started = time.perf_counter() - t0
                out = tmp / f"ray{n}.idx"
                t0 = time.perf_counter()
                ray_build_feature_index(model, transcoders, bundle.tokenizer, windows, out, settings,
                                        workers=n, threads=threads).close()
                took = time.perf_counter() - t0
                same = tables(out) == reference
                print(f"{f'Ray, {n} worker' + ('s' if n > 1 else ''):<24} {took:7.1f} s  {n_tokens / took:8.0f} "
                      f"tokens/s   ({pool.threads} thread{'s' if pool.threads > 1 else ''} each; workers started in {started:.1f} s; "
                      f"index {'equal to' if same else 'DIFFERENT from'} the single-process one)")
                pool.abort()  # free its CPUs for the next pool
        del ray
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
