"""Reads and writes of the transcoders' hook points over token windows, BOS positions skipped: the
activation buffer training draws batches from, and the tensors evaluation measures on (spec §1.3:
no features at BOS)."""

from __future__ import annotations

import math

import torch

from ..model.activations import collect_activations
from ..model.loading import ModelBundle
from ..progress import CancelToken, ProgressFn, check, report

CHUNK_TOKENS = 8192  # tokens per forward pass when collecting activations


def collect_reads_writes(bundle: ModelBundle, windows: torch.Tensor, layers: list[int], hooks: tuple[str, str],
             n_tokens: int, phase: str, progress: ProgressFn | None, cancel: CancelToken | None,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads and writes [len(layers), n, d] (float32) of the first windows, BOS positions skipped."""
    z = bundle.n_zeroed_positions
    per_window = windows.shape[1] - z
    n_win = min(windows.shape[0], math.ceil(n_tokens / per_window))
    n = min(n_tokens, n_win * per_window)
    d = bundle.arch.d_model
    reads = torch.empty(len(layers), n, d, device=device)
    writes = torch.empty(len(layers), n, d, device=device)
    chunk = max(1, CHUNK_TOKENS // windows.shape[1])
    n_chunks = math.ceil(n_win / chunk)
    filled = 0
    for c in range(n_chunks):
        check(cancel)
        report(progress, phase, c, n_chunks)
        ids = windows[c * chunk:(c + 1) * chunk]
        acts = collect_activations(bundle, ids, feature_input_hook=hooks[0], feature_output_hook=hooks[1],
                                   layers=layers)
        r = acts.reads[:, :, z:].reshape(len(layers), -1, d)
        w = acts.writes[:, :, z:].reshape(len(layers), -1, d)
        take = min(r.shape[1], n - filled)
        reads[:, filled:filled + take] = r[:, :take].float()
        writes[:, filled:filled + take] = w[:, :take].float()
        filled += take
    report(progress, phase, n_chunks, n_chunks)
    return reads, writes
