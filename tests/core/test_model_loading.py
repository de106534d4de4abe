"""Loading model folders: every family runs exactly like plain transformers, and every kind of bad
folder or prompt gets an error that names what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from circuit_studio.core.errors import ModelLoadError, PromptError
from circuit_studio.core.model.loading import describe_model, load_model, tokenize_prompt
from circuit_studio.core.synthetic import FAMILIES

PROMPT = "the capital of the state of Dallas is"


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_pass_equals_plain_transformers(family, tiny_model_folder):
    folder = tiny_model_folder(family)
    bundle = load_model(folder, device="cpu")
    ids = tokenize_prompt(bundle, PROMPT)
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ours = bundle.model(ids[None]).logits
        theirs = plain(ids[None]).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert bundle.arch.n_layers == bundle.summary.n_layers == 2
    assert bundle.arch.d_model == bundle.summary.d_model


@pytest.mark.parametrize("family", FAMILIES)
def test_describe_reads_the_config_only(family, tiny_model_folder):
    s = describe_model(tiny_model_folder(family))
    assert (s.n_layers, s.d_model) == (2, 64)
    assert s.n_parameters and s.n_parameters > 10_000


def test_bfloat16_is_accepted(tiny_model_folder):
    bundle = load_model(tiny_model_folder("llama"), device="cpu", dtype=torch.bfloat16)
    assert next(bundle.model.parameters()).dtype == torch.bfloat16


def test_prompt_gets_a_bos_in_front_and_keeps_an_existing_one(tiny_model_folder):
    bundle = load_model(tiny_model_folder("llama"), device="cpu")
    ids = tokenize_prompt(bundle, PROMPT)
    assert ids[0] == 1 and len(ids) == len(PROMPT.split()) + 1
    assert torch.equal(tokenize_prompt(bundle, ids), ids)  # already starts with a special token


@pytest.fixture
def model_copy(tiny_model_folder, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_folder("llama"), dst)
    return dst


def _raises(exc, match, fn, *args, **kw):
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kw)
    assert info.value.hint or exc is PromptError, "every load error says what to do"
    return info.value


def test_missing_folder(tmp_path):
    _raises(ModelLoadError, "does not exist", load_model, tmp_path / "nope")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _raises(ModelLoadError, "no config.json", load_model, tmp_path)


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"\0" * 10)
    _raises(ModelLoadError, "is a file", load_model, f)


def test_corrupt_config(model_copy):
    (model_copy / "config.json").write_text("{ not json")
    _raises(ModelLoadError, "config.json is not valid JSON", load_model, model_copy)


def test_unsupported_family(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (model_copy / "config.json").write_text(json.dumps(cfg))
    err = _raises(ModelLoadError, "'mamba'.*not supported", load_model, model_copy)
    assert "LlamaForCausalLM" in err.hint


def test_missing_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    _raises(ModelLoadError, "no model weights", load_model, model_copy)


def test_truncated_weights(model_copy):
    w = model_copy / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    _raises(ModelLoadError, "Cannot load the weights", load_model, model_copy)


def test_missing_tokenizer(model_copy):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (model_copy / f).unlink(missing_ok=True)
    _raises(ModelLoadError, "no tokenizer", load_model, model_copy)


def test_empty_prompt(tiny_model_folder):
    bundle = load_model(tiny_model_folder("llama"), device="cpu")
    _raises(PromptError, "empty", tokenize_prompt, bundle, "   ")


def test_prompt_longer_than_the_context(tiny_model_folder):
    bundle = load_model(tiny_model_folder("llama"), device="cpu")
    err = _raises(PromptError, "at most 128", tokenize_prompt, bundle, "the cat " * 100)
    assert "201 tokens" in str(err)


# ---- models by repo id, from the local Hugging Face cache ----
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_cache(tmp_path, monkeypatch, src, repo="org/tiny", *, links=False, refs=("main",)):
    """`src` as the snapshot of `repo` in a hub cache under tmp_path (HF_HUB_CACHE points there).
    links=True lays it out as huggingface_hub does: files in blobs/, snapshot entries symlinks."""
    hub = tmp_path / "hub"
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / COMMIT
    if links:
        (repo_dir / "blobs").mkdir(parents=True)
        snap.mkdir(parents=True)
        for i, f in enumerate(sorted(p for p in src.iterdir() if p.is_file())):
            blob = repo_dir / "blobs" / f"{i:064x}"
            shutil.copyfile(f, blob)
            (snap / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    else:
        shutil.copytree(src, snap)
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return snap


@pytest.mark.parametrize("links", [False, True], ids=["copies", "blob-links"])
def test_a_repo_id_loads_from_the_local_cache(tiny_model_folder, tmp_path, monkeypatch, links):
    src = tiny_model_folder("llama")
    snap = _fake_cache(tmp_path, monkeypatch, src, links=links)
    s = describe_model("org/tiny")
    assert s.folder == snap.resolve() and s.name == "tiny" and s.source == "org/tiny"
    assert s.size_bytes == (src / "model.safetensors").stat().st_size  # the blob's size, not the link's
    assert (s.n_layers, s.n_parameters) == (2, describe_model(src).n_parameters)
    bundle = load_model("org/tiny", device="cpu")
    ids = tokenize_prompt(bundle, PROMPT)
    plain = load_model(src, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(ids[None]).logits, plain.model(ids[None]).logits)


def test_a_revision_or_commit_picks_the_snapshot(tiny_model_folder, tmp_path, monkeypatch):
    snap = _fake_cache(tmp_path, monkeypatch, tiny_model_folder("llama"), refs=("main", "v1"))
    assert describe_model("org/tiny@v1").folder == snap.resolve()
    assert describe_model(f"org/tiny@{COMMIT}").folder == snap.resolve()
    err = _raises(ModelLoadError, r"Revision 'v2' of org/tiny is not in the local cache \(cached refs: main, v1\)",
                  describe_model, "org/tiny@v2")
    assert "huggingface-cli download org/tiny --revision v2" in err.hint


def test_a_repo_not_in_the_cache_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    err = _raises(ModelLoadError, "org/absent is not a local folder, and org/absent is not in the local Hugging "
                  "Face cache", load_model, "org/absent")
    assert "huggingface-cli download org/absent" in err.hint


def test_a_local_folder_wins_over_a_repo_id(tiny_model_folder, tmp_path, monkeypatch):
    _fake_cache(tmp_path, monkeypatch, tiny_model_folder("llama"))
    shutil.copytree(tiny_model_folder("gpt2"), tmp_path / "org" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert describe_model("org/tiny").family == "gpt2"


def test_a_snapshot_folder_is_named_after_its_repo(tiny_model_folder, tmp_path, monkeypatch):
    """The name decides Gemma-3 chat handling, so it must not be the commit id of the snapshot."""
    snap = _fake_cache(tmp_path, monkeypatch, tiny_model_folder("gemma3"), repo="google/gemma-3-tiny-it")
    assert describe_model(snap).name == "gemma-3-tiny-it"
    bundle = load_model("google/gemma-3-tiny-it", device="cpu")
    assert bundle.name == "gemma-3-tiny-it" and bundle.n_zeroed_positions == 4


def test_a_partly_downloaded_repo_names_what_is_missing(tiny_model_folder, tmp_path, monkeypatch):
    snap = _fake_cache(tmp_path, monkeypatch, tiny_model_folder("llama"), links=True)
    (snap / "model.safetensors").resolve().unlink()  # the link now dangles, as after a cut download
    err = _raises(ModelLoadError, "has no model weights", describe_model, "org/tiny")
    assert "huggingface-cli download org/tiny" in err.hint


def test_cli_takes_a_repo_id(tiny_model_folder, tmp_path, monkeypatch):
    from circuit_studio.cli import main

    case = Path(__file__).resolve().parents[1] / "fixtures" / "parity_extra" / "llama_relu_skip"
    _fake_cache(tmp_path, monkeypatch, case / "model", repo="org/case")
    out = tmp_path / "g.json"
    assert main(["attribute", "--model", "org/case", "--transcoders", str(case / "transcoders"),
                 "--prompt", "the capital of", "--out", str(out), "--batch-size", "64"]) == 0
    assert json.loads(out.read_text())["metadata"]


# ---- weights that would load wrongly are refused ----
def _rewrite(folder, change, file="model.safetensors"):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / file)
    change(tensors)
    save_file(tensors, folder / file, metadata={"format": "pt"})


def test_missing_tensors_are_refused_not_filled_with_random_numbers(model_copy):
    def drop(t):
        del t["model.layers.1.mlp.up_proj.weight"], t["lm_head.weight"]  # llama: lm_head is not tied

    _rewrite(model_copy, drop)
    err = _raises(ModelLoadError, r"model\.safetensors lacks 2 tensor\(s\) that LlamaForCausalLM needs: "
                  r"lm_head\.weight, model\.layers\.1\.mlp\.up_proj\.weight\.", load_model, model_copy, device="cpu")
    assert str(model_copy) in str(err)


def test_a_tied_lm_head_is_not_missing(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (model_copy / "config.json").write_text(json.dumps(cfg))
    _rewrite(model_copy, lambda t: t.pop("lm_head.weight"))
    bundle = load_model(model_copy, device="cpu")
    assert torch.equal(bundle.model.lm_head.weight, bundle.model.model.embed_tokens.weight)


@pytest.fixture
def sharded(tiny_model_folder, tmp_path):
    """The tiny llama saved in several shards with a model.safetensors.index.json."""
    dst = tmp_path / "sharded"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_folder("llama"), dtype=torch.float32)
    model.save_pretrained(dst, max_shard_size="100KB")
    for f in tiny_model_folder("llama").glob("tokenizer*"):
        shutil.copy(f, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    return dst, index


def test_a_tensor_missing_from_a_shard_names_the_index(sharded):
    dst, index = sharded
    name = "model.layers.0.self_attn.q_proj.weight"
    _rewrite(dst, lambda t: t.pop(name), index["weight_map"].pop(name))
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    n = len(set(index["weight_map"].values()))
    _raises(ModelLoadError, rf"model\.safetensors\.index\.json \({n} shards\) lacks 1 tensor\(s\).*{name}",
            load_model, dst, device="cpu")


def test_a_shard_that_is_not_there(sharded):
    dst, index = sharded
    shard = index["weight_map"]["lm_head.weight"]
    (dst / shard).unlink()
    _raises(ModelLoadError, rf"index\.json lists {shard}, which is not in", describe_model, dst)


def test_nan_in_a_weight_names_the_file_and_tensor(model_copy):
    def poison(t):
        t["model.layers.0.self_attn.o_proj.weight"][3, 5] = float("nan")

    _rewrite(model_copy, poison)
    _raises(ModelLoadError, r"Tensor 'model\.layers\.0\.self_attn\.o_proj\.weight' in .*model\.safetensors holds "
            r"NaN or Inf values \(the first at \[3, 5\]\)", load_model, model_copy, device="cpu")


def test_inf_in_a_shard_names_the_shard(sharded):
    dst, index = sharded
    name = "model.norm.weight"

    def poison(t):
        t[name][7] = float("inf")

    _rewrite(dst, poison, index["weight_map"][name])
    _raises(ModelLoadError, rf"Tensor '{name}' in .*{index['weight_map'][name]} holds NaN or Inf",
            load_model, dst, device="cpu")


def test_weights_too_large_for_float16_are_told_apart_from_corrupt_ones(model_copy):
    def big(t):
        t["model.layers.1.mlp.down_proj.weight"][0, 0] = 1e6  # finite in float32, Inf in float16

    _rewrite(model_copy, big)
    err = _raises(ModelLoadError, r"'model\.layers\.1\.mlp\.down_proj\.weight' .* too large for float16",
                  load_model, model_copy, device="cpu", dtype=torch.float16)
    assert "bfloat16" in err.hint
    assert load_model(model_copy, device="cpu", dtype=torch.float32)  # the file itself is fine


def test_describe_reports_dtype_and_size(model_copy):
    s = describe_model(model_copy)
    assert s.dtype == "float32" and s.weight_files == ("model.safetensors",)
    assert s.size_bytes == (model_copy / "model.safetensors").stat().st_size
    assert s.n_parameters * 4 < s.size_bytes < s.n_parameters * 4 + 10_000  # data + header
