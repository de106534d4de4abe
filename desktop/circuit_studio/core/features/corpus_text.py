"""Reading a plain-text corpus and cutting it into token windows (for training and indexing).

A corpus is a UTF-8 text file with one document per line; blank lines are ignored. Windows are
what transcoder training and feature indexing feed the model:

    [BOS, tokens of line i, tokens of line i+1, ...]      # exactly `context` ids

* Text is tokenised with `add_special_tokens=False` and one BOS is put first in every window,
  chosen as `model_loading.tokenize_prompt` chooses it (spec §1.5): the first truthy id among
  `bos_token_id, pad_token_id, eos_token_id, *all_special_ids` (`choose_bos_id`).
* Every window starts at the start of a line. Lines follow each other directly (no separator
  token: the model sees what a prompt of several lines would be, minus the newlines, which many
  tokenizers drop anyway). When the next line does not fit, it is cut at the end of the window
  and the next window starts again at that line's start, so no line start is lost.
* A line longer than a whole window gives one window of its beginning; the rest is skipped.
* The last window, when the corpus runs out, is filled up with lines from the corpus start, so
  every line start opens a window and a corpus shorter than one window still gives one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CircuitStudioError

# C0 control bytes other than tab, newline, form feed and carriage return: rare in text files.
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13))
_SNIFF = 8192  # bytes looked at by the binary-file test


class CorpusError(CircuitStudioError):
    """The corpus file is missing, empty, not UTF-8 text, or gives no tokens."""


def read_corpus(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped, in file order (one document per line).

    Raises CorpusError naming the file when it is missing, a folder, binary or not UTF-8, or
    holds no text."""
    path = Path(path).expanduser()
    hint_text = "Choose a UTF-8 text file with one document (sentence, paragraph) per line."
    if not path.exists():
        raise CorpusError(f"Corpus file {path} does not exist.", hint_text)
    if path.is_dir():
        raise CorpusError(f"{path} is a folder, not a corpus file.", hint_text)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"Cannot read corpus file {path} ({e.strerror or e}).",
                          "Check the file's permissions.") from e
    head = data[:_SNIFF]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CorpusError(f"Corpus file {path} is UTF-16 text, not UTF-8.",
                          "Convert it to UTF-8, e.g. `iconv -f UTF-16 -t UTF-8 FILE > FILE.utf8`.")
    if b"\x00" in head or len(head.translate(None, delete=_CONTROL_BYTES)) < 0.9 * len(head):
        raise CorpusError(f"Corpus file {path} is binary, not text.",
                          "Export the corpus as plain UTF-8 text, one document per line.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorpusError(f"Corpus file {path} is not UTF-8 text (bad byte at offset {e.start}).",
                          "Convert it to UTF-8, e.g. `iconv -t UTF-8 FILE > FILE.utf8`.") from e
    lines = [s for s in (line.strip() for line in text.splitlines()) if s]
    if not lines:
        raise CorpusError(f"Corpus file {path} is empty (no non-blank lines).",
                          "Put at least one line of text in it.")
    return lines


def choose_bos_id(tokenizer) -> int:
    """The id put first in every window: the first truthy (non-None, non-zero) id among
    bos/pad/eos/all special ids, exactly as `model_loading.tokenize_prompt` picks it."""
    candidates = [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id,
                  *tokenizer.all_special_ids]
    bos = next((c for c in candidates if c), None)  # 0 is skipped on purpose, as circuit-tracer does
    if bos is None:
        raise CorpusError("The tokenizer has no special token to use as BOS.",
                          "Add a bos_token to the tokenizer config.")
    return int(bos)


def token_windows(tokenizer, lines: list[str], *, context: int, bos_id: int | None = None) -> torch.Tensor:
    """Pack `lines` into windows of `context` ids, BOS first, each starting at a line start.

    Returns a LongTensor [N, context] (N >= 1). `bos_id=None` picks it with `choose_bos_id`.
    Raises CorpusError when no line gives any token, ValueError when `context` < 2."""
    if context < 2:
        raise ValueError(f"context must be at least 2 (BOS and one token), got {context}")
    bos = choose_bos_id(tokenizer) if bos_id is None else int(bos_id)
    encoded = tokenizer(list(lines), add_special_tokens=False)["input_ids"] if lines else []
    docs = [ids for ids in encoded if ids]
    if not docs:
        raise CorpusError("The corpus gives no tokens: every line is empty after tokenisation.",
                          "Use text in the model's language / vocabulary.")
    room = context - 1
    windows: list[list[int]] = []
    i, n = 0, len(docs)
    while i < n:
        window = [bos]
        j = i
        while len(window) < context:
            window.extend(docs[j % n][: context - len(window)])
            j += 1  # past the corpus end: wrap around to its start
        windows.append(window)
        # the next window opens at the first line not fully inside this one
        used, k = 0, i
        while k < n and used + len(docs[k]) <= room:
            used += len(docs[k])
            k += 1
        i = max(k, i + 1)
    return torch.tensor(windows, dtype=torch.long)
