"""Check that a folder Circuit Studio exports opens in circuit-tracer 0.5.0's own web frontend.

Not part of the test suite: it needs Chromium, the circuit-tracer wheel (for its `frontend/assets`,
which is not installed into this environment) and d3 / dagre / pako from npm. Run:

    pip download --no-deps circuit-tracer==0.5.0 -d /tmp/ct && unzip -o /tmp/ct/*.whl -d /tmp/ct/whl
    (mkdir -p /tmp/npm && cd /tmp/npm && npm pack d3-jetpack dagre@0.8.5 pako@2.1.0 && \
        for f in *.tgz; do mkdir -p x/${f%.tgz}; tar xzf $f -C x/${f%.tgz}; done)
    python docs/check_frontend.py --frontend /tmp/ct/whl/circuit_tracer/frontend/assets --npm /tmp/npm/x

What it does:
1. writes an export folder (`--out`, default a temporary one): `circuit-studio attribute` on a parity
   case (slug `cli_graph`: `<slug>.json` + `graph-metadata.json`), and the same case's reference
   JSON imported, given pins, a supernode and a label, and exported again with `write_graph_files`
   (slug `with_analysis`);
2. lays out what `circuit-tracer start-server` serves: the frontend assets at `/`, the folder at
   `/data/` and `/graph_data/`, with the CDN scripts of `index.html` replaced by the npm copies
   (d3 v7 + d3-jetpack bundle, dagre 0.8.5, pako 2.1.0; the hot-reload client and npy loader are
   stubbed: the graph view needs neither);
3. serves it with `python -m http.server` on 127.0.0.1 only, loads each slug in headless Chromium
   (`--dump-dom` and `--screenshot`), and checks that the graph's nodes are in the DOM (`text.node`
   per node in the link graph), that the label and supernode name are shown, and that the screenshot
   is not blank. Screenshots are left in the output folder. Exit status 0 when all checks pass.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
CASE = REPO.parent / "shared" / "parity" / "cases" / "gemma3_plt"
LABEL, GROUP = "CHECK-LABEL-Texas", "CHECK-GROUP"
CDN = {
    "hotserver-client-ws.js": None, "d3.js": "d3-jetpack-*/package/build/d3v7+jetpack.js",
    "jetpack_2024-07-20.js": None, "npy_v0.js": None, "dagre.min.js": "dagre-*/package/dist/dagre.min.js",
    "pako.min.js": "pako-*/package/dist/pako.min.js",
}

# transformer-circuits' jetpack_2024-07-20.js is d3-jetpack plus a few conveniences; the one the frontend
# uses that d3-jetpack 2.3.0 lacks is `c.drawAxis()` on what `d3.conventions` returns
SHIMS = {"jetpack_2024-07-20.js": """/* check_frontend.py: jetpack_2024 compatibility on top of d3-jetpack 2.3.0 */
(function () {
  var conventions = d3.conventions;
  d3.conventions = function (opts) {
    var c = conventions(opts);
    if (!c.drawAxis) c.drawAxis = function () { return d3.drawAxis(c); };
    return c;
  };
})();
"""}


def export_folder(out: Path) -> None:
    sys.path.insert(0, str(REPO / "desktop"))
    from circuit_studio.cli import main
    from circuit_studio.core.graph.export import analysis_options, write_graph_files
    from circuit_studio.core.graph.attribution_graph import NodeKind
    from circuit_studio.core.graph.import_json import load_graph_json

    case = json.loads((CASE / "case.json").read_text())
    code = main(["attribute", "--model", str(CASE / "model"), "--transcoders", str(CASE / "transcoders"),
                 "--prompt", case["prompt"], "--out", str(out / "cli_graph.json"), "--batch-size", "64"])
    if code != 0:
        raise SystemExit(f"circuit-studio attribute failed ({code})")
    a = load_graph_json(CASE / "reference_graph.json").analysis()
    feats = [n for n in range(a.graph.n_nodes) if a.pruned.node_mask[n] and a.graph.kind_of(n) is NodeKind.FEATURE]
    for n in feats[:3]:
        a.toggle_pin(n)
    a.group(feats[1:3], GROUP)
    a.set_label(feats[0], LABEL)
    write_graph_files(out, a.graph, a.pruned, slug="with_analysis", **analysis_options(a))


def serve_tree(frontend: Path, npm: Path, data: Path, root: Path) -> None:
    shutil.copytree(frontend, root, dirs_exist_ok=True)
    lib = root / "lib"
    lib.mkdir(exist_ok=True)
    html = (root / "index.html").read_text()
    for name, pattern in CDN.items():
        target = lib / name
        if pattern is None:
            target.write_text(SHIMS.get(name, f"/* {name}: stubbed by check_frontend.py */\n"))
        else:
            found = sorted(npm.glob(pattern))
            if not found:
                raise SystemExit(f"{pattern} not found under {npm} (npm pack it, see the docstring)")
            shutil.copy(found[-1], target)
            if name == "d3.js":
                target.write_text(_fix_jetpack_bundle(target.read_text()))
        html = re.sub(r"src='https://[^']*/" + re.escape(name) + "'", f"src='./lib/{name}'", html)
    if "https://" in re.sub(r"<a [^>]*>", "", html):
        print("note: index.html still names remote URLs:", re.findall(r"https://[^'\"]+", html))
    (root / "index.html").write_text(html)
    for mount in ("data", "graph_data"):
        shutil.copytree(data, root / mount, dirs_exist_ok=True)


def _fix_jetpack_bundle(js: str) -> str:
    """d3-jetpack 2.3.0's `d3v7+jetpack.js` patches its own copy of d3-selection / d3-transition, not
    the `d3.selection` it exports (so `append('div.cls')`, `.at`, `.st`, `appendMany` are missing in a
    browser); copy the methods over at the end of the bundle."""
    fix = """
  [selection, transition].forEach(function (src, i) {
    var dst = i ? transition$1.prototype : selection$1.prototype;
    Object.getOwnPropertyNames(src.prototype).forEach(function (k) {
      if (k !== 'constructor') dst[k] = src.prototype[k];
    });
  });
"""
    end = js.rstrip().rfind("}));")
    if end < 0 or "selection$1" not in js:
        raise SystemExit("unexpected d3v7+jetpack.js layout")
    return js[:end] + fix + js[end:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    raise SystemExit("Chromium not found (apt-get install -y chromium)")


def browse(url: str, shot: Path) -> str:
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1400,1000", "--virtual-time-budget=15000", "--run-all-compositor-stages-before-draw"]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    subprocess.run(flags + [f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    return dom


def colours(shot: Path) -> int:
    from PySide6.QtGui import QImage

    img = QImage(str(shot))
    if img.isNull():
        return 0
    return len({img.pixel(x, y) for x in range(0, img.width(), 5) for y in range(0, img.height(), 5)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frontend", type=Path, required=True, help="circuit_tracer/frontend/assets of the 0.5.0 wheel")
    ap.add_argument("--npm", type=Path, required=True, help="folder with the unpacked npm packages")
    ap.add_argument("--out", type=Path, default=None, help="export folder (default: a temporary one)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="cs-frontend-"))
    out.mkdir(parents=True, exist_ok=True)
    export_folder(out)
    root = Path(tempfile.mkdtemp(prefix="cs-serve-"))
    serve_tree(args.frontend, args.npm, out, root)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = True
    try:
        time.sleep(1.0)
        for slug in ("cli_graph", "with_analysis"):
            doc = json.loads((out / f"{slug}.json").read_text())
            shot = out / f"screenshot_{slug}.png"
            url = f"http://127.0.0.1:{port}/index.html?slug={slug}"
            if doc["qParams"]["supernodes"]:
                # circuit-tracer 0.5.0's init-cg.js replaces qParams.supernodes by the URL's `supernodes`
                # (`[]` when absent: `if (urlSupernodes)` is true for an empty list), so the file's own
                # supernodes never show there; hand the same list over in the URL, as its UI would
                url += "&supernodes=" + quote(json.dumps(doc["qParams"]["supernodes"]))
            dom = browse(url, shot)
            n_text_nodes = len(re.findall(r'<text[^>]*class="node', dom))
            checks = {"graph nodes in the DOM": n_text_nodes >= len(doc["nodes"]) // 2,
                      "screenshot not blank": colours(shot) > 20}
            if slug == "with_analysis":
                checks["label shown"] = LABEL in dom
                checks["supernode shown"] = GROUP in dom
            print(f"{slug}: {len(doc['nodes'])} nodes / {len(doc['links'])} links in the JSON; "
                  f"{n_text_nodes} text.node in the DOM; {colours(shot)} colours in {shot}")
            for what, good in checks.items():
                print(f"  {'ok ' if good else 'FAIL'} {what}")
                ok &= good
    finally:
        server.terminate()
        server.wait(10)
    print("export folder:", out)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
