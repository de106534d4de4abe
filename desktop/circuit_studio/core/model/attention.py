"""An attention implementation that can record attention patterns and replay them frozen.

Models are loaded with `attn_implementation="circuit_studio"`. Outside a `patterns(...)` block it
calls the family's own eager attention, so the model behaves exactly like the HF model. Inside:

* `patterns(record=store)` stores every layer's softmax pattern `[B, H, Q, K]` (detached) in `store`;
* `patterns(frozen=store)` ignores queries and keys and mixes values with the stored patterns,
  which is how circuit-tracer freezes attention (spec §1.6, §7).

A registered attention function keeps this working for every family without editing model code.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

ATTENTION_IMPLEMENTATION = "circuit_studio"

_state = threading.local()


def _eager_of(module: torch.nn.Module):
    return sys.modules[type(module).__module__].eager_attention_forward


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _attention(module, query, key, value, attention_mask, **kwargs):
    mode = getattr(_state, "mode", None)
    if mode == "frozen":
        pattern = _state.store[module.layer_idx]  # [b, H, Q, K], b is 1 or the batch
        q_len, k_len = query.shape[-2], value.shape[-2]
        pattern = pattern[..., -q_len:, :k_len].to(value.dtype)  # a KV-cached step sees its last rows
        v = _repeat_kv(value, query.shape[1] // value.shape[1])
        return torch.matmul(pattern, v).transpose(1, 2).contiguous(), pattern
    out, weights = _eager_of(module)(module, query, key, value, attention_mask, **kwargs)
    if mode == "record":
        _state.store[module.layer_idx] = weights.detach()
    return out, weights


@contextmanager
def patterns(*, record: dict | None = None, frozen: dict | None = None) -> Iterator[None]:
    """Record attention patterns into `record`, or replay them from `frozen` (dict layer -> pattern)."""
    if (record is None) == (frozen is None):
        raise ValueError("give exactly one of record= or frozen=")
    previous = getattr(_state, "mode", None), getattr(_state, "store", None)
    _state.mode, _state.store = ("record", record) if record is not None else ("frozen", frozen)
    try:
        yield
    finally:
        _state.mode, _state.store = previous


_registered = False


def register_attention() -> None:
    """Register the implementation (and the eager mask it needs) with transformers, once."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_IMPLEMENTATION, eager_mask)
    _registered = True
