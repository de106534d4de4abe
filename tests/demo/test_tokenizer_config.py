"""The demo model's tokenizer folder loads in transformers 4.x and 5 (`PreTrainedTokenizerFast`, not 5's `TokenizersBackend`)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer

from circuit_studio.demo.model_training import PORTABLE_TOKENIZER_CLASS, save_tokenizer

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"


def test_shipped_demo_tokenizer_names_a_portable_class():
    config = json.loads((DEMO / "model" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS and "backend" not in config


def test_a_rebuild_writes_the_same_config_and_ids(tmp_path):
    tok = AutoTokenizer.from_pretrained(DEMO / "model")
    save_tokenizer(tok, tmp_path)
    assert (tmp_path / "tokenizer_config.json").read_text() == (DEMO / "model" / "tokenizer_config.json").read_text()
    again = AutoTokenizer.from_pretrained(tmp_path)
    for p in json.loads((DEMO / "prompts.json").read_text())["prompts"]:
        assert again(p["prompt"])["input_ids"] == tok(p["prompt"])["input_ids"]
