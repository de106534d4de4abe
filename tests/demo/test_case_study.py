"""The demo's case study, on the shipped model and transcoders: the graph of a two-hop prompt points at
the features that decide which state the city is in, and swapping them for another city's features
changes the answer to the other state's capital (and the one-hop answer to the other state).

    A: "The capital of the state containing Dallas is"      -> " Austin"
    B: "The capital of the state containing San Diego is"   -> " Sacramento"

Nothing here names a feature: they are read from the two graphs (features at the city token that the
other prompt does not have there, ranked by node influence).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.interventions.contrast import distinct_features, swap_interventions
from circuit_studio.core.interventions.intervene import intervene
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.graph.pruning import Pruner
from circuit_studio.core.transcoders.loading import load_transcoders

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"
A = "The capital of the state containing Dallas is"
B = "The capital of the state containing San Diego is"
K = 2  # features swapped from each side


@pytest.fixture(scope="module")
def demo():
    return load_model(DEMO / "model", device="cpu"), load_transcoders(DEMO / "transcoders", device="cpu")


@pytest.fixture(scope="module")
def study(demo):
    bundle, tc = demo
    ga, gb = attribute(A, bundle, tc), attribute(B, bundle, tc)
    pa, pb = Pruner(ga), Pruner(gb)
    city_a, city_b = ga.n_pos - 2, gb.n_pos - 2  # the city's last token, just before " is"
    assert ga.token_strings[city_a] == " Dallas" and gb.token_strings[city_b] == " Diego"
    ours = distinct_features(ga, pa.node_influence, city_a, gb, city_b)
    theirs = distinct_features(gb, pb.node_influence, city_b, ga, city_a)
    return dict(ga=ga, gb=gb, pa=pa, city=city_a, ours=ours, theirs=theirs)


def token_id(bundle, text: str) -> int:
    ids = bundle.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text!r} is not one token"
    return ids[0]


def next_token(bundle, tc, prompt, interventions) -> tuple[int, torch.Tensor]:
    r = intervene(bundle, tc, prompt, interventions, return_activations=False)
    p = torch.softmax(r.logits[-1].double(), -1)
    return int(p.argmax()), p


def test_the_graphs_answer_austin_and_sacramento(demo, study):
    bundle, _ = demo
    assert int(study["ga"].logit_token_ids[0]) == token_id(bundle, " Austin")
    assert int(study["gb"].logit_token_ids[0]) == token_id(bundle, " Sacramento")


def test_the_swapped_features_are_among_the_graphs_kept_nodes(study):
    kept = study["pa"].prune(0.8, 0.98).node_mask
    assert all(kept[d.node] for d in study["ours"][:K]), "the candidates are what an analyst sees on the canvas"
    assert len(study["ours"]) >= K and len(study["theirs"]) >= K


def test_swapping_the_city_features_changes_the_capital(demo, study):
    bundle, tc = demo
    top, p = next_token(bundle, tc, A, swap_interventions(study["ours"], study["theirs"], study["city"], K))
    assert top == token_id(bundle, " Sacramento")
    assert p[top] > 0.9 and p[token_id(bundle, " Austin")] < 0.01


def test_half_a_swap_does_not(demo, study):
    """Ablating Dallas's features alone, or adding San Diego's alone, leaves Austin on top: it is the swap
    of one city's identity for the other's that moves the answer."""
    bundle, tc = demo
    swap = swap_interventions(study["ours"], study["theirs"], study["city"], K)
    austin = token_id(bundle, " Austin")
    assert next_token(bundle, tc, A, swap[:K])[0] == austin
    assert next_token(bundle, tc, A, swap[K:])[0] == austin


def test_swapping_other_features_of_the_city_token_does_not(demo, study):
    """Control: the same swap with Dallas's least influential distinct features instead of its top ones."""
    bundle, tc = demo
    weakest = study["ours"][-K:]
    assert weakest[0].influence < study["ours"][K - 1].influence
    ivs = swap_interventions(weakest, study["theirs"], study["city"], K)
    assert next_token(bundle, tc, A, ivs)[0] == token_id(bundle, " Austin")


def test_the_same_swap_moves_the_first_hop_to_california(demo, study):
    """The swapped features decide which state the city is in: in a one-hop prompt with the same city token
    the same swap turns " Texas" into " California"."""
    bundle, tc = demo
    prompt = "Fact: Dallas is a city in"
    ids = bundle.tokenizer(prompt)["input_ids"]
    pos = ids.index(token_id(bundle, " Dallas"))
    assert next_token(bundle, tc, prompt, [])[0] == token_id(bundle, " Texas")
    top, p = next_token(bundle, tc, prompt, swap_interventions(study["ours"], study["theirs"], pos, K))
    assert top == token_id(bundle, " California") and p[top] > 0.9
