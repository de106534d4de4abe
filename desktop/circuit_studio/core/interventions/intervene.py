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
from typing import TYPE_CHECKING

from ..errors import CircuitStudioError

if TYPE_CHECKING:  # torch and the model code are imported where used: the window imports this module at start
    import torch

    from ..model.loading import ModelBundle
    from ..model.replacement import CleanRun
    from ..transcoders.transcoder_set import TranscoderSet


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
        import torch

        self.tc, self.zeroed, self.range, self.base = tc, zeroed, intervention_range, base
        self.apply = apply_activation_function
        self.by_layer: dict[int, list[Intervention]] = defaultdict(list)
        for iv in interventions:
            self.by_layer[iv.layer].append(iv)
        self.pending = torch.zeros(tc.n_layers, n_pos, tc.d_model, device=device, dtype=dtype)
        self.activations: list[torch.Tensor | None] | None = [None] * tc.n_layers if keep_activations else None

    def __call__(self, layer: int, read: torch.Tensor) -> torch.Tensor | None:
        import torch

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
    from ..model.loading import tokenize_prompt

    ids = tokenize_prompt(bundle, prompt)
    result, _, _ = _intervened_pass(bundle, tc, ids, interventions, constrained_layers, freeze_attention,
                                    apply_activation_function, return_activations, clean, use_cache=False)
    return result


def _intervened_pass(bundle, tc, ids, interventions, constrained_layers, freeze_attention, apply_activation_function,
                     return_activations, clean, use_cache):
    import torch

    from ..model.replacement import record_clean_run, run_frozen

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
    import torch

    from ..model.loading import tokenize_prompt
    from ..model.replacement import run_frozen

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


# ---------------------------------------------------------------------------------------------
# steering runs: what the window's intervention pane computes (core.interventions.steering holds its state)
# ---------------------------------------------------------------------------------------------

CHANGE_EPS = 1e-4  # relative activation changes smaller than this are left out of `activation_changes`
TOP_TOKENS = 10  # next tokens kept per update (the bars show the first few, sessions keep them all)


@dataclass(frozen=True)
class TopToken:
    """One next token of an update: its id, text and probability before and after the interventions."""

    id: int
    token: str
    before: float
    after: float


@dataclass(frozen=True)
class ContinuationText:
    """A generated continuation as it reads after the prompt: the prompt's last tokens (`tail`, with
    `ellipsis` when the prompt is longer) and each generated token's text as it appears in the decoded
    string (`pieces`, spaces as the tokenizer puts them)."""

    tail: str
    ellipsis: bool
    pieces: tuple[str, ...]
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class InterventionUpdate:
    """One computed steering state. P positions, V vocabulary, L layers, F features.

    `version` is the `core.interventions.steering.Steering.version` it was computed for. The first part (logits,
    activation changes, top tokens) comes from `compute_update`; the continuation fields stay None
    until `compute_continuation` fills them (`continuation_pending`)."""

    version: int
    interventions: tuple[Intervention, ...]
    before: torch.Tensor  # [P, V] clean logits
    after: torch.Tensor  # [P, V] logits with the interventions
    activations: torch.Tensor | None  # [L, P, F] as `intervene` returns them (a set feature reads its own input)
    changes: dict[int, float]  # feature node -> (after − before) / |before|, set values included; |change| > CHANGE_EPS
    freeze_attention: bool
    seconds: float  # wall time of the next-token computation
    n_tokens: int = 0  # continuation length asked for
    default: Generation | None = None  # continuation without interventions; None until computed (or 0 tokens)
    steered: Generation | None = None
    continuation_seconds: float | None = None
    top: tuple[TopToken, ...] = ()  # by the larger of the two probabilities, highest first
    top_before: tuple[TopToken, ...] = ()  # by the probability before
    top_after: tuple[TopToken, ...] = ()  # by the probability after
    default_text: ContinuationText | None = None
    steered_text: ContinuationText | None = None

    @property
    def continuation_pending(self) -> bool:
        return self.n_tokens > 0 and self.steered is None

    def probabilities(self):
        """Next-token probabilities (float64 numpy [V]) before and after, at the last position. Computed once."""
        probs = self.__dict__.get("_probabilities")
        if probs is None:
            import torch

            probs = (torch.softmax(self.before[-1].double(), -1).numpy(),
                     torch.softmax(self.after[-1].double(), -1).numpy())
            object.__setattr__(self, "_probabilities", probs)  # a memo, not state: frozen otherwise
        return probs


class SteeringRun:
    """Per graph and loaded model: the prompt's ids, the clean run and the default continuations, computed
    on first use (on the compute thread) and reused by every later update of the same graph."""

    def __init__(self, bundle: ModelBundle, tc: TranscoderSet, graph) -> None:
        import numpy as np
        import torch

        self.bundle, self.tc, self.graph = bundle, tc, graph
        self.ids = torch.tensor(np.asarray(graph.input_tokens, dtype=np.int64))
        self.clean: CleanRun | None = None
        self.defaults: dict[int, Generation] = {}

    def matches(self, bundle, tc, graph) -> bool:
        return self.bundle is bundle and self.tc is tc and self.graph is graph

    def clean_run(self) -> CleanRun:
        if self.clean is None:
            from ..model.replacement import record_clean_run

            self.clean = record_clean_run(self.bundle, self.ids, self.tc)
        return self.clean

    def default(self, n_tokens: int) -> Generation:
        if n_tokens not in self.defaults:
            self.defaults[n_tokens] = generate(self.bundle, self.tc, self.ids, [], n_tokens)
        return self.defaults[n_tokens]


def activation_changes(graph, activations: torch.Tensor,
                       interventions: list[Intervention] | tuple[Intervention, ...]) -> dict[int, float]:
    """Feature node -> relative activation change, (after − before) / |before|, where before is the graph's
    `activation_values` and after is `activations` [L, P, F] with each intervention's set value written in
    (`intervene` reports a set feature's activation before it is set). Changes under CHANGE_EPS are left out."""
    import numpy as np
    import torch

    acts = activations.detach().float().cpu().clone()
    for iv in interventions:
        acts[iv.layer, iv.position, iv.feature] = float(iv.value)
    sel = graph.active_features[graph.selected_features]
    after = acts[torch.from_numpy(sel[:, 0].copy()), torch.from_numpy(sel[:, 1].copy()),
                 torch.from_numpy(sel[:, 2].copy())].numpy().astype(np.float64)
    before = graph.activation_values[graph.selected_features].astype(np.float64)
    ratio = (after - before) / np.maximum(np.abs(before), 1e-6)
    keep = np.flatnonzero(np.abs(ratio) > CHANGE_EPS)
    return dict(zip(keep.tolist(), ratio[keep].tolist()))


def _top_tokens(bundle: ModelBundle, before, after, order) -> tuple[TopToken, ...]:
    decode = bundle.tokenizer.decode
    return tuple(TopToken(int(i), decode([int(i)]), float(before[i]), float(after[i])) for i in order)


def compute_update(run: SteeringRun, interventions: tuple[Intervention, ...], freeze: bool, n_tokens: int,
                   version: int) -> InterventionUpdate:
    """An update's first part: next-token logits, activation changes and the top tokens (decoded)."""
    import time

    import numpy as np

    t0 = time.perf_counter()
    clean = run.clean_run()
    ivs = list(interventions)
    result = intervene(run.bundle, run.tc, run.ids, ivs, freeze_attention=freeze, clean=clean)
    changes = activation_changes(run.graph, result.activations, ivs) if ivs else {}
    update = InterventionUpdate(version, tuple(interventions), clean.logits, result.logits, result.activations,
                                changes, freeze, time.perf_counter() - t0, n_tokens)
    before, after = update.probabilities()
    k = TOP_TOKENS
    top = np.argsort(-np.maximum(before, after), kind="stable")[:k]
    object.__setattr__(update, "top", _top_tokens(run.bundle, before, after, top))
    object.__setattr__(update, "top_before", _top_tokens(run.bundle, before, after, np.argsort(-before)[:k]))
    object.__setattr__(update, "top_after", _top_tokens(run.bundle, before, after, np.argsort(-after)[:k]))
    return update


def continuation_text(bundle: ModelBundle, graph, gen: Generation | None, tail_tokens: int = 6) \
        -> ContinuationText | None:
    """How `gen` reads after the graph's prompt (see `ContinuationText`)."""
    if gen is None:
        return None
    prompt = [int(i) for i in graph.input_tokens[1:]]
    decode = bundle.tokenizer.decode
    ids = [int(t) for t in gen.token_ids]
    pieces, prev = [], decode(prompt)
    for k in range(1, len(ids) + 1):
        text = decode(prompt + ids[:k])
        pieces.append(text[len(prev):] if text.startswith(prev) else decode([ids[k - 1]]))
        prev = text
    return ContinuationText(decode(prompt[-tail_tokens:]), len(prompt) > tail_tokens, tuple(pieces), tuple(ids))


def compute_continuation(run: SteeringRun, update: InterventionUpdate) -> InterventionUpdate:
    """An update's second part: the default and the steered continuation (greedy, `update.n_tokens` long)."""
    import time
    from dataclasses import replace

    t0 = time.perf_counter()
    default = run.default(update.n_tokens)
    ivs = list(update.interventions)
    steered = generate(run.bundle, run.tc, run.ids, ivs, update.n_tokens,
                       freeze_attention=update.freeze_attention) if ivs else default
    seconds = time.perf_counter() - t0
    out = replace(update, default=default, steered=steered, continuation_seconds=seconds,
                  default_text=continuation_text(run.bundle, run.graph, default),
                  steered_text=continuation_text(run.bundle, run.graph, steered))
    if "_probabilities" in update.__dict__:
        object.__setattr__(out, "_probabilities", update.__dict__["_probabilities"])
    return out


def sweep_probabilities(run: SteeringRun, build, values: list[float], token_id: int, freeze: bool,
                        progress=None, cancel=None, phase: str = "Strength sweep") -> list[float]:
    """The probability of `token_id` at the last position for `build(v)`'s interventions, for each v."""
    import torch

    from ..progress import check, report

    clean = run.clean_run()
    out = []
    for i, v in enumerate(values):
        check(cancel)
        report(progress, phase, i, len(values))
        r = intervene(run.bundle, run.tc, run.ids, build(v), freeze_attention=freeze, clean=clean,
                      return_activations=False)
        out.append(float(torch.softmax(r.logits[-1].double(), -1)[token_id]))
    return out


def vocabulary_size(bundle: ModelBundle) -> int:
    return int(bundle.arch.unembed.shape[0])
