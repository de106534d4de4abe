"""Transcoders: per-layer (PLT) and cross-layer (CLT) sets in one layout, and their maths.

A transcoder set reads the residual stream at `feature_input_hook` of every layer and writes an
approximation of the MLP output at `feature_output_hook` (hook names as in circuit-tracer, see
`families.READ_HOOKS` and `families.WRITE_HOOKS`). Maths (spec §1.2):

    pre  = x @ W_enc[l].T + b_enc[l]                       # [.., F]
    act  = relu(pre)                                       # "relu"
         | pre * (pre > threshold[l])                      # "jumprelu", strict >
         | pre * 1[f among the k largest pre]              # "topk" (circuit-tracer's TopK: no ReLU,
                                                           #   kept values keep their sign)
         | relu(pre) * 1[f among the k largest]            # "relu_topk" (EleutherAI sparsify)
    PLT:  y[l]  = act[l] @ W_dec[l] + b_dec[l] (+ x[l] @ W_skip[l].T)
    CLT:  y[l'] = sum_{l <= l'} act[l] @ W_dec[l][:, l' - l] + b_dec[l'] (+ x[l'] @ W_skip[l'].T)

Weights are per-layer tensors in the dtype and on the device they were loaded to; for released
sets they are memory-mapped views of the files (`weight_files`). Every method casts the weights it
touches to the dtype and device of its input, a chunk at a time, so a 131,072-wide bfloat16 set is
never copied whole; decoder rows are gathered only for the features asked for.

Reading folders lives in `transcoder_loading`; this module knows nothing about file formats.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import weight_files

if TYPE_CHECKING:  # torch is imported where used
    import torch

ACTIVATIONS = ("jumprelu", "relu", "topk", "relu_topk")
_ACTIVATION_NAMES = {"jumprelu": "JumpReLU", "relu": "ReLU", "topk": "TopK", "relu_topk": "TopK (ReLU)"}
_CHUNK_ELEMENTS = 1 << 24  # weights cast per chunk: 64 MB of float32 at a time


def _per_layer(t) -> tuple[torch.Tensor, ...] | None:
    import torch

    if t is None:
        return None
    return tuple(t.unbind(0)) if isinstance(t, torch.Tensor) else tuple(t)


@dataclass(frozen=True, eq=False)
class TranscoderSet:
    """Weights of a whole transcoder set. L layers, F features per layer, d = d_model.

    `w_enc[l]` is `[F, d]`; `w_dec[l]` is `[F, d]` for a PLT and `[F, L - l, d]` for a CLT (slot j
    writes to layer l + j); `w_skip[l]` is `[d, d]` applied as `x @ w_skip[l].T`. Stacked tensors
    `[L, ...]` are accepted for the per-layer fields and kept as tuples of layers.
    `files[l]` lists the weight files behind layer l (empty for sets built in memory).
    """

    kind: str  # "plt" | "clt"
    feature_input_hook: str
    feature_output_hook: str
    w_enc: tuple[torch.Tensor, ...]  # L x [F, d]
    b_enc: torch.Tensor  # [L, F]
    threshold: torch.Tensor | None  # [L, F]; only for "jumprelu"
    w_dec: tuple[torch.Tensor, ...]  # L x [F, d] (PLT) or [F, L - l, d] (CLT)
    b_dec: torch.Tensor  # [L, d]
    w_skip: tuple[torch.Tensor, ...] | None = None  # L x [d, d]
    scan: str = ""
    source: Path | None = None
    activation: str = ""  # one of ACTIVATIONS; "" = jumprelu with a threshold, else relu
    k: int | None = None  # for the top-k activations
    files: tuple[tuple[Path, ...], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "w_enc", _per_layer(self.w_enc))
        object.__setattr__(self, "w_dec", _per_layer(self.w_dec))
        object.__setattr__(self, "w_skip", _per_layer(self.w_skip))
        act = self.activation or ("jumprelu" if self.threshold is not None else "relu")
        object.__setattr__(self, "activation", act)
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}")
        if (act == "jumprelu") != (self.threshold is not None):
            raise ValueError("a threshold goes with the jumprelu activation, and only with it")
        if act in ("topk", "relu_topk") and not (isinstance(self.k, int) and self.k > 0):
            raise ValueError(f"the {act} activation needs a positive k (got {self.k!r})")

    @property
    def n_layers(self) -> int:
        return len(self.w_enc)

    @property
    def n_features(self) -> int:
        return int(self.w_enc[0].shape[0])

    @property
    def d_model(self) -> int:
        return int(self.w_enc[0].shape[1])

    @property
    def is_clt(self) -> bool:
        return self.kind == "clt"

    @property
    def activation_name(self) -> str:
        name = _ACTIVATION_NAMES[self.activation]
        return f"{name} k={self.k}" if self.k is not None else name

    @property
    def dtype(self) -> torch.dtype:
        return self.w_enc[0].dtype

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "TranscoderSet":
        """A copy with every weight materialised on `device` in `dtype`."""
        def mv(t):
            if t is None:
                return None
            if isinstance(t, tuple):
                return tuple(w.to(device=device, dtype=dtype) for w in t)
            return t.to(device=device, dtype=dtype)

        return TranscoderSet(self.kind, self.feature_input_hook, self.feature_output_hook,
                             mv(self.w_enc), mv(self.b_enc), mv(self.threshold), mv(self.w_dec),
                             mv(self.b_dec), mv(self.w_skip), self.scan, self.source, self.activation,
                             self.k, self.files)

    def release_layer(self, layer: int) -> None:
        """Let the kernel take back the file pages of `layer` (memory-mapped sets only)."""
        if self.files:
            weight_files.drop_pages(self.files[layer])

    # ---- maths ----
    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x [.., d] at the read point of `layer` -> pre-activations [.., F], in x's dtype."""
        import torch

        w = self.w_enc[layer]
        b = self.b_enc[layer].to(device=x.device, dtype=x.dtype)
        F = w.shape[0]
        step = max(1, _CHUNK_ELEMENTS // max(1, w.shape[1]))
        if step >= F:
            return x @ w.to(device=x.device, dtype=x.dtype).T + b
        out = torch.empty(*x.shape[:-1], F, device=x.device, dtype=x.dtype)
        for s in range(0, F, step):
            out[..., s: s + step] = x @ w[s: s + step].to(device=x.device, dtype=x.dtype).T
        return out.add_(b)

    def activate(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        import torch

        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            return pre * (pre > self.threshold[layer].to(device=pre.device, dtype=pre.dtype))
        base = torch.relu(pre) if self.activation == "relu_topk" else pre
        k = min(self.k, pre.shape[-1])
        idx = torch.topk(pre, k, dim=-1).indices
        gate = torch.zeros_like(pre).scatter_(-1, idx, 1.0)
        return base * gate

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x [.., d] -> activations [.., F]."""
        return self.activate(layer, self.pre_activations(layer, x))

    def encoder_rows(self, layers: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Encoder rows [n, d] of (layer, feature) pairs, in the stored dtype on the weights' device."""
        import torch

        out = torch.empty(layers.shape[0], self.d_model, dtype=self.dtype, device=self.w_enc[0].device)
        layers, features = layers.cpu(), features.cpu()
        for layer in torch.unique(layers).tolist():
            sel = torch.nonzero(layers == layer).flatten()
            out[sel.to(out.device)] = self.w_enc[layer][features[sel].to(self.w_enc[layer].device)]
        return out

    def decoder_rows(self, layer: int, features: torch.Tensor, out_layer: int) -> torch.Tensor:
        """Decoder vectors [n, d] of `features` (ints, read at `layer`) as written to `out_layer`,
        in the stored dtype, on the device of `features`."""
        w = self.w_dec[layer]
        idx = features.to(w.device)
        if self.is_clt:
            rows = w[idx, out_layer - layer]
        else:
            assert out_layer == layer, "a per-layer transcoder writes only to its own layer"
            rows = w[idx]
        return rows.to(features.device)

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """The skip term x @ W_skip[l].T [.., d], or None when the set has no skip matrices."""
        if self.w_skip is None:
            return None
        return x @ self.w_skip[layer].to(device=x.device, dtype=x.dtype).T

    def reconstruct(self, acts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """acts [L, P, F] and read tensors x [L, P, d] -> reconstructed outputs [L, P, d].

        Only the decoder rows of features active somewhere are read (sparse activations)."""
        import torch

        L = self.n_layers
        out = self.b_dec[:, None, :].to(device=acts.device, dtype=acts.dtype).expand(L, acts.shape[1], -1).clone()
        for src in range(L):
            live = torch.nonzero(acts[src].any(0)).flatten()
            a = acts[src][:, live]  # [P, n]
            for dst in (range(src, L) if self.is_clt else (src,)):
                if live.numel():
                    out[dst] += a @ self.decoder_rows(src, live, dst).to(a.dtype)
            s = self.skip(src, x[src])
            if s is not None:
                out[src] += s
        return out
