"""Will it fit? The memory a run takes, estimated from file headers before any weight is loaded.

Released models and transcoders at their real sizes often do not fit a workstation, and finding
out by an out-of-memory crash twenty minutes into loading helps nobody. So the command line and
the model dialog first add up what each part will hold, compare it with what is free (RAM from
/proc/meminfo's MemAvailable; on CUDA, free GPU memory) and, when something does not fit, say
what and which setting to change.

What is counted (bytes of the dtype each part is held in):

* model weights: parameter count (safetensors headers) x the chosen dtype, on the compute device.
  Without `accelerate` installed, transformers loads a GPU model into RAM first and then moves
  it: `loading_ram` is that passing peak, checked on its own (it is gone before attribution).
* transcoders: the loader memory-maps the files and keeps their stored dtype. On the CPU, or with
  `--offload cpu`, only what every step touches stays resident in RAM — biases, thresholds, skip
  matrices and one layer's encoder at a time (attribution streams the encoders layer by layer);
  the rest is read from disk through the page cache as needed. On a GPU without offload the
  whole set is moved there.
* attribution: the active features' encoder and decoder rows, the clean forward pass (feature
  activations [L, P, F], residual reads/writes/errors, attention patterns [L, H, P, P], logits),
  one frozen-backward batch (batch size x P row-positions x d per buffer), and the graph itself. The adjacency is
  held in blocks of the entries that can be non-zero (`core.graph.adjacency`): a feature row at (layer l,
  position p) has one per feature and error of layers < l at positions <= p and per token at
  positions <= p (`allowed_entries`), a logit row one per source. With a feature budget the rows
  are first gathered over every active feature ([K + budget, n_cols + K], the frontier's matrix).
  Pruning's working set is counted as half the blocks (it holds the kept part of them, with sort keys).

Active features per layer and token are not known before the forward pass: the plan takes the
transcoders' k for Top-K sets, else `RunSize.active_per_token` (default 64, a typical JumpReLU L0).
These are estimates for planning, not promises; `HEADROOM` leaves room for what is not counted.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

GiB = 1 << 30
DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
DEFAULT_ACTIVE_PER_TOKEN = 64
# [row-positions, d] buffers of one packed frozen-backward batch: the state, attention heads, mixed
# heads, the skip product and the injected rows' outer products
BACKWARD_TENSORS = 5
PRUNING_SHARE = 0.5  # pruning's working set, as a share of the adjacency blocks
# use at most this share of what is free: allocator fragmentation, temporaries, the rest of the app
HEADROOM = 0.9
RAM, GPU = "RAM", "GPU memory"
_MEMINFO = Path("/proc/meminfo")
_MIN_BUDGET = 500  # the smallest feature budget suggested: fewer nodes make a graph of little use
_WORTH_SAYING = 16 << 20  # a change that saves less (or less than 1% of the need) is not suggested


@dataclass(frozen=True)
class RunSize:
    """The attribution run a plan is for (the `attribute` command's settings)."""

    n_tokens: int = 64  # prompt length P, BOS included
    batch_size: int = 256
    max_feature_nodes: int | None = 7500  # None: every active feature
    max_n_logits: int = 10
    active_per_token: int | None = None  # per layer; None: the transcoders' k, else DEFAULT_ACTIVE_PER_TOKEN


@dataclass(frozen=True)
class FreeMemory:
    """Bytes free now; None where it cannot be told (no /proc/meminfo, no GPU)."""

    ram: int | None
    vram: int | None = None


@dataclass(frozen=True)
class Part:
    """One thing the run holds: `nbytes` of `where` (RAM or GPU memory)."""

    name: str
    nbytes: int
    where: str
    detail: str


@dataclass(frozen=True)
class MemoryPlan:
    """Per-part figures and whether they fit. `problem` (one line) and `hint` are empty when they do."""

    device: str  # "cpu" | "cuda"
    dtype: str  # the model's compute dtype
    offload: str | None
    parts: tuple[Part, ...]
    free: FreeMemory
    n_active: int  # estimated active features (0 when no run was planned)
    n_nodes: int  # graph nodes N
    loading_ram: int = 0  # RAM held only while loading (a GPU model staged on the CPU)
    problem: str = ""
    hint: str = ""

    def needed(self, where: str) -> int:
        return sum(p.nbytes for p in self.parts if p.where == where)

    def part(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)

    def fits_in(self, where: str) -> bool:
        free = self.free.ram if where == RAM else self.free.vram
        peak = max(self.needed(where), self.loading_ram if where == RAM else 0)
        return free is None or peak <= HEADROOM * free

    @property
    def fits(self) -> bool:
        return self.fits_in(RAM) and (self.device != "cuda" or self.fits_in(GPU))

    def check(self) -> None:
        """Raise ModelLoadError(problem, hint) unless the plan fits."""
        if not self.fits:
            raise ModelLoadError(self.problem, self.hint)

    def lines(self) -> tuple[str, ...]:
        """One line per part, then the totals against what is free."""
        out = [f"{p.name}: {format_bytes(p.nbytes)} of {p.where} ({p.detail})" for p in self.parts]
        for where, free in ((RAM, self.free.ram), (GPU, self.free.vram)):
            if where == GPU and self.device != "cuda":
                continue
            have = f"{format_bytes(free)} free" if free is not None else "free amount unknown"
            out.append(f"total {where}: {format_bytes(self.needed(where))} ({have})")
        return tuple(out)


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def dtype_name(dtype: Any) -> str:
    """torch.bfloat16 / "bfloat16" / "torch.bfloat16" -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


def dtype_bytes(dtype: Any) -> int:
    name = dtype_name(dtype)
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown floating-point dtype {name!r}")
    return DTYPE_BYTES[name]


def loads_straight_to_gpu() -> bool:
    """Whether transformers can put weights on the GPU as it reads them (it needs accelerate for that)."""
    return importlib.util.find_spec("accelerate") is not None


def free_memory(device: str = "cpu") -> FreeMemory:
    """What is free now: MemAvailable from /proc/meminfo, and on CUDA torch.cuda.mem_get_info."""
    ram = None
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                ram = int(line.split()[1]) * 1024  # the file counts kB
                break
    except (OSError, ValueError, IndexError):
        pass  # not Linux: say "unknown" rather than guess
    vram = None
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            vram = int(torch.cuda.mem_get_info(torch.device(device))[0])
    return FreeMemory(ram, vram)


# ---- sizes from the summaries ----
def model_parameters(model: Any) -> int:
    """From the headers when known; else estimated from the config (embedding and unembedding,
    four attention and three MLP matrices per layer; GQA makes it a slight overestimate)."""
    if getattr(model, "n_parameters", None):
        return int(model.n_parameters)
    d, L = model.d_model, model.n_layers
    return 2 * model.vocab_size * d + L * (4 * d * d + 3 * d * model.d_mlp)


def model_bytes(model: Any, dtype: Any) -> int:
    return model_parameters(model) * dtype_bytes(dtype)


def _is_jumprelu(tc: Any) -> bool:
    return "jump" in str(getattr(tc, "activation", "")).lower()


def _decoder_slots(tc: Any) -> float:
    """Output layers a feature writes to, on average: 1, or (L + 1) / 2 for a cross-layer set."""
    return (tc.n_layers + 1) / 2 if tc.kind == "clt" else 1.0


def _small_elements(tc: Any) -> int:
    """Biases, thresholds and skip matrices of all layers: what every step touches."""
    L, F, d = tc.n_layers, tc.n_features, tc.d_model
    return L * (F + d + (F if _is_jumprelu(tc) else 0) + (d * d if tc.has_skip else 0))


def transcoder_weight_bytes(tc: Any) -> int:
    """Every weight of the set in its stored dtype (the decoder of a CLT layer l has L - l slots)."""
    L, F, d = tc.n_layers, tc.n_features, tc.d_model
    decoders = F * d * (L * (L + 1) // 2 if tc.kind == "clt" else L)
    return (L * F * d + decoders + _small_elements(tc)) * dtype_bytes(tc.dtype)


def transcoder_resident_bytes(tc: Any) -> int:
    """What stays in RAM of a memory-mapped set: the small tensors and one layer's encoder."""
    return (_small_elements(tc) + tc.n_features * tc.d_model) * dtype_bytes(tc.dtype)


def active_features(tc: Any, run: RunSize) -> int:
    return tc.n_layers * run.n_tokens * _per_token(tc, run)


def _per_token(tc: Any, run: RunSize) -> int:
    per_token = run.active_per_token or getattr(tc, "k", None) or DEFAULT_ACTIVE_PER_TOKEN
    return min(int(per_token), tc.n_features)


def allowed_entries(n_layers: int, n_tokens: int, per_token: int) -> int:
    """Adjacency entries the feature rows can have, with `per_token` active features per layer at every
    position but BOS: a row at (l, p) has a * p feature, p + 1 error (layers < l) and p + 1 token sources."""
    L, P, a = n_layers, n_tokens, per_token
    s1 = P * (P - 1) // 2  # sum of p over p = 1 .. P-1
    s2 = s1 + P - 1  # sum of p + 1
    return a * (L * (L - 1) // 2 * (a * s1 + s2) + L * s2)


# ---- the plan ----
def _parts(model: Any, tc: Any, device: str, dtype: str, offload: str | None,
           run: RunSize | None) -> tuple[tuple[Part, ...], int, int]:
    on = GPU if device == "cuda" else RAM
    cb = dtype_bytes(dtype)
    parts = []
    if model is not None:
        n = model_parameters(model)
        parts.append(Part("model weights", n * cb, on, f"{n / 1e9:.2f}B parameters in {dtype}"))
    if tc is not None:
        stored = dtype_name(tc.dtype)
        if on == GPU and offload is None:
            parts.append(Part("transcoders", transcoder_weight_bytes(tc), GPU,
                              f"all weights moved to the GPU, {stored} as stored"))
        else:
            rest = format_bytes(max(0, transcoder_weight_bytes(tc) - transcoder_resident_bytes(tc)))
            parts.append(Part("transcoders", transcoder_resident_bytes(tc), RAM,
                              f"memory-mapped {stored}: biases, thresholds{', skip' if tc.has_skip else ''} and "
                              f"one layer's encoder at a time; the other {rest} are read from disk as needed"))
            if on == GPU:  # offloaded: what is moved to the GPU for one step
                moved = (_small_elements(tc) + tc.n_features * tc.d_model) * cb
                parts.append(Part("transcoders on the GPU", moved, GPU,
                                  "one layer's encoder and the small tensors, moved per step"))
    n_active = n_nodes = 0
    if run is not None and model is not None and tc is not None:
        L, F, d, P, B = tc.n_layers, tc.n_features, model.d_model, run.n_tokens, run.batch_size
        K = run.max_n_logits
        n_active = active_features(tc, run)
        selected = n_active if run.max_feature_nodes is None else min(run.max_feature_nodes, n_active)
        n_cols = n_active + L * P + P  # feature, error and token columns of every row
        n_nodes = selected + L * P + P + K
        rows = n_active * d * (1 + _decoder_slots(tc)) * cb
        parts.append(Part("active features' rows", int(rows), on,
                          f"encoder and decoder rows of ~{n_active:,} active features"))
        # feature activations are float32 whatever the model's dtype (attribution keeps them so)
        forward = (L * P * F * 4 + 3 * L * P * d * cb + L * model.n_heads * P * P * (4 + cb)
                   + P * model.vocab_size * 4)
        parts.append(Part("forward pass", forward, on,
                          f"activations [L, P, F], attention patterns and logits for {P} tokens"))
        backward = B * P * d * cb * BACKWARD_TENSORS + B * n_cols * 4
        parts.append(Part("backward batches", backward, on, f"batch size {B}"))
        entries = allowed_entries(L, P, _per_token(tc, run))
        if selected >= n_active:  # every feature: rows written straight into the blocks
            blocks = entries + K * n_cols
            graph = int(blocks * 4 * (1 + PRUNING_SHARE))
            detail = f"adjacency blocks, {blocks:,} float32 entries of {n_nodes:,}² (and pruning's working set)"
        else:  # the frontier's rows over every active feature, then the selected rows' blocks
            share = entries / max(1, n_active * n_cols)
            blocks = int(selected * (selected + L * P + P) * share) + K * (n_nodes - K)
            graph = int(((K + selected) * (n_cols + K) + (K + selected) ** 2 + blocks * (1 + PRUNING_SHARE)) * 4)
            detail = (f"rows buffer {K + selected:,} x {n_cols + K:,} and adjacency blocks of "
                      f"~{blocks:,} entries (and pruning's working set)")
        parts.append(Part("graph", graph, RAM, detail))
    return tuple(parts), n_active, n_nodes


def plan_memory(model: Any = None, transcoders: Any = None, *, device: str = "cpu", dtype: Any = "float32",
                offload: str | None = None, run: RunSize | None = None,
                free: FreeMemory | None = None) -> MemoryPlan:
    """The plan for loading `model` (a ModelSummary) and `transcoders` (a TranscoderSummary) on
    `device` in `dtype`, and, with `run`, attributing one prompt. `free` defaults to what is free now."""
    device = "cuda" if str(device).startswith("cuda") else "cpu"
    dtype = dtype_name(dtype)
    dtype_bytes(dtype)  # refuse unknown dtypes here, not deep in the arithmetic
    if offload not in (None, "cpu"):
        raise ValueError(f"offload must be None or 'cpu', not {offload!r}")
    free = free if free is not None else free_memory(device)
    parts, n_active, n_nodes = _parts(model, transcoders, device, dtype, offload, run)
    staged = model_bytes(model, dtype) if model is not None and device == "cuda" and not loads_straight_to_gpu() else 0
    plan = MemoryPlan(device, dtype, offload, parts, free, n_active, n_nodes, staged)
    if plan.fits:
        return plan
    where = GPU if device == "cuda" and not plan.fits_in(GPU) else RAM
    if where == RAM and plan.needed(RAM) <= HEADROOM * free.ram:  # only the passing load peak is too big
        problem = (f"Not enough RAM to load the model: without accelerate transformers holds its "
                   f"{format_bytes(staged)} in RAM before moving it to the GPU, but {format_bytes(free.ram)} is free.")
        hint = "Install accelerate (pip install accelerate) to load straight to the GPU" + \
            (", or use --dtype bfloat16." if plan.dtype == "float32" else ".")
        return dataclasses.replace(plan, problem=problem, hint=hint)
    problem, hint = _explain(plan, where, model, transcoders, run)
    return dataclasses.replace(plan, problem=problem, hint=hint)


def _explain(plan: MemoryPlan, where: str, model: Any, tc: Any, run: RunSize | None) -> tuple[str, str]:
    free = plan.free.vram if where == GPU else plan.free.ram
    need = plan.needed(where)
    biggest = sorted((p for p in plan.parts if p.where == where), key=lambda p: -p.nbytes)[:3]
    problem = (f"Not enough {where}: this run needs about {format_bytes(need)} but {format_bytes(free)} is free "
               f"({', '.join(f'{p.name} {format_bytes(p.nbytes)}' for p in biggest)}).")

    def need_with(**change) -> int:
        args = dict(device=plan.device, dtype=plan.dtype, offload=plan.offload, run=run)
        args.update(change)
        parts, _, _ = _parts(model, tc, **args)
        return sum(p.nbytes for p in parts if p.where == where)

    options: list[tuple[int, str, dict]] = []
    if plan.dtype == "float32":
        options.append((need - need_with(dtype="bfloat16"), "--dtype bfloat16", {"dtype": "bfloat16"}))
    if where == GPU and plan.offload is None and tc is not None:
        options.append((need - need_with(offload="cpu"), "--offload cpu", {"offload": "cpu"}))
    everything = run
    if run is not None and run.batch_size > 16:
        smaller = dataclasses.replace(run, batch_size=max(16, run.batch_size // 4))
        options.append((need - need_with(run=smaller), f"--batch-size {smaller.batch_size}", {}))
        everything = smaller
    selected = 0 if run is None else plan.n_active if run.max_feature_nodes is None \
        else min(run.max_feature_nodes, plan.n_active)
    if run is not None and selected > _MIN_BUDGET:
        budget = _largest_budget(selected, free, lambda b: need_with(run=dataclasses.replace(run, max_feature_nodes=b)))
        if budget is None:  # not alone: then together with the other changes
            others = {k: v for _, _, change in options for k, v in change.items()}
            budget = _largest_budget(selected, free, lambda b: need_with(
                **others, run=dataclasses.replace(everything, max_feature_nodes=b))) or _MIN_BUDGET
        saved = need - need_with(run=dataclasses.replace(run, max_feature_nodes=budget))
        if saved > 0:  # (a big budget can cost more than none: its rows span every active feature)
            options.append((saved, f"--max-feature-nodes {budget}", {}))
            everything = dataclasses.replace(everything, max_feature_nodes=budget)
    worth = max(1, min(_WORTH_SAYING, need // 100))
    useful = sorted((o for o in options if o[0] >= worth), key=lambda o: -o[0])
    if not useful:
        return problem, "Use a machine with more memory (or a smaller model or transcoder set)."
    all_changes = {k: v for _, _, change in useful for k, v in change.items()}
    best = need_with(**all_changes, run=everything)
    tail = "" if free is None or best <= HEADROOM * free else \
        f"; even with all of these it needs {format_bytes(best)}, so a machine with more memory is needed"
    tries = ", ".join(f"{flag} (saves {format_bytes(saved)})" for saved, flag, _ in useful)
    return problem, f"Try {tries}{tail}."


def _largest_budget(selected: int, free: int | None, need: Any) -> int | None:
    """The largest feature budget, halving from `selected`, whose `need(budget)` fits in `free`."""
    budget = selected
    while free is not None and budget > _MIN_BUDGET:
        budget = max(_MIN_BUDGET, budget // 2)
        if need(budget) <= HEADROOM * free:
            return budget
    return None
