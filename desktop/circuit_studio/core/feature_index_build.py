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
  `examples_per_band` windows (smallest random keys, seeded: the same input gives the same index).
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
pass, group of layers by group, over just the batches that hold one of their examples.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

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


def _validate_windows(bundle: ModelBundle, windows: torch.Tensor) -> torch.Tensor:
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2:
        raise FeatureIndexError("The corpus windows must be a 2-D tensor [N, context] of token ids.")
    if windows.shape[0] == 0:
        raise FeatureIndexError("The corpus gives no windows to index.", "Use a corpus with at least one line.")
    if windows.shape[1] < 2:
        raise FeatureIndexError("Windows need at least 2 tokens (BOS and one token).", "Use a larger --context.")
    if windows.dtype.is_floating_point or windows.dtype == torch.bool:
        raise FeatureIndexError(f"Token ids must be integers, not {windows.dtype}.")
    vocab = int(bundle.arch.unembed.shape[0])
    lo, hi = int(windows.min()), int(windows.max())
    if lo < 0 or hi >= vocab:
        raise FeatureIndexError(f"Token id {hi if hi >= vocab else lo} is outside the model's vocabulary "
                                f"(0..{vocab - 1}).", "Tokenise the corpus with this model's tokenizer.")
    limit = bundle.summary.max_positions
    if limit and windows.shape[1] > limit:
        raise FeatureIndexError(f"Windows of {windows.shape[1]} tokens are longer than {bundle.name} takes "
                                f"({limit}).", f"Use a context of at most {limit}.")
    return windows.long().cpu()


class _Run:
    """Runs batches of windows through the model and returns transcoder activations."""

    def __init__(self, bundle: ModelBundle, tc: TranscoderSet, windows: torch.Tensor, batch_size: int) -> None:
        self.bundle, self.tc, self.windows, self.bs = bundle, tc, windows, batch_size
        self.n_batches = (windows.shape[0] + batch_size - 1) // batch_size
        self.device = tc.w_enc[0].device

    def batch(self, b: int, layers: list[int]):
        """Yield (layer, window offset, activations [B, T, F]) for batch b (BOS column zeroed)."""
        start = b * self.bs
        ids = self.windows[start:start + self.bs]
        rec = collect_activations(self.bundle, ids, feature_input_hook=self.tc.feature_input_hook,
                                  feature_output_hook=self.tc.feature_output_hook, layers=layers)
        for i, l in enumerate(layers):
            x = rec.reads[i].to(device=self.device, dtype=torch.float32)  # weights are cast per chunk
            acts = self.tc.encode(l, x).float()
            acts[:, 0] = 0.0
            yield l, start, acts


# ---- the two passes over the corpus ----
@dataclass
class _Stats:
    """Per-feature running state, [L, F, ...]: pass 1 fills count..top_p, pass 2 the rest; the
    contexts top_s / band_s [E, F, .., C] only for the first E layers (see `_layer_groups`)."""

    count: torch.Tensor  # active tokens
    total: torch.Tensor  # sum of activations (float64)
    vmax: torch.Tensor
    top_v: torch.Tensor  # [L, F, k] window max, best first; 0 = empty slot
    top_w: torch.Tensor  # window
    top_p: torch.Tensor  # position of the max in the window
    hist: torch.Tensor  # [L, F * bins]
    band_n: torch.Tensor  # [L, F, nb] windows per band (top windows excluded)
    band_key: torch.Tensor  # [L, F, nb, pb] random keys of the sample, smallest first; inf = empty
    band_w: torch.Tensor
    band_p: torch.Tensor
    band_v: torch.Tensor
    top_s: torch.Tensor  # [E, F, k, C]
    band_s: torch.Tensor  # [E, F, nb, pb, C]

    @classmethod
    def empty(cls, L: int, F: int, k: int, nb: int, pb: int, bins: int, E: int, C: int, dev) -> "_Stats":
        def z(*shape, dtype=torch.float32, fill=0.0):
            return torch.full(shape, fill, dtype=dtype, device=dev)

        return cls(z(L, F, dtype=torch.long), z(L, F, dtype=torch.float64), z(L, F), z(L, F, k),
                   z(L, F, k, dtype=torch.long, fill=-1), z(L, F, k, dtype=torch.long),
                   z(L, F * bins, dtype=torch.long), z(L, F, nb, dtype=torch.long), z(L, F, nb, pb, fill=float("inf")),
                   z(L, F, nb, pb, dtype=torch.long, fill=-1), z(L, F, nb, pb, dtype=torch.long), z(L, F, nb, pb),
                   z(E, F, k, C), z(E, F, nb, pb, C))

    def to_cpu(self) -> "_Stats":
        return _Stats(**{f.name: getattr(self, f.name).cpu() for f in fields(self)})

    @property
    def top_ok(self) -> torch.Tensor:
        return self.top_v > 0

    @property
    def band_ok(self) -> torch.Tensor:
        return torch.isfinite(self.band_key)


def _pass1(run: _Run, st: _Stats, progress, cancel) -> None:
    """Counts, sums, max and the top-k windows of every feature."""
    k, dev = st.top_v.shape[2], st.top_v.device
    for b in range(run.n_batches):
        check(cancel)
        report(progress, "Scanning corpus", b, run.n_batches)
        for l, start, a in run.batch(b, list(range(run.tc.n_layers))):
            a = a.clamp(min=0)
            st.count[l] += (a > 0).sum((0, 1))
            st.total[l] += a.sum((0, 1), dtype=torch.float64)
            wmax, wpos = a.max(dim=1)  # [B, F], first position of the max
            best = wmax.max(0).values
            st.vmax[l] = torch.maximum(st.vmax[l], best)
            # only features where some window beats the k-th kept one (ties: the earlier window stays)
            rows = torch.nonzero(best > st.top_v[l, :, -1], as_tuple=True)[0]
            if rows.numel():
                B = wmax.shape[0]
                wins = torch.arange(start, start + B, device=dev).expand(rows.numel(), B)
                order = torch.sort(torch.cat([st.top_v[l, rows], wmax.T[rows]], 1), dim=1, descending=True,
                                   stable=True).indices[:, :k]
                for t, new in ((st.top_v, wmax.T[rows]), (st.top_w, wins), (st.top_p, wpos.T[rows])):
                    t[l, rows] = torch.cat([t[l, rows], new], 1).gather(1, order)
    report(progress, "Scanning corpus", run.n_batches, run.n_batches)


def _pass2(run: _Run, st: _Stats, early: list[int], before: int, seed: int, progress, cancel) -> None:
    """Histograms, band counts and band samples; contexts of the examples of the `early` layers."""
    F, nb, pb = st.band_key.shape[1:]
    bins, C, dev = st.hist.shape[1] // F, st.top_s.shape[-1], st.top_v.device
    inv = torch.where(st.vmax > 0, 1.0 / st.vmax, torch.zeros_like(st.vmax))
    top_ok = st.top_ok
    gen = torch.Generator().manual_seed(seed)
    for b in range(run.n_batches):
        check(cancel)
        report(progress, "Histograms", b, run.n_batches)
        for l, start, a in run.batch(b, list(range(run.tc.n_layers))):
            B = a.shape[0]
            keys = torch.rand(B, F, generator=gen).to(dev)
            bin_of = (a * inv[l] * bins).long().clamp_(0, bins - 1) + torch.arange(F, device=dev) * bins
            st.hist[l] += torch.bincount(bin_of[a > 0], minlength=F * bins)
            wmax, wpos = a.clamp(min=0).max(dim=1)
            wins = torch.arange(start, start + B, device=dev)
            in_top = ((st.top_w[l][:, None, :] == wins[None, :, None]) & top_ok[l][:, None, :]).any(-1)  # [F, B]
            eligible = (wmax.T > 0) & ~in_top
            band = (torch.ceil(wmax.T * inv[l][:, None] * nb).long() - 1).clamp(0, nb - 1)
            early_layer = l in early
            if early_layer:
                f_i, s_i = torch.nonzero(top_ok[l] & (st.top_w[l] >= start) & (st.top_w[l] < start + B),
                                         as_tuple=True)
                st.top_s[l, f_i, s_i] = _gather(a, st.top_w[l, f_i, s_i] - start, st.top_p[l, f_i, s_i], f_i,
                                                before, C)
            for j in range(nb):
                sel = eligible & (band == j)
                st.band_n[l, :, j] += sel.sum(1)
                if pb == 0:
                    continue
                kj = torch.where(sel, keys.T, torch.full_like(keys.T, float("inf")))
                # views [F, pb] of this layer and band; only rows where a new key beats a kept one
                bk = st.band_key[l, :, j]
                rows = torch.nonzero(kj.min(1).values < bk[:, -1], as_tuple=True)[0]
                if not rows.numel():
                    continue
                R = rows.numel()
                order = torch.sort(torch.cat([bk[rows], kj[rows]], 1), dim=1, stable=True).indices[:, :pb]
                for t, new in ((st.band_key, kj[rows]), (st.band_w, wins.expand(R, B)), (st.band_p, wpos.T[rows]),
                               (st.band_v, wmax.T[rows])):
                    view = t[l, :, j]
                    view[rows] = torch.cat([view[rows], new], 1).gather(1, order)
                if early_layer:  # contexts: kept ones move, new ones come from this batch
                    view = st.band_s[l, :, j]
                    kept = view[rows].gather(1, order.clamp(max=pb - 1)[..., None].expand(-1, -1, C))
                    rr, ss = torch.nonzero(order >= pb, as_tuple=True)
                    src = order[rr, ss] - pb
                    kept[rr, ss] = _gather(a, src, wpos[src, rows[rr]], rows[rr], before, C)
                    view[rows] = kept
    report(progress, "Histograms", run.n_batches, run.n_batches)


# ---- the build ----
@torch.no_grad()
def build_feature_index(bundle: ModelBundle, tc: TranscoderSet, windows: torch.Tensor, out_path: str | Path, *,
                        top_k: int = 20, n_quantile_bands: int = 4, examples_per_band: int = 5,
                        context_window: tuple[int, int] = (-12, 4), histogram_bins: int = 30,
                        n_logits: int = 10, batch_size: int = 8, corpus_name: str = "", seed: int = 0,
                        memory_budget_mb: int = 512, progress: ProgressFn | None = None,
                        cancel: CancelToken | None = None) -> FeatureIndex:
    """Index every feature of `tc` on the corpus `windows` [N, T] (BOS-first token windows, e.g.
    from `corpus_text.token_windows`) and write the index to `out_path` (see `feature_index`).

    Raises TranscoderLoadError when `tc` does not fit the model, FeatureIndexError for bad windows
    or options, Cancelled when `cancel` is set (nothing is left behind in either case)."""
    check_transcoders_fit(tc, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model, model_name=bundle.name)
    windows = _validate_windows(bundle, windows)
    before, after = -int(context_window[0]), int(context_window[1])
    for name, value, low in (("top_k", top_k, 1), ("n_quantile_bands", n_quantile_bands, 1),
                             ("examples_per_band", examples_per_band, 0), ("histogram_bins", histogram_bins, 1),
                             ("n_logits", n_logits, 1), ("batch_size", batch_size, 1),
                             ("context before", before, 0), ("context after", after, 0)):
        if value < low:
            raise FeatureIndexError(f"{name} must be at least {low} (got {value}).")
    out_path = Path(out_path).expanduser().resolve()
    if not out_path.parent.is_dir():
        raise FeatureIndexError(f"Cannot write {out_path}: folder {out_path.parent} does not exist.")
    if out_path.exists():
        try:
            FeatureIndex.open(out_path).close()
        except FeatureIndexError as e:
            raise FeatureIndexError(f"{out_path} exists and is not a feature index; not replacing it.",
                                    "Choose another output file.") from e

    N, T = windows.shape
    run = _Run(bundle, tc, windows, batch_size)
    C = before + after + 1
    k, nb, pb = min(top_k, N), n_quantile_bands, examples_per_band
    groups = _layer_groups(tc.n_layers, tc.n_features, k + nb * pb, C, memory_budget_mb)
    st = _Stats.empty(tc.n_layers, tc.n_features, k, nb, pb, histogram_bins, len(groups[0]), C, run.device)
    _pass1(run, st, progress, cancel)
    _pass2(run, st, groups[0], before, seed, progress, cancel)
    st = st.to_cpu()

    with replace_all_or_none([out_path], error=_write_error) as (tmp,):
        conn = sqlite3.connect(tmp)
        try:
            _create_schema(conn)
            n_tokens = N * (T - 1)
            _examples_and_write(conn, run, st, groups, before, after, n_tokens, n_logits, progress, cancel)
            settings = dict(top_k=top_k, n_quantile_bands=nb, examples_per_band=pb, context_window=[-before, after],
                            histogram_bins=histogram_bins, n_logits=n_logits, batch_size=batch_size, seed=seed)
            meta = dict(format=INDEX_FORMAT, version=INDEX_VERSION, model=bundle.name, transcoder_scan=tc.scan,
                        transcoder_kind=tc.kind, transcoder_source=str(tc.source or ""),
                        transcoder_fingerprint=transcoder_fingerprint(tc), feature_input_hook=tc.feature_input_hook,
                        feature_output_hook=tc.feature_output_hook, n_layers=tc.n_layers, n_features=tc.n_features,
                        corpus=corpus_name, n_windows=N, context=T, n_tokens=n_tokens,
                        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        settings=json.dumps(settings))
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


def _requests(st: _Stats, layers: list[int]) -> dict[str, torch.Tensor]:
    """Every example of `layers`: layer, feature, window, pos, band (-1 = top), value; per layer the
    top examples then the band samples, in the row-major order of `top_ok` and `band_ok`."""
    top_ok, band_ok = st.top_ok, st.band_ok
    parts = []
    for l in layers:
        f, s = torch.nonzero(top_ok[l], as_tuple=True)
        parts.append((torch.full_like(f, l), f, st.top_w[l, f, s], st.top_p[l, f, s], torch.full_like(f, -1),
                      st.top_v[l, f, s]))
        f, j, s = torch.nonzero(band_ok[l], as_tuple=True)
        parts.append((torch.full_like(f, l), f, st.band_w[l, f, j, s], st.band_p[l, f, j, s], j,
                      st.band_v[l, f, j, s]))
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


def _examples_and_write(conn, run: _Run, st: _Stats, groups: list[list[int]], before: int, after: int,
                        n_tokens: int, n_logits: int, progress, cancel) -> None:
    """Contexts of the later layer groups (pass 3), logit effects, labels; write every feature."""
    L = run.tc.n_layers
    T, C = run.windows.shape[1], before + after + 1
    tokenizer = run.bundle.tokenizer
    strings: dict[int, str] = {}
    stored_windows: set[int] = set()
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    ar = torch.arange(C)
    late = groups[1:]
    for gi, group in enumerate(groups):
        req = _requests(st, group)
        R = req["layer"].shape[0]
        starts = (req["pos"] - before).clamp(min=0)
        lengths = torch.minimum(req["pos"] + after, torch.full_like(starts, T - 1)) - starts + 1
        if gi == 0:  # gathered during pass 2, in the same order as the requests
            top_ok, band_ok = st.top_ok, st.band_ok
            slices = torch.cat([t for l in group for t in (st.top_s[l][top_ok[l]], st.band_s[l][band_ok[l]])])
        else:  # pass 3: only the batches holding an example of this group
            slices = torch.zeros(R, C)
            batch_of = req["window"] // run.bs
            order = torch.argsort(batch_of * L + req["layer"], stable=True)
            keys = (batch_of * L + req["layer"])[order]
            needed = torch.unique(batch_of).tolist()
            for i, b in enumerate(needed):
                check(cancel)
                report(progress, "Examples", i + (gi - 1) * len(needed), len(needed) * len(late))
                for l, start, a in run.batch(b, group):
                    lo, hi = torch.searchsorted(keys, torch.tensor([b * L + l, b * L + l + 1])).tolist()
                    if lo < hi:
                        rw, rp, rf = (req[n][order[lo:hi]].to(a.device) for n in ("window", "pos", "feature"))
                        slices[order[lo:hi]] = _gather(a, rw - start, rp, rf, before, C).cpu()
        slices *= (ar[None, :] < lengths[:, None])
        # windows and token strings the examples of this group show, stored once per index
        new_windows = [w for w in torch.unique(req["window"]).tolist() if w not in stored_windows]
        conn.executemany("INSERT INTO windows VALUES (?, ?)",
                         [(w, run.windows[w].to(torch.int32).numpy().astype("<i4").tobytes()) for w in new_windows])
        stored_windows.update(new_windows)
        ids_needed = set(torch.unique(run.windows[new_windows]).tolist()) if new_windows else set()
        for l in group:
            check(cancel)
            report(progress, "Logit effects", l, L)
            eff = _logit_effects(run.bundle, run.tc, l, n_logits)
            ids_needed |= set(torch.unique(torch.cat([eff[0].reshape(-1), eff[2].reshape(-1)])).tolist())
            new = [i for i in sorted(ids_needed) if i not in strings]
            strings.update(_decode(tokenizer, new))
            conn.executemany("INSERT INTO tokens VALUES (?, ?)", [(i, strings[i]) for i in new])
            ids_needed = set()
            _write_layer(conn, run, st, l, req, starts, lengths, slices, eff, strings, special, n_tokens)
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


def _write_layer(conn, run: _Run, st: _Stats, l: int, req: dict, starts, lengths, slices, eff, strings,
                 special: set[int], n_tokens: int) -> None:
    F = run.tc.n_features
    count, total, vmax = st.count[l], st.total[l], st.vmax[l]
    hist, band_n = st.hist[l].view(F, -1).numpy(), st.band_n[l].numpy()
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
    max_tok = run.windows[req["window"][sel], req["pos"][sel]].tolist()
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
