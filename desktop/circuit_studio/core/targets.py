"""What a graph attributes from: its logit nodes (circuit-tracer 0.5.0's `attribution_targets`).

Each target is one covector `v` injected at the final-norm output of the last position, so its
node stands for the scalar `<h_final[P-1], v>`:

* salient (the default): the top `max_n_logits` tokens up to cumulative probability
  `desired_logit_prob`, probability descending; `v = W_U[t] - mean_v W_U[v]`;
* token ids, in the order given (no sorting, no de-duplication), same vector, probability from
  the ordinary forward pass over the whole vocabulary;
* token strings, each of which must encode to exactly one token, then as ids;
* custom directions `CustomTarget(label, probability, vector)`: the vector as given (not demeaned),
  the probability used as the node's weight, and a virtual vocabulary id `V + i`.

The probabilities are the logit nodes' weights in influence, pruning and the scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

from .errors import PromptError


@dataclass(frozen=True)
class CustomTarget:
    """A direction in d_model to attribute from, e.g. logit(A) - logit(B)."""

    label: str
    probability: float  # the node's weight; not checked or normalised, as circuit-tracer
    vector: torch.Tensor  # [d_model]


TargetSpec = Union[None, torch.Tensor, Sequence[int], Sequence[str], Sequence[CustomTarget]]


@dataclass(frozen=True)
class LogitTargets:
    token_ids: torch.Tensor  # int64 [K]; V + i for the i-th custom target
    probabilities: torch.Tensor  # float32 [K]
    vectors: torch.Tensor  # [K, d]
    labels: tuple[str, ...] | None = None  # None: decode the token ids


def select_logit_targets(logits: torch.Tensor, unembed: torch.Tensor, max_n_logits: int,
                         desired_logit_prob: float) -> LogitTargets:
    """logits [V] at the last position, unembed [V, d] -> the smallest top set reaching the probability."""
    probs = torch.softmax(logits.float(), dim=-1)
    top_p, top_idx = torch.topk(probs, min(max_n_logits, probs.shape[0]))
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), desired_logit_prob)) + 1
    top_p, top_idx = top_p[:cutoff], top_idx[:cutoff]
    w = unembed.float()
    return LogitTargets(top_idx.cpu(), top_p.cpu(), w[top_idx] - w.mean(0))


def resolve_targets(spec: TargetSpec, logits: torch.Tensor, unembed: torch.Tensor, tokenizer,
                    max_n_logits: int, desired_logit_prob: float) -> LogitTargets:
    """The logit nodes for `spec` (see the module docstring); logits [V] at the last position."""
    if spec is None:
        return select_logit_targets(logits, unembed, max_n_logits, desired_logit_prob)
    items = spec.tolist() if isinstance(spec, torch.Tensor) else list(spec)
    if not items:
        raise PromptError("The list of attribution targets is empty.",
                          "Give at least one token, token id or direction, or none for the top logits.")
    V, d = logits.shape[-1], unembed.shape[1]
    probs = torch.softmax(logits.float(), dim=-1)
    w = unembed.float()
    first = items[0]
    if isinstance(first, CustomTarget):
        if not all(isinstance(t, CustomTarget) for t in items):
            raise PromptError("Custom directions cannot be mixed with tokens in one target list.",
                              "Give only directions, or only tokens.")
        for t in items:
            if tuple(t.vector.shape) != (d,):
                raise PromptError(f"Target {t.label!r} has shape {list(t.vector.shape)}, not [{d}] (d_model).",
                                  "Give a vector of the model's residual-stream size.")
            if not bool(torch.isfinite(t.vector).all()):
                raise PromptError(f"Target {t.label!r} holds NaN or Inf.", "Give a finite vector.")
        return LogitTargets(torch.arange(V, V + len(items)),
                            torch.tensor([t.probability for t in items], dtype=torch.float32),
                            torch.stack([t.vector.float() for t in items]), tuple(t.label for t in items))
    if isinstance(first, str):
        ids = []
        for s in items:
            if not isinstance(s, str):
                raise PromptError("Token strings cannot be mixed with other targets.", "Give only strings.")
            enc = tokenizer.encode(s, add_special_tokens=False)
            if len(enc) != 1:
                raise PromptError(f"Target {s!r} is {len(enc)} tokens, not one.",
                                  "Give a string that is a single token of this model (or its token id).")
            ids.append(enc[0])
    else:
        try:
            ids = [int(i) for i in items]
        except (TypeError, ValueError):
            raise PromptError(f"Attribution targets {items[:3]!r} are not token ids, strings or directions.",
                              "Give token ids, token strings or CustomTarget directions.") from None
    bad = [i for i in ids if not 0 <= i < V]
    if bad:
        raise PromptError(f"Target token id {bad[0]} is outside the vocabulary (0..{V - 1}).",
                          "Give ids the model's tokenizer produces.")
    idx = torch.tensor(ids, dtype=torch.long)
    return LogitTargets(idx, probs[idx].cpu(), w[idx] - w.mean(0))
