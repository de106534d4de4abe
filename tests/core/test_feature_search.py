"""Feature search over the demo's feature index: by label and by top-example text, ranked, as prefixes
(search as you type), by number; FTS5 and the LIKE fallback; the cache next to the index file; the
session's graphs where a feature is active."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from circuit_studio.core.features.index import FeatureIndex
from circuit_studio.core.features.search import FeatureSearch, graphs_with_feature, has_fts5

DEMO_INDEX = Path(__file__).resolve().parents[2] / "resources" / "demo" / "features.sqlite"


@pytest.fixture(scope="module")
def index():
    with FeatureIndex.open(DEMO_INDEX) as ix:
        yield ix


@pytest.fixture(scope="module", params=["fts5", "like"])
def search(request, index):
    if request.param == "fts5" and not has_fts5():
        pytest.skip("this SQLite has no FTS5")
    s = FeatureSearch(index, use_fts=request.param == "fts5")
    assert s.cache_path is None, "a small index keeps its search index in memory"
    yield s
    s.close()


def test_by_label_ranked(search, index):
    hits = search.search("Sacramento")
    assert hits and all(h.score >= hits[-1].score for h in hits)
    assert "Sacramento" in hits[0].label and hits[0].label == index.label(hits[0].layer, hits[0].feature)
    assert len(search.search("Sacramento", limit=3)) <= 3


def test_prefixes_as_you_type(search):
    for typed in ("sacr", "sacra", "sacramento"):
        assert any("Sacramento" in h.label for h in search.search(typed)[:3]), typed


def test_by_example_text(search, index):
    hits = search.search("containing Dallas")  # words of the two-hop prompts, in the top examples
    assert hits
    d = index.feature(hits[0].layer, hits[0].feature)
    text = " ".join("".join(e.tokens) for e in d.top_examples).lower()
    assert "containing" in text and "dallas" in text
    assert any(h.excerpt for h in hits), "a match in the examples shows where"


def test_by_number_and_empty(search, index):
    assert [(h.layer, h.feature) for h in search.search("L0#98")] == [(0, 98)]
    assert [(h.layer, h.feature) for h in search.search("2:15")] == [(2, 15)]
    assert [(h.layer, h.feature) for h in search.search("#5")] == [(l, 5) for l in range(index.info.n_layers)]
    assert search.search("") == [] and search.search("   ") == [] and search.search("!!") == []
    assert search.search("zzqqxxnotaword") == []


def test_fast(search):
    search.search("warm")
    times = []
    for q in ("a", "th", "cap", "capital", "Austin", "the capital of", "Bay"):
        t0 = time.perf_counter()
        search.search(q)
        times.append(time.perf_counter() - t0)
    assert max(times) < 0.1, times


def test_cache_next_to_the_index(tmp_path, index):
    copy = tmp_path / "features.sqlite"
    shutil.copyfile(DEMO_INDEX, copy)
    with FeatureIndex.open(copy) as ix:
        cache = tmp_path / "features.sqlite.search"
        s = FeatureSearch(ix, cache=cache)
        first = s.search("Sacramento")
        assert s.build_seconds is not None and cache.is_file()
        s.close()
        s2 = FeatureSearch(ix, cache=cache)
        assert s2.search("Sacramento") == first and s2.build_seconds is None, "read from the cache"
        s2.close()
    copy.touch()  # the index changed: the cache is rebuilt
    with FeatureIndex.open(copy) as ix:
        s3 = FeatureSearch(ix, cache=cache)
        assert s3.search("Sacramento") == first and s3.build_seconds is not None
        s3.close()
    assert not list(tmp_path.glob("*.tmp"))


def test_graphs_with_feature():
    def graph(rows, values, selected, prompt):
        return SimpleNamespace(active_features=np.array(rows, np.int64), activation_values=np.array(values),
                               selected_features=np.array(selected, np.int64), token_strings=["<bos>", "a", "b", "c"],
                               prompt=prompt)
    ws = SimpleNamespace(graphs={
        1: SimpleNamespace(graph=graph([[0, 1, 5], [0, 2, 5], [1, 1, 5]], [1.0, 2.0, 9.0], [1], "one"),
                           display_title="one"),
        2: SimpleNamespace(graph=graph([[1, 3, 7]], [1.0], [], "two"), display_title="two"),
        3: SimpleNamespace(graph=graph([[0, 3, 5]], [4.0], [], "three"), display_title="three")})
    found = graphs_with_feature(ws, 0, 5)
    assert [(a.graph_id, a.positions, a.max_activation, a.is_node) for a in found] == [
        (3, (3,), 4.0, False), (1, (1, 2), 2.0, True)]
    assert found[1].tokens == ("a", "b")
    assert graphs_with_feature(ws, 2, 5) == []
