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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .families import Architecture, Norm
from .replacement import CleanRun
from .transcoders import TranscoderSet

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
