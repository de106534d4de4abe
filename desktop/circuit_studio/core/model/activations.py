"""Batched collection of what transcoders read and write, for training them and indexing features.

Attribution records one prompt in detail (`replacement.record_clean_run`); training and indexing
need the read and write tensors of many sequences at once, and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .families import READ_HOOKS, WRITE_HOOKS
from .loading import ModelBundle
from .replacement import read_point_value, removing_hooks


@dataclass(frozen=True)
class LayerActivations:
    """reads/writes [L, B, T, d] at `feature_input_hook` / `feature_output_hook`; logits [B, T, V] if asked."""

    reads: torch.Tensor
    writes: torch.Tensor
    logits: torch.Tensor | None


@torch.no_grad()
def collect_activations(bundle: ModelBundle, ids: torch.Tensor, *, feature_input_hook: str,
                        feature_output_hook: str, layers: list[int] | None = None,
                        attention_mask: torch.Tensor | None = None, want_logits: bool = False) -> LayerActivations:
    """Run a batch `ids` [B, T] once; return the read and write tensors of `layers` (default all)."""
    if feature_input_hook not in READ_HOOKS or feature_output_hook not in WRITE_HOOKS:
        raise ValueError(f"unknown hook points {feature_input_hook!r} -> {feature_output_hook!r}")
    arch = bundle.arch
    layers = list(range(arch.n_layers)) if layers is None else layers
    reads: dict[int, torch.Tensor] = {}
    writes: dict[int, torch.Tensor] = {}
    handles = []
    for i in layers:
        norm = arch.layers[i].mlp_norm

        def read_hook(mod, args, out, i=i, norm=norm):
            x = args[0]
            reads[i] = read_point_value(norm, feature_input_hook, x, out, norm.scale(x).to(x.device))

        def write_hook(mod, args, out, i=i):
            writes[i] = out

        handles.append(norm.module.register_forward_hook(read_hook))
        handles.append(arch.write_module(i, feature_output_hook).register_forward_hook(write_hook))
    with removing_hooks(handles):
        out = bundle.model(ids.to(bundle.device), attention_mask=None if attention_mask is None
                           else attention_mask.to(bundle.device))
    return LayerActivations(
        reads=torch.stack([reads[i] for i in layers]), writes=torch.stack([writes[i] for i in layers]),
        logits=out.logits.float() if want_logits else None)
