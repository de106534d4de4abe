"""Load a HuggingFace model, offline, from a local folder or the local Hugging Face cache, and
tokenise prompts the way circuit-tracer does.

A model is named by a folder or by a repo id `ORG/NAME[@REVISION]` that `huggingface-cli download`
has put in the local cache (`hub_cache`); a path that exists locally wins. Nothing is ever
downloaded and `trust_remote_code` is never on: a folder must hold a config of a supported family,
its weights and its tokenizer. Weights that would load wrongly are refused instead of being
replaced by random ones (a tensor missing from the files) or carried into every score (NaN/Inf).
Problems are reported as `ModelLoadError` naming the file (and tensor) and what to do.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLoadError, PromptError
from .families import SUPPORTED_ARCHITECTURES, Architecture, describe_architecture, family_of
from .hub_cache import HubCacheError, HubRef, looks_like_repo_ref, parse_repo_ref, resolve_folder
from .memory_plan import loads_straight_to_gpu
from ..progress import CancelToken, ProgressFn, check, report

if TYPE_CHECKING:  # torch is imported where used: the window describes models before it loads one
    import torch

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_SNAPSHOT = re.compile(r"[0-9a-f]{40}")
_CHECK_CHUNK = 1 << 24  # elements per NaN/Inf check: 16M bools at a time, whatever the tensor's size
_SHOWN_MISSING = 5  # missing tensors named in the error; the rest are counted


@dataclass(frozen=True)
class StoredWeight:
    """One tensor as its file's header describes it."""

    file: str  # file name inside the model folder
    shape: tuple[int, ...]
    dtype: str  # "float32", "bfloat16", ...

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


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
    dtype: str | None = None  # the dtype most weights are stored in (None for pytorch_model.bin)
    size_bytes: int = 0  # the weight files together, as stored
    source: str = ""  # what the user gave: the folder, or the repo id it was found under
    weight_files: tuple[str, ...] = ()  # in the folder; several for a sharded checkpoint


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
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# ---- finding the folder ----
def resolve_model(model: str | Path) -> tuple[Path, str, HubRef | None]:
    """A local folder, or a repo id in the local Hugging Face cache -> (folder, name, ref or None).

    A path that exists wins over a repo id of the same spelling ("models/tiny" may be either).
    The name is the repo's (e.g. "gemma-2-2b", which decides Gemma-3 chat handling), also for a
    snapshot folder picked by hand, whose own name is a commit id."""
    text = str(model).strip()
    local = Path(text).expanduser()
    if local.exists() or not looks_like_repo_ref(text):
        folder = local.resolve()
        return folder, _display_name(folder), None
    try:
        ref = parse_repo_ref(text)
        folder = resolve_folder(ref)
    except HubCacheError as e:
        if "@" in text or text.startswith("hf://"):
            raise ModelLoadError(e.message, e.hint) from None
        raise ModelLoadError(f"{text} is not a local folder, and {e.message}", e.hint) from None
    name = Path(ref.path).name if ref.path else ref.repo.split("/", 1)[1]
    return folder, name, ref


def _display_name(folder: Path) -> str:
    # .../models--ORG--NAME/snapshots/<commit>: the commit id says nothing, the repo name does
    if _SNAPSHOT.fullmatch(folder.name) and folder.parent.name == "snapshots" \
            and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.split("--", 2)[-1]
    return folder.name


def _read_config(folder: Path, ref: HubRef | None) -> dict:
    if not folder.exists():
        raise ModelLoadError(f"Model folder {folder} does not exist.",
                             "Choose a local HuggingFace model folder, or give a repo id ORG/NAME that is in "
                             "the local Hugging Face cache.")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is a file, not a model folder.",
                             "Choose the folder that holds config.json and the weights.")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        where = f" (the cached snapshot of {ref})" if ref else ""
        raise ModelLoadError(f"{folder}{where} is not a model folder: it has no config.json.",
                             ref.download_hint() if ref else
                             "Choose a HuggingFace model folder (config.json, weights, tokenizer).")
    try:
        return json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{cfg_path} is not valid JSON ({e}).", "Restore the file from the model's source.") from e


# ---- weight file headers ----
def _weight_files(folder: Path, ref: HubRef | None) -> tuple[str, ...]:
    """The weight files a loader would read, checking that every shard an index lists is there
    (in the cache a shard whose download was cut short is a dangling link into blobs/)."""
    hint = ref.download_hint() if ref else "Copy all the weight files (every shard) into the folder."
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if not index.is_file():
            continue
        try:
            shards = tuple(dict.fromkeys(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError, TypeError) as e:
            raise ModelLoadError(f"{index} is not a valid weight index ({_short(e)}).",
                                 "Restore the file from the model's source.") from e
        absent = [s for s in shards if not (folder / s).is_file()]
        if absent:
            more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
            raise ModelLoadError(f"{index} lists {absent[0]}{more}, which is not in {folder}.", hint)
        return shards
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return (name,)
    raise ModelLoadError(f"{folder} has no model weights ({' or '.join(WEIGHT_FILES[:2])}).",
                         ref.download_hint() if ref else "Copy the weight files into the folder.")


def _st_dtype(tag: str) -> str:
    """safetensors' dtype tags ("F32", "BF16") -> torch names ("float32", "bfloat16")."""
    if tag == "BF16":
        return "bfloat16"
    m = re.fullmatch(r"([FIU])(\d+)", tag)
    return {"F": "float", "I": "int", "U": "uint"}[m[1]] + m[2] if m else tag.lower()


def _read_headers(folder: Path, files: tuple[str, ...]) -> dict[str, StoredWeight]:
    """Tensor name -> StoredWeight from the safetensors headers (no weights are read)."""
    from safetensors import safe_open

    out: dict[str, StoredWeight] = {}
    for name in files:
        if not name.endswith(".safetensors"):
            continue
        try:
            with safe_open(str(folder / name), framework="pt") as fh:
                for key in fh.keys():
                    s = fh.get_slice(key)
                    out[key] = StoredWeight(name, tuple(s.get_shape()), _st_dtype(s.get_dtype()))
        except Exception as e:  # safetensors raises its own error types for broken files
            raise ModelLoadError(f"Cannot load the weights in {folder / name}: not a valid safetensors file "
                                 f"({_short(e)}).", "The file may be truncated or corrupt; copy it again.") from e
    return out


def describe_model(model: str | Path) -> ModelSummary:
    """Validate a model folder (or a cached repo id) and summarise it, without loading weights."""
    folder, name, ref = resolve_model(model)
    cfg = _read_config(folder, ref)
    model_type = cfg.get("model_type", "")
    archs = cfg.get("architectures") or []
    if family_of(model_type) is None:
        raise ModelLoadError(
            f"{folder / 'config.json'}: model_type {model_type!r} ({', '.join(archs) or 'no architecture'}) "
            "is not supported.", f"Supported: {', '.join(SUPPORTED_ARCHITECTURES)}.")
    files = _weight_files(folder, ref)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"{folder} has no tokenizer (tokenizer.json or tokenizer.model).",
                             ref.download_hint() if ref else
                             "Copy the tokenizer files from the model's source into the folder.")
    tensors = _read_headers(folder, files)
    by_dtype = Counter()
    for t in tensors.values():
        by_dtype[t.dtype] += t.numel
    text = cfg.get("text_config") or cfg
    gpt2 = model_type == "gpt2"
    return ModelSummary(
        folder=folder, name=name,
        architecture=archs[0] if archs else model_type, model_type=model_type, family=family_of(model_type),
        n_layers=int(text["n_layer" if gpt2 else "num_hidden_layers"]),
        d_model=int(text["n_embd" if gpt2 else "hidden_size"]),
        n_heads=int(text["n_head" if gpt2 else "num_attention_heads"]),
        d_mlp=int(text.get("n_inner") or 4 * text["n_embd"]) if gpt2 else int(text["intermediate_size"]),
        vocab_size=int(text["vocab_size"]),
        max_positions=text.get("n_positions" if gpt2 else "max_position_embeddings"),
        n_parameters=sum(t.numel for t in tensors.values()) if tensors else None,
        dtype=by_dtype.most_common(1)[0][0] if by_dtype else None,
        size_bytes=sum((folder / f).stat().st_size for f in files),  # stat follows the cache's links
        source=str(ref) if ref else str(folder),
        weight_files=files,
    )


# ---- loading ----
def load_tokenizer(summary: ModelSummary):
    """The model's tokenizer (local files only, no remote code)."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return AutoTokenizer.from_pretrained(summary.folder, local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise ModelLoadError(f"Cannot read the tokenizer in {summary.folder}: {_short(e)}",
                             "Check tokenizer.json / tokenizer_config.json.") from e


def load_model(model: str | Path, *, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, progress: ProgressFn | None = None,
               cancel: CancelToken | None = None, tokenizer=None) -> ModelBundle:
    """Load model + tokenizer from a local folder or cached repo id (offline, no remote code) in
    eval mode (float32 unless `dtype` says otherwise). `tokenizer`: one already read with
    `load_tokenizer`, to not read it twice."""
    import torch

    summary = describe_model(model)
    dtype = torch.float32 if dtype is None else dtype
    report(progress, "Loading model", 0, 3, summary.name)  # before transformers' import: the first line of work
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from .attention import ATTENTION_IMPLEMENTATION, register_attention

    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was requested but no CUDA device is available.", "Use --device cpu.")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ModelLoadError(f"dtype {dtype} is not supported.", "Use float32 (default) or bfloat16.")
    register_attention()
    hf_logging.disable_progress_bar()  # progress goes through our callback, not to the terminal
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(summary)
    check(cancel)
    # transformers prints its own report of missing tensors; ours below says which file and stops
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    # With accelerate installed the weights go straight to the GPU; without it transformers refuses
    # a device_map, so they pass through RAM (the memory plan counts that).
    direct = device.type == "cuda" and loads_straight_to_gpu()
    try:
        net, info = AutoModelForCausalLM.from_pretrained(
            summary.folder, local_files_only=True, trust_remote_code=False, dtype=dtype,
            attn_implementation=ATTENTION_IMPLEMENTATION, output_loading_info=True,
            **({"device_map": {"": device}} if direct else {}))
    except Exception as e:
        raise ModelLoadError(f"Cannot load the weights in {summary.folder}: {_short(e)}",
                             "The weight files may be truncated or corrupt; copy them again.") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    _refuse_missing(summary, net, info.get("missing_keys") or ())
    report(progress, "Loading model", 1, 3, summary.name)
    net.to(device).eval().requires_grad_(False)
    _refuse_non_finite(summary, net, dtype, cancel)
    report(progress, "Loading model", 3, 3, summary.name)
    return ModelBundle(net, tokenizer, describe_architecture(net), summary, device, dtype)


def _weights_label(summary: ModelSummary) -> str:
    files = summary.weight_files
    if len(files) == 1:
        return str(summary.folder / files[0])
    index = "model.safetensors.index.json" if files[0].endswith(".safetensors") else "pytorch_model.bin.index.json"
    return f"{summary.folder / index} ({len(files)} shards)"


def _refuse_missing(summary: ModelSummary, net: torch.nn.Module, missing) -> None:
    """Refuse parameters that the files lack: transformers would fill them with random numbers.

    Not counted: weights tied to another (lm_head with tie_word_embeddings), which transformers
    fills from their twin, and buffers (rotary frequencies, masks), which it recomputes."""
    tied = set(getattr(net, "all_tied_weights_keys", None) or {})
    params = {n for n, _ in net.named_parameters(remove_duplicate=False)}
    lacking = sorted(k for k in missing if k in params and k not in tied)
    if not lacking:
        return
    shown = ", ".join(lacking[:_SHOWN_MISSING])
    more = f" and {len(lacking) - _SHOWN_MISSING} more" if len(lacking) > _SHOWN_MISSING else ""
    raise ModelLoadError(
        f"{_weights_label(summary)} lacks {len(lacking)} tensor(s) that {summary.architecture} needs: "
        f"{shown}{more}.",
        "The weights are incomplete or belong to another model; download or copy them again "
        "(Circuit Studio does not run a model with randomly filled weights).")


def _first_non_finite(t: torch.Tensor) -> int | None:
    """Flat index of the first NaN/Inf in `t`, checking a chunk at a time (no full-size mask)."""
    import torch

    flat = t.detach().reshape(-1)
    for start in range(0, flat.numel(), _CHECK_CHUNK):
        bad = ~torch.isfinite(flat[start: start + _CHECK_CHUNK])
        if bool(bad.any()):
            return start + int(torch.nonzero(bad)[0])
    return None


def _stored_key(tensors: dict[str, StoredWeight], name: str) -> str | None:
    """The name a parameter has in the files (checkpoints may lack or add a prefix, e.g. GPT-2's
    'transformer.')."""
    if name in tensors:
        return name
    return next((k for k in tensors if name.endswith("." + k) or k.endswith("." + name)), None)


def _stored_is_finite(summary: ModelSummary, stored: StoredWeight, key: str) -> bool:
    import torch

    from safetensors import safe_open

    with safe_open(str(summary.folder / stored.file), framework="pt") as fh:
        sl = fh.get_slice(key)
        if not stored.shape:
            return bool(torch.isfinite(fh.get_tensor(key)).all())
        row = max(1, stored.numel // stored.shape[0])
        step = max(1, _CHECK_CHUNK // row)
        return all(_first_non_finite(sl[i: i + step]) is None for i in range(0, stored.shape[0], step))


def _refuse_non_finite(summary: ModelSummary, net: torch.nn.Module, dtype: torch.dtype,
                       cancel: CancelToken | None) -> None:
    """Refuse NaN or Inf in any weight, naming the file and tensor: one would reach every score."""
    import torch

    bad: list[tuple[str, int]] = []
    for name, p in net.named_parameters():
        check(cancel)
        if p.is_floating_point() and (i := _first_non_finite(p)) is not None:
            bad.append((name, i))
    if not bad:
        return
    name, index = bad[0]
    tensors = _read_headers(summary.folder, summary.weight_files)  # again: cheap, and only on failure
    key = _stored_key(tensors, name)
    more = f" ({len(bad) - 1} more tensor(s) too)" if len(bad) > 1 else ""
    if key is not None and _stored_is_finite(summary, tensors[key], key):
        stored = tensors[key]
        raise ModelLoadError(f"Tensor {key!r} in {summary.folder / stored.file} holds values too large for "
                             f"{str(dtype).removeprefix('torch.')} (stored as {stored.dtype}){more}.",
                             "Load the model in bfloat16 or float32.")
    where = summary.folder / tensors[key].file if key is not None else _weights_label(summary)
    at = tuple(int(i) for i in torch.unravel_index(torch.tensor(index), net.get_parameter(name).shape))
    raise ModelLoadError(f"Tensor {key or name!r} in {where} holds NaN or Inf values (the first at {list(at)})"
                         f"{more}.", "The weights are corrupt; download or copy them again.")


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:300]


def tokenize_prompt(bundle: ModelBundle, prompt: str | bytes | list[int] | torch.Tensor) -> torch.Tensor:
    """Prompt -> token ids [P] (spec §1.5): no special tokens added, then a BOS put in front unless
    the first id is already special. The BOS is the first truthy id among bos/pad/eos/special ids.
    Text must be UTF-8 (`bytes` are decoded as such); anything else raises PromptError."""
    import torch

    from ..text_input import prompt_text

    tok = bundle.tokenizer
    if isinstance(prompt, (str, bytes, bytearray)):
        prompt = prompt_text(prompt)
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
    import torch

    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return tuple(bundle.tokenizer.decode([i]) for i in ids)


def device_name(device=None) -> str:
    """What the window's status bar calls a compute device (`device`, default: the first CUDA device if
    there is one): the CUDA device's name, or "CPU"."""
    import torch

    if device is None:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
