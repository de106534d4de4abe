"""Training JumpReLU transcoders (per-layer, or cross-layer) for a local model on token windows.

A transcoder for layer l learns to map what the layer's MLP reads (`feature_input_hook`) to what
it writes (`feature_output_hook`) through a wide, sparse layer of features (spec §1.2; the trainable
module and its threshold gradients are in `jumprelu`, the activation buffer in `activation_buffer`,
the held-out measurements in `evaluation`, the report types in `training_report`).

Steps of `train_transcoders`:

1. Checks: width, kind, hooks (default by family: Llama/Qwen/GPT-2 `mlp.hook_in` -> `mlp.hook_out`,
   Gemma `ln2.hook_normalized` -> `hook_mlp_out`), windows against the model (ids within the
   vocabulary, length within the context), and an optional starting set against the model.
2. Windows are split (seeded) into held-out windows, for the report only, and training windows.
3. Activations: `collect_activations` over chunks of training windows fills an in-memory buffer
   [layers, tokens, d] of reads and writes, skipping the BOS position(s) (`activation_buffer`).
   Its size is `buffer_tokens`, capped by `max_buffer_bytes`; per-layer transcoders are trained
   in groups of layers when one buffer of all layers would not fit. Training draws batches from
   shuffled passes over the buffer.
4. Normalisation: per layer, inputs are centred and divided by one scalar (unit variance per
   dimension on average). Targets are centred and mapped by y_n = (y - mean) @ P, where P scales
   each principal direction of the targets (variance v) by v^(-w/2), then all by one factor so the
   mean squared norm is d_model. w = `target_whitening`: 0 makes the training loss the FVU; the
   default 0.5 gives the low-variance directions more weight. An MLP's output variance sits mostly
   in a few directions (on the demo model, 4 of 128 principal directions hold 89 %), while what the
   next layers need is spread over the rest; weighting them up recovers more of the loss at the
   same FVU (see the demo findings: FVU alone misleads). Both maps are linear and are folded back
   into the saved weights (`jumprelu.JumpReLUTranscoder.folded`).
5. Objective (Rajamanoharan et al. 2024, "Jumping Ahead: improving reconstruction fidelity with
   JumpReLU sparse autoencoders"): MSE(normalised) / d_model + lambda * L0, where L0 counts active
   features per token, with straight-through estimators of bandwidth eps for the threshold
   gradients (`jumprelu`); thresholds are learnt as log(theta). Adam; lambda rises linearly from 0
   over the first tenth of the steps; the learning rate warms up over the first 2 % of the steps
   and decays linearly (to 5 %) over the last fifth. Optionally (`skip=True`, PLT only) a dense
   linear skip path x @ W_skip.T is trained beside the features (circuit-tracer's `W_skip`).
6. Initialisation: random unit directions, encoder = decoder transpose (`jumprelu`); each
   threshold is then set from the data so that every feature starts active on
   ~`INIT_L0 / width` of the tokens: no feature starts dead.
7. Dead features: a feature that has not fired for `resample_every` steps (until 70 % of training)
   is resampled: its encoder points at a training input the transcoder reconstructs badly (drawn
   with probability proportional to the squared error), its threshold is half its pre-activation
   there, its decoder points along that error, and its optimiser state is reset. The report counts
   features that fired neither in the last quarter of training nor on the held-out tokens.
8. Report per layer (`evaluation.evaluate_transcoders`, on the held-out windows, with the folded
   set as saved): FVU, L0, dead features, and loss recovered.

Cross-layer transcoders (`kind="clt"`): one encoder per layer; a feature read at layer l writes to
every layer l' >= l. All layers are trained together on the mean normalised MSE over layers plus
lambda times the total L0 over layers; everything else is as above.

Defaults were tuned on the demo model (4 layers, d_model 128, width 1024; see the module's
report in the project notes): the held-out L0 keeps falling slowly during training while the loss
recovered keeps rising, so smaller batches and more steps pay off more than a larger L0.
Per-layer transcoders train one layer at a time: [batch, features] tensors of one layer are much
faster on a CPU than all layers batched together.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import CircuitStudioError
from ..model.families import DEFAULT_HOOKS, READ_HOOKS, WRITE_HOOKS
from ..model.loading import ModelBundle
from ..progress import CancelToken, ProgressFn, check, report
from .activation_buffer import CHUNK_TOKENS, collect_reads_writes
from .evaluation import _evaluate
from .jumprelu import JumpReLUTranscoder
from .loading import check_transcoders_fit
from .training_report import LayerReport, TrainingError, TrainingReport
from .transcoder_set import TranscoderSet

INIT_L0 = 128  # active features per token at initialisation (thresholds are set from data)
THRESHOLD_LR_SCALE = 1.0  # learning rate of log(threshold) relative to the other parameters
# Below this many elements per [batch, features] tensor a training step is a few milliseconds of
# small ops, which intra-op threads only slow down (badly so on a busy machine): use one thread.
_SMALL_STEP = 1 << 20


def default_hooks_for(family: str) -> tuple[str, str]:
    """(feature_input_hook, feature_output_hook) used by default for a model family."""
    try:
        return DEFAULT_HOOKS[family]
    except KeyError:
        raise TrainingError(f"No default transcoder hooks for model family {family!r}.",
                            "Give feature_input_hook and feature_output_hook explicitly.") from None


# ---------------------------------------------------------------------------------------------
# Checks


def _check_settings(bundle: ModelBundle, windows: torch.Tensor, width: int, kind: str, hooks: tuple[str, str],
                    numbers: dict[str, tuple[float, bool]], skip: bool, init: TranscoderSet | None) -> None:
    """Raise TrainingError for bad settings (`numbers`: name -> (value, whether it is valid)) or
    windows / starting transcoders that do not fit the model."""
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise TrainingError(f"The transcoder width must be a positive whole number of features, not {width!r}.",
                            "Use e.g. --width 1024 (a few times d_model or more).")
    if kind not in ("plt", "clt"):
        raise TrainingError(f"Unknown transcoder kind {kind!r}.",
                            "Use 'plt' (per-layer) or 'clt' (cross-layer).")
    if skip and kind != "plt":
        raise TrainingError("Skip connections exist only for per-layer transcoders (circuit-tracer's CLT "
                            "format has none).", "Train a PLT with skip, or a CLT without.")
    if hooks[0] not in READ_HOOKS or hooks[1] not in WRITE_HOOKS:
        raise TrainingError(f"Unknown hook points {hooks[0]!r} -> {hooks[1]!r}.",
                            f"Read at one of {', '.join(READ_HOOKS)}; write at one of {', '.join(WRITE_HOOKS)}.")
    for name, (value, ok) in numbers.items():
        if not ok:
            raise TrainingError(f"{name} = {value} is out of range.",
                                "steps >= 0; batch_tokens, buffer_tokens, heldout_tokens >= 1; lr, bandwidth > 0; "
                                "l0_coefficient >= 0; 0 <= heldout_fraction < 1.")
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.dtype.is_floating_point \
            or windows.dtype == torch.bool:
        raise TrainingError("Token windows must be an integer tensor [N, T].",
                            "Build them with corpus_text.token_windows.")
    n, t = windows.shape
    zeroed = bundle.n_zeroed_positions
    if n == 0:
        raise TrainingError("There are no token windows to train on.", "Use a corpus with some text in it.")
    if t <= zeroed:
        raise TrainingError(f"Windows of {t} token(s) leave no position to train on (BOS is skipped).",
                            "Use longer windows (e.g. a context of 64 or 128).")
    limit = bundle.summary.max_positions
    if limit and t > limit:
        raise TrainingError(f"Windows are {t} tokens long but {bundle.name} takes at most {limit}.",
                            f"Use a context of at most {limit}.")
    vocab = bundle.model.get_input_embeddings().num_embeddings
    lo, hi = int(windows.min()), int(windows.max())
    if lo < 0 or hi >= vocab:
        raise TrainingError(f"Token ids range over {lo}..{hi} but {bundle.name} has a vocabulary of {vocab}.",
                            "Tokenise the corpus with this model's own tokenizer.")
    if init is not None:
        try:
            check_transcoders_fit(init, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model,
                                  model_name=bundle.name)
        except CircuitStudioError as e:
            raise TrainingError(e.message, e.hint) from e
        if init.kind != kind or init.n_features != width:
            raise TrainingError(f"The starting transcoders are a {init.kind.upper()} of width {init.n_features}, "
                                f"not a {kind.upper()} of width {width}.", "Match --kind and --width to them.")
        if (init.feature_input_hook, init.feature_output_hook) != hooks:
            raise TrainingError(f"The starting transcoders read/write at {init.feature_input_hook} -> "
                                f"{init.feature_output_hook}, not {hooks[0]} -> {hooks[1]}.",
                                "Train with the same hook points.")
        if init.w_skip is not None and not skip:
            raise TrainingError("The starting transcoders have skip connections (W_skip).",
                                "Train with skip connections too (skip=True).")


# ---------------------------------------------------------------------------------------------
# Normalisation


def _input_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer mean [L, d] and one scale [L] such that mean ||x - mean||^2 = d * scale^2."""
    mu = x.double().mean(1)
    var = torch.stack([((x[l].double() - mu[l]) ** 2).sum(-1).mean() / x.shape[-1] for l in range(x.shape[0])])
    sigma = var.sqrt()
    return mu.float(), torch.where(sigma > 0, sigma, torch.ones_like(sigma)).float()


def _target_transform(y: torch.Tensor, whitening: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per layer mean [L, d] and an invertible map proj [L, d, d] (with its inverse) for targets
    y [L, N, d]: along each principal direction of y (variance v_i) the scale is v_i^(-whitening/2),
    then one overall factor makes the mean squared norm d (unit variance per dimension on average).

    whitening = 0 is a plain scalar normalisation (loss = FVU); 1 gives every principal direction
    equal weight. Directions with variance below 1e-6 of the largest are not boosted further."""
    L, _, d = y.shape
    mu = y.double().mean(1)
    proj, unproj = [], []
    for l in range(L):
        yc = y[l].double() - mu[l]
        cov = yc.T @ yc / max(1, yc.shape[0])
        evals, vecs = torch.linalg.eigh(cov)
        evals = evals.clamp(min=max(float(evals.max()), 1e-30) * 1e-6)
        scale = evals.pow(-whitening / 2)
        scale = scale * math.sqrt(d / float((evals * scale ** 2).sum()))  # E||y_n||^2 = d
        proj.append(vecs * scale)  # y_n = yc @ V diag(scale)
        unproj.append((vecs / scale).T)  # = diag(1/scale) V^T, the exact inverse
    return mu.float(), torch.stack(proj).float(), torch.stack(unproj).float()


# ---------------------------------------------------------------------------------------------
# Training loop


@dataclass
class _Run:
    """Per-group training state shared by the loop helpers."""

    model: JumpReLUTranscoder
    opt: torch.optim.Optimizer
    reads: torch.Tensor
    writes: torch.Tensor
    generator: torch.Generator


def _optimizer(model: JumpReLUTranscoder, lr: float) -> torch.optim.Optimizer:
    """Adam; thresholds (in log space) get THRESHOLD_LR_SCALE times the learning rate."""
    thr = [model.log_threshold]
    rest = [p for p in model.parameters() if p is not model.log_threshold]
    return torch.optim.Adam([{"params": rest, "lr_scale": 1.0},
                             {"params": thr, "lr_scale": THRESHOLD_LR_SCALE}], lr=lr, betas=(0.9, 0.999))


@torch.no_grad()
def _init_from_data(model: JumpReLUTranscoder, xn: torch.Tensor, generator: torch.Generator) -> None:
    """On a sample of (normalised) training inputs: thresholds such that each feature fires on
    ~INIT_L0 / F of the tokens, and decoder norms such that the initial reconstructions carry a
    tenth of the targets' variance (which is d_model per token after normalisation)."""
    n = xn.shape[1]
    idx = torch.randperm(n, generator=generator)[:min(n, 4096)].to(xn.device)
    F, d = model.W_enc.shape[1:]
    density = min(0.25, INIT_L0 / F)
    k = max(1, min(len(idx), round((1.0 - density) * len(idx))))
    for l in range(model.n_layers):
        pre = torch.addmm(model.b_enc[l], xn[l, idx], model.W_enc[l].T)  # [n, F]
        thr = pre.kthvalue(k, dim=0).values
        model.log_threshold[l] = thr.clamp(min=1e-3).log()
        act = pre * (pre > model.log_threshold[l].exp())
        w = model.W_dec[l] if model.kind == "plt" else model.W_dec[l][:, 0]
        power = (act @ w).pow(2).sum(-1).mean()
        if float(power) > 0:
            w.mul_(torch.sqrt(0.1 * d / power))


@torch.no_grad()
def _resample(run: _Run, dead: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor,
              y_hat: torch.Tensor) -> list[int]:
    """Re-initialise dead features [L, F] (bool) from badly reconstructed training inputs; returns
    how many per layer."""
    m, opt = run.model, run.opt
    counts = [0] * m.n_layers
    for l in range(m.n_layers):
        idx = dead[l].nonzero().flatten()
        if idx.numel() == 0:
            continue
        err = yn[l] - y_hat[l]
        weight = err.pow(2).sum(-1)
        if float(weight.sum()) <= 0:
            continue
        pick = torch.multinomial(weight.cpu(), idx.numel(), replacement=True, generator=run.generator)
        pick = pick.to(xn.device)
        u, e = xn[l, pick], err[pick]
        alive = ~dead[l]
        enc_norm = m.W_enc[l, alive].norm(dim=-1).mean() if alive.any() else torch.tensor(1.0)
        u_dir = u / u.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        m.W_enc[l, idx] = u_dir * enc_norm
        m.b_enc[l, idx] = 0.0
        pre_at = (u * m.W_enc[l, idx]).sum(-1)
        m.log_threshold[l, idx] = (0.5 * pre_at).clamp(min=1e-3).log()
        e_dir = e / e.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        # the new feature fixes about half the error of the input it was drawn from
        scale = (0.5 * e.norm(dim=-1) / pre_at.clamp(min=1e-3))[:, None]
        if m.kind == "plt":
            m.W_dec[l, idx] = e_dir * scale
        else:
            m.W_dec[l][idx] = 0.0
            m.W_dec[l][idx, 0] = e_dir * scale
        params = [(m.W_enc, (l, idx)), (m.b_enc, (l, idx)), (m.log_threshold, (l, idx))]
        params.append((m.W_dec, (l, idx)) if m.kind == "plt" else (m.W_dec[l], (idx,)))
        for p, where in params:
            state = opt.state.get(p)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    state[key][where] = 0.0
        counts[l] = idx.numel()
    return counts


def _train_group(run: _Run, *, steps: int, batch_tokens: int, lr: float, l0_coefficient: float,
                 bandwidth: float, resample_every: int, phase: str, progress: ProgressFn | None,
                 cancel: CancelToken | None) -> tuple[torch.Tensor, list[list[tuple[int, float, float]]], list[int]]:
    """Run the optimisation; returns features fired in the last quarter [L, F], the curves and the
    number of resampled features per layer."""
    m, opt = run.model, run.opt
    L, F = m.W_enc.shape[:2]
    n = run.reads.shape[1]
    d = run.reads.shape[-1]
    warm = max(1, steps // 50)
    decay_from = int(0.8 * steps)
    l0_warm = max(1, steps // 10)
    log_every = max(1, steps // 40)
    last_quarter = int(0.75 * steps)
    fired_recent = torch.zeros(L, F, dtype=torch.bool, device=run.reads.device)
    fired_late = torch.zeros_like(fired_recent)
    curves: list[list[tuple[int, float, float]]] = [[] for _ in range(L)]
    resampled = [0] * L
    perm, pos = torch.randperm(n, generator=run.generator).to(run.reads.device), 0
    for step in range(steps):
        check(cancel)
        if step % max(1, steps // 100) == 0:
            report(progress, phase, step, steps)
        if pos + batch_tokens > n:
            perm, pos = torch.randperm(n, generator=run.generator).to(run.reads.device), 0
        idx = perm[pos:pos + batch_tokens]
        pos += batch_tokens
        xn, yn = run.reads[:, idx], run.writes[:, idx]  # normalised when buffered
        frac = lr * min(1.0, (step + 1) / warm)
        if step >= decay_from:
            frac *= max(0.05, (steps - step) / max(1, steps - decay_from))
        for group in opt.param_groups:
            group["lr"] = frac * group["lr_scale"]
        lam = l0_coefficient * min(1.0, (step + 1) / l0_warm)
        y_hat, l0, fired = m(xn, bandwidth)
        mse = (y_hat - yn).pow(2).sum(-1).mean(-1) / d  # [L]; the FVU when targets are not whitened
        loss = mse.mean() + lam * l0.mean(-1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            fired_recent |= fired
            if step >= last_quarter:
                fired_late |= fired
            if step % log_every == 0 or step == steps - 1:
                # FVU of the raw write tensor (the loss may weight directions differently)
                err = torch.bmm(y_hat.detach() - yn, m.y_unproj).pow(2).sum((1, 2))
                var = torch.bmm(yn - yn.mean(1, keepdim=True), m.y_unproj).pow(2).sum((1, 2))
                fvu = (err / var.clamp(min=1e-30)).tolist()
                l0s = l0.mean(-1).tolist()
                for l in range(L):
                    curves[l].append((step, fvu[l], l0s[l]))
            if resample_every and (step + 1) % resample_every == 0 and step < 0.7 * steps:
                resampled = [a + b for a, b in zip(resampled, _resample(run, ~fired_recent, xn, yn, y_hat.detach()))]
                fired_recent.zero_()
    report(progress, phase, steps, steps)
    return fired_late, curves, resampled


@contextmanager
def _threads_for(elements: int) -> Iterator[None]:
    """One intra-op thread while running steps on tensors of fewer than _SMALL_STEP elements."""
    before = torch.get_num_threads()
    small = elements < _SMALL_STEP and before > 1
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Entry point


def train_transcoders(bundle: ModelBundle, windows: torch.Tensor, *, width: int, kind: str = "plt",
                      feature_input_hook: str | None = None, feature_output_hook: str | None = None,
                      steps: int = 4000, batch_tokens: int = 1024, lr: float = 3e-3,
                      l0_coefficient: float = 3e-4, bandwidth: float = 0.05, target_whitening: float = 0.5,
                      skip: bool = False,
                      buffer_tokens: int = 1 << 17, max_buffer_bytes: int = 1 << 30,
                      heldout_fraction: float = 0.05, heldout_tokens: int = 16384,
                      resample_every: int | None = None, measure_loss: bool = True,
                      init: TranscoderSet | None = None, seed: int = 0,
                      progress: ProgressFn | None = None,
                      cancel: CancelToken | None = None) -> tuple[TranscoderSet, TrainingReport]:
    """Train a JumpReLU transcoder set (`kind` "plt" or "clt", `width` features per layer) for
    `bundle` on token `windows` [N, T] (BOS first; see `corpus_text.token_windows`).

    Returns the set (float32, on the model's device, ready for `save_transcoders`) and a report
    measured on held-out windows. See the module docstring for the method. Raises TrainingError
    for bad settings or data that does not fit the model, Cancelled when `cancel` is set."""
    t0 = time.perf_counter()
    arch = bundle.arch
    default_in, default_out = default_hooks_for(arch.family)
    hooks = (feature_input_hook or default_in, feature_output_hook or default_out)
    numbers = {"steps": (steps, steps >= 0), "batch_tokens": (batch_tokens, batch_tokens >= 1),
               "buffer_tokens": (buffer_tokens, buffer_tokens >= 1),
               "heldout_tokens": (heldout_tokens, heldout_tokens >= 1),
               "heldout_fraction": (heldout_fraction, 0 <= heldout_fraction < 1), "lr": (lr, lr > 0),
               "l0_coefficient": (l0_coefficient, l0_coefficient >= 0), "bandwidth": (bandwidth, bandwidth > 0),
               "target_whitening": (target_whitening, 0 <= target_whitening <= 1)}
    _check_settings(bundle, windows, width, kind, hooks, numbers, skip, init)
    L, d, F = arch.n_layers, arch.d_model, width
    device = bundle.device
    g = torch.Generator().manual_seed(seed)
    windows = windows.long().cpu()

    # held-out windows (for the report) and training windows
    order = torch.randperm(windows.shape[0], generator=g)
    n_held = 0 if windows.shape[0] < 2 else max(1, min(int(heldout_fraction * windows.shape[0]),
                                                       math.ceil(heldout_tokens / windows.shape[1])))
    held = windows[order[:n_held]] if n_held else windows
    train = windows[order[n_held:]]

    # buffer size and layer groups
    per_token_layer = d * 8  # read + write, float32
    if kind == "clt":
        groups = [list(range(L))]
        n_buf = min(buffer_tokens, max(batch_tokens, max_buffer_bytes // (L * per_token_layer)))
    else:
        n_buf = min(buffer_tokens, max(batch_tokens, max_buffer_bytes // per_token_layer))
        per_group = max(1, max_buffer_bytes // (n_buf * per_token_layer))
        groups = [list(range(i, min(L, i + per_group))) for i in range(0, L, per_group)]
    resample_every = resample_every if resample_every is not None else max(50, steps // 10)
    forward_size = CHUNK_TOKENS * d if device.type == "cpu" else _SMALL_STEP  # for the thread heuristic

    folded: list[TranscoderSet] = []  # one per trained unit: a layer (PLT) or the whole set (CLT)
    curves: list[list[tuple[int, float, float]]] = []
    resampled: list[int] = []
    fired_late_all: list[torch.Tensor] = []
    buffered = 0
    for layers in groups:
        with _threads_for(forward_size):
            reads, writes = collect_reads_writes(bundle, train, layers, hooks, n_buf, "Collecting activations", progress,
                                     cancel, device)
        buffered = reads.shape[1]
        if reads.shape[-1] != d:
            raise TrainingError(f"The read tensors have size {reads.shape[-1]}, not d_model {d}.",
                                "This model's hook points are not supported for training.")
        # per-layer transcoders train one layer at a time (smaller tensors are much faster on CPU)
        units = [layers] if kind == "clt" else [[l] for l in layers]
        for unit in units:
            j0 = layers.index(unit[0])
            x, y = reads[j0:j0 + len(unit)], writes[j0:j0 + len(unit)]
            mu_x, sigma_x = _input_stats(x)
            mu_y, y_proj, y_unproj = _target_transform(y, target_whitening)
            model = JumpReLUTranscoder(kind, len(unit), F, d, mu_x=mu_x, sigma_x=sigma_x, mu_y=mu_y,
                                       y_proj=y_proj, y_unproj=y_unproj, skip=skip, generator=g)
            model.normalise_(x, y)
            if init is not None:
                model.load_folded(init, unit)
            else:
                _init_from_data(model, x, g)
            opt = _optimizer(model, lr)
            name = f"Training layer {unit[0]}" if len(unit) == 1 else f"Training layers {unit[0]}-{unit[-1]}"
            batch = min(batch_tokens, buffered)
            with _threads_for(batch * F * len(unit) if device.type == "cpu" else _SMALL_STEP):
                fired_late, unit_curves, unit_resampled = _train_group(
                    _Run(model, opt, x, y, g), steps=steps, batch_tokens=batch, lr=lr,
                    l0_coefficient=l0_coefficient, bandwidth=bandwidth, resample_every=resample_every,
                    phase=name, progress=progress, cancel=cancel)
            folded.append(model.folded(*hooks))
            curves.extend(unit_curves)
            resampled.extend(unit_resampled)
            fired_late_all.append(fired_late)
            del model, opt
        del reads, writes

    tc = TranscoderSet(kind, hooks[0], hooks[1], tuple(w for f in folded for w in f.w_enc),
                       torch.cat([f.b_enc for f in folded]), torch.cat([f.threshold for f in folded]),
                       tuple(w for f in folded for w in f.w_dec), torch.cat([f.b_dec for f in folded]),
                       tuple(w for f in folded for w in f.w_skip) if skip else None, f"circuit-studio-{kind}-{F}")
    check_transcoders_fit(tc, n_layers=L, d_model=d, model_name=bundle.name)
    with _threads_for(forward_size):
        layer_reports, fired_held = _evaluate(bundle, tc, held, measure_loss=measure_loss,
                                              max_tokens=heldout_tokens, progress=progress, cancel=cancel)
    fired_late = torch.cat(fired_late_all).to(fired_held.device)
    reports = []
    for r in layer_reports:  # dead = fired neither in the last quarter of training nor on held-out tokens
        dead = int((~(fired_late[r.layer] | fired_held[r.layer])).sum())
        reports.append(LayerReport(r.layer, r.fvu, r.l0, dead / F, dead, r.loss_recovered, r.loss_clean,
                                   r.loss_zero_ablated, r.loss_substituted, tuple(curves[r.layer]),
                                   resampled[r.layer]))
    settings = dict(lr=lr, l0_coefficient=l0_coefficient, bandwidth=bandwidth, target_whitening=target_whitening,
                    skip=skip, resample_every=resample_every, seed=seed, init_l0=INIT_L0, windows=windows.shape[0],
                    context=windows.shape[1])
    rep = TrainingReport(bundle.name, kind, F, hooks[0], hooks[1], steps, batch_tokens, buffered,
                         min(heldout_tokens, held.shape[0] * (held.shape[1] - bundle.n_zeroed_positions)),
                         time.perf_counter() - t0, tuple(reports), settings)
    return tc, rep

