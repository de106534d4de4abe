"""The offline synthetic builders: every family round-trips through a HF folder, transcoders
have the documented shapes, and threshold calibration hits the requested sparsity."""

from __future__ import annotations

import json

import pytest
import torch

from circuit_studio.core import synthetic as syn

SENTENCE = "the capital of Texas is Austin and the cat is on the ship"


@pytest.mark.parametrize("family", syn.FAMILIES)
def test_family_folder_reloads_offline_with_identical_logits(family, tiny_model_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_model_folder(family)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).is_file(), name
    cfg = json.loads((folder / "config.json").read_text())
    assert "_attn_implementation" not in cfg and "attn_implementation" not in cfg
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 0)

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.bos_token_id == 1 and tok.pad_token_id == 0 and tok.eos_token_id == 2
    ids = tok(SENTENCE, add_special_tokens=False).input_ids
    assert syn.UNK_ID not in ids and len(ids) == len(SENTENCE.split())
    assert tok.decode(ids) == SENTENCE
    ids = torch.tensor([[syn.BOS_ID] + ids])
    assert tok.decode(ids[0], skip_special_tokens=True) == SENTENCE

    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    built = syn.build_model(family, seed=0)
    assert type(reloaded).__name__ == syn._MODEL_CLASSES[family]
    assert reloaded.dtype == torch.float32
    with torch.no_grad():
        a, b = built(ids).logits, reloaded(ids).logits
    assert a.shape == (1, ids.shape[1], len(tok)) and len(tok) == reloaded.config.vocab_size
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert a[0, -1].std() > 0.3  # large init: the next-token distribution is far from uniform


def test_family_specifics():
    c = syn.build_config("gemma2")
    assert c.tie_word_embeddings and c.sliding_window == 4 and c.query_pre_attn_scalar == 16
    assert c.attn_logit_softcapping == 50.0 and c.final_logit_softcapping == 30.0
    c3 = syn.build_config("gemma3")
    assert c3.model_type == "gemma3_text"
    assert c3.layer_types == ["sliding_attention", "full_attention"]
    gpt2 = syn.build_config("gpt2", syn.ModelDims(n_layers=3, d_model=32, n_heads=2, d_mlp=48))
    assert (gpt2.n_layer, gpt2.n_embd, gpt2.n_head, gpt2.n_inner) == (3, 32, 2, 48)

    m = syn.build_model("gemma3")
    attn = m.model.layers[0].self_attn
    assert hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
    # (1 + w) norms: random w around 0; weight-gain norms: around 1; LayerNorm: weight and bias.
    assert m.model.norm.weight.abs().mean() < 0.5
    assert (syn.build_model("llama").model.norm.weight - 1).abs().max() > 0.05
    ln = syn.build_model("gpt2").transformer.h[0].ln_1
    assert (ln.weight - 1).abs().max() > 0.05 and ln.bias.abs().max() > 0.01


def test_build_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = syn.build_model("qwen2", seed=3), syn.build_model("qwen2", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    c = syn.build_model("qwen2", seed=4)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_qwen2_byte_level_tokenizer_keeps_words_whole(tiny_model_folder):
    # transformers 5 loads any qwen2 folder's tokenizer as Qwen2Tokenizer (byte-level BPE).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_folder("qwen2"))
    text = " ".join(syn.WORDS)
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(syn.WORDS) and tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(ids[:2]) == [syn.WORDS[0], "\u0120" + syn.WORDS[1]]
    assert ids == syn.build_tokenizer(family="qwen2")(text, add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(list(range(4))) == list(syn.SPECIALS)
    assert len(syn.build_tokenizer(4096, family="qwen2")) == 4096


def test_vocab_padding_and_medium_dims():
    toks = syn.vocab_tokens(200)
    assert len(toks) == 200 and toks[:4] == list(syn.SPECIALS) and toks[-1].startswith("w")
    assert len(syn.build_tokenizer(200)) == 200
    with pytest.raises(ValueError):
        syn.vocab_tokens(10)
    d = syn.MEDIUM_DIMS
    assert (d.n_layers, d.d_model, d.n_heads, d.n_kv_heads, d.d_mlp, d.vocab) == (8, 512, 8, 8, 2048, 4096)


def test_default_hooks():
    for fam in ("llama", "qwen2", "qwen3", "gpt2"):
        assert syn.default_hooks(fam) == ("mlp.hook_in", "mlp.hook_out")
    for fam in ("gemma2", "gemma3"):
        assert syn.default_hooks(fam) == ("ln2.hook_normalized", "hook_mlp_out")
    with pytest.raises(ValueError):
        syn.default_hooks("mamba")


@pytest.mark.parametrize("kind,skip", [("plt", False), ("plt", True), ("clt", False)])
def test_random_transcoder_shapes(kind, skip):
    L, d, F = 3, 16, 24
    tc = syn.random_transcoders(n_layers=L, d_model=d, n_features=F, kind=kind, skip=skip,
                                feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out")
    assert (tc.n_layers, tc.d_model, tc.n_features, tc.kind) == (L, d, F, kind)
    assert [w.shape for w in tc.w_enc] == [(F, d)] * L and tc.b_enc.shape == (L, F) and tc.b_dec.shape == (L, d)
    assert tc.threshold is not None and tc.threshold.shape == (L, F)
    assert len(tc.w_dec) == L
    for l, w in enumerate(tc.w_dec):
        assert w.shape == ((F, L - l, d) if kind == "clt" else (F, d))
    assert (tc.w_skip is not None) == skip
    if skip:
        assert [w.shape for w in tc.w_skip] == [(d, d)] * L
    x = torch.randn(L, 5, d)
    acts = torch.stack([tc.encode(l, x[l]) for l in range(L)])
    assert tc.reconstruct(acts, x).shape == (L, 5, d)
    again = syn.random_transcoders(n_layers=L, d_model=d, n_features=F, kind=kind, skip=skip,
                                   feature_input_hook="a", feature_output_hook="b")
    assert all(map(torch.equal, tc.w_enc, again.w_enc)) and torch.equal(tc.w_dec[-1], again.w_dec[-1])


def test_random_transcoders_relu_and_clt_skip():
    tc = syn.random_transcoders(n_layers=2, d_model=8, n_features=4, jumprelu=False,
                                feature_input_hook="a", feature_output_hook="b")
    assert tc.threshold is None and tc.activation_name == "ReLU"
    with pytest.raises(ValueError):
        syn.random_transcoders(n_layers=2, d_model=8, n_features=4, kind="clt", skip=True,
                               feature_input_hook="a", feature_output_hook="b")


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_calibrate_thresholds_on_model_inputs(family):
    dims = syn.ModelDims()
    model = syn.build_model(family, dims=dims, seed=1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, len(syn.vocab_tokens()), (16, 12), generator=g)
    ids[:, 0] = syn.BOS_ID
    reads = syn.mlp_read_inputs(model, family, ids)
    assert len(reads) == dims.n_layers and reads[0].shape == (16 * 12, dims.d_model)

    F, K = 96, 6.0
    tc = syn.random_transcoders(n_layers=dims.n_layers, d_model=dims.d_model, n_features=F,
                                kind="clt", feature_input_hook="x", feature_output_hook="y")
    cal = syn.calibrate_thresholds(tc, reads, active_per_token=K)
    assert cal is not tc and all(map(torch.equal, cal.w_enc, tc.w_enc))
    assert torch.count_nonzero(cal.b_enc) == 0 and bool((cal.threshold >= 1e-3).all())
    for l in range(dims.n_layers):
        per_token = (cal.encode(l, reads[l]) != 0).sum(-1).float()
        assert abs(per_token.mean().item() - K) < 1.0, per_token.mean()
