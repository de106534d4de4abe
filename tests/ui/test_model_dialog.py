"""The model dialog says what it recognised, and the memory it will take, before anything loads."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from circuit_studio.core.model import memory_plan as mp
from circuit_studio.core.model.memory_plan import FreeMemory, format_bytes
from circuit_studio.core.model.loading import describe_model
from circuit_studio.core.synthetic import default_hooks, random_transcoders
from circuit_studio.core.transcoders.loading import describe_transcoders
from circuit_studio.core.transcoders.writing import save_transcoders
from circuit_studio.ui.model_dialog import ModelDialog, transcoder_text

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model_folder):
    root = tmp_path_factory.mktemp("dialog")
    rh, wh = default_hooks("llama")
    tc = random_transcoders(n_layers=2, d_model=64, n_features=96, seed=3, feature_input_hook=rh,
                            feature_output_hook=wh)
    save_transcoders(tc, root / "tc")
    return {"model": tiny_model_folder("llama"), "tc": root / "tc"}


@pytest.fixture
def cpu_with_ram(monkeypatch):
    """The dialog plans for the CPU with 8 GiB free, whatever this machine has."""
    import circuit_studio.ui.model_dialog as md

    free = {"ram": 8 << 30}
    monkeypatch.setattr(md, "default_device", lambda: __import__("torch").device("cpu"))
    monkeypatch.setattr(mp, "free_memory", lambda device="cpu": FreeMemory(ram=free["ram"]))
    return free


def _dialog(qtbot, model="", tc=""):
    dialog = ModelDialog(model=str(model), transcoders=str(tc))
    qtbot.addWidget(dialog)
    return dialog


def test_shows_what_was_recognised_and_the_memory_it_takes(qtbot, folders, cpu_with_ram):
    dialog = _dialog(qtbot, folders["model"], folders["tc"])
    assert dialog.validate()
    m, t = describe_model(folders["model"]), describe_transcoders(folders["tc"])
    plan = dialog.plan
    model_text = dialog.model_info.text()
    for shown in ("LlamaForCausalLM (llama)", "2 layers", "d_model 64", f"{m.n_parameters / 1e3:.1f}k parameters",
                  "stored as float32", f"{format_bytes(m.size_bytes)} on disk",
                  f"takes {format_bytes(m.n_parameters * 4)} of RAM"):
        assert shown in model_text, (shown, model_text)
    tc_text = dialog.tc_info.text()
    resident = plan.part("transcoders").nbytes
    for shown in ("JumpReLU per-layer transcoders", "width 96", "2 layers", "float32",
                  f"{format_bytes(t.size_bytes)} on disk", f"takes {format_bytes(resident)} of RAM"):
        assert shown in tc_text, (shown, tc_text)
    memory = dialog.memory_info.text()
    assert memory.startswith("Tracing a 64-token prompt on the CPU in float32")
    assert f"in all RAM: {format_bytes(plan.needed(mp.RAM))} (8.0 GiB free)" in memory
    assert "Not enough" not in memory and dialog.memory_info.styleSheet() == ""


def test_warns_when_it_will_not_fit_but_lets_the_user_try(qtbot, folders, cpu_with_ram):
    cpu_with_ram["ram"] = 1 << 20
    dialog = _dialog(qtbot, folders["model"], folders["tc"])
    assert dialog.validate()  # an estimate: OK stays enabled
    memory = dialog.memory_info.text()
    assert "Not enough RAM: this run needs about" in memory and "1.0 MiB is free" in memory
    assert "From the command line: Try " in memory and "b00020" in dialog.memory_info.styleSheet()


def test_accepts_a_repo_id_from_the_local_cache(qtbot, folders, cpu_with_ram, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--org--tiny-llama"
    shutil.copytree(folders["model"], repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    dialog = _dialog(qtbot, "org/tiny-llama", folders["tc"])
    assert dialog.validate() and "LlamaForCausalLM" in dialog.model_info.text()
    dialog.model_field.edit.setText("org/not-there")
    assert not dialog.validate()
    assert "huggingface-cli download org/not-there" in dialog.model_info.text()


def test_top_k_transcoders_show_their_k(folders):
    summary = describe_transcoders(folders["tc"])
    text = transcoder_text(dataclasses.replace(summary, activation="TopK", k=32))
    assert "TopK k=32 per-layer transcoders" in text
