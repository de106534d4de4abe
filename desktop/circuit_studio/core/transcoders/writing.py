"""Writing a TranscoderSet in circuit-tracer's on-disk formats (spec §6.1, §6.2).

* PLT: `config.yaml` (`model_kind: transcoder_set`, hooks, scan, a `transcoders:` list of paths
  relative to the folder) and `layer_{i}.safetensors` (`W_enc [F,d]`, `W_dec [F,d]`, `b_enc [F]`,
  `b_dec [d]`, `activation_function.threshold [F]` for JumpReLU, `W_skip [d,d]` if present).
* CLT: `config.yaml` (`model_kind: cross_layer_transcoder`, hooks, scan) with
  `W_enc_{i}.safetensors` (`W_enc_{i}`, `b_enc_{i}`, `b_dec_{i}`, `threshold_{i}`) and
  `W_dec_{i}.safetensors` (`W_dec_{i} [F, L-i, d]`).

Tensors are written in their own dtype, so `load_transcoders(save_transcoders(tc, f))` with the
same dtype gives back the same numbers bit for bit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..atomic_write import output_error, replace_all_or_none
from .transcoder_set import TranscoderSet

_MODEL_KINDS = {"plt": "transcoder_set", "clt": "cross_layer_transcoder"}
_OS_ERROR = re.compile(r"\(os error (\d+)\)|\bcode: (\d+)")  # new versions; older ones print Rust's debug form


def _cpu(t: torch.Tensor) -> torch.Tensor:
    # safetensors refuses views that share storage, and slices of the stacked [L, ...] tensors do
    return t.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file, with its I/O failures raised as the OSError they are (it reports a full
    disk as "SafetensorError: Error while serializing: I/O error: No space left on device (os error 28)"),
    so that they are reported like any other failed write."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as e:
        found = _OS_ERROR.search(str(e))
        if found is None:
            raise
        code = int(found.group(1) or found.group(2))
        raise OSError(code, os.strerror(code), str(path)) from e


def _config_text(tc: TranscoderSet, fmt: str, scan: str, files: list[str] | None) -> str:
    cfg: dict = {"model_kind": _MODEL_KINDS[fmt], "feature_input_hook": tc.feature_input_hook,
                 "feature_output_hook": tc.feature_output_hook, "scan": scan}
    if tc.activation == "topk":  # the keys circuit-tracer reads for Top-K sets
        cfg.update(activation="topk", k=tc.k)
    text = yaml.safe_dump(cfg, sort_keys=False)
    if files is not None:
        text += ("# paths are relative to the folder that holds this config.yaml\n"
                 + yaml.safe_dump({"transcoders": files}, sort_keys=False))
    return text


def _write_plt(tc: TranscoderSet, tmp: Path, scan: str) -> None:
    names = [f"layer_{i}.safetensors" for i in range(tc.n_layers)]
    for i, name in enumerate(names):
        tensors = {"W_enc": tc.w_enc[i], "W_dec": tc.w_dec[i], "b_enc": tc.b_enc[i],
                   "b_dec": tc.b_dec[i]}
        if tc.threshold is not None:
            tensors["activation_function.threshold"] = tc.threshold[i]
        if tc.w_skip is not None:
            tensors["W_skip"] = tc.w_skip[i]
        _save_file({k: _cpu(v) for k, v in tensors.items()}, tmp / name)
    (tmp / "config.yaml").write_text(_config_text(tc, "plt", scan, names), encoding="utf-8")


def _write_clt(tc: TranscoderSet, tmp: Path, scan: str) -> None:
    for i in range(tc.n_layers):
        enc = {f"W_enc_{i}": tc.w_enc[i], f"b_enc_{i}": tc.b_enc[i], f"b_dec_{i}": tc.b_dec[i]}
        if tc.threshold is not None:
            enc[f"threshold_{i}"] = tc.threshold[i]
        _save_file({k: _cpu(v) for k, v in enc.items()}, tmp / f"W_enc_{i}.safetensors")
        _save_file({f"W_dec_{i}": _cpu(tc.w_dec[i])}, tmp / f"W_dec_{i}.safetensors")
    (tmp / "config.yaml").write_text(_config_text(tc, "clt", scan, None), encoding="utf-8")


def _check(tc: TranscoderSet, fmt: str) -> None:
    if fmt not in _MODEL_KINDS:
        raise ValueError(f"Unknown transcoder format {fmt!r}; use 'plt' or 'clt'.")
    if fmt != tc.kind:
        raise ValueError(f"Cannot save a {tc.kind.upper()} transcoder set as {fmt.upper()}.")
    if fmt == "clt" and tc.w_skip is not None:
        raise ValueError("circuit-tracer's CLT format has no skip matrices; this set has W_skip.")
    if tc.activation == "relu_topk":
        raise ValueError("circuit-tracer's formats have no ReLU-then-Top-K activation (sparsify's); "
                         "keep this set in its sparsify folder.")
    L, F, d = tc.n_layers, tc.n_features, tc.d_model
    if len(tc.w_dec) != L:
        raise ValueError(f"w_dec has {len(tc.w_dec)} layers but w_enc has {L}.")
    for i, w in enumerate(tc.w_dec):
        want = (F, L - i, d) if fmt == "clt" else (F, d)
        if tuple(w.shape) != want:
            raise ValueError(f"w_dec[{i}] has shape {list(w.shape)}, expected {list(want)}.")


def save_transcoders(tc: TranscoderSet, folder: str | Path, *, format: str | None = None,
                     extra_files: dict[str, str] | None = None) -> Path:
    """Write `tc` to `folder` in circuit-tracer's format (`format` defaults to `tc.kind`) and
    return the folder's absolute path. `extra_files` ({name: text}, e.g. a training report) go
    into the folder with the set.

    Files are written into a temporary folder next to the target, which then replaces it
    (`atomic_write`), so a crash or a full disk never leaves a half-written set behind. An existing
    target is replaced only when it is empty or a transcoder folder (has a config.yaml); anything
    else raises FileExistsError. Write failures raise OutputError.
    """
    fmt = format or tc.kind
    _check(tc, fmt)
    target = Path(folder).expanduser().resolve()
    if target.exists() and (not target.is_dir() or (any(target.iterdir())
                                                    and not (target / "config.yaml").exists())):
        raise FileExistsError(f"{target} exists and is not a transcoder folder; not replacing it.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(e, target.parent) from e
    with replace_all_or_none([target], folders=True) as (tmp,):
        (_write_clt if fmt == "clt" else _write_plt)(tc, tmp, tc.scan or target.name)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return target
