"""A feature-index build cut into shards: its settings and plan, the per-feature state each pass
accumulates over one shard (`IndexWorker`: the part that needs the model), and the exact merge of
shard states in shard order. Where shards run is a `ShardExecutor`'s business: `LocalExecutor`
here, one after the other; `circuit_studio.scale` on Ray actors. `feature_index_build` drives the
passes and writes the file; its docstring defines what is kept per feature.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any, Iterable, Iterator, Protocol

import torch

from ..model.activations import collect_activations
from .index import FeatureIndexError
from ..model.loading import ModelBundle
from ..progress import CancelToken, ProgressFn, check, report
from ..transcoders.loading import check_transcoders_fit
from ..transcoders.transcoder_set import TranscoderSet


def transcoder_fingerprint(tc: TranscoderSet) -> str:
    """A cheap hash of the transcoders' sizes and a sample of their weights (to match graphs)."""
    h = hashlib.sha256(f"{tc.kind}:{tc.n_layers}:{tc.n_features}:{tc.d_model}".encode())
    for l in range(tc.n_layers):
        for t in (tc.w_enc[l], tc.w_dec[l]):
            flat = t.reshape(-1)
            h.update(flat[:: max(1, flat.numel() // 256)][:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]



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
