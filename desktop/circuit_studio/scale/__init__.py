"""Beyond one workstation: feature indexes of big corpora and batch attribution on a Ray cluster.

Ray is an optional extra (`pip install "circuit-studio[scale]"`); nothing here imports it at
module level, and nothing else in Circuit Studio imports this package unless `--ray` is given
(or `attribute-batch` runs), so the single-process paths never need it.

    cluster.py     joining or starting Ray, the pool of model-holding actors, dispatch and retries
    workers.py     the actor: model + transcoders loaded once; index shards, logit effects, graphs
    ray_index.py   `index-features --ray`: the core build (`core.features.index_build.run_index_build`)
                   with its shards run on the actors, merged exactly as in one process
    batch.py       `attribute-batch`: a prompt file -> one graph per prompt (in this process or on
                   the actors), resumable, as circuit-tracer graph files and/or a session

What makes the distributed results equal to the single-process ones:

* the feature index is accumulated per shard (a fixed cut of the corpus into batches, a setting
  of the build, not a property of the cluster) and merged in shard order by the same core code
  that the single-process build uses; band samples are keyed by (seed, layer, window, feature);
* a shard or prompt whose worker dies is re-run by Ray (actor restarts + task retries); results
  are kept by shard id / slug, so a result that arrives twice counts once, and graph files are
  written to a temporary name and renamed.
"""

from __future__ import annotations

from ..core.errors import CircuitStudioError

INSTALL_HINT = 'Install it with: pip install "circuit-studio[scale]" (or pip install -e ".[scale]").'


class ClusterError(CircuitStudioError):
    """Ray is missing, the cluster cannot be reached, or a worker failed for good."""


def import_ray():
    """The `ray` module, or ClusterError with the one line that says how to install it."""
    try:
        import ray  # noqa: PLC0415 (lazy on purpose: ray is optional)
    except ImportError as e:
        raise ClusterError("Ray is not installed; --ray and attribute-batch on a cluster need it.",
                           INSTALL_HINT) from e
    return ray
