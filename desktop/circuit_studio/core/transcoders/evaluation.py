"""Measuring a transcoder set on held-out token windows (the training report, per layer).

`evaluate_transcoders` runs the set as saved (raw tensors, the set's own maths) and reports, per
layer: FVU of the write tensor, L0, features that never fire on these tokens, and the fraction of the
zero-ablation loss gap recovered when the transcoder replaces that layer's MLP at its write point
(BOS positions keep their true value in both runs, as in attribution). For a cross-layer set, layer
l's MLP output is replaced by the reconstruction from the features read at layers <= l.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import CircuitStudioError
from ..model.loading import ModelBundle
from ..model.replacement import read_point_value, removing_hooks
from ..progress import CancelToken, ProgressFn, check, report
from .activation_buffer import CHUNK_TOKENS, collect_reads_writes
from .loading import check_transcoders_fit
from .training_report import LayerReport, TrainingError
from .transcoder_set import TranscoderSet


def _ce_loss(logits: torch.Tensor, ids: torch.Tensor, z: int) -> tuple[float, int]:
    """Summed next-token loss from positions z.. and the number of predictions."""
    lg = logits[:, z:-1].float()
    tgt = ids[:, z + 1:].to(lg.device)
    loss = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="sum")
    return float(loss), tgt.numel()


@torch.no_grad()
def _mean_loss(bundle: ModelBundle, windows: torch.Tensor, hooks: Callable[[], list]) -> float:
    """Mean next-token loss on `windows` [N, T], each chunk run with the hook handles `hooks()` installs."""
    z = bundle.n_zeroed_positions
    total, count = 0.0, 0
    chunk = max(1, CHUNK_TOKENS // windows.shape[1])
    for c in range(0, windows.shape[0], chunk):
        ids = windows[c:c + chunk].to(bundle.device)
        with removing_hooks(hooks()):
            logits = bundle.model(ids).logits
        s, k = _ce_loss(logits, ids, z)
        total, count = total + s, count + k
    return total / max(1, count)


def _losses(bundle: ModelBundle, tc: TranscoderSet, windows: torch.Tensor, layer: int | None, mode: str) -> float:
    """Mean next-token loss on `windows` with `layer`'s write point clean, zeroed or substituted by the
    per-layer transcoder's reconstruction."""
    arch, z = bundle.arch, bundle.n_zeroed_positions
    if layer is None:
        return _mean_loss(bundle, windows, list)
    norm = arch.layers[layer].mlp_norm
    stash: dict[str, torch.Tensor] = {}

    def read_hook(mod, args, out):
        x = args[0]
        stash["x"] = read_point_value(norm, tc.feature_input_hook, x, out, norm.scale(x).to(x.device))

    def write_hook(mod, args, out):
        new = out.clone()
        if mode == "zero":
            new[:, z:] = 0
        else:
            x = stash["x"][:, z:].float()
            y = tc.encode(layer, x) @ tc.w_dec[layer] + tc.b_dec[layer]
            if tc.w_skip is not None:
                y = y + tc.skip(layer, x)
            new[:, z:] = y.to(out.dtype)
        return new

    return _mean_loss(bundle, windows, lambda: [
        norm.module.register_forward_hook(read_hook),
        arch.write_module(layer, tc.feature_output_hook).register_forward_hook(write_hook)])


def _clt_substituted_loss(bundle: ModelBundle, tc: TranscoderSet, windows: torch.Tensor, layer: int) -> float:
    """Loss with layer `layer`'s MLP output replaced by the CLT's reconstruction of it (features
    read at layers <= layer, from the clean reads of this run)."""
    arch, z = bundle.arch, bundle.n_zeroed_positions
    reads: dict[int, torch.Tensor] = {}

    def read_hook_for(src: int):
        norm = arch.layers[src].mlp_norm

        def read_hook(mod, args, out):
            x = args[0]
            reads[src] = read_point_value(norm, tc.feature_input_hook, x, out, norm.scale(x).to(x.device))[:, z:].float()
        return norm.module.register_forward_hook(read_hook)

    def write_hook(mod, args, out):
        y = tc.b_dec[layer].expand_as(reads[layer]).clone()
        for src in range(layer + 1):
            y = y + tc.encode(src, reads[src]) @ tc.w_dec[src][:, layer - src]
        new = out.clone()
        new[:, z:] = y.to(out.dtype)
        return new

    return _mean_loss(bundle, windows, lambda: [
        *(read_hook_for(src) for src in range(layer + 1)),
        arch.write_module(layer, tc.feature_output_hook).register_forward_hook(write_hook)])


@torch.no_grad()
def evaluate_transcoders(bundle: ModelBundle, tc: TranscoderSet, windows: torch.Tensor, *,
                         measure_loss: bool = True, max_tokens: int = 32768,
                         progress: ProgressFn | None = None,
                         cancel: CancelToken | None = None) -> tuple[LayerReport, ...]:
    """FVU, L0, never-firing features and loss recovered of `tc` on `windows` [N, T] (raw tensors,
    the set's own maths; BOS positions skipped; at most `max_tokens` tokens). Dead features here =
    features that never fire on these tokens. Raises TrainingError when the set does not fit."""
    return _evaluate(bundle, tc, windows, measure_loss=measure_loss, max_tokens=max_tokens,
                     progress=progress, cancel=cancel)[0]


def _evaluate(bundle: ModelBundle, tc: TranscoderSet, windows: torch.Tensor, *, measure_loss: bool,
              max_tokens: int, progress: ProgressFn | None,
              cancel: CancelToken | None) -> tuple[tuple[LayerReport, ...], torch.Tensor]:
    """`evaluate_transcoders`, plus which features fired [L, F]."""
    try:
        check_transcoders_fit(tc, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model,
                              model_name=bundle.name)
    except CircuitStudioError as e:
        raise TrainingError(e.message, e.hint) from e
    L, F = tc.n_layers, tc.n_features
    hooks = (tc.feature_input_hook, tc.feature_output_hook)
    reads, writes = collect_reads_writes(bundle, windows, list(range(L)), hooks, max_tokens, "Evaluating transcoders",
                             progress, cancel, bundle.device)
    tcf = tc.to(reads.device, torch.float32)
    acts = torch.stack([tcf.encode(l, reads[l]) for l in range(L)])  # [L, n, F]
    recon = tcf.reconstruct(acts, reads)  # [L, n, d]
    fired = (acts > 0).any(1)  # [L, F]
    n_win = min(windows.shape[0], math.ceil(max_tokens / (windows.shape[1] - bundle.n_zeroed_positions)))
    loss_windows = windows[:n_win]
    clean = _losses(bundle, tcf, loss_windows, None, "clean") if measure_loss else None
    out = []
    for l in range(L):
        check(cancel)
        report(progress, "Measuring loss recovered", l, L)
        err = (writes[l] - recon[l]).pow(2).sum()
        var = (writes[l] - writes[l].mean(0)).pow(2).sum()
        fvu = float(err / var.clamp(min=1e-30))
        l0 = float((acts[l] > 0).sum(-1).float().mean())
        dead = int((~fired[l]).sum())
        rec = zero = sub = None
        if measure_loss:
            zero = _losses(bundle, tcf, loss_windows, l, "zero")
            sub = (_clt_substituted_loss(bundle, tcf, loss_windows, l) if tcf.is_clt
                   else _losses(bundle, tcf, loss_windows, l, "substitute"))
            gap = zero - clean
            rec = (zero - sub) / gap if abs(gap) > 1e-6 else None
        out.append(LayerReport(l, fvu, l0, dead / F, dead, rec, clean, zero, sub))
    report(progress, "Measuring loss recovered", L, L)
    return tuple(out), fired
