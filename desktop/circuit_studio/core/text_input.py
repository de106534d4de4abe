"""Text users give us must be real Unicode text before a tokenizer (or a JSON file) sees it.

Python turns command-line bytes that are not UTF-8 into lone surrogates ("\\udcff" for the byte
0xFF), and the core API may be handed `bytes`; tokenizers and UTF-8 writers fail on both with
messages that name neither the prompt nor the fix.
"""

from __future__ import annotations

from .errors import CircuitStudioError, PromptError

_HINT = "(check the encoding of the terminal or of the file it came from)"


def prompt_text(prompt: str | bytes | bytearray) -> str:
    """`prompt` as a str; raises PromptError for bytes that are not UTF-8 and for strs holding lone surrogates."""
    return utf8_text(prompt, "The prompt", f"Give the prompt as UTF-8 text {_HINT}.", PromptError)


def utf8_text(value: str | bytes | bytearray, what: str, hint: str = f"Give it as UTF-8 text {_HINT}.",
              error: type[CircuitStudioError] = CircuitStudioError) -> str:
    """`value` as a str that any UTF-8 writer takes; else `error` naming `what` and the first bad byte."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{what} is not UTF-8 text: byte 0x{value[e.start]:02X} at byte {e.start} is not valid "
                        "UTF-8.", hint) from None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(value[e.start])
        if 0xDC80 <= code <= 0xDCFF:  # how Python keeps an undecodable byte (surrogateescape)
            bad = f"byte 0x{code - 0xDC00:02X} at character {e.start} is not valid UTF-8"
        else:
            bad = f"character {e.start} is an unpaired surrogate (U+{code:04X})"
        raise error(f"{what} is not UTF-8 text: {bad}.", hint) from None
    return value
