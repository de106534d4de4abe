"""Every bad input gets one line saying what is wrong and what to do, exit status 2 on the command line,
and leaves nothing behind: each test lists the output folder afterwards.

Full disks are simulated by making one write (or rename) raise ENOSPC, the way a real full disk
fails; a locked session by another sqlite3 connection holding a write transaction on the file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from circuit_studio.cli import main
from circuit_studio.core import atomic_write
from circuit_studio.core.graph import attribution_graph as graph_module
from circuit_studio.core.transcoders import writing as transcoder_writing
from circuit_studio.core.errors import PromptError
from circuit_studio.core.session.store import SessionLockedError, load_session, save_session

CASE = Path(__file__).resolve().parent / "fixtures" / "parity_extra" / "llama_relu_skip"
MODEL, TRANSCODERS = CASE / "model", CASE / "transcoders"
PROMPT = json.loads((CASE / "case.json").read_text())["prompt"]
DESKTOP = Path(__file__).resolve().parents[1] / "desktop"


def _enospc(path=None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([str(path)] if path else []))


@pytest.fixture
def out(tmp_path) -> Path:
    """An empty output folder: after a failure it must still be empty."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if the model or the transcoders get loaded: the input should be refused before."""
    from circuit_studio.core.model import loading as model_loading
    from circuit_studio.core.transcoders import loading as transcoder_loading

    def loaded(*args, **kwargs):
        raise AssertionError("the bad input was only noticed after loading")

    monkeypatch.setattr(model_loading, "load_model", loaded)
    monkeypatch.setattr(transcoder_loading, "load_transcoders", loaded)


def _fails(capsys, argv: list[str], message: str) -> str:
    """Run the command line: exit status 2 and one line `circuit-studio: error: ...` holding `message`."""
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("circuit-studio:")]
    assert len(err) == 1 and err[0].startswith("circuit-studio: error: "), err
    assert message in err[0], err[0]
    assert "Traceback" not in err[0]
    return err[0]


def _attribute(out: Path, *extra: str, prompt: str = PROMPT) -> list[str]:
    return ["attribute", "--model", str(MODEL), "--transcoders", str(TRANSCODERS), "--prompt", prompt,
            "--out", str(out / "graph.json"), "--batch-size", "64", *extra]


def _intervene(out: Path, *extra: str) -> list[str]:
    return ["intervene", "--model", str(MODEL), "--transcoders", str(TRANSCODERS), "--prompt", PROMPT,
            "--json", str(out / "iv.json"), "--set", "1:2:3=0", *extra]


# ---- the rows of the issue ----

def test_prompt_bytes_that_are_not_utf8_on_the_command_line(out):
    argv = [sys.executable, "-m", "circuit_studio.cli", "attribute", "--model", str(MODEL), "--transcoders",
            str(TRANSCODERS), "--prompt", b"caf\xe9 au lait", "--out", str(out / "graph.json")]
    res = subprocess.run(argv, capture_output=True, env=dict(os.environ, PYTHONPATH=str(DESKTOP)), timeout=120)
    err = res.stderr.decode("utf-8", "backslashreplace").strip().splitlines()
    assert res.returncode == 2, err
    assert err == ["circuit-studio: error: The prompt is not UTF-8 text: byte 0xE9 at character 3 is not valid "
                   "UTF-8. Give the prompt as UTF-8 text (check the encoding of the terminal or of the file it came "
                   "from)."]
    assert list(out.iterdir()) == []


@pytest.fixture(scope="module")
def bundle():
    from circuit_studio.core.model.loading import load_model

    return load_model(MODEL, device="cpu")


@pytest.mark.parametrize("prompt, message", [
    (b"caf\xe9", "byte 0xE9 at byte 3 is not valid UTF-8"),
    ("caf\udce9", "byte 0xE9 at character 3 is not valid UTF-8"),
    ("a\ud800b", "character 1 is an unpaired surrogate (U+D800)"),
])
def test_prompt_that_is_not_utf8_in_the_core_api(bundle, prompt, message):
    from circuit_studio.core.model.loading import tokenize_prompt

    with pytest.raises(PromptError, match="not UTF-8 text") as info:
        tokenize_prompt(bundle, prompt)
    assert message in str(info.value) and "Give the prompt as UTF-8 text" in str(info.value)


def test_prompt_bytes_that_are_utf8_are_text(bundle):
    from circuit_studio.core.model.loading import tokenize_prompt

    assert tokenize_prompt(bundle, PROMPT.encode()).tolist() == tokenize_prompt(bundle, PROMPT).tolist()


@pytest.mark.parametrize("top, message", [("0", "--top must be between 1 and 65 (got 0)."),
                                          ("100000", "--top must be between 1 and 65 (got 100000).")])
def test_intervene_top_out_of_range(capsys, out, no_loading, top, message):
    line = _fails(capsys, _intervene(out, "--top", top), message)
    assert "list at most that many" in line
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("layers", ["x:y", "3", "0:99", "1:1", "-1:2"])
def test_intervene_constrained_layers_not_a_range(capsys, out, no_loading, layers):
    _fails(capsys, _intervene(out, f"--constrained-layers={layers}"),
           f"--constrained-layers {layers!r} is not A:B with 0 <= A < B <= 2. Example: --constrained-layers 0:2")
    assert list(out.iterdir()) == []


def test_intervene_json_on_a_full_disk(capsys, out, monkeypatch):
    real = Path.write_text

    def full(self, data, *args, **kwargs):
        if self.name.startswith(".iv.json."):  # our temporary: part of it gets written, then the disk is full
            real(self, data[:64], *args, **kwargs)
            raise _enospc()
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    _fails(capsys, _intervene(out), f"Not enough disk space to write {out / 'iv.json'}. Free some space or write to "
                                    "another disk; nothing was written.")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("existing", [False, True], ids=["new folder", "replacing a set"])
def test_train_transcoders_on_a_full_disk(capsys, tmp_path, out, monkeypatch, existing):
    if existing:
        shutil.copytree(TRANSCODERS, out / "tc")
    before = {p.name: p.read_bytes() for p in (out / "tc").iterdir()} if existing else None
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\nthe dog ran in the park\nhello world, this is text\n")
    real = transcoder_writing.save_file

    def full(tensors, filename, *args, **kwargs):
        if filename.endswith("layer_1.safetensors"):  # layer 0 fits, layer 1 fills the disk
            Path(filename).write_bytes(b"")
            from safetensors import SafetensorError
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(transcoder_writing, "save_file", full)
    argv = ["train-transcoders", "--model", str(MODEL), "--corpus", str(corpus), "--width", "16", "--steps", "2",
            "--batch-tokens", "16", "--context", "8", "--no-loss", "--out", str(out / "tc")]
    _fails(capsys, argv, f"Not enough disk space to write {out / 'tc'}. Free some space or write to another "
                         "disk; nothing was written.")
    assert [p.name for p in out.iterdir()] == (["tc"] if existing else [])
    if existing:  # the previous set, untouched
        assert {p.name: p.read_bytes() for p in (out / "tc").iterdir()} == before


def test_attribute_npz_on_a_full_disk_leaves_no_json(capsys, out, monkeypatch):
    def full(graph, path, extra=None):
        path.write_bytes(b"PK\x03\x04")  # the start of the zip, then the disk is full
        raise _enospc()

    monkeypatch.setattr(graph_module, "write_graph_npz", full)
    _fails(capsys, _attribute(out, "--npz", str(out / "graph.npz")),
           f"Not enough disk space to write {out / 'graph.json'}, {out / 'graph-metadata.json'} and "
           f"{out / 'graph.npz'}. Free some space")
    assert list(out.iterdir()) == []


def test_attribute_keeps_both_old_files_when_the_second_rename_fails(capsys, out, monkeypatch):
    """All or none even past the writes: the first file already renamed is put back as it was."""
    (out / "graph.json").write_text("old json")
    (out / "graph.npz").write_text("old npz")
    real = os.replace

    def full(src, dst):
        if str(dst).endswith("graph.npz") and str(src).endswith(".tmp"):
            raise _enospc(dst)
        return real(src, dst)

    monkeypatch.setattr(atomic_write.os, "replace", full)
    _fails(capsys, _attribute(out, "--npz", str(out / "graph.npz")),
           f"Not enough disk space to write {out / 'graph.npz'}.")
    assert sorted(p.name for p in out.iterdir()) == ["graph.json", "graph.npz"]
    assert (out / "graph.json").read_text() == "old json" and (out / "graph.npz").read_text() == "old npz"


@pytest.fixture
def session_file(tmp_path) -> tuple[Path, bytes]:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "core"))
    from test_session_store import example_session

    path = tmp_path / "s.cs-session"
    save_session(example_session(), path)
    return path, path.read_bytes()


def test_opening_a_locked_session_says_so_quickly(session_file):
    path, _ = session_file
    other = sqlite3.connect(path, isolation_level=None)
    # a writer in the middle of its commit: readers are shut out (BEGIN IMMEDIATE alone still lets them read)
    other.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.perf_counter()
        with pytest.raises(SessionLockedError) as info:
            load_session(path)
        assert time.perf_counter() - t0 < 2.0, "no five-second wait"
        assert str(info.value) == (f"{path} is open in another program (or another Circuit Studio window) that is "
                                   "writing to it. Close it there or let it finish, then retry; the file was not "
                                   "changed.")
        assert "damaged" not in str(info.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert load_session(path) is not None  # once it lets go, it opens


def test_saving_over_a_session_another_program_writes_is_refused(session_file):
    path, before = session_file
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # an open write transaction
    try:
        t0 = time.perf_counter()
        with pytest.raises(SessionLockedError, match="another program .* has it open and is writing to it"):
            save_session(load_session(path), path)
        assert time.perf_counter() - t0 < 2.0
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    save_session(load_session(path), path)  # once it lets go, it saves


def test_free_space_check_uses_the_real_size(session_file, monkeypatch):
    path, before = session_file
    session = load_session(path)
    size = len(before)
    assert 60_000 < size < 200_000, "a small session, like the 127 KB one of the report"
    # new files, so each save writes the whole session (saving onto an unchanged file writes nothing)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=10**9, used=0, free=1_900_000))
    save_session(session, path.with_name("copy.cs-session"))  # 1.9 MB free is plenty
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=10**9, used=0, free=size // 2))
    with pytest.raises(Exception, match="needs about") as info:
        save_session(session, path.with_name("other.cs-session"))
    need_mb = float(str(info.value).split("needs about ")[1].split(" MB")[0])
    assert size / 2**20 <= need_mb <= 1.35 * size / 2**20 + 0.05, "the estimate is the file's size, not 2 MB more"


def test_batch_size_zero_is_refused_before_loading(capsys, out, no_loading):
    _fails(capsys, _attribute(out, "--batch-size", "0"), "--batch-size must be at least 1 (got 0).")
    assert list(out.iterdir()) == []


# ---- the same kinds of problem in the other options and outputs ----

@pytest.mark.parametrize("extra, message", [
    (("--desired-logit-prob", "0"), "--desired-logit-prob must be greater than 0 and at most 1 (got 0.0)."),
    (("--desired-logit-prob", "nan"), "--desired-logit-prob must be greater than 0 and at most 1 (got nan)."),
    (("--max-n-logits", "0"), "--max-n-logits must be at least 1 (got 0)."),
    (("--edge-threshold", "inf"), "--edge-threshold must be between 0 and 1 (got inf)."),
])
def test_attribute_numeric_options(capsys, out, no_loading, extra, message):
    _fails(capsys, _attribute(out, *extra), message)
    assert list(out.iterdir()) == []


def test_attribute_outputs_that_cannot_be_written(capsys, out, no_loading):
    _fails(capsys, _attribute(out, "--npz", str(out / "graph.json")), "--out and --npz are the same file")
    (out / "folder.npz").mkdir()
    _fails(capsys, _attribute(out, "--npz", str(out / "folder.npz")), "it is a folder. Give a file name.")
    assert [p.name for p in out.iterdir()] == ["folder.npz"]


@pytest.mark.parametrize("extra, message", [
    (("--generate", "-1"), "--generate must be at least 0 (got -1)."),
    (("--set", "0:1:2=nan"), "--set '0:1:2=nan': value 'nan' is not a finite number."),
    (("--set", "0:1=0"), "--set '0:1=0' is not LAYER:POS:FEATURE=VALUE. Example: --set 1:7:42=0"),
    (("--set", "0:5:3:2=0"), "--set '0:5:3:2=0': positions 5:3 hold no position. Give START:END with START < END"),
])
def test_intervene_other_options(capsys, out, no_loading, extra, message):
    _fails(capsys, _intervene(out, *extra), message)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    (("--width", "0"), "--width must be at least 1 (got 0)."),
    (("--lr", "0"), "--lr must be greater than 0 (got 0.0)."),
    (("--l0-coefficient", "inf"), "--l0-coefficient must be at least 0 (got inf)."),
    (("--context", "1"), "--context must be at least 2 (got 1)."),
    (("--batch-tokens", "0"), "--batch-tokens must be at least 1 (got 0)."),
    (("--seed", "-1"), "--seed must be between 0 and 18446744073709551615 (got -1)."),
    (("--skip", "--kind", "clt"), "--skip works only with per-layer transcoders"),
])
def test_train_transcoders_options(capsys, tmp_path, out, no_loading, extra, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n")
    argv = ["train-transcoders", "--model", str(MODEL), "--corpus", str(corpus), "--width", "16",
            "--out", str(out / "tc"), *extra]
    _fails(capsys, argv, message)
    assert list(out.iterdir()) == []


def test_train_transcoders_report_is_part_of_the_folder(capsys, tmp_path, out):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\nthe dog ran in the park\n")
    argv = ["train-transcoders", "--model", str(MODEL), "--corpus", str(corpus), "--width", "16", "--steps", "2",
            "--batch-tokens", "16", "--context", "8", "--no-loss", "--out", str(out / "tc")]
    assert main(argv) == 0
    assert sorted(p.name for p in (out / "tc").iterdir()) == ["config.yaml", "layer_0.safetensors",
                                                             "layer_1.safetensors", "training_report.md"]
    assert [p.name for p in out.iterdir()] == ["tc"]


@pytest.mark.parametrize("extra, message", [
    (("--context", "9999"), "--context must be at most 128 (got 9999). model reads at most 128 tokens; use --context "
                            "128 or less."),
    (("--top-k", "0"), "--top-k must be at least 1 (got 0)."),
    (("--max-windows", "0"), "--max-windows must be at least 1 (got 0)."),
])
def test_index_features_options(capsys, tmp_path, out, no_loading, extra, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n")
    argv = ["index-features", "--model", str(MODEL), "--transcoders", str(TRANSCODERS), "--corpus", str(corpus),
            "--out", str(out / "index.sqlite"), *extra]
    _fails(capsys, argv, message)
    assert list(out.iterdir()) == []


def test_index_features_will_not_replace_another_file(capsys, tmp_path, no_loading):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n")
    argv = ["index-features", "--model", str(MODEL), "--transcoders", str(TRANSCODERS), "--corpus", str(corpus),
            "--out", str(corpus)]
    _fails(capsys, argv, "exists and is not a feature index; not replacing it.")
    assert corpus.read_text() == "some text\n"


def test_option_that_is_not_a_number_is_one_line(capsys, out):
    with pytest.raises(SystemExit) as info:
        main(_intervene(out, "--top", "abc"))
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "circuit-studio: error: argument --top: invalid int value: 'abc'. See `circuit-studio intervene --help`."]
    assert list(out.iterdir()) == []


def test_slug_that_is_not_utf8(capsys, out, no_loading):
    _fails(capsys, _attribute(out, "--slug", "caf\udce9"), "--slug is not UTF-8 text: byte 0xE9 at character 3")
    assert list(out.iterdir()) == []
