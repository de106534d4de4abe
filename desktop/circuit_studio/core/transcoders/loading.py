"""Finding, checking and loading transcoder sets in the formats released sets use.

Accepted sources (as circuit-tracer's `--transcoder_set`):

* a folder, or its `config.yaml`: circuit-tracer's `model_kind` / `feature_input_hook` /
  `feature_output_hook` / `scan` (and `activation` + `k` for Top-K sets, as circuit-tracer reads
  them since its PR #94). A PLT lists one file per layer under `transcoders:` (or has
  `layer_{i}.safetensors` / `.npz`); entries may be `hf://ORG/NAME/path?revision=REV` addresses,
  resolved offline from the local Hugging Face cache, or paths relative to the config's folder
  (circuit-tracer uses the current directory, which breaks when folders move). A CLT is a
  `W_enc_{i}` / `W_dec_{i}.safetensors` folder or a `transcoders:` list of GemmaScope 2
  `params_layer_{i}` files (released configs list L + 1 entries, the last repeated).
* a reference `ORG/NAME[/SUBFOLDER][@REVISION]` (or `hf://...`) in the local Hugging Face cache,
  whose folder holds such a config.yaml; the graph's `scan` is then circuit-tracer's
  `ORG/NAME[//SUBFOLDER][@REVISION]`.
* an EleutherAI `sparsify` folder: one `<hookpoint>/cfg.json` + `sae.safetensors` per MLP
  (`layers.{i}.mlp`), with `transcode: true`; Top-K after a ReLU, optional skip.

The file layout of each weight file is recognised from its keys (`transcoder_formats`), not from
repo names. Every shape is checked from the headers before any weight is touched, so a broken set
fails fast and `describe_transcoders` summarises a set without loading it. Loading memory-maps the
files in their stored dtype (`weight_files`), checks every tensor for NaN/Inf, and returns views.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..model import hub_cache
from . import weight_files
from ..errors import TranscoderLoadError
from ..model.families import READ_HOOKS, WRITE_HOOKS
from ..progress import CancelToken, ProgressFn, check, report
from .formats import CT_CLT_DEC, CT_CLT_ENC, GEMMASCOPE_2, OPTIONAL, REQUIRED, SPARSIFY, Layout, Source, per_layer_layout
from .transcoder_set import TranscoderSet

if TYPE_CHECKING:  # torch is imported where used: the window describes transcoders before it loads them
    import torch

_fail = TranscoderLoadError  # (message naming the file or value, hint saying what to do)

MODEL_KINDS = {"transcoder_set": "plt", "cross_layer_transcoder": "clt"}
_REEXPORT = "The file may be truncated or corrupt: download or save it again."
_SPARSIFY_HOOK = re.compile(r"(?:.*\.)?(?:layers|h)\.(\d+)\.mlp")
_ACTIVATION_LABELS = {"jumprelu": "JumpReLU", "relu": "ReLU", "topk": "TopK", "relu_topk": "TopK (ReLU)"}


@dataclass(frozen=True)
class TranscoderSummary:
    """What a transcoder set holds, read from headers only (no weights loaded)."""

    kind: str  # "plt" | "clt"
    activation: str  # "JumpReLU" | "ReLU" | "TopK" | "TopK (ReLU)"
    n_layers: int
    n_features: int
    d_model: int
    feature_input_hook: str
    feature_output_hook: str
    scan: str
    has_skip: bool
    file_format: str  # "safetensors" | "npz" | "safetensors+npz"
    dtype: str  # dtype of layer 0's encoder as stored, e.g. "bfloat16"
    size_bytes: int  # all weight files together
    source: Path
    format: str = "circuit-tracer"  # the layout recognised: see transcoder_formats
    k: int | None = None  # Top-K sets

    @property
    def hooks(self) -> tuple[str, str]:
        return self.feature_input_hook, self.feature_output_hook


@dataclass(frozen=True)
class _LayerPlan:
    sources: dict[str, Source] = field(hash=False)
    files: tuple[Path, ...]


@dataclass(frozen=True)
class _Plan:
    folder: Path
    kind: str
    input_hook: str
    output_hook: str
    scan: str
    activation: str | None  # from the config; None = decide from the files
    k: int | None
    format: str
    layers: tuple[_LayerPlan, ...]


# ---- where the set is ----
def _locate(spec: str | Path) -> tuple[Path, Path | None, str | None]:
    """-> (folder, config.yaml or None, scan implied by a hub reference or None)."""
    text = str(spec)
    p = Path(text).expanduser()
    if p.exists():
        if p.is_file():
            if p.suffix.lower() not in (".yaml", ".yml"):
                raise _fail(f"{p} is not a config.yaml.",
                            "Pick the transcoder folder or the config.yaml inside it.")
            return p.parent.resolve(), p.resolve(), None
        for name in ("config.yaml", "config.yml"):
            if (p / name).is_file():
                return p.resolve(), (p / name).resolve(), None
        return p.resolve(), None, None
    if not (hub_cache.looks_like_repo_ref(text) or text in hub_cache.TRANSCODER_ALIASES):
        raise _fail(f"Transcoder folder {p} does not exist.",
                    "Check the path, or pick the folder that holds the transcoders' config.yaml "
                    "(or give a Hugging Face reference ORG/NAME[/FOLDER] that is in the local cache).")
    with _as_load_error():
        ref = hub_cache.parse_repo_ref(text)
        folder = hub_cache.resolve_folder(ref)
    scan = ref.repo + (f"//{ref.path}" if ref.path else "") + (f"@{ref.revision}" if ref.revision else "")
    config = folder / "config.yaml"
    return folder, (config if config.is_file() else None), scan


@contextmanager
def _as_load_error(prefix: str = ""):
    """Cache misses are transcoder load errors to callers (same message and fetch hint)."""
    try:
        yield
    except hub_cache.HubCacheError as exc:
        raise _fail(prefix + exc.message, exc.hint) from None


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


def _index(path: Path) -> dict:
    try:
        return weight_files.read_index(path)
    except weight_files.WeightFileError as exc:
        raise _fail(f"Cannot read {path}: {exc}.", _REEXPORT)
    except OSError as exc:
        raise _fail(f"Cannot read {path}: {exc.strerror or exc}.", "Check that the file is readable.")


def _plan(spec: str | Path) -> _Plan:
    folder, config, ref_scan = _locate(spec)
    if config is None:
        return _sparsify_plan(folder)
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
    scan = ref_scan or (",".join(map(str, scan)) if isinstance(scan, list) else str(scan or folder.name))
    activation, k = _config_activation(cfg, config)
    entries = cfg.get("transcoders")
    if kind == "plt":
        fmt, layers = _plt_layers(entries, folder, config)
    else:
        fmt, layers = _clt_layers(entries, folder, config)
    return _Plan(folder, kind, *hooks, scan, activation, k, fmt, layers)


def _config_activation(cfg: dict, config: Path) -> tuple[str | None, int | None]:
    act, k = cfg.get("activation"), cfg.get("k")
    if act is None:
        return None, None
    act = str(act).lower()
    if act not in ("topk", "relu", "jumprelu"):
        raise _fail(f"{config}: activation {cfg['activation']!r} is not supported.",
                    "Use `activation: topk` (with `k: N`), `relu` or `jumprelu`, or leave it out.")
    if act == "topk":
        if k is None:
            raise _fail(f"{config} says `activation: topk` but has no `k`.",
                        "Add `k: N`, the number of features kept per token (as the set was trained).")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise _fail(f"{config}: k {k!r} is not a positive whole number.", "Set `k:` to the set's k, e.g. `k: 64`.")
    return act, (int(k) if act == "topk" else None)


def _entry_path(entry, i: int, folder: Path, config: Path) -> Path:
    if not isinstance(entry, str) or not entry.strip():
        raise _fail(f"{config}: transcoders entry {i} ({entry!r}) is not a file path.",
                    "List one file path (or hf:// address) per layer.")
    if entry.startswith("hf://"):
        with _as_load_error(f"layer {i} of {config}: "):
            return hub_cache.resolve_file(hub_cache.parse_hf_uri(entry))
    path = Path(entry).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise _fail(f"Layer {i} file {entry} listed in {config} does not exist (looked for {path}).",
                    f"Relative paths are resolved against {folder}; fix the entry or put the file there.")
    return path


def _entries(entries, config: Path) -> list:
    if not isinstance(entries, list) or not entries:
        raise _fail(f"{config}: `transcoders:` must be a non-empty list of file paths.",
                    "List one file per layer, in layer order.")
    return entries


def _per_layer_file(path: Path, i: int) -> tuple[str, _LayerPlan]:
    index = _index(path)
    layout = per_layer_layout(index, path.suffix.lower() == ".npz")
    if layout is None or layout is SPARSIFY:
        raise _fail(f"{path} (layer {i}) holds none of the transcoder layouts Circuit Studio reads "
                    f"(keys: {', '.join(sorted(index)[:8]) or 'none'}).",
                    "Expected circuit-tracer's W_enc/W_dec/b_enc/b_dec, GemmaScope's params.npz or "
                    "GemmaScope 2's w_enc/w_dec; re-export the file.")
    _require(layout, index, path, i)
    return layout.name, _LayerPlan(layout.sources(index), (path,))


def _require(layout: Layout, index: dict, path: Path, layer: int | None, names=REQUIRED) -> None:
    missing = layout.missing(index, layer, names)
    if missing:
        raise _fail(f"{path} has no tensor {missing[0]!r} (it has: {', '.join(sorted(index)) or 'nothing'}).",
                    f"This is not a complete {layout.name} transcoder file; re-export it.")


def _plt_layers(entries, folder: Path, config: Path) -> tuple[str, tuple[_LayerPlan, ...]]:
    if entries is None:
        found = {int(m[1]): p for p in folder.iterdir()
                 if (m := re.fullmatch(r"layer_(\d+)\.(safetensors|npz)", p.name))}
        if not found:
            raise _fail(f"{config} has no `transcoders:` list and {folder} has no layer_0.safetensors.",
                        "Download the layer files into this folder, or list their paths "
                        "under `transcoders:` in config.yaml.")
        missing = [i for i in range(max(found) + 1) if i not in found]
        if missing:
            raise _fail(f"{folder} has no layer_{missing[0]}.safetensors (layers {sorted(found)} are present).",
                        "Every layer from 0 up needs a file.")
        paths = [found[i] for i in range(len(found))]
    else:
        paths = [_entry_path(e, i, folder, config) for i, e in enumerate(_entries(entries, config))]
    parsed = [_per_layer_file(p, i) for i, p in enumerate(paths)]
    names = sorted({n for n, _ in parsed})
    return "+".join(names), tuple(lp for _, lp in parsed)


def _clt_layers(entries, folder: Path, config: Path) -> tuple[str, tuple[_LayerPlan, ...]]:
    if entries is not None:
        paths = [_entry_path(e, i, folder, config) for i, e in enumerate(_entries(entries, config))]
        first = _index(paths[0])
        if "w_enc" in first:
            return GEMMASCOPE_2.name + " CLT", _gemmascope2_clt(paths, config)
        # circuit-tracer reads an ordinary CLT from its folder whatever the list says
    return CT_CLT_ENC.name, _ct_clt(folder)


def _gemmascope2_clt(paths: list[Path], config: Path) -> tuple[_LayerPlan, ...]:
    """One `params_layer_{i}` file per layer; released configs repeat the last entry (L + 1)."""
    unique = list(dict.fromkeys(paths))
    layers = []
    for i, path in enumerate(unique):
        index = _index(path)
        _require(GEMMASCOPE_2, index, path, i)
        dec = index["w_dec"]
        if len(dec.shape) != 3 or dec.shape[1] != len(unique):
            raise _fail(f"{path}: 'w_dec' (layer {i}) has shape {list(dec.shape)} but a GemmaScope 2 "
                        f"cross-layer file of this {len(unique)}-layer set needs [F, {len(unique)}, d].",
                        f"{config} should list one params_layer_{{i}} file per layer, in order; check "
                        "that every file belongs to this set.")
        sources = GEMMASCOPE_2.sources(index)
        sources["W_dec"] = Source(dec, slot_from=i)  # slots before i are targets it never writes
        layers.append(_LayerPlan(sources, (path,)))
    return tuple(layers)


def _ct_clt(folder: Path) -> tuple[_LayerPlan, ...]:
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
        raise _fail(f"{folder} has W_dec_{extra[0]}.safetensors but no W_enc_{extra[0]}.safetensors.", hint)
    layers = []
    for i in range(n):
        e_index, d_index = _index(enc[i]), _index(dec[i])
        _require(CT_CLT_ENC, e_index, enc[i], i, ("W_enc", "b_enc", "b_dec"))
        _require(CT_CLT_DEC, d_index, dec[i], i, ("W_dec",))
        sources = {**CT_CLT_ENC.sources(e_index, i), **CT_CLT_DEC.sources(d_index, i)}
        layers.append(_LayerPlan(sources, (enc[i], dec[i])))
    return tuple(layers)


def _sparsify_plan(folder: Path) -> _Plan:
    """EleutherAI sparsify: `<hookpoint>/cfg.json` + `sae.safetensors`, one per MLP."""
    if (folder / "cfg.json").is_file():
        raise _fail(f"{folder} holds one sparsify transcoder (one hook point), not a set.",
                    "Pick the folder above it, which holds one sub-folder per layer (layers.0.mlp, ...).")
    subs = sorted(p for p in folder.iterdir() if (p / "cfg.json").is_file() and (p / "sae.safetensors").is_file())
    if not subs:
        raise _fail(f"No config.yaml in {folder}.",
                    "A transcoder folder needs circuit-tracer's config.yaml (model_kind, feature_input_hook, "
                    "feature_output_hook) next to the weight files, or one sparsify sub-folder "
                    "(cfg.json + sae.safetensors) per layer.")
    by_layer: dict[int, tuple[Path, dict]] = {}
    for sub in subs:
        m = _SPARSIFY_HOOK.fullmatch(sub.name)
        if not m:
            raise _fail(f"{sub.name} in {folder} is not an MLP hook point (layers.N.mlp).",
                        "Circuit Studio reads sparsify transcoders of MLPs only; remove other hook points.")
        try:
            cfg = json.loads((sub / "cfg.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _fail(f"Cannot read {sub / 'cfg.json'}: {exc}.", _REEXPORT)
        if not cfg.get("transcode"):
            raise _fail(f"{sub / 'cfg.json'} describes a sparse autoencoder (transcode is not true), "
                        "not a transcoder.", "Pick a sparsify transcoder (trained with --transcode).")
        if cfg.get("activation", "topk") != "topk":
            raise _fail(f"{sub / 'cfg.json'}: activation {cfg.get('activation')!r} is not supported.",
                        "Circuit Studio reads sparsify's topk transcoders.")
        by_layer[int(m[1])] = (sub, cfg)
    missing = [i for i in range(max(by_layer) + 1) if i not in by_layer]
    if missing:
        raise _fail(f"{folder} has no sparsify transcoder for layer {missing[0]} (layers.{missing[0]}.mlp).",
                    "A set needs one transcoder per layer.")
    ks = {cfg.get("k") for _, cfg in by_layer.values()}
    k = ks.pop() if len(ks) == 1 else None
    if not isinstance(k, int) or k < 1:
        raise _fail(f"The sparsify transcoders in {folder} have k = {sorted(map(str, ks | {k}))}: "
                    "they need one positive k for all layers.", "Fix `k` in each cfg.json.")
    layers = []
    for i in range(len(by_layer)):
        sub, cfg = by_layer[i]
        path = sub / "sae.safetensors"
        index = _index(path)
        _require(SPARSIFY, index, path, None)
        if cfg.get("d_in") is not None and index["encoder.weight"].shape[-1] != cfg["d_in"]:
            raise _fail(f"{path}: encoder reads size {index['encoder.weight'].shape[-1]} but cfg.json says "
                        f"d_in {cfg['d_in']}.", _REEXPORT)
        layers.append(_LayerPlan(SPARSIFY.sources(index), (path,)))
    return _Plan(folder, "plt", "mlp.hook_in", "mlp.hook_out", folder.name, "relu_topk", k, SPARSIFY.name,
                 tuple(layers))


# ---- shape checks, from headers ----
@dataclass(frozen=True)
class _Shapes:
    n_features: int
    d_model: int
    has_threshold: bool
    has_skip: bool
    dtype: str


def _validate(plan: _Plan) -> tuple[_Shapes, str]:
    """Check every layer's shapes; return the set's sizes and its activation (one of ACTIVATIONS)."""
    L, first = len(plan.layers), None
    for i, lp in enumerate(plan.layers):
        src = lp.sources

        def bad(name: str, should: str) -> TranscoderLoadError:
            s = src[name].stored
            return _fail(f"{s.path}: {s.key!r} (layer {i}) has shape {list(src[name].shape)} but should be {should}.",
                         "The file does not match the rest of the transcoder set (or its format); re-export it.")

        for name, s in src.items():
            if not s.stored.dtype.is_floating_point:
                raise _fail(f"{s.stored.path}: tensor {s.stored.key!r} has dtype {s.stored.dtype_name}, "
                            "not a float type.", "Re-export the transcoders with floating-point weights.")
        if len(src["W_enc"].shape) != 2:
            raise bad("W_enc", "[F, d]")
        F, d = src["W_enc"].shape
        clt = plan.kind == "clt"
        expected = {"W_dec": (F, L - i, d) if clt else (F, d), "b_enc": (F,), "b_dec": (d,),
                    "threshold": (F,), "W_skip": (d, d)}
        for name, want in expected.items():
            if name in src and src[name].shape != want:
                raise bad(name, f"{list(want)} (F={F}, d={d}{f', {L} layers' if clt else ''})")
        this = _Shapes(F, d, "threshold" in src, "W_skip" in src, src["W_enc"].stored.dtype_name)
        first = first or this
        enc = src["W_enc"].stored.path
        if (F, d) != (first.n_features, first.d_model):
            raise _fail(f"{enc}: layer {i} has F={F}, d={d} but layer 0 has F={first.n_features}, "
                        f"d={first.d_model}.", "All layers of a transcoder set must have the same sizes.")
        for flag, label in (("has_threshold", "a JumpReLU threshold"), ("has_skip", "a skip matrix (W_skip)")):
            mine, theirs = getattr(this, flag), getattr(first, flag)
            if mine != theirs:
                raise _fail(f"{enc}: layer {i} {'has' if mine else 'lacks'} {label} but layer 0 "
                            f"{'has' if theirs else 'does not'}.",
                            "Every layer must have it or none; re-export the transcoders.")
    assert first is not None
    return first, _activation(plan, first)


def _activation(plan: _Plan, s: _Shapes) -> str:
    where = plan.layers[0].files[0]
    if plan.format.startswith(GEMMASCOPE_2.name) and not s.has_threshold:
        raise _fail(f"{where} has no 'threshold': GemmaScope 2 transcoders are JumpReLU.", _REEXPORT)
    act = plan.activation or ("jumprelu" if s.has_threshold else "relu")
    if act in ("topk", "relu", "relu_topk") and s.has_threshold:
        raise _fail(f"The transcoders are {_ACTIVATION_LABELS[act]} but {where} holds a JumpReLU threshold.",
                    "Remove `activation:` from config.yaml (or the thresholds from the files).")
    if act == "jumprelu" and not s.has_threshold:
        raise _fail(f"config.yaml says `activation: jumprelu` but {where} has no threshold.",
                    "Use `activation: relu` (or `topk` with `k`), or add the thresholds.")
    if plan.k is not None and plan.k > s.n_features:
        raise _fail(f"k = {plan.k} is more than the {s.n_features} features per layer.", "Set `k:` to the set's k.")
    return act


# ---- public API ----
def describe_transcoders(spec: str | Path) -> TranscoderSummary:
    """Summarise a transcoder set (folder, config.yaml or cached hub reference) from headers only.
    Raises TranscoderLoadError for the same problems `load_transcoders` would find in them."""
    plan = _plan(spec)
    s, act = _validate(plan)
    files = {f for lp in plan.layers for f in lp.files}
    formats = sorted({"npz" if f.suffix.lower() == ".npz" else "safetensors" for f in files})
    return TranscoderSummary(plan.kind, _ACTIVATION_LABELS[act], len(plan.layers), s.n_features, s.d_model,
                             plan.input_hook, plan.output_hook, plan.scan, s.has_skip, "+".join(reversed(formats)),
                             s.dtype, sum(f.stat().st_size for f in files), plan.folder, plan.format, plan.k)


def _view(src: Source) -> torch.Tensor:
    t = weight_files.mapped(src.stored)
    if src.transpose:
        t = t.T
    if src.slot_from is not None:
        t = t[:, src.slot_from:]
    return t


def _checked(src: Source, layer: int) -> torch.Tensor:
    try:
        t = _view(src)
        bad = weight_files.first_non_finite(t)
    except (OSError, ValueError, RuntimeError) as exc:  # headers were fine, so the data is broken
        raise _fail(f"Cannot read the weights in {src.stored.path} ({exc}).", _REEXPORT)
    if bad is not None:
        value = float(t[bad])
        what = "NaN" if value != value else ("Inf" if value > 0 else "-Inf")
        where = list(bad)
        if src.transpose:
            where = where[::-1]  # report the index as stored in the file
        raise _fail(f"{src.stored.path}: tensor {src.stored.key!r} (layer {layer}) holds {what} at {where}.",
                    "The transcoder file is corrupt or was saved from a diverged run; download or re-export it.")
    return t


def load_transcoders(spec: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                     progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> TranscoderSet:
    """Load a transcoder set (folder, config.yaml or cached hub reference) as a TranscoderSet.

    On the CPU with `dtype` None the weights are memory-mapped views of the files in their stored
    dtype (nothing is copied; pages are read when touched). Another `device` or `dtype` copies
    them there layer by layer. Raises TranscoderLoadError naming the bad file, tensor or value
    (NaN and Inf included), Cancelled if `cancel` is set between layers."""
    import torch

    plan = _plan(spec)
    s, act = _validate(plan)
    device = torch.device(device)
    L = len(plan.layers)
    keep_views = device.type == "cpu" and dtype is None

    def place(t: torch.Tensor) -> torch.Tensor:
        return t if keep_views else t.to(device=device, dtype=dtype or t.dtype)

    small_dtype = dtype or getattr(torch, s.dtype)
    big: dict[str, list[torch.Tensor]] = {"W_enc": [], "W_dec": [], "W_skip": []}
    small: dict[str, list[torch.Tensor]] = {"b_enc": [], "b_dec": [], "threshold": []}
    for i, lp in enumerate(plan.layers):
        check(cancel)
        report(progress, "Loading transcoders", i, L)
        for name in (*REQUIRED, *OPTIONAL):
            if name not in lp.sources:
                continue
            t = _checked(lp.sources[name], i)
            if name in big:
                big[name].append(place(t))
            else:
                small[name].append(t.to(device=device, dtype=small_dtype))
            weight_files.drop_pages(lp.files)  # checked; read again when attribution needs them
    report(progress, "Loading transcoders", L, L)
    return TranscoderSet(plan.kind, plan.input_hook, plan.output_hook, tuple(big["W_enc"]),
                         torch.stack(small["b_enc"]),
                         torch.stack(small["threshold"]) if s.has_threshold else None,
                         tuple(big["W_dec"]), torch.stack(small["b_dec"]),
                         tuple(big["W_skip"]) if s.has_skip else None, plan.scan, plan.folder,
                         activation=act, k=plan.k,
                         files=tuple(lp.files for lp in plan.layers) if keep_views else ())


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
