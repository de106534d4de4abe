"""Released transcoder formats: Top-K, GemmaScope 2 (per-layer and cross-layer), hf:// configs and
hub references in a local Hugging Face cache, sparsify folders; NaN/Inf; memory-mapped loading.

Each format is written here from one random set in its native layout; loading it must give the
same maths as the set itself (the parity tests check the same against circuit-tracer)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from circuit_studio.core.errors import TranscoderLoadError
from circuit_studio.core.transcoders.loading import check_transcoders_fit, describe_transcoders, load_transcoders
from circuit_studio.core.transcoders.transcoder_set import TranscoderSet

L, F, D = 3, 16, 8
HEAD = "feature_input_hook: mlp.hook_in\nfeature_output_hook: {out}\n"


def random_set(kind: str = "plt", skip: bool = False, jump: bool = True, seed: int = 0,
               activation: str = "", k: int | None = None) -> TranscoderSet:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    w_dec = tuple(r(F, L - i, D) if kind == "clt" else r(F, D) for i in range(L))
    return TranscoderSet(kind, "mlp.hook_in", "hook_mlp_out", r(L, F, D), r(L, F) * 0.1,
                         r(L, F).abs() * 0.5 if jump else None, w_dec, r(L, D), r(L, D, D) if skip else None,
                         activation=activation, k=k)


def assert_same_maths(a: TranscoderSet, b: TranscoderSet) -> None:
    x = torch.randn(L, 5, D, generator=torch.Generator().manual_seed(9))
    acts_a = torch.stack([a.encode(i, x[i]) for i in range(L)])
    acts_b = torch.stack([b.encode(i, x[i]) for i in range(L)])
    torch.testing.assert_close(acts_a, acts_b)
    torch.testing.assert_close(a.reconstruct(acts_a, x), b.reconstruct(acts_b, x))
    assert acts_a.count_nonzero() > 0


def expect_error(spec, *needles: str) -> TranscoderLoadError:
    for fn in (describe_transcoders, load_transcoders):
        with pytest.raises(TranscoderLoadError) as info:
            fn(spec)
        text = str(info.value)
        for n in needles:
            assert n in text, (n, text)
        assert info.value.hint
    return info.value


def write_yaml(folder: Path, kind: str, entries: list[str] | None, extra: str = "", out: str = "hook_mlp_out") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = f"model_kind: {kind}\n" + HEAD.format(out=out) + extra
    if entries is not None:
        text += "transcoders:\n" + "".join(f"- {json.dumps(e)}\n" for e in entries)
    (folder / "config.yaml").write_text(text)
    return folder


def write_ct_plt(tc: TranscoderSet, folder: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(L):
        t = {"W_enc": tc.w_enc[i], "W_dec": tc.w_dec[i], "b_enc": tc.b_enc[i], "b_dec": tc.b_dec[i]}
        if tc.threshold is not None:
            t["activation_function.threshold"] = tc.threshold[i]
        save_file({k: v.contiguous() for k, v in t.items()}, str(folder / f"layer_{i}.safetensors"))
    return write_yaml(folder, "transcoder_set", [f"layer_{i}.safetensors" for i in range(L)], extra, "mlp.hook_out")


# ---- Top-K ----
def test_topk_keeps_exactly_k_features_with_their_sign(tmp_path):
    tc = random_set(jump=False, activation="topk", k=4)
    folder = write_ct_plt(tc, tmp_path / "topk", "activation: topk\nk: 4\n")
    loaded = load_transcoders(folder)
    assert (loaded.activation, loaded.k, loaded.activation_name) == ("topk", 4, "TopK k=4")
    s = describe_transcoders(folder)
    assert (s.activation, s.k) == ("TopK", 4)
    x = torch.randn(7, D)
    acts = loaded.encode(0, x)
    assert (acts != 0).sum(-1).tolist() == [4] * 7
    pre = loaded.pre_activations(0, x)
    top = torch.topk(pre, 4, dim=-1).indices
    torch.testing.assert_close(acts.gather(-1, top), pre.gather(-1, top))  # no ReLU: signs kept
    assert_same_maths(tc, loaded)


@pytest.mark.parametrize("extra,needles", [
    ("activation: topk\n", ["activation: topk", "no `k`"]),
    ("activation: topk\nk: 0\n", ["k 0"]),
    ("activation: topk\nk: many\n", ["many"]),
    ("activation: topk\nk: 999\n", ["k = 999", "16 features"]),
    ("activation: softmax\n", ["softmax"]),
])
def test_topk_config_mistakes(tmp_path, extra, needles):
    folder = write_ct_plt(random_set(jump=False), tmp_path / "tc", extra)
    expect_error(folder, *needles)


def test_topk_set_with_thresholds_is_refused(tmp_path):
    folder = write_ct_plt(random_set(jump=True), tmp_path / "tc", "activation: topk\nk: 4\n")
    expect_error(folder, "TopK", "threshold")


# ---- GemmaScope 2 ----
def write_gemmascope2_plt(tc: TranscoderSet, folder: Path) -> list[Path]:
    paths = []
    for i in range(L):
        sub = folder / f"layer_{i}_width_16_l0_small_affine"
        sub.mkdir(parents=True)
        t = {"w_enc": tc.w_enc[i].T, "w_dec": tc.w_dec[i], "b_enc": tc.b_enc[i], "b_dec": tc.b_dec[i],
             "threshold": tc.threshold[i]}
        if tc.w_skip is not None:
            t["affine_skip_connection"] = tc.w_skip[i].T
        save_file({k: v.contiguous() for k, v in t.items()}, str(sub / "params.safetensors"))
        paths.append(sub / "params.safetensors")
    return paths


def test_gemmascope2_per_layer_with_affine_skip(tmp_path):
    tc = random_set(skip=True)
    paths = write_gemmascope2_plt(tc, tmp_path / "weights")
    folder = write_yaml(tmp_path / "cfg", "transcoder_set", [str(p) for p in paths])
    loaded = load_transcoders(folder)
    s = describe_transcoders(folder)
    assert (s.format, s.has_skip, s.activation, s.n_features, s.d_model) == ("GemmaScope 2", True, "JumpReLU", F, D)
    assert_same_maths(tc, loaded)


def test_gemmascope2_without_threshold_is_refused(tmp_path):
    paths = write_gemmascope2_plt(random_set(), tmp_path / "w")
    from safetensors.torch import load_file
    t = load_file(paths[0])
    del t["threshold"]
    save_file(t, str(paths[0]))
    expect_error(write_yaml(tmp_path / "cfg", "transcoder_set", [str(p) for p in paths]), "threshold")


def write_gemmascope2_clt(tc: TranscoderSet, folder: Path, junk_slots: bool = True) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(L):
        full = torch.randn(F, L, D) * 7 if junk_slots else torch.zeros(F, L, D)  # slots j < i: never read
        full[:, i:] = tc.w_dec[i]
        t = {"w_enc": tc.w_enc[i].T, "w_dec": full, "b_enc": tc.b_enc[i], "b_dec": tc.b_dec[i],
             "threshold": tc.threshold[i], "affine_skip_connection": tc.w_skip[i].T}
        save_file({k: v.contiguous() for k, v in t.items()}, str(folder / f"params_layer_{i}.safetensors"))
        paths.append(folder / f"params_layer_{i}.safetensors")
    return paths


@pytest.mark.parametrize("repeat_last", [True, False])
def test_gemmascope2_cross_layer(tmp_path, repeat_last):
    tc = random_set("clt", skip=True)
    paths = write_gemmascope2_clt(tc, tmp_path / "w")
    entries = [str(p) for p in paths] + ([str(paths[-1])] if repeat_last else [])  # released configs: L + 1
    folder = write_yaml(tmp_path / "cfg", "cross_layer_transcoder", entries)
    loaded = load_transcoders(folder)
    assert (loaded.kind, loaded.n_layers, [w.shape for w in loaded.w_dec]) == \
        ("clt", L, [(F, L - i, D) for i in range(L)])
    assert describe_transcoders(folder).format == "GemmaScope 2 CLT"
    assert_same_maths(tc, loaded)


def test_gemmascope2_cross_layer_with_wrong_decoder_shape(tmp_path):
    tc = random_set("clt", skip=True)
    paths = write_gemmascope2_clt(tc, tmp_path / "w")
    folder = write_yaml(tmp_path / "cfg", "cross_layer_transcoder", [str(p) for p in paths[:2]])
    expect_error(folder, "'w_dec'", f"[{F}, {L}, {D}]", "[F, 2, d]")


# ---- local Hugging Face cache ----
COMMIT_V1, COMMIT_MAIN = "1" * 40, "2" * 40


def cache_repo(hub: Path, repo: str, files: dict[str, Path | str], commit: str, refs: tuple[str, ...] = ("main",),
               blobs: bool = False) -> Path:
    """Put `files` (repo path -> source file or text) into a hub-cache snapshot of `repo`."""
    root = hub / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    for rel, src in files.items():
        dest = snap / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = Path(src).read_bytes() if isinstance(src, Path) else src.encode()
        if blobs:  # huggingface_hub's usual layout: snapshot entries are symlinks into blobs/
            blob = root / "blobs" / f"{abs(hash((commit, rel))):x}"
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            dest.symlink_to(blob)
        else:
            dest.write_bytes(data)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)
    return snap


@pytest.mark.parametrize("blobs", [False, True])
def test_hf_uri_config_resolves_pinned_revision_offline(tmp_path, monkeypatch, blobs):
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    good, decoy = random_set(seed=1), random_set(seed=2)
    g, d = write_ct_plt(good, tmp_path / "good"), write_ct_plt(decoy, tmp_path / "decoy")
    layers = {f"layer_{i}.safetensors": i for i in range(L)}
    cache_repo(hub, "w/weights", {n: g / n for n in layers}, COMMIT_V1, ("v1",), blobs)
    cache_repo(hub, "w/weights", {n: d / n for n in layers}, COMMIT_MAIN, ("main",), blobs)
    config = "model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n" \
             "transcoders:\n" + "".join(f"- hf://w/weights/{n}?revision=v1\n" for n in layers)
    cache_repo(hub, "c/config", {"sub/config.yaml": config}, COMMIT_MAIN, blobs=blobs)
    loaded = load_transcoders("c/config/sub")
    assert loaded.scan == "c/config//sub"
    assert_same_maths(good, loaded)
    assert load_transcoders(f"c/config/sub@{COMMIT_MAIN}").scan == f"c/config//sub@{COMMIT_MAIN}"


def test_hub_cache_misses_name_the_file_and_the_download(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    config = "model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n" \
             "transcoders:\n- hf://w/weights/layer_0.safetensors\n"
    cache_repo(hub, "c/config", {"config.yaml": config}, COMMIT_MAIN)
    err = expect_error("c/config", "layer_0.safetensors", "w/weights", "not in the local Hugging Face cache")
    assert "huggingface-cli download w/weights layer_0.safetensors" in err.hint
    cache_repo(hub, "w/weights", {"other.txt": "x"}, COMMIT_MAIN)
    err = expect_error("c/config", "layer_0.safetensors of w/weights")
    assert "huggingface-cli download w/weights layer_0.safetensors" in err.hint
    err = expect_error("c/config@v9", "Revision 'v9'", "main")
    err = expect_error("nobody/nothing", "nobody/nothing is not in the local Hugging Face cache")
    assert "huggingface-cli download nobody/nothing" in err.hint


# ---- sparsify ----
def write_sparsify(tc: TranscoderSet, folder: Path, k: int, transcode: bool = True, hook: str = "layers.{i}.mlp") -> Path:
    for i in range(L):
        sub = folder / hook.format(i=i)
        sub.mkdir(parents=True)
        t = {"encoder.weight": tc.w_enc[i], "encoder.bias": tc.b_enc[i], "W_dec": tc.w_dec[i], "b_dec": tc.b_dec[i]}
        if tc.w_skip is not None:
            t["W_skip"] = tc.w_skip[i]
        save_file({k_: v.contiguous().to(torch.bfloat16) for k_, v in t.items()}, str(sub / "sae.safetensors"))
        (sub / "cfg.json").write_text(json.dumps({"d_in": D, "num_latents": F, "k": k, "transcode": transcode,
                                                  "skip_connection": tc.w_skip is not None, "activation": "topk"}))
    return folder


def test_sparsify_folder_is_read_as_relu_topk_with_skip(tmp_path):
    tc = random_set(skip=True, jump=False)
    loaded = load_transcoders(write_sparsify(tc, tmp_path / "sp", k=5))
    assert (loaded.activation, loaded.k, loaded.feature_input_hook, loaded.feature_output_hook) == \
        ("relu_topk", 5, "mlp.hook_in", "mlp.hook_out")
    assert loaded.dtype == torch.bfloat16  # stored dtype kept
    x = torch.randn(9, D)
    pre = loaded.pre_activations(1, x)
    want = torch.relu(pre) * torch.zeros_like(pre).scatter_(-1, torch.topk(pre, 5, -1).indices, 1.0)
    torch.testing.assert_close(loaded.encode(1, x), want)  # sparsify: ReLU, then the top k
    assert ((loaded.encode(1, x) != 0).sum(-1) <= 5).all()
    bf = tc.to("cpu", torch.bfloat16)
    torch.testing.assert_close(loaded.skip(0, x), x @ bf.w_skip[0].float().T)


def test_sparsify_mistakes(tmp_path):
    tc = random_set(jump=False)
    expect_error(write_sparsify(tc, tmp_path / "sae", k=5, transcode=False), "sparse autoencoder")
    one = write_sparsify(tc, tmp_path / "one", k=5) / "layers.0.mlp"
    expect_error(one, "one sparsify transcoder")
    gap = write_sparsify(tc, tmp_path / "gap", k=5)
    import shutil
    shutil.rmtree(gap / "layers.1.mlp")
    expect_error(gap, "layer 1")
    expect_error(write_sparsify(tc, tmp_path / "attn", k=5, hook="layers.{i}.self_attn"), "not an MLP hook point")


def test_sparsify_folder_for_another_model(tmp_path):
    loaded = load_transcoders(write_sparsify(random_set(jump=False), tmp_path / "sp", k=5))
    with pytest.raises(TranscoderLoadError, match="read vectors of size 8 but tiny-llama has d_model 64"):
        check_transcoders_fit(loaded, n_layers=L, d_model=64, model_name="tiny-llama")
    with pytest.raises(TranscoderLoadError, match="have 3 layers but tiny-llama has 2"):
        check_transcoders_fit(loaded, n_layers=2, d_model=D, model_name="tiny-llama")


# ---- bad numbers ----
@pytest.mark.parametrize("key,value,what", [("W_dec", float("nan"), "NaN"), ("activation_function.threshold",
                                                                            float("inf"), "Inf")])
def test_non_finite_weights_stop_loading(tmp_path, key, value, what):
    folder = write_ct_plt(random_set(), tmp_path / "tc")
    from safetensors.torch import load_file
    t = load_file(folder / "layer_2.safetensors")
    t[key].view(-1)[5] = value
    save_file(t, str(folder / "layer_2.safetensors"))
    with pytest.raises(TranscoderLoadError) as info:
        load_transcoders(folder)
    msg = str(info.value)
    assert "layer_2.safetensors" in msg and repr(key) in msg and what in msg and "layer 2" in msg


# ---- memory ----
_MEASURE = textwrap.dedent("""
    import json, sys, torch
    from circuit_studio.core.transcoders.loading import load_transcoders

    def rss():
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024

    before, _ = rss()
    tc = load_transcoders(sys.argv[1])
    after_load, peak = rss()
    rows = tc.decoder_rows(1, torch.tensor([3, 700, 40000]), 1)
    after_rows, _ = rss()
    print(json.dumps({"before": before, "after_load": after_load, "peak": peak, "after_rows": after_rows,
                      "dtype": str(tc.dtype), "rows": rows.float().sum().item()}))
""")


def test_loading_memory_maps_and_reads_decoder_rows_lazily(tmp_path):
    Lb, Fb, Db = 4, 65536, 512  # 4 layers x (64 + 64 MiB) of bfloat16: 512 MiB on disk
    folder = tmp_path / "big"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(Lb):
        save_file({"W_enc": torch.randn(Fb, Db, generator=g).to(torch.bfloat16),
                   "W_dec": torch.randn(Fb, Db, generator=g).to(torch.bfloat16),
                   "b_enc": torch.zeros(Fb, dtype=torch.bfloat16), "b_dec": torch.zeros(Db, dtype=torch.bfloat16)},
                  str(folder / f"layer_{i}.safetensors"))
    (folder / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n"
                                        "feature_output_hook: mlp.hook_out\n")
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(folder)], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout)
    assert m["dtype"] == "torch.bfloat16"
    # every byte was read (checked for NaN/Inf), but only about one layer was resident at a time
    assert m["peak"] - m["before"] < 0.4 * size, (m, size)
    assert m["after_load"] - m["before"] < 0.1 * size, (m, size)
    assert m["after_rows"] - m["after_load"] < 4 << 20, m  # three rows: a few pages, not a 64 MiB decoder


def test_non_finite_search_is_exact_where_sums_overflow():
    from circuit_studio.core.transcoders.weight_files import first_non_finite
    big = torch.full((64, 8), 3e38, dtype=torch.bfloat16)  # finite, but its sum overflows
    assert first_non_finite(big) is None
    big[40, 3] = float("-inf")
    assert first_non_finite(big) == (40, 3) and first_non_finite(big.T) == (3, 40)


def test_topk_set_saves_with_the_keys_circuit_tracer_reads(tmp_path):
    from circuit_studio.core.transcoders.writing import save_transcoders
    import yaml
    tc = random_set(jump=False, activation="topk", k=3)
    out = save_transcoders(tc, tmp_path / "saved")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["activation"], cfg["k"]) == ("topk", 3)
    assert_same_maths(tc, load_transcoders(out))
