"""Layering rules: `circuit_studio.core` is GUI-free and never prints."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

DESKTOP = Path(__file__).resolve().parents[1] / "desktop"
CORE = DESKTOP / "circuit_studio" / "core"
GUI_MODULES = ("PySide6", "shiboken6", "pyqtgraph")

_PROBE = f"""
import importlib, pkgutil, sys
import circuit_studio.core as core
names = [m.name for m in pkgutil.walk_packages(core.__path__, core.__name__ + ".")]
for name in names:
    importlib.import_module(name)
bad = [m for m in {GUI_MODULES!r} if m in sys.modules]
print("IMPORTED", len(names), "GUI", ",".join(bad))
"""


def test_core_imports_without_qt():
    env = dict(os.environ, PYTHONPATH=str(DESKTOP), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    line = [l for l in res.stdout.splitlines() if l.startswith("IMPORTED")][-1]
    assert line.endswith("GUI "), f"core pulled in GUI modules: {line}"


def _print_calls(source: str) -> list[int]:
    """Line numbers of `print(` calls (tokens, so strings, comments and `.print(` don't count)."""
    try:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]
    except (tokenize.TokenError, SyntaxError):  # unparsable file: fall back to a plain grep
        return [i for i, l in enumerate(source.splitlines(), 1) if re.search(r"\bprint\s*\(", l)]
    return [t.start[0] for prev, t, nxt in zip([None] + toks, toks, toks[1:] + [None])
            if t.type == tokenize.NAME and t.string == "print" and nxt is not None
            and nxt.string == "(" and not (prev is not None and prev.string == ".")]


def test_core_never_prints():
    offenders = {str(p.relative_to(CORE)): lines for p in sorted(CORE.rglob("*.py"))
                 if (lines := _print_calls(p.read_text(encoding="utf-8")))}
    assert not offenders, f"print( calls in core (report via callbacks/exceptions): {offenders}"


def test_print_detector():
    assert _print_calls("x = 1\nprint(x)\n") == [2]
    assert _print_calls("s = 'print(x)'  # print(y)\nlog.print(z)\nfingerprint(1)\n") == []


UI = DESKTOP / "circuit_studio" / "ui"


def test_ui_never_imports_torch():
    """The window presents and delegates: computation (and torch) stays in core."""
    pattern = re.compile(r"^\s*(import torch\b|from torch\b)", re.MULTILINE)
    offenders = sorted(str(p.relative_to(UI)) for p in UI.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8")))
    assert not offenders, f"torch imported under ui/ (move the computation to core): {offenders}"


_NO_TORCH_PROBE = """
import importlib, pkgutil, sys
import circuit_studio.core.{package} as package
names = [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print("IMPORTED", len(names), "HEAVY", ",".join(m for m in ("torch", "transformers") if m in sys.modules))
"""


@pytest.mark.parametrize("package", ["graph", "session"])
def test_graph_and_session_import_without_torch(package):
    """A graph or a session file can be read, pruned and exported by a script with numpy alone."""
    env = dict(os.environ, PYTHONPATH=str(DESKTOP), HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", _NO_TORCH_PROBE.format(package=package)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    line = [l for l in res.stdout.splitlines() if l.startswith("IMPORTED")][-1]
    assert int(line.split()[1]) > 3 and line.endswith("HEAVY "), f"core.{package} pulled in torch: {line}"


def test_core_is_grouped_by_concept():
    """Modules live in the subpackage of their concept; only cross-cutting helpers stay at the top."""
    top = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")
    assert top == ["atomic_write", "errors", "processes", "progress", "synthetic", "text_input"], top
