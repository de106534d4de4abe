"""Attribution speed on a medium, Llama-shaped random model (seeded, nothing downloaded).

Model: 8 layers, d_model 512, 8 heads, MLP 2048, vocab 4096. Transcoders: per-layer JumpReLU, width
4096, b_enc = 0 and thresholds calibrated on 64 random 24-token sequences to about 45 active features
per token and layer (circuit-tracer's own benchmark recipe). Prompt: circuit-tracer's benchmark
prompt (25 words + BOS = 26 tokens). batch_size 256, no feature budget.

Prints the time of each phase, the whole `circuit-studio attribute` command (a fresh process:
imports, loading, attribution, pruning, JSON) and the peak memory.

    python benchmarks/attribution.py [--threads 2] [--device cpu|cuda] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "desktop"))

import torch  # noqa: E402

from circuit_studio.core.attribution import attribute  # noqa: E402
from circuit_studio.core.graph import AttributionParams  # noqa: E402
from circuit_studio.core.model_loading import load_model  # noqa: E402
from circuit_studio.core.pruning import graph_scores, prune_graph  # noqa: E402
from circuit_studio.core.synthetic import (  # noqa: E402
    MEDIUM_DIMS, build_model, build_model_folder, calibrate_thresholds, mlp_read_inputs, random_transcoders)
from circuit_studio.core.transcoder_loading import load_transcoders  # noqa: E402
from circuit_studio.core.transcoder_writing import save_transcoders  # noqa: E402

PROMPT = ("the capital of Texas is Austin and the capital of France is Paris and the big red "
          "dog is on the ship at the sea")
WIDTH, ACTIVE_PER_TOKEN, SEED = 4096, 45, 11


def build(folder: Path) -> tuple[Path, Path]:
    model_dir = build_model_folder("llama", folder / "model", dims=MEDIUM_DIMS, seed=SEED)
    model = build_model("llama", dims=MEDIUM_DIMS, seed=SEED)
    g = torch.Generator().manual_seed(SEED + 1)
    calib = torch.randint(4, MEDIUM_DIMS.vocab, (64, 24), generator=g)
    calib[:, 0] = 1
    reads = [r.view(64, 24, -1)[:, 1:].reshape(-1, r.shape[-1]) for r in mlp_read_inputs(model, "llama", calib)]
    tc = random_transcoders(n_layers=MEDIUM_DIMS.n_layers, d_model=MEDIUM_DIMS.d_model, n_features=WIDTH,
                            feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out", seed=SEED)
    tc = calibrate_thresholds(tc, reads, ACTIVE_PER_TOKEN)
    tc_dir = save_transcoders(tc, folder / "transcoders")
    return model_dir, tc_dir


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--keep", type=Path, help="build into this folder and keep it (reused if present)")
    ap.add_argument("--no-cli", action="store_true", help="skip timing the whole command in a fresh process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = None
    folder = args.keep or Path(tmp := tempfile.mkdtemp(prefix="cs_bench_"))
    t0 = time.perf_counter()
    if not (folder / "transcoders" / "config.yaml").exists():
        build(folder)
    print(f"build model + transcoders     {time.perf_counter() - t0:7.2f} s   ({folder})")

    t0 = time.perf_counter()
    bundle = load_model(folder / "model", device=args.device)
    print(f"load model                    {time.perf_counter() - t0:7.2f} s")
    t0 = time.perf_counter()
    tc = load_transcoders(folder / "transcoders", device=bundle.device)
    print(f"load transcoders              {time.perf_counter() - t0:7.2f} s")

    params = AttributionParams(batch_size=args.batch_size)
    graph = attribute(PROMPT, bundle, tc, params)
    s = graph.provenance["seconds"]
    n_active = graph.active_features.shape[0]
    per_token = n_active / (MEDIUM_DIMS.n_layers * (graph.n_pos - 1))
    print(f"prompt: {graph.n_pos} tokens; {n_active} active features ({per_token:.1f} per token per layer); "
          f"{graph.n_logits} logits; N = {graph.n_nodes}")
    print(f"attribution: forward pass     {s['forward']:7.2f} s")
    print(f"attribution: logit rows       {s['logit_rows']:7.2f} s")
    print(f"attribution: feature rows     {s['feature_rows']:7.2f} s")
    print(f"attribution: total            {s['total']:7.2f} s")
    t0 = time.perf_counter()
    pruned = prune_graph(graph, 0.8, 0.98)
    t1 = time.perf_counter()
    graph_scores(graph)
    t2 = time.perf_counter()
    print(f"pruning                       {t1 - t0:7.2f} s   (kept {pruned.n_nodes} nodes, "
          f"{int(pruned.edge_mask.sum())} edges)")
    print(f"scores                        {t2 - t1:7.2f} s")
    print(f"peak memory (RSS)             {peak_rss_gib():7.2f} GiB")
    if args.device == "cuda":
        print(f"peak CUDA memory              {torch.cuda.max_memory_allocated() / 2**30:7.2f} GiB")

    if not args.no_cli:
        out = folder / "graph.json"
        cmd = [sys.executable, "-m", "circuit_studio.cli", "attribute", "--model", str(folder / "model"),
               "--transcoders", str(folder / "transcoders"), "--prompt", PROMPT, "--out", str(out),
               "--batch-size", str(args.batch_size), "--max-feature-nodes", "0", "--device", args.device]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "desktop"),
               "OMP_NUM_THREADS": str(args.threads)}
        t0 = time.perf_counter()
        res = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd] if Path("/usr/bin/time").exists() else cmd,
                             env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            print(res.stderr)
            raise SystemExit("the command failed")
        rss = res.stderr.strip().splitlines()[-1] if Path("/usr/bin/time").exists() else "?"
        print(f"whole `circuit-studio attribute` command: {wall:.2f} s wall, peak RSS "
              f"{int(rss) / 2**20:.2f} GiB" if rss.isdigit() else f"whole command: {wall:.2f} s")
        json.loads(out.read_text())  # the command wrote a readable graph
    if tmp:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
