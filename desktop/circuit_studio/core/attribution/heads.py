"""Attention heads in an attribution graph: which heads carried an edge, and why they attended there.

Both analyses work in the graph's own linearisation (spec §1.6: attention patterns and norm scales
frozen, every MLP replaced by its transcoder's skip term plus a constant), so they are exact
decompositions of numbers the graph already holds, not estimates.

**Edges split by head** (`HeadAnalysis.split`). In the frozen model an edge source -> target is the
sum over all paths between them. For one attention layer j, every path either bypasses layer j's
attention (residual stream, MLP skip terms, writes at or above j) or passes exactly one of its
query heads, so

    edge = bypass_j + sum_h head_{j,h}          for every layer j separately.

(Paths compose across layers, so this is a split per layer j, not a joint credit over layers.)
The target's covector is pushed down as attribution does (`FrozenBackward.run`), and at layer j
the attention transpose is split per query head (before grouped-query attention adds heads that
share a value head): row h carries only head h's share, one more row carries the covector with
layer j's attention removed (the bypass). Each row then goes on down with the edge formulas of
`attribution._EdgeRows` (feature: sum over the layers it writes to of <g_write, a W_dec>; error:
<g_write, error>; token: <g_embed, embedding>). The H + 1 rows of every requested layer ride in one
backward batch, appended where they branch off, so a layer's rows only pay for the layers below it.
Sources whose every write lies at or above j cannot pass layer j: their heads are 0 and their bypass
is the whole edge.

**Why a head attended: QK attribution** (`HeadAnalysis.qk`). For head h of layer j, query position q
and key position k, the pre-softmax score (after `scaling`, before Gemma-2's soft-cap) is

    s = scaling * <q_vec, k_vec>,  q_vec = Rot_q(qnorm(W_q x_q + b_q)),  x_q = attn_norm(resid_j[q])

with the attention norm's and the q/k norms' scales frozen and the rotary embedding at its fixed
position, so q_vec and k_vec are affine in the residual stream at layer j's attention input. In the
frozen model that residual is a linear function of the graph's sources plus constants, so
q_vec = sum_s u_s + u_rest and k_vec = sum_t w_t + w_rest, where u_s is source s's share (its
effect on the residual at (j, q) carried through the query map), found for every source at once by
pushing the head_dim rows of the query map down like a feature row; the rest node holds what no
graph node owns (b_dec, attention and norm biases, position embeddings, MLP outputs at zeroed
positions, features the graph's budget left out). Then exactly

    s = sum_s scaling <u_s, k_vec>       (query-side marginals)
      = sum_t scaling <q_vec, w_t>       (key-side marginals)
      = sum_{s,t} scaling <u_s, w_t>     (node pairs).

With Gemma-2's `attn_logit_softcapping` the pattern sees cap * tanh(s / cap), which is not linear in s:
`QKBreakdown.softcap` says so and the decomposition stays that of the pre-cap score.

Nothing here touches Qt; long steps report progress and honour a cancel token (`core.progress`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .attribute import _EdgeRows, _phase0
from ..model.families import Norm
from .frozen_backward import FrozenBackward, Targets
from ..graph.attribution_graph import AttributionGraph, NodeKind
from ..model.loading import ModelBundle
from ..progress import CancelToken, ProgressFn, check, report
from ..model.replacement import removing_hooks
from ..transcoders.transcoder_set import TranscoderSet


@dataclass(frozen=True, eq=False)
class HeadSplit:
    """The edges into one target, split per attention head, for each of `layers`.

    Columns are the graph's sources in node order (features, errors, tokens: the first
    `graph.logit_offset` columns of the adjacency matrix). For every i,
    `parts[i].sum(0) == edges == graph.adjacency_matrix[target, :logit_offset]` (to float rounding).
    """

    target: int  # graph node index of the target (a feature or logit node)
    layers: tuple[int, ...]  # the attention layers split, ascending
    n_heads: int
    parts: np.ndarray  # float32 [len(layers), n_heads + 1, n_sources]; row n_heads = bypass
    edges: np.ndarray  # float32 [n_sources]: the target's edge row, recomputed here

    @property
    def n_sources(self) -> int:
        return int(self.edges.shape[0])

    def of_layer(self, layer: int) -> np.ndarray:
        """[n_heads + 1, n_sources] for attention layer `layer` (last row = bypass)."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not split (split: {list(self.layers)})")
        return self.parts[self.layers.index(layer)]

    def of_source(self, source: int) -> np.ndarray:
        """[len(layers), n_heads + 1]: one source's edge split at every layer."""
        return self.parts[:, :, source]

    def head_totals(self) -> np.ndarray:
        """[len(layers), n_heads + 1]: each head's (and the bypass's) share of all the target's edges."""
        return self.parts.sum(-1)


@dataclass(frozen=True, eq=False)
class QKBreakdown:
    """One attention score of head `head` at layer `layer`, query `query_pos` attending to key `key_pos`,
    decomposed over the graph's nodes. Node index i < n_sources is graph node i; index n_sources
    (`rest`) is everything no graph node owns (biases, left-out features, zeroed positions)."""

    layer: int
    head: int
    query_pos: int
    key_pos: int
    score: float  # pre-softmax, after `scaling`, before any soft-cap: scaling * <q_vec, k_vec>
    scaling: float
    softcap: float | None  # Gemma-2: the pattern sees softcap * tanh(score / softcap), nonlinear in score
    pattern: float  # the attention weight of (query_pos, key_pos) in the clean run
    masked: bool  # outside a sliding window: the weight is 0 whatever the score
    query_vectors: np.ndarray  # float32 [n_sources + 1, head_dim]: each node's share of the query vector
    key_vectors: np.ndarray  # float32 [n_sources + 1, head_dim]: each node's share of the key vector
    query_marginals: np.ndarray  # float32 [n_sources + 1]: scaling * <u_s, k_vec>, sums to `score`
    key_marginals: np.ndarray  # float32 [n_sources + 1]: scaling * <q_vec, w_t>, sums to `score`

    @property
    def n_sources(self) -> int:
        return int(self.query_vectors.shape[0]) - 1

    @property
    def rest(self) -> int:
        """Node index of the remainder (biases and everything else that is not a graph node)."""
        return self.n_sources

    @property
    def capped_score(self) -> float:
        """What the softmax sees before the mask: the score after the soft-cap, if any."""
        if self.softcap is None:
            return self.score
        return float(self.softcap * np.tanh(self.score / self.softcap))

    def pair_matrix(self, query_nodes: np.ndarray | None = None, key_nodes: np.ndarray | None = None) -> np.ndarray:
        """scaling * <u_s, w_t> for query-side nodes s (rows) and key-side nodes t (columns), all nodes by
        default ([n_sources + 1]^2, which sums to `score`)."""
        u = self.query_vectors if query_nodes is None else self.query_vectors[query_nodes]
        w = self.key_vectors if key_nodes is None else self.key_vectors[key_nodes]
        return (u.astype(np.float64) @ w.astype(np.float64).T * self.scaling).astype(np.float32)

    def top_pairs(self, n: int, chunk: int = 2048) -> list[tuple[int, int, float]]:
        """The n (query node, key node, term) pairs of largest |term|, largest first (exact: pairs whose
        norm bound |u_s| |w_t| cannot reach the n-th largest term of a first guess are skipped)."""
        u = torch.from_numpy(self.query_vectors).double()
        w = torch.from_numpy(self.key_vectors).double()
        un, wn = u.norm(dim=1), w.norm(dim=1)
        qn, kn = torch.nonzero(un > 0).flatten(), torch.nonzero(wn > 0).flatten()
        if n <= 0 or not qn.numel() or not kn.numel():
            return []
        # a first guess from the largest vectors of each side gives a threshold every top pair must reach
        guess = max(4 * n, 64)
        gq = qn[torch.argsort(un[qn], descending=True)[:guess]]
        gk = kn[torch.argsort(wn[kn], descending=True)[:guess]]
        terms = (u[gq] @ w[gk].T).abs().flatten()
        tau = float(torch.topk(terms, min(n, terms.numel())).values[-1]) if terms.numel() >= n else 0.0
        qn = qn[un[qn] * float(wn.max()) >= tau * (1 - 1e-9)]
        kn = kn[wn[kn] * float(un.max()) >= tau * (1 - 1e-9)]
        best_v = torch.empty(0, dtype=torch.float64)
        best_q = best_k = torch.empty(0, dtype=torch.long)
        wk = w[kn].T
        for s in range(0, qn.numel(), chunk):
            rows = qn[s: s + chunk]
            flat = (u[rows] @ wk).flatten() * self.scaling
            top = torch.topk(flat.abs(), min(n, flat.numel())).indices
            best_v = torch.cat([best_v, flat[top]])
            best_q = torch.cat([best_q, rows[top // kn.numel()]])
            best_k = torch.cat([best_k, kn[top % kn.numel()]])
            keep = torch.argsort(best_v.abs(), descending=True, stable=True)[:n]
            best_v, best_q, best_k = best_v[keep], best_q[keep], best_k[keep]
        return [(int(q), int(k), float(v)) for q, k, v in zip(best_q, best_k, best_v)]


class HeadAnalysis:
    """Per-head edge splits and QK breakdowns for one graph of `bundle` with `tc`.

    Built once per graph: it re-runs the clean forward pass of the graph's tokens (which must give
    the graph's active features: same model and transcoders) and prepares the frozen backward pass.
    """

    def __init__(self, bundle: ModelBundle, tc: TranscoderSet, graph: AttributionGraph, *,
                 progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> None:
        self.bundle, self.tc, self.graph, self.cancel = bundle, tc, graph, cancel
        ids = torch.from_numpy(np.asarray(graph.input_tokens, dtype=np.int64))
        report(progress, "Preparing heads", 0, 1)
        p0 = _phase0(bundle, ids, tc, graph.params)
        check(cancel)
        if (p0.active.shape[0] != graph.active_features.shape[0]
                or not torch.equal(p0.active.cpu(), torch.from_numpy(graph.active_features))):
            raise ValueError("The graph's active features differ from this model and transcoder set's: the "
                             "graph was computed with other weights (or another prompt).")
        # Columns = the graph's sources: only its selected features (an unselected feature is no node)
        sel = torch.from_numpy(np.asarray(graph.selected_features, dtype=np.int64))
        p0 = dataclasses.replace(p0, active=p0.active[sel], values=p0.values[sel])
        self._clean = p0.clean
        self.backward = FrozenBackward(bundle.arch, p0.clean, tc, bundle.dtype)
        self.edges = _EdgeRows(p0, tc, self.backward, cancel)
        assert self.edges.n_cols == graph.logit_offset
        self._attn_inputs: tuple[list[torch.Tensor], list] | None = None
        report(progress, "Preparing heads", 1, 1)

    @property
    def n_sources(self) -> int:
        return self.graph.logit_offset

    @property
    def n_heads(self) -> int:
        return int(self.bundle.arch.layers[0].n_heads)

    def pattern(self, layer: int, head: int) -> np.ndarray:
        """The clean (frozen) attention pattern of `head` at `layer`: float32 [P, P], query rows, key columns."""
        pats = self._clean.patterns
        if not 0 <= layer < len(pats):
            raise ValueError(f"layer {layer} is outside 0..{len(pats) - 1}")
        if not 0 <= head < pats[layer].shape[0]:
            raise ValueError(f"head {head} is outside 0..{pats[layer].shape[0] - 1}")
        return pats[layer][head].detach().float().cpu().numpy().copy()

    # ---- edges split by head ----
    def split_layers(self, target: int) -> range:
        """The attention layers a path from a source to `target` can pass."""
        kind = self.graph.kind_of(target)
        if kind is NodeKind.FEATURE:
            return range(self.graph.feature_of(target)[0] + 1)  # its read point lies after layer l's attention
        if kind is NodeKind.LOGIT:
            return range(self.graph.n_layers)
        raise ValueError(f"node {target} is {'an error' if kind is NodeKind.ERROR else 'a token'} node: "
                         "it has no incoming edges to split (pick a feature or a logit)")

    def target_covector(self, target: int, vector: torch.Tensor | None = None) -> Targets:
        """The target's row of the frozen transpose: its encoder row at its read point, or its logit direction."""
        g, arch = self.graph, self.bundle.arch
        kind = g.kind_of(target)
        if kind is NodeKind.FEATURE:
            layer, pos, feat, _ = g.feature_of(target)
            return Targets(torch.tensor([layer]), torch.tensor([pos]),
                           self.tc.encoder_rows(torch.tensor([layer]), torch.tensor([feat])))
        if kind is not NodeKind.LOGIT:
            self.split_layers(target)  # raises the reason
        if vector is None:
            token = int(g.logit_token_ids[target - g.logit_offset])
            w_u = arch.unembed.float()
            if not 0 <= token < w_u.shape[0]:
                label = g.logit_tokens[target - g.logit_offset]
                raise ValueError(f"logit node {target} is a custom direction ({label!r}), which the graph file "
                                 "does not keep: pass its vector")
            vector = w_u[token] - w_u.mean(0)
        return Targets(torch.tensor([g.n_layers]), torch.tensor([g.n_pos - 1]), vector.reshape(1, -1))

    def split(self, target: int, layers=None, *, vector: torch.Tensor | None = None, batch_size: int = 256,
              progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> HeadSplit:
        """Split every edge into `target` (a feature or logit node of the graph) per head of each of
        `layers` (default: every layer a path to the target can pass). `vector`: the direction of a
        custom logit target. `batch_size` bounds the rows of one backward pass (H + 1 per layer)."""
        cancel = cancel or self.cancel
        allowed = self.split_layers(target)
        layers = sorted(set(allowed if layers is None else (int(j) for j in layers)))
        bad = [j for j in layers if j not in allowed]
        if bad:
            raise ValueError(f"no path into node {target} passes attention layer {bad[0]} "
                             f"(layers {allowed.start}..{allowed.stop - 1} can carry its edges)")
        if not layers:
            raise ValueError("no layer to split")
        targets = self.target_covector(target, vector)
        H = self.bundle.arch.layers[0].n_heads
        per_pass = max(1, batch_size // (H + 1))
        groups = [layers[i: i + per_pass] for i in range(0, len(layers), per_pass)]
        parts = np.zeros((len(layers), H + 1, self.n_sources), dtype=np.float32)
        edges = None
        top = min(int(targets.layers[0]), self.graph.n_layers - 1)
        total, done = len(groups) * (top + 1), 0
        for group in groups:
            spawn = set(group)
            first_row: dict[int, int] = {}
            out = torch.zeros(1 + len(group) * (H + 1), self.n_sources, device=self.backward.device)

            def step(layer: int, g_mid: torch.Tensor, spawn=spawn, first_row=first_row, out=out) -> torch.Tensor:
                g = g_mid + self.backward._attention_backward(layer, g_mid, g_mid.shape[1])
                if layer not in spawn:
                    return g
                # row 0 is the target's own covector; its branches at this layer are appended
                heads = self.backward._attention_backward(layer, g_mid[:1], g_mid.shape[1], per_head=True)[0]
                r0 = g.shape[0]
                first_row[layer] = r0
                out[r0 + H] = out[0]  # the bypass keeps what was written at or above this layer
                return torch.cat([g, heads, g_mid[:1]])

            def on_write(layer: int, g: torch.Tensor, out=out) -> None:
                nonlocal done
                self._accumulate(out, layer, g, cancel)
                done += 1
                report(progress, "Head split", done, total)

            g_embed = self.backward.run(targets, on_write, step)
            self._accumulate_tokens(out, g_embed)
            rows = out.cpu().numpy()
            if edges is None:
                edges = rows[0].copy()
            for layer in group:
                r0 = first_row[layer]
                parts[layers.index(layer)] = rows[r0: r0 + H + 1]
        report(progress, "Head split", total, total)
        return HeadSplit(target=int(target), layers=tuple(layers), n_heads=H, parts=parts, edges=edges)

    def _accumulate(self, out: torch.Tensor, layer: int, g: torch.Tensor, cancel: CancelToken | None) -> None:
        """Edge contributions of the sources written at `layer` to the rows of g [R, P', d]
        (`_EdgeRows.compute`'s formulas, for a batch whose rows grow on the way down)."""
        check(cancel)
        e = self.edges
        R, n_pos = g.shape[:2]
        o = out[:R]
        for src in range(layer + 1):
            dec = e.decoders.get((src, layer))
            if dec is None:
                continue
            c0, _, spans = e.layer_columns[src]
            for p, a, b in spans:
                if p >= n_pos:
                    break
                o[:, c0 + a: c0 + b] += (g[:, p] @ dec[a:b].T).float()
        err = e.n_active + layer * e.P
        o[:, err: err + n_pos] += torch.einsum("bpd,pd->bp", g, e.errors[layer, :n_pos]).float()

    def _accumulate_tokens(self, out: torch.Tensor, g_embed: torch.Tensor) -> None:
        e = self.edges
        R, n_pos = g_embed.shape[:2]
        tok = e.n_active + e.L * e.P
        out[:R, tok: tok + n_pos] += torch.einsum("bpd,pd->bp", g_embed, e.tokens[:n_pos]).float()

    # ---- QK attribution ----
    def qk(self, layer: int, head: int, query_pos: int, key_pos: int, *,
           cancel: CancelToken | None = None) -> QKBreakdown:
        """Decompose the pre-softmax score of `head` at `layer`, `query_pos` attending to `key_pos`."""
        cancel = cancel or self.cancel
        arch, g = self.bundle.arch, self.graph
        if not 0 <= layer < arch.n_layers:
            raise ValueError(f"layer {layer} is outside 0..{arch.n_layers - 1}")
        parts = arch.layers[layer]
        if not 0 <= head < parts.n_heads:
            raise ValueError(f"head {head} is outside 0..{parts.n_heads - 1}")
        if not 0 <= key_pos <= query_pos < g.n_pos:
            raise ValueError(f"positions must satisfy 0 <= key <= query < {g.n_pos} (attention is causal); "
                             f"got query {query_pos}, key {key_pos}")
        kv = head // (parts.n_heads // parts.n_kv_heads)
        m_q, q_vec = self._qk_side(layer, "q", head, query_pos)
        m_k, k_vec = self._qk_side(layer, "k", kv, key_pos)
        dh = q_vec.shape[0]
        q_vec, k_vec = q_vec.cpu().double(), k_vec.cpu().double()
        # the query rows need positions <= query_pos, the key rows only <= key_pos: one pass each
        # (one pass for both when the key is the query's own position)
        if key_pos == query_pos:
            out = self._push_rows(layer, query_pos, torch.cat([m_q, m_k]), cancel)
        else:
            out = torch.cat([self._push_rows(layer, query_pos, m_q, cancel),
                             self._push_rows(layer, key_pos, m_k, cancel)])
        out = out.double()
        u = torch.cat([out[:dh].T, (q_vec - out[:dh].sum(1))[None]])  # [n_sources + 1, dh]
        w = torch.cat([out[dh:].T, (k_vec - out[dh:].sum(1))[None]])
        a = parts.attn
        scaling = float(a.scaling)
        softcap = getattr(a, "attn_logit_softcapping", None) if arch.model_type == "gemma2" else None
        window = getattr(a, "sliding_window", None)
        return QKBreakdown(
            layer=layer, head=head, query_pos=query_pos, key_pos=key_pos,
            score=float(q_vec @ k_vec) * scaling, scaling=scaling,
            softcap=None if softcap is None else float(softcap),
            pattern=float(self._clean.patterns[layer][head, query_pos, key_pos]),
            masked=bool(window is not None and query_pos - key_pos >= window),
            query_vectors=u.float().numpy(), key_vectors=w.float().numpy(),
            query_marginals=(u @ k_vec * scaling).float().numpy(),
            key_marginals=(w @ q_vec * scaling).float().numpy(),
        )

    def _push_rows(self, layer: int, pos: int, rows: torch.Tensor, cancel: CancelToken | None) -> torch.Tensor:
        """Each row of `rows` [R, d], a covector at the residual before layer `layer`'s attention at position
        `pos`, -> its effects from every graph source [R, n_sources] (float32, on the CPU)."""
        dev, dtype = self.backward.device, self.backward.dtype
        R, d = rows.shape
        cov = torch.zeros(R, pos + 1, d, device=dev, dtype=dtype)
        cov[:, pos] = rows.to(dev, dtype)
        out = torch.zeros(R, self.n_sources, device=dev)

        def step(l: int, g_mid: torch.Tensor) -> torch.Tensor:
            if l == layer:  # the covectors start here; nothing above them
                return cov
            return g_mid + self.backward._attention_backward(l, g_mid, g_mid.shape[1])

        def on_write(l: int, g: torch.Tensor) -> None:
            if l < layer:
                self._accumulate(out, l, g, cancel)

        # zero targets at `layer` only set where the pass starts and how many positions it keeps
        g_embed = self.backward.run(Targets(torch.full((R,), layer), torch.full((R,), pos), torch.zeros(R, d)),
                                    on_write, step)
        self._accumulate_tokens(out, g_embed)
        return out.cpu()

    def _qk_side(self, layer: int, which: str, head: int, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(M [dh, d], vec [dh]): the query (or key) vector of `head` at `pos` in the clean run, and the
        linear map from the residual at layer `layer`'s attention input to it (frozen norms, fixed rotary)."""
        arch = self.bundle.arch
        parts = arch.layers[layer]
        a = parts.attn
        dh = parts.head_dim
        w, b = _projection(arch.family, a, which, arch.d_model)
        rows = slice(head * dh, (head + 1) * dh)
        w = w[rows].float()
        inputs, rotary = self._attention_inputs()
        x = inputs[layer][pos].float().to(w.device)
        raw = w @ x + (0 if b is None else b[rows].float())
        norm = getattr(a, f"{which}_norm", None)
        if norm is not None:  # Qwen-3 / Gemma-3: RMSNorm over head_dim, its scale frozen
            qk_norm = Norm(norm, "rms1p" if arch.family == "gemma" else "rms")
            diag = qk_norm.scale(raw) * qk_norm.gain.to(raw.device)
            w, raw = w * diag[:, None], raw * diag
        if rotary[layer] is not None:
            cos, sin = (t[pos].float().to(w.device) for t in rotary[layer])
            w = _rotate(w.T, cos, sin).T
            raw = _rotate(raw, cos, sin)
        # residual -> attention input: the frozen norm (per-position scale, per-channel gain, LN centring)
        scale = self._clean.attn_scales[layer, pos, 0].float().to(w.device)
        m = w * (parts.attn_norm.gain.to(w.device) * scale)[None, :]
        if parts.attn_norm.kind == "layer":
            m = m - m.mean(-1, keepdim=True)
        return m, raw

    def _attention_inputs(self) -> tuple[list[torch.Tensor], list]:
        """Per layer: the attention module's input [P, d] and its rotary (cos, sin) [P, dh] (or None),
        from one clean forward pass of the graph's tokens (recorded on first use)."""
        if self._attn_inputs is not None:
            return self._attn_inputs
        arch = self.bundle.arch
        L = arch.n_layers
        inputs: list = [None] * L
        rotary: list = [None] * L
        handles = []
        for i, parts in enumerate(arch.layers):
            def hook(mod, args, kwargs, i=i):
                x = args[0] if args else kwargs["hidden_states"]
                inputs[i] = x[0].detach()
                pe = kwargs.get("position_embeddings")
                if pe is not None:
                    rotary[i] = tuple(t[0].detach() for t in pe)
            handles.append(parts.attn.register_forward_pre_hook(hook, with_kwargs=True))
        ids = torch.from_numpy(np.asarray(self.graph.input_tokens, dtype=np.int64))
        with torch.no_grad(), removing_hooks(handles):
            self.bundle.model(ids[None].to(self.bundle.device))
        self._attn_inputs = (inputs, rotary)
        return self._attn_inputs


def _projection(family: str, attn: torch.nn.Module, which: str, d: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The query or key projection as (weight [n * dh, d], bias [n * dh] or None): out = x @ weight.T + bias."""
    if family == "gpt2":  # Conv1D c_attn: [d, 3d] with y = x @ W + b, columns (q, k, v)
        cols = slice(0, d) if which == "q" else slice(d, 2 * d)
        return attn.c_attn.weight[:, cols].T, attn.c_attn.bias[cols]
    proj = attn.q_proj if which == "q" else attn.k_proj
    return proj.weight, proj.bias


def _rotate(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The family's rotary embedding of vectors v [.., dh] at one position (HF's `rotate_half` form)."""
    half = v.shape[-1] // 2
    rotated = torch.cat([-v[..., half:], v[..., :half]], dim=-1)
    return v * cos + rotated * sin


def split_edges_by_head(bundle: ModelBundle, tc: TranscoderSet, graph: AttributionGraph, target: int,
                        layers=None, **kwargs) -> HeadSplit:
    """One-off `HeadAnalysis(bundle, tc, graph).split(target, layers)`."""
    return HeadAnalysis(bundle, tc, graph).split(target, layers, **kwargs)


def qk_attribution(bundle: ModelBundle, tc: TranscoderSet, graph: AttributionGraph, layer: int, head: int,
                   query_pos: int, key_pos: int) -> QKBreakdown:
    """One-off `HeadAnalysis(bundle, tc, graph).qk(...)`."""
    return HeadAnalysis(bundle, tc, graph).qk(layer, head, query_pos, key_pos)


__all__ = ["HeadAnalysis", "HeadSplit", "QKBreakdown", "split_edges_by_head", "qk_attribution"]
