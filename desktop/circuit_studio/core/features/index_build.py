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

Shards (how the work is cut, `IndexPlan`; the accumulating and merging live in `feature_index_shards`): the corpus is cut into shards of `shard_batches`
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
import json
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..atomic_write import output_error, replace_all_or_none
from .index import INDEX_FORMAT, INDEX_VERSION, FeatureIndex, FeatureIndexError, pack_arrays
from ..model.loading import ModelBundle
from ..progress import CancelToken, ProgressFn, check, report
from ..transcoders.transcoder_set import TranscoderSet
from .index_shards import (IndexPlan, IndexSettings, IndexSource, IndexWorker, LocalExecutor, ShardExecutor,
                                   _Bands, _Scan, _validate_windows, merge_bands, merge_in_order, merge_scans)

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


def _decode(tokenizer, ids: list[int]) -> dict[int, str]:
    out = {}
    for i in ids:
        s = tokenizer.decode([i])
        if not s:
            s = str(tokenizer.convert_ids_to_tokens(i) or "")
        out[i] = s
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
