"""Attribution: prompt + model + transcoders -> the full attribution graph (circuit-tracer's method).

Following "Circuit Tracing" (Ameisen et al., 2025) and circuit-tracer 0.5.0, spec §2-§3:

0. One clean forward pass records the read/write tensors, attention patterns and norm scales.
   Transcoder activations at the read points give the active features (position 0 zeroed),
   the reconstruction gives the error vectors, and the last position's logits give the targets:
   the top `max_n_logits` tokens up to cumulative probability `desired_logit_prob`.
1. Logit rows: each target's demeaned unembedding column is pushed back through the frozen
   model (`frozen_backward`), giving its direct effects from every feature, error and token.
2. Feature rows: each active feature's encoder row is pushed back from its read point, giving
   the effects on its pre-activation. With a `max_feature_nodes` budget the features are visited
   greedily by their influence on the logits, estimated from the rows gathered so far.
3. The rows are packed into the N x N adjacency matrix of `graph.AttributionGraph`.

Edges: feature source s (activation a_s, decoder W_dec[s]) -> sum over the layers it writes to of
<g_write, a_s W_dec[s]>; error source -> <g_write, error>; token -> <g_embed, embedding>.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .errors import PromptError
from .frozen_backward import FrozenBackward, Targets
from .graph import AttributionGraph, AttributionParams
from .model_loading import ModelBundle, decode_tokens, tokenize_prompt
from .progress import CancelToken, ProgressFn, check, report
from .replacement import CleanRun, record_clean_run
from .targets import LogitTargets, TargetSpec, resolve_targets, select_logit_targets
from .transcoder_loading import check_transcoders_fit
from .transcoders import TranscoderSet


@dataclass(frozen=True, eq=False)
class _Phase0:
    clean: CleanRun
    active: torch.Tensor  # int64 [n_active, 3] (layer, pos, feature), lexicographic
    values: torch.Tensor  # [n_active]
    errors: torch.Tensor  # [L, P, d]
    targets: LogitTargets


def _phase0(bundle: ModelBundle, ids: torch.Tensor, tc: TranscoderSet, params: AttributionParams,
            targets: TargetSpec = None) -> _Phase0:
    clean = record_clean_run(bundle, ids, tc)
    L = tc.n_layers
    zeroed = bundle.n_zeroed_positions
    with torch.no_grad():
        acts = []
        for layer in range(L):
            # float32 whatever the model's dtype: which features are active must not hinge on rounding
            acts.append(tc.encode(layer, clean.reads[layer].float()))  # [P, F]
            tc.release_layer(layer)  # a memory-mapped encoder is read once; let its pages go
        acts = torch.stack(acts)  # [L, P, F]
        acts[:, :zeroed] = 0
        active = torch.nonzero(acts)  # row-major, hence (layer, pos, feature) lexicographic
        values = acts[active[:, 0], active[:, 1], active[:, 2]]
        errors = clean.writes.float() - tc.reconstruct(acts, clean.reads.float())
        errors[:, :zeroed] = 0
    logit_targets = resolve_targets(targets, clean.logits[-1], bundle.arch.unembed, bundle.tokenizer,
                                    params.max_n_logits, params.desired_logit_prob)
    return _Phase0(clean, active, values, errors, logit_targets)


class _EdgeRows:
    """Computes rows of direct effects on the columns [active features, errors, tokens]."""

    def __init__(self, p0: _Phase0, tc: TranscoderSet, backward: FrozenBackward, cancel: CancelToken | None):
        self.p0, self.tc, self.backward, self.cancel = p0, tc, backward, cancel
        L, P = p0.errors.shape[:2]
        self.L, self.P = L, P
        self.n_active = int(p0.active.shape[0])
        self.n_cols = self.n_active + L * P + P
        dev, dtype = backward.device, backward.dtype
        self.errors = p0.errors.to(dev, dtype)
        self.tokens = p0.clean.token_vectors.to(dev, dtype)
        # Decoder rows scaled by activation, per (source layer, output layer). Active features are
        # sorted by (layer, pos, feature), so one layer's features are the columns [c0, c1) and each
        # position's are a contiguous run inside them: spans [(pos, start, end)] relative to c0.
        self.decoders: dict[tuple[int, int], torch.Tensor] = {}  # [n_src, d]
        self.layer_columns: dict[int, tuple[int, int, list[tuple[int, int, int]]]] = {}
        active = p0.active
        for src in range(L):
            idx = torch.nonzero(active[:, 0] == src).flatten()
            if idx.numel() == 0:
                continue
            c0, c1 = int(idx[0]), int(idx[-1]) + 1
            pos = active[c0:c1, 1]
            bounds = torch.searchsorted(pos, torch.arange(P + 1)).tolist()
            spans = [(p, bounds[p], bounds[p + 1]) for p in range(P) if bounds[p + 1] > bounds[p]]
            self.layer_columns[src] = (c0, c1, spans)
            feat = active[c0:c1, 2].to(dev)
            scale = p0.values[c0:c1, None].to(dev, dtype)
            for out in (range(src, L) if tc.is_clt else (src,)):
                self.decoders[src, out] = tc.decoder_rows(src, feat, out).to(dtype) * scale
        # Encoder rows of every active feature (the feature rows' injected vectors), gathered once:
        # an encoder stored [d, F] (GemmaScope) would otherwise be paged in whole by every batch.
        self.encoders = tc.encoder_rows(active[:, 0], active[:, 2])  # [n_active, d], stored dtype
        for layer in range(L):  # all a memory-mapped set contributes is now in memory
            tc.release_layer(layer)

    def compute(self, targets: Targets) -> torch.Tensor:
        """[B, n_cols] float32 on the CPU."""
        B = targets.layers.shape[0]
        out = torch.zeros(B, self.n_cols, device=self.backward.device, dtype=torch.float32)
        err0 = self.n_active

        def on_write(layer: int, g: torch.Tensor) -> None:
            check(self.cancel)
            n_pos = g.shape[1]
            for src in range(layer + 1):
                dec = self.decoders.get((src, layer))
                if dec is None:
                    continue
                c0, _, spans = self.layer_columns[src]
                for p, a, b in spans:
                    if p >= n_pos:  # causal: later positions received no gradient
                        break
                    out[:, c0 + a: c0 + b] += (g[:, p] @ dec[a:b].T).float()
            e = torch.einsum("bpd,pd->bp", g, self.errors[layer, :n_pos])
            out[:, err0 + layer * self.P: err0 + layer * self.P + n_pos] = e.float()

        g_embed = self.backward.run(targets, on_write)
        tok0 = err0 + self.L * self.P
        n_pos = g_embed.shape[1]
        out[:, tok0: tok0 + n_pos] = torch.einsum("bpd,pd->bp", g_embed, self.tokens[:n_pos]).float()
        return out.cpu()


def _feature_targets(p0: _Phase0, edges: _EdgeRows, which: torch.Tensor) -> Targets:
    layers, pos, _ = p0.active[which].unbind(1)
    return Targets(layers, pos, edges.encoders[which.to(edges.encoders.device)])


def _partial_influences(rows: torch.Tensor, row_nodes: torch.Tensor, logit_probs: torch.Tensor,
                        n_cols: int, max_iter: int = 128) -> torch.Tensor:
    """circuit-tracer's influence estimate from the rows computed so far (spec §3.4).

    rows [R, n_cols + K] with the K logit columns last; row_nodes [R] maps each row to its column."""
    m = rows.abs()
    m /= m.sum(1, keepdim=True).clamp(min=1e-8)
    prod = torch.zeros(rows.shape[1])
    prod[-logit_probs.shape[0]:] = logit_probs
    influence = torch.zeros(rows.shape[1])
    for _ in range(max_iter):
        prod = prod[row_nodes] @ m
        if not prod.any():
            return influence[:n_cols]
        influence += prod
    raise RuntimeError("partial influences did not converge: the rows do not form a DAG")


def attribute(prompt: str | list[int] | torch.Tensor, bundle: ModelBundle, transcoders: TranscoderSet,
              params: AttributionParams = AttributionParams(), *, targets: TargetSpec = None,
              progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> AttributionGraph:
    """Compute the full attribution graph of `prompt` (see the module docstring). `targets`
    chooses the logit nodes (`core.targets`): None for the salient logits, token ids, token
    strings or CustomTarget directions."""
    for name, value in (("batch_size", params.batch_size), ("max_n_logits", params.max_n_logits),
                        ("update_interval", params.update_interval)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1 (got {value})")
    if params.max_feature_nodes is not None and params.max_feature_nodes < 0:
        raise ValueError(f"max_feature_nodes must be >= 0 (got {params.max_feature_nodes})")
    if not 0 < params.desired_logit_prob <= 1:
        raise ValueError(f"desired_logit_prob must be in (0, 1] (got {params.desired_logit_prob})")
    check_transcoders_fit(transcoders, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model,
                          model_name=bundle.name)
    started = time.perf_counter()
    ids = tokenize_prompt(bundle, prompt)
    tc = transcoders  # weights are cast to the model's device and dtype piece by piece, as used
    report(progress, "Forward pass", 0, 1)
    p0 = _phase0(bundle, ids, tc, params, targets)
    check(cancel)
    report(progress, "Forward pass", 1, 1)
    timings = {"forward": time.perf_counter() - started}

    edges = _EdgeRows(p0, tc, FrozenBackward(bundle.arch, p0.clean, tc, bundle.dtype), cancel)
    K, n_active, n_cols = p0.targets.token_ids.shape[0], edges.n_active, edges.n_cols
    budget = n_active if params.max_feature_nodes is None else min(params.max_feature_nodes, n_active)
    bs = params.batch_size
    # Rows in the order computed: K logit rows, then feature rows. The extra K zero columns stand for
    # the logit nodes, which the partial-influence estimate needs.
    matrix = torch.zeros(K + budget, n_cols + K)
    row_nodes = torch.empty(K + budget, dtype=torch.long)
    row_nodes[:K] = torch.arange(n_cols, n_cols + K)

    t0 = time.perf_counter()
    L, P = tc.n_layers, ids.shape[0]
    for i in range(0, K, bs):
        check(cancel)
        k = slice(i, min(i + bs, K))
        n = k.stop - k.start
        matrix[k, :n_cols] = edges.compute(Targets(torch.full((n,), L), torch.full((n,), P - 1),
                                                   p0.targets.vectors[k]))
        report(progress, "Logit rows", k.stop, K)
    timings["logit_rows"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    visited = torch.zeros(n_active, dtype=torch.bool)
    n_done = 0
    total_batches = math.ceil(budget / bs)
    while n_done < budget:
        if budget == n_active:
            queue = torch.arange(n_active)[~visited]  # everything: no ranking needed
        else:
            infl = _partial_influences(matrix[: K + n_done], row_nodes[: K + n_done],
                                       p0.targets.probabilities, n_cols)[:n_active]
            order = torch.argsort(infl, descending=True, stable=True)
            order = order[~visited[order]]
            queue = order[: min(params.update_interval * bs, budget - n_done)]
        # batches in (layer, position) order let each backward pass stop early
        queue = torch.sort(queue).values
        for i in range(0, queue.shape[0], bs):
            check(cancel)
            which = queue[i: i + bs]
            r = slice(K + n_done, K + n_done + which.shape[0])
            matrix[r, :n_cols] = edges.compute(_feature_targets(p0, edges, which))
            row_nodes[r] = which
            visited[which] = True
            n_done += which.shape[0]
            report(progress, "Feature rows", math.ceil(n_done / bs), total_batches)
    timings["feature_rows"] = time.perf_counter() - t0

    text = prompt if isinstance(prompt, str) else bundle.tokenizer.decode(ids.tolist())
    graph = _package(bundle, p0, matrix, row_nodes, visited, params, ids, text, tc.scan)
    timings["total"] = time.perf_counter() - started
    graph.provenance["seconds"] = timings
    report(progress, "Done", 1, 1)
    return graph


def _package(bundle: ModelBundle, p0: _Phase0, matrix: torch.Tensor, row_nodes: torch.Tensor,
             visited: torch.Tensor, params: AttributionParams, ids: torch.Tensor, prompt: str,
             transcoder_name: str) -> AttributionGraph:
    """Rows in computed order -> the N x N matrix in the node order of `graph`."""
    K = p0.targets.token_ids.shape[0]
    L, P = p0.errors.shape[:2]
    n_active = int(p0.active.shape[0])
    selected = torch.nonzero(visited).flatten()
    n_sel = selected.shape[0]
    N = n_sel + L * P + P + K
    # columns: selected features, then errors and tokens (which follow the active features internally)
    cols = torch.cat([selected, torch.arange(n_active, n_active + L * P + P)])
    adj = np.zeros((N, N), dtype=np.float32)
    row_of = torch.empty(n_active, dtype=torch.long)
    row_of[row_nodes[K:]] = torch.arange(K, K + row_nodes.shape[0] - K)
    feature_rows = row_of[selected]
    adj[:n_sel, : N - K] = matrix[feature_rows][:, cols].numpy()
    adj[N - K:, : N - K] = matrix[:K][:, cols].numpy()
    return AttributionGraph(
        prompt=prompt, input_tokens=ids.numpy().astype(np.int64),
        token_strings=decode_tokens(bundle, ids),
        active_features=p0.active.cpu().numpy().astype(np.int64),
        activation_values=p0.values.float().cpu().numpy(),
        selected_features=selected.numpy().astype(np.int64),
        logit_token_ids=p0.targets.token_ids.numpy().astype(np.int64),
        logit_probabilities=p0.targets.probabilities.numpy().astype(np.float32),
        logit_tokens=p0.targets.labels or decode_tokens(bundle, p0.targets.token_ids),
        adjacency_matrix=adj, n_layers=L, vocab_size=int(bundle.arch.unembed.shape[0]), params=params,
        model_name=bundle.name, transcoder_name=transcoder_name,
        provenance=_provenance(bundle),
    )


def _provenance(bundle: ModelBundle) -> dict:
    import importlib.metadata as md
    from datetime import datetime, timezone

    versions = {}
    for pkg in ("circuit-studio", "torch", "transformers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    device = torch.cuda.get_device_name(bundle.device) if bundle.device.type == "cuda" else "cpu"
    return {"versions": versions, "device": device, "dtype": str(bundle.dtype).removeprefix("torch."),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_folder": str(bundle.summary.folder)}


__all__ = ["attribute", "select_logit_targets", "resolve_targets", "LogitTargets", "PromptError"]
