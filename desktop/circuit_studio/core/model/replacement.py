"""Running the model as a local replacement model: one recorded clean pass, and frozen re-runs.

`record_clean_run` does the single ordinary forward pass attribution starts from (spec §3.1) and
keeps what the frozen linearisation needs: attention patterns, every norm's scale, the tensors at
the transcoders' read and write points, the token embeddings and the logits.

`run_frozen` re-runs the real HF modules with some of those quantities held at their clean values
(attention patterns, norm scales, MLP outputs of constrained layers) and with vectors added at the
write points. It is the ground truth that attribution edges are tested against, and the engine
behind interventions.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .attention import patterns
from .families import READ_HOOKS, WRITE_HOOKS, Norm
from .loading import ModelBundle
from ..transcoders.transcoder_set import TranscoderSet


@dataclass(frozen=True, eq=False)
class CleanRun:
    """One prompt's clean forward pass. L layers, P positions, H heads, d = d_model, V = vocab.

    Scales are `[L, P, 1]` float32 (None for norms the family lacks); patterns `[H, P, P]` per layer.
    """

    input_ids: torch.Tensor  # [P]
    logits: torch.Tensor  # [P, V] float32, after any soft-cap (what the model predicts)
    token_vectors: torch.Tensor  # [P, d] embedding output: what each token adds to the residual stream
    patterns: tuple[torch.Tensor, ...]
    attn_scales: torch.Tensor
    post_attn_scales: torch.Tensor | None
    mlp_scales: torch.Tensor
    post_mlp_scales: torch.Tensor | None
    final_scale: torch.Tensor  # [P, 1]
    reads: torch.Tensor  # [L, P, d] at feature_input_hook
    writes: torch.Tensor  # [L, P, d] true MLP output at feature_output_hook


@contextmanager
def removing_hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def read_point_value(norm: Norm, hook: str, norm_in: torch.Tensor, norm_out: torch.Tensor, scale: torch.Tensor):
    if hook == "mlp.hook_in":
        return norm_out
    if hook == "ln2.hook_normalized":
        return norm.normalized(norm_in, scale).to(norm_in.dtype)
    return norm_in  # hook_resid_mid


def _check_hooks(tc: TranscoderSet) -> None:
    if tc.feature_input_hook not in READ_HOOKS or tc.feature_output_hook not in WRITE_HOOKS:
        raise ValueError(f"unknown hook points {tc.feature_input_hook!r} -> {tc.feature_output_hook!r}")


@torch.no_grad()
def record_clean_run(bundle: ModelBundle, ids: torch.Tensor, tc: TranscoderSet) -> CleanRun:
    """Run `ids` [P] once and record what attribution needs (batch of one)."""
    _check_hooks(tc)
    arch = bundle.arch
    L = arch.n_layers
    scales: dict[tuple[str, int], torch.Tensor] = {}
    reads: list[torch.Tensor | None] = [None] * L
    writes: list[torch.Tensor | None] = [None] * L
    got: dict[str, torch.Tensor] = {}
    handles = []

    def scale_hook(name: str, layer: int, norm: Norm, read: bool):
        def hook(mod, args, out):
            x = args[0]
            s = norm.scale(x)[0]
            scales[name, layer] = s
            if read:
                reads[layer] = read_point_value(norm, tc.feature_input_hook, x, out, s.to(x.device))[0]
        return hook

    for i, layer in enumerate(arch.layers):
        handles.append(layer.attn_norm.module.register_forward_hook(scale_hook("attn", i, layer.attn_norm, False)))
        handles.append(layer.mlp_norm.module.register_forward_hook(scale_hook("mlp", i, layer.mlp_norm, True)))
        for name, norm in (("post_attn", layer.post_attn_norm), ("post_mlp", layer.post_mlp_norm)):
            if norm is not None:
                handles.append(norm.module.register_forward_hook(scale_hook(name, i, norm, False)))

        def write_hook(mod, args, out, i=i):
            writes[i] = out[0]
        handles.append(arch.write_module(i, tc.feature_output_hook).register_forward_hook(write_hook))
    handles.append(arch.final_norm.module.register_forward_hook(
        lambda mod, args, out: got.__setitem__("final", arch.final_norm.scale(args[0])[0])))
    handles.append(arch.embed.register_forward_hook(lambda mod, args, out: got.__setitem__("embed", out[0])))

    store: dict[int, torch.Tensor] = {}
    with removing_hooks(handles), patterns(record=store):
        logits = bundle.model(ids[None].to(bundle.device)).logits[0].float()

    def stack(name: str) -> torch.Tensor | None:
        return torch.stack([scales[name, i] for i in range(L)]) if (name, 0) in scales else None

    return CleanRun(
        input_ids=ids.cpu(), logits=logits, token_vectors=got["embed"],
        patterns=tuple(store[i][0] for i in range(L)),
        attn_scales=stack("attn"), post_attn_scales=stack("post_attn"), mlp_scales=stack("mlp"),
        post_mlp_scales=stack("post_mlp"), final_scale=got["final"],
        reads=torch.stack(reads), writes=torch.stack(writes),
    )


@dataclass(frozen=True)
class FrozenOutput:
    """What a (frozen) re-run returns: logits (after soft-cap) [P, V], the final-norm output [P, d]
    (whose product with the unembedding is the pre-soft-cap logit), the read tensors [L, P, d], and
    the KV cache when one was asked for."""

    logits: torch.Tensor
    final_hidden: torch.Tensor
    reads: torch.Tensor
    past_key_values: object = None


# (layer, read tensor [P, d] of this run) -> vector [P, d] to add at the layer's write point, or None
DeltaFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]


@torch.no_grad()
def run_frozen(bundle: ModelBundle, clean: CleanRun | None, tc: TranscoderSet, *,
               write_deltas: dict[int, torch.Tensor] | DeltaFn | None = None, embed_delta: torch.Tensor | None = None,
               freeze_attention: bool = True, freeze_norms: bool = True,
               constrained_layers: set[int] | frozenset = frozenset(), ids: torch.Tensor | None = None,
               past_key_values=None, use_cache: bool = False) -> FrozenOutput:
    """Run the model on `ids` (default: the clean prompt) with the real HF modules, adding
    `write_deltas` at the layers' write points and `embed_delta` [P, d] to the token embeddings.

    `write_deltas` is either fixed vectors per layer or a function of the layer and its read tensor
    in this run (interventions compute their deltas from the current activations). What is frozen
    comes from `clean`: `freeze_attention` replays its patterns, `freeze_norms` its norm scales; a
    constrained layer's write point is held at its clean value plus the change of the transcoder's
    skip term (so no effect travels through that MLP) plus its delta. With nothing frozen or
    constrained, `clean` may be None (e.g. a KV-cached generation step).
    """
    arch = bundle.arch
    L = arch.n_layers
    if clean is None and (freeze_attention or freeze_norms or constrained_layers):
        raise ValueError("freezing needs the clean run")
    ids = clean.input_ids if ids is None else ids
    if write_deltas is None:
        delta_of: DeltaFn = lambda layer, read: None  # noqa: E731
    elif callable(write_deltas):
        delta_of = write_deltas
    else:
        fixed = write_deltas
        delta_of = lambda layer, read: fixed.get(layer)  # noqa: E731
    reads: list[torch.Tensor | None] = [None] * L
    got: dict[str, torch.Tensor] = {}
    handles = []

    def frozen_norm(norm: Norm, scale: torch.Tensor):
        return lambda mod, args, out: norm.apply(args[0], scale[None].to(args[0].device))

    for i, layer in enumerate(arch.layers):
        if freeze_norms:
            for norm, scale in ((layer.attn_norm, clean.attn_scales), (layer.post_attn_norm, clean.post_attn_scales),
                                (layer.mlp_norm, clean.mlp_scales), (layer.post_mlp_norm, clean.post_mlp_scales)):
                if norm is not None:
                    handles.append(norm.module.register_forward_hook(frozen_norm(norm, scale[i])))

        def read_hook(mod, args, out, i=i, norm=layer.mlp_norm):
            s = clean.mlp_scales[i][None] if freeze_norms else norm.scale(args[0])
            reads[i] = read_point_value(norm, tc.feature_input_hook, args[0], out, s.to(args[0].device))[0]
        # registered after the freezing hook, so it sees the frozen output
        handles.append(layer.mlp_norm.module.register_forward_hook(read_hook))

        def write_hook(mod, args, out, i=i):
            new = out[0]
            if i in constrained_layers:
                new = clean.writes[i].clone()
                skip_now, skip_clean = tc.skip(i, reads[i]), tc.skip(i, clean.reads[i])
                if skip_now is not None:
                    new = new + skip_now - skip_clean
            delta = delta_of(i, reads[i])
            if delta is not None:
                new = new + delta.to(new)
            return new[None]
        handles.append(arch.write_module(i, tc.feature_output_hook).register_forward_hook(write_hook))
    if embed_delta is not None:
        handles.append(arch.embed.register_forward_hook(lambda mod, args, out: out + embed_delta.to(out)))
    if freeze_norms:
        handles.append(arch.final_norm.module.register_forward_hook(frozen_norm(arch.final_norm, clean.final_scale)))
    handles.append(arch.final_norm.module.register_forward_hook(
        lambda mod, args, out: got.__setitem__("final", out[0])))

    with ExitStack() as stack:
        stack.enter_context(removing_hooks(handles))
        if freeze_attention:
            stack.enter_context(patterns(frozen={i: p[None] for i, p in enumerate(clean.patterns)}))
        out = bundle.model(ids[None].to(bundle.device), past_key_values=past_key_values, use_cache=use_cache)
    return FrozenOutput(logits=out.logits[0].float(), final_hidden=got["final"], reads=torch.stack(reads),
                        past_key_values=out.past_key_values if use_cache else None)
