"""Train the demo's byte-level BPE tokenizer and its small Llama-shaped model, on CPU.

Tokenizer: byte-level BPE trained with the `tokenizers` library; digits are split one by one
before BPE (so "123" is always "1" "2" "3"); special tokens `<pad>`=0, `<bos>`=1, `<eos>`=2. BOS is
deliberately not id 0 (circuit-tracer and `core.model.loading.tokenize_prompt` skip a BOS of 0).
Encoding with `add_special_tokens=False` gives just the text's tokens; the default adds `<bos>`.

Model: `LlamaForCausalLM` (RMSNorm, rotary positions, SwiGLU MLP), tied embeddings, no dropout,
float32. Training is a plain PyTorch loop: AdamW (weight decay on matrices only), linear warm-up
then cosine decay to `min_lr`, gradient clipping, random windows that start at line starts, each
window beginning with `<bos>` and lines following each other without a separator (as in
`core.features.corpus_text.token_windows`). Progress goes to a `progress(Progress)` callback and a `CancelToken`
is checked every step. The result is a normal HF folder (`save_pretrained` for model and
tokenizer) that loads with `AutoModelForCausalLM` / `AutoTokenizer` and with `load_model`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.progress import CancelToken, ProgressFn, check, report
from .corpus import CorpusError, read_corpus

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


# --------------------------------------------------------------------------------------------
# Tokenizer


def _lines_of(corpus: str | Path | Sequence[str]) -> list[str]:
    if isinstance(corpus, (str, Path)):
        return read_corpus(corpus)
    lines = [ln.strip() for ln in corpus]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise CorpusError("The corpus is empty (no non-blank line).", "Generate the corpus first.")
    return lines


def train_tokenizer(corpus: str | Path | Sequence[str], out_dir: str | Path | None = None, *,
                    vocab_size: int = 2048, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer (digits split) on a corpus file or list of lines.

    Returns a `transformers` fast tokenizer; also saves it to `out_dir` when given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    lines = _lines_of(corpus)
    if vocab_size < 300:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level BPE (needs > 259).")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID]
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", BOS_ID)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", clean_up_tokenization_spaces=False,
                                   model_max_length=1_000_000)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_tokenizer(fast, out_dir)
    return fast


PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # loaded by transformers 4.x and 5


def save_tokenizer(tokenizer, out_dir: str | Path) -> None:
    """`tokenizer.save_pretrained(out_dir)`, with `tokenizer_config.json` naming
    `PreTrainedTokenizerFast` (transformers 5 writes its own `TokenizersBackend`, which 4.x cannot load)
    and without 5's `backend` key; 5 loads the folder to the same tokenizer either way."""
    tokenizer.save_pretrained(out_dir)
    path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("backend", "is_local", "local_files_only"):  # 5's backend name; flags of how it was loaded
        config.pop(key, None)
    config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def _raw_tokenizer(tokenizer):
    """The Rust `tokenizers.Tokenizer` behind a transformers fast tokenizer (for fast batch encoding)."""
    return getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer")


@dataclass(frozen=True, eq=False)
class TokenStream:
    """The corpus as one id array, lines directly one after the other (no separator token, as
    `core.features.corpus_text.token_windows` packs them for transcoders and the feature index; every
    corpus line ends with punctuation); `line_starts` index it."""

    ids: np.ndarray
    line_starts: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.ids.size)


def encode_corpus(tokenizer, lines: Sequence[str]) -> TokenStream:
    raw = _raw_tokenizer(tokenizer)
    chunks, starts, pos = [], [], 0
    batch = 20000
    for i in range(0, len(lines), batch):
        for enc in raw.encode_batch(list(lines[i:i + batch]), add_special_tokens=False):
            seq = enc.ids
            starts.append(pos)
            chunks.append(np.asarray(seq, dtype=np.int32))
            pos += len(seq)
    return TokenStream(np.concatenate(chunks), np.asarray(starts, dtype=np.int64))


# --------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class ModelSpec:
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    context: int = 128


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    max_minutes: float | None = None  # wall-time budget: the schedule runs on time, `steps` is a cap
    threads: int | None = None  # torch CPU threads (1 is fastest on a busy 2-core machine)


@dataclass(frozen=True)
class TrainResult:
    folder: Path
    steps: int
    tokens_seen: int
    first_loss: float
    final_loss: float
    wall_s: float
    n_parameters: int
    losses: tuple[tuple[int, float], ...] = field(repr=False, default=())


def build_config(tokenizer, spec: ModelSpec = ModelSpec()):
    from transformers import LlamaConfig

    if spec.d_model % spec.n_heads:
        raise ValueError(f"d_model {spec.d_model} is not divisible by n_heads {spec.n_heads}.")
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.d_model, intermediate_size=spec.d_mlp,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_heads, head_dim=spec.d_model // spec.n_heads,
        max_position_embeddings=spec.context, rms_norm_eps=1e-5, tie_word_embeddings=True,
        attention_dropout=0.0, attention_bias=False, mlp_bias=False, hidden_act="silu",
        initializer_range=0.02, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        use_cache=False, architectures=["LlamaForCausalLM"],
    )


def lr_at(step: int, spec: TrainSpec, fraction: float | None = None) -> float:
    """Linear warm-up to `lr` over `warmup` steps, then cosine decay to `min_lr` at the end.

    `fraction` (0..1) is how far training is; by default `step / steps`. With a time budget it is
    the larger of that and the fraction of the budget used, so the schedule ends with the budget.
    """
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    if fraction is None:
        fraction = (step - spec.warmup) / max(1, spec.steps - spec.warmup - 1)
    t = min(1.0, max(0.0, fraction))
    return spec.min_lr + 0.5 * (spec.lr - spec.min_lr) * (1 + math.cos(math.pi * t))


def _fraction(step: int, elapsed: float, spec: TrainSpec) -> float:
    f = step / max(1, spec.steps)
    if spec.max_minutes:
        f = max(f, elapsed / (60.0 * spec.max_minutes))
    return f


def _optimizer(model: torch.nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=spec.lr, betas=spec.betas, eps=1e-8)


def _windows(stream: TokenStream, context: int) -> np.ndarray:
    """Line starts from which `context` tokens follow (the window is `<bos>` + those tokens)."""
    ok = stream.line_starts[stream.line_starts + context <= stream.n_tokens]
    if ok.size == 0:
        raise CorpusError(f"The corpus has only {stream.n_tokens} tokens, fewer than one window of {context}.",
                          "Generate a longer corpus.")
    return ok


def _batch(stream: TokenStream, starts: np.ndarray, rng: np.random.Generator, batch: int,
           context: int) -> torch.Tensor:
    s = starts[rng.integers(0, starts.size, size=batch)]
    body = stream.ids[s[:, None] + np.arange(context)[None, :]]
    bos = np.full((batch, 1), BOS_ID, dtype=np.int32)
    return torch.from_numpy(np.concatenate([bos, body], axis=1).astype(np.int64))  # [B, context + 1]


def _save_checkpoint(ckpt: Path, model, tokenizer, opt, step: int, rng: np.random.Generator,
                     losses: list, tokens_seen: int, elapsed: float) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    save_tokenizer(tokenizer, tmp)
    torch.save({"step": step, "optimizer": opt.state_dict(), "rng": rng.bit_generator.state,
                "losses": losses, "tokens_seen": tokens_seen, "elapsed": elapsed,
                "torch_rng": torch.get_rng_state()}, tmp / "trainer_state.pt")
    if ckpt.exists():
        shutil.rmtree(ckpt)
    os.replace(tmp, ckpt)


def train_model(corpus: str | Path | Sequence[str], out_dir: str | Path, *, tokenizer=None,
                model_spec: ModelSpec = ModelSpec(), train_spec: TrainSpec = TrainSpec(),
                checkpoint_dir: str | Path | None = None, resume: bool = False,
                progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> TrainResult:
    """Train a LlamaForCausalLM on the corpus (file path or lines) and save it with its tokenizer.

    `tokenizer`: a transformers tokenizer, a folder holding one, or None to train one (2048 ids).
    `checkpoint_dir`: where a resumable checkpoint is written every `checkpoint_every` steps;
    with `resume=True` training continues from it when it exists.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    out_dir = Path(out_dir)
    lines = _lines_of(corpus)
    if tokenizer is None:
        report(progress, "Training tokenizer", 0, 1)
        tokenizer = train_tokenizer(lines)
    elif isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    check(cancel)
    report(progress, "Encoding corpus", 0, 1, f"{len(lines)} lines")
    stream = encode_corpus(tokenizer, lines)
    ts, ms = train_spec, model_spec
    starts = _windows(stream, ms.context)
    check(cancel)

    torch.manual_seed(ts.seed)
    config = build_config(tokenizer, ms)
    model = LlamaForCausalLM(config)
    opt = _optimizer(model, ts)
    rng = np.random.default_rng(ts.seed)
    step, losses, tokens_seen, elapsed0 = 0, [], 0, 0.0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and ckpt is not None and (ckpt / "trainer_state.pt").is_file():
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        model = LlamaForCausalLM.from_pretrained(ckpt, local_files_only=True)
        opt = _optimizer(model, ts)
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step, losses = int(state["step"]), list(state["losses"])
        tokens_seen, elapsed0 = int(state["tokens_seen"]), float(state["elapsed"])
        report(progress, "Training model", step, ts.steps, f"resumed at step {step}")
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    ema = None
    if ts.threads:
        torch.set_num_threads(ts.threads)
    while step < ts.steps:
        check(cancel)
        frac = _fraction(step, elapsed0 + time.perf_counter() - t0, ts)
        if frac >= 1.0:
            break
        lr = lr_at(step, ts, frac if ts.max_minutes else None)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = _batch(stream, starts, rng, ts.batch_size, ms.context)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                 batch[:, 1:].reshape(-1))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Training loss became {loss.item()} at step {step}; lower the learning rate.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), ts.grad_clip)
        opt.step()
        step += 1
        tokens_seen += ts.batch_size * ms.context
        lv = float(loss.item())
        losses.append((step, lv))
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        el = elapsed0 + time.perf_counter() - t0
        total = max(step, min(ts.steps, round(step / max(frac, 1e-9)))) if ts.max_minutes else ts.steps
        report(progress, "Training model", step, total,
               f"loss {lv:.3f} (avg {ema:.3f}), lr {lr:.2e}, {tokens_seen / max(el, 1e-9):.0f} tok/s, "
               f"{el / 60:.1f} min")
        if ckpt is not None and ts.checkpoint_every and step % ts.checkpoint_every == 0 and step < ts.steps:
            _save_checkpoint(ckpt, model, tokenizer, opt, step, rng, losses, tokens_seen, el)
    wall = elapsed0 + time.perf_counter() - t0

    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    save_tokenizer(tokenizer, out_dir)
    tail = [l for _, l in losses[-50:]]
    result = TrainResult(out_dir, step, tokens_seen, losses[0][1] if losses else float("nan"),
                         float(np.mean(tail)) if tail else float("nan"), wall, n_params, tuple(losses))
    info = {k: v for k, v in asdict(result).items() if k != "losses"}
    info["folder"] = str(out_dir)
    info.update(model_spec=asdict(ms), train_spec=asdict(ts), corpus_lines=len(lines),
                corpus_tokens=stream.n_tokens)
    (out_dir / "training_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    report(progress, "Training model", step, ts.steps, f"done: loss {result.final_loss:.3f}")
    return result
