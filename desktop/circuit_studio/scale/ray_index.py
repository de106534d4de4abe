"""`index-features --ray`: the feature index of a big corpus, its shards run on Ray actors.

The build is the core one (`core.features.index_build.run_index_build`); only where shards run
changes (`RayIndexExecutor`). Each actor holds the model and transcoders once; the driver holds the
tokenizer, the corpus windows (put once into Ray's object store) and the merged per-feature state,
and writes the file. Results are merged in shard order, by shard id (a retried shard counts
once), so the index equals the one `build_feature_index` writes in one process for the same corpus
and settings, row for row (only `meta.created` differs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.features.index import FeatureIndex
from ..core.features.index_build import run_index_build
from ..core.features.index_shards import IndexPlan, IndexSettings
from ..core.progress import CancelToken, ProgressFn, report
from .cluster import Call, Cluster, WorkerPool, worker_pool

_PHASES = {"scan": "Scanning corpus", "bands": "Histograms"}


class RayIndexExecutor:
    """`core.features.index_shards.ShardExecutor` on a `WorkerPool`: one call per shard, progress
    reported per finished shard (in batches, over all shards)."""

    def __init__(self, pool: WorkerPool, progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                 trace: dict | None = None) -> None:
        self.pool, self.progress, self.cancel, self.trace = pool, progress, cancel, trace
        self._corpus: tuple[int, Any] | None = None

    def _corpus_ref(self, windows: torch.Tensor):
        if self._corpus is None or self._corpus[0] != id(windows):
            self._corpus = (id(windows), self.pool.ray.put(windows.numpy()))
        return self._corpus[1]

    def run(self, step: str, plan: IndexPlan, windows: torch.Tensor, shards: list[int], shared: Any = None,
            items: dict[int, Any] | None = None):
        ray = self.pool.ray
        corpus = self._corpus_ref(windows)
        shared_ref = ray.put(shared) if shared is not None else None
        calls = [Call(s, "index_step", (step, plan, s, corpus, shared_ref, (items or {}).get(s), self.trace))
                 for s in shards]
        phase = _PHASES.get(step)
        done = 0
        if phase:
            report(self.progress, phase, 0, plan.n_batches, f"0/{len(shards)} shards")
        finished = 0
        for s, part in self.pool.run(calls, self.cancel):
            finished += 1
            if phase:
                done += plan.batches_of(s)
                report(self.progress, phase, done, plan.n_batches, f"{finished}/{len(shards)} shards")
            yield s, part

    def logit_effects(self, layers: list[int], n: int) -> dict[int, tuple]:
        return dict(self.pool.run([Call(l, "logit_effects", (l, n, self.trace)) for l in layers], self.cancel))


def ray_build_feature_index(model: str | Path, transcoders: str | Path, tokenizer, windows: torch.Tensor,
                            out_path: str | Path, settings: IndexSettings = IndexSettings(), *,
                            address: str | None = None, workers: int | None = None, device: str | None = None,
                            dtype: str = "float32", threads: int | None = None, corpus_name: str = "",
                            progress: ProgressFn | None = None,
                            cancel: CancelToken | None = None, trace: dict | None = None) -> FeatureIndex:
    """Build the feature index of `windows` on Ray (see the module docstring). `address`: None
    for a local instance on this machine's cores, "auto" or an address to join a running cluster
    (ignored when this process is already connected). `tokenizer` (the model's) decodes the
    example tokens on the driver. `threads`: torch threads per worker (default: its share of the CPUs)."""
    with Cluster(address) as cluster:
        pool = worker_pool(cluster, model, transcoders, workers=workers, device=device, dtype=dtype, threads=threads,
                           progress=progress, cancel=cancel)
        source = pool.call("source", cancel=cancel)
        return run_index_build(RayIndexExecutor(pool, progress, cancel, trace), source, tokenizer, windows,
                               out_path, settings, corpus_name=corpus_name, progress=progress, cancel=cancel)
