"""On a local 2-CPU Ray instance (started once for the module; the workers' pool is reused between
tests): the sharded index equals the single-process one table by table; batch graphs equal
one-by-one attribution; a worker killed mid-shard or mid-prompt leaves the same result; a
re-run skips finished prompts; a cancel stops the cluster's work."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[scale]'): the cluster tests need it")

from circuit_studio import cli  # noqa: E402
from circuit_studio.core.attribution.attribute import attribute  # noqa: E402
from circuit_studio.core.errors import Cancelled  # noqa: E402
from circuit_studio.core.features.index_build import build_feature_index  # noqa: E402
from circuit_studio.core.features.index_shards import IndexSettings  # noqa: E402
from circuit_studio.core.graph.attribution_graph import AttributionParams, load_graph  # noqa: E402
from circuit_studio.core.progress import CancelToken  # noqa: E402
from circuit_studio.scale import ClusterError, cluster  # noqa: E402
from circuit_studio.scale.batch import BatchOptions, read_prompts, run_batch  # noqa: E402
from circuit_studio.scale.ray_index import ray_build_feature_index  # noqa: E402
from scale_helpers import PROMPTS, assert_same_index  # noqa: E402

SETTINGS = dict(batch_size=4, top_k=5, examples_per_band=3, shard_batches=2)  # 58 windows -> 8 shards
OPTIONS = BatchOptions(max_feature_nodes=None)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    cluster._forget_pools()
    ray.shutdown()


def _pool(tiny):
    """The pool every call below uses (same model, transcoders, placement): started once."""
    return cluster.worker_pool(cluster.Cluster(), tiny.model, tiny.transcoders)


def _kill_at(trace_dir, call: str, timeout: float = 60.0):
    """In the background: SIGKILL the worker process that starts `call` (e.g. "bands.3"), by the pid
    it wrote into its trace file, while it pauses there. -> (thread, {"pid": ...})."""
    killed: dict[str, int] = {}

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not killed:
            for marker in trace_dir.glob(f"{call}.*"):
                pid = int(marker.name.split(".")[-2])
                time.sleep(0.3)  # well inside its pause: the call is running
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t, killed


def _pids_of(trace_dir, call: str) -> list[int]:
    return sorted({int(m.name.split(".")[-2]) for m in trace_dir.glob(f"{call}.*")})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_joining_no_cluster_is_one_line():
    """Runs before the module's Ray instance exists."""
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    try:
        joined = cluster.Cluster("auto")
    except ClusterError as e:
        assert "Cannot join the Ray cluster at auto" in str(e) and "ray start --head" in str(e)
        assert "\n" not in str(e)
    else:
        joined.close()
        pytest.skip("a Ray cluster is running on this machine")


def test_sharded_index_equals_single_process(local_ray, tiny, tmp_path):
    """The corpus twice over: windows w and w + N tie exactly, in different shards on different workers."""
    windows = torch.cat([tiny.windows, tiny.windows])
    ref, got = tmp_path / "one.idx", tmp_path / "ray.idx"
    build_feature_index(tiny.bundle, tiny.tc, windows, ref, corpus_name="c", **SETTINGS).close()
    pool = _pool(tiny)
    assert pool.n == 2 and len(set(pool.pids())) == 2
    seen = []
    trace = {"dir": str(tmp_path)}
    ray_build_feature_index(tiny.model, tiny.transcoders, tiny.bundle.tokenizer, windows, got,
                            IndexSettings(**SETTINGS), corpus_name="c", progress=seen.append, trace=trace).close()
    assert_same_index(ref, got)
    # both workers did shards; progress counted batches over all 15 shards
    assert set(_pids_of(tmp_path, "scan")) == set(pool.pids())
    scans = [p for p in seen if p.phase == "Scanning corpus"]
    assert scans[-1].done == scans[-1].total == 29 and any(p.message == "15/15 shards" for p in scans)

    # the command line: --ray gives the index the command writes without it
    args = ["index-features", "--model", str(tiny.model), "--transcoders", str(tiny.transcoders), "--corpus",
            str(tiny.corpus), "--context", "16", "--batch-size", "4", "--top-k", "5", "--shard-batches", "2"]
    assert cli.main(args + ["--out", str(tmp_path / "cli1.idx")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "cli2.idx"), "--ray"]) == 0
    assert_same_index(tmp_path / "cli1.idx", tmp_path / "cli2.idx")
    assert _pool(tiny) is pool  # the command found this session's pool


def test_a_worker_killed_mid_shard_changes_nothing(local_ray, tiny, tmp_path):
    """Killed during pass 2 of shard 3; with no memory budget, so the later layer's contexts come
    from a third pass on the workers too."""
    settings = dict(SETTINGS, memory_budget_mb=0)
    ref, got = tmp_path / "one.idx", tmp_path / "ray.idx"
    build_feature_index(tiny.bundle, tiny.tc, tiny.windows, ref, **settings).close()
    _pool(tiny)
    watcher, killed = _kill_at(tmp_path, "bands.3")
    trace = {"dir": str(tmp_path), "pause": {"bands.3": 2.0}}
    ray_build_feature_index(tiny.model, tiny.transcoders, tiny.bundle.tokenizer, tiny.windows, got,
                            IndexSettings(**settings), trace=trace).close()
    watcher.join(5)
    assert "pid" in killed and not _alive(killed["pid"])
    retried = _pids_of(tmp_path, "bands.3")
    assert killed["pid"] in retried and len(retried) == 2  # started again, by the restarted worker
    assert _pids_of(tmp_path, "contexts")
    assert_same_index(ref, got)


def test_batch_on_ray_equals_one_by_one_and_resumes(local_ray, tiny, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS[:3]) + "\n")
    jobs = read_prompts(prompts)
    out = tmp_path / "graphs"
    trace_dir = tmp_path / "t1"
    trace_dir.mkdir()
    first = run_batch(jobs, out, model=tiny.model, transcoders=tiny.transcoders, options=OPTIONS, ray=True,
                      trace={"dir": str(trace_dir)})
    assert sorted(first.computed) == sorted(j.slug for j in jobs) and first.workers == 2
    for job in jobs:
        ref = attribute(job.prompt, tiny.bundle, tiny.tc, AttributionParams(max_feature_nodes=None))
        assert np.array_equal(load_graph(out / f"{job.slug}.npz").adjacency_matrix, ref.adjacency_matrix)
    index = json.loads((out / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == [j.slug for j in jobs]

    prompts.write_text("\n".join(PROMPTS) + "\n")
    jobs = read_prompts(prompts)
    trace_dir = tmp_path / "t2"
    trace_dir.mkdir()
    second = run_batch(jobs, out, model=tiny.model, transcoders=tiny.transcoders, options=OPTIONS, ray=True,
                       trace={"dir": str(trace_dir)})
    assert second.computed == [jobs[3].slug] and len(second.skipped) == 3
    assert sorted(m.name.split(".")[1] for m in trace_dir.iterdir()) == [jobs[3].slug]


def test_a_worker_killed_mid_prompt_changes_nothing(local_ray, tiny, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    jobs = read_prompts(prompts)
    victim = jobs[1].slug
    _pool(tiny)
    watcher, killed = _kill_at(tmp_path, f"attribute.{victim}")
    out = tmp_path / "graphs"
    result = run_batch(jobs, out, model=tiny.model, transcoders=tiny.transcoders, options=OPTIONS, ray=True,
                       trace={"dir": str(tmp_path), "pause": {f"attribute.{victim}": 2.0}})
    watcher.join(5)
    assert "pid" in killed and not _alive(killed["pid"]) and len(_pids_of(tmp_path, f"attribute.{victim}")) == 2
    assert sorted(result.computed) == sorted(j.slug for j in jobs) and not result.failed
    for job in jobs:
        ref = attribute(job.prompt, tiny.bundle, tiny.tc, AttributionParams(max_feature_nodes=None))
        assert np.array_equal(load_graph(out / f"{job.slug}.npz").adjacency_matrix, ref.adjacency_matrix)
    summary = json.loads((out / "batch-summary.json").read_text())
    assert [r["slug"] for r in summary["graphs"]] == [j.slug for j in jobs]
    assert [g["slug"] for g in json.loads((out / "graph-metadata.json").read_text())["graphs"]] == \
        [j.slug for j in jobs]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_cancel_stops_the_cluster_work(local_ray, tiny, tmp_path):
    """Last: it stops the pool. The cancel lands while shards are running; their workers are killed
    and nothing is written."""
    pool = _pool(tiny)
    pids = pool.pids()
    token = CancelToken()

    def cancel_when_running():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(tmp_path.glob("bands.*")):
            time.sleep(0.05)
        token.cancel()

    threading.Thread(target=cancel_when_running, daemon=True).start()
    out = tmp_path / "never.idx"
    with pytest.raises(Cancelled):
        ray_build_feature_index(tiny.model, tiny.transcoders, tiny.bundle.tokenizer, tiny.windows, out,
                                IndexSettings(**SETTINGS), cancel=token,
                                trace={"dir": str(tmp_path), "pause": {"bands": 3.0}})
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]
    assert not pool.alive
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
