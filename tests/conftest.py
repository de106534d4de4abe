"""Shared test setup: fully offline, headless, light on CPU; tiny model folders built once."""

from __future__ import annotations

import os
from pathlib import Path

# Must happen before anything imports transformers / huggingface_hub / Qt.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# A desktop-sized virtual screen (the offscreen default is 800×800, smaller than the window, so Qt would
# clamp restored window geometry and tests of "reopens exactly as it was" would compare different sizes).
_SCREEN = Path(__file__).resolve().parent / "fixtures" / "offscreen_screen.json"
os.environ["QT_QPA_PLATFORM"] = f"offscreen:configfile={_SCREEN}"

from typing import Callable  # noqa: E402

import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# tests/core/parity_cases.py is shared by the core and UI tests
sys.path.insert(0, str(Path(__file__).resolve().parent / "core"))

torch.set_num_threads(2)  # the CI / dev machines are small and shared


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: `tiny_model_folder("llama")` -> HF folder of a tiny random model (seed 0,
    default `ModelDims`), built at most once per family per test session."""
    from circuit_studio.core.synthetic import build_model_folder

    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            folder = tmp_path_factory.mktemp(f"tiny_{family}")
            cache[family] = build_model_folder(family, folder, seed=0)
        return cache[family]

    return get
