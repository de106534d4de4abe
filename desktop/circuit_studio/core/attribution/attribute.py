"""Attribution: prompt + model + transcoders -> the full attribution graph (circuit-tracer's method).

Following "Circuit Tracing" (Ameisen et al., 2025) and circuit-tracer 0.5.0, spec §2-§3:

0. One clean forward pass records the read/write tensors, attention patterns and norm scales.
   Transcoder activations at the read points give the active features (position 0 zeroed),
   the reconstruction gives the error vectors, and the last position's logits give the targets:
   the top `max_n_logits` tokens up to cumulative probability `desired_logit_prob`.
1. Logit rows: each target's demeaned unembedding column is pushed back through the frozen
   model (`frozen_backward`), giving its direct effects from every feature, error and token.
2. Feature rows: each active feature's encoder row is pushed back from its read point, giving
   the effects on its pre-activation. With a `max_feature_nodes` budget the features are visited
   greedily by their influence on the logits, estimated from the rows gathered so far.
3. The rows go into the graph's adjacency (`core.graph.adjacency`): without a budget each batch's edges
   are written straight into blocks holding only the entries that can be non-zero; with a budget
   the frontier's rows are kept over every active feature (the influence estimate needs them) and
   the selected rows' blocks are gathered from them at the end.

The backward passes are `frozen_backward.PackedBackward`'s: rows batched by position, each one
propagated from its own position, no multiply-add on a known zero (see that module).

Edges: feature source s (activation a_s, decoder W_dec[s]) -> sum over the layers it writes to of
<g_write, a_s W_dec[s]>; error source -> <g_write, error>; token -> <g_embed, embedding>.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import torch

from ..graph.adjacency import Adjacency, Block
from ..errors import PromptError
from .frozen_backward import FrozenBackward, PackedBackward, RowBatch, SourceLayout, flush_subnormals, plan_batches
from ..graph.attribution_graph import AttributionGraph, AttributionParams
from ..model.loading import ModelBundle, decode_tokens, tokenize_prompt
from ..progress import CancelToken, ProgressFn, check, report
from ..model.replacement import CleanRun, record_clean_run
from .targets import LogitTargets, TargetSpec, resolve_targets, select_logit_targets
from ..transcoders.loading import check_transcoders_fit
from ..transcoders.transcoder_set import TranscoderSet


@dataclass(frozen=True, eq=False)
class _Phase0:
    clean: CleanRun
    active: torch.Tensor  # int64 [n_active, 3] (layer, pos, feature), lexicographic
    values: torch.Tensor  # [n_active]
    errors: torch.Tensor  # [L, P, d]
    targets: LogitTargets


def _phase0(bundle: ModelBundle, ids: torch.Tensor, tc: TranscoderSet, params: AttributionParams,
            targets: TargetSpec = None) -> _Phase0:
    clean = record_clean_run(bundle, ids, tc)
    L = tc.n_layers
    zeroed = bundle.n_zeroed_positions
    with torch.no_grad():
        acts = []
        for layer in range(L):
            # float32 whatever the model's dtype: which features are active must not hinge on rounding
            acts.append(tc.encode(layer, clean.reads[layer].float()))  # [P, F]
            tc.release_layer(layer)  # a memory-mapped encoder is read once; let its pages go
        acts = torch.stack(acts)  # [L, P, F]
        acts[:, :zeroed] = 0
        active = torch.nonzero(acts)  # row-major, hence (layer, pos, feature) lexicographic
        values = acts[active[:, 0], active[:, 1], active[:, 2]]
        errors = clean.writes.float() - tc.reconstruct(acts, clean.reads.float())
        errors[:, :zeroed] = 0
    logit_targets = resolve_targets(targets, clean.logits[-1], bundle.arch.unembed, bundle.tokenizer,
                                    params.max_n_logits, params.desired_logit_prob)
    return _Phase0(clean, active, values, errors, logit_targets)


class _EdgeRows:
    """The sources of direct effects, columns [active features, errors, tokens], in the forms the
    backward passes need (each built on first use)."""

    def __init__(self, p0: _Phase0, tc: TranscoderSet, backward: FrozenBackward, cancel: CancelToken | None):
        self.p0, self.tc, self.backward, self.cancel = p0, tc, backward, cancel
        L, P = p0.errors.shape[:2]
        self.L, self.P = L, P
        self.n_active = int(p0.active.shape[0])
        self.n_cols = self.n_active + L * P + P
        dev, dtype = backward.device, backward.dtype
        self.errors = p0.errors.to(dev, dtype)
        self.tokens = p0.clean.token_vectors.to(dev, dtype)
        # Active features are sorted by (layer, pos, feature), so one layer's features are the columns
        # [c0, c1) and each position's are a contiguous run inside them: spans [(pos, start, end)] relative to c0.
        self.layer_columns: dict[int, tuple[int, int, list[tuple[int, int, int]]]] = {}
        active = p0.active.cpu()
        for src in range(L):
            idx = torch.nonzero(active[:, 0] == src).flatten()
            if idx.numel() == 0:
                continue
            c0, c1 = int(idx[0]), int(idx[-1]) + 1
            bounds = torch.searchsorted(active[c0:c1, 1].contiguous(), torch.arange(P + 1)).tolist()
            spans = [(p, bounds[p], bounds[p + 1]) for p in range(P) if bounds[p + 1] > bounds[p]]
            self.layer_columns[src] = (c0, c1, spans)

    @cached_property
    def decoders(self) -> dict[tuple[int, int], torch.Tensor]:
        """Decoder rows scaled by activation, per (source layer, output layer) [n_src, d] (`FrozenBackward.run`'s users)."""
        dev, dtype = self.backward.device, self.backward.dtype
        out = {}
        for src, (c0, c1, _) in self.layer_columns.items():
            feat = self.p0.active[c0:c1, 2].to(dev)
            scale = self.p0.values[c0:c1, None].to(dev, dtype)
            for dst in (range(src, self.L) if self.tc.is_clt else (src,)):
                out[src, dst] = self.tc.decoder_rows(src, feat, dst).to(dtype) * scale
        return out

    @cached_property
    def encoders(self) -> torch.Tensor:
        """Encoder rows of every active feature (the feature rows' injected vectors) [n_active, d], stored dtype.
        Gathered once: an encoder stored [d, F] (GemmaScope) would otherwise be paged in whole by every batch."""
        active = self.p0.active
        enc = self.tc.encoder_rows(active[:, 0], active[:, 2])
        for layer in range(self.L):  # all a memory-mapped set contributes is now in memory
            self.tc.release_layer(layer)
        return enc

    @cached_property
    def layout(self) -> SourceLayout:
        """Columns in the packed pass's order (`frozen_backward.SourceLayout`), ids in active coordinates:
        feature = active index, error = n_active + layer * P + pos, token = n_active + L * P + pos."""
        p0, tc, L, P = self.p0, self.tc, self.L, self.P
        dev = self.backward.device
        active = p0.active.cpu()
        values = p0.values.float()
        nodes, starts, features = [], [], {}
        for src in range(L):
            c0, c1, _ = self.layer_columns.get(src, (0, 0, []))
            counts = np.bincount(active[c0:c1, 1].numpy(), minlength=P)
            nodes.append(np.arange(c0, c1, dtype=np.int64))
            starts.append(tuple(int(x) for x in np.concatenate([[0], np.cumsum(counts)])))
            if c1 == c0:
                continue
            feat = active[c0:c1, 2].to(dev)
            scale = values[c0:c1, None].to(dev)
            for dst in (range(src, L) if tc.is_clt else (src,)):
                features[src, dst] = tc.decoder_rows(src, feat, dst).float() * scale
        errors = self.n_active + np.arange(L * P, dtype=np.int64).reshape(L, P)
        return SourceLayout(feature_nodes=tuple(nodes), feature_starts=tuple(starts), features=features,
                            error_nodes=tuple(errors), errors=p0.errors.float(),
                            token_nodes=self.n_active + L * P + np.arange(P), tokens=p0.clean.token_vectors)


class _BlockSink:
    """Hands `PackedBackward.run` the tensors to write a batch's edges into.

    `final`: new float32 blocks of the graph's adjacency, kept in `blocks` (ids are the layout's);
    otherwise scratch in a reused buffer, scattered after the batch into rows of `matrix` by `flush`."""

    def __init__(self, layout: SourceLayout, matrix: torch.Tensor | None = None) -> None:
        self.layout, self.matrix = layout, matrix
        self.blocks: list[Block] = []
        self._pending: list[tuple[np.ndarray, np.ndarray, torch.Tensor]] = []
        self._scratch = torch.empty(0)
        self._used = 0

    def for_batch(self, row_ids: np.ndarray, n_pos: int):
        self._used = 0
        self._pending.clear()

        def block(s: int, n: int) -> torch.Tensor:
            cols = self.layout.columns(s, n_pos)
            rows = row_ids[:n]
            if self.matrix is None:
                values = np.empty((cols.size, n), dtype=np.float32)
                self.blocks.append(Block(rows, cols, values))
                return torch.from_numpy(values)
            size = cols.size * n
            if self._used + size > self._scratch.numel():
                self._scratch = torch.empty(max(2 * self._scratch.numel(), self._used + size))
                self._used = 0
            view = self._scratch[self._used: self._used + size].view(cols.size, n)
            self._used += size
            self._pending.append((rows, cols, view))
            return view
        return block

    def flush(self) -> None:
        for rows, cols, values in self._pending:
            r = torch.from_numpy(rows)
            # a block's columns are a few contiguous runs (features, errors): copy each as a slab of rows
            cuts = (np.flatnonzero(np.diff(cols) != 1) + 1).tolist()
            for a, b in zip([0] + cuts, cuts + [cols.size]):
                c = int(cols[a])
                self.matrix[r, c: c + b - a] = values[a:b].T
        self._pending.clear()


class _RowProgress:
    """Counts rows done and reports "Feature rows" in units of batch_size rows, one step at a time
    (checking for cancellation before each), as a batch-by-batch loop would."""

    def __init__(self, progress: ProgressFn | None, cancel: CancelToken | None, batch_size: int, total: int) -> None:
        self.progress, self.cancel, self.bs, self.total = progress, cancel, batch_size, total
        self.rows = self.shown = 0

    def __call__(self, n: int) -> None:
        self.rows += n
        for step in range(self.shown + 1, min(math.ceil(self.rows / self.bs), self.total) + 1):
            check(self.cancel)
            report(self.progress, "Feature rows", step, self.total)
            self.shown = step


def _run_rows(engine: PackedBackward, sink: _BlockSink, layers: np.ndarray, positions: np.ndarray,
              vectors: torch.Tensor, row_ids: np.ndarray, cancel: CancelToken | None,
              done: Callable[[int], None] | None = None, max_row_positions: int | None = None) -> None:
    """Rows (target layer, position, injected vector) -> their edges, through `sink`, batch by batch."""
    for idx, n_pos in plan_batches(layers, positions, max_row_positions or engine.max_row_positions):
        check(cancel)
        t = torch.from_numpy(idx)
        batch = RowBatch(layers[idx], positions[idx], vectors[t.to(vectors.device)], n_pos)
        engine.run(batch, sink.for_batch(row_ids[idx], n_pos), cancel=lambda: check(cancel))
        if sink.matrix is not None:
            sink.flush()
        if done is not None:
            done(idx.size)


class _PartialInfluences:
    """circuit-tracer's influence estimate from the rows computed so far (spec §3.4).

    rows [R, n_cols + K] (the first R of `matrix`, K logit columns last); `row_nodes[:R]` maps each
    row to its column. With M = |rows| / (row sums) and prod_1 = w, prod_{k+1} = prod_k[row_nodes] @ M,
    the influence is Σ_k prod_{k+1} = (Σ_k u_k) @ M where u_k = prod_k[row_nodes];
    u_{k+1} = u_k @ M[:, row_nodes]. So the series runs on the R x R part, and the full rows are read
    once for the last product, `chunk` rows at a time through one reused buffer (a fresh |rows| chunk
    each time costs page faults: 4x slower, measured at 4,000 x 51,000). Row sums are kept: a row does
    not change once written."""

    def __init__(self, matrix: torch.Tensor, row_nodes: torch.Tensor, logit_probs: torch.Tensor, n_cols: int,
                 chunk: int = 64) -> None:
        self.matrix, self.row_nodes, self.logit_probs, self.n_cols = matrix, row_nodes, logit_probs, n_cols
        self.sums = torch.empty(matrix.shape[0])
        self.n_summed = 0
        self.chunk = chunk
        self.buffer = torch.empty(chunk, matrix.shape[1])

    def __call__(self, R: int, max_iter: int = 128) -> torch.Tensor:
        """float32 [n_cols]: the estimate from the first R rows."""
        rows, row_nodes = self.matrix[:R], self.row_nodes[:R]
        C = rows.shape[1]
        if R > self.n_summed:
            self.sums[self.n_summed:R] = torch.linalg.vector_norm(rows[self.n_summed:], ord=1, dim=1).clamp_(min=1e-8)
            self.n_summed = R
        sums = self.sums[:R]
        square = torch.index_select(rows, 1, row_nodes).abs_().div_(sums[:, None])  # [R, R]
        start = torch.zeros(C)
        start[-self.logit_probs.shape[0]:] = self.logit_probs
        u = start[row_nodes]
        total = torch.zeros(R)
        for _ in range(max_iter):
            total += u
            u = u @ square
            if not u.any():
                break
        else:
            raise RuntimeError("partial influences did not converge: the rows do not form a DAG")
        weight = total / sums
        influence = torch.zeros(C)
        for i in range(0, R, self.chunk):
            part = rows[i: i + self.chunk]
            absolute = torch.abs(part, out=self.buffer[: part.shape[0]])
            influence.addmv_(absolute.T, weight[i: i + self.chunk])
        return influence[: self.n_cols]


def attribute(prompt: str | list[int] | torch.Tensor, bundle: ModelBundle, transcoders: TranscoderSet,
              params: AttributionParams = AttributionParams(), *, targets: TargetSpec = None,
              progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> AttributionGraph:
    """Compute the full attribution graph of `prompt` (see the module docstring). `targets`
    chooses the logit nodes (`core.attribution.targets`): None for the salient logits, token ids, token
    strings or CustomTarget directions."""
    for name, value in (("batch_size", params.batch_size), ("max_n_logits", params.max_n_logits),
                        ("update_interval", params.update_interval)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1 (got {value})")
    if params.max_feature_nodes is not None and params.max_feature_nodes < 0:
        raise ValueError(f"max_feature_nodes must be >= 0 (got {params.max_feature_nodes})")
    if not 0 < params.desired_logit_prob <= 1:
        raise ValueError(f"desired_logit_prob must be in (0, 1] (got {params.desired_logit_prob})")
    check_transcoders_fit(transcoders, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model,
                          model_name=bundle.name)
    started = time.perf_counter()
    ids = tokenize_prompt(bundle, prompt)
    tc = transcoders  # weights are cast to the model's device and dtype piece by piece, as used
    report(progress, "Forward pass", 0, 1)
    p0 = _phase0(bundle, ids, tc, params, targets)
    check(cancel)
    report(progress, "Forward pass", 1, 1)
    timings = {"forward": time.perf_counter() - started}

    flush_subnormals()  # for this thread; the command line and the window set it before any work
    fb = FrozenBackward(bundle.arch, p0.clean, tc, bundle.dtype)
    edges = _EdgeRows(p0, tc, fb, cancel)
    K, n_active, n_cols = p0.targets.token_ids.shape[0], edges.n_active, edges.n_cols
    budget = n_active if params.max_feature_nodes is None else min(params.max_feature_nodes, n_active)
    bs = params.batch_size
    L, P = tc.n_layers, ids.shape[0]
    # A batch holds at most bs x P row-positions: the state of the padded [bs, P, d] batch it replaces.
    engine = PackedBackward(fb, p0.clean, edges.layout, max_row_positions=bs * P)
    # the logit rows in one batch whatever the batch size (they are few)
    logit_rp = max(bs, K) * P
    active = p0.active.cpu().numpy()
    logit_layers, logit_pos = np.full(K, L, dtype=np.int64), np.full(K, P - 1, dtype=np.int64)
    total_batches = math.ceil(budget / bs)
    timings["setup"] = time.perf_counter() - started - timings["forward"]

    if budget == n_active:
        # Every active feature: the rows are written straight into the graph's blocks, in node order
        # coordinates (features keep their active index, logits follow the tokens).
        sink = _BlockSink(edges.layout)
        t0 = time.perf_counter()
        _run_rows(engine, sink, logit_layers, logit_pos, p0.targets.vectors,
                  n_cols + np.arange(K, dtype=np.int64), cancel, max_row_positions=logit_rp)
        report(progress, "Logit rows", K, K)
        timings["logit_rows"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        count = _RowProgress(progress, cancel, bs, total_batches)
        macs0 = engine.macs
        _run_rows(engine, sink, active[:, 0], active[:, 1], edges.encoders, np.arange(n_active, dtype=np.int64),
                  cancel, count)
        timings["feature_rows"] = time.perf_counter() - t0
        work = {"feature_row_macs": engine.macs - macs0}
        t0 = time.perf_counter()
        selected = torch.arange(n_active)
        adjacency = Adjacency(n_cols + K, sink.blocks)
    else:
        # A feature budget: rows in the order computed (K logit rows, then feature rows) in one matrix
        # over every active feature, which the partial-influence estimate ranks the frontier from.
        # The extra K zero columns stand for the logit nodes.
        matrix = torch.zeros(K + budget, n_cols + K)
        row_nodes = torch.empty(K + budget, dtype=torch.long)
        row_nodes[:K] = torch.arange(n_cols, n_cols + K)
        sink = _BlockSink(edges.layout, matrix)
        t0 = time.perf_counter()
        _run_rows(engine, sink, logit_layers, logit_pos, p0.targets.vectors, np.arange(K, dtype=np.int64), cancel,
                  max_row_positions=logit_rp)
        report(progress, "Logit rows", K, K)
        timings["logit_rows"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        visited = torch.zeros(n_active, dtype=torch.bool)
        influences = _PartialInfluences(matrix, row_nodes, p0.targets.probabilities, n_cols)
        n_done = 0
        count = _RowProgress(progress, cancel, bs, total_batches)
        macs0 = engine.macs
        while n_done < budget:
            infl = influences(K + n_done)[:n_active]
            order = torch.argsort(infl, descending=True, stable=True)
            order = order[~visited[order]]
            queue = torch.sort(order[: min(params.update_interval * bs, budget - n_done)]).values
            slots = K + n_done + np.arange(queue.shape[0], dtype=np.int64)
            which = queue.numpy()
            _run_rows(engine, sink, active[which, 0], active[which, 1], edges.encoders[queue.to(edges.encoders.device)],
                      slots, cancel, count)
            row_nodes[K + n_done: K + n_done + queue.shape[0]] = queue
            visited[queue] = True
            n_done += queue.shape[0]
        timings["feature_rows"] = time.perf_counter() - t0
        work = {"feature_row_macs": engine.macs - macs0}
        t0 = time.perf_counter()
        selected = torch.nonzero(visited).flatten()
        adjacency = _blocks_from_rows(p0, matrix, row_nodes, selected, edges.layout)

    text = prompt if isinstance(prompt, str) else bundle.tokenizer.decode(ids.tolist())
    graph = _package(bundle, p0, adjacency, selected, params, ids, text, tc.scan)
    timings["package"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    graph.provenance["seconds"] = timings
    graph.provenance["work"] = work
    report(progress, "Done", 1, 1)
    return graph


def _blocks_from_rows(p0: _Phase0, matrix: torch.Tensor, row_nodes: torch.Tensor, selected: torch.Tensor,
                      layout: SourceLayout) -> Adjacency:
    """The budget path's rows (in computed order, columns over every active feature) -> the graph's
    blocks in node order: selected features only, one block per (position, source layer)."""
    K = p0.targets.token_ids.shape[0]
    L, P = p0.errors.shape[:2]
    n_active = int(p0.active.shape[0])
    sel = selected.numpy()
    n_sel = sel.size
    N = n_sel + L * P + P + K
    rank = np.full(n_active, -1, dtype=np.int64)
    rank[sel] = np.arange(n_sel)
    # active coordinates -> node coordinates (features not selected drop out)
    to_node = np.concatenate([rank, n_sel + np.arange(L * P + P)])
    kept = []  # per source layer: its selected features (active ids) and where each position's begin
    for s in range(L):
        f = layout.feature_nodes[s]
        keep = rank[f] >= 0
        kept.append((f[keep], np.concatenate([[0], np.cumsum(keep)])[list(layout.feature_starts[s])]))
    slot = np.empty(n_active, dtype=np.int64)
    slot[row_nodes[K:].numpy()] = np.arange(K, row_nodes.shape[0])
    active = p0.active.cpu().numpy()
    blocks = []

    def add(rows_slots: np.ndarray, rows_nodes: np.ndarray, row_layers: np.ndarray, n_pos: int) -> None:
        rs = torch.from_numpy(rows_slots)
        for s in list(range(L)) + [-1]:
            n = int(np.count_nonzero(row_layers > s))
            if n == 0:
                continue
            if s < 0:
                cols = layout.token_nodes[:n_pos]
            else:
                f, st = kept[s]
                cols = np.concatenate([f[:st[n_pos]], layout.error_nodes[s][:n_pos]])
            values = matrix[rs[:n]][:, torch.from_numpy(cols)].T.contiguous().numpy()
            blocks.append(Block(rows_nodes[:n], to_node[cols], values))

    if n_sel:
        order = sel[np.lexsort((sel, -active[sel, 0], active[sel, 1]))]  # by position, then layer descending
        pos = active[order, 1]
        for group in np.split(order, np.flatnonzero(np.diff(pos)) + 1):
            add(slot[group], rank[group], active[group, 0], int(active[group[0], 1]) + 1)
    add(np.arange(K), N - K + np.arange(K), np.full(K, L), P)
    return Adjacency(N, blocks)


def _package(bundle: ModelBundle, p0: _Phase0, adjacency: Adjacency, selected: torch.Tensor,
             params: AttributionParams, ids: torch.Tensor, prompt: str, transcoder_name: str) -> AttributionGraph:
    L, P = p0.errors.shape[:2]
    return AttributionGraph(
        prompt=prompt, input_tokens=ids.numpy().astype(np.int64),
        token_strings=decode_tokens(bundle, ids),
        active_features=p0.active.cpu().numpy().astype(np.int64),
        activation_values=p0.values.float().cpu().numpy(),
        selected_features=selected.numpy().astype(np.int64),
        logit_token_ids=p0.targets.token_ids.numpy().astype(np.int64),
        logit_probabilities=p0.targets.probabilities.numpy().astype(np.float32),
        logit_tokens=p0.targets.labels or decode_tokens(bundle, p0.targets.token_ids),
        adjacency=adjacency, n_layers=L, vocab_size=int(bundle.arch.unembed.shape[0]), params=params,
        model_name=bundle.name, transcoder_name=transcoder_name,
        provenance=_provenance(bundle),
    )


def _provenance(bundle: ModelBundle) -> dict:
    import importlib.metadata as md
    from datetime import datetime, timezone

    versions = {}
    for pkg in ("circuit-studio", "torch", "transformers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    device = torch.cuda.get_device_name(bundle.device) if bundle.device.type == "cuda" else "cpu"
    return {"versions": versions, "device": device, "dtype": str(bundle.dtype).removeprefix("torch."),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_folder": str(bundle.summary.folder)}


__all__ = ["attribute", "select_logit_targets", "resolve_targets", "LogitTargets", "PromptError"]
