"""Transcoder training: corpus reading and windows, the trainer on a tiny model, folding of the
normalisation into the saved weights, progress/cancel, bad input, and the CLI sub-command."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from circuit_studio.core.features.corpus_text import CorpusError, choose_bos_id, read_corpus, token_windows
from circuit_studio.core.errors import Cancelled
from circuit_studio.core.model.loading import load_model, tokenize_prompt
from circuit_studio.core.progress import CancelToken, Progress
from circuit_studio.core.synthetic import WORDS, random_transcoders
from circuit_studio.core.transcoders.loading import load_transcoders
from circuit_studio.core.transcoders.evaluation import evaluate_transcoders
from circuit_studio.core.transcoders.jumprelu import JumpReLUTranscoder
from circuit_studio.core.transcoders.training import _target_transform, default_hooks_for, train_transcoders
from circuit_studio.core.transcoders.training_report import TrainingError
from circuit_studio.core.transcoders.writing import save_transcoders

CONTEXT = 16
FAST = dict(steps=300, batch_tokens=256, buffer_tokens=8192, heldout_tokens=1024)


def _lines(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)]


@pytest.fixture(scope="module")
def bundle(tiny_model_folder):
    return load_model(tiny_model_folder("llama"), device="cpu")


@pytest.fixture(scope="module")
def windows(bundle):
    return token_windows(bundle.tokenizer, _lines(), context=CONTEXT)


@pytest.fixture(scope="module")
def trained(bundle, windows):
    return train_transcoders(bundle, windows, width=128, seed=0, **FAST)


# ---- corpus -------------------------------------------------------------------------------


def test_read_corpus_skips_blank_lines_and_strips(tmp_path: Path) -> None:
    f = tmp_path / "c.txt"
    f.write_text("\ufeffthe cat is big\n\n   \n  Paris is a city  \r\nthe dog\n", encoding="utf-8")
    assert read_corpus(f) == ["the cat is big", "Paris is a city", "the dog"]


@pytest.mark.parametrize("content, words", [
    (None, "does not exist"),
    (b"", "empty"),
    (b"\n  \n\t\n", "empty"),
    (bytes(range(256)) * 8, "binary"),
    (b"caf\xe9 au lait\n", "not UTF-8"),
    ("the cat\n".encode("utf-16"), "UTF-16"),
], ids=["missing", "empty", "blank", "binary", "latin1", "utf16"])
def test_read_corpus_errors_name_the_file(tmp_path: Path, content: bytes | None, words: str) -> None:
    f = tmp_path / "corpus.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(CorpusError) as err:
        read_corpus(f)
    assert words in str(err.value) and str(f) in str(err.value) and err.value.hint


def test_read_corpus_rejects_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="folder"):
        read_corpus(tmp_path)


def test_windows_start_with_bos_at_line_starts(bundle) -> None:
    tok = bundle.tokenizer
    lines = _lines(50, seed=3)
    w = token_windows(tok, lines, context=CONTEXT)
    bos = choose_bos_id(tok)
    assert bos == int(tokenize_prompt(bundle, lines[0])[0]) == 1  # the BOS attribution uses
    assert w.dtype == torch.long and w.shape[1] == CONTEXT and w.shape[0] >= 1
    assert (w[:, 0] == bos).all()
    starts = {tuple(tok(line, add_special_tokens=False)["input_ids"][:3]) for line in lines}
    assert all(tuple(row[1:4].tolist()) in starts for row in w)
    # the lines follow each other without separators: the first window is the corpus' beginning
    stream = [i for line in lines for i in tok(line, add_special_tokens=False)["input_ids"]]
    assert w[0, 1:].tolist() == stream[:CONTEXT - 1]


def test_short_corpus_still_gives_one_full_window(bundle) -> None:
    w = token_windows(bundle.tokenizer, ["the cat"], context=CONTEXT)
    assert w.shape == (1, CONTEXT)
    with pytest.raises(CorpusError):
        token_windows(bundle.tokenizer, ["   "], context=CONTEXT)


# ---- training -----------------------------------------------------------------------------


def test_training_lowers_fvu_and_reports_every_layer(trained, bundle) -> None:
    tc, rep = trained
    assert (tc.kind, tc.n_layers, tc.n_features, tc.d_model) == ("plt", 2, 128, 64)
    assert (tc.feature_input_hook, tc.feature_output_hook) == ("mlp.hook_in", "mlp.hook_out")
    assert tc.threshold is not None and (tc.threshold > 0).all()
    for r in rep.layers:
        start, end = r.curve[0][1], r.curve[-1][1]
        assert end < 0.6 * start, r.curve
        assert r.fvu < 0.6, r  # held-out; a random tiny MLP is hard to compress
        assert 0 < r.l0 < 128 and 0 <= r.dead_count <= 128
        assert r.dead_fraction == pytest.approx(r.dead_count / 128)
        # a random model's MLPs may even hurt the loss; only check that it was measured
        assert None not in (r.loss_recovered, r.loss_clean, r.loss_zero_ablated, r.loss_substituted)
    md = rep.to_markdown()
    assert "| layer | FVU | L0 | dead | loss recovered" in md and md.count("\n| ") >= 3
    assert len(rep.summary_lines()) == 2


def test_saved_set_loads_and_reproduces_the_evaluation(trained, bundle, windows, tmp_path: Path) -> None:
    tc, rep = trained
    loaded = load_transcoders(save_transcoders(tc, tmp_path / "tc"))
    for name in ("b_enc", "threshold", "b_dec"):
        assert torch.equal(getattr(loaded, name), getattr(tc, name))
    assert all(map(torch.equal, loaded.w_enc, tc.w_enc)) and all(map(torch.equal, loaded.w_dec, tc.w_dec))
    a = evaluate_transcoders(bundle, tc, windows[:8], measure_loss=False)
    b = evaluate_transcoders(bundle, loaded, windows[:8], measure_loss=False)
    assert [(r.fvu, r.l0) for r in a] == [(r.fvu, r.l0) for r in b]


@pytest.mark.parametrize("kind, whitening, skip", [("plt", 0.0, False), ("plt", 1.0, True), ("clt", 0.5, False)])
def test_folding_the_normalisation_is_exact(kind: str, whitening: float, skip: bool, tmp_path: Path) -> None:
    """The saved set applied to RAW reads the circuit-tracer way == the trained model."""
    L, F, d, n = 3, 32, 8, 200
    g = torch.Generator().manual_seed(1)
    y = torch.randn(L, 500, d, generator=g) @ torch.randn(L, d, d, generator=g) + torch.randn(L, 1, d, generator=g)
    mu_y, proj, unproj = _target_transform(y, whitening)
    assert torch.allclose(torch.bmm(proj, unproj), torch.eye(d).expand(L, d, d), atol=1e-4)
    m = JumpReLUTranscoder(kind, L, F, d, mu_x=torch.randn(L, d, generator=g) * 3,
                           sigma_x=torch.rand(L, generator=g) * 5 + 0.5, mu_y=mu_y, y_proj=proj, y_unproj=unproj,
                           skip=skip, generator=g)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        m.log_threshold.copy_((torch.rand(L, F, generator=g) * 0.5 + 0.05).log())
    x = m.mu_x[:, None] + m.sigma_x[:, None, None] * torch.randn(L, n, d, generator=g)
    want = m.reconstruct_raw(x)
    tc = load_transcoders(save_transcoders(m.folded("mlp.hook_in", "mlp.hook_out"), tmp_path / "tc"))
    acts = torch.stack([tc.encode(l, x[l]) for l in range(L)])
    assert 0.05 < (acts > 0).float().mean() < 0.95
    assert (tc.w_skip is not None) == skip
    got = tc.reconstruct(acts, x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    # and back: starting from the folded set gives the same parameters
    m2 = JumpReLUTranscoder(kind, L, F, d, mu_x=m.mu_x, sigma_x=m.sigma_x, mu_y=m.mu_y, y_proj=m.y_proj,
                            y_unproj=m.y_unproj, skip=skip)
    m2.load_folded(tc, list(range(L)))
    assert torch.allclose(m2.reconstruct_raw(x), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_cross_layer_transcoder_trains_and_loads(bundle, windows, tmp_path: Path) -> None:
    tc, rep = train_transcoders(bundle, windows, width=64, kind="clt", steps=120, batch_tokens=256,
                                buffer_tokens=4096, heldout_tokens=512, seed=0)
    assert tc.kind == "clt" and [tuple(w.shape) for w in tc.w_dec] == [(64, 2, 64), (64, 1, 64)]
    for r in rep.layers:
        assert r.curve[-1][1] < 0.8 * r.curve[0][1] and r.fvu < 0.9
    loaded = load_transcoders(save_transcoders(tc, tmp_path / "clt"))
    assert loaded.is_clt and torch.equal(loaded.w_dec[0], tc.w_dec[0])


def test_skip_connections_are_trained_and_saved(bundle, windows, tmp_path: Path) -> None:
    tc, rep = train_transcoders(bundle, windows, width=32, skip=True, steps=30, batch_tokens=256,
                                buffer_tokens=2048, heldout_tokens=256, measure_loss=False)
    assert tc.w_skip is not None and [w.shape for w in tc.w_skip] == [(64, 64)] * 2 and sum(w.abs().sum() for w in tc.w_skip) > 0
    loaded = load_transcoders(save_transcoders(tc, tmp_path / "skip"))
    assert all(map(torch.equal, loaded.w_skip, tc.w_skip))
    with pytest.raises(TrainingError, match="Skip"):
        train_transcoders(bundle, windows, width=32, kind="clt", skip=True)
    with pytest.raises(TrainingError, match="skip"):
        train_transcoders(bundle, windows, width=32, init=tc)


def test_progress_and_cancel_within_a_step(bundle, windows) -> None:
    seen: list[Progress] = []
    cancel = CancelToken()

    def progress(p: Progress) -> None:
        seen.append(p)
        if p.phase == "Training layer 0" and p.done >= 6:
            cancel.cancel()

    with pytest.raises(Cancelled):
        train_transcoders(bundle, windows, width=32, progress=progress, cancel=cancel, **FAST)
    phases = [p.phase for p in seen]
    assert "Collecting activations" in phases and phases[-1] == "Training layer 0"
    assert seen[-1].done == 6 and seen[-1].total == FAST["steps"]  # nothing ran past the next step
    assert "Training layer 1" not in phases


def test_gemma_uses_gemmascope_hooks(tiny_model_folder) -> None:
    assert default_hooks_for("gemma") == ("ln2.hook_normalized", "hook_mlp_out")
    assert default_hooks_for("llama") == default_hooks_for("gpt2") == ("mlp.hook_in", "mlp.hook_out")
    gemma = load_model(tiny_model_folder("gemma2"), device="cpu")
    w = token_windows(gemma.tokenizer, _lines(40), context=CONTEXT)
    tc, rep = train_transcoders(gemma, w, width=16, steps=5, batch_tokens=128, buffer_tokens=512,
                                heldout_tokens=128, measure_loss=False)
    assert (tc.feature_input_hook, tc.feature_output_hook) == ("ln2.hook_normalized", "hook_mlp_out")
    assert all(r.loss_recovered is None for r in rep.layers)


# ---- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("width", [0, -4, 2.5])
def test_bad_width(bundle, windows, width) -> None:
    with pytest.raises(TrainingError, match="width"):
        train_transcoders(bundle, windows, width=width)


def test_windows_that_do_not_fit_the_model(bundle, windows) -> None:
    vocab = bundle.model.get_input_embeddings().num_embeddings
    bad = windows.clone()
    bad[0, 3] = vocab
    with pytest.raises(TrainingError, match="vocabulary"):
        train_transcoders(bundle, bad, width=16)
    with pytest.raises(TrainingError, match="at most"):
        train_transcoders(bundle, torch.ones(2, bundle.summary.max_positions + 1, dtype=torch.long), width=16)
    with pytest.raises(TrainingError, match="no token windows"):
        train_transcoders(bundle, windows[:0], width=16)
    with pytest.raises(TrainingError, match="integer"):
        train_transcoders(bundle, windows.float(), width=16)
    with pytest.raises(TrainingError, match="kind"):
        train_transcoders(bundle, windows, width=16, kind="sae")


@pytest.mark.parametrize("n_layers, d_model, words", [(2, 32, "d_model"), (3, 64, "layers")])
def test_starting_transcoders_that_do_not_fit_the_model(bundle, windows, n_layers, d_model, words) -> None:
    other = random_transcoders(n_layers=n_layers, d_model=d_model, n_features=16,
                               feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out")
    with pytest.raises(TrainingError, match=words):
        train_transcoders(bundle, windows, width=16, init=other)
    with pytest.raises(TrainingError, match=words):
        evaluate_transcoders(bundle, other, windows)


def test_continuing_from_a_set(bundle, windows, trained) -> None:
    tc, rep = trained
    tc2, rep2 = train_transcoders(bundle, windows, width=128, init=tc, steps=1, lr=1e-9, batch_tokens=512,
                                  buffer_tokens=8192, heldout_tokens=1024, measure_loss=False)
    for a, b in zip(rep.layers, rep2.layers):
        assert b.fvu == pytest.approx(a.fvu, rel=1e-3, abs=1e-4)
    with pytest.raises(TrainingError, match="width"):
        train_transcoders(bundle, windows, width=64, init=tc)


# ---- command line -------------------------------------------------------------------------


def test_cli_trains_and_writes_the_folder(tiny_model_folder, tmp_path: Path, monkeypatch, capsys) -> None:
    from circuit_studio import cli

    monkeypatch.setattr(cli, "COMMANDS", ("train-transcoders",))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_lines(200)) + "\n", encoding="utf-8")
    out = tmp_path / "tc"
    rc = cli.main(["train-transcoders", "--model", str(tiny_model_folder("llama")), "--corpus", str(corpus),
                   "--width", "32", "--out", str(out), "--steps", "20", "--batch-tokens", "256",
                   "--context", "16", "--buffer-tokens", "2048", "--device", "cpu"])
    assert rc == 0
    assert {"config.yaml", "layer_0.safetensors", "layer_1.safetensors", "training_report.md"} <= \
        {p.name for p in out.iterdir()}
    assert load_transcoders(out).n_features == 32
    printed = capsys.readouterr().out
    assert "layer 0: FVU" in printed and "layer 1: FVU" in printed

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    rc = cli.main(["train-transcoders", "--model", str(tiny_model_folder("llama")), "--corpus", str(empty),
                   "--width", "32", "--out", str(tmp_path / "tc2")])
    assert rc == 2 and "empty" in capsys.readouterr().err
    rc = cli.main(["train-transcoders", "--model", str(tiny_model_folder("llama")), "--corpus", str(corpus),
                   "--width", "0", "--out", str(tmp_path / "tc3"), "--device", "cpu"])
    assert rc == 2 and "width" in capsys.readouterr().err
    assert not (tmp_path / "tc3").exists()
