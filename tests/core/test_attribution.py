"""Attribution behaviour beyond parity: the feature budget, progress, cancel and bad input."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.errors import Cancelled, PromptError, TranscoderLoadError
from circuit_studio.core.graph.attribution_graph import AttributionParams
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.progress import CancelToken
from circuit_studio.core.synthetic import default_hooks, random_transcoders

PROMPT = "the capital of the state of Dallas is Austin and the opposite of hot is"


@pytest.fixture(scope="module")
def llama(tiny_model_folder):
    bundle = load_model(tiny_model_folder("llama"), device="cpu")
    rh, wh = default_hooks("llama")
    tc = random_transcoders(n_layers=2, d_model=64, n_features=96, seed=1,
                            feature_input_hook=rh, feature_output_hook=wh)
    return bundle, tc


def _replay_frontier(full, budget: int, batch: int, interval: int) -> np.ndarray:
    """Spec §3.4 written out independently: greedy influence-ordered frontier over the full graph's rows."""
    n_active, K = full.active_features.shape[0], full.n_logits
    A = full.adjacency_matrix
    n_cols = A.shape[1] - K  # features (all active, since the full graph selects all), errors, tokens
    rows = [A[full.logit_offset + k, :n_cols] for k in range(K)]
    nodes = list(range(n_cols, n_cols + K))
    visited = np.zeros(n_active, bool)
    while visited.sum() < budget:
        m = np.abs(np.array(rows))
        m = np.concatenate([m, np.zeros((len(rows), K))], 1)
        m /= np.maximum(m.sum(1, keepdims=True), 1e-8)
        x = np.zeros(n_cols + K)
        x[n_cols:] = full.logit_probabilities
        infl = np.zeros(n_cols + K)
        while True:
            x = x[nodes] @ m
            if not x.any():
                break
            infl += x
        order = [i for i in np.argsort(-infl[:n_active], kind="stable") if not visited[i]]
        take = order[: min(interval * batch, budget - int(visited.sum()))]
        visited[take] = True
        rows += [A[i, :n_cols] for i in take]
        nodes += list(take)
    return np.flatnonzero(visited)


def test_feature_budget_follows_the_greedy_frontier(llama):
    bundle, tc = llama
    full = attribute(PROMPT, bundle, tc, AttributionParams(batch_size=16))
    n_active = full.active_features.shape[0]
    budget = n_active // 3
    graph = attribute(PROMPT, bundle, tc, AttributionParams(batch_size=16, max_feature_nodes=budget,
                                                            update_interval=2))
    assert graph.n_features == budget
    np.testing.assert_array_equal(graph.selected_features, _replay_frontier(full, budget, 16, 2))
    # a row does not depend on which other rows were computed
    sel = graph.selected_features
    cols = np.concatenate([sel, np.arange(n_active, full.n_nodes - full.n_logits)])
    np.testing.assert_allclose(graph.adjacency_matrix[: graph.n_features, : graph.logit_offset],
                               full.adjacency_matrix[sel][:, cols], atol=1e-6)


def test_budget_at_least_the_active_count_selects_everything(llama):
    bundle, tc = llama
    graph = attribute(PROMPT, bundle, tc, AttributionParams(max_feature_nodes=10**6))
    assert graph.n_features == graph.active_features.shape[0]


def test_progress_names_each_phase_and_counts_up(llama):
    bundle, tc = llama
    seen = []
    attribute(PROMPT, bundle, tc, AttributionParams(batch_size=32), progress=seen.append)
    phases = [p.phase for p in seen]
    for phase in ("Forward pass", "Logit rows", "Feature rows", "Done"):
        assert phase in phases
    rows = [p for p in seen if p.phase == "Feature rows"]
    assert [p.done for p in rows] == list(range(1, rows[-1].total + 1))


def test_cancel_stops_within_a_batch(llama):
    bundle, tc = llama
    cancel = CancelToken()
    seen = []

    def progress(p):
        seen.append(p)
        if p.phase == "Feature rows" and p.done == 2:
            cancel.cancel()

    with pytest.raises(Cancelled):
        attribute(PROMPT, bundle, tc, AttributionParams(batch_size=4), progress=progress, cancel=cancel)
    assert max(p.done for p in seen if p.phase == "Feature rows") == 2


def test_cancel_from_another_thread_returns_quickly(llama):
    bundle, tc = llama
    cancel = CancelToken()
    timer = threading.Timer(0.2, cancel.cancel)
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        # batch size 1 makes the job long enough (hundreds of backward passes) to be cancelled mid-way
        for _ in range(100):
            attribute(PROMPT, bundle, tc, AttributionParams(batch_size=1), cancel=cancel)
    assert time.perf_counter() - t0 < 1.2


@pytest.mark.parametrize("change, match", [
    (dict(n_layers=3), "3 layers"),
    (dict(d_model=32), "32"),
])
def test_transcoders_that_do_not_fit_the_model(llama, change, match):
    bundle, _ = llama
    rh, wh = default_hooks("llama")
    dims = dict(n_layers=2, d_model=64, n_features=16) | change
    tc = random_transcoders(**dims, feature_input_hook=rh, feature_output_hook=wh)
    with pytest.raises(TranscoderLoadError, match=match):
        attribute(PROMPT, bundle, tc)


def test_empty_prompt_is_refused_before_any_work(llama):
    bundle, tc = llama
    seen = []
    with pytest.raises(PromptError, match="empty"):
        attribute("", bundle, tc, progress=seen.append)
    assert not seen


@pytest.mark.parametrize("params", [AttributionParams(batch_size=0), AttributionParams(desired_logit_prob=0.0),
                                    AttributionParams(max_n_logits=0), AttributionParams(max_feature_nodes=-1)])
def test_bad_parameters(llama, params):
    bundle, tc = llama
    with pytest.raises(ValueError):
        attribute(PROMPT, bundle, tc, params)
