"""The memory plan: its arithmetic on small fake summaries, what it says when a run will not fit,
and the command line stopping before any weight is read when it will not."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from circuit_studio.cli import main  # at import: its progress bar binds the real stderr
from circuit_studio.core.model import memory_plan as mp
from circuit_studio.core.model.memory_plan import GPU, RAM, FreeMemory, RunSize, plan_memory

GIB = 1 << 30
PLENTY = FreeMemory(ram=1 << 50, vram=1 << 50)
# sizes small enough to add up by hand
MODEL = SimpleNamespace(n_parameters=1_000_000, n_layers=2, d_model=8, n_heads=2, vocab_size=100, d_mlp=16)
PLT = SimpleNamespace(kind="plt", activation="JumpReLU", n_layers=2, n_features=32, d_model=8, has_skip=False,
                      dtype="float32", k=None)
L, F, d, H, V = 2, 32, 8, 2, 100


def _bytes(plan, name):
    return plan.part(name).nbytes


def test_model_weights_are_parameters_times_the_dtype():
    assert _bytes(plan_memory(MODEL, device="cpu", dtype="float32", free=PLENTY), "model weights") == 4_000_000
    assert _bytes(plan_memory(MODEL, device="cpu", dtype="bfloat16", free=PLENTY), "model weights") == 2_000_000
    on_gpu = plan_memory(MODEL, device="cuda", dtype="bfloat16", free=PLENTY)
    assert on_gpu.part("model weights").where == GPU and on_gpu.needed(RAM) == 0


def test_transcoders_whole_on_the_gpu_but_memory_mapped_with_offload_or_on_the_cpu():
    whole = L * (F * d + F * d + F + d + F) * 4  # W_enc, W_dec, b_enc, b_dec, threshold
    resident = (L * (F + d + F) + F * d) * 4  # the small tensors and one layer's encoder
    gpu = plan_memory(None, PLT, device="cuda", free=PLENTY)
    assert gpu.part("transcoders") == mp.Part("transcoders", whole, GPU, gpu.part("transcoders").detail)
    offloaded = plan_memory(None, PLT, device="cuda", offload="cpu", free=PLENTY)
    assert offloaded.part("transcoders").where == RAM and _bytes(offloaded, "transcoders") == resident
    assert offloaded.needed(GPU) == resident  # what is moved for one step, in float32
    cpu = plan_memory(None, PLT, device="cpu", free=PLENTY)
    assert cpu.needed(RAM) == resident and cpu.needed(GPU) == 0
    assert plan_memory(None, PLT, device="cpu", offload="cpu", free=PLENTY).parts == cpu.parts  # no effect


def test_cross_layer_decoders_write_to_every_later_layer():
    clt = SimpleNamespace(**{**vars(PLT), "kind": "clt", "activation": "ReLU", "has_skip": True, "dtype": "bfloat16"})
    decoders = F * d * (L * (L + 1) // 2)
    small = L * (F + d + d * d)  # no thresholds, skip matrices
    assert mp.transcoder_weight_bytes(clt) == (L * F * d + decoders + small) * 2


def test_attribution_parts_follow_the_run():
    run = RunSize(n_tokens=5, batch_size=4, max_feature_nodes=10, max_n_logits=3, active_per_token=6)
    plan = plan_memory(MODEL, PLT, device="cpu", dtype="float32", run=run, free=PLENTY)
    P, B, K = 5, 4, 3
    n_active = L * P * 6
    assert plan.n_active == n_active
    N = 10 + L * P + P + K  # selected features + errors + tokens + logits
    assert plan.n_nodes == N
    n_cols = n_active + L * P + P
    # a feature row at (l, p) can receive from 6 p features, p + 1 errors per lower layer and p + 1 tokens
    entries = sum(6 * (l * (6 * p + p + 1) + p + 1) for l in range(L) for p in range(1, P))
    assert mp.allowed_entries(L, P, 6) == entries
    blocks = int(10 * (10 + L * P + P) * entries / (n_active * n_cols)) + K * (N - K)
    assert _bytes(plan, "graph") == int(((K + 10) * (n_cols + K) + (K + 10) ** 2 + blocks * 1.5) * 4)
    assert _bytes(plan, "active features' rows") == n_active * d * 2 * 4
    assert _bytes(plan, "backward batches") == B * P * d * 4 * mp.BACKWARD_TENSORS + B * n_cols * 4
    everything = plan_memory(MODEL, PLT, run=dataclasses.replace(run, max_feature_nodes=None), free=PLENTY)
    assert _bytes(everything, "graph") == int((entries + K * n_cols) * 4 * 1.5), "no N x N matrix anywhere"
    assert _bytes(plan, "forward pass") == L * P * F * 4 + 3 * L * P * d * 4 + L * H * P * P * 8 + P * V * 4
    # no budget: every active feature is a node
    assert plan_memory(MODEL, PLT, run=dataclasses.replace(run, max_feature_nodes=None),
                       free=PLENTY).n_nodes == n_active + L * P + P + K


def test_active_features_come_from_k_or_the_default_and_never_exceed_the_width():
    run = RunSize(n_tokens=3)
    assert mp.active_features(PLT, run) == L * 3 * min(mp.DEFAULT_ACTIVE_PER_TOKEN, F)
    topk = SimpleNamespace(**{**vars(PLT), "n_features": 1000, "activation": "TopK", "k": 7})
    assert mp.active_features(topk, run) == L * 3 * 7
    assert mp.active_features(topk, dataclasses.replace(run, active_per_token=11)) == L * 3 * 11


def test_unknown_free_memory_counts_as_fitting():
    assert plan_memory(MODEL, PLT, free=FreeMemory(ram=None)).fits


def test_not_enough_ram_says_what_and_what_to_change():
    run = RunSize(n_tokens=8)
    need = plan_memory(MODEL, PLT, dtype="float32", run=run, free=PLENTY).needed(RAM)
    need_bf16 = plan_memory(MODEL, PLT, dtype="bfloat16", run=run, free=PLENTY).needed(RAM)
    free = FreeMemory(ram=int(need_bf16 / mp.HEADROOM) + 1)  # enough for bfloat16 only
    plan = plan_memory(MODEL, PLT, dtype="float32", run=run, free=free)
    assert not plan.fits
    assert plan.problem.startswith(f"Not enough RAM: this run needs about {mp.format_bytes(need)} but ")
    assert "model weights" in plan.problem and "\n" not in plan.problem + plan.hint
    assert plan.hint.startswith("Try --dtype bfloat16") and "--offload" not in plan.hint  # that frees GPU memory
    assert "even with all of these" not in plan.hint
    with pytest.raises(mp.ModelLoadError, match="Not enough RAM"):
        plan.check()
    assert plan_memory(MODEL, PLT, dtype="bfloat16", run=run, free=free).fits  # the advice is right


def test_not_enough_gpu_memory_suggests_offloading_the_transcoders():
    big_tc = SimpleNamespace(**{**vars(PLT), "n_features": 65536})  # 8 MiB against the model's 4 MB
    need = plan_memory(MODEL, big_tc, device="cuda", free=PLENTY).needed(GPU)
    free = FreeMemory(ram=1 << 40, vram=int(need * 0.8))
    plan = plan_memory(MODEL, big_tc, device="cuda", free=free)
    assert not plan.fits and plan.problem.startswith("Not enough GPU memory")
    assert plan.hint.startswith("Try --offload cpu")  # the biggest saving first
    assert plan_memory(MODEL, big_tc, device="cuda", offload="cpu", free=free).fits


@pytest.mark.parametrize("direct", [False, True])
def test_without_accelerate_a_gpu_model_passes_through_ram(monkeypatch, direct):
    monkeypatch.setattr(mp, "loads_straight_to_gpu", lambda: direct)
    free = FreeMemory(ram=3_000_000, vram=1 << 40)  # less RAM than the 4 MB of float32 weights
    plan = plan_memory(MODEL, PLT, device="cuda", free=free)
    assert plan.loading_ram == (0 if direct else 4_000_000) and plan.fits == direct
    if not direct:
        assert plan.problem.startswith("Not enough RAM to load the model: without accelerate")
        assert "pip install accelerate" in plan.hint and "--dtype bfloat16" in plan.hint


def test_a_huge_graph_gets_a_feature_budget_that_fits():
    # long enough that a budget's rows (over every active feature) cost less than all features' blocks
    run = RunSize(n_tokens=128, max_feature_nodes=None, active_per_token=32)
    need_small = plan_memory(MODEL, PLT, run=dataclasses.replace(run, max_feature_nodes=600), free=PLENTY).needed(RAM)
    plan = plan_memory(MODEL, PLT, run=run, free=FreeMemory(ram=int(need_small * 1.5)))
    assert not plan.fits
    budget = int(plan.hint.split("--max-feature-nodes ")[1].split()[0])
    assert 500 <= budget < plan.n_active
    assert plan_memory(MODEL, PLT, run=dataclasses.replace(run, max_feature_nodes=budget),
                       free=FreeMemory(ram=int(need_small * 1.5))).fits


def test_free_memory_reads_memavailable(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         100 kB\nMemAvailable:    2048 kB\n")
    monkeypatch.setattr(mp, "_MEMINFO", meminfo)
    assert mp.free_memory("cpu") == FreeMemory(ram=2048 * 1024, vram=None)
    monkeypatch.setattr(mp, "_MEMINFO", tmp_path / "absent")
    assert mp.free_memory("cpu").ram is None


def test_plan_lines_give_every_part_and_the_totals():
    lines = plan_memory(MODEL, PLT, run=RunSize(n_tokens=4), free=FreeMemory(ram=8 * GIB)).lines()
    assert lines[0].startswith("model weights: 3.8 MiB of RAM")
    assert lines[-1].startswith("total RAM: ") and lines[-1].endswith("(8.0 GiB free)")


# ---- the command line ----
CASE = Path(__file__).resolve().parents[1] / "fixtures" / "parity_extra" / "llama_relu_skip"
PROMPT = json.loads((CASE / "case.json").read_text())["prompt"]


def _attribute(tmp_path, *extra):
    out = tmp_path / "graph.json"
    return main(["attribute", "--model", str(CASE / "model"), "--transcoders", str(CASE / "transcoders"),
                 "--prompt", PROMPT, "--out", str(out), "--batch-size", "64", *extra]), out


@pytest.fixture
def little_ram(monkeypatch):
    import circuit_studio.core.model.loading as ml

    monkeypatch.setattr(mp, "free_memory", lambda device="cpu": FreeMemory(ram=1 << 10, vram=None))
    loads = []
    real = ml.load_model
    monkeypatch.setattr(ml, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    return loads


def test_attribute_stops_before_loading_when_the_plan_does_not_fit(tmp_path, capsys, little_ram):
    code, out = _attribute(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("circuit-studio: error: Not enough RAM: this run needs about ")
    assert "--force" in err[0] and "1.0 KiB is free" in err[0]
    assert little_ram == [] and not out.exists()  # no weight was read


def test_intervene_stops_too(tmp_path, capsys, little_ram):
    code = main(["intervene", "--model", str(CASE / "model"), "--transcoders", str(CASE / "transcoders"),
                 "--prompt", PROMPT, "--set", "1:2:3=0", "--json", str(tmp_path / "iv.json")])
    assert code == 2 and "Not enough RAM" in capsys.readouterr().err and little_ram == []


def test_force_goes_on_and_offload_changes_nothing_on_the_cpu(tmp_path, little_ram):
    code, _ = _attribute(tmp_path, "--force", "--offload", "cpu", "--device", "cpu", "--npz", str(tmp_path / "g.npz"))
    assert code == 0 and len(little_ram) == 1
    with np.load(tmp_path / "g.npz") as z, np.load(CASE / "reference.npz") as ref:
        np.testing.assert_allclose(z["adjacency_matrix"], ref["adjacency_matrix"], atol=1e-5)
