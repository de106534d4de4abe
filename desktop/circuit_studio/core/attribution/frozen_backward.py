"""The frozen model's backward pass, written out explicitly.

With attention patterns and norm scales frozen and every MLP replaced by its transcoder's skip
term plus a constant (spec §1.6), the model is a linear map from the residual stream's inputs
(token embeddings, MLP write points) to the transcoders' read points and the final-norm output.
Attribution needs rows of that map's transpose. circuit-tracer gets them from autograd through a
forward pass over `batch_size` copies of the prompt; we apply the transpose directly, layer by
layer, which lets us

* skip the batched forward pass and the MLPs, queries, keys and unembedding entirely;
* start each batch at the deepest layer it targets and stop its positions at the last one it
  targets (attention is causal, so later positions carry no gradient).

Per layer l, with g the gradient at the residual stream after the block (shapes [B, P, d]):

    g_write = g                       (or Gemma's post-MLP norm transposed, for mlp.hook_out)
    g_read  = g_write @ W_skip[l] + injected target vectors at (l, p)
    g_mid   = g + (pre-MLP norm)^T g_read        (or just g_read for hook_resid_mid)
    g       = g_mid + attn_norm^T V^T pattern^T O^T (post-attn norm^T) g_mid

`tests/core/test_attribution_properties.py` checks the result against `replacement.run_frozen`,
which runs the real HF modules.

`FrozenBackward.run` pushes a batch of rows padded to a common [B, P', d] (what `head_attribution`
hooks into). `PackedBackward` is the one attribution uses; it does only the multiply-adds the
answer needs:

* a row injected at (layer l, position p) is non-zero at position p alone until layer l's
  attention, whose transpose then mixes that one covector by the pattern's row p: one [d, d]
  product at the top instead of P', and no edge products at layer l (its gradient there is 0);
* the rows of a batch share their positions (`plan_batches`: rows of one position, or of a few
  neighbouring positions when a position has few rows), so nothing is padded to another row's
  last position;
* the state lives in buffers allocated once; the pattern is applied to [dh * rows, P'] slabs in
  one batched product per layer; frozen norm gains and LayerNorm centring are folded into the
  weights, per-position scales into the edge vectors, and the residual additions into `addmm_`;
* edge products are written straight into the blocks of the graph's adjacency (source-major
  [columns, rows], `core.graph.adjacency`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..model.families import Architecture, Norm
from ..model.replacement import CleanRun
from ..transcoders.transcoder_set import TranscoderSet

# (layer, g_write [B, P', d]) -> None, called from the top layer down
WriteGradFn = Callable[[int, torch.Tensor], None]
# (layer, g_mid [B, P', d]) -> gradient at the residual before the layer's attention sub-block, [B', P', d].
# Replaces `g_mid + _attention_backward(layer, g_mid)`; may append rows (B' >= B, the first B stay the
# targets' rows). `head_attribution` uses it to split attention per head.
AttentionStepFn = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Targets:
    """A batch of B rows: each injects `vectors[i]` at the read point of `layers[i]` (n_layers means
    the final-norm output, i.e. a logit) at position `positions[i]`."""

    layers: torch.Tensor  # int64 [B]
    positions: torch.Tensor  # int64 [B]
    vectors: torch.Tensor  # [B, d]


class FrozenBackward:
    """Rows of the frozen linear model's transpose for one recorded clean run."""

    def __init__(self, arch: Architecture, clean: CleanRun, tc: TranscoderSet, dtype: torch.dtype) -> None:
        self.arch, self.tc, self.dtype = arch, tc, dtype
        dev = clean.reads.device
        self.device = dev

        def cast(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=dev, dtype=dtype)

        self.mlp_scales = cast(clean.mlp_scales)
        self.post_mlp_scales = cast(clean.post_mlp_scales)
        self.final_scale = cast(clean.final_scale)
        self.w_skip = None if tc.w_skip is None else torch.stack([cast(w) for w in tc.w_skip])  # [L, d, d]
        # Fold every frozen diagonal of the attention path into its neighbours, once:
        #   pattern'[h, q, k] = s_post_attn[q] * pattern[h, q, k] * s_attn[k]   (per-position scales)
        #   w_o' = diag(post-attn gain) w_o,  w_v' = w_v diag(attn gain)          (per-channel gains)
        # so the attention transpose is two matmuls and one mixing step, with no elementwise passes.
        self.attention: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for i, (layer, pattern) in enumerate(zip(arch.layers, clean.patterns)):
            pattern = pattern.to(dev, torch.float32) * clean.attn_scales[i, None, None, :, 0].to(dev)
            w_o = layer.w_o.float()
            if layer.post_attn_norm is not None:
                pattern = pattern * clean.post_attn_scales[i, None, :, :].to(dev)
                w_o = layer.post_attn_norm.gain[:, None].to(w_o) * w_o
            w_v = layer.w_v.float() * layer.attn_norm.gain[None, :].to(dev)
            self.attention.append((cast(pattern), cast(w_o), cast(w_v)))

    def run(self, targets: Targets, on_write: WriteGradFn,
            attention_step: AttentionStepFn | None = None) -> torch.Tensor:
        """Propagate a batch of target covectors down to the embeddings.

        Calls `on_write(l, g_write)` for every layer l below the deepest target, top down, and
        returns the gradient at the embedding output [B, P', d], where P' = last targeted position + 1.
        `attention_step`, if given, takes the place of each layer's attention transpose (see
        `AttentionStepFn`); rows it appends reach `on_write` and the result too.
        """
        arch, tc = self.arch, self.tc
        B = targets.layers.shape[0]
        n_pos = int(targets.positions.max()) + 1
        top = int(targets.layers.max())
        d = arch.d_model
        rows = torch.arange(B, device=self.device)
        layers = targets.layers.to(self.device)
        positions = targets.positions.to(self.device)
        vectors = targets.vectors.to(device=self.device, dtype=self.dtype)

        g = torch.zeros(B, n_pos, d, device=self.device, dtype=self.dtype)
        at_top = layers == arch.n_layers
        if at_top.any():
            inj = torch.zeros_like(g)
            inj[rows[at_top], positions[at_top]] = vectors[at_top]
            g = arch.final_norm.backward(inj, self.final_scale[:n_pos])
        for layer in range(min(top, arch.n_layers - 1), -1, -1):
            parts = arch.layers[layer]
            if parts.post_mlp_norm is not None and tc.feature_output_hook == "mlp.hook_out":
                g_write = parts.post_mlp_norm.backward(g, self.post_mlp_scales[layer, :n_pos])
            else:
                g_write = g
            on_write(layer, g_write)

            g_read = g_write @ self.w_skip[layer] if self.w_skip is not None else None
            here = layers == layer
            if here.any():
                g_read = torch.zeros_like(g) if g_read is None else g_read.clone()
                g_read[rows[here], positions[here]] += vectors[here]
            g_mid = g
            if g_read is not None:
                g_mid = g + self._read_backward(parts.mlp_norm, g_read, self.mlp_scales[layer, :n_pos])
            if attention_step is None:
                g = g_mid + self._attention_backward(layer, g_mid, n_pos)
            else:
                g = attention_step(layer, g_mid)
        return g

    def _read_backward(self, norm: Norm, g_read: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        hook = self.tc.feature_input_hook
        if hook == "mlp.hook_in":
            return norm.backward(g_read, scale)
        if hook == "ln2.hook_normalized":
            return norm.backward(g_read, scale, with_gain=False)
        return g_read  # hook_resid_mid

    def _attention_backward(self, layer: int, g_mid: torch.Tensor, n_pos: int,
                            per_head: bool = False) -> torch.Tensor:
        """Transpose of the frozen attention sub-block (norm, V, pattern, O, Gemma's post-norm):
        grad at the residual after it [B, P', d] -> grad at the residual before it [B, P', d].

        `per_head`: each query head's share instead, [B, H, P', d] (summing over H gives the default;
        heads that share a value head under grouped-query attention stay apart)."""
        p = self.arch.layers[layer]
        pattern, w_o, w_v = self.attention[layer]
        B = g_mid.shape[0]
        g_heads = (g_mid @ w_o).view(B, n_pos, p.n_heads, p.head_dim).transpose(1, 2)  # [B, H, Q, dh]
        g_v = pattern[:, :n_pos, :n_pos].transpose(-1, -2) @ g_heads  # [B, H, K, dh]
        if per_head:
            w_v_heads = w_v.view(p.n_kv_heads, 1, p.head_dim, -1).expand(-1, p.n_heads // p.n_kv_heads, -1, -1)
            g = g_v @ w_v_heads.reshape(p.n_heads, p.head_dim, -1)  # [B, H, K, d]
            if p.attn_norm.kind == "layer":
                g = g - g.mean(-1, keepdim=True)
            return g
        if p.n_kv_heads != p.n_heads:  # grouped-query attention: heads sharing a value head add up
            g_v = g_v.view(B, p.n_kv_heads, p.n_heads // p.n_kv_heads, n_pos, p.head_dim).sum(2)
        g = g_v.transpose(1, 2).reshape(B, n_pos, p.n_kv_heads * p.head_dim) @ w_v
        if p.attn_norm.kind == "layer":  # LayerNorm's centring, the one part that does not fold
            g = g - g.mean(-1, keepdim=True)
        return g


# ---------------------------------------------------------------------------------------------
# Packed rows: only the work the answer needs
# ---------------------------------------------------------------------------------------------

def flush_subnormals() -> bool:
    """Treat subnormal floats (|x| < 1.2e-38) as 0 on this thread, and on the compute threads it starts
    from now on (they inherit the setting when created; call it before the first parallel work).

    Frozen attention patterns hold subnormal entries (a softmax of peaked scores), and every product
    with them is subnormal too; a CPU takes about a hundred times longer over those. Flushing them
    changes no edge by more than ~1e-38. Returns whether the CPU supports it."""
    return bool(torch.set_flush_denormal(True))


@dataclass(frozen=True, eq=False)
class SourceLayout:
    """The sources of direct effects, per source layer s, in the order the blocks hold them.

    Layer s's features run by position (then feature): `feature_starts[s][q]` is the first one at
    position q (`feature_starts[s][P]` = all of them), `feature_nodes[s]` their column ids, and
    `features[src, out]` [n_src, d] each one's vector at write layer `out` (activation x decoder row,
    the slot for `out` in a cross-layer set). Layer s's error nodes (`error_nodes[s]` [P], vectors
    `errors[s]` [P, d]) follow its features. A batch whose last position is P'-1 writes, for layer s,
    the columns `columns(s, P')`: its features at positions < P', then its errors at positions < P'.
    `token_nodes` [P] and `tokens` [P, d] are the token sources.
    """

    feature_nodes: tuple[np.ndarray, ...]
    feature_starts: tuple[tuple[int, ...], ...]
    features: dict[tuple[int, int], torch.Tensor]
    error_nodes: tuple[np.ndarray, ...]
    errors: torch.Tensor
    token_nodes: np.ndarray
    tokens: torch.Tensor

    def columns(self, layer: int, n_pos: int) -> np.ndarray:
        """Column ids of a block of source layer `layer` (-1: the tokens) for a batch of P' = n_pos."""
        if layer < 0:
            return self.token_nodes[:n_pos]
        return np.concatenate([self.feature_nodes[layer][:self.feature_starts[layer][n_pos]],
                               self.error_nodes[layer][:n_pos]])


@dataclass(frozen=True)
class RowBatch:
    """Rows that share a position range: `layers` int64 [R] descending (n_layers = a logit row, injected
    at the final-norm output), `positions` [R] (< n_pos), `vectors` [R, d] the injected covectors,
    `n_pos` = P', one past the last position any row needs."""

    layers: np.ndarray
    positions: np.ndarray
    vectors: torch.Tensor
    n_pos: int

    def started(self, layer: int) -> int:
        """Rows already propagating when the pass reaches `layer`'s write point (layer above theirs)."""
        return int(np.count_nonzero(self.layers > layer))


def plan_batches(layers: np.ndarray, positions: np.ndarray, max_row_positions: int, *, min_rows: int = 48,
                 max_padding: float = 0.25) -> list[tuple[np.ndarray, int]]:
    """Group rows (target layer, position) into batches [(row indices, P')]: rows of one position, or
    of neighbouring positions while a batch has fewer than `min_rows` rows and pads no row by more
    than `max_padding` of P'; rows x P' stays within `max_row_positions` (a bigger group is split).
    Inside a batch rows are ordered by layer descending (then position descending, then index)."""
    layers, positions = np.asarray(layers, dtype=np.int64), np.asarray(positions, dtype=np.int64)
    if layers.size == 0:
        return []
    by_pos = np.lexsort((np.arange(layers.size), -layers, -positions))
    pos_sorted = positions[by_pos]
    bounds = np.flatnonzero(np.diff(pos_sorted)) + 1
    groups = np.split(by_pos, bounds)  # one per position, descending
    merged: list[tuple[list[np.ndarray], int]] = []
    for g in groups:
        p = int(positions[g[0]])
        if merged:
            parts, n_pos = merged[-1]
            n = sum(x.size for x in parts)
            if (n < min_rows and n_pos - (p + 1) <= max_padding * n_pos
                    and (n + g.size) * n_pos <= max_row_positions):
                parts.append(g)
                continue
        merged.append(([g], p + 1))
    out = []
    for parts, n_pos in merged:
        rows = np.concatenate(parts)
        rows = rows[np.lexsort((rows, -positions[rows], -layers[rows]))]
        step = max(1, max_row_positions // n_pos)
        for i in range(0, rows.size, step):
            out.append((rows[i: i + step], n_pos))
    return out


def needed_macs(layers: np.ndarray, positions: np.ndarray, features_per_position: np.ndarray, arch: Architecture,
                tc: TranscoderSet) -> int:
    """Multiply-adds the rows (target layer, position) need, counted exactly: edge products with every
    source at or before the row's position in lower layers (features [L, P] per layer and position,
    errors, tokens), and the frozen transpose from the row's read point down, with the row non-zero
    at its own position until its first attention step and causal patterns (key <= query)."""
    d = arch.d_model
    L = arch.n_layers
    skip = tc.w_skip is not None
    feats = np.asarray(features_per_position, dtype=np.int64)  # [L, P]
    cum = np.cumsum(feats, axis=1)  # features of layer s at positions <= q
    total = 0
    for l, p in zip(np.asarray(layers).tolist(), np.asarray(positions).tolist()):
        n = p + 1
        lay = arch.layers
        if l < L:  # feature row: injected at l's read point; attention at l mixes one position
            a = lay[l]
            total += d * a.n_heads * a.head_dim + n * a.n_heads * a.head_dim + n * a.n_kv_heads * a.head_dim * d
            below = range(l)
        else:  # logit row: one position through the last layer's write point and skip, then as above
            a = lay[L - 1]
            total += (int(cum[L - 1, p]) + 1) * d * (L if tc.is_clt else 1) + (d * d if skip else 0)
            total += d * a.n_heads * a.head_dim + n * a.n_heads * a.head_dim + n * a.n_kv_heads * a.head_dim * d
            below = range(L - 1)
        for s in below:
            a = lay[s]
            srcs = range(s + 1) if tc.is_clt else (s,)
            total += sum(int(cum[src, p]) for src in srcs) * d + n * d  # features, errors
            total += (n * d * d if skip else 0)
            total += n * d * a.n_heads * a.head_dim + n * (n + 1) // 2 * a.n_heads * a.head_dim
            total += n * a.n_kv_heads * a.head_dim * d
        total += n * d  # tokens
    return total


class PackedBackward:
    """Rows of the frozen transpose in packed batches (see the module docstring), written into
    blocks the caller provides.

    `run(batch, block)` calls `block(s, n_rows)` once per source layer s that the batch reaches
    (s = -1: the tokens) and writes the batch's edges into the tensor it returns: float32
    [len(layout.columns(s, P')), n_rows], rows in the batch's order (the first n_rows of it are the
    rows started above s). `macs` counts the multiply-adds done.
    """

    def __init__(self, fb: FrozenBackward, clean: CleanRun, layout: SourceLayout, max_row_positions: int) -> None:
        arch, tc = fb.arch, fb.tc
        self.fb, self.arch, self.tc, self.layout = fb, arch, tc, layout
        self.dtype, self.device = fb.dtype, fb.device
        dev, dt = fb.device, fb.dtype
        L = arch.n_layers
        self.max_row_positions = int(max_row_positions)
        post = [p.post_mlp_norm if (p.post_mlp_norm is not None and tc.feature_output_hook == "mlp.hook_out")
                else None for p in arch.layers]
        hook = tc.feature_input_hook
        # per layer: pattern' [H, P, P], w_o' [d, H dh], w_v' with LayerNorm's centring folded in
        self.attn = []
        for i, (pattern, w_o, w_v) in enumerate(fb.attention):
            if arch.layers[i].attn_norm.kind == "layer":
                w_v = (w_v.double() - w_v.double().mean(1, keepdim=True)).to(dt)
            self.attn.append((pattern.contiguous(), w_o, w_v.contiguous()))
        # skip: g_mid += sigma[q] * (g @ M) with M = D_post C_post W_skip D_read C_read
        self.skip, self.sigma = [None] * L, None
        if tc.w_skip is not None:
            sig = torch.ones(L, clean.mlp_scales.shape[1], device=dev, dtype=torch.float32)
            for s in range(L):
                m = tc.w_skip[s].to(device=dev, dtype=torch.float64)  # g_read = g_write @ W_skip (see run)
                if post[s] is not None:
                    if post[s].kind == "layer":
                        m = m - m.mean(0, keepdim=True)
                    m = post[s].gain.to(dev, torch.float64)[:, None] * m
                    sig[s] *= clean.post_mlp_scales[s, :, 0].to(dev)
                norm = arch.layers[s].mlp_norm
                if hook != "hook_resid_mid":
                    if hook == "mlp.hook_in":
                        m = m * norm.gain.to(dev, torch.float64)[None, :]
                    if norm.kind == "layer":
                        m = m - m.mean(1, keepdim=True)
                    sig[s] *= clean.mlp_scales[s, :, 0].to(dev)
                self.skip[s] = m.to(dt).contiguous()
            self.sigma = sig.to(dt)
        # edge vectors at each write layer, with the write point's frozen norm folded in per position
        def fold(v: torch.Tensor, out: int, pos: np.ndarray) -> torch.Tensor:
            v = v.to(device=dev, dtype=torch.float32)
            norm = post[out]
            if norm is not None:
                if norm.kind == "layer":
                    v = v - v.mean(1, keepdim=True)
                scale = clean.post_mlp_scales[out, :, 0].to(dev, torch.float32)[torch.from_numpy(pos).to(dev)]
                v = v * norm.gain.to(dev)[None, :] * scale[:, None]
            return v.to(dt).contiguous()

        self.features: dict[tuple[int, int], torch.Tensor] = {}
        for (src, out), v in layout.features.items():
            st = layout.feature_starts[src]
            self.features[src, out] = fold(v, out, np.repeat(np.arange(len(st) - 1), np.diff(st)))
        P = layout.errors.shape[1]
        self.errors = [fold(layout.errors[s], s, np.arange(P)) for s in range(L)]
        self._padded: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.tokens = layout.tokens.to(device=dev, dtype=dt).contiguous()
        self.macs = 0
        self._buffers: dict[str, torch.Tensor] = {}

    def _buffer(self, name: str, numel: int) -> torch.Tensor:
        """A flat scratch buffer reused across batches (grown when a batch needs more)."""
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(max(numel, 1), device=self.device, dtype=self.dtype)
            self._buffers[name] = buf
        return buf[:numel]

    def run(self, batch: RowBatch, block: Callable[[int, int], torch.Tensor],
            cancel: Callable[[], None] | None = None) -> None:
        arch, tc, fb = self.arch, self.tc, self.fb
        L, d = arch.n_layers, arch.d_model
        R, Pb = int(batch.layers.shape[0]), int(batch.n_pos)
        layers = np.asarray(batch.layers)
        if R == 0:
            return
        assert np.all(np.diff(layers) <= 0), "rows must be ordered by layer, descending"
        direct = self.dtype == torch.float32
        n_at = {s: int(np.count_nonzero(layers > s)) for s in range(-1, L)}
        # the output blocks, asked for once: (destination, scratch written by the products)
        outs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for s in list(range(L)) + [-1]:
            n = n_at[s]
            if n == 0:
                continue
            dest = block(s, n)
            same = direct and dest.device == self.device and dest.dtype == self.dtype and dest.is_contiguous()
            work = dest if same else torch.zeros(dest.shape, device=self.device, dtype=self.dtype)
            if same and tc.is_clt and s >= 0:
                work.zero_()  # cross-layer sources add up over write layers
            outs[s] = (dest, work)
        G = self._buffer("state", R * Pb * d).view(R, Pb, d)
        vectors = batch.vectors.to(device=self.device, dtype=self.dtype)
        positions = torch.from_numpy(np.asarray(batch.positions, dtype=np.int64)).to(self.device)
        top = int(layers[0])
        n_logit = int(np.count_nonzero(layers == L))
        if n_logit:
            assert Pb == self.fb.final_scale.shape[0], "logit rows need every position"
            G[:n_logit].zero_()
            rows = torch.arange(n_logit, device=self.device)
            p = positions[:n_logit]
            G[rows, p] = arch.final_norm.backward(vectors[:n_logit], fb.final_scale[p])
        for s in range(min(top, L - 1), -1, -1):
            if cancel is not None:
                cancel()
            n = n_at[s]
            if n:
                self._edges(s, G, n, Pb, outs)
                if self.skip[s] is not None:
                    flat = G[:n].view(n * Pb, d)
                    t = torch.mm(flat, self.skip[s], out=self._buffer("skip", n * Pb * d).view(n * Pb, d))
                    G[:n].addcmul_(t.view(n, Pb, d), self.sigma[s, :Pb].view(1, Pb, 1))
                    self.macs += n * Pb * d * d
            n_new = n_at[s - 1] - n
            if n_new:
                new = slice(n, n + n_new)
                p = positions[new]
                scale = fb.mlp_scales[s, p] if fb.mlp_scales is not None else None
                v = fb._read_backward(arch.layers[s].mlp_norm, vectors[new], scale)
                G[new].zero_()
                G[torch.arange(n, n + n_new, device=self.device), p] = v
            self._attention(s, G, n, n_new, Pb, positions)
        n = R
        dest, work = outs[-1]
        torch.bmm(self.tokens[:Pb, None, :], G[:n].permute(1, 2, 0), out=work.view(Pb, 1, n))
        self.macs += n * Pb * d
        for s, (dest, work) in outs.items():
            if work is not dest:
                dest.copy_(work)

    # An edge step is one batched product over positions (features padded to the most any position
    # has) when there are few rows, or when the padding adds at most this share of multiply-adds:
    # measured on 2 cores at 256 rows x 26 positions x 48 features, the batched product runs at ~185
    # GFLOP/s and one product per position at ~105, so up to ~75% of padding still pays.
    EDGE_BMM_BELOW = 64
    EDGE_BMM_MAX_PADDING = 0.6

    def _padded_features(self, src: int, out: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors [P, W, d] with each position's features padded to W rows, index [n_src] of each feature
        in the flattened [P * W]) for the batched edge step."""
        key = (src, out)
        if key not in self._padded:
            st = np.asarray(self.layout.feature_starts[src])
            counts = np.diff(st)
            W = self._pad_width(src)
            pos = np.repeat(np.arange(counts.size), counts)
            flat = pos * W + (np.arange(st[-1]) - st[pos])
            vec = self.features[key]
            pad = torch.zeros(counts.size * W, vec.shape[1], device=self.device, dtype=self.dtype)
            idx = torch.from_numpy(flat).to(self.device)
            pad[idx] = vec
            self._padded[key] = (pad.view(counts.size, W, -1), idx)
        return self._padded[key]

    def _pad_width(self, src: int) -> int:
        """W of `_padded_features(src, ·)`: the most features any position of source layer `src` has."""
        return max(1, int(np.diff(self.layout.feature_starts[src]).max(initial=0)))

    def _edges(self, s: int, G: torch.Tensor, n: int, Pb: int, outs) -> None:
        """Edge products at write layer s for the n started rows: every source written at s."""
        d = self.arch.d_model
        clt = self.tc.is_clt
        g_t = G[:n].permute(1, 2, 0)  # [P', d, n]: position q's rows as a strided [d, n] matrix
        for src in (range(s + 1) if clt else (s,)):
            if src not in outs:
                continue
            work = outs[src][1]
            st = self.layout.feature_starts[src]
            F = st[Pb]
            vec = self.features.get((src, s))
            if vec is not None and F:
                if n >= self.EDGE_BMM_BELOW and Pb * self._pad_width(src) > (1 + self.EDGE_BMM_MAX_PADDING) * F:
                    for q in range(Pb):
                        c0, c1 = st[q], st[q + 1]
                        if c1 == c0:
                            continue
                        gq = G[:n, q].T  # [d, n], strided
                        if clt:
                            work[c0:c1, :n].addmm_(vec[c0:c1], gq)
                        else:
                            torch.mm(vec[c0:c1], gq, out=work[c0:c1])
                    self.macs += F * n * d
                else:
                    pad, idx = self._padded_features(src, s)
                    W = pad.shape[1]
                    tmp = torch.bmm(pad[:Pb], g_t, out=self._buffer("edges", Pb * W * n).view(Pb, W, n))
                    flat = tmp.view(Pb * W, n)
                    if clt:
                        work[:F, :n].add_(flat[idx[:F]])
                    else:
                        torch.index_select(flat, 0, idx[:F], out=work[:F])
                    self.macs += Pb * W * n * d
            if src == s:  # this layer's error nodes, all positions in one batched product
                torch.bmm(self.errors[s][:Pb, None, :], g_t, out=work[F:F + Pb].view(Pb, 1, n))
                self.macs += Pb * n * d

    def _attention(self, s: int, G: torch.Tensor, n: int, n_new: int, Pb: int, positions: torch.Tensor) -> None:
        """G[:n] += attention^T of the started rows (all positions); rows [n, n + n_new) hold their
        injected covector at their own position only, so their pattern step is an outer product."""
        p = self.arch.layers[s]
        pattern, w_o, w_v = self.attn[s]
        H, Hkv, dh, d = p.n_heads, p.n_kv_heads, p.head_dim, self.arch.d_model
        rep = H // Hkv
        if n:
            M = n * Pb
            flat = G[:n].view(M, d)
            x = torch.mm(w_o.T, flat.T, out=self._buffer("heads", H * dh * M).view(H * dh, M))  # [H dh, (row, q)]
            y = torch.bmm(x.view(H, dh * n, Pb), pattern[:, :Pb, :Pb],
                          out=self._buffer("mixed", H * dh * M).view(H, dh * n, Pb))
            if rep > 1:
                y = torch.sum(y.view(Hkv, rep, dh * M), 1, out=self._buffer("kv", Hkv * dh * M).view(Hkv, dh * M))
            flat.addmm_(y.view(Hkv * dh, M).T, w_v)
            self.macs += M * d * H * dh + H * dh * n * Pb * Pb + M * Hkv * dh * d
        if n_new:
            new = slice(n, n + n_new)
            rows = torch.arange(n, n + n_new, device=self.device)
            pos = positions[new]
            g_mid = G[rows, pos]  # [n_new, d]: the injected covectors at their positions
            x = g_mid @ w_o  # [n_new, H dh]
            rowp = pattern[:, pos, :Pb].permute(1, 2, 0)  # [n_new, P', H]: each row's pattern row
            y = torch.mul(x.view(n_new, 1, H, dh), rowp[..., None],
                          out=self._buffer("outer", n_new * Pb * H * dh).view(n_new, Pb, H, dh))
            if rep > 1:
                y = y.view(n_new, Pb, Hkv, rep, dh).sum(3)
            G[new].view(n_new * Pb, d).addmm_(y.reshape(n_new * Pb, Hkv * dh), w_v)
            self.macs += n_new * (d * H * dh + Pb * H * dh + Pb * Hkv * dh * d)
