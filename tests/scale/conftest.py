"""Shared by the scale tests: a tiny model folder with saved transcoders, a corpus and its windows."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuit_studio.core.features.corpus_text import token_windows
from circuit_studio.core.synthetic import default_hooks, random_transcoders
from scale_helpers import CONTEXT, N_FEATURES, Tiny, corpus_lines


@pytest.fixture(scope="session")
def tiny(tiny_model_folder, tmp_path_factory) -> Tiny:
    from circuit_studio.core.model.loading import load_model
    from circuit_studio.core.transcoders.loading import load_transcoders
    from circuit_studio.core.transcoders.writing import save_transcoders

    root = tmp_path_factory.mktemp("scale")
    rh, wh = default_hooks("llama")
    tc = random_transcoders(n_layers=2, d_model=64, n_features=N_FEATURES, seed=1, feature_input_hook=rh,
                            feature_output_hook=wh)
    tc_folder = Path(save_transcoders(tc, root / "transcoders")).resolve()
    model = Path(tiny_model_folder("llama")).resolve()
    corpus = root / "corpus.txt"
    lines = corpus_lines()
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bundle = load_model(model, device="cpu")
    tc_loaded = load_transcoders(tc_folder, device=bundle.device)
    return Tiny(model, tc_folder, corpus, bundle, tc_loaded, token_windows(bundle.tokenizer, lines, context=CONTEXT))
