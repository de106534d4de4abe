"""Every edge is a measured effect: intervening on a source in the frozen model moves each target
by exactly the edge weight (circuit-tracer's own test idea), for every family and transcoder kind.

The frozen model here is `run_frozen`: the real HF modules with attention patterns, norm scales
and every MLP's output held at their clean values. Attribution computes its edges with its own
explicit backward pass, so agreement checks the linearisation of each family independently.
"""

from __future__ import annotations

import pytest
import torch

from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.graph.attribution_graph import AttributionParams, NodeKind
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.model.replacement import record_clean_run, run_frozen
from circuit_studio.core.synthetic import FAMILIES, default_hooks, random_transcoders

PROMPT = "the capital of the state of Dallas is Austin and the opposite of hot is"

# (family, kind, skip, read hook, write hook); None hooks = the family's usual ones
CASES = [(f, "plt", False, None, None) for f in FAMILIES] + [
    ("llama", "clt", False, None, None),
    ("llama", "plt", True, None, None),
    ("llama", "plt", False, "hook_resid_mid", "hook_mlp_out"),
    ("gemma2", "plt", True, "mlp.hook_in", "mlp.hook_out"),
    ("gemma2", "clt", False, None, None),
    ("gpt2", "plt", True, "ln2.hook_normalized", "mlp.hook_out"),
]


def _ids(case) -> str:
    family, kind, skip, rh, wh = case
    return f"{family}-{kind}{'-skip' if skip else ''}{'-' + rh + '-' + wh if rh else ''}"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_edges_equal_frozen_interventions(case, tiny_model_folder):
    family, kind, skip, read_hook, write_hook = case
    rh, wh = default_hooks(family)
    bundle = load_model(tiny_model_folder(family), device="cpu")
    L, d = bundle.arch.n_layers, bundle.arch.d_model
    tc = random_transcoders(n_layers=L, d_model=d, n_features=40, kind=kind, skip=skip, seed=3,
                            feature_input_hook=read_hook or rh, feature_output_hook=write_hook or wh)
    graph = attribute(PROMPT, bundle, tc, AttributionParams(batch_size=7))
    A = torch.from_numpy(graph.adjacency_matrix)
    assert graph.n_features > 10, "the test needs active features"

    clean = record_clean_run(bundle, torch.from_numpy(graph.input_tokens), tc)
    everything = frozenset(range(L))
    base = run_frozen(bundle, clean, tc, constrained_layers=everything)
    w_u = bundle.arch.unembed.float()
    demeaned = w_u[torch.from_numpy(graph.logit_token_ids)] - w_u.mean(0)  # [K, d]
    feat_nodes = torch.arange(graph.n_features)
    f_layer, f_pos, f_idx = torch.from_numpy(graph.active_features[graph.selected_features]).unbind(1)
    enc = tc.encoder_rows(f_layer, f_idx)  # [n, d]

    def targets_of(out) -> torch.Tensor:
        """Pre-activation of every feature node and demeaned logit of every logit node."""
        pre = (enc * out.reads[f_layer, f_pos]).sum(-1)
        logit = demeaned @ out.final_hidden[-1]
        return torch.cat([pre, logit])

    rows = torch.cat([feat_nodes, torch.arange(graph.logit_offset, graph.n_nodes)])
    base_values = targets_of(base)
    P = graph.n_pos
    g = torch.Generator().manual_seed(0)
    sources = torch.cat([
        torch.randperm(graph.n_features, generator=g)[:6],
        graph.error_offset + torch.randperm(graph.n_errors, generator=g)[:3],
        graph.token_offset + torch.randperm(P, generator=g)[:2],
    ])
    errors = clean.writes - tc.reconstruct(_dense_acts(graph, tc, P), clean.reads)
    checked = 0
    for s in sources.tolist():
        kind_s = graph.kind_of(s)
        writes: dict[int, torch.Tensor] = {}
        embed = None
        if kind_s is NodeKind.FEATURE:
            layer, pos, feat, act = graph.feature_of(s)
            for out_layer in (range(layer, L) if tc.is_clt else (layer,)):
                delta = torch.zeros(P, d)
                delta[pos] = act * tc.decoder_rows(layer, torch.tensor([feat]), out_layer)[0]
                writes[out_layer] = delta
        elif kind_s is NodeKind.ERROR:
            layer, pos = divmod(s - graph.error_offset, P)
            if pos == 0:
                continue  # position 0 has no error node content (spec §1.3)
            delta = torch.zeros(P, d)
            delta[pos] = errors[layer, pos]
            writes[layer] = delta
        else:
            pos = s - graph.token_offset
            embed = torch.zeros(P, d)
            embed[pos] = clean.token_vectors[pos]
        # removing the source's contribution must lower each target by exactly its edge
        out = run_frozen(bundle, clean, tc, write_deltas={k: -v for k, v in writes.items()},
                         embed_delta=None if embed is None else -embed, constrained_layers=everything)
        measured = base_values - targets_of(out)
        expected = A[rows, s]
        scale = max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(measured, expected, atol=2e-4 * scale, rtol=1e-3)
        checked += int((expected != 0).sum())
    assert checked > 0, "no non-zero edge was checked"


def _dense_acts(graph, tc, P) -> torch.Tensor:
    acts = torch.zeros(tc.n_layers, P, tc.n_features)
    af = torch.from_numpy(graph.active_features)
    acts[af[:, 0], af[:, 1], af[:, 2]] = torch.from_numpy(graph.activation_values)
    return acts
