"""Loading model folders: every family runs exactly like plain transformers, and every kind of bad
folder or prompt gets an error that names what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from circuit_studio.core.errors import ModelLoadError, PromptError
from circuit_studio.core.model_loading import describe_model, load_model, tokenize_prompt
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
