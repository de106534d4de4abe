"""Reading transcoder folders in circuit-tracer's on-disk formats (spec §6.1, §6.2).

A folder holds a `config.yaml` (`model_kind`, `feature_input_hook`, `feature_output_hook`, `scan`)
and the weights: for a PLT (`transcoder_set`) one file per layer, listed under `transcoders:` or
named `layer_{i}.safetensors` / GemmaScope `layer_{i}.npz`; for a CLT (`cross_layer_transcoder`)
`W_enc_{i}.safetensors` + `W_dec_{i}.safetensors`. Listed paths are relative to the folder of
config.yaml (circuit-tracer uses the current directory, which breaks when folders move).

Every shape is checked from file headers before any weights are read, so a broken folder fails
fast and `describe_transcoders` can summarise a folder without loading it. Nothing is downloaded.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import safe_open

from .errors import TranscoderLoadError
from .families import READ_HOOKS, WRITE_HOOKS
from .progress import CancelToken, ProgressFn, check, report
from .transcoders import TranscoderSet

_fail = TranscoderLoadError  # (message naming the file or value, hint saying what to do)

MODEL_KINDS = {"transcoder_set": "plt", "cross_layer_transcoder": "clt"}

# canonical name -> key in the file, per layout
_PLT_KEYS = {"W_enc": "W_enc", "W_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec",
             "threshold": "activation_function.threshold", "W_skip": "W_skip"}
_NPZ_KEYS = {**_PLT_KEYS, "threshold": "threshold"}  # GemmaScope; W_enc stored [d, F]
_OPTIONAL = ("threshold", "W_skip")
_FLOATS = ("float16", "bfloat16", "float32", "float64")
_REEXPORT = "The file may be truncated or corrupt: download or save it again."


@dataclass(frozen=True)
class TranscoderSummary:
    """What a transcoder folder holds, read from headers only (no weights loaded)."""

    kind: str  # "plt" | "clt"
    activation: str  # "JumpReLU" | "ReLU"
    n_layers: int
    n_features: int
    d_model: int
    feature_input_hook: str
    feature_output_hook: str
    scan: str
    has_skip: bool
    file_format: str  # "safetensors" | "npz" | "safetensors+npz"
    dtype: str  # dtype of layer 0's encoder as stored, e.g. "float32"
    size_bytes: int  # all weight files together
    source: Path

    @property
    def hooks(self) -> tuple[str, str]:
        return self.feature_input_hook, self.feature_output_hook


@dataclass(frozen=True)
class _Part:
    """One file contributing tensors to a layer; `keys` maps canonical names to stored keys."""

    path: Path
    keys: dict[str, str] = field(hash=False)
    npz: bool = False


@dataclass(frozen=True)
class _Plan:
    folder: Path
    kind: str
    input_hook: str
    output_hook: str
    scan: str
    layers: tuple[tuple[_Part, ...], ...]


@dataclass(frozen=True)
class _Shapes:
    n_features: int
    d_model: int
    has_threshold: bool
    has_skip: bool
    dtype: str


# ---- config and file discovery ----
def _locate(folder_or_config: str | Path) -> tuple[Path, Path]:
    p = Path(folder_or_config).expanduser()
    if not p.exists():
        raise _fail(f"Transcoder folder {p} does not exist.",
                    "Check the path, or pick the folder that holds the transcoders' config.yaml.")
    if p.is_file():
        if p.suffix.lower() not in (".yaml", ".yml"):
            raise _fail(f"{p} is not a config.yaml.",
                        "Pick the transcoder folder or the config.yaml inside it.")
        return p.parent.resolve(), p.resolve()
    for name in ("config.yaml", "config.yml"):
        if (p / name).is_file():
            return p.resolve(), (p / name).resolve()
    raise _fail(f"No config.yaml in {p}.",
                "A transcoder folder needs circuit-tracer's config.yaml (model_kind, "
                "feature_input_hook, feature_output_hook) next to the weight files.")


def _read_yaml(config: Path) -> dict:
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise _fail(f"Cannot read {config}: {' '.join(str(exc).split())}",
                    "Fix the YAML syntax (or restore the file from the transcoders' source).")
    if not isinstance(data, dict):
        raise _fail(f"{config} is not a YAML mapping of settings.",
                    "It should hold model_kind, feature_input_hook, feature_output_hook, ...")
    return data


def _hook(cfg: dict, config: Path, key: str, valid: tuple[str, ...]) -> str:
    value = cfg.get(key)
    if value is None:
        raise _fail(f"{config} has no {key}.", f"Add `{key}: ...`, one of {', '.join(valid)}.")
    if value not in valid:
        raise _fail(f"{config}: {key} {value!r} is not a known hook point.",
                    f"Use one of {', '.join(valid)}.")
    return str(value)


def _plan(folder_or_config: str | Path) -> _Plan:
    folder, config = _locate(folder_or_config)
    cfg = _read_yaml(config)
    model_kind = cfg.get("model_kind")
    if model_kind not in MODEL_KINDS:
        raise _fail(f"{config}: model_kind {model_kind!r} is not supported.",
                    "Use `model_kind: transcoder_set` (per-layer) or "
                    "`model_kind: cross_layer_transcoder`.")
    kind = MODEL_KINDS[model_kind]
    hooks = (_hook(cfg, config, "feature_input_hook", READ_HOOKS),
             _hook(cfg, config, "feature_output_hook", WRITE_HOOKS))
    scan = cfg.get("scan")
    # circuit-tracer allows a list of scans; the app only shows it as a label
    scan = ",".join(map(str, scan)) if isinstance(scan, list) else str(scan or folder.name)
    layers = _plt_layers(cfg, folder, config) if kind == "plt" else _clt_layers(folder)
    return _Plan(folder, kind, *hooks, scan, layers)


def _plt_part(path: Path) -> tuple[_Part]:
    npz = path.suffix.lower() == ".npz"
    return (_Part(path, _NPZ_KEYS if npz else _PLT_KEYS, npz),)


def _plt_layers(cfg: dict, folder: Path, config: Path) -> tuple[tuple[_Part, ...], ...]:
    entries = cfg.get("transcoders")
    if entries is None:
        found = {int(m[1]): p for p in folder.iterdir()
                 if (m := re.fullmatch(r"layer_(\d+)\.(safetensors|npz)", p.name))}
        if not found:
            raise _fail(f"{config} has no `transcoders:` list and {folder} has no "
                        "layer_0.safetensors.",
                        "Download the layer files into this folder, or list their local paths "
                        "under `transcoders:` in config.yaml.")
        missing = [i for i in range(max(found) + 1) if i not in found]
        if missing:
            raise _fail(f"{folder} has no layer_{missing[0]}.safetensors (layers "
                        f"{sorted(found)} are present).", "Every layer from 0 up needs a file.")
        return tuple(_plt_part(found[i]) for i in range(len(found)))
    if not isinstance(entries, list) or not entries:
        raise _fail(f"{config}: `transcoders:` must be a non-empty list of file paths.",
                    "List one file per layer, in layer order.")
    remote = [e for e in entries if isinstance(e, str) and e.startswith("hf://")]
    if remote:
        raise _fail(f"{config} lists {len(remote)} Hugging Face address(es), e.g. {remote[0]}; "
                    "Circuit Studio never downloads files.",
                    "Download the files yourself and list their local paths under "
                    "`transcoders:` (relative to the folder of config.yaml).")
    layers = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry.strip():
            raise _fail(f"{config}: transcoders entry {i} ({entry!r}) is not a file path.",
                        "List one file path per layer.")
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else folder / path
        if not path.is_file():
            raise _fail(f"Layer {i} file {entry} listed in {config} does not exist "
                        f"(looked for {path}).",
                        f"Relative paths are resolved against {folder}; fix the entry or put "
                        "the file there.")
        layers.append(_plt_part(path))
    return tuple(layers)


def _clt_layers(folder: Path) -> tuple[tuple[_Part, ...], ...]:
    def indexed(prefix: str) -> dict[int, Path]:
        return {int(m[1]): p for p in folder.iterdir()
                if (m := re.fullmatch(rf"{prefix}_(\d+)\.safetensors", p.name))}

    enc, dec = indexed("W_enc"), indexed("W_dec")
    hint = "A cross-layer transcoder needs W_enc_{i} and W_dec_{i}.safetensors for every layer."
    if not enc:
        raise _fail(f"{folder} has no W_enc_0.safetensors.", hint)
    n = len(enc)
    missing = [f"W_enc_{i}.safetensors" for i in range(max(enc) + 1) if i not in enc]
    missing += [f"W_dec_{i}.safetensors" for i in range(n) if i not in dec]
    if missing:
        raise _fail(f"{folder} is missing {', '.join(missing)}.", hint)
    extra = [j for j in dec if j >= n]
    if extra:
        raise _fail(f"{folder} has W_dec_{extra[0]}.safetensors but no "
                    f"W_enc_{extra[0]}.safetensors.", hint)
    return tuple((_Part(enc[i], {"W_enc": f"W_enc_{i}", "b_enc": f"b_enc_{i}",
                                 "b_dec": f"b_dec_{i}", "threshold": f"threshold_{i}"}),
                  _Part(dec[i], {"W_dec": f"W_dec_{i}"})) for i in range(n))


# ---- headers and shape checks ----
def _st_dtype(name: str) -> str:
    """safetensors' dtype tags ("F32", "BF16", "I64") -> torch/numpy names ("float32", ...)."""
    if name == "BF16":
        return "bfloat16"
    m = re.fullmatch(r"([FIU])(\d+)", name)
    return {"F": "float", "I": "int", "U": "uint"}[m[1]] + m[2] if m else name.lower()


def _header(part: _Part) -> dict[str, tuple[tuple[int, ...], str]]:
    """Canonical name -> (shape, dtype name) of the tensors of `part` that are present."""
    try:
        if part.npz:
            stored = {}
            with zipfile.ZipFile(part.path) as zf:
                for name in zf.namelist():
                    with zf.open(name) as f:
                        version = np.lib.format.read_magic(f)
                        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                else np.lib.format.read_array_header_2_0)
                        shape, _, dt = read(f)
                    stored[name.removesuffix(".npy")] = (tuple(shape), np.dtype(dt).name)
        else:
            with safe_open(str(part.path), framework="pt") as f:
                stored = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                          for k in f.keys()}
    except Exception as exc:  # each library raises its own types for broken files
        kind = "npz" if part.npz else "safetensors"
        raise _fail(f"Cannot read {part.path}: not a valid {kind} file ({exc}).", _REEXPORT)
    out = {}
    for name, key in part.keys.items():
        if key not in stored:
            if name in _OPTIONAL:
                continue
            raise _fail(f"{part.path} has no tensor {key!r} (it has: "
                        f"{', '.join(sorted(stored)) or 'nothing'}).",
                        "This is not a transcoder file in circuit-tracer's format; re-export it.")
        shape, dt = stored[key]
        dt = dt if part.npz else _st_dtype(dt)
        if dt not in _FLOATS:
            raise _fail(f"{part.path}: tensor {key!r} has dtype {dt}, not a float type.",
                        "Re-export the transcoders with floating-point weights.")
        # GemmaScope stores the encoder as [d, F]
        out[name] = (shape[::-1] if part.npz and name == "W_enc" else shape, dt)
    return out


def _validate(plan: _Plan) -> _Shapes:
    """Check every layer's shapes from the file headers; return the set's common sizes."""
    L, first = len(plan.layers), None
    for i, parts in enumerate(plan.layers):
        found = {n: (shape, dt, p) for p in parts for n, (shape, dt) in _header(p).items()}

        def bad(name: str, should: str) -> TranscoderLoadError:
            shape, _, part = found[name]
            return _fail(f"{part.path}: {part.keys[name]!r} (layer {i}) has shape {list(shape)} "
                         f"but should be {should}.", "The file does not match the rest of the "
                         "transcoder set (or circuit-tracer's format); re-export it.")

        w_enc, dt, enc = found["W_enc"]
        if len(w_enc) != 2:
            raise bad("W_enc", "[F, d]")
        F, d = w_enc
        clt = plan.kind == "clt"
        expected = {"W_dec": (F, L - i, d) if clt else (F, d), "b_enc": (F,), "b_dec": (d,),
                    "threshold": (F,), "W_skip": (d, d)}
        for name, want in expected.items():
            if name in found and found[name][0] != want:
                raise bad(name, f"{list(want)} (F={F}, d={d}{f', {L} layers' if clt else ''})")
        this = _Shapes(F, d, "threshold" in found, "W_skip" in found, dt)
        first = first or this
        if (F, d) != (first.n_features, first.d_model):
            raise _fail(f"{enc.path}: layer {i} has F={F}, d={d} but layer 0 has "
                        f"F={first.n_features}, d={first.d_model}.",
                        "All layers of a transcoder set must have the same sizes.")
        for flag, label in (("has_threshold", "a JumpReLU threshold"), ("has_skip", "W_skip")):
            mine, theirs = getattr(this, flag), getattr(first, flag)
            if mine != theirs:
                raise _fail(f"{enc.path}: layer {i} {'has' if mine else 'lacks'} {label} but "
                            f"layer 0 {'has' if theirs else 'does not'}.",
                            "Every layer must have it or none; re-export the transcoders.")
    assert first is not None
    return first


# ---- public API ----
def describe_transcoders(folder: str | Path) -> TranscoderSummary:
    """Summarise a transcoder folder (or its config.yaml) from headers only. Raises
    TranscoderLoadError for the same problems `load_transcoders` would find."""
    plan = _plan(folder)
    s = _validate(plan)
    files = {p.path for parts in plan.layers for p in parts}
    formats = sorted({"npz" if p.npz else "safetensors" for parts in plan.layers for p in parts})
    return TranscoderSummary(plan.kind, "JumpReLU" if s.has_threshold else "ReLU",
                             len(plan.layers), s.n_features, s.d_model, plan.input_hook,
                             plan.output_hook, plan.scan, s.has_skip, "+".join(reversed(formats)),
                             s.dtype, sum(f.stat().st_size for f in files), plan.folder)


def _read(part: _Part) -> dict[str, torch.Tensor]:
    try:
        if part.npz:
            with np.load(part.path, allow_pickle=False) as z:
                out = {n: torch.from_numpy(np.ascontiguousarray(z[k]))
                       for n, k in part.keys.items() if k in z.files}
            out["W_enc"] = out["W_enc"].T
            return out
        with safe_open(str(part.path), framework="pt", device="cpu") as f:
            present = set(f.keys())
            return {n: f.get_tensor(k) for n, k in part.keys.items() if k in present}
    except Exception as exc:  # headers were fine, so the data itself is broken
        raise _fail(f"Cannot read the weights in {part.path} ({exc}).", _REEXPORT)


def load_transcoders(folder_or_config: str | Path, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32, progress: ProgressFn | None = None,
                     cancel: CancelToken | None = None) -> TranscoderSet:
    """Load a PLT, CLT or GemmaScope transcoder folder (or its config.yaml) as a TranscoderSet
    with weights in `dtype` on `device`. Raises TranscoderLoadError naming the bad file or value,
    Cancelled if `cancel` is set between layers."""
    plan = _plan(folder_or_config)
    s = _validate(plan)
    L, F, d = len(plan.layers), s.n_features, s.d_model

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device=device)

    # filled layer by layer so peak memory stays near one copy of the encoders
    w_enc, b_enc, b_dec = empty(L, F, d), empty(L, F), empty(L, d)
    threshold = empty(L, F) if s.has_threshold else None
    w_skip = empty(L, d, d) if s.has_skip else None
    w_dec = []
    for i, parts in enumerate(plan.layers):
        check(cancel)
        report(progress, "Loading transcoders", i, L)
        t: dict[str, torch.Tensor] = {}
        for part in parts:
            t.update(_read(part))
        w_enc[i].copy_(t["W_enc"])
        b_enc[i].copy_(t["b_enc"])
        b_dec[i].copy_(t["b_dec"])
        if threshold is not None:
            threshold[i].copy_(t["threshold"])
        if w_skip is not None:
            w_skip[i].copy_(t["W_skip"])
        w_dec.append(t["W_dec"].to(device=device, dtype=dtype).contiguous())
    report(progress, "Loading transcoders", L, L)
    return TranscoderSet(plan.kind, plan.input_hook, plan.output_hook, w_enc, b_enc, threshold,
                         tuple(w_dec), b_dec, w_skip, plan.scan, plan.folder)


def check_transcoders_fit(tc: TranscoderSet, *, n_layers: int, d_model: int,
                          model_name: str = "the model") -> None:
    """Raise TranscoderLoadError unless `tc` has one layer per model layer and reads d_model."""
    where = f"Transcoders in {tc.source}" if tc.source else "The transcoders"
    if tc.n_layers != n_layers:
        raise _fail(f"{where} have {tc.n_layers} layers but {model_name} has {n_layers}.",
                    "Pick the transcoders trained for this model (one per layer).")
    if tc.d_model != d_model:
        raise _fail(f"{where} read vectors of size {tc.d_model} but {model_name} has "
                    f"d_model {d_model}.", "Pick the transcoders trained for this model.")
