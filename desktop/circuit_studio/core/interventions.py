"""Interventions: set transcoder features to chosen activations and run the model (spec §7).

Semantics are circuit-tracer's `feature_intervention`:

* each `Intervention(layer, position, feature, value)` *sets* the feature's activation: the
  difference between `value` and the feature's current activation, times its decoder row, is
  added at the layer's write point (a cross-layer transcoder adds it at every layer it writes to);
* "current" means as computed in the intervened run itself, so earlier interventions move later
  ones' baselines, and effects travel through the real later MLPs;
* `freeze_attention` (default) replays the clean run's attention patterns;
* `constrained_layers` additionally hold those layers' MLP outputs at their clean values (plus
  the skip term's change), compute deltas from the clean activations and add them only inside
  that range; if it covers every layer, norm scales are frozen too and the result is the direct
  effect an attribution graph predicts (compare pre-activations: `apply_activation_function=False`).

`generate` continues the text greedily: the freezes apply to the first new token only; later
tokens use the KV cache and only open-ended interventions (`position=slice(k, None)`), which then
apply to each generated token.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from .errors import CircuitStudioError
from .model_loading import ModelBundle, tokenize_prompt
from .replacement import CleanRun, record_clean_run, run_frozen
from .transcoders import TranscoderSet


class InterventionError(CircuitStudioError):
    """An intervention that cannot be applied (feature or position out of range, bad value)."""


@dataclass(frozen=True)
class Intervention:
    layer: int
    position: int | slice  # a slice with stop=None is open-ended: it also applies to generated tokens
    feature: int
    value: float


@dataclass(frozen=True)
class InterventionResult:
    logits: torch.Tensor  # [P, V] float32, after any soft-cap
    activations: torch.Tensor | None  # [L, P, F] (pre-activations if apply_activation_function=False)


def check_interventions(interventions: list[Intervention], tc: TranscoderSet, n_pos: int) -> None:
    """Raise InterventionError naming the first intervention that cannot be applied."""
    for iv in interventions:
        where = f"Intervention on layer {iv.layer}, feature {iv.feature}"
        if not 0 <= iv.layer < tc.n_layers:
            raise InterventionError(f"{where}: layer {iv.layer} does not exist (0..{tc.n_layers - 1}).")
        if not 0 <= iv.feature < tc.n_features:
            raise InterventionError(f"{where}: feature {iv.feature} is out of range (0..{tc.n_features - 1}).")
        if isinstance(iv.position, slice):
            if iv.position.step not in (None, 1) or (iv.position.start or 0) >= n_pos:
                raise InterventionError(f"{where}: positions {iv.position} are outside the prompt (0..{n_pos - 1}).")
        elif not 0 <= iv.position < n_pos:
            raise InterventionError(f"{where}: position {iv.position} is outside the prompt (0..{n_pos - 1}).",
                                    "Positions count tokens from 0, the BOS.")
        try:
            value = float(iv.value)
        except (TypeError, ValueError):
            raise InterventionError(f"{where}: value {iv.value!r} is not a number.") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise InterventionError(f"{where}: value {iv.value!r} is not a finite number.")


class _Deltas:
    """Computes, layer by layer as the run reaches each write point, what to add there."""

    def __init__(self, tc: TranscoderSet, interventions: list[Intervention], n_pos: int, zeroed: int,
                 intervention_range: set[int], base: torch.Tensor | None, apply_activation_function: bool,
                 keep_activations: bool, device, dtype) -> None:
        self.tc, self.zeroed, self.range, self.base = tc, zeroed, intervention_range, base
        self.apply = apply_activation_function
        self.by_layer: dict[int, list[Intervention]] = defaultdict(list)
        for iv in interventions:
            self.by_layer[iv.layer].append(iv)
        self.pending = torch.zeros(tc.n_layers, n_pos, tc.d_model, device=device, dtype=dtype)
        self.activations: list[torch.Tensor | None] | None = [None] * tc.n_layers if keep_activations else None

    def __call__(self, layer: int, read: torch.Tensor) -> torch.Tensor | None:
        tc = self.tc
        if self.activations is not None or (layer in self.by_layer and self.base is None):
            pre = tc.pre_activations(layer, read)
            acts = tc.activate(layer, pre)
            acts[: self.zeroed] = 0
            if self.activations is not None:
                recorded = pre.clone() if not self.apply else acts
                if not self.apply:
                    recorded[: self.zeroed] = 0
                self.activations[layer] = recorded
        if layer in self.by_layer:
            current = self.base[layer] if self.base is not None else acts
            delta = torch.zeros_like(current)
            for iv in self.by_layer[layer]:
                delta[iv.position, iv.feature] = iv.value - current[iv.position, iv.feature]
            pos, feat = delta.nonzero(as_tuple=True)
            if pos.numel():
                amount = delta[pos, feat]
                for out in (range(layer, tc.n_layers) if tc.is_clt else (layer,)):
                    rows = tc.decoder_rows(layer, feat, out) * amount[:, None]
                    self.pending[out].index_add_(0, pos, rows.to(self.pending.dtype))
        if layer not in self.range:
            return None
        add = self.pending[layer].clone()
        self.pending[layer].zero_()
        return add


def intervene(bundle: ModelBundle, tc: TranscoderSet, prompt: str | list[int] | torch.Tensor,
              interventions: list[Intervention], *, constrained_layers: range | list[int] | None = None,
              freeze_attention: bool = True, apply_activation_function: bool = True,
              return_activations: bool = True, clean: CleanRun | None = None) -> InterventionResult:
    """Run the prompt with the interventions applied; see the module docstring."""
    ids = tokenize_prompt(bundle, prompt)
    result, _, _ = _intervened_pass(bundle, tc, ids, interventions, constrained_layers, freeze_attention,
                                    apply_activation_function, return_activations, clean, use_cache=False)
    return result


def _intervened_pass(bundle, tc, ids, interventions, constrained_layers, freeze_attention, apply_activation_function,
                     return_activations, clean, use_cache):
    L, P = tc.n_layers, ids.shape[0]
    check_interventions(interventions, tc, P)
    constrained = set(constrained_layers or ())
    freeze = bool((freeze_attention or constrained) and interventions)
    if freeze and clean is None:
        clean = record_clean_run(bundle, ids, tc)
    zeroed = bundle.n_zeroed_positions
    base = None
    if constrained and freeze:
        with torch.no_grad():
            base = torch.stack([tc.encode(layer, clean.reads[layer]) for layer in range(L)])
            base[:, :zeroed] = 0
    deltas = _Deltas(tc, interventions, P, zeroed, (constrained if freeze else set()) or set(range(L)), base,
                     apply_activation_function,
                     return_activations, bundle.device, bundle.dtype)
    out = run_frozen(bundle, clean if freeze else None, tc, write_deltas=deltas, freeze_attention=freeze,
                     freeze_norms=freeze and set(range(L)) <= constrained,
                     constrained_layers=constrained if freeze else frozenset(), ids=ids, use_cache=use_cache)
    acts = torch.stack(deltas.activations) if return_activations else None
    return InterventionResult(out.logits, acts), out, deltas


@dataclass(frozen=True)
class Generation:
    text: str  # the generated continuation only
    token_ids: tuple[int, ...]
    logits: torch.Tensor  # [n_tokens, V]: the distribution each generated token was chosen from


def generate(bundle: ModelBundle, tc: TranscoderSet, prompt: str | list[int] | torch.Tensor,
             interventions: list[Intervention], n_tokens: int, *, constrained_layers=None,
             freeze_attention: bool = True) -> Generation:
    """Greedy continuation with interventions (circuit-tracer's `feature_intervention_generate`)."""
    if n_tokens < 1:
        raise InterventionError(f"Asked to generate {n_tokens} tokens.", "Ask for at least one.")
    ids = tokenize_prompt(bundle, prompt)
    first, out, _ = _intervened_pass(bundle, tc, ids, interventions, constrained_layers, freeze_attention,
                                     True, False, None, use_cache=True)
    # later steps: only open-ended interventions, at the single new position, nothing frozen
    open_ended = [Intervention(iv.layer, 0, iv.feature, iv.value) for iv in interventions
                  if isinstance(iv.position, slice) and iv.position.stop is None]
    logits = [first.logits[-1]]
    past = out.past_key_values
    chosen: list[int] = []
    limit = bundle.summary.max_positions
    for step in range(n_tokens):
        token = int(logits[-1].argmax())
        chosen.append(token)
        if step == n_tokens - 1 or (limit and ids.shape[0] + len(chosen) >= limit):
            break
        deltas = _Deltas(tc, open_ended, 1, 0, set(range(tc.n_layers)), None, True, False,
                         bundle.device, bundle.dtype)
        out = run_frozen(bundle, None, tc, write_deltas=deltas, freeze_attention=False, freeze_norms=False,
                         ids=torch.tensor([token]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits.append(out.logits[-1])
    return Generation(bundle.tokenizer.decode(chosen), tuple(chosen), torch.stack(logits[: len(chosen)]))
