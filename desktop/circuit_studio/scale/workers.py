"""The Ray actor: one process holding the model and the transcoders, loaded once.

It is a plain class (no Ray import here); `cluster.WorkerPool` turns it into an actor. Every method
is a pure function of its arguments and the loaded weights, so a call re-run after a worker died
gives the same result.

`trace` (tests and debugging only): {"dir": folder, "pause": {step or "step.key": seconds}} makes
each call first write an empty file "<dir>/<step>.<key>.<pid>.<n>" (what runs where, e.g.
"bands.3.4711.0") and then sleep that long.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

_calls = itertools.count()


def _trace(trace: dict | None, step: str, key: Any) -> None:
    if not trace:
        return
    folder = Path(trace["dir"])
    (folder / f"{step}.{key}.{os.getpid()}.{next(_calls)}").touch()
    pauses = trace.get("pause") or {}
    pause = float(pauses.get(f"{step}.{key}", pauses.get(step, 0)))
    if pause > 0:
        time.sleep(pause)


class ModelWorker:
    """Model + transcoders on this worker's device; index shards, logit effects, attribution graphs."""

    def __init__(self, model: str, transcoders: str, device: str | None = None, dtype: str = "float32",
                 threads: int | None = None) -> None:
        from ..core.features.index_shards import IndexWorker
        from ..core.model.loading import load_model
        from ..core.transcoders.loading import load_transcoders

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if threads:
            torch.set_num_threads(int(threads))
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        self.bundle = load_model(model, device=device, dtype=torch_dtype)
        self.tc = load_transcoders(transcoders, device=self.bundle.device)
        self.index = IndexWorker(self.bundle, self.tc)

    def ping(self) -> dict:
        return {"pid": os.getpid(), "device": str(self.bundle.device), "threads": torch.get_num_threads()}

    # ---- feature index ----
    def source(self):
        return self.index.source()

    def index_step(self, step: str, plan, shard: int, corpus: np.ndarray, shared: Any = None, item: Any = None,
                   trace: dict | None = None):
        """`IndexWorker.run_step` on shard `shard` of `corpus` (all windows [N, T], shared by every
        call through Ray's object store); the result comes back on the CPU."""
        _trace(trace, step, shard)
        w0, w1 = plan.windows_of(shard)
        windows = torch.from_numpy(np.array(corpus[w0:w1], dtype=np.int64))
        return self.index.run_step(step, plan, shard, windows, shared, item, to_cpu=True)

    def logit_effects(self, layer: int, n: int, trace: dict | None = None):
        _trace(trace, "effects", layer)
        return self.index.logit_effects(layer, n)

    # ---- attribution ----
    def attribute(self, job: dict, options: dict, out_dir: str, trace: dict | None = None) -> dict:
        """One prompt's graph, written to `out_dir` (see `batch.trace_prompt`); its summary row."""
        from .batch import trace_prompt

        _trace(trace, "attribute", job["slug"])
        return trace_prompt(self.bundle, self.tc, job, options, Path(out_dir))
