"""Feature index: exact answers on planted and brute-forced corpora, file errors, bad input, cancel."""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import sqlite3

import numpy as np
import pytest
import torch

from circuit_studio.commands import index_features
from circuit_studio.core.model.activations import collect_activations
from circuit_studio.core.features.corpus_text import CorpusError, read_corpus, token_windows
from circuit_studio.core.errors import Cancelled, TranscoderLoadError
from circuit_studio.core.features.index import FeatureIndex, FeatureIndexError, build_feature_index
from circuit_studio.core.features.index_build import auto_label
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.progress import CancelToken
from circuit_studio.core.synthetic import WORDS, default_hooks, random_transcoders
from circuit_studio.core.transcoders.writing import save_transcoders

N_FEATURES = 48
CONTEXT = 16


def _lines(seed: int = 0, n: int = 50) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def _bundle(tiny_model_folder, family: str):
    return load_model(tiny_model_folder(family), device="cpu")


def _tc(family: str, kind: str = "plt", seed: int = 1, **kw):
    rh, wh = default_hooks(family)
    return random_transcoders(n_layers=2, d_model=64, n_features=N_FEATURES, kind=kind, seed=seed,
                              feature_input_hook=rh, feature_output_hook=wh, **kw)


@pytest.fixture(scope="module")
def llama(tiny_model_folder):
    bundle = _bundle(tiny_model_folder, "llama")
    return bundle, _tc("llama"), token_windows(bundle.tokenizer, _lines(), context=CONTEXT)


# ---- brute force ----
def _brute_acts(bundle, tc, windows, batch_size):
    """All activations [L, N, T, F] (BOS column zeroed), run in the index's batches so that the
    numbers are bit-identical to the streamed ones."""
    per_layer = [[] for _ in range(tc.n_layers)]
    for s in range(0, windows.shape[0], batch_size):
        rec = collect_activations(bundle, windows[s:s + batch_size], feature_input_hook=tc.feature_input_hook,
                                  feature_output_hook=tc.feature_output_hook)
        for l in range(tc.n_layers):
            a = tc.encode(l, rec.reads[l]).float()
            a[:, 0] = 0
            per_layer[l].append(a)
    return torch.stack([torch.cat(p) for p in per_layer]).numpy()


def _brute_logits(bundle, tc, layer, n=10):
    dec = tc.w_dec[layer].float()
    dec = dec.sum(1) if tc.is_clt else dec
    if bundle.arch.final_norm.kind == "layer":
        dec = dec - dec.mean(-1, keepdim=True)
    eff = (dec * bundle.arch.final_norm.gain) @ bundle.arch.unembed.float().T
    eff = (eff - eff.mean(1, keepdim=True)).numpy()
    order = np.argsort(-eff, axis=1, kind="stable")
    return eff, order[:, :n], order[:, ::-1][:, :n]


def _check_against_brute_force(bundle, tc, windows, index, *, batch_size, top_k, n_bands=4, before=12, after=4):
    acts = _brute_acts(bundle, tc, windows, batch_size)  # [L, N, T, F]
    L, N, T, F = acts.shape
    n_tokens = N * (T - 1)
    assert index.info.n_tokens == n_tokens and index.info.n_windows == N
    tok = windows.numpy()
    for l in range(L):
        eff, top_ids, bottom_ids = _brute_logits(bundle, tc, l)
        stats = index.layer_statistics(l)
        labels = index.labels(l)
        for f in range(F):
            a = acts[l, :, :, f]  # [N, T]
            d = index.feature(l, f)
            n_active = int((a > 0).sum())
            assert d.n_active == n_active == stats["n_active"][f]
            assert d.density == n_active / n_tokens
            wmax = a.max(1)
            assert d.max_activation == float(wmax.max())
            if n_active:
                assert d.mean_activation == pytest.approx(float(a[a > 0].sum()) / n_active, rel=1e-5)
            # the true top contexts: windows by max activation, ties to the earlier window
            ranked = [w for w in sorted(range(N), key=lambda w: (-wmax[w], w)) if wmax[w] > 0][:top_k]
            assert [e.window for e in d.top_examples] == ranked
            for e in d.top_examples:
                w = e.window
                assert e.max_activation == float(wmax[w])
                p = e.start + e.max_position
                assert a[w, p] == wmax[w]
                assert e.start == max(0, p - before) and e.start + len(e.tokens) == min(T, p + after + 1)
                assert list(e.token_ids) == tok[w, e.start:e.start + len(e.tokens)].tolist()
                assert e.tokens == tuple(bundle.tokenizer.decode([i]) for i in e.token_ids)
                np.testing.assert_allclose(e.activations, a[w, e.start:e.start + len(e.tokens)],
                                           rtol=0, atol=1e-3 * e.max_activation)
                assert e.activations[e.max_position] == e.max_activation
            # histogram over the non-zero activations, linear bins up to the max
            h = d.histogram
            assert len(h.counts) == 30 and len(h.edges) == 31 and sum(h.counts) == n_active
            if n_active:
                ref, _ = np.histogram(a[a > 0], bins=np.asarray(h.edges, np.float64))
                assert np.abs(ref - np.asarray(h.counts)).sum() <= 2  # only edge rounding may differ
            # bands of the max activation: counts exact, samples inside their band, no top repeats
            m = np.float32(d.max_activation)
            inv = np.float32(1.0) / m if m > 0 else np.float32(0)
            band = np.clip(np.ceil(wmax * inv * np.float32(n_bands)).astype(np.int64) - 1, 0, n_bands - 1)
            eligible = (wmax > 0) & ~np.isin(np.arange(N), ranked)
            assert [b.n_contexts for b in d.band_examples] == [int((eligible & (band == j)).sum())
                                                               for j in range(n_bands)]
            for b in d.band_examples:
                assert len(b.examples) == min(5, b.n_contexts)
                maxes = [e.max_activation for e in b.examples]
                assert maxes == sorted(maxes, reverse=True)
                for e in b.examples:
                    assert eligible[e.window] and band[e.window] == b.index
                    assert e.max_activation == float(wmax[e.window])
                    assert b.low - 1e-6 <= e.max_activation <= b.high + 1e-6
            assert len({e.window for b in d.band_examples for e in b.examples}) == sum(
                len(b.examples) for b in d.band_examples)
            # logit effects
            assert [t.token_id for t in d.top_logits] == top_ids[f].tolist()
            assert [t.token_id for t in d.bottom_logits] == bottom_ids[f].tolist()
            np.testing.assert_allclose([t.value for t in d.top_logits], eff[f, top_ids[f]], rtol=1e-4, atol=1e-5)
            assert d.top_logits[0].token == bundle.tokenizer.decode([int(top_ids[f, 0])])
            assert d.label == labels[f] == index.label(l, f) and 0 < len(d.label) <= 40


def test_top_contexts_density_histogram_bands_logits_equal_brute_force(llama, tmp_path):
    bundle, tc, windows = llama
    index = build_feature_index(bundle, tc, windows, tmp_path / "f.idx", batch_size=9, top_k=6, corpus_name="c.txt")
    with index:
        assert index.info.model == bundle.name and index.info.corpus == "c.txt"
        _check_against_brute_force(bundle, tc, windows, index, batch_size=9, top_k=6)
    assert [p.name for p in tmp_path.iterdir()] == ["f.idx"]  # no temporary file left


@pytest.mark.parametrize("family,kind", [("llama", "clt"), ("gpt2", "plt")])
def test_clt_and_layernorm_models_equal_brute_force(tiny_model_folder, tmp_path, family, kind):
    bundle = _bundle(tiny_model_folder, family)
    tc = _tc(family, kind=kind, seed=2)
    windows = token_windows(bundle.tokenizer, _lines(1, 30), context=12)
    with build_feature_index(bundle, tc, windows, tmp_path / "f.idx", batch_size=7, top_k=3,
                             context_window=(-3, 2)) as index:
        _check_against_brute_force(bundle, tc, windows, index, batch_size=7, top_k=3, before=3, after=2)


def test_planted_feature_gives_the_known_contexts_and_label(tiny_model_folder, tmp_path):
    """With layer 0's attention switched off, layer 0 reads a function of the token alone; a feature
    aimed at "Dallas" then fires exactly where "Dallas" was planted, and writing "Austin"'s
    unembedding row makes it promote "Austin"."""
    bundle = _bundle(tiny_model_folder, "llama")  # a private copy: its weights are edited
    bundle.model.model.layers[0].self_attn.o_proj.weight.data.zero_()
    tok = bundle.tokenizer
    ids = {w: tok.convert_tokens_to_ids(w) for w in WORDS}
    vocab = torch.tensor(sorted(ids.values()))
    rh, wh = default_hooks("llama")
    reads = collect_activations(bundle, torch.cat([torch.tensor([1]), vocab])[None], feature_input_hook=rh,
                                feature_output_hook=wh, layers=[0]).reads[0, 0, 1:]  # [V', d]
    r_dallas = reads[(vocab == ids["Dallas"]).nonzero().item()]
    u = r_dallas / r_dallas.norm()
    proj = reads @ u
    others = proj[vocab != ids["Dallas"]].max()
    assert others < r_dallas.norm() - 0.05  # "Dallas" is separable from every other token
    tc = _tc("llama", jumprelu=False)
    w_enc, b_enc, w_dec0 = torch.stack(tc.w_enc), tc.b_enc.clone(), tc.w_dec[0].clone()
    w_enc[0, 0], b_enc[0, 0] = u, -(others + r_dallas.norm()) / 2
    w_dec0[0] = bundle.arch.unembed[ids["Austin"]] / bundle.arch.final_norm.gain
    tc = dataclasses.replace(tc, w_enc=w_enc, b_enc=b_enc, w_dec=(w_dec0, *tc.w_dec[1:]))

    rng = random.Random(3)
    filler = [ids[w] for w in WORDS if w != "Dallas"]
    windows = torch.tensor([[1] + [rng.choice(filler) for _ in range(11)] for _ in range(12)])
    planted = {3: 5, 7: 2, 10: 9}  # window -> position of "Dallas"
    for w, p in planted.items():
        windows[w, p] = ids["Dallas"]
    with build_feature_index(bundle, tc, windows, tmp_path / "p.idx", top_k=2, batch_size=5) as index:
        d = index.feature(0, 0)
    expected = float(r_dallas.norm() - (others + r_dallas.norm()) / 2)
    assert d.n_active == 3 and d.density == 3 / (12 * 11)
    assert d.max_activation == pytest.approx(expected, rel=1e-5)
    assert [(e.window, e.start + e.max_position) for e in d.top_examples] == [(3, 5), (7, 2)]  # ties: earlier
    assert all(e.tokens[e.max_position] == "Dallas" for e in d.top_examples)
    assert all(sum(1 for x in e.activations if x > 0) == 1 for e in d.top_examples)
    band_examples = [[(e.window, e.start + e.max_position) for e in b.examples] for b in d.band_examples]
    assert band_examples == [[], [], [], [(10, 9)]]
    assert d.histogram.counts[-1] == 3
    assert d.top_logits[0].token == "Austin"
    assert d.label.startswith('"Dallas" → Austin')


def test_auto_label_is_short_and_honest_about_ambiguity():
    assert auto_label(["Dallas"] * 3 + ["Texas"], ["Texas", "Austin"]) == '"Dallas" → Texas/Austin'
    assert auto_label(["the", "of", "the", "of", "a"], ["Paris"]).startswith('mixed "the"/"of" → Paris')
    assert auto_label(["a", "b", "c", "d", "e"], ["x"]).startswith('varied "a"/"b"/')
    assert auto_label([], ["x"]) == "never active"
    assert auto_label([" ", "\n", " "], ["\n"]) == '"␣" → ↵'
    long = auto_label(["Supercalifragilistic" * 3], ["Antidisestablishmentarianism" * 2, "y"])
    assert len(long) <= 40 and long.startswith('"Supercalifrag')


# ---- progress, cancel, overwrite ----
def test_progress_phases_and_cancel_leave_no_file(llama, tmp_path):
    bundle, tc, windows = llama
    windows = windows[:10]
    seen = []
    build_feature_index(bundle, tc, windows, tmp_path / "a.idx", batch_size=5, progress=seen.append).close()
    phases = list(dict.fromkeys(p.phase for p in seen))
    assert phases == ["Scanning corpus", "Histograms", "Logit effects", "Writing index"]
    for phase in ("Histograms", "Logit effects"):  # before and after the temporary file exists
        token = CancelToken()

        def progress(p, token=token, phase=phase):
            if p.phase == phase:
                token.cancel()

        out = tmp_path / f"{phase}.idx"
        with pytest.raises(Cancelled):
            build_feature_index(bundle, tc, windows, out, batch_size=5, progress=progress, cancel=token)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx"]


def test_examples_gathered_in_a_third_pass_are_the_same(llama, tmp_path):
    """With no memory to spare, only the first layer's contexts are gathered during pass 2 and the
    others in a third pass over the batches that hold them: the index must not change."""
    bundle, tc, windows = llama
    seen = []
    with build_feature_index(bundle, tc, windows[:12], tmp_path / "a.idx", batch_size=5, top_k=3) as a, \
            build_feature_index(bundle, tc, windows[:12], tmp_path / "b.idx", batch_size=5, top_k=3,
                                memory_budget_mb=0, progress=seen.append) as b:
        assert "Examples" in {p.phase for p in seen}
        for l in range(2):
            assert a.labels(l) == b.labels(l)
            for f in range(N_FEATURES):
                assert a.feature(l, f) == b.feature(l, f)


def test_replaces_an_index_but_never_another_file(llama, tmp_path):
    bundle, tc, windows = llama
    out = tmp_path / "x.idx"
    build_feature_index(bundle, tc, windows[:4], out, top_k=1).close()
    with build_feature_index(bundle, tc, windows[:6], out, top_k=1) as index:
        assert index.info.n_windows == 6
    other = tmp_path / "notes.txt"
    other.write_text("precious")
    with pytest.raises(FeatureIndexError, match="not a feature index"):
        build_feature_index(bundle, tc, windows, other)
    assert other.read_text() == "precious"


# ---- bad input ----
def test_model_transcoder_mismatch_is_a_clear_error(llama, tmp_path):
    bundle, _, windows = llama
    rh, wh = default_hooks("llama")
    for kw in (dict(n_layers=3, d_model=64), dict(n_layers=2, d_model=32)):
        tc = random_transcoders(n_features=8, feature_input_hook=rh, feature_output_hook=wh, **kw)
        with pytest.raises(TranscoderLoadError, match="layers|d_model"):
            build_feature_index(bundle, tc, windows, tmp_path / "m.idx")
    assert not list(tmp_path.iterdir())


def test_bad_windows_are_clear_errors(llama, tmp_path):
    bundle, tc, windows = llama
    for bad, match in ((windows[:0], "no windows"), (windows[:, :1], "at least 2"),
                       (windows.float(), "integers"), (windows + 10_000, "vocabulary"), (windows[0], "2-D")):
        with pytest.raises(FeatureIndexError, match=match):
            build_feature_index(bundle, tc, bad, tmp_path / "w.idx")
    with pytest.raises(FeatureIndexError, match="top_k"):
        build_feature_index(bundle, tc, windows, tmp_path / "w.idx", top_k=0)
    assert not list(tmp_path.iterdir())


def test_empty_and_binary_corpora_are_clear_errors(tmp_path, llama):
    empty, binary = tmp_path / "empty.txt", tmp_path / "model.bin"
    empty.write_text("\n  \n")
    binary.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(CorpusError, match="empty"):
        read_corpus(empty)
    with pytest.raises(CorpusError, match="binary"):
        read_corpus(binary)
    # the command fails on the corpus before loading anything, with the same errors
    parser = argparse.ArgumentParser()
    index_features.add_parser(parser.add_subparsers(dest="command"))
    for corpus, match in ((empty, "empty"), (binary, "binary"), (tmp_path / "missing.txt", "does not exist")):
        args = parser.parse_args(["index-features", "--model", "m", "--transcoders", "t", "--corpus", str(corpus),
                                  "--out", str(tmp_path / "o.idx")])
        with pytest.raises(CorpusError, match=match):
            index_features.run(args, lambda p: None, CancelToken())


# ---- the command and the file ----
def test_command_writes_an_index_with_labels(tiny_model_folder, tmp_path, capsys):
    tc_dir = save_transcoders(_tc("llama", seed=4), tmp_path / "tc")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_lines(5, 30)) + "\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    index_features.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "feat.idx"
    args = parser.parse_args(["index-features", "--model", str(tiny_model_folder("llama")), "--transcoders",
                              str(tc_dir), "--corpus", str(corpus), "--out", str(out), "--context", "12",
                              "--max-windows", "9", "--top-k", "4", "--device", "cpu"])
    assert index_features.run(args, lambda p: None, CancelToken()) == 0
    assert "9 windows" in capsys.readouterr().out
    with FeatureIndex.open(out) as index:
        assert index.info.corpus == "corpus.txt" and index.info.context == 12 and index.info.n_windows == 9
        assert index.info.settings["top_k"] == 4 and index.info.transcoder_kind == "plt"
        for l in range(2):
            labels = index.labels(l)
            assert len(labels) == N_FEATURES and all(0 < len(s) <= 40 for s in labels)
            assert all(len(index.feature(l, f).top_examples) <= 4 for f in range(N_FEATURES))


@pytest.fixture(scope="module")
def built_index(llama, tmp_path_factory):
    bundle, tc, windows = llama
    path = tmp_path_factory.mktemp("idx") / "good.idx"
    build_feature_index(bundle, tc, windows[:10], path, top_k=3).close()
    return path


def test_open_rejects_files_that_are_not_indexes(built_index, tmp_path):
    cases = {"missing.idx": None, "text.idx": b"hello world\n" * 20, "random.idx": bytes(range(256)) * 8}
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(FeatureIndexError, match="does not exist|not a Circuit Studio feature index"):
            FeatureIndex.open(tmp_path / name)
    with pytest.raises(FeatureIndexError, match="folder"):
        FeatureIndex.open(tmp_path)
    other_db = tmp_path / "other.sqlite"
    with sqlite3.connect(other_db) as conn:
        conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('format', 'something-else')")
    conn.close()
    with pytest.raises(FeatureIndexError, match="SQLite database but not"):
        FeatureIndex.open(other_db)


def test_open_rejects_truncated_newer_and_corrupt_indexes(built_index, tmp_path):
    data = built_index.read_bytes()
    truncated = tmp_path / "truncated.idx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(FeatureIndexError, match="truncated"):
        FeatureIndex.open(truncated)

    newer = tmp_path / "newer.idx"
    shutil.copy(built_index, newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    conn.close()
    with pytest.raises(FeatureIndexError, match="version 99.*Update Circuit Studio"):
        FeatureIndex.open(newer)

    garbled = tmp_path / "garbled.idx"
    shutil.copy(built_index, garbled)
    with sqlite3.connect(garbled) as conn:
        conn.execute("UPDATE feature_data SET data = x'00010203' WHERE id = 5")
    conn.close()
    with FeatureIndex.open(garbled) as index:
        index.feature(0, 4)
        with pytest.raises(FeatureIndexError, match="corrupt"):
            index.feature(0, 5)
        with pytest.raises(FeatureIndexError, match="not in the index"):
            index.feature(0, N_FEATURES)
        with pytest.raises(FeatureIndexError, match="not in the index"):
            index.labels(2)
    with pytest.raises(FeatureIndexError, match="closed"):
        index.label(0, 0)
