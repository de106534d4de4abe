"""Build the bundled demo from scratch: corpus -> tokenizer + model -> evaluation -> transcoders ->
feature index, into one folder (`resources/demo/` in the repo).

    python -m circuit_studio.demo.build --out resources/demo               # full build (~85 min on 2 cores)
    python -m circuit_studio.demo.build --out /tmp/demo_smoke --smoke      # toy-size run of every step (~30 s)
    python -m circuit_studio.demo.build --out resources/demo --only corpus,model --minutes 50

Steps (`--only` takes a comma-separated subset, in this order):

    corpus       regenerate the seeded corpus; write `corpus.txt` when it is small, else a sample
                 `corpus_sample.txt` (the full corpus is regenerated deterministically by later steps)
    model        byte-level BPE tokenizer + LlamaForCausalLM -> `model/` (HF folder)
    evaluate     held-out accuracy per behaviour -> `evaluation.json`, `evaluation.md`, `prompts.json`
    transcoders  per-layer JumpReLU transcoders (`core.transcoders.training`) -> `transcoders/`
    index        feature index of those transcoders (`core.features.index_build`) -> `features.sqlite`
    clt          a cross-layer JumpReLU transcoder on the same data -> `clt/`
    clt_index    feature index of the cross-layer transcoder -> `clt_features.sqlite`

Every step reads what the earlier ones wrote in `--out`, so a later step can be re-run alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..core.progress import CancelToken, Progress, ProgressFn
from .corpus import Mix, curated_prompts, generate_corpus, heldout_prompts, natural_source, plain_training_sentences
from .model_training import ModelSpec, TrainSpec

STEPS = ("corpus", "model", "evaluate", "transcoders", "index", "clt", "clt_index")
MODEL_DIR, TRANSCODER_DIR, INDEX_FILE = "model", "transcoders", "features.sqlite"
CLT_DIR, CLT_INDEX_FILE = "clt", "clt_features.sqlite"
_OUTPUTS = {"plt": (TRANSCODER_DIR, INDEX_FILE), "clt": (CLT_DIR, CLT_INDEX_FILE)}  # kind -> (folder, index)
SMALL_CORPUS_BYTES = 5_000_000
SAMPLE_BYTES = 2_500_000



@dataclass(frozen=True)
class BuildConfig:
    """Everything a build does, in numbers. `FULL` is the shipped demo, `SMOKE` the CI run."""

    n_lines: int
    seed: int
    vocab_size: int
    model: ModelSpec
    train: TrainSpec
    mix: Mix = Mix()
    transcoder_width: int = 1024
    transcoder_steps: int = 4000
    transcoder_batch_tokens: int = 1024
    transcoder_l0_coefficient: float = 3e-4
    transcoder_lines: int = 60000  # corpus lines cut into windows for transcoder training
    index_lines: int = 20000  # corpus lines cut into windows for the feature index
    extra: dict = field(default_factory=dict)


FULL = BuildConfig(
    n_lines=600_000, seed=0, vocab_size=2048,
    model=ModelSpec(n_layers=4, d_model=128, n_heads=4, d_mlp=512, context=128),
    train=TrainSpec(steps=100_000, batch_size=32, lr=3e-3, min_lr=3e-4, warmup=100, max_minutes=50.0,
                    threads=1, checkpoint_every=250),
)
SMOKE = BuildConfig(
    n_lines=20_000, seed=0, vocab_size=512,
    model=ModelSpec(n_layers=2, d_model=64, n_heads=4, d_mlp=256, context=64),
    train=TrainSpec(steps=200, batch_size=16, lr=3e-3, min_lr=3e-4, warmup=20, checkpoint_every=0, threads=1),
    transcoder_width=256, transcoder_steps=200, transcoder_batch_tokens=512, transcoder_lines=1500,
    index_lines=300,
)


def _log(msg: str) -> None:
    print(msg, flush=True)


def printing_progress(every_s: float = 15.0) -> ProgressFn:
    """A progress callback that prints a line per phase change and at most every `every_s` seconds."""
    state = {"phase": None, "t": 0.0}

    def fn(p: Progress) -> None:
        now = time.monotonic()
        if p.phase != state["phase"] or now - state["t"] >= every_s or (p.total and p.done >= p.total):
            state["phase"], state["t"] = p.phase, now
            _log(f"  [{p.phase}] {p.done}/{p.total} {p.message}")

    return fn


# --------------------------------------------------------------------------------------------
# Steps


def corpus_lines(cfg: BuildConfig) -> list[str]:
    return generate_corpus(cfg.n_lines, cfg.seed, cfg.mix)


def step_corpus(out: Path, cfg: BuildConfig, lines: list[str] | None = None) -> Path:
    """Write the corpus (or a sample of it) that the app and the index can read as text."""
    lines = lines if lines is not None else corpus_lines(cfg)
    text = "\n".join(lines) + "\n"
    data = text.encode("utf-8")
    for stale in ("corpus.txt", "corpus_sample.txt"):
        (out / stale).unlink(missing_ok=True)
    if len(data) <= SMALL_CORPUS_BYTES:
        path = out / "corpus.txt"
        path.write_bytes(data)
    else:
        cut = data.rfind(b"\n", 0, SAMPLE_BYTES) + 1
        path = out / "corpus_sample.txt"
        path.write_bytes(data[:cut])
    _log(f"corpus: {len(lines)} lines ({len(data) / 1e6:.1f} MB), natural text: {natural_source()}; "
         f"wrote {path.name} ({path.stat().st_size / 1e6:.2f} MB)")
    return path


def step_model(out: Path, cfg: BuildConfig, lines: list[str] | None = None, *,
               checkpoint_dir: Path | None = None, resume: bool = False,
               progress: ProgressFn | None = None, cancel: CancelToken | None = None):
    """Train the tokenizer and the model into `out/model/`."""
    from .model_training import train_model, train_tokenizer

    lines = lines if lines is not None else corpus_lines(cfg)
    t0 = time.perf_counter()
    tok = train_tokenizer(lines, vocab_size=cfg.vocab_size)
    _log(f"tokenizer: {len(tok)} ids in {time.perf_counter() - t0:.0f} s")
    res = train_model(lines, out / MODEL_DIR, tokenizer=tok, model_spec=cfg.model, train_spec=cfg.train,
                      checkpoint_dir=checkpoint_dir, resume=resume, progress=progress, cancel=cancel)
    _log(f"model: {res.n_parameters} parameters, {res.steps} steps, {res.tokens_seen} tokens, "
         f"loss {res.first_loss:.3f} -> {res.final_loss:.3f}, {res.wall_s / 60:.1f} min")
    return res


def _pick_curated(curated, heldout) -> list[dict]:
    """One prompt per behaviour for the app: the curated prompt when the model gets it right, else
    the first held-out prompt of that behaviour it gets right, else the curated one (marked wrong)."""
    trained = plain_training_sentences()
    out = []
    for c in curated:
        alt = [r for r in heldout if r.item.behaviour == c.item.behaviour and r.correct]
        pick = c if c.correct or not alt else alt[0]
        out.append({"behaviour": pick.item.behaviour, "prompt": pick.item.prompt, "answer": pick.item.answer,
                    "model_answer": pick.predicted, "model_correct": bool(pick.correct),
                    "in_training_text": pick.item.prompt + pick.item.answer in trained})
    return out


def step_evaluate(out: Path, cfg: BuildConfig, *, progress: ProgressFn | None = None,
                  cancel: CancelToken | None = None) -> list:
    """Held-out accuracy -> evaluation.json / evaluation.md; curated prompts -> prompts.json."""
    from ..core.model.loading import load_model
    from .evaluate import evaluate_prompts, markdown_table, score

    bundle = load_model(out / MODEL_DIR, device="cpu", progress=progress, cancel=cancel)
    results = evaluate_prompts(bundle.model, bundle.tokenizer, heldout_prompts(), progress=progress, cancel=cancel)
    scores = score(results)
    table = markdown_table(scores)
    _log(table)
    (out / "evaluation.md").write_text(table + "\n", encoding="utf-8")
    (out / "evaluation.json").write_text(json.dumps({
        "scores": [{"behaviour": s.behaviour, "n": s.n, "correct": s.n_correct, "accuracy": s.accuracy}
                   for s in scores],
        "wrong_examples": [{"behaviour": r.item.behaviour, "prompt": r.item.prompt, "answer": r.item.answer,
                            "model_answer": r.predicted} for r in results if not r.correct][:200],
    }, indent=2) + "\n", encoding="utf-8")
    curated = evaluate_prompts(bundle.model, bundle.tokenizer, curated_prompts())
    (out / "prompts.json").write_text(json.dumps({"model": MODEL_DIR, "prompts": _pick_curated(curated, results)},
                                                 indent=2) + "\n", encoding="utf-8")
    return scores


def _windows(out: Path, cfg: BuildConfig, lines: list[str], n_lines: int):
    from ..core.features.corpus_text import token_windows
    from ..core.model.loading import load_model

    bundle = load_model(out / MODEL_DIR, device="cpu")
    return bundle, token_windows(bundle.tokenizer, lines[:n_lines], context=cfg.model.context)


def step_transcoders(out: Path, cfg: BuildConfig, lines: list[str] | None = None, *, kind: str = "plt",
                     progress: ProgressFn | None = None, cancel: CancelToken | None = None):
    """Per-layer (`kind` "plt") or cross-layer ("clt") transcoders for the model -> `out/transcoders/`
    or `out/clt/`, with `training_report.md`."""
    from ..core.transcoders.training import train_transcoders
    from ..core.transcoders.writing import save_transcoders

    lines = lines if lines is not None else corpus_lines(cfg)
    bundle, windows = _windows(out, cfg, lines, cfg.transcoder_lines)
    _log(f"transcoders: {windows.shape[0]} windows of {windows.shape[1]} tokens")
    tc, rep = train_transcoders(bundle, windows, width=cfg.transcoder_width, kind=kind,
                                steps=cfg.transcoder_steps, batch_tokens=cfg.transcoder_batch_tokens,
                                l0_coefficient=cfg.transcoder_l0_coefficient, seed=cfg.seed,
                                progress=progress, cancel=cancel)
    folder = save_transcoders(tc, out / _OUTPUTS[kind][0])
    (Path(folder) / "training_report.md").write_text(rep.to_markdown(), encoding="utf-8")
    for line in rep.summary_lines():
        _log("  " + line)
    return tc, rep


def step_index(out: Path, cfg: BuildConfig, lines: list[str] | None = None, *, kind: str = "plt",
               progress: ProgressFn | None = None, cancel: CancelToken | None = None):
    """Feature index of the per-layer or cross-layer transcoders -> `out/features.sqlite` or
    `out/clt_features.sqlite`."""
    from ..core.features.index_build import build_feature_index
    from ..core.transcoders.loading import load_transcoders

    lines = lines if lines is not None else corpus_lines(cfg)
    bundle, windows = _windows(out, cfg, lines, cfg.index_lines)
    folder, index_file = _OUTPUTS[kind]
    tc = load_transcoders(out / folder, device="cpu")
    path = out / index_file
    path.unlink(missing_ok=True)
    _log(f"index: {windows.shape[0]} windows of {windows.shape[1]} tokens")
    idx = build_feature_index(bundle, tc, windows, path, corpus_name="demo corpus (circuit_studio.demo.corpus)",
                              seed=cfg.seed, progress=progress, cancel=cancel)
    close = getattr(idx, "close", None)
    if close:
        close()
    return path


# --------------------------------------------------------------------------------------------
# Command line


def build(out: str | Path, cfg: BuildConfig, steps: Sequence[str] = STEPS, *,
          checkpoint_dir: Path | None = None, resume: bool = False,
          progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    lines: list[str] | None = None
    for step in STEPS:
        if step not in steps:
            continue
        t0 = time.perf_counter()
        _log(f"== {step}")
        if step in ("corpus", "model", "transcoders", "index", "clt", "clt_index") and lines is None:
            lines = corpus_lines(cfg)
        if step == "corpus":
            step_corpus(out, cfg, lines)
        elif step == "model":
            step_model(out, cfg, lines, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress,
                       cancel=cancel)
        elif step == "evaluate":
            step_evaluate(out, cfg, progress=progress, cancel=cancel)
        elif step in ("transcoders", "clt"):
            step_transcoders(out, cfg, lines, kind="clt" if step == "clt" else "plt", progress=progress,
                             cancel=cancel)
        elif step in ("index", "clt_index"):
            step_index(out, cfg, lines, kind="clt" if step == "clt_index" else "plt", progress=progress,
                       cancel=cancel)
        timings[step] = time.perf_counter() - t0
        _log(f"== {step} done in {timings[step]:.0f} s")
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m circuit_studio.demo.build",
                                 description="Regenerate the bundled demo (corpus, model, transcoders, index).")
    ap.add_argument("--out", required=True, help="output folder (resources/demo for the shipped demo)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and a few hundred steps: a quick check of the whole pipeline")
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps of {','.join(STEPS)}")
    ap.add_argument("--steps", type=int, help="model training steps (a cap when --minutes is given)")
    ap.add_argument("--minutes", type=float, help="model training wall-time budget; 0 = no budget")
    ap.add_argument("--threads", type=int, help="torch CPU threads for training")
    ap.add_argument("--lines", type=int, help="corpus lines")
    ap.add_argument("--seed", type=int, help="corpus and training seed")
    ap.add_argument("--checkpoint-dir", type=Path, help="write resumable model checkpoints here")
    ap.add_argument("--resume", action="store_true", help="continue model training from --checkpoint-dir")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    steps = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        ap.error(f"unknown step(s) {', '.join(bad)}; choose from {', '.join(STEPS)}")
    cfg = SMOKE if args.smoke else FULL
    train = cfg.train
    if args.steps is not None:
        train = dataclasses.replace(train, steps=args.steps)
    if args.minutes is not None:
        train = dataclasses.replace(train, max_minutes=args.minutes or None)
    if args.threads is not None:
        train = dataclasses.replace(train, threads=args.threads)
    if args.seed is not None:
        train = dataclasses.replace(train, seed=args.seed)
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if args.lines is not None:
        cfg = dataclasses.replace(cfg, n_lines=args.lines)
    cfg = dataclasses.replace(cfg, train=train)
    if cfg.train.threads:
        import torch
        torch.set_num_threads(cfg.train.threads)
    _log(f"building {'smoke ' if args.smoke else ''}demo into {args.out}: steps {', '.join(steps)}")
    _log(f"config: {cfg}")
    t0 = time.perf_counter()
    try:
        timings = build(args.out, cfg, steps, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                        progress=printing_progress())
    except Exception as e:  # a clear one-line message for the command line
        from ..core.errors import CircuitStudioError
        if isinstance(e, CircuitStudioError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    _log(f"built in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
