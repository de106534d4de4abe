"""The tokenizer's own chat template, for instruct models: a prompt as the user turn of a chat.

`chat_prompt_ids` gives the token ids `tokenizer.apply_chat_template` produces for one user message with
the generation prompt (what the model sees before it answers); tracing those ids traces the prompt as the
instruct model is used. Gemma-3 `-it` models need prompts starting with `<bos><start_of_turn>user\\n`
(`core.model.loading.tokenize_prompt` checks it): their template produces exactly that. A tokenizer
without a template raises `ChatTemplateError`, one line that says so.
"""

from __future__ import annotations

from ..errors import PromptError
from ..text_input import prompt_text


class ChatTemplateError(PromptError):
    """The tokenizer has no chat template (a base model's, usually)."""


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt_ids(tokenizer, prompt: str | bytes) -> list[int]:
    """Token ids of `prompt` as a user turn under the tokenizer's chat template (generation prompt added)."""
    text = prompt_text(prompt)
    if not text.strip():
        raise PromptError("The prompt is empty.", "Type some text to trace.")
    if not has_chat_template(tokenizer):
        raise ChatTemplateError("This tokenizer has no chat template; trace the prompt without one.",
                                "Turn off the chat template (a base model), or load the instruct model's tokenizer.")
    out = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True)
    if hasattr(out, "keys") and "input_ids" in out:  # newer transformers return a BatchEncoding
        out = out["input_ids"]
    ids = [int(i) for i in (out.tolist() if hasattr(out, "tolist") else out)]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return ids


def chat_prompt_tokens(tokenizer, prompt: str | bytes) -> list[str]:
    """The templated prompt's tokens as text, one per token (the preview shown before tracing)."""
    return [tokenizer.decode([i]) for i in chat_prompt_ids(tokenizer, prompt)]
