"""Load a local HuggingFace model folder, offline, and tokenise prompts the way circuit-tracer does.

Nothing is ever downloaded and `trust_remote_code` is never on: a folder must hold a config of a
supported family, its weights and its tokenizer. Problems are reported as `ModelLoadError` naming
the file and what to do.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelLoadError, PromptError
from .families import SUPPORTED_ARCHITECTURES, Architecture, describe_architecture, family_of
from .progress import CancelToken, ProgressFn, check, report

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ModelSummary:
    """What a model folder holds, read from its config and file headers only (fast, for dialogs)."""

    folder: Path
    name: str
    architecture: str
    model_type: str
    family: str
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    vocab_size: int
    max_positions: int | None
    n_parameters: int | None


@dataclass(frozen=True, eq=False)
class ModelBundle:
    """A loaded model with what attribution needs to drive it."""

    model: torch.nn.Module
    tokenizer: object
    arch: Architecture
    summary: ModelSummary
    device: torch.device
    dtype: torch.dtype

    @property
    def name(self) -> str:
        return self.summary.name

    @property
    def n_zeroed_positions(self) -> int:
        """Positions whose features and errors are zeroed (spec §1.3): 4 for Gemma-3 chat models."""
        n = self.summary.name.lower()
        return 4 if ("gemma-3" in n and n.endswith("-it")) else 1


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _read_config(folder: Path) -> dict:
    if not folder.exists():
        raise ModelLoadError(f"Model folder {folder} does not exist.", "Choose a local HuggingFace model folder.")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is a file, not a model folder.",
                             "Choose the folder that holds config.json and the weights.")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"{folder} is not a model folder: it has no config.json.",
                             "Choose a HuggingFace model folder (config.json, weights, tokenizer).")
    try:
        return json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{cfg_path} is not valid JSON ({e}).", "Restore the file from the model's source.") from e


def _count_parameters(folder: Path) -> int | None:
    """Sum of tensor sizes from safetensors headers, without loading weights."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    try:
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    n = 1
                    for s in fh.get_slice(k).get_shape():
                        n *= s
                    total += n
    except Exception:
        return None
    return total


def describe_model(folder: str | Path) -> ModelSummary:
    """Validate a model folder and summarise it, without loading weights."""
    folder = Path(folder).expanduser().resolve()
    cfg = _read_config(folder)
    model_type = cfg.get("model_type", "")
    archs = cfg.get("architectures") or []
    if family_of(model_type) is None:
        raise ModelLoadError(
            f"{folder / 'config.json'}: model_type {model_type!r} ({', '.join(archs) or 'no architecture'}) "
            "is not supported.", f"Supported: {', '.join(SUPPORTED_ARCHITECTURES)}.")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ModelLoadError(f"{folder} has no model weights ({' or '.join(WEIGHT_FILES[:2])}).",
                             "Copy the weight files into the folder.")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"{folder} has no tokenizer (tokenizer.json or tokenizer.model).",
                             "Copy the tokenizer files from the model's source into the folder.")
    text = cfg.get("text_config") or cfg
    gpt2 = model_type == "gpt2"
    return ModelSummary(
        folder=folder, name=folder.name,
        architecture=archs[0] if archs else model_type, model_type=model_type, family=family_of(model_type),
        n_layers=int(text["n_layer" if gpt2 else "num_hidden_layers"]),
        d_model=int(text["n_embd" if gpt2 else "hidden_size"]),
        n_heads=int(text["n_head" if gpt2 else "num_attention_heads"]),
        d_mlp=int(text.get("n_inner") or 4 * text["n_embd"]) if gpt2 else int(text["intermediate_size"]),
        vocab_size=int(text["vocab_size"]),
        max_positions=text.get("n_positions" if gpt2 else "max_position_embeddings"),
        n_parameters=_count_parameters(folder),
    )


def load_model(folder: str | Path, *, device: str | torch.device | None = None,
               dtype: torch.dtype = torch.float32, progress: ProgressFn | None = None,
               cancel: CancelToken | None = None) -> ModelBundle:
    """Load model + tokenizer from a local folder (offline, no remote code) in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .attention import ATTENTION_IMPLEMENTATION, register_attention

    summary = describe_model(folder)
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was requested but no CUDA device is available.", "Use --device cpu.")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ModelLoadError(f"dtype {dtype} is not supported.", "Use float32 (default) or bfloat16.")
    register_attention()
    hf_logging.disable_progress_bar()  # progress goes through our callback, not to the terminal
    report(progress, "Loading model", 0, 2, summary.name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(summary.folder, local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise ModelLoadError(f"Cannot read the tokenizer in {summary.folder}: {_short(e)}",
                             "Check tokenizer.json / tokenizer_config.json.") from e
    check(cancel)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            summary.folder, local_files_only=True, trust_remote_code=False, dtype=dtype,
            attn_implementation=ATTENTION_IMPLEMENTATION)
    except Exception as e:
        raise ModelLoadError(f"Cannot load the weights in {summary.folder}: {_short(e)}",
                             "The weight files may be truncated or corrupt; copy them again.") from e
    model.to(device).eval().requires_grad_(False)
    report(progress, "Loading model", 2, 2, summary.name)
    return ModelBundle(model, tokenizer, describe_architecture(model), summary, device, dtype)


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:300]


def tokenize_prompt(bundle: ModelBundle, prompt: str | list[int] | torch.Tensor) -> torch.Tensor:
    """Prompt -> token ids [P] (spec §1.5): no special tokens added, then a BOS put in front unless
    the first id is already special. The BOS is the first truthy id among bos/pad/eos/special ids."""
    tok = bundle.tokenizer
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PromptError("The prompt is empty.", "Type some text to trace.")
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
    else:
        ids = [int(i) for i in (prompt.tolist() if isinstance(prompt, torch.Tensor) else prompt)]
        if not ids:
            raise PromptError("The prompt has no tokens.", "Give at least one token.")
    special = set(tok.all_special_ids)
    if ids[0] not in special:
        candidates = [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, *tok.all_special_ids]
        bos = next((c for c in candidates if c), None)  # 0 is skipped on purpose, as circuit-tracer does
        if bos is None:
            raise PromptError("The tokenizer has no special token to use as BOS.",
                              "Add a bos_token to the tokenizer config.")
        ids = [bos, *ids]
    limit = bundle.summary.max_positions
    if limit and len(ids) > limit:
        raise PromptError(f"The prompt is {len(ids)} tokens long but {bundle.name} takes at most {limit}.",
                          "Shorten the prompt.")
    zeroed = bundle.n_zeroed_positions
    if len(ids) <= zeroed:
        raise PromptError(f"The prompt has {len(ids)} token(s), leaving no position to attribute.",
                          "Type a longer prompt.")
    if zeroed == 4 and not _starts_with_chat_header(tok, ids):
        raise PromptError("Gemma-3 chat models need prompts that begin with '<bos><start_of_turn>user\\n'.",
                          "Apply the chat template to the prompt.")
    return torch.tensor(ids, dtype=torch.long)


def _starts_with_chat_header(tok, ids: list[int]) -> bool:
    head = tok.decode(ids[:4])
    return bool(re.match(r"^<bos><start_of_turn>user\n", head))


def decode_tokens(bundle: ModelBundle, ids: torch.Tensor | list[int]) -> tuple[str, ...]:
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return tuple(bundle.tokenizer.decode([i]) for i in ids)
