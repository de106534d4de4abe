"""Demo tokenizer and model training: digits split, a short run lowers the loss, the folder loads
in plain transformers and in Circuit Studio, bad corpora give clear errors, the build runs."""

from __future__ import annotations

import json

import pytest
import torch

from circuit_studio.core.errors import Cancelled
from circuit_studio.core.progress import CancelToken
from circuit_studio.demo import corpus as C
from circuit_studio.demo import model_training as M

TINY = M.ModelSpec(n_layers=2, d_model=32, n_heads=2, d_mlp=64, context=32)
TINY_TRAIN = M.TrainSpec(steps=30, batch_size=8, lr=3e-3, min_lr=3e-4, warmup=5, checkpoint_every=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread, above all on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return C.generate_corpus(3000, seed=1)


@pytest.fixture(scope="module")
def tokenizer(lines, tmp_path_factory):
    return M.train_tokenizer(lines, tmp_path_factory.mktemp("tok"), vocab_size=400)


@pytest.fixture(scope="module")
def trained(lines, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_model")
    seen = []
    res = M.train_model(lines, out, tokenizer=tokenizer, model_spec=TINY, train_spec=TINY_TRAIN,
                        progress=seen.append)
    return res, seen


def test_tokenizer_splits_digits_and_has_a_nonzero_bos(tokenizer):
    ids = tokenizer("23+45=168.", add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode([i]) for i in ids] == ["2", "3", "+", "4", "5", "=", "1", "6", "8", "."]
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<bos>", "<eos>"]) == [0, 1, 2]
    assert tokenizer.bos_token == "<bos>" and tokenizer.bos_token_id == 1
    assert tokenizer("Dallas")["input_ids"][0] == 1  # default: BOS added
    assert 1 not in tokenizer("Dallas", add_special_tokens=False)["input_ids"]
    text = "The capital of the state containing Dallas is Austin."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    # byte-level: any text encodes without unknown tokens
    assert tokenizer.decode(tokenizer("naïve 🙂", add_special_tokens=False)["input_ids"]) == "naïve 🙂"


def test_tokenizer_folder_loads_with_autotokenizer(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    s = "When Mary and John went to the park, John gave a book to Mary. 907+3=910."
    assert tok(s, add_special_tokens=False)["input_ids"] == tokenizer(s, add_special_tokens=False)["input_ids"]
    assert tok.bos_token_id == 1


def test_short_training_lowers_the_loss_and_reports_progress(trained):
    res, seen = trained
    assert res.steps == 30 and res.tokens_seen == 30 * 8 * 32
    first = sum(l for _, l in res.losses[:5]) / 5
    last = sum(l for _, l in res.losses[-5:]) / 5
    assert last < first - 0.5, (first, last)
    assert seen and seen[-1].done == 30 and all(p.phase for p in seen)
    info = json.loads((res.folder / "training_info.json").read_text())
    assert info["steps"] == 30 and info["model_spec"]["d_model"] == 32


def test_saved_folder_loads_in_transformers_and_circuit_studio(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuit_studio.core.model.loading import load_model, tokenize_prompt
    from circuit_studio.demo.evaluate import evaluate_prompts, score

    folder = trained[0].folder
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    cfg = model.config
    assert cfg.tie_word_embeddings and cfg.bos_token_id == 1 and cfg.num_hidden_layers == 2
    assert cfg.max_position_embeddings == 32 and cfg.vocab_size == len(tok)
    bundle = load_model(folder, device="cpu")
    ids = tokenize_prompt(bundle, "12+34=")
    assert ids[0].item() == 1 and len(ids) == 7
    with torch.no_grad():
        a = model(ids[None]).logits
        b = bundle.model(ids[None]).logits
    assert torch.allclose(a, b, atol=1e-4)
    items = [e for e in C.heldout_prompts() if e.behaviour in ("addition", "ioi")][:10]
    results = evaluate_prompts(bundle.model, bundle.tokenizer, items, batch_size=4)
    assert len(results) == 10 and sum(s.n for s in score(results)) == 10


def test_resume_from_checkpoint(lines, tokenizer, tmp_path):
    spec = M.TrainSpec(steps=6, batch_size=4, warmup=2, checkpoint_every=3)
    ckpt = tmp_path / "ckpt"
    full = M.train_model(lines, tmp_path / "a", tokenizer=tokenizer, model_spec=TINY, train_spec=spec,
                         checkpoint_dir=ckpt)
    assert (ckpt / "trainer_state.pt").is_file()  # written at step 3
    resumed = M.train_model(lines, tmp_path / "b", tokenizer=tokenizer, model_spec=TINY, train_spec=spec,
                            checkpoint_dir=ckpt, resume=True)
    assert resumed.steps == 6 and len(resumed.losses) == 6
    assert resumed.losses[:3] == full.losses[:3]
    assert [s for s, _ in resumed.losses] == [1, 2, 3, 4, 5, 6]
    assert [l for _, l in resumed.losses[3:]] == pytest.approx([l for _, l in full.losses[3:]], rel=1e-4)


def test_cancel_stops_training(lines, tokenizer, tmp_path):
    token = CancelToken()

    def progress(p):
        if p.phase == "Training model" and p.done >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        M.train_model(lines, tmp_path / "m", tokenizer=tokenizer, model_spec=TINY, train_spec=TINY_TRAIN,
                      progress=progress, cancel=token)
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_lr_schedule_warms_up_then_decays_to_min():
    s = M.TrainSpec(steps=100, lr=1e-3, min_lr=1e-4, warmup=10)
    assert M.lr_at(0, s) == pytest.approx(1e-4)
    assert M.lr_at(9, s) == pytest.approx(1e-3)
    assert M.lr_at(99, s) == pytest.approx(1e-4)
    assert all(M.lr_at(i, s) >= M.lr_at(i + 1, s) for i in range(10, 99))


def test_empty_and_binary_corpus_files_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(b"\x00\x01\x02\xff" * 100)
    for path, what in ((empty, "empty"), (binary, "binary")):
        with pytest.raises(C.CorpusError, match=what) as err:
            M.train_tokenizer(path)
        assert str(path) in str(err.value)
        with pytest.raises(C.CorpusError, match=what):
            M.train_model(path, tmp_path / "out", model_spec=TINY, train_spec=TINY_TRAIN)
    with pytest.raises(C.CorpusError, match="empty"):
        M.train_tokenizer(["", "   "])


def test_corpus_too_short_for_one_window(tokenizer, tmp_path):
    with pytest.raises(C.CorpusError, match="fewer than one window"):
        M.train_model(["1+1=2."], tmp_path / "m", tokenizer=tokenizer, model_spec=TINY, train_spec=TINY_TRAIN)


def test_build_writes_corpus_model_evaluation_and_prompts(tmp_path):
    from circuit_studio.demo import build as B

    cfg = B.BuildConfig(n_lines=3000, seed=0, vocab_size=400, model=TINY,
                        train=M.TrainSpec(steps=5, batch_size=4, warmup=2, checkpoint_every=0))
    timings = B.build(tmp_path, cfg, ["corpus", "model", "evaluate"])
    assert set(timings) == {"corpus", "model", "evaluate"}
    assert C.read_corpus(tmp_path / "corpus.txt") == C.generate_corpus(3000, seed=0)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    prompts = json.loads((tmp_path / "prompts.json").read_text())["prompts"]
    assert [p["behaviour"] for p in prompts] == list(C.BEHAVIOURS)
    assert all(p["prompt"] and p["answer"] for p in prompts)
    scores = json.loads((tmp_path / "evaluation.json").read_text())["scores"]
    assert sum(s["n"] for s in scores) == len(C.heldout_prompts())
    with pytest.raises(SystemExit):
        B.main(["--out", str(tmp_path), "--only", "nonsense"])


def test_build_trains_and_indexes_both_kinds_of_transcoders(tmp_path):
    """The later steps at toy size: what they write loads the way the app loads the shipped demo."""
    from circuit_studio.core.features.index import FeatureIndex
    from circuit_studio.core.transcoders.loading import load_transcoders
    from circuit_studio.demo import build as B

    cfg = B.BuildConfig(n_lines=1500, seed=0, vocab_size=400, model=TINY,
                        train=M.TrainSpec(steps=5, batch_size=4, warmup=2, checkpoint_every=0),
                        transcoder_width=48, transcoder_steps=20, transcoder_batch_tokens=128,
                        transcoder_lines=300, index_lines=60)
    B.build(tmp_path, cfg, ["corpus", "model", "transcoders", "index", "clt", "clt_index"])
    for folder, index, kind in (("transcoders", "features.sqlite", "plt"), ("clt", "clt_features.sqlite", "clt")):
        tc = load_transcoders(tmp_path / folder)
        assert (tc.kind, tc.n_layers, tc.n_features) == (kind, TINY.n_layers, 48)
        assert "FVU" in (tmp_path / folder / "training_report.md").read_text()
        with FeatureIndex.open(tmp_path / index) as idx:
            assert (idx.info.n_layers, idx.info.n_features) == (TINY.n_layers, 48)
