"""Attention heads in the graph (`core.head_attribution`), checked against the real HF modules.

* Edges split by head: per layer, the head parts plus the bypass add up to the graph's edge, and each
  head's part is the effect measured by zeroing that head's output at that layer in the frozen model
  (`run_frozen`: real modules, patterns, norm scales and MLP outputs held), the bypass the effect with
  all of the layer's heads zeroed.
* QK attribution: the score equals the one the real attention module computes (captured from the
  query and key states it hands the attention function), each marginal list and the pair terms sum to
  it, and each node's share of the query / key vector is the change measured by removing that node in
  the frozen model (with Qwen-3's / Gemma-3's q/k norm scales frozen too).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

# imported at collection time: TerminalProgress binds sys.stderr as a default argument when cli is imported
from circuit_studio.cli import main
from circuit_studio.core.model import attention as attention_module
from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.model.families import Norm
from circuit_studio.core.graph.attribution_graph import AttributionParams, NodeKind
from circuit_studio.core.attribution.heads import HeadAnalysis
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.attribution.node_refs import node_ref, parse_node
from circuit_studio.core.model.replacement import record_clean_run, removing_hooks, run_frozen
from circuit_studio.core.synthetic import default_hooks, random_transcoders

PROMPT = "the capital of the state of Dallas is Austin and the opposite of hot is"

# (family, kind, skip, read hook, write hook); None hooks = the family's usual ones
SPLIT_CASES = [
    ("llama", "plt", False, None, None),
    ("llama", "plt", True, None, None),
    ("llama", "clt", False, None, None),
    ("gemma2", "plt", False, None, None),
    ("gemma2", "plt", True, "mlp.hook_in", "mlp.hook_out"),
    ("gemma2", "clt", False, None, None),
    ("qwen3", "plt", True, None, None),
    ("gpt2", "plt", False, None, None),
    ("gpt2", "plt", True, "ln2.hook_normalized", "mlp.hook_out"),
]
QK_CASES = [
    ("llama", "plt", True, None, None),
    ("llama", "clt", False, None, None),
    ("gemma2", "plt", False, None, None),
    ("gemma3", "plt", True, "mlp.hook_in", "mlp.hook_out"),
    ("qwen2", "plt", False, None, None),
    ("qwen3", "plt", False, None, None),
    ("gpt2", "plt", True, None, None),
]


def _ids(case) -> str:
    family, kind, skip, rh, wh = case
    return f"{family}-{kind}{'-skip' if skip else ''}{'-' + rh + '-' + wh if rh else ''}"


def _setup(case, tiny_model_folder):
    family, kind, skip, read_hook, write_hook = case
    rh, wh = default_hooks(family)
    bundle = load_model(tiny_model_folder(family), device="cpu")
    L, d = bundle.arch.n_layers, bundle.arch.d_model
    tc = random_transcoders(n_layers=L, d_model=d, n_features=40, kind=kind, skip=skip, seed=3,
                            feature_input_hook=read_hook or rh, feature_output_hook=write_hook or wh)
    graph = attribute(PROMPT, bundle, tc, AttributionParams(batch_size=7))
    assert graph.n_features > 10, "the test needs active features"
    return bundle, tc, graph


class _Frozen:
    """The frozen model of one graph, run through the real HF modules, and what removing a source does."""

    def __init__(self, bundle, tc, graph):
        self.bundle, self.tc, self.graph = bundle, tc, graph
        self.clean = record_clean_run(bundle, torch.from_numpy(graph.input_tokens), tc)
        self.everything = frozenset(range(bundle.arch.n_layers))
        P, L = graph.n_pos, graph.n_layers
        acts = torch.zeros(L, P, tc.n_features)
        af = torch.from_numpy(graph.active_features)
        acts[af[:, 0], af[:, 1], af[:, 2]] = torch.from_numpy(graph.activation_values)
        self.errors = self.clean.writes - tc.reconstruct(acts, self.clean.reads)
        w_u = bundle.arch.unembed.float()
        self.demeaned = w_u[torch.from_numpy(graph.logit_token_ids)] - w_u.mean(0)
        self.f_layer, self.f_pos, f_idx = torch.from_numpy(graph.active_features[graph.selected_features]).unbind(1)
        self.enc = tc.encoder_rows(self.f_layer, f_idx)

    def run(self, source: int | None = None):
        """run_frozen with every MLP held, minus `source`'s contribution if given."""
        writes, embed = self.removal(source) if source is not None else ({}, None)
        return run_frozen(self.bundle, self.clean, self.tc, write_deltas=writes, embed_delta=embed,
                          constrained_layers=self.everything)

    def removal(self, s: int):
        g, tc, P, d, L = self.graph, self.tc, self.graph.n_pos, self.bundle.arch.d_model, self.graph.n_layers
        writes: dict[int, torch.Tensor] = {}
        embed = None
        kind = g.kind_of(s)
        if kind is NodeKind.FEATURE:
            layer, pos, feat, act = g.feature_of(s)
            for out_layer in (range(layer, L) if tc.is_clt else (layer,)):
                delta = torch.zeros(P, d)
                delta[pos] = -act * tc.decoder_rows(layer, torch.tensor([feat]), out_layer)[0]
                writes[out_layer] = delta
        elif kind is NodeKind.ERROR:
            layer, pos = divmod(s - g.error_offset, P)
            delta = torch.zeros(P, d)
            delta[pos] = -self.errors[layer, pos]
            writes[layer] = delta
        else:
            pos = s - g.token_offset
            embed = torch.zeros(P, d)
            embed[pos] = -self.clean.token_vectors[pos]
        return writes, embed

    def target_values(self, out) -> torch.Tensor:
        """Pre-activation of every feature node and demeaned logit of every logit node, in node order."""
        pre = (self.enc * out.reads[self.f_layer, self.f_pos]).sum(-1)
        return torch.cat([pre, self.demeaned @ out.final_hidden[-1]])

    def value_index(self, node: int) -> int:
        return node if node < self.graph.n_features else self.graph.n_features + node - self.graph.logit_offset


def _sample_sources(graph, seed=0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    P = graph.n_pos
    errors = [graph.error_offset + layer * P + pos for layer in range(graph.n_layers) for pos in range(1, P)]
    return (torch.randperm(graph.n_features, generator=g)[:4].tolist()
            + [errors[i] for i in torch.randperm(len(errors), generator=g)[:2].tolist()]
            + (graph.token_offset + torch.randperm(P, generator=g)[:2]).tolist())


@contextmanager
def _zero_heads(bundle, layer: int, heads):
    """Zero the given heads' outputs at `layer` (the input slices of the output projection)."""
    parts = bundle.arch.layers[layer]
    proj = parts.attn.c_proj if bundle.arch.family == "gpt2" else parts.attn.o_proj
    dh = parts.head_dim

    def hook(mod, args):
        x = args[0].clone()
        for h in heads:
            x[..., h * dh:(h + 1) * dh] = 0
        return (x,)
    with removing_hooks([proj.register_forward_pre_hook(hook)]):
        yield


def _targets(graph) -> list[int]:
    """The top logit, two features of the top layer and one of layer 0."""
    layers = graph.active_features[graph.selected_features, 0]
    top = np.flatnonzero(layers == graph.n_layers - 1)
    low = np.flatnonzero(layers == 0)
    return [graph.logit_offset, int(top[-1]), int(top[len(top) // 2]), int(low[-1])]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=[_ids(c) for c in SPLIT_CASES])
def test_head_parts_add_up_to_edges_and_are_measured_effects(case, tiny_model_folder):
    bundle, tc, graph = _setup(case, tiny_model_folder)
    A = graph.adjacency_matrix
    analysis = HeadAnalysis(bundle, tc, graph)
    H = bundle.arch.layers[0].n_heads
    targets = _targets(graph)
    splits = {t: analysis.split(t) for t in targets}
    n_src = graph.logit_offset

    # 1. the invariant, on every source of every split target, at every layer
    for t, split in splits.items():
        expected_layers = range(graph.n_layers) if t >= graph.logit_offset else range(graph.feature_of(t)[0] + 1)
        assert split.layers == tuple(expected_layers)
        assert split.parts.shape == (len(split.layers), H + 1, n_src)
        row = A[t, :n_src]
        tol = 1e-5 * float(np.abs(row).max())
        np.testing.assert_allclose(split.edges, row, rtol=1e-5, atol=tol)
        for i in range(len(split.layers)):
            np.testing.assert_allclose(split.parts[i].sum(0), row, rtol=1e-5, atol=tol)
        assert np.abs(split.parts[:, :H]).max() > 1e-3 * np.abs(row).max(), "no head carries anything"

    # 2. each part is a measured effect in the real modules
    frozen = _Frozen(bundle, tc, graph)
    idx = [frozen.value_index(t) for t in targets]
    sources = _sample_sources(graph)
    kinds = {graph.kind_of(s) for s in sources}
    assert kinds == {NodeKind.FEATURE, NodeKind.ERROR, NodeKind.TOKEN}
    variants = [(j, (h,)) for j in range(graph.n_layers) for h in range(H)]
    variants += [(j, tuple(range(H))) for j in range(graph.n_layers)]
    base = {}
    for j, heads in [(None, ())] + variants:
        if j is None:
            base[None] = frozen.target_values(frozen.run())
        else:
            with _zero_heads(bundle, j, heads):
                base[j, heads] = frozen.target_values(frozen.run())
    checked = 0
    for s in sources:
        edge = base[None] - frozen.target_values(frozen.run(s))
        torch.testing.assert_close(edge[idx], torch.from_numpy(A[targets, s]),
                                   atol=2e-4 * max(1.0, float(edge.abs().max())), rtol=1e-3)
        for j, heads in variants:
            with _zero_heads(bundle, j, heads):
                without = base[j, heads] - frozen.target_values(frozen.run(s))
            # all heads zeroed leaves the bypass; one head zeroed removes exactly that head's part
            measured = without if len(heads) > 1 else edge - without
            for t, i in zip(targets, idx):
                split = splits[t]
                if j not in split.layers:
                    continue
                part = split.of_layer(j)[H if len(heads) > 1 else heads[0], s]
                scale = max(1.0, abs(float(A[t, s])))
                assert abs(float(measured[i]) - float(part)) <= 2e-4 * scale + 1e-3 * abs(float(part)), \
                    (t, s, j, heads, float(measured[i]), float(part))
                checked += int(part != 0)
    assert checked > 20


def test_split_options_and_errors(tiny_model_folder):
    bundle, tc, graph = _setup(("llama", "plt", True, None, None), tiny_model_folder)
    analysis = HeadAnalysis(bundle, tc, graph)
    t = graph.logit_offset
    full = analysis.split(t)
    only = analysis.split(t, layers=[1])
    assert only.layers == (1,)
    np.testing.assert_allclose(only.of_layer(1), full.of_layer(1), rtol=1e-5, atol=1e-6)
    small = analysis.split(t, batch_size=1)  # one layer per backward pass
    np.testing.assert_allclose(small.parts, full.parts, rtol=1e-5, atol=1e-6)
    assert full.of_source(0).shape == (2, bundle.arch.layers[0].n_heads + 1)
    low = int(np.flatnonzero(graph.active_features[graph.selected_features, 0] == 0)[0])
    with pytest.raises(ValueError, match="passes attention layer 1"):
        analysis.split(low, layers=[1])
    with pytest.raises(ValueError, match="no incoming edges"):
        analysis.split(graph.token_offset)
    # a source written at or above layer j: no head of j carries it, the bypass is the whole edge
    feat1 = int(np.flatnonzero(graph.active_features[graph.selected_features, 0] == 1)[0])
    parts = full.of_layer(1)[:, feat1]
    assert np.all(parts[:-1] == 0) and parts[-1] == pytest.approx(float(graph.adjacency_matrix[t, feat1]), rel=1e-5)


# ---- QK ----

@contextmanager
def _capture_attention(store: dict):
    """Record the query and key states each attention module hands the attention function (every mode)."""
    from transformers import AttentionInterface

    original = attention_module._attention

    def wrapper(module, query, key, value, attention_mask, **kwargs):
        out = original(module, query, key, value, attention_mask, **kwargs)
        store[module.layer_idx] = {"query": query[0].detach().clone(), "key": key[0].detach().clone(),
                                   "weights": out[1][0].detach(), "mask": attention_mask, "kwargs": kwargs}
        return out

    AttentionInterface.register(attention_module.ATTENTION_IMPLEMENTATION, wrapper)
    try:
        yield
    finally:
        AttentionInterface.register(attention_module.ATTENTION_IMPLEMENTATION, original)


@contextmanager
def _qk_norms(bundle, scales: dict, freeze: bool):
    """Record (freeze=False) or hold (freeze=True) the q/k norm scales of Qwen-3 / Gemma-3."""
    kind = "rms1p" if bundle.arch.family == "gemma" else "rms"
    handles = []
    for i, parts in enumerate(bundle.arch.layers):
        for which in ("q_norm", "k_norm"):
            mod = getattr(parts.attn, which, None)
            if mod is None:
                continue
            norm = Norm(mod, kind)

            def hook(m, args, out, key=(i, which), norm=norm):
                if not freeze:
                    scales[key] = norm.scale(args[0])
                    return None
                return norm.apply(args[0], scales[key])
            handles.append(mod.register_forward_hook(hook))
    with removing_hooks(handles):
        yield


def _real_score(rec: dict, head: int, kv: int, q: int, k: int) -> float:
    return float(rec["query"][head, q].double() @ rec["key"][kv, k].double()) * rec["kwargs"]["scaling"]


@pytest.mark.parametrize("case", QK_CASES, ids=[_ids(c) for c in QK_CASES])
def test_qk_breakdown_sums_to_the_module_score_and_shares_are_measured(case, tiny_model_folder):
    bundle, tc, graph = _setup(case, tiny_model_folder)
    analysis = HeadAnalysis(bundle, tc, graph)
    arch = bundle.arch
    ids = torch.from_numpy(graph.input_tokens)
    P = graph.n_pos
    clean: dict = {}
    with torch.no_grad(), _capture_attention(clean):
        bundle.model(ids[None])
    parts = arch.layers[0]
    group = parts.n_heads // parts.n_kv_heads
    # (layer, head, q, k): two heads that share a key/value head under GQA, BOS, a far and a near key
    queries = [(0, 0, P - 1, 0), (0, 1, P - 1, 2), (1, group, P - 1, P - 3), (1, 1, P - 2, P - 2), (1, 3, 5, 1)]
    for layer, head, q, k in queries:
        rec = clean[layer]
        kv = head // group
        # the capture is what the module used: its softmax reproduces the recorded pattern
        scores = rec["query"].double() @ rec["key"].double().repeat_interleave(group, 0).transpose(-1, -2)
        scores = scores * rec["kwargs"]["scaling"]
        cap = rec["kwargs"].get("softcap")
        capped = scores if cap is None else cap * torch.tanh(scores / cap)
        if rec["mask"] is not None:
            capped = capped + rec["mask"][0].double()
        else:
            capped = capped.masked_fill(torch.ones(P, P, dtype=torch.bool).triu(1), float("-inf"))
        torch.testing.assert_close(torch.softmax(capped, -1).float(), rec["weights"].float(), atol=1e-5, rtol=1e-4)

        bd = analysis.qk(layer, head, q, k)
        real = _real_score(rec, head, kv, q, k)
        tol = 1e-5 * max(1.0, abs(real))
        assert bd.score == pytest.approx(real, abs=tol)
        assert float(np.sum(bd.query_marginals, dtype=np.float64)) == pytest.approx(real, abs=tol)
        assert float(np.sum(bd.key_marginals, dtype=np.float64)) == pytest.approx(real, abs=tol)
        assert float(bd.pair_matrix().sum(dtype=np.float64)) == pytest.approx(real, abs=10 * tol)
        assert bd.pattern == pytest.approx(float(rec["weights"][head, q, k]), abs=1e-6)
        window = getattr(arch.layers[layer].attn, "sliding_window", None)
        assert bd.masked == (window is not None and q - k >= window)
        if bd.masked:
            assert bd.pattern == 0.0
        if arch.model_type == "gemma2":
            assert bd.softcap == 50.0 and bd.capped_score == pytest.approx(50.0 * np.tanh(real / 50.0), abs=tol)
        else:
            assert bd.softcap is None and bd.capped_score == bd.score
        top = bd.top_pairs(5)
        full = bd.pair_matrix()
        assert len(top) == min(5, int((full != 0).sum()))
        assert abs(top[0][2]) == pytest.approx(float(np.abs(full).max()), rel=1e-5)
        assert [abs(v) for _, _, v in top] == sorted((abs(v) for _, _, v in top), reverse=True)

    # each node's share of the query and key vectors is what removing it changes in the real modules
    layer, head, q, k = 1, 1, P - 1, P - 4
    kv = head // group
    bd = analysis.qk(layer, head, q, k)
    frozen = _Frozen(bundle, tc, graph)
    scales: dict = {}
    with torch.no_grad(), _qk_norms(bundle, scales, freeze=False):
        bundle.model(ids[None])
    # the largest shares of each kind on either side, and a random sample
    kinds = graph.node_kinds()[:graph.logit_offset]
    q_norm, k_norm = np.abs(bd.query_vectors[:-1]).sum(1), np.abs(bd.key_vectors[:-1]).sum(1)
    sources = _sample_sources(graph, seed=1)
    for kind in range(3):
        nodes = np.flatnonzero(kinds == kind)
        sources += [int(nodes[np.argmax(q_norm[nodes])]), int(nodes[np.argmax(k_norm[nodes])])]
    layer1 = [i for i in range(graph.n_features) if graph.feature_of(i)[0] == 1][:1]
    checked = 0
    for s in [None] + sources + layer1:
        rec: dict = {}
        with _capture_attention(rec), _qk_norms(bundle, scales, freeze=True):
            frozen.run(s)
        if s is None:
            base = rec[layer]
            assert _real_score(base, head, kv, q, k) == pytest.approx(bd.score, abs=1e-5 * max(1.0, abs(bd.score)))
            continue
        dq = base["query"][head, q] - rec[layer]["query"][head, q]
        dk = base["key"][kv, k] - rec[layer]["key"][kv, k]
        scale = max(1.0, float(base["query"][head, q].abs().max()), float(base["key"][kv, k].abs().max()))
        torch.testing.assert_close(torch.from_numpy(bd.query_vectors[s]), dq, atol=2e-4 * scale, rtol=1e-3)
        torch.testing.assert_close(torch.from_numpy(bd.key_vectors[s]), dk, atol=2e-4 * scale, rtol=1e-3)
        checked += int(dq.abs().max() > 1e-3 * scale) + int(dk.abs().max() > 1e-3 * scale)
    assert checked >= 6
    if not tc.is_clt:  # a feature written after layer 1's attention cannot move its scores
        assert not np.any(bd.query_vectors[layer1[0]]) and not np.any(bd.key_vectors[layer1[0]])


def test_qk_bad_positions(tiny_model_folder):
    bundle, tc, graph = _setup(("gpt2", "plt", False, None, None), tiny_model_folder)
    analysis = HeadAnalysis(bundle, tc, graph)
    with pytest.raises(ValueError, match="causal"):
        analysis.qk(0, 0, 2, 3)
    with pytest.raises(ValueError, match="head"):
        analysis.qk(0, 9, 3, 2)


# ---- node references and the command line ----

def test_node_refs_round_trip(tiny_model_folder):
    bundle, tc, graph = _setup(("llama", "plt", False, None, None), tiny_model_folder)
    for node in list(range(0, graph.n_nodes, 7)) + [graph.n_nodes - 1]:
        assert parse_node(graph, node_ref(graph, node)) == node
        assert parse_node(graph, f"#{node}") == node
    layer, pos, feat, _ = graph.feature_of(3)
    assert parse_node(graph, f"{layer}_{feat}_{pos}") == 3
    assert parse_node(graph, f"logit:{graph.logit_tokens[0]}") == graph.logit_offset
    assert parse_node(graph, f"{graph.n_layers + 1}_{graph.logit_token_ids[0]}_{graph.n_pos - 1}") == graph.logit_offset
    assert parse_node(graph, f"E_{graph.input_tokens[2]}_2") == graph.token_offset + 2
    assert parse_node(graph, "error:1_4") == graph.error_offset + graph.n_pos + 4
    for bad in ("nonsense", "9_9_9", "logit:zzz", "token:999", "#99999"):
        with pytest.raises(ValueError):
            parse_node(graph, bad)


CASE = Path(__file__).resolve().parents[1] / "fixtures" / "parity_extra" / "llama_relu_skip"


def test_heads_command_writes_the_report(tmp_path, capsys):
    prompt = json.loads((CASE / "case.json").read_text())["prompt"]
    out = tmp_path / "heads.json"
    code = main(["heads", "--model", str(CASE / "model"), "--transcoders", str(CASE / "transcoders"),
                 "--prompt", prompt, "--target", "logit:#0", "--qk", "1,1,3,1", "--top", "4",
                 "--out", str(out), "--batch-size", "64", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["format"] == "circuit-studio-heads"
    assert doc["target"]["ref"] == "logit:#0"
    n_heads = doc["n_heads"]
    for layer in doc["layers"]:
        assert len(layer["heads"]) == n_heads and layer["bypass"]["head"] == "bypass"
        assert all(len(h["top_sources"]) <= 4 for h in layer["heads"])
    totals = [sum(h["total"] for h in layer["heads"]) + layer["bypass"]["total"] for layer in doc["layers"]]
    assert max(totals) == pytest.approx(min(totals), rel=1e-4, abs=1e-4)  # every layer splits the same edges
    qk = doc["qk"]
    assert qk["sums"]["query_marginals"] == pytest.approx(qk["score"], rel=1e-4, abs=1e-5)
    assert len(qk["pairs"]) == 4 and qk["softcap"] is None
    assert "-> " in capsys.readouterr().out

    # a saved graph and one edge
    from circuit_studio.core.graph.attribution_graph import load_graph

    npz = tmp_path / "g.npz"
    assert main(["attribute", "--model", str(CASE / "model"), "--transcoders", str(CASE / "transcoders"),
                 "--prompt", prompt, "--out", str(tmp_path / "g.json"), "--npz", str(npz), "--batch-size", "64",
                 "--device", "cpu"]) == 0
    graph = load_graph(npz)
    source = node_ref(graph, int(np.argmax(np.abs(graph.adjacency_matrix[graph.logit_offset, :graph.logit_offset]))))
    out2 = tmp_path / "edge.json"
    assert main(["heads", "--model", str(CASE / "model"), "--transcoders", str(CASE / "transcoders"),
                 "--graph", str(npz), "--target", "logit:#0", "--source", source, "--layer", "1",
                 "--out", str(out2), "--device", "cpu"]) == 0
    doc2 = json.loads(out2.read_text())
    (layer,) = doc2["layers"]
    assert layer["layer"] == 1
    assert sum(h["part"] for h in layer["heads"]) + layer["bypass"]["part"] == pytest.approx(doc2["graph_edge"],
                                                                                           rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--source", "token:1"], "--source needs --target"),
    (["--target", "token:1"], "not a feature or logit"),
    (["--target", "logit:#0", "--qk", "1,2"], "LAYER,HEAD,Q,K"),
    (["--target", "logit:#0", "--top", "0"], "--top"),
    (["--target", "bogus"], "not a node reference"),
])
def test_heads_command_bad_input(tmp_path, capsys, extra, message):
    out = tmp_path / "h.json"
    code = main(["heads", "--model", str(CASE / "model"), "--transcoders", str(CASE / "transcoders"),
                 "--prompt", "the cat", "--out", str(out), "--device", "cpu", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1], err
    assert not out.exists()
