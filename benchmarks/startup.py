"""Start-up: how long until Circuit Studio can be used.

* the window (`circuit-studio` with no arguments, on the bundled demo, Qt offscreen): time from
  process start to the window shown with its prompt field accepting input; to a prompt typed then
  being accepted (Trace pressed: the trace is queued or started); to the demo loaded; and to that
  first prompt's graph on screen;
* the command line: `import circuit_studio.cli`, `circuit-studio --help`, and for
  `circuit-studio attribute` on the medium benchmark model the time to its first line of work
  ("Loading model") and to the forward pass.

Every figure is the best of --repeat fresh processes (start-up is what a fresh process pays).

    python benchmarks/startup.py [--repeat 3] [--skip-window] [--skip-cli] [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DESKTOP = HERE.parent / "desktop"

# runs `circuit-studio` (no arguments) and reports, as "T name seconds-since-process-start" lines, when
# the window shows, accepts a prompt, has the demo loaded and shows the first prompt's graph
WINDOW_CHILD = textwrap.dedent('''
    import os, sys, time
    t_spawn = float(sys.argv[1])
    def mark(name):
        print(f"T {name} {time.time() - t_spawn:.3f}", flush=True)
    mark("python")
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication
    exec_ = QApplication.exec
    state = {"traced": False, "demo": False}

    def window():
        return next((w for w in QApplication.topLevelWidgets() if type(w).__name__ == "MainWindow"), None)

    def probe():
        w = window()
        if w is None or not w.isVisible():
            return QTimer.singleShot(5, probe)
        bar = w.prompt_bar
        if "shown" not in state:
            state["shown"] = True
            mark("window shown")
        if not (bar.prompt.isEnabled() and bar.prompt.lineEdit().isEnabled()):
            return QTimer.singleShot(5, probe)
        if not state["traced"]:
            mark("prompt field accepts input")
            bar.prompt.setEditText("the capital of Texas is")
            errors = []
            w.controller.error.connect(lambda *a: errors.append(a))
            bar.trace()
            state["traced"] = True
            mark("prompt accepted" if not errors else "prompt refused")
        c = w.controller
        ws = c.workspace
        if not state["demo"] and ws.resource(ws.active.model) is not None and ws.resource(ws.active.transcoders) is not None:
            state["demo"] = True
            mark("demo loaded")
        if ws.current_id is not None:
            mark("first graph shown")
            os._exit(0)  # measured: no teardown (the compute thread may still be busy)
        QTimer.singleShot(20, probe)

    def exec_hook(*a):
        QTimer.singleShot(0, probe)
        QTimer.singleShot(120_000, QApplication.instance().quit)
        return exec_()

    QApplication.exec = exec_hook
    from circuit_studio.cli import main
    main([])
''')


def _attribution_benchmark():
    spec = importlib.util.spec_from_file_location("bench_attribution", HERE / "attribution.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(tmp_home: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(DESKTOP), "HF_HUB_OFFLINE": "1", "QT_QPA_PLATFORM": "offscreen"}
    if tmp_home is not None:  # a fresh settings / autosave folder: no recovery prompt, no recent files
        env.update(HOME=str(tmp_home), XDG_CONFIG_HOME=str(tmp_home / ".config"),
                   XDG_DATA_HOME=str(tmp_home / ".local/share"), XDG_CACHE_HOME=str(tmp_home / ".cache"))
    return env


def window_times(repeat: int) -> dict[str, float]:
    import tempfile

    best: dict[str, float] = {}
    for _ in range(repeat):
        home = Path(tempfile.mkdtemp(prefix="cs_startup_home_"))
        res = subprocess.run([sys.executable, "-c", WINDOW_CHILD, repr(time.time())], env=_env(home),
                             capture_output=True, text=True, timeout=300)
        marks = {}
        for line in res.stdout.splitlines():
            if line.startswith("T "):
                name, value = line[2:].rsplit(" ", 1)
                marks.setdefault(name, float(value))
        if res.returncode != 0 or "first graph shown" not in marks:
            print(res.stdout[-2000:], res.stderr[-3000:])
            raise SystemExit("the window run failed")
        for k, v in marks.items():
            best[k] = min(best.get(k, v), v)
    return best


def wall(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0


def cli_times(repeat: int, folder: Path) -> dict[str, float]:
    env = _env()
    out: dict[str, float] = {}
    out["python -c pass"] = min(wall([sys.executable, "-c", "pass"], env) for _ in range(repeat))
    out["import circuit_studio.cli"] = min(wall([sys.executable, "-c", "import circuit_studio.cli"], env)
                                           for _ in range(repeat))
    out["circuit-studio --help"] = min(wall([sys.executable, "-m", "circuit_studio.cli", "--help"], env)
                                       for _ in range(repeat))
    out["circuit-studio attribute --help"] = min(
        wall([sys.executable, "-m", "circuit_studio.cli", "attribute", "--help"], env) for _ in range(repeat))
    bench = _attribution_benchmark()
    if not (folder / "transcoders" / "config.yaml").exists():
        bench.build(folder)
    cmd = [sys.executable, "-u", "-m", "circuit_studio.cli", "attribute", "--model", str(folder / "model"),
           "--transcoders", str(folder / "transcoders"), "--prompt", bench.PROMPT, "--out", str(folder / "s.json"),
           "--max-feature-nodes", "0"]
    firsts: dict[str, float] = {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        for line in proc.stderr:  # not a terminal: one line per phase, "Phase... (elapsed)"
            phase = line.split("...")[0].strip()
            firsts.setdefault(phase, time.perf_counter() - t0)
            t = time.perf_counter() - t0
            firsts[phase] = min(firsts[phase], t)
        proc.wait()
        firsts["done"] = min(firsts.get("done", 1e9), time.perf_counter() - t0)
    for phase, t in firsts.items():
        out[f"attribute: {phase}"] = t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-window", action="store_true")
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--keep", type=Path, help="medium benchmark folder (built if missing)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    bench = _attribution_benchmark()
    print(f"machine: {bench.machine_load()}")
    report: dict = {}
    if not args.skip_window:
        report["window"] = window_times(args.repeat)
        print("window (`circuit-studio`, the demo, offscreen), seconds from process start:")
        for k, v in report["window"].items():
            print(f"  {k:<28}{v:7.2f}")
    if not args.skip_cli:
        import tempfile

        folder = args.keep or Path(tempfile.mkdtemp(prefix="cs_startup_"))
        report["cli"] = cli_times(args.repeat, folder)
        print("command line, seconds from process start:")
        for k, v in report["cli"].items():
            print(f"  {k:<40}{v:7.2f}")
    print(f"machine: {bench.machine_load()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
