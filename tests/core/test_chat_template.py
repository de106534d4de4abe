"""The chat template option: a prompt traced as a user turn under the tokenizer's own chat template."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from circuit_studio.core.model.chat_template import ChatTemplateError, chat_prompt_ids, chat_prompt_tokens
from circuit_studio.core.model.loading import load_model, tokenize_prompt
from circuit_studio.core.synthetic import build_tokenizer

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn> {{ m['role'] }} {{ m['content'] }} <end_of_turn> "
            "{% endfor %}{% if add_generation_prompt %}<start_of_turn> model {% endif %}")


def chat_tokenizer():
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.add_tokens(["user", "model"])
    tok.chat_template = TEMPLATE
    return tok


def test_the_template_wraps_the_prompt_in_a_user_turn():
    tok = chat_tokenizer()
    tokens = chat_prompt_tokens(tok, "the capital of Texas is")
    assert tokens == ["<bos>", "<start_of_turn>", "user", "the", "capital", "of", "Texas", "is", "<end_of_turn>",
                      "<start_of_turn>", "model"]
    assert chat_prompt_ids(tok, "the capital of Texas is")[0] == tok.bos_token_id


def test_templated_ids_are_traced_as_they_are(tiny_model_folder):
    bundle = load_model(tiny_model_folder("llama"), device="cpu")
    bundle.tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    bundle.tokenizer.chat_template = TEMPLATE
    ids = chat_prompt_ids(bundle.tokenizer, "the cat")
    assert tokenize_prompt(bundle, ids).tolist() == ids  # no second BOS in front of the template's own


def test_a_tokenizer_without_a_template_says_so_in_one_line():
    tok = build_tokenizer()
    with pytest.raises(ChatTemplateError) as e:
        chat_prompt_ids(tok, "the cat")
    assert "\n" not in str(e.value) and "no chat template" in str(e.value)
    with pytest.raises(Exception, match="empty"):
        chat_prompt_ids(chat_tokenizer(), "   ")


def test_attribute_takes_chat(capsys, tmp_path):
    from circuit_studio.cli import main
    from circuit_studio.commands import attribute

    sub = argparse.ArgumentParser().add_subparsers()
    attribute.add_parser(sub)
    args = sub.choices["attribute"].parse_args(["--model", "m", "--transcoders", "t", "--prompt", "p", "--out", "o",
                                                "--chat"])
    assert args.chat
    # the demo's base-model tokenizer has no template: one clear line, no traceback
    rc = main(["attribute", "--model", str(DEMO / "model"), "--transcoders", str(DEMO / "transcoders"),
               "--prompt", "The capital of Texas is", "--chat", "--out", str(tmp_path / "g.json"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc != 0 and "no chat template" in err and "Traceback" not in err
    assert not (tmp_path / "g.json").exists()

