"""Transcoders: per-layer (PLT) and cross-layer (CLT) sets in one layout, and their maths.

A transcoder set reads the residual stream at `feature_input_hook` of every layer and writes an
approximation of the MLP output at `feature_output_hook` (hook names as in circuit-tracer, see
`families.READ_HOOKS` and `families.WRITE_HOOKS`). Maths (spec §1.2):

    pre  = x @ W_enc[l].T + b_enc[l]                       # [.., F]
    act  = relu(pre)  or  pre * (pre > threshold[l])       # JumpReLU, strict >
    PLT:  y[l]  = act[l] @ W_dec[l] + b_dec[l] (+ x[l] @ W_skip[l].T)
    CLT:  y[l'] = sum_{l <= l'} act[l] @ W_dec[l][:, l' - l] + b_dec[l']

Reading folders lives in `transcoder_loading`; this module knows nothing about files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True, eq=False)
class TranscoderSet:
    """Weights of a whole transcoder set. L layers, F features per layer, d = d_model.

    `w_dec[l]` is `[F, d]` for a PLT and `[F, L - l, d]` for a CLT (slot j writes to layer l + j).
    `w_skip` is `[L, d, d]` applied as `x @ w_skip[l].T` (PLT only; CLT files carry no skip).
    """

    kind: str  # "plt" | "clt"
    feature_input_hook: str
    feature_output_hook: str
    w_enc: torch.Tensor  # [L, F, d]
    b_enc: torch.Tensor  # [L, F]
    threshold: torch.Tensor | None  # [L, F]; None = ReLU
    w_dec: tuple[torch.Tensor, ...]  # L tensors, [F, d] (PLT) or [F, L - l, d] (CLT)
    b_dec: torch.Tensor  # [L, d]
    w_skip: torch.Tensor | None = None  # [L, d, d]
    scan: str = ""
    source: Path | None = None

    @property
    def n_layers(self) -> int:
        return int(self.w_enc.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.w_enc.shape[1])

    @property
    def d_model(self) -> int:
        return int(self.w_enc.shape[2])

    @property
    def is_clt(self) -> bool:
        return self.kind == "clt"

    @property
    def activation_name(self) -> str:
        return "JumpReLU" if self.threshold is not None else "ReLU"

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "TranscoderSet":
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return TranscoderSet(self.kind, self.feature_input_hook, self.feature_output_hook,
                             mv(self.w_enc), mv(self.b_enc), mv(self.threshold),
                             tuple(mv(w) for w in self.w_dec), mv(self.b_dec), mv(self.w_skip),
                             self.scan, self.source)

    # ---- maths ----
    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x [.., d] at the read point of `layer` -> pre-activations [.., F]."""
        return x @ self.w_enc[layer].T + self.b_enc[layer]

    def activate(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            return torch.relu(pre)
        return pre * (pre > self.threshold[layer])

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x [.., d] -> activations [.., F]."""
        return self.activate(layer, self.pre_activations(layer, x))

    def decoder_rows(self, layer: int, features: torch.Tensor, out_layer: int) -> torch.Tensor:
        """Decoder vectors [n, d] of `features` (ints, read at `layer`) as written to `out_layer`."""
        if self.is_clt:
            return self.w_dec[layer][features, out_layer - layer]
        assert out_layer == layer, "a per-layer transcoder writes only to its own layer"
        return self.w_dec[layer][features]

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """The skip term x @ W_skip[l].T [.., d], or None when the set has no skip matrices."""
        return None if self.w_skip is None else x @ self.w_skip[layer].T

    def reconstruct(self, acts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """acts [L, P, F] and read tensors x [L, P, d] -> reconstructed outputs [L, P, d]."""
        L = self.n_layers
        out = self.b_dec[:, None, :].expand(L, acts.shape[1], -1).clone()
        for src in range(L):
            if self.is_clt:
                # [P, F] x [F, L - src, d] -> [L - src, P, d]
                out[src:] += torch.einsum("pf,fjd->jpd", acts[src], self.w_dec[src])
            else:
                out[src] += acts[src] @ self.w_dec[src]
            s = self.skip(src, x[src])
            if s is not None:
                out[src] += s
        return out
