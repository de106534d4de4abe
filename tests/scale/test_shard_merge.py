"""The feature index as shards + merges (no Ray): any order of finished shards, duplicates, and the
sampling keys give exactly the single-sweep index."""

from __future__ import annotations

import random

import pytest
import torch

from circuit_studio.core.features.index import FeatureIndex
from circuit_studio.core.features.index_build import build_feature_index, run_index_build
from circuit_studio.core.features.index_shards import IndexSettings, IndexWorker, LocalExecutor, band_keys, merge_in_order

from scale_helpers import N_FEATURES, assert_same_index, index_tables

SETTINGS = dict(batch_size=4, top_k=5, examples_per_band=3, shard_batches=2)


class ShuffledExecutor(LocalExecutor):
    """Runs the shards in a random order and delivers some of them twice (as a retry would)."""

    def __init__(self, worker, seed):
        super().__init__(worker)
        self.rng = random.Random(seed)
        self.calls: list[tuple[str, int]] = []

    def run(self, step, plan, windows, shards, shared=None, items=None):
        order = list(shards)
        self.rng.shuffle(order)
        order += self.rng.sample(order, k=min(2, len(order)))  # duplicates: must count once
        for s in order:
            self.calls.append((step, s))
            yield from super().run(step, plan, windows, [s], shared, items)


@pytest.mark.parametrize("memory_budget_mb,twice", [(512, True), (0, False)])
def test_any_shard_order_and_duplicates_give_the_same_index(tiny, tmp_path, memory_budget_mb, twice):
    """memory 0: the later layer's contexts come from a third pass, shard by shard. twice: the corpus
    twice over, so that window w and w + N tie exactly (in different shards): the earlier stays first."""
    windows = torch.cat([tiny.windows, tiny.windows]) if twice else tiny.windows
    ref = tmp_path / "ref.idx"
    build_feature_index(tiny.bundle, tiny.tc, windows, ref, memory_budget_mb=memory_budget_mb, **SETTINGS).close()
    worker = IndexWorker(tiny.bundle, tiny.tc)
    executor = ShuffledExecutor(worker, seed=memory_budget_mb + 1)
    out = tmp_path / "shuffled.idx"
    settings = IndexSettings(memory_budget_mb=memory_budget_mb, **SETTINGS)
    run_index_build(executor, worker.source(), tiny.bundle.tokenizer, windows, out, settings).close()
    if twice:
        N = tiny.windows.shape[0]
        with FeatureIndex.open(out) as index:
            pairs = [(e.window, [x.window for x in d.top_examples])
                     for d in (index.feature(l, f) for l in range(2) for f in range(N_FEATURES))
                     for e in d.top_examples if e.window < N]
        tied = [(w, wins) for w, wins in pairs if w + N in wins]
        assert len(tied) > 20 and all(wins.index(w) < wins.index(w + N) for w, wins in tied)
    n_shards = -(-windows.shape[0] // 8)
    assert n_shards >= 4
    scans = [s for step, s in executor.calls if step == "scan"]
    assert sorted(set(scans)) == list(range(n_shards)) and len(scans) > n_shards and scans != sorted(scans)
    if memory_budget_mb == 0:
        assert any(step == "contexts" for step, _ in executor.calls)
    assert_same_index(ref, out)


def test_shard_size_changes_only_float_sums(tiny, tmp_path):
    """One shard or many: every example, count, histogram and label is the same; only the mean (a
    float64 sum added in another order) may differ in its last bits, and the setting is recorded."""
    a, b = tmp_path / "one.idx", tmp_path / "many.idx"
    build_feature_index(tiny.bundle, tiny.tc, tiny.windows, a, batch_size=4, top_k=5, shard_batches=1000).close()
    build_feature_index(tiny.bundle, tiny.tc, tiny.windows, b, batch_size=4, top_k=5, shard_batches=1).close()
    ta, tb = index_tables(a), index_tables(b)
    for table in ("feature_data", "windows", "tokens"):
        assert ta[table] == tb[table]
    for ra, rb in zip(ta["features"], tb["features"]):
        assert ra[:6] == rb[:6] and ra[7] == rb[7]
        assert ra[6] == pytest.approx(rb[6], rel=1e-12)
    with FeatureIndex.open(a) as ia, FeatureIndex.open(b) as ib:
        assert ia.info.settings["shard_batches"] == 1000 and ib.info.settings["shard_batches"] == 1


def test_band_keys_depend_on_position_only():
    wins = torch.arange(0, 12)
    k = band_keys(7, 1, wins, 48)
    assert k.shape == (48, 12) and k.dtype == torch.float32
    assert float(k.min()) >= 0 and float(k.max()) < 1
    # the same key for a window whatever batch it is in
    assert torch.equal(torch.cat([band_keys(7, 1, wins[:5], 48), band_keys(7, 1, wins[5:], 48)], 1), k)
    assert not torch.equal(band_keys(8, 1, wins, 48), k) and not torch.equal(band_keys(7, 0, wins, 48), k)
    assert torch.unique(k).numel() > 0.99 * k.numel()
    # roughly uniform
    big = band_keys(0, 0, torch.arange(4000), 64)
    assert abs(float(big.mean()) - 0.5) < 0.01
    counts = torch.histc(big, bins=10, min=0, max=1)
    assert float(counts.min()) > 0.9 * big.numel() / 10


def test_merge_in_order_counts_each_shard_once():
    seen = []

    def merge(acc, part, shard):
        seen.append(shard)
        return (acc or 0) * 10 + part

    assert merge_in_order([(2, 3), (0, 1), (2, 3), (1, 2), (0, 1)], [0, 1, 2], merge) == 123
    assert seen == [0, 1, 2]
    with pytest.raises(RuntimeError, match="shard 1"):
        merge_in_order([(0, 1), (2, 3)], [0, 1, 2], merge)
