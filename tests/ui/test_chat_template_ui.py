"""The prompt bar's "Chat template" box: a preview of the templated tokens before tracing."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from circuit_studio.core.model.loading import load_model

from test_chat_template import TEMPLATE  # noqa: E402  (tests/core is on sys.path, see tests/conftest.py)


@pytest.fixture
def controller(qtbot):
    from circuit_studio.ui.controller import Controller

    c = Controller()
    yield c
    c.shutdown()


def test_the_prompt_bar_previews_the_templated_tokens(qtbot, controller, tiny_model_folder):
    from circuit_studio.ui.prompt_bar import PromptBar

    c = controller
    bundle = load_model(tiny_model_folder("llama"), device="cpu")
    c.bundle = bundle
    bar = PromptBar(c)
    qtbot.addWidget(bar)
    bar.show()
    bar.prompt.setEditText("the cat")
    bar.chat_box.setChecked(True)
    assert bar.chat_preview.isVisible() and "no chat template" in bar.chat_preview.full_text()
    bundle.tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    bundle.tokenizer.chat_template = TEMPLATE
    bar.update_chat_preview()
    assert bar.chat_preview.full_text().startswith("8 tokens: <bos> · <start_of_turn>")
    bar.chat_box.setChecked(False)
    assert not bar.chat_preview.isVisible()
