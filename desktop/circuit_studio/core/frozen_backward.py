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

        self.attn_scales = cast(clean.attn_scales)
        self.post_attn_scales = cast(clean.post_attn_scales)
        self.mlp_scales = cast(clean.mlp_scales)
        self.post_mlp_scales = cast(clean.post_mlp_scales)
        self.final_scale = cast(clean.final_scale)
        self.patterns = [cast(p) for p in clean.patterns]  # [H, P, P]
        self.w_skip = cast(tc.w_skip)

    def run(self, targets: Targets, on_write: WriteGradFn) -> torch.Tensor:
        """Propagate a batch of target covectors down to the embeddings.

        Calls `on_write(l, g_write)` for every layer l below the deepest target, top down, and
        returns the gradient at the embedding output [B, P', d], where P' = last targeted position + 1.
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
            g_attn = g_mid
            if parts.post_attn_norm is not None:
                g_attn = parts.post_attn_norm.backward(g_mid, self.post_attn_scales[layer, :n_pos])
            g = g_mid + parts.attn_norm.backward(self._attention_backward(layer, g_attn, n_pos),
                                                 self.attn_scales[layer, :n_pos])
        return g

    def _read_backward(self, norm: Norm, g_read: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        hook = self.tc.feature_input_hook
        if hook == "mlp.hook_in":
            return norm.backward(g_read, scale)
        if hook == "ln2.hook_normalized":
            return norm.backward(g_read, scale, with_gain=False)
        return g_read  # hook_resid_mid

    def _attention_backward(self, layer: int, g_out: torch.Tensor, n_pos: int) -> torch.Tensor:
        """Transpose of x -> O(pattern @ V(x)) with a frozen pattern: [B, P', d] -> [B, P', d]."""
        p = self.arch.layers[layer]
        B = g_out.shape[0]
        w_o = p.w_o.to(self.dtype)
        w_v = p.w_v.to(self.dtype)
        g_heads = (g_out @ w_o).view(B, n_pos, p.n_heads, p.head_dim).transpose(1, 2)  # [B, H, P', dh]
        pattern = self.patterns[layer][:, :n_pos, :n_pos]  # [H, Q, K]
        g_v = pattern.transpose(-1, -2) @ g_heads  # [B, H, K, dh]
        if p.n_kv_heads != p.n_heads:  # grouped-query attention: heads sharing a value head add up
            g_v = g_v.view(B, p.n_kv_heads, p.n_heads // p.n_kv_heads, n_pos, p.head_dim).sum(2)
        g_v = g_v.transpose(1, 2).reshape(B, n_pos, p.n_kv_heads * p.head_dim)
        return g_v @ w_v
