"""Seeded, offline builders of tiny random models and transcoders (tests, benchmarks, CI smoke runs).

Nothing here downloads anything: models are built from configs, tokenizers from a fixed word
list. Everything is float32 and deterministic for a given seed and torch version.

Tokenizer convention (spec §1.5): `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, then words. BOS is
deliberately not 0, because the BOS fallback skips falsy ids. The tokenizer adds no special
tokens by itself; callers tokenise with `add_special_tokens=False` and prepend BOS.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from .model.families import DEFAULT_HOOKS
from .transcoders.transcoder_set import TranscoderSet

FAMILIES = ("llama", "gemma2", "gemma3", "qwen2", "qwen3", "gpt2")
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
# Small English words, a few names and the digits as words: enough to write readable prompts.
WORDS = tuple((
    "the a an of to in on at and or is was are be fact that this capital city state country "
    "Dallas Texas Austin Paris France London England river big small red blue green one two "
    "three four five six seven eight nine ten plus equals opposite hot cold up down yes no "
    "cat dog rabbit habit pirate ship sea sky zero Alice Bob Mary John it he she they"
).split())
_GAIN_PLUS_ONE = ("gemma2", "gemma3")  # RMSNorm computes x * (1 + w): random w around 0


@dataclass(frozen=True)
class ModelDims:
    """Model sizes. `vocab=None`: just the built-in tokens (specials + WORDS, plus the BPE pieces
    for qwen2); otherwise padded with `w{i}` tokens up to `vocab`."""

    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2  # ignored for GPT-2 (plain multi-head attention)
    d_mlp: int = 128
    vocab: int | None = None
    max_positions: int = 128


# Llama-shaped benchmark model (matches the parity harness's medium benchmark).
MEDIUM_DIMS = ModelDims(n_layers=8, d_model=512, n_heads=8, n_kv_heads=8, d_mlp=2048, vocab=4096)


def vocab_tokens(vocab: int | None = None, toks: list[str] | None = None) -> list[str]:
    """Token strings in id order: specials, `toks` (default WORDS), then `w{i}` up to `vocab`."""
    toks = list(SPECIALS) + list(WORDS if toks is None else toks)
    if vocab is not None:
        if vocab < len(toks):
            raise ValueError(f"vocab={vocab} is smaller than the {len(toks)} built-in tokens")
        toks = toks + [f"w{i}" for i in range(vocab - len(toks))]
    return toks


def _word_bpe(words: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Byte-level BPE whose merges rebuild every word, alone ("the") or after a space ("Ġthe"),
    as one token. Learned greedily (most frequent pair, ties by name), so encoding a word with
    these merges replays the learned segmentation. Returns (word tokens then pieces, merges)."""
    forms = [f for w in words for f in (w, "\u0120" + w)]  # ByteLevel maps " " to "Ġ" (U+0120)
    seqs, merges = [list(f) for f in forms], []
    while counts := Counter(p for s in seqs for p in zip(s, s[1:])):
        a, b = min(counts, key=lambda p: (-counts[p], p))
        merges.append((a, b))
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if (s[i], s[i + 1]) == (a, b):
                    s[i:i + 2] = [a + b]
                i += 1
    pieces = dict.fromkeys([c for f in forms for c in f] + [a + b for a, b in merges])
    whole = set(forms)
    return forms + [t for t in pieces if t not in whole], merges


def build_tokenizer(vocab: int | None = None, *, family: str = "llama") -> tf.PreTrainedTokenizerFast:
    """Tokenizer with `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3; every word of WORDS is one token.

    Word-level, whitespace split, decoded by joining with spaces, for every family but Qwen-2:
    transformers 5 always loads a `qwen2` folder's tokenizer as `Qwen2Tokenizer`, which rebuilds a
    byte-level BPE from tokenizer.json's vocab + merges and ignores its pre-tokenizer. So qwen2
    gets a byte-level BPE (like real Qwen/GPT-2 tokenizers): "the cat" -> ["the", "Ġcat"].
    """
    if family == "qwen2":
        pieces, merges = _word_bpe(list(WORDS))
        toks = vocab_tokens(vocab, pieces)
        tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(toks)}, merges=merges))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        toks = vocab_tokens(vocab)
        tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(toks)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # WordPiece's decoder puts a space between tokens not starting with the prefix; the
        # prefix never occurs in our vocabulary, so decoding is simply " ".join(tokens).
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                      pad_token="<pad>", unk_token="<unk>",
                                      clean_up_tokenization_spaces=False)


def build_config(family: str, dims: ModelDims = ModelDims()) -> tf.PretrainedConfig:
    """The HF config of a tiny `family` model (float32, large init so logits are not ~uniform)."""
    V, d, H = len(build_tokenizer(dims.vocab, family=family)), dims.d_model, dims.n_heads
    ids = dict(pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=V, n_positions=dims.max_positions, n_embd=d,
                             n_layer=dims.n_layers, n_head=H, n_inner=dims.d_mlp,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                             initializer_range=0.2, tie_word_embeddings=True, dtype="float32", **ids)
    common = dict(vocab_size=V, hidden_size=d, intermediate_size=dims.d_mlp,
                  num_hidden_layers=dims.n_layers, num_attention_heads=H,
                  num_key_value_heads=dims.n_kv_heads, head_dim=d // H,
                  max_position_embeddings=dims.max_positions, rms_norm_eps=1e-5,
                  initializer_range=0.2, dtype="float32", **ids)
    if family == "llama":
        return tf.LlamaConfig(tie_word_embeddings=False, **common)
    if family == "qwen2":
        return tf.Qwen2Config(tie_word_embeddings=False, use_sliding_window=False, **common)
    if family == "qwen3":
        return tf.Qwen3Config(tie_word_embeddings=False, use_sliding_window=False, **common)
    # Gemma: alternating sliding (window 4, shorter than test prompts) / global layers, so that
    # sliding-window masking is actually exercised; query_pre_attn_scalar = head_dim.
    layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention"
                   for i in range(dims.n_layers)]
    gemma = dict(tie_word_embeddings=True, sliding_window=4, query_pre_attn_scalar=d // H,
                 hidden_activation="gelu_pytorch_tanh", layer_types=layer_types, **common)
    if family == "gemma2":
        return tf.Gemma2Config(attn_logit_softcapping=50.0, final_logit_softcapping=30.0, **gemma)
    if family == "gemma3":
        # Text-only Gemma-3 (model_type "gemma3_text"); q/k norms are part of the architecture.
        return tf.Gemma3TextConfig(**gemma)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


_MODEL_CLASSES = {"llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                  "gemma3": "Gemma3ForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "gpt2": "GPT2LMHeadModel"}


@torch.no_grad()
def build_model(family: str, *, dims: ModelDims = ModelDims(), seed: int = 0) -> tf.PreTrainedModel:
    """A random `family` model in eval mode, float32, with random norm gains (and LN biases).

    Random gains make frozen-norm handling observable: with gains of 1 a bug that drops the
    gain would go unnoticed. The global torch RNG is left untouched.
    """
    config = build_config(family, dims)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(tf, _MODEL_CLASSES[family])(config)
        g = torch.Generator().manual_seed(seed + 12345)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):  # GPT-2: ln_1, ln_2, ln_f
                module.weight.copy_(1.0 + 0.2 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
            elif type(module).__name__.endswith("RMSNorm"):  # incl. Qwen3/Gemma-3 q/k norms
                base = 0.0 if family in _GAIN_PLUS_ONE else 1.0
                module.weight.copy_(base + 0.2 * torch.randn(module.weight.shape, generator=g))
    return model.float().eval()


def build_model_folder(family: str, folder: str | Path, *, dims: ModelDims = ModelDims(),
                       seed: int = 0) -> Path:
    """Write a loadable HF folder (config, safetensors weights, tokenizer) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(family, dims=dims, seed=seed)
    model.save_pretrained(folder)
    build_tokenizer(dims.vocab, family=family).save_pretrained(folder)
    # The attention backend is the loader's choice, not a property of the checkpoint.
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if [cfg.pop(k) for k in ("_attn_implementation", "attn_implementation") if k in cfg]:
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return folder


def default_hooks(family: str) -> tuple[str, str]:
    """(feature_input_hook, feature_output_hook) that transcoders for `family` usually use."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return DEFAULT_HOOKS["gemma" if family.startswith("gemma") else "gpt2" if family == "gpt2" else "llama"]


def random_transcoders(*, n_layers: int, d_model: int, n_features: int, kind: str = "plt",
                       feature_input_hook: str, feature_output_hook: str, seed: int = 0,
                       jumprelu: bool = True, skip: bool = False) -> TranscoderSet:
    """Random transcoders: w_enc [L, F, d], b_enc/threshold [L, F], b_dec [L, d], w_skip [L, d, d],
    w_dec[l] [F, d] (PLT) or [F, L - l, d] (CLT). Scales give a few-percent-dense JumpReLU set."""
    if kind not in ("plt", "clt"):
        raise ValueError(f"kind must be 'plt' or 'clt', not {kind!r}")
    if skip and kind == "clt":
        raise ValueError("skip matrices are only supported for per-layer transcoders")
    L, F, d = n_layers, n_features, d_model
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    w_enc = randn(L, F, d) / d**0.5  # unit-variance pre-activations for unit-variance inputs
    b_enc = randn(L, F) * 0.1 - 0.5  # negative bias keeps most features off
    threshold = torch.rand(L, F, generator=g) * 0.3 if jumprelu else None
    w_dec = tuple(randn(F, d) * 0.1 if kind == "plt" else randn(F, L - l, d) * 0.1
                  for l in range(L))
    b_dec = randn(L, d) * 0.01
    w_skip = randn(L, d, d) * (0.3 / d**0.5) if skip else None
    return TranscoderSet(kind=kind, feature_input_hook=feature_input_hook,
                         feature_output_hook=feature_output_hook, w_enc=w_enc, b_enc=b_enc,
                         threshold=threshold, w_dec=w_dec, b_dec=b_dec, w_skip=w_skip,
                         scan=f"random-{kind}-seed{seed}")


@torch.no_grad()
def calibrate_thresholds(tc: TranscoderSet, read_inputs: list[torch.Tensor],
                         active_per_token: float) -> TranscoderSet:
    """Set b_enc = 0 and JumpReLU thresholds so that ~`active_per_token` features fire per token.

    `read_inputs[l]` is [N, d]: what layer l's transcoder reads on calibration tokens. Each
    feature's threshold is the (1 - K/F) quantile of its pre-activation over those N rows, so each
    feature fires on a K/F fraction of them, i.e. ~K of F per token. Returns a new set.
    """
    L, F = tc.n_layers, tc.n_features
    if len(read_inputs) != L:
        raise ValueError(f"need {L} read-input tensors, got {len(read_inputs)}")
    q = min(max(1.0 - active_per_token / F, 0.0), 1.0)
    thresholds = []
    for l in range(L):
        pre = read_inputs[l].to(tc.dtype) @ tc.w_enc[l].T  # [N, F], b_enc = 0
        # torch.quantile refuses inputs of more than 2**24 elements: go in feature chunks.
        step = max(1, (1 << 24) // max(1, pre.shape[0]))
        thr = torch.cat([torch.quantile(pre[:, i:i + step], q, dim=0) for i in range(0, F, step)])
        thresholds.append(thr.clamp(min=1e-3))
    return dataclasses.replace(tc, b_enc=torch.zeros_like(tc.b_enc),
                               threshold=torch.stack(thresholds))


@torch.no_grad()
def mlp_read_inputs(model: tf.PreTrainedModel, family: str,
                    input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, what `default_hooks(family)`'s input hook sees on `input_ids` [B, P]: [B*P, d].

    Llama/Qwen/GPT-2: the MLP input (after the pre-MLP norm and its gain). Gemma: the normalised
    input of `pre_feedforward_layernorm` *before* its (1 + w) gain (GemmaScope's read point).
    """
    caps: list[torch.Tensor] = []
    if family == "gpt2":
        blocks, targets = model.transformer.h, [b.mlp for b in model.transformer.h]
    else:
        blocks = model.model.layers
        targets = [b.pre_feedforward_layernorm if family in _GAIN_PLUS_ONE else b.mlp
                   for b in blocks]

    def hook(mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        caps.append(mod._norm(args[0].float()) if family in _GAIN_PLUS_ONE else args[0])

    handles = [t.register_forward_pre_hook(hook) for t in targets]
    try:
        model(input_ids)
    finally:
        for h in handles:
            h.remove()
    assert len(caps) == len(blocks)
    return [c.reshape(-1, c.shape[-1]).float() for c in caps]
