"""Building a feature index: stream a corpus through model + transcoders and keep, per feature,
what its dashboard shows (file format and reader in `feature_index`).

Definitions (one "context" = one corpus window; BOS positions, i.e. position 0 of every window,
are excluded everywhere and their activations stored as 0):

* active: activation > 0. density = active tokens / non-BOS tokens; mean = mean when active.
* top examples: the `top_k` windows with the highest max activation, strongest first (ties: the
  earlier window first); each is shown as the tokens `context_window` around its max position.
* bands: `n_quantile_bands` equal intervals of the feature's max activation, band b holding the
  windows whose max lies in (b/n * max, (b+1)/n * max] (SAE-dashboard style "interval" bands);
  top examples are not repeated there. Each band keeps a uniform random sample of
  `examples_per_band` windows: those with the smallest random keys (ties: the earlier window),
  a key being a hash of (seed, layer, window, feature) (`band_keys`), so the sample depends on
  the corpus and the seed only, never on who processed which part of it.
* histogram: `histogram_bins` linear bins from 0 to the feature's max over all non-zero
  activations (fixed per feature after the first pass, so the counts are exact).
* logit effects: the direct path of the feature's decoder vector through the unembedding,
  `(gain * v) @ W_U.T`, demeaned over the vocabulary. The final norm's gain is applied (and
  LayerNorm's centring), its input-dependent scale is ignored (it is one positive number per
  position, so it does not change the ranking), and so are final logit soft-capping and biases.
  For a CLT, v is the sum of the decoder vectors over all output layers: every layer's MLP output
  goes straight into the residual stream, so the sum is the feature's total direct effect.
* label: `auto_label`, from the tokens at the max positions of the top examples and the top
  promoted tokens.

Cost: two passes over the corpus (statistics + top-k, then histograms + bands, because bins and
bands need each feature's max); the example contexts are gathered during the second pass. Memory
is bounded by the per-feature state, never by the corpus size: when the contexts of all layers
do not fit `memory_budget_mb`, only the first layers' are gathered then, and the others in a third
pass, group of layers by group, over just the batches that hold one of their examples. (The budget
is per state: a build holds the merged state and the state of the shard being merged, and on Ray
the driver also those of shards that finished ahead of their turn.)

Shards (how the work is cut, `IndexPlan`): the corpus is cut into shards of `shard_batches`
batches of `batch_size` windows. Each pass accumulates every shard from an empty state
(`IndexWorker`: the part that needs the model) and the shard states are merged in shard order
(`merge_scans`, `merge_bands`): counts and histograms add, maxima take the max, the top and band
lists are merged by (value desc, window asc) and (key asc, window asc), so the merged state is
exactly the one a single sweep gives; the float64 activation sums are added shard by shard in
shard order. A `ShardExecutor` decides where shards run: `LocalExecutor` runs them one after
the other in this process (what `build_feature_index` does); `circuit_studio.scale` runs them on
Ray actors. Both go through `run_index_build`, so the file is the same, byte for byte in every
table but the creation time, whatever ran the shards and in whatever order they finished.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import numpy as np
import torch

from .activations import collect_activations
from .atomic_write import output_error, replace_all_or_none
from .feature_index import INDEX_FORMAT, INDEX_VERSION, FeatureIndex, FeatureIndexError, pack_arrays
from .model_loading import ModelBundle
from .progress import CancelToken, ProgressFn, check, report
from .transcoder_loading import check_transcoders_fit
from .transcoders import TranscoderSet

LABEL_MAX = 40


# ---- labels ----
def _show(token: str, limit: int = 14) -> str:
    t = token.strip()
    if not t:
        t = {"\n": "↵", "\t": "⇥"}.get(token[:1], "␣") if token else "∅"
    return t if len(t) <= limit else t[:limit - 1] + "…"


def auto_label(read_tokens: list[str], promoted: list[str]) -> str:
    """A short label (<= 40 chars) from what a feature reads (the tokens at the max positions of
    its top examples, most frequent first) and what it promotes (top logit tokens, best first).

    `"Dallas" → Texas` when one token makes up at least half the top examples, `mixed "the"/"of"
    → Texas` when two are needed to reach half, `varied "a"/"b"/… → Texas` otherwise; `never
    active` for a feature that never fired on the corpus."""
    if not read_tokens:
        return "never active"
    counts = Counter(_show(t) for t in read_tokens).most_common()
    n = len(read_tokens)
    if counts[0][1] * 2 >= n:
        reads = f'"{counts[0][0]}"'
    elif len(counts) > 1 and (counts[0][1] + counts[1][1]) * 2 >= n:
        reads = f'mixed "{counts[0][0]}"/"{counts[1][0]}"'
    else:
        reads = f'varied "{counts[0][0]}"/"{counts[1][0]}"/…'
    says = [_show(t, 12) for t in promoted[:2]]
    label = reads
    for i, s in enumerate(says):
        candidate = f"{label} → {s}" if i == 0 else f"{label}/{s}"
        if len(candidate) > LABEL_MAX:
            break
        label = candidate
    return label if len(label) <= LABEL_MAX else label[:LABEL_MAX - 1] + "…"


# ---- helpers ----
def transcoder_fingerprint(tc: TranscoderSet) -> str:
    """A cheap hash of the transcoders' sizes and a sample of their weights (to match graphs)."""
    h = hashlib.sha256(f"{tc.kind}:{tc.n_layers}:{tc.n_features}:{tc.d_model}".encode())
    for l in range(tc.n_layers):
        for t in (tc.w_enc[l], tc.w_dec[l]):
            flat = t.reshape(-1)
            h.update(flat[:: max(1, flat.numel() // 256)][:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _decode(tokenizer, ids: list[int]) -> dict[int, str]:
    out = {}
    for i in ids:
        s = tokenizer.decode([i])
        if not s:
            s = str(tokenizer.convert_ids_to_tokens(i) or "")
        out[i] = s
    return out


# ---- settings, the plan of a build, and what it needs to know about the model ----
@dataclass(frozen=True)
class IndexSettings:
    """The options of a build (all of them recorded in the index's `settings`, except the memory
    budget, which changes when contexts are gathered but not what is written)."""

    top_k: int = 20
    n_quantile_bands: int = 4
    examples_per_band: int = 5
    context_window: tuple[int, int] = (-12, 4)
    histogram_bins: int = 30
    n_logits: int = 10
    batch_size: int = 8
    seed: int = 0
    memory_budget_mb: int = 512
    shard_batches: int = 64  # batches per shard (see the module docstring)

    @property
    def before(self) -> int:
        return -int(self.context_window[0])

    @property
    def after(self) -> int:
        return int(self.context_window[1])

    def check(self) -> None:
        for name, value, low in (("top_k", self.top_k, 1), ("n_quantile_bands", self.n_quantile_bands, 1),
                                 ("examples_per_band", self.examples_per_band, 0),
                                 ("histogram_bins", self.histogram_bins, 1), ("n_logits", self.n_logits, 1),
                                 ("batch_size", self.batch_size, 1), ("shard_batches", self.shard_batches, 1),
                                 ("context before", self.before, 0), ("context after", self.after, 0)):
            if value < low:
                raise FeatureIndexError(f"{name} must be at least {low} (got {value}).")

    def recorded(self) -> dict:
        return dict(top_k=self.top_k, n_quantile_bands=self.n_quantile_bands,
                    examples_per_band=self.examples_per_band, context_window=[-self.before, self.after],
                    histogram_bins=self.histogram_bins, n_logits=self.n_logits, batch_size=self.batch_size,
                    seed=self.seed, shard_batches=self.shard_batches)


@dataclass(frozen=True)
class IndexPlan:
    """Sizes of one build and its shards: fixed by the corpus shape and the settings only."""

    settings: IndexSettings
    n_windows: int
    context: int
    n_layers: int
    n_features: int

    @property
    def k(self) -> int:
        return min(self.settings.top_k, self.n_windows)

    @property
    def bs(self) -> int:
        return self.settings.batch_size

    @property
    def C(self) -> int:
        return self.settings.before + self.settings.after + 1

    @property
    def n_batches(self) -> int:
        return (self.n_windows + self.bs - 1) // self.bs

    @property
    def shard_size(self) -> int:
        """Windows per shard (the last shard may be shorter)."""
        return self.bs * self.settings.shard_batches

    @property
    def n_shards(self) -> int:
        return (self.n_windows + self.shard_size - 1) // self.shard_size

    def windows_of(self, shard: int) -> tuple[int, int]:
        """[first, end) window numbers of `shard`."""
        if not 0 <= shard < self.n_shards:
            raise IndexError(f"shard {shard} is not one of the {self.n_shards} shards")
        w0 = shard * self.shard_size
        return w0, min(self.n_windows, w0 + self.shard_size)

    def first_batch(self, shard: int) -> int:
        return shard * self.settings.shard_batches

    def batches_of(self, shard: int) -> int:
        w0, w1 = self.windows_of(shard)
        return (w1 - w0 + self.bs - 1) // self.bs

    @property
    def groups(self) -> list[list[int]]:
        """Layer groups whose contexts are gathered together (the first during pass 2)."""
        s = self.settings
        return _layer_groups(self.n_layers, self.n_features, self.k + s.n_quantile_bands * s.examples_per_band,
                             self.C, s.memory_budget_mb)


@dataclass(frozen=True)
class IndexSource:
    """What the index records about the model and transcoders, and what windows must fit."""

    model_name: str
    vocab_size: int
    max_positions: int | None
    n_layers: int
    n_features: int
    transcoder_scan: str
    transcoder_kind: str
    transcoder_source: str
    transcoder_fingerprint: str
    feature_input_hook: str
    feature_output_hook: str

    @classmethod
    def of(cls, bundle: ModelBundle, tc: TranscoderSet) -> "IndexSource":
        return cls(bundle.name, int(bundle.arch.unembed.shape[0]), bundle.summary.max_positions, tc.n_layers,
                   tc.n_features, tc.scan, tc.kind, str(tc.source or ""), transcoder_fingerprint(tc),
                   tc.feature_input_hook, tc.feature_output_hook)


def _validate_windows(source: IndexSource, windows: torch.Tensor) -> torch.Tensor:
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2:
        raise FeatureIndexError("The corpus windows must be a 2-D tensor [N, context] of token ids.")
    if windows.shape[0] == 0:
        raise FeatureIndexError("The corpus gives no windows to index.", "Use a corpus with at least one line.")
    if windows.shape[1] < 2:
        raise FeatureIndexError("Windows need at least 2 tokens (BOS and one token).", "Use a larger --context.")
    if windows.dtype.is_floating_point or windows.dtype == torch.bool:
        raise FeatureIndexError(f"Token ids must be integers, not {windows.dtype}.")
    vocab = source.vocab_size
    lo, hi = int(windows.min()), int(windows.max())
    if lo < 0 or hi >= vocab:
        raise FeatureIndexError(f"Token id {hi if hi >= vocab else lo} is outside the model's vocabulary "
                                f"(0..{vocab - 1}).", "Tokenise the corpus with this model's tokenizer.")
    limit = source.max_positions
    if limit and windows.shape[1] > limit:
        raise FeatureIndexError(f"Windows of {windows.shape[1]} tokens are longer than {source.model_name} takes "
                                f"({limit}).", f"Use a context of at most {limit}.")
    return windows.long().cpu()


# ---- band keys: uniform random numbers keyed by position, not drawn in sequence ----
_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32), without int64 overflow (16-bit halves)."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash ("lowbias32", C. Wellons) on int64 tensors in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def band_keys(seed: int, layer: int, windows: torch.Tensor, n_features: int) -> torch.Tensor:
    """Random keys [n_features, len(windows)] in [0, 1) (float32, 24 bits), a hash of (seed,
    layer, window, feature): the same on every device and in every process."""
    dev = windows.device
    s = _mix32(torch.tensor((int(seed) & _M32) ^ 0x5BD1E995, device=dev))
    s = _mix32(s ^ (int(layer) & _M32))
    w = _mix32(s ^ (windows.long() & _M32))  # [B]
    f = _mix32((torch.arange(n_features, device=dev) + 0x632BE5AB) & _M32)  # [F]
    h = _mix32(w[None, :] ^ f[:, None])
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


class _Run:
    """Runs the batches of a run of windows (a shard) through the model and returns transcoder
    activations; `offset` is the corpus number of the first window, a multiple of `batch_size`."""

    def __init__(self, bundle: ModelBundle, tc: TranscoderSet, windows: torch.Tensor, batch_size: int,
                 offset: int = 0) -> None:
        self.bundle, self.tc, self.windows, self.bs, self.offset = bundle, tc, windows, batch_size, offset
        self.n_batches = (windows.shape[0] + batch_size - 1) // batch_size
        self.device = tc.w_enc[0].device

    def batch(self, b: int, layers: list[int]):
        """Yield (layer, corpus number of the batch's first window, activations [B, T, F]) for the
        shard's batch b (BOS column zeroed)."""
        start = b * self.bs
        ids = self.windows[start:start + self.bs]
        rec = collect_activations(self.bundle, ids, feature_input_hook=self.tc.feature_input_hook,
                                  feature_output_hook=self.tc.feature_output_hook, layers=layers)
        for i, l in enumerate(layers):
            x = rec.reads[i].to(device=self.device, dtype=torch.float32)  # weights are cast per chunk
            acts = self.tc.encode(l, x).float()
            acts[:, 0] = 0.0
            yield l, self.offset + start, acts


# ---- per-feature state: pass 1 (`_Scan`) and pass 2 (`_Bands`) ----
class _State:
    def to(self, device) -> Any:
        return type(self)(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def to_cpu(self) -> Any:
        return self.to("cpu")


@dataclass
class _Scan(_State):
    """Pass 1, [L, F, ...]: counts, sums, maxima and the top-k windows of every feature."""

    count: torch.Tensor  # active tokens
    total: torch.Tensor  # sum of activations (float64)
    vmax: torch.Tensor
    top_v: torch.Tensor  # [L, F, k] window max, best first; 0 = empty slot
    top_w: torch.Tensor  # window (-1 = empty)
    top_p: torch.Tensor  # position of the max in the window

    @classmethod
    def empty(cls, plan: IndexPlan, dev) -> "_Scan":
        L, F, k = plan.n_layers, plan.n_features, plan.k
        return cls(torch.zeros(L, F, dtype=torch.long, device=dev), torch.zeros(L, F, dtype=torch.float64, device=dev),
                   torch.zeros(L, F, device=dev), torch.zeros(L, F, k, device=dev),
                   torch.full((L, F, k), -1, dtype=torch.long, device=dev),
                   torch.zeros(L, F, k, dtype=torch.long, device=dev))

    @property
    def top_ok(self) -> torch.Tensor:
        return self.top_v > 0


@dataclass
class _Bands(_State):
    """Pass 2: histograms, band counts and samples; the contexts top_s / band_s [E, F, .., C] only
    for the first E layers (`IndexPlan.groups[0]`), top_s only of the top windows the shard holds."""

    hist: torch.Tensor  # [L, F * bins]
    band_n: torch.Tensor  # [L, F, nb] windows per band (top windows excluded)
    band_key: torch.Tensor  # [L, F, nb, pb] random keys of the sample, smallest first; inf = empty
    band_w: torch.Tensor
    band_p: torch.Tensor
    band_v: torch.Tensor
    top_s: torch.Tensor  # [E, F, k, C]
    band_s: torch.Tensor  # [E, F, nb, pb, C]

    @classmethod
    def empty(cls, plan: IndexPlan, dev) -> "_Bands":
        s = plan.settings
        L, F, k, nb, pb, C = plan.n_layers, plan.n_features, plan.k, s.n_quantile_bands, s.examples_per_band, plan.C
        E = len(plan.groups[0])

        def z(*shape, dtype=torch.float32, fill=0.0):
            return torch.full(shape, fill, dtype=dtype, device=dev)

        return cls(z(L, F * s.histogram_bins, dtype=torch.long), z(L, F, nb, dtype=torch.long),
                   z(L, F, nb, pb, fill=float("inf")), z(L, F, nb, pb, dtype=torch.long, fill=-1),
                   z(L, F, nb, pb, dtype=torch.long), z(L, F, nb, pb), z(E, F, k, C), z(E, F, nb, pb, C))

    @property
    def band_ok(self) -> torch.Tensor:
        return torch.isfinite(self.band_key)


def _keep(kept: list[torch.Tensor], new: list[torch.Tensor], k: int, descending: bool
          ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Row by row, the first k entries of `kept ++ new` ordered by the first tensor of each list
    (the key), stably: on equal keys kept entries come first, and the earlier column within each.
    Tensors may have trailing dimensions (contexts), which follow their entry. Returns the new
    tensors and the order (indices into `kept ++ new`)."""
    order = torch.sort(torch.cat([kept[0], new[0]], 1), dim=1, descending=descending, stable=True).indices[:, :k]
    out = []
    for a, b in zip(kept, new):
        both = torch.cat([a, b], 1)
        idx = order
        if both.dim() > 2:
            idx = order.reshape(*order.shape, *([1] * (both.dim() - 2))).expand(-1, -1, *both.shape[2:])
        out.append(both.gather(1, idx))
    return out, order


def _pass1(run: _Run, plan: IndexPlan, sc: _Scan, progress, cancel, b0: int) -> None:
    """Counts, sums, max and the top-k windows of every feature, over the shard's batches."""
    k, dev = plan.k, sc.top_v.device
    for b in range(run.n_batches):
        check(cancel)
        report(progress, "Scanning corpus", b0 + b, plan.n_batches)
        for l, start, a in run.batch(b, list(range(plan.n_layers))):
            a = a.clamp(min=0)
            sc.count[l] += (a > 0).sum((0, 1))
            sc.total[l] += a.sum((0, 1), dtype=torch.float64)
            wmax, wpos = a.max(dim=1)  # [B, F], first position of the max
            best = wmax.max(0).values
            sc.vmax[l] = torch.maximum(sc.vmax[l], best)
            # only features where some window beats the k-th kept one (ties: the earlier window stays)
            rows = torch.nonzero(best > sc.top_v[l, :, -1], as_tuple=True)[0]
            if rows.numel():
                B = wmax.shape[0]
                wins = torch.arange(start, start + B, device=dev).expand(rows.numel(), B)
                out, _ = _keep([sc.top_v[l, rows], sc.top_w[l, rows], sc.top_p[l, rows]],
                               [wmax.T[rows], wins, wpos.T[rows]], k, descending=True)
                for t, o in zip((sc.top_v, sc.top_w, sc.top_p), out):
                    t[l, rows] = o


def _pass2(run: _Run, plan: IndexPlan, sc: _Scan, bd: _Bands, progress, cancel, b0: int) -> None:
    """Histograms, band counts and band samples; contexts of the examples of the first layer group.
    `sc` is the merged pass-1 state of the whole corpus."""
    s = plan.settings
    F, nb, pb, bins, C, before = plan.n_features, s.n_quantile_bands, s.examples_per_band, s.histogram_bins, \
        plan.C, s.before
    early = set(plan.groups[0])
    dev = bd.hist.device
    inv = torch.where(sc.vmax > 0, 1.0 / sc.vmax, torch.zeros_like(sc.vmax))
    top_ok = sc.top_ok
    for b in range(run.n_batches):
        check(cancel)
        report(progress, "Histograms", b0 + b, plan.n_batches)
        for l, start, a in run.batch(b, list(range(plan.n_layers))):
            B = a.shape[0]
            bin_of = (a * inv[l] * bins).long().clamp_(0, bins - 1) + torch.arange(F, device=dev) * bins
            bd.hist[l] += torch.bincount(bin_of[a > 0], minlength=F * bins)
            wmax, wpos = a.clamp(min=0).max(dim=1)
            wins = torch.arange(start, start + B, device=dev)
            in_top = ((sc.top_w[l][:, None, :] == wins[None, :, None]) & top_ok[l][:, None, :]).any(-1)  # [F, B]
            eligible = (wmax.T > 0) & ~in_top
            band = (torch.ceil(wmax.T * inv[l][:, None] * nb).long() - 1).clamp(0, nb - 1)
            early_layer = l in early
            if early_layer:
                f_i, s_i = torch.nonzero(top_ok[l] & (sc.top_w[l] >= start) & (sc.top_w[l] < start + B),
                                         as_tuple=True)
                bd.top_s[l, f_i, s_i] = _gather(a, sc.top_w[l, f_i, s_i] - start, sc.top_p[l, f_i, s_i], f_i,
                                                before, C)
            keys = band_keys(s.seed, l, wins, F) if pb else None  # [F, B]
            for j in range(nb):
                sel = eligible & (band == j)
                bd.band_n[l, :, j] += sel.sum(1)
                if pb == 0:
                    continue
                kj = torch.where(sel, keys, torch.full_like(keys, float("inf")))
                # views [F, pb] of this layer and band; only rows where a new key beats a kept one
                bk = bd.band_key[l, :, j]
                rows = torch.nonzero(kj.min(1).values < bk[:, -1], as_tuple=True)[0]
                if not rows.numel():
                    continue
                R = rows.numel()
                order = torch.sort(torch.cat([bk[rows], kj[rows]], 1), dim=1, stable=True).indices[:, :pb]
                for t, new in ((bd.band_key, kj[rows]), (bd.band_w, wins.expand(R, B)), (bd.band_p, wpos.T[rows]),
                               (bd.band_v, wmax.T[rows])):
                    view = t[l, :, j]
                    view[rows] = torch.cat([view[rows], new], 1).gather(1, order)
                if early_layer:  # contexts: kept ones move, new ones come from this batch
                    view = bd.band_s[l, :, j]
                    kept = view[rows].gather(1, order.clamp(max=pb - 1)[..., None].expand(-1, -1, C))
                    rr, ss = torch.nonzero(order >= pb, as_tuple=True)
                    src = order[rr, ss] - pb
                    kept[rr, ss] = _gather(a, src, wpos[src, rows[rr]], rows[rr], before, C)
                    view[rows] = kept


# ---- merging shard states (in shard order) ----
def merge_scans(acc: _Scan | None, part: _Scan) -> _Scan:
    """Pass-1 state of the shards so far + the next shard's -> the state of both (in place)."""
    if acc is None:
        return part
    acc.count += part.count
    acc.total += part.total
    acc.vmax = torch.maximum(acc.vmax, part.vmax)
    L, F, k = acc.top_v.shape
    out, _ = _keep([t.reshape(L * F, k) for t in (acc.top_v, acc.top_w, acc.top_p)],
                   [t.reshape(L * F, k) for t in (part.top_v, part.top_w, part.top_p)], k, descending=True)
    acc.top_v, acc.top_w, acc.top_p = (o.reshape(L, F, k) for o in out)
    return acc


def merge_bands(acc: _Bands | None, part: _Bands, scan: _Scan, plan: IndexPlan, shard: int) -> _Bands:
    """Pass-2 state of the shards so far + shard `shard`'s (in place); `scan` is the merged pass 1."""
    if acc is None:
        return part
    acc.hist += part.hist
    acc.band_n += part.band_n
    L, F, nb, pb = acc.band_key.shape
    E, C = acc.band_s.shape[0], acc.band_s.shape[-1]
    if pb:
        R = L * F * nb
        out, order = _keep([t.reshape(R, pb) for t in (acc.band_key, acc.band_w, acc.band_p, acc.band_v)],
                           [t.reshape(R, pb) for t in (part.band_key, part.band_w, part.band_p, part.band_v)],
                           pb, descending=False)
        acc.band_key, acc.band_w, acc.band_p, acc.band_v = (o.reshape(L, F, nb, pb) for o in out)
        if E:
            order = order.reshape(L, F * nb, pb)[:E].reshape(E * F * nb, pb)
            both = torch.cat([acc.band_s.reshape(E * F * nb, pb, C), part.band_s.reshape(E * F * nb, pb, C)], 1)
            acc.band_s = both.gather(1, order[..., None].expand(-1, -1, C)).reshape(E, F, nb, pb, C)
    if E:
        w0, w1 = plan.windows_of(shard)
        owned = scan.top_ok[:E] & (scan.top_w[:E] >= w0) & (scan.top_w[:E] < w1)
        acc.top_s = torch.where(owned[..., None], part.top_s, acc.top_s)
    return acc


def merge_in_order(results: Iterable[tuple[int, Any]], shards: list[int], merge) -> Any:
    """Fold `merge(acc, part, shard)` over shard results arriving in any order, in the order of
    `shards`. A shard delivered twice (a retried task) counts once; a missing one is an error."""
    acc, pending, done, nxt = None, {}, set(), 0
    for shard, part in results:
        if shard in done or shard in pending:
            continue
        pending[shard] = part
        while nxt < len(shards) and shards[nxt] in pending:
            s = shards[nxt]
            acc = merge(acc, pending.pop(s), s)
            done.add(s)
            nxt += 1
    if nxt < len(shards):
        raise RuntimeError(f"shard {shards[nxt]} never came back")
    return acc


# ---- where shards run ----
class IndexWorker:
    """The model side of a build: one shard's pass 1, pass 2 or context gathering, and a layer's
    logit effects. A Ray actor holds one (model and transcoders loaded once)."""

    def __init__(self, bundle: ModelBundle, tc: TranscoderSet) -> None:
        check_transcoders_fit(tc, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model,
                              model_name=bundle.name)
        self.bundle, self.tc = bundle, tc

    def source(self) -> IndexSource:
        return IndexSource.of(self.bundle, self.tc)

    def _run(self, plan: IndexPlan, shard: int, windows: torch.Tensor) -> _Run:
        w0, w1 = plan.windows_of(shard)
        if windows.shape[0] != w1 - w0:
            raise ValueError(f"shard {shard} has {w1 - w0} windows, got {windows.shape[0]}")
        return _Run(self.bundle, self.tc, windows, plan.bs, w0)

    @torch.no_grad()
    def run_step(self, step: str, plan: IndexPlan, shard: int, windows: torch.Tensor, shared: Any = None,
                 item: Any = None, *, progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                 to_cpu: bool = False) -> Any:
        """`step` of the build on shard `shard` (`windows`: its windows):

        * "scan": pass 1 -> `_Scan`;
        * "bands": pass 2 -> `_Bands`, `shared` = the merged `_Scan`;
        * "contexts": `shared` = layer group, `item` = requests {layer, feature, window, pos} of
          windows of this shard -> contexts [R, C] (float32, CPU)."""
        run = self._run(plan, shard, windows)
        if step == "scan":
            sc = _Scan.empty(plan, run.device)
            _pass1(run, plan, sc, progress, cancel, plan.first_batch(shard))
            return sc.to_cpu() if to_cpu else sc
        if step == "bands":
            bd = _Bands.empty(plan, run.device)
            _pass2(run, plan, shared.to(run.device), bd, progress, cancel, plan.first_batch(shard))
            return bd.to_cpu() if to_cpu else bd
        if step == "contexts":
            return self._contexts(run, plan, list(shared), item, cancel)
        raise ValueError(f"unknown step {step!r}")

    def _contexts(self, run: _Run, plan: IndexPlan, group: list[int], req: dict, cancel) -> torch.Tensor:
        L, C, before = plan.n_layers, plan.C, plan.settings.before
        out = torch.zeros(req["window"].shape[0], C)
        batch_of = (req["window"] - run.offset) // run.bs
        order = torch.argsort(batch_of * L + req["layer"], stable=True)
        keys = (batch_of * L + req["layer"])[order]
        for b in torch.unique(batch_of).tolist():
            check(cancel)
            for l, start, a in run.batch(b, group):
                lo, hi = torch.searchsorted(keys, torch.tensor([b * L + l, b * L + l + 1])).tolist()
                if lo < hi:
                    rw, rp, rf = (req[n][order[lo:hi]].to(a.device) for n in ("window", "pos", "feature"))
                    out[order[lo:hi]] = _gather(a, rw - start, rp, rf, before, C).cpu()
        return out

    @torch.no_grad()
    def logit_effects(self, layer: int, n: int):
        return _logit_effects(self.bundle, self.tc, layer, n)


class ShardExecutor(Protocol):
    """Runs `IndexWorker.run_step` over shards somewhere and reports progress of "scan" and
    "bands" in batches ("Scanning corpus" / "Histograms", done of `plan.n_batches`)."""

    def run(self, step: str, plan: IndexPlan, windows: torch.Tensor, shards: list[int], shared: Any = None,
            items: dict[int, Any] | None = None) -> Iterator[tuple[int, Any]]:
        """(shard, result) for every shard in `shards`, in any order, each at least once."""

    def logit_effects(self, layers: list[int], n: int) -> dict[int, tuple]:
        ...


class LocalExecutor:
    """Every shard in this process, one after the other (the default)."""

    def __init__(self, worker: IndexWorker, progress: ProgressFn | None = None,
                 cancel: CancelToken | None = None) -> None:
        self.worker, self.progress, self.cancel = worker, progress, cancel

    def run(self, step, plan, windows, shards, shared=None, items=None):
        for s in shards:
            w0, w1 = plan.windows_of(s)
            yield s, self.worker.run_step(step, plan, s, windows[w0:w1], shared, (items or {}).get(s),
                                          progress=self.progress, cancel=self.cancel)

    def logit_effects(self, layers, n):
        out = {}
        for l in layers:
            check(self.cancel)
            out[l] = self.worker.logit_effects(l, n)
        return out


# ---- the build ----
@torch.no_grad()
def build_feature_index(bundle: ModelBundle, tc: TranscoderSet, windows: torch.Tensor, out_path: str | Path, *,
                        top_k: int = 20, n_quantile_bands: int = 4, examples_per_band: int = 5,
                        context_window: tuple[int, int] = (-12, 4), histogram_bins: int = 30,
                        n_logits: int = 10, batch_size: int = 8, corpus_name: str = "", seed: int = 0,
                        memory_budget_mb: int = 512, shard_batches: int = 64, progress: ProgressFn | None = None,
                        cancel: CancelToken | None = None) -> FeatureIndex:
    """Index every feature of `tc` on the corpus `windows` [N, T] (BOS-first token windows, e.g.
    from `corpus_text.token_windows`) and write the index to `out_path` (see `feature_index`),
    in this process (`circuit_studio.scale.ray_index` does the same on a Ray cluster).

    Raises TranscoderLoadError when `tc` does not fit the model, FeatureIndexError for bad windows
    or options, Cancelled when `cancel` is set (nothing is left behind in either case)."""
    worker = IndexWorker(bundle, tc)
    settings = IndexSettings(top_k=top_k, n_quantile_bands=n_quantile_bands, examples_per_band=examples_per_band,
                             context_window=(int(context_window[0]), int(context_window[1])),
                             histogram_bins=histogram_bins, n_logits=n_logits, batch_size=batch_size, seed=seed,
                             memory_budget_mb=memory_budget_mb, shard_batches=shard_batches)
    return run_index_build(LocalExecutor(worker, progress, cancel), worker.source(), bundle.tokenizer, windows,
                           out_path, settings, corpus_name=corpus_name, progress=progress, cancel=cancel)


def check_index_output(out_path: str | Path) -> Path:
    """The resolved output path; FeatureIndexError if its folder is missing or it is another file."""
    out_path = Path(out_path).expanduser().resolve()
    if not out_path.parent.is_dir():
        raise FeatureIndexError(f"Cannot write {out_path}: folder {out_path.parent} does not exist.")
    if out_path.exists():
        try:
            FeatureIndex.open(out_path).close()
        except FeatureIndexError as e:
            raise FeatureIndexError(f"{out_path} exists and is not a feature index; not replacing it.",
                                    "Choose another output file.") from e
    return out_path


@torch.no_grad()
def run_index_build(executor: ShardExecutor, source: IndexSource, tokenizer, windows: torch.Tensor,
                    out_path: str | Path, settings: IndexSettings = IndexSettings(), *, corpus_name: str = "",
                    progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> FeatureIndex:
    """The build, with the shards run by `executor` (see the module docstring): pass 1 over all
    shards, merged in shard order; pass 2 likewise; then the contexts of later layer groups, the
    logit effects, labels, and the file (temporary, renamed when complete)."""
    windows = _validate_windows(source, windows)
    settings.check()
    out_path = check_index_output(out_path)
    N, T = windows.shape
    plan = IndexPlan(settings, N, T, source.n_layers, source.n_features)
    shards = list(range(plan.n_shards))
    scan = merge_in_order(executor.run("scan", plan, windows, shards), shards, lambda acc, part, s: merge_scans(acc, part))
    check(cancel)
    report(progress, "Scanning corpus", plan.n_batches, plan.n_batches)
    bands = merge_in_order(executor.run("bands", plan, windows, shards, shared=scan), shards,
                           lambda acc, part, s: merge_bands(acc, part, scan, plan, s))
    check(cancel)
    report(progress, "Histograms", plan.n_batches, plan.n_batches)
    scan, bands = scan.to_cpu(), bands.to_cpu()

    with replace_all_or_none([out_path], error=_write_error) as (tmp,):
        conn = sqlite3.connect(tmp)
        try:
            _create_schema(conn)
            n_tokens = N * (T - 1)
            _examples_and_write(conn, plan, executor, scan, bands, windows, tokenizer, n_tokens, progress, cancel)
            meta = dict(format=INDEX_FORMAT, version=INDEX_VERSION, model=source.model_name,
                        transcoder_scan=source.transcoder_scan, transcoder_kind=source.transcoder_kind,
                        transcoder_source=source.transcoder_source,
                        transcoder_fingerprint=source.transcoder_fingerprint,
                        feature_input_hook=source.feature_input_hook, feature_output_hook=source.feature_output_hook,
                        n_layers=source.n_layers, n_features=source.n_features,
                        corpus=corpus_name, n_windows=N, context=T, n_tokens=n_tokens,
                        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        settings=json.dumps(settings.recorded()))
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(key, str(v)) for key, v in meta.items()])
            conn.commit()
        finally:
            conn.close()
        check(cancel)
    report(progress, "Writing index", 1, 1)
    return FeatureIndex.open(out_path)


def _write_error(e: BaseException, path: Path | str) -> FeatureIndexError:
    """A failed write of the index, as the FeatureIndexError that says why (nothing is left behind)."""
    return output_error(e, path, cls=FeatureIndexError)


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=OFF")  # a temporary file, renamed only when complete
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("CREATE TABLE features (id INTEGER PRIMARY KEY, layer INTEGER NOT NULL, feature INTEGER NOT NULL,"
                 " n_active INTEGER NOT NULL, density REAL NOT NULL, max_act REAL NOT NULL, mean_act REAL NOT NULL,"
                 " label TEXT NOT NULL)")
    conn.execute("CREATE TABLE feature_data (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    conn.execute("CREATE TABLE windows (id INTEGER PRIMARY KEY, tokens BLOB NOT NULL)")
    conn.execute("CREATE TABLE tokens (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")


def _requests(sc: _Scan, bd: _Bands, layers: list[int]) -> dict[str, torch.Tensor]:
    """Every example of `layers`: layer, feature, window, pos, band (-1 = top), value; per layer the
    top examples then the band samples, in the row-major order of `top_ok` and `band_ok`."""
    top_ok, band_ok = sc.top_ok, bd.band_ok
    parts = []
    for l in layers:
        f, s = torch.nonzero(top_ok[l], as_tuple=True)
        parts.append((torch.full_like(f, l), f, sc.top_w[l, f, s], sc.top_p[l, f, s], torch.full_like(f, -1),
                      sc.top_v[l, f, s]))
        f, j, s = torch.nonzero(band_ok[l], as_tuple=True)
        parts.append((torch.full_like(f, l), f, bd.band_w[l, f, j, s], bd.band_p[l, f, j, s], j,
                      bd.band_v[l, f, j, s]))
    cols = [torch.cat(c) for c in zip(*parts)]
    return dict(zip(("layer", "feature", "window", "pos", "band", "value"), cols))


def _layer_groups(L: int, F: int, per_feature: int, C: int, budget_mb: int) -> list[list[int]]:
    """Consecutive layer groups whose example contexts ([F, per_feature, C] floats) fit the budget."""
    per_layer = F * per_feature * (C * 4 + 64)
    n = max(1, min(L, (budget_mb << 20) // max(1, per_layer)))
    return [list(range(s, min(L, s + n))) for s in range(0, L, n)]


def _gather(a: torch.Tensor, b: torch.Tensor, pos: torch.Tensor, f: torch.Tensor, before: int, C: int) -> torch.Tensor:
    """Contexts [R, C] of activations a [B, T, F]: feature f[r] in row b[r], from max(0, pos - before)
    on (positions past the end repeat the last one; they are masked out later)."""
    T = a.shape[1]
    cols = ((pos - before).clamp(min=0)[:, None] + torch.arange(C, device=a.device)).clamp(max=T - 1)
    return a[b[:, None], cols, f[:, None]]


def _examples_and_write(conn, plan: IndexPlan, executor: ShardExecutor, sc: _Scan, bd: _Bands,
                        windows: torch.Tensor, tokenizer, n_tokens: int, progress, cancel) -> None:
    """Contexts of the later layer groups (pass 3), logit effects, labels; write every feature."""
    s = plan.settings
    L, T, C, before, after = plan.n_layers, plan.context, plan.C, s.before, s.after
    strings: dict[int, str] = {}
    stored_windows: set[int] = set()
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    ar = torch.arange(C)
    groups = plan.groups
    for gi, group in enumerate(groups):
        req = _requests(sc, bd, group)
        R = req["layer"].shape[0]
        starts = (req["pos"] - before).clamp(min=0)
        lengths = torch.minimum(req["pos"] + after, torch.full_like(starts, T - 1)) - starts + 1
        if gi == 0:  # gathered during pass 2, in the same order as the requests
            top_ok, band_ok = sc.top_ok, bd.band_ok
            slices = torch.cat([t for l in group for t in (bd.top_s[l][top_ok[l]], bd.band_s[l][band_ok[l]])])
        else:  # pass 3: only the shards (and in them the batches) holding an example of this group
            slices = torch.zeros(R, C)
            shard_of = req["window"] // plan.shard_size
            needed = torch.unique(shard_of).tolist()
            rows = {sh: torch.nonzero(shard_of == sh, as_tuple=True)[0] for sh in needed}
            items = {sh: {n: req[n][r] for n in ("layer", "feature", "window", "pos")} for sh, r in rows.items()}
            report(progress, "Examples", 0, len(needed), f"layers {group[0]}-{group[-1]}")
            seen: set[int] = set()
            for sh, part in executor.run("contexts", plan, windows, needed, shared=tuple(group), items=items):
                check(cancel)
                slices[rows[sh]] = part  # a shard delivered twice writes the same values again
                seen.add(sh)
                report(progress, "Examples", len(seen), len(needed), f"layers {group[0]}-{group[-1]}")
            if len(seen) < len(needed):
                raise RuntimeError("a shard's contexts never came back")
        slices *= (ar[None, :] < lengths[:, None])
        # windows and token strings the examples of this group show, stored once per index
        new_windows = [w for w in torch.unique(req["window"]).tolist() if w not in stored_windows]
        conn.executemany("INSERT INTO windows VALUES (?, ?)",
                         [(w, windows[w].to(torch.int32).numpy().astype("<i4").tobytes()) for w in new_windows])
        stored_windows.update(new_windows)
        ids_needed = set(torch.unique(windows[new_windows]).tolist()) if new_windows else set()
        check(cancel)
        effects = executor.logit_effects(list(group), s.n_logits)
        for l in group:
            check(cancel)
            report(progress, "Logit effects", l, L)
            eff = effects[l]
            ids_needed |= set(torch.unique(torch.cat([eff[0].reshape(-1), eff[2].reshape(-1)])).tolist())
            new = [i for i in sorted(ids_needed) if i not in strings]
            strings.update(_decode(tokenizer, new))
            conn.executemany("INSERT INTO tokens VALUES (?, ?)", [(i, strings[i]) for i in new])
            ids_needed = set()
            _write_layer(conn, plan, windows, sc, bd, l, req, starts, lengths, slices, eff, strings, special,
                         n_tokens)
    report(progress, "Logit effects", L, L)


def _logit_effects(bundle: ModelBundle, tc: TranscoderSet, layer: int, n: int):
    """(top ids, top values, bottom ids, bottom values), each [F, n] on the CPU (see module doc)."""
    W_U = bundle.arch.unembed.detach().float()
    norm = bundle.arch.final_norm
    dec = tc.w_dec[layer].detach().float().to(W_U.device)
    if tc.is_clt:
        dec = dec.sum(1)
    if norm.kind == "layer":
        dec = dec - dec.mean(-1, keepdim=True)
    dec = dec * norm.gain.to(W_U.device)
    V = W_U.shape[0]
    n = min(n, V)
    chunk = max(1, (1 << 25) // V)
    out = [[], [], [], []]
    for s in range(0, dec.shape[0], chunk):
        e = dec[s:s + chunk] @ W_U.T
        e = e - e.mean(1, keepdim=True)
        tv, ti = e.topk(n, dim=1)
        bv, bi = (-e).topk(n, dim=1)
        for lst, t in zip(out, (ti, tv, bi, -bv)):
            lst.append(t.cpu())
    return tuple(torch.cat(o) for o in out)


def _write_layer(conn, plan: IndexPlan, windows: torch.Tensor, sc: _Scan, bd: _Bands, l: int, req: dict, starts,
                 lengths, slices, eff, strings, special: set[int], n_tokens: int) -> None:
    F = plan.n_features
    count, total, vmax = sc.count[l], sc.total[l], sc.vmax[l]
    hist, band_n = bd.hist[l].view(F, -1).numpy(), bd.band_n[l].numpy()
    nb, bins = band_n.shape[1], hist.shape[1]
    sel = torch.nonzero(req["layer"] == l, as_tuple=True)[0]
    # requests of this layer, grouped by feature; top examples first (by rank), then bands by value
    f_of, band_of, val_of = req["feature"][sel], req["band"][sel], req["value"][sel]
    sel = sel[torch.from_numpy(np.lexsort((-val_of.numpy(), band_of.numpy(), f_of.numpy())))]
    bounds = np.searchsorted(req["feature"][sel].numpy(), np.arange(F + 1))
    info_all = torch.stack([req["band"][sel], req["window"][sel], starts[sel], lengths[sel],
                            req["pos"][sel] - starts[sel]], 1).to(torch.int32).numpy()
    max_all = req["value"][sel].numpy().astype(np.float32)
    rel_all = slices[sel] / req["value"][sel].clamp(min=1e-30)[:, None]
    rel_all = rel_all.to(torch.float16).numpy()
    max_tok = windows[req["window"][sel], req["pos"][sel]].tolist()
    lengths_all = info_all[:, 3]
    top_ids, top_vals, bot_ids, bot_vals = (t.numpy() for t in eff)
    rows, blobs = [], []
    for f in range(F):
        lo, hi = bounds[f], bounds[f + 1]
        info = info_all[lo:hi]
        rel = (np.concatenate([rel_all[i, :n] for i, n in zip(range(lo, hi), lengths_all[lo:hi])])
               if hi > lo else np.zeros(0, np.float16))
        m = float(vmax[f])
        blob = pack_arrays({
            "ex_info": info, "ex_max": max_all[lo:hi], "ex_rel": rel,
            "band_edges": (np.arange(nb + 1, dtype=np.float64) * m / nb).astype(np.float32),
            "band_counts": band_n[f].astype(np.int64),
            "hist_edges": np.linspace(0.0, m, bins + 1).astype(np.float32), "hist_counts": hist[f],
            "top_ids": top_ids[f].astype(np.int32), "top_vals": top_vals[f].astype(np.float32),
            "bottom_ids": bot_ids[f].astype(np.int32), "bottom_vals": bot_vals[f].astype(np.float32)})
        reads = [strings[max_tok[i]] for i in range(lo, hi) if info_all[i, 0] < 0]
        says = [strings[int(i)] for i in top_ids[f] if int(i) not in special]
        c = int(count[f])
        fid = l * F + f
        rows.append((fid, l, f, c, c / n_tokens if n_tokens else 0.0, m, float(total[f]) / c if c else 0.0,
                     auto_label(reads, says)))
        blobs.append((fid, blob))
    conn.executemany("INSERT INTO features VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.executemany("INSERT INTO feature_data VALUES (?, ?)", blobs)
