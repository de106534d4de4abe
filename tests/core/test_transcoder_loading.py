"""Loading, describing and saving transcoder folders in circuit-tracer's formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from circuit_studio.core.errors import Cancelled, TranscoderLoadError
from circuit_studio.core.progress import CancelToken
from circuit_studio.core.transcoders.loading import (check_transcoders_fit, describe_transcoders,
                                                    load_transcoders)
from circuit_studio.core.transcoders.writing import save_transcoders
from circuit_studio.core.transcoders.transcoder_set import TranscoderSet

PARITY = Path(__file__).resolve().parents[2].parent / "shared" / "parity"
CASES = ("llama_plt", "llama_clt", "gemma2_plt")
F, D = 8, 4


def make_set(kind: str = "plt", L: int = 2, jump: bool = True, skip: bool = False,
             seed: int = 0, dtype: torch.dtype = torch.float32) -> TranscoderSet:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    w_dec = tuple(r(F, L - i, D) if kind == "clt" else r(F, D) for i in range(L))
    return TranscoderSet(kind, "mlp.hook_in", "mlp.hook_out", r(L, F, D), r(L, F),
                         r(L, F).abs() if jump else None, w_dec, r(L, D),
                         r(L, D, D) if skip else None, scan="tiny")


def assert_same(a: TranscoderSet, b: TranscoderSet) -> None:
    assert (a.kind, a.feature_input_hook, a.feature_output_hook, a.scan) == \
        (b.kind, b.feature_input_hook, b.feature_output_hook, b.scan)
    assert (a.w_skip is None) == (b.w_skip is None)
    for x, y in [(a.b_enc, b.b_enc), (a.b_dec, b.b_dec), (a.threshold, b.threshold),
                 *zip(a.w_enc, b.w_enc), *zip(a.w_dec, b.w_dec), *zip(a.w_skip or (), b.w_skip or ())]:
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y)


def expect_error(folder, *names: str) -> TranscoderLoadError:
    """Both the loader and the header-only summary must refuse `folder`, naming `names`."""
    for fn in (load_transcoders, describe_transcoders):
        with pytest.raises(TranscoderLoadError) as info:
            fn(folder)
        for name in names:
            assert name in info.value.message, (name, info.value.message)
        assert info.value.hint
    return info.value


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(text)
    return folder


PLT_HEAD = "model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n" \
           "feature_output_hook: mlp.hook_out\n"


# ---- parity cases ----
@pytest.mark.parametrize("case", CASES)
def test_parity_case_loads_and_encodes_like_raw_files(case: str) -> None:
    folder = PARITY / "cases" / case / "transcoders"
    if not folder.is_dir():
        pytest.skip(f"parity fixtures not found at {folder} (shared/parity is not checked out)")
    meta = json.loads((folder.parent / "case.json").read_text())
    tc = load_transcoders(folder)
    L, d, Fc = meta["dims"]["n_layers"], meta["dims"]["d_model"], meta["dims"]["d_transcoder"]
    assert (tc.kind, tc.n_layers, tc.n_features, tc.d_model) == (meta["kind"], L, Fc, d)
    assert (tc.feature_input_hook, tc.feature_output_hook) == \
        (meta["feature_input_hook"], meta["feature_output_hook"])
    assert tc.activation_name == ("JumpReLU" if meta["activation"] == "jumprelu" else "ReLU")
    assert (tc.w_skip is not None) == meta["skip"]
    assert tc.source == folder.resolve()
    check_transcoders_fit(tc, n_layers=L, d_model=d)
    s = describe_transcoders(folder / "config.yaml")
    assert (s.kind, s.n_layers, s.n_features, s.d_model, s.hooks, s.scan) == \
        (tc.kind, L, Fc, d, (tc.feature_input_hook, tc.feature_output_hook), tc.scan)
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(1))
    for i in range(L):
        if tc.is_clt:
            raw = load_file(folder / f"W_enc_{i}.safetensors")
            w, b, th = raw[f"W_enc_{i}"], raw[f"b_enc_{i}"], raw.get(f"threshold_{i}")
            dec = load_file(folder / f"W_dec_{i}.safetensors")[f"W_dec_{i}"]
            assert torch.equal(tc.w_dec[i], dec)
        else:
            raw = load_file(folder / f"layer_{i}.safetensors")
            w, b, th = raw["W_enc"], raw["b_enc"], raw.get("activation_function.threshold")
            assert torch.equal(tc.w_dec[i], raw["W_dec"])
        pre = x @ w.T + b
        want = torch.relu(pre) if th is None else pre * (pre > th)
        torch.testing.assert_close(tc.encode(i, x), want, rtol=0, atol=1e-6)


# ---- round trips ----
@pytest.mark.parametrize("jump,skip", [(True, False), (False, False), (True, True), (False, True)])
def test_plt_round_trip(tmp_path: Path, jump: bool, skip: bool) -> None:
    tc = make_set("plt", L=3, jump=jump, skip=skip)
    out = save_transcoders(tc, tmp_path / "plt")
    back = load_transcoders(out)
    assert_same(tc, back)
    assert back.source == out
    s = describe_transcoders(out)
    assert (s.activation, s.has_skip, s.file_format) == (tc.activation_name, skip, "safetensors")
    assert s.size_bytes == sum(p.stat().st_size for p in out.glob("*.safetensors"))


def test_clt_round_trip_and_bfloat16(tmp_path: Path) -> None:
    assert_same(relu := make_set("clt", jump=False),
                load_transcoders(save_transcoders(relu, tmp_path / "relu")))
    tc = make_set("clt", L=3)
    assert_same(tc, load_transcoders(save_transcoders(tc, tmp_path / "clt")))
    assert sorted(p.name for p in (tmp_path / "clt").iterdir()) == sorted(
        ["config.yaml"] + [f"W_{w}_{i}.safetensors" for w in ("enc", "dec") for i in range(3)])
    half = make_set("plt", dtype=torch.bfloat16)
    out = save_transcoders(half, tmp_path / "bf16")
    assert describe_transcoders(out).dtype == "bfloat16"
    assert_same(half, load_transcoders(out, dtype=torch.bfloat16))


def test_save_replaces_transcoder_folder_but_not_other_folders(tmp_path: Path) -> None:
    out = save_transcoders(make_set("plt", L=3), tmp_path / "tc")
    save_transcoders(make_set("clt", L=2, seed=5), out)
    assert load_transcoders(out).kind == "clt" and not (out / "layer_2.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tc"]  # no temp folders left behind
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        save_transcoders(make_set(), tmp_path / "other")
    with pytest.raises(ValueError):
        save_transcoders(make_set("plt"), tmp_path / "x", format="clt")


def write_npz(path: Path, seed: int, f: int = F) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"W_enc": rng.standard_normal((D, f), dtype=np.float32),
              "W_dec": rng.standard_normal((f, D), dtype=np.float32),
              "b_enc": rng.standard_normal(f, dtype=np.float32),
              "b_dec": rng.standard_normal(D, dtype=np.float32),
              "threshold": np.abs(rng.standard_normal(f, dtype=np.float32))}
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("listed", [True, False])
def test_gemmascope_npz(tmp_path: Path, listed: bool) -> None:
    raw = [write_npz(tmp_path / f"layer_{i}.npz", i) for i in range(2)]
    write_config(tmp_path, "model_kind: transcoder_set\nfeature_input_hook: ln2.hook_normalized\n"
                 "feature_output_hook: hook_mlp_out\nscan: gs\n"
                 + ("transcoders: [layer_0.npz, layer_1.npz]\n" if listed else ""))
    tc = load_transcoders(tmp_path)
    assert (tc.kind, tc.n_layers, tc.n_features, tc.d_model, tc.scan) == ("plt", 2, F, D, "gs")
    for i, a in enumerate(raw):
        assert torch.equal(tc.w_enc[i], torch.from_numpy(a["W_enc"].T))
        assert torch.equal(tc.w_dec[i], torch.from_numpy(a["W_dec"]))
        assert torch.equal(tc.threshold[i], torch.from_numpy(a["threshold"]))
    s = describe_transcoders(tmp_path)
    assert (s.file_format, s.n_features, s.d_model, s.activation) == ("npz", F, D, "JumpReLU")
    # the npz set saves as a standard PLT and reads back identically
    assert_same(tc, load_transcoders(save_transcoders(tc, tmp_path / "as_plt")))


# ---- paths ----
def test_relative_absolute_and_other_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = save_transcoders(make_set("plt"), tmp_path / "src")
    root = tmp_path / "set"
    (root / "weights").mkdir(parents=True)
    for i in range(2):
        (root / "weights" / f"layer_{i}.safetensors").write_bytes(
            (src / f"layer_{i}.safetensors").read_bytes())
    write_config(root, PLT_HEAD + "transcoders:\n  - weights/layer_0.safetensors\n"
                 f"  - {src / 'layer_1.safetensors'}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    a = load_transcoders(root)
    b = load_transcoders(Path("..") / "set" / "config.yaml")
    assert a.source == b.source == root.resolve()
    ref = load_transcoders(src)
    assert all(map(torch.equal, a.w_enc, ref.w_enc)) and torch.equal(b.w_dec[1], ref.w_dec[1])
    assert a.scan == "set"  # no scan in the config: the folder's name


def test_folder_of_layer_files_without_list(tmp_path: Path) -> None:
    src = save_transcoders(make_set("plt", L=3), tmp_path / "src")
    cfg = (src / "config.yaml").read_text().split("#")[0]
    write_config(src, cfg)
    assert load_transcoders(src).n_layers == 3
    (src / "layer_1.safetensors").unlink()
    expect_error(src, "layer_1.safetensors")


# ---- bad folders and configs ----
def test_missing_folder_and_config(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope", str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    expect_error(tmp_path / "empty", "config.yaml", "empty")
    (tmp_path / "w.safetensors").write_text("x")
    expect_error(tmp_path / "w.safetensors", "w.safetensors")


@pytest.mark.parametrize("text,needle", [
    ("model_kind: [unclosed\n", "config.yaml"),
    ("- just\n- a list\n", "config.yaml"),
    ("model_kind: sparse_autoencoder\nfeature_input_hook: mlp.hook_in\n", "sparse_autoencoder"),
    ("model_kind: transcoder_set\nfeature_output_hook: mlp.hook_out\n", "feature_input_hook"),
    ("model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n", "feature_output_hook"),
    ("model_kind: transcoder_set\nfeature_input_hook: blocks.0.hook_resid_pre\n"
     "feature_output_hook: mlp.hook_out\n", "blocks.0.hook_resid_pre"),
    (PLT_HEAD + "transcoders: []\n", "transcoders"),
    (PLT_HEAD + "transcoders:\n  - hf://mntss/transcoder-Llama/layer_0.safetensors\n", "mntss/transcoder-Llama"),
    (PLT_HEAD + "transcoders:\n  - gone/layer_0.safetensors\n", "gone/layer_0.safetensors"),
    (PLT_HEAD, "transcoders"),
])
def test_bad_config(tmp_path: Path, text: str, needle: str) -> None:
    expect_error(write_config(tmp_path / "tc", text), needle)


# ---- broken weight files ----
def plt_folder(tmp_path: Path, **kw) -> Path:
    return save_transcoders(make_set("plt", L=3, **kw), tmp_path / "tc")


def test_truncated_and_fake_safetensors(tmp_path: Path) -> None:
    out = plt_folder(tmp_path)
    f = out / "layer_1.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    expect_error(out, "layer_1.safetensors")
    f.write_text("this is a text file, not tensors\n" * 10)
    expect_error(out, "layer_1.safetensors")


def test_truncated_and_fake_npz(tmp_path: Path) -> None:
    for i in range(2):
        write_npz(tmp_path / f"layer_{i}.npz", i)
    write_config(tmp_path, PLT_HEAD + "transcoders: [layer_0.npz, layer_1.npz]\n")
    f = tmp_path / "layer_1.npz"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    expect_error(tmp_path, "layer_1.npz")
    f.write_text("not a zip")
    expect_error(tmp_path, "layer_1.npz")
    write_npz(f, 1, f=F + 1)
    expect_error(tmp_path, "layer_1.npz", f"F={F + 1}")


def rewrite(path: Path, drop: str = "", **replace: torch.Tensor) -> None:
    tensors = {k: v for k, v in load_file(path).items() if k != drop}
    save_file({**tensors, **replace}, path)


@pytest.mark.parametrize("change,needles", [
    (dict(drop="b_dec"), ["'b_dec'"]),
    (dict(W_dec=torch.zeros(F, D + 1)), ["W_dec", "[8, 5]"]),
    (dict(b_enc=torch.zeros(F - 1)), ["b_enc", "[7]"]),
    (dict(b_dec=torch.zeros(D, 1)), ["b_dec", "[4, 1]"]),
    (dict(**{"activation_function.threshold": torch.zeros(3)}), ["threshold", "[3]"]),
    (dict(W_skip=torch.zeros(D, D + 1)), ["W_skip", "[4, 5]"]),
    (dict(W_enc=torch.zeros(F + 2, D), W_dec=torch.zeros(F + 2, D), b_enc=torch.zeros(F + 2),
          **{"activation_function.threshold": torch.zeros(F + 2)}), ["F=10", "layer 0 has F=8"]),
    (dict(drop="activation_function.threshold"), ["threshold"]),
    (dict(W_enc=torch.zeros(F, D, 1)), ["[8, 4, 1]"]),
    (dict(W_enc=torch.zeros(F, D, dtype=torch.int64)), ["int64"]),
])
def test_bad_layer_file(tmp_path: Path, change: dict, needles: list[str]) -> None:
    out = plt_folder(tmp_path, skip="W_skip" in change)
    rewrite(out / "layer_1.safetensors", **change)
    expect_error(out, "layer_1.safetensors", *needles)


def test_skip_in_some_layers_only(tmp_path: Path) -> None:
    out = plt_folder(tmp_path)
    rewrite(out / "layer_2.safetensors", W_skip=torch.zeros(D, D))
    expect_error(out, "layer_2.safetensors", "W_skip")


def test_clt_missing_and_misshapen_files(tmp_path: Path) -> None:
    out = save_transcoders(make_set("clt", L=3), tmp_path / "clt")
    rewrite(out / "W_dec_1.safetensors", W_dec_1=torch.zeros(F, 3, D))
    expect_error(out, "W_dec_1.safetensors", "[8, 3, 4]", "[8, 2, 4]")
    rewrite(out / "W_dec_1.safetensors", W_dec_1=torch.zeros(F, 2, D))
    assert load_transcoders(out).n_layers == 3
    rewrite(out / "W_enc_2.safetensors", drop="b_enc_2")
    expect_error(out, "W_enc_2.safetensors", "b_enc_2")
    (out / "W_enc_1.safetensors").unlink()
    expect_error(out, "W_enc_1.safetensors")
    (out / "W_enc_2.safetensors").unlink()
    expect_error(out, "W_dec_2.safetensors", "W_enc_2.safetensors")
    (out / "W_dec_0.safetensors").unlink()
    expect_error(out, "W_dec_0.safetensors")
    for p in out.glob("W_*"):
        p.unlink()
    expect_error(out, "W_enc_0.safetensors")


# ---- fit, progress, cancel ----
def test_check_transcoders_fit(tmp_path: Path) -> None:
    tc = load_transcoders(plt_folder(tmp_path))
    check_transcoders_fit(tc, n_layers=3, d_model=D)
    with pytest.raises(TranscoderLoadError) as info:
        check_transcoders_fit(tc, n_layers=4, d_model=D, model_name="tiny-llama")
    assert "3 layers" in info.value.message and "tiny-llama has 4" in info.value.message
    assert str(tmp_path / "tc") in info.value.message and info.value.hint
    with pytest.raises(TranscoderLoadError) as info:
        check_transcoders_fit(tc, n_layers=3, d_model=64)
    assert "size 4" in info.value.message and "d_model 64" in info.value.message


def test_progress_cancel_device_dtype(tmp_path: Path) -> None:
    out = plt_folder(tmp_path)
    seen = []
    tc = load_transcoders(out, dtype=torch.float64, progress=lambda p: seen.append(p.done))
    assert seen == [0, 1, 2, 3] and tc.w_enc[0].dtype == tc.w_dec[0].dtype == torch.float64
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        load_transcoders(out, cancel=token)
