"""Ray plumbing: joining or starting a cluster, a pool of model-holding actors, dispatch and faults.

    with Cluster(address) as cluster:                  # None: a local instance on this machine's cores
        pool = worker_pool(cluster, model, transcoders)  # one actor per GPU (or per CPU), model loaded once
        for key, result in pool.run([Call(key, "index_step", args), ...], cancel):
            ...                                        # results in completion order, each call once

Faults: actors are created with `max_restarts` and `max_task_retries`, so when a worker process
dies (killed, out of memory, a node lost) Ray starts a new one, which loads the model again, and
re-runs the calls that were on it; the caller still gets each call's result once. A call that
raises (bad prompt, bad data) is not retried: its CircuitStudioError is raised here as it was
raised there. Cancelling (the token, Ctrl-C, an error) kills the pool's actors, so no work is
left running on the cluster; a Ray instance started here is shut down on `Cluster.close()`.

A pool is reused by later calls with the same model, transcoders and placement as long as the
Ray session that made it is alive (a program that calls `ray.init` itself and builds several
indexes pays the model loading once); a command that started Ray stops it, and its pool, when done.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..core.errors import CircuitStudioError
from ..core.progress import CancelToken, ProgressFn, check, report
from . import ClusterError, import_ray

MAX_RESTARTS = 4  # per actor: a new process (model loaded again) after a worker dies
MAX_TASK_RETRIES = 4  # per call: re-run on the restarted actor
_WAIT_S = 0.2  # how often a waiting driver looks at the cancel token


@dataclass(frozen=True)
class Call:
    """One actor method call: `key` names its result (a shard id, a slug)."""

    key: Any
    method: str
    args: tuple = ()


class Cluster:
    """A Ray connection: an instance started here (`address` None or "local": this machine's
    cores, stopped on close), a running cluster joined ("auto" or "HOST:PORT" / "ray://..."), or,
    when this process already called `ray.init`, that session (left as it is on close)."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None) -> None:
        ray = import_ray()
        self.ray = ray
        self.owned = False
        self.started_local = False
        if ray.is_initialized():
            return
        env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
        options = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        if address in (None, "", "local"):
            # workers start from this interpreter: let them find this package even when it is not installed
            here = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
            try:
                ray.init(num_cpus=num_cpus or os.cpu_count() or 1, runtime_env={"env_vars": env}, **options)
            except Exception as e:
                raise ClusterError(f"Cannot start a local Ray instance: {_line(e)}",
                                   "Check the free memory and /tmp; or start one with `ray start --head`.") from e
            self.started_local = True
        else:
            try:
                ray.init(address=address, runtime_env={"env_vars": env}, **options)
            except Exception as e:
                raise ClusterError(f"Cannot join the Ray cluster at {address}: {_line(e)}",
                                   "Start one with `ray start --head` (and `ray start --address HEAD:6379` on "
                                   "the other machines), or give --ray without an address for a local one.") from e
        self.owned = True

    def resources(self) -> tuple[float, float]:
        """(CPUs, GPUs) of the whole cluster."""
        res = self.ray.cluster_resources()
        return float(res.get("CPU", 0)), float(res.get("GPU", 0))

    def close(self) -> None:
        if self.owned and self.ray.is_initialized():
            _forget_pools()
            self.ray.shutdown()
        self.owned = False

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]


def _session_id(ray) -> str:
    try:
        return str(ray.get_runtime_context().get_job_id())
    except Exception:
        return "?"


class WorkerPool:
    """`n` actors of `workers.ModelWorker`, each holding the model and transcoders (see module doc)."""

    def __init__(self, cluster: Cluster, model: str, transcoders: str, *, workers: int | None = None,
                 device: str | None = None, dtype: str = "float32", threads: int | None = None,
                 progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> None:
        from .workers import ModelWorker

        ray = self.ray = cluster.ray
        cpus, gpus = cluster.resources()
        if device == "cuda" and gpus < 1:
            raise ClusterError("--device cuda was given but the Ray cluster has no GPU.", "Use --device cpu.")
        use_gpu = gpus >= 1 and device != "cpu"
        if workers is not None and workers < 1:
            raise ClusterError(f"--workers must be at least 1 (got {workers}).")
        n = workers or (int(gpus) if use_gpu else max(1, int(cpus)))
        if use_gpu and n > gpus:
            raise ClusterError(f"{n} workers need one GPU each; the Ray cluster has {int(gpus)}.",
                               f"Use --workers {int(gpus)} or fewer.")
        per_cpu = 1 if use_gpu else max(1, int(cpus) // n)
        if not use_gpu and n * per_cpu > cpus:
            raise ClusterError(f"{n} workers need a CPU each; the Ray cluster has {int(cpus)}.",
                               f"Use --workers {max(1, int(cpus))} or fewer.")
        self.n, self.use_gpu = n, use_gpu
        self.threads = threads or per_cpu
        actor = ray.remote(ModelWorker).options(num_cpus=per_cpu, num_gpus=1 if use_gpu else 0,
                                                max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)
        self.actors = [actor.remote(model, transcoders, "cuda" if use_gpu else "cpu", dtype, self.threads)
                       for _ in range(n)]
        self.alive = True
        try:
            self.info = [r for _, r in self.run([Call(i, "ping", ()) for i in range(n)], cancel,
                                                pin=list(range(n)), progress=progress, phase="Starting workers")]
        except BaseException:
            self.abort()
            raise

    # ---- dispatch ----
    def run(self, calls: Iterable[Call], cancel: CancelToken | None = None, *, pin: list[int] | None = None,
            progress: ProgressFn | None = None, phase: str = "") -> Iterator[tuple[Any, Any]]:
        """Run `calls` on the actors, one at a time per actor, and yield (key, result) as they finish.
        `pin[i]`: the actor for call i (default: whichever is free). On an error, a cancel or Ctrl-C
        the pool is aborted (its actors killed) and the error raised."""
        ray = self.ray
        if not self.alive:
            raise ClusterError("This worker pool was stopped.")
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        queue = list(calls)
        total, done = len(queue), 0
        pending = list(range(len(queue)))
        free = list(range(self.n))
        inflight: dict[Any, tuple[Call, int]] = {}
        if progress is not None and phase:
            report(progress, phase, 0, total)
        try:
            while pending or inflight:
                for i in list(pending):
                    a = pin[i] if pin is not None else (free[0] if free else None)
                    if a is None or a not in free:
                        continue
                    call = queue[i]
                    ref = getattr(self.actors[a], call.method).remote(*call.args)
                    inflight[ref] = (call, a)
                    free.remove(a)
                    pending.remove(i)
                check(cancel)
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=_WAIT_S)
                for ref in ready:
                    call, a = inflight.pop(ref)
                    free.append(a)
                    try:
                        result = ray.get(ref)
                    except RayTaskError as e:
                        cause = getattr(e, "cause", None)
                        if isinstance(cause, CircuitStudioError):
                            raise cause from None
                        raise ClusterError(f"A worker failed on {call.method} {call.key!r}: "
                                           f"{_line(cause if cause is not None else e)}") from e
                    except RayActorError as e:
                        if call.method == "ping":
                            raise ClusterError(f"A worker could not start: {_line(e)}",
                                               "Check that every node has circuit-studio installed and the model "
                                               "and transcoder folders at the same paths.") from e
                        raise ClusterError(f"A worker died {MAX_TASK_RETRIES + 1} times on {call.method} "
                                           f"{call.key!r} and was given up: {_line(e)}",
                                           "See the Ray logs (/tmp/ray/session_latest/logs) for why.") from e
                    except GetTimeoutError:  # pragma: no cover (ready refs do not time out)
                        continue
                    done += 1
                    if progress is not None and phase:
                        report(progress, phase, done, total)
                    yield call.key, result
                check(cancel)
        except GeneratorExit:  # the caller stopped listening: stop what it will never collect
            if inflight or pending:
                self.abort()
            raise
        except BaseException:
            self.abort()
            raise

    def call(self, method: str, *args: Any, cancel: CancelToken | None = None) -> Any:
        """One call on one (free) actor."""
        for _, result in self.run([Call(0, method, args)], cancel):
            return result

    def pids(self) -> list[int]:
        return [info["pid"] for info in self.info]

    def abort(self) -> None:
        """Kill every actor now (running calls stop); the pool cannot be used afterwards."""
        if not self.alive:
            return
        self.alive = False
        for a in self.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:
                pass
        for key, pool in list(_POOLS.items()):
            if pool is self:
                del _POOLS[key]


_POOLS: dict[tuple, WorkerPool] = {}


def _forget_pools() -> None:
    for pool in list(_POOLS.values()):
        pool.abort()
    _POOLS.clear()


def worker_pool(cluster: Cluster, model: str | Path, transcoders: str | Path, *, workers: int | None = None,
                device: str | None = None, dtype: str = "float32", threads: int | None = None,
                progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> WorkerPool:
    """A live pool for (model, transcoders, placement) in this Ray session: reused or started
    (which waits until every actor has loaded the model)."""
    model, transcoders = _absolute(model), _absolute(transcoders)
    key = (_session_id(cluster.ray), model, transcoders, workers, device, dtype, threads)
    pool = _POOLS.get(key)
    if pool is not None and pool.alive:
        return pool
    t0 = time.perf_counter()
    pool = WorkerPool(cluster, model, transcoders, workers=workers, device=device, dtype=dtype, threads=threads,
                      progress=progress, cancel=cancel)
    pool.started_s = time.perf_counter() - t0
    _POOLS[key] = pool
    return pool


def _absolute(path: str | Path) -> str:
    """Actors may run elsewhere, in another folder: a local path is passed absolute (a hub repo id as is)."""
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else str(path)
