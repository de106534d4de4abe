"""Interventions reproduce circuit-tracer's `feature_intervention`, agree with the graph's edges when
everything is frozen, generate like plain transformers, and refuse bad requests clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.graph.attribution_graph import AttributionParams
from circuit_studio.core.interventions.intervene import Intervention, InterventionError, generate, intervene
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.synthetic import default_hooks, random_transcoders
from parity_cases import case_dirs, load_case_transcoders

# interventions do not depend on attribution targets: the targets_* cases have none of their own
CASES = [c for c in case_dirs() if (c / "reference_interventions.json").is_file()]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_matches_circuit_tracer_feature_intervention(case):
    ref = json.loads((case / "reference_interventions.json").read_text())
    bundle = load_model(case / "model", device="cpu")
    tc = load_case_transcoders(case)
    ids = torch.tensor(ref["input_tokens"])
    clean = intervene(bundle, tc, ids, [])
    np.testing.assert_allclose(clean.logits[-1].numpy(), ref["clean"]["last_logits"], atol=1e-4, rtol=1e-4)
    for run in ref["runs"]:
        result = intervene(bundle, tc, ids, [Intervention(*t) for t in run["interventions"]])
        np.testing.assert_allclose(result.logits[-1].numpy(), run["last_logits"], atol=1e-4, rtol=1e-4,
                                   err_msg=run["name"])
        assert int(result.logits[-1].argmax()) == run["top5"][0][0]


@pytest.fixture(scope="module")
def tiny(tiny_model_folder):
    bundle = load_model(tiny_model_folder("llama"), device="cpu")
    rh, wh = default_hooks("llama")
    tc = random_transcoders(n_layers=2, d_model=64, n_features=64, seed=4, feature_input_hook=rh,
                            feature_output_hook=wh)
    return bundle, tc


PROMPT = "the capital of the state of Dallas is Austin and the opposite of hot is"


def test_small_change_moves_targets_by_the_edge_weight(tiny):
    bundle, tc = tiny
    graph = attribute(PROMPT, bundle, tc, AttributionParams(batch_size=32))
    A = graph.adjacency_matrix
    everything = range(tc.n_layers)
    base = intervene(bundle, tc, PROMPT, [], constrained_layers=everything, apply_activation_function=False)
    sel = graph.active_features[graph.selected_features]
    layer0 = np.flatnonzero(sel[:, 0] == 0)[:5]  # sources whose effects can reach layer-1 features
    assert layer0.size > 0
    for s in layer0:
        layer, pos, feat, act = graph.feature_of(int(s))
        eps = 0.05 * act
        moved = intervene(bundle, tc, PROMPT, [Intervention(layer, pos, feat, act + eps)],
                          constrained_layers=everything, apply_activation_function=False)
        pre_change = (moved.activations - base.activations)[sel[:, 0], sel[:, 1], sel[:, 2]].numpy()
        expected = A[: graph.n_features, s] * eps / act
        downstream = sel[:, 0] > layer
        np.testing.assert_allclose(pre_change[downstream], expected[downstream], atol=2e-4)
        # logits: the graph attributes demeaned pre-soft-cap logits; this model has no soft-cap
        d_logit = (moved.logits[-1] - base.logits[-1])
        measured = (d_logit[torch.from_numpy(graph.logit_token_ids)] - d_logit.mean()).numpy()
        np.testing.assert_allclose(measured, A[graph.logit_offset:, s] * eps / act, atol=2e-4)


def test_generation_without_interventions_is_plain_greedy_decoding(tiny, tiny_model_folder):
    bundle, tc = tiny
    ids = torch.tensor([1, 4, 21, 7])
    ours = generate(bundle, tc, ids, [], 6)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_folder("llama")).eval()
    with torch.no_grad():
        theirs = plain.generate(ids[None], max_new_tokens=6, do_sample=False, pad_token_id=0)[0, 4:]
    assert list(ours.token_ids) == theirs.tolist()


def test_open_ended_intervention_applies_to_generated_tokens(tiny):
    bundle, tc = tiny
    base = generate(bundle, tc, PROMPT, [], 4)
    strong = [Intervention(1, slice(1, None), f, 50.0) for f in range(8)]
    steered = generate(bundle, tc, PROMPT, strong, 4)
    closed = generate(bundle, tc, PROMPT, [Intervention(1, slice(1, 3), f, 50.0) for f in range(8)], 4)
    assert steered.token_ids != base.token_ids
    assert steered.logits.shape == (4, bundle.arch.unembed.shape[0])
    assert closed.token_ids != steered.token_ids


@pytest.mark.parametrize("iv, message", [
    (Intervention(0, 1, 10_000, 0.0), "out of range"),
    (Intervention(5, 1, 1, 0.0), "does not exist"),
    (Intervention(0, 99, 1, 0.0), "outside the prompt"),
    (Intervention(0, 1, 1, "lots"), "not a number"),
    (Intervention(0, 1, 1, float("nan")), "not a finite number"),
])
def test_bad_interventions_are_refused(tiny, iv, message):
    bundle, tc = tiny
    with pytest.raises(InterventionError, match=message):
        intervene(bundle, tc, PROMPT, [iv])
