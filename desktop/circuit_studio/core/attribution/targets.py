"""What a graph attributes from: its logit nodes (circuit-tracer 0.5.0's `attribution_targets`).

Each target is one covector `v` injected at the final-norm output of the last position, so its
node stands for the scalar `<h_final[P-1], v>`:

* salient (the default): the top `max_n_logits` tokens up to cumulative probability
  `desired_logit_prob`, probability descending; `v = W_U[t] - mean_v W_U[v]`;
* token ids, in the order given (no sorting, no de-duplication), same vector, probability from
  the ordinary forward pass over the whole vocabulary;
* token strings, each of which must encode to exactly one token, then as ids;
* custom directions `CustomTarget(label, probability, vector)`: the vector as given (not demeaned),
  the probability used as the node's weight, and a virtual vocabulary id `V + i`;
* `LogitDiff(a, b)`: the direction logit(a) - logit(b), built as circuit-tracer's demo builds it.

The probabilities are the logit nodes' weights in influence, pruning and the scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence, Union

from ..errors import PromptError

if TYPE_CHECKING:  # torch is imported where it is used: the window names these types without loading it
    import torch


@dataclass(frozen=True)
class CustomTarget:
    """A direction in d_model to attribute from, e.g. logit(A) - logit(B)."""

    label: str
    probability: float  # the node's weight; not checked or normalised, as circuit-tracer
    vector: torch.Tensor  # [d_model]


@dataclass(frozen=True)
class LogitDiff:
    """logit(a) - logit(b) for two tokens (ids or single-token strings), built as circuit-tracer's
    attribution-targets demo builds it: vector (W_U[a] - m) - (W_U[b] - m) with m the mean
    unembedding row, label "logit(A) - logit(B)", weight max(|p_a - p_b|, 1e-6)."""

    a: int | str
    b: int | str


Target = Union[int, str, CustomTarget, LogitDiff]
TargetSpec = Union[None, "torch.Tensor", Sequence[Target]]


@dataclass(frozen=True)
class LogitTargets:
    token_ids: torch.Tensor  # int64 [K]; V + i for a direction at list index i
    probabilities: torch.Tensor  # float32 [K]
    vectors: torch.Tensor  # [K, d]
    labels: tuple[str, ...] | None = None  # None: decode the token ids


def select_logit_targets(logits: torch.Tensor, unembed: torch.Tensor, max_n_logits: int,
                         desired_logit_prob: float) -> LogitTargets:
    """logits [V] at the last position, unembed [V, d] -> the smallest top set reaching the probability."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    top_p, top_idx = torch.topk(probs, min(max_n_logits, probs.shape[0]))
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), desired_logit_prob)) + 1
    top_p, top_idx = top_p[:cutoff], top_idx[:cutoff]
    w = unembed.float()
    return LogitTargets(top_idx.cpu(), top_p.cpu(), w[top_idx] - w.mean(0))


def token_id(target: int | str, tokenizer, V: int) -> int:
    """A token id from an id or a string that must encode to exactly one token."""
    if isinstance(target, str):
        enc = tokenizer.encode(target, add_special_tokens=False)
        if len(enc) != 1:
            raise PromptError(f"Target {target!r} is {len(enc)} tokens, not one.",
                              "Give a string that is a single token of this model (or its token id).")
        target = enc[0]
    if isinstance(target, bool) or not isinstance(target, int):
        raise PromptError(f"Attribution target {target!r} is not a token id, string or direction.",
                          "Give token ids, token strings, CustomTarget directions or LogitDiff pairs.")
    if not 0 <= target < V:
        raise PromptError(f"Target token id {target} is outside the vocabulary (0..{V - 1}).",
                          "Give ids the model's tokenizer produces.")
    return target


def resolve_targets(spec: TargetSpec, logits: torch.Tensor, unembed: torch.Tensor, tokenizer,
                    max_n_logits: int, desired_logit_prob: float) -> LogitTargets:
    """The logit nodes for `spec` (see the module docstring), in the order given; logits [V] at
    the last position. Lists may mix kinds (circuit-tracer's may not); directions at list index i
    get the virtual id V + i, as in circuit-tracer's all-direction lists."""
    import torch

    if spec is None:
        return select_logit_targets(logits, unembed, max_n_logits, desired_logit_prob)
    items = spec.tolist() if isinstance(spec, torch.Tensor) else list(spec)
    if not items:
        raise PromptError("The list of attribution targets is empty.",
                          "Give at least one token, token id or direction, or none for the top logits.")
    V, d = logits.shape[-1], unembed.shape[1]
    probs = torch.softmax(logits.float(), dim=-1).cpu()
    w = unembed.float()
    mean = w.mean(0)
    ids, weights, vectors, labels = [], [], [], []
    for i, t in enumerate(items):
        if isinstance(t, LogitDiff):
            a, b = token_id(t.a, tokenizer, V), token_id(t.b, tokenizer, V)
            t = CustomTarget(f"logit({tokenizer.decode([a])}) - logit({tokenizer.decode([b])})",
                             max(abs(float(probs[a]) - float(probs[b])), 1e-6), (w[a] - mean) - (w[b] - mean))
        if isinstance(t, CustomTarget):
            if tuple(t.vector.shape) != (d,):
                raise PromptError(f"Target {t.label!r} has shape {list(t.vector.shape)}, not [{d}] (d_model).",
                                  "Give a vector of the model's residual-stream size.")
            if not bool(torch.isfinite(t.vector).all()):
                raise PromptError(f"Target {t.label!r} holds NaN or Inf.", "Give a finite vector.")
            ids.append(V + i)
            weights.append(float(t.probability))
            vectors.append(t.vector.to(w.device, torch.float32))
            labels.append(t.label)
        else:
            k = token_id(t, tokenizer, V)
            ids.append(k)
            weights.append(float(probs[k]))
            vectors.append(w[k] - mean)
            labels.append(tokenizer.decode([k]))
    return LogitTargets(torch.tensor(ids, dtype=torch.long), torch.tensor(weights, dtype=torch.float32),
                        torch.stack(vectors), tuple(labels))
