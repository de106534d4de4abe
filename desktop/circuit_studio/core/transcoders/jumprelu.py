"""The trainable JumpReLU transcoder (per-layer or cross-layer), in normalised space.

A transcoder for layer l maps what the layer's MLP reads to what it writes through a wide, sparse
layer of features (spec §1.2):

    pre = x @ W_enc.T + b_enc ;  act = pre * (pre > threshold) ;  y = act @ W_dec + b_dec

`JumpReLUTranscoder` holds L such transcoders in the normalised space training works in (see
`training`), with the statistics that map raw tensors into it; `folded` folds both linear maps back
into the weights, so the saved set works on raw reads exactly as circuit-tracer applies it, with the
same pre-activations and thresholds, and `load_folded` is its inverse (to continue from a set).

The step function in JumpReLU and L0 has no useful gradient with respect to the threshold, so
`_JumpReLUEncoder` uses straight-through estimators with a rectangle kernel of bandwidth eps
(Rajamanoharan et al. 2024, "Jumping Ahead: improving reconstruction fidelity with JumpReLU sparse
autoencoders"):
    d act / d theta := -(theta / eps) * 1[|pre - theta| < eps / 2]
    d L0  / d theta := -(1 / eps)     * 1[|pre - theta| < eps / 2]
while the gradient with respect to `pre` is the true one (1[pre > theta] for act, 0 for L0).
Thresholds are learnt as log(theta), so they stay positive. Decoder rows start as random unit
directions and encoder rows as the same directions (encoder = decoder transpose), with b_enc = 0 and
b_dec = 0 in normalised space (= the mean output after folding). A CLT (`kind="clt"`) has one encoder
per layer; a feature read at layer l writes to every layer l' >= l.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .transcoder_set import TranscoderSet


class _JumpReLUEncoder(torch.autograd.Function):
    """Encoder and JumpReLU in one step, with the rectangle-kernel threshold gradients.

    Inputs xn [L, B, d], W_enc [L, F, d], b_enc [L, F], log_threshold [L, F]. Returns act [L, B, F],
    L0 per token [L, B] and which features fired in the batch [L, F] (no gradient). Fused so that
    only boolean/float masks, not the pre-activations, are kept for the backward pass.
    """

    @staticmethod
    def forward(ctx, xn, w_enc, b_enc, log_threshold, eps: float):
        theta = log_threshold.exp()[:, None]  # [L, 1, F]
        pre = torch.baddbmm(b_enc[:, None], xn, w_enc.transpose(1, 2))  # [L, B, F]
        on = pre > theta
        near = (pre - theta).abs_().lt_(eps / 2)  # rectangle kernel K((pre - theta) / eps), as 0./1.
        act = pre.mul_(on)
        ctx.save_for_backward(xn, on, near, theta)
        ctx.eps = eps
        fired = on.any(1)
        ctx.mark_non_differentiable(fired)
        return act, on.sum(-1, dtype=xn.dtype), fired

    @staticmethod
    def backward(ctx, g_act, g_l0, _g_fired):
        xn, on, near, theta = ctx.saved_tensors
        eps = ctx.eps
        g_pre = g_act * on  # true derivative of pre * 1[pre > theta] with respect to pre
        # d act/d theta := -(theta/eps) K ; d L0/d theta := -(1/eps) K
        g_theta = -(theta[:, 0] * (g_act * near).sum(1)) / eps
        if g_l0 is not None:
            g_theta = g_theta - torch.bmm(g_l0[:, None], near)[:, 0] / eps
        g_w = torch.bmm(g_pre.transpose(1, 2), xn)
        g_b = g_pre.sum(1)
        return None, g_w, g_b, g_theta * theta[:, 0], None


class JumpReLUTranscoder(nn.Module):
    """L transcoders in normalised space, with the statistics that fold them back to raw tensors.

    x_n = (x - mu_x) / sigma_x ; pre = x_n @ W_enc.T + b_enc ; y_n = act @ W_dec + b_dec ;
    y = y_n @ y_unproj + mu_y, where the training targets were y_n = (y - mu_y) @ y_proj
    (y_unproj = y_proj^-1; see `_target_transform`). Shapes: W_enc [L, F, d], b_enc/log_threshold
    [L, F], b_dec [L, d], y_proj/y_unproj [L, d, d]; W_dec [L, F, d] (PLT) or, for a CLT,
    W_dec_l [F, L - l, d] per source layer l.
    """

    def __init__(self, kind: str, n_layers: int, width: int, d: int, *, mu_x: torch.Tensor,
                 sigma_x: torch.Tensor, mu_y: torch.Tensor, y_proj: torch.Tensor, y_unproj: torch.Tensor,
                 skip: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__()
        L, F = n_layers, width
        self.kind = kind
        self.register_buffer("mu_x", mu_x.float().clone())  # [L, d]
        self.register_buffer("sigma_x", sigma_x.float().clone())  # [L]
        self.register_buffer("mu_y", mu_y.float().clone())  # [L, d]
        self.register_buffer("y_proj", y_proj.float().clone())  # [L, d, d]
        self.register_buffer("y_unproj", y_unproj.float().clone())  # [L, d, d]
        dev = mu_x.device
        dirs = torch.randn(L, F, d, generator=generator).to(dev)
        dirs /= dirs.norm(dim=-1, keepdim=True)
        self.W_enc = nn.Parameter(dirs.clone())
        self.b_enc = nn.Parameter(torch.zeros(L, F, device=dev))
        self.log_threshold = nn.Parameter(torch.full((L, F), math.log(0.1), device=dev))
        self.b_dec = nn.Parameter(torch.zeros(L, d, device=dev))
        if kind == "plt":
            self.W_dec = nn.Parameter(dirs.clone())
        else:
            self.W_dec = nn.ParameterList(
                [nn.Parameter(torch.cat([dirs[l, :, None], torch.zeros(F, L - l - 1, d, device=dev)], 1)
                              / (L - l)) for l in range(L)])
        if skip and kind != "plt":
            raise ValueError("skip connections exist only for per-layer transcoders")
        # y_n += x_n @ W_skip.T: a dense linear path beside the features (circuit-tracer's W_skip)
        self.W_skip = nn.Parameter(torch.zeros(L, d, d, device=dev)) if skip else None

    @property
    def n_layers(self) -> int:
        return int(self.W_enc.shape[0])

    @torch.no_grad()
    def normalise_(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 65536) -> None:
        """Raw reads and writes [L, N, d] -> normalised, in place (in chunks of tokens)."""
        x.sub_(self.mu_x[:, None]).div_(self.sigma_x[:, None, None])
        for i in range(0, y.shape[1], chunk):
            part = y[:, i:i + chunk]
            part.copy_(torch.bmm(part - self.mu_y[:, None], self.y_proj))

    def unnormalise_y(self, y_n: torch.Tensor) -> torch.Tensor:
        """Normalised targets or reconstructions [L, B, d] -> raw."""
        return torch.baddbmm(self.mu_y[:, None], y_n, self.y_unproj)

    def pre(self, xn: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.b_enc[:, None], xn, self.W_enc.transpose(1, 2))  # [L, B, F]

    def decode(self, act: torch.Tensor) -> torch.Tensor:
        """act [L, B, F] -> normalised reconstructions [L, B, d]."""
        if self.kind == "plt":
            return torch.baddbmm(self.b_dec[:, None], act, self.W_dec)
        L = self.n_layers
        outs = [self.b_dec[l].expand(act.shape[1], -1) for l in range(L)]
        for src in range(L):
            w = self.W_dec[src]  # [F, L - src, d]
            contrib = (act[src] @ w.reshape(w.shape[0], -1)).reshape(act.shape[1], L - src, -1)
            for j in range(L - src):
                outs[src + j] = outs[src + j] + contrib[:, j]
        return torch.stack(outs)

    def forward(self, xn: torch.Tensor, eps: float):
        """Normalised inputs [L, B, d] -> (reconstruction [L, B, d], L0 per token [L, B],
        features that fired in the batch [L, F])."""
        act, l0, fired = _JumpReLUEncoder.apply(xn, self.W_enc, self.b_enc, self.log_threshold, eps)
        y = self.decode(act)
        if self.W_skip is not None:
            y = y + torch.bmm(xn, self.W_skip.transpose(1, 2))
        return y, l0, fired

    @torch.no_grad()
    def reconstruct_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Raw reads [L, B, d] -> raw reconstructions [L, B, d] (the trained model, unfolded)."""
        xn = (x - self.mu_x[:, None]) / self.sigma_x[:, None, None]
        y_n, _, _ = self(xn, 1e-3)
        return self.unnormalise_y(y_n)

    @torch.no_grad()
    def folded(self, feature_input_hook: str, feature_output_hook: str, scan: str = "") -> TranscoderSet:
        """The TranscoderSet that computes the same function on raw tensors (spec §1.2 maths)."""
        w_enc = self.W_enc / self.sigma_x[:, None, None]  # pre = x @ w_enc.T + b_enc
        b_enc = self.b_enc - torch.einsum("lfd,ld->lf", w_enc, self.mu_x)
        b_dec = self.unnormalise_y(self.b_dec[:, None])[:, 0]
        un = self.y_unproj
        w_skip = None
        if self.W_skip is not None:  # raw term x @ w_skip.T = ((x - mu_x) / sigma_x) @ W_skip.T @ y_unproj
            w_skip = (un.transpose(1, 2) @ self.W_skip) / self.sigma_x[:, None, None]
            b_dec = b_dec - torch.einsum("ld,led->le", self.mu_x, w_skip)
        if self.kind == "plt":
            w_dec = tuple((self.W_dec[l] @ un[l]).contiguous() for l in range(self.n_layers))
        else:  # slot j of source layer l writes to layer l + j
            w_dec = tuple(torch.einsum("fjd,jde->fje", w, un[l:]).contiguous() for l, w in enumerate(self.W_dec))
        return TranscoderSet(self.kind, feature_input_hook, feature_output_hook, w_enc.contiguous(),
                             b_enc.contiguous(), self.log_threshold.exp().contiguous(), w_dec,
                             b_dec.contiguous(), None if w_skip is None else w_skip.contiguous(), scan)

    @torch.no_grad()
    def load_folded(self, tc: TranscoderSet, layers: list[int]) -> None:
        """Start from an existing set's `layers` (the inverse of `folded`)."""
        w_enc = torch.stack([tc.w_enc[l] for l in layers]).to(self.W_enc)
        self.W_enc.copy_(w_enc * self.sigma_x[:, None, None])
        self.b_enc.copy_(tc.b_enc[layers].to(self.b_enc) + torch.einsum("lfd,ld->lf", w_enc, self.mu_x))
        thr = tc.threshold[layers] if tc.threshold is not None else torch.full_like(tc.b_enc[layers], 1e-4)
        self.log_threshold.copy_(thr.to(self.b_enc).clamp(min=1e-6).log())
        b_dec = tc.b_dec[layers].to(self.b_dec)
        if self.W_skip is not None:
            w_skip = (torch.stack([tc.w_skip[l] for l in layers]) if tc.w_skip is not None else torch.zeros_like(self.W_skip)).to(self.W_skip)
            self.W_skip.copy_(self.y_proj.transpose(1, 2) @ w_skip * self.sigma_x[:, None, None])
            b_dec = b_dec + torch.einsum("ld,led->le", self.mu_x, w_skip)
        self.b_dec.copy_(torch.bmm((b_dec - self.mu_y)[:, None], self.y_proj)[:, 0])
        pr = self.y_proj
        if self.kind == "plt":
            self.W_dec.copy_(torch.bmm(torch.stack([tc.w_dec[l] for l in layers]).to(self.W_enc), pr))
        else:
            for l, w in enumerate(self.W_dec):
                w.copy_(torch.einsum("fjd,jde->fje", tc.w_dec[l].to(w), pr[l:]))
