"""Attribution speed on a medium, Llama-shaped random model (seeded, nothing downloaded).

Model: 8 layers, d_model 512, 8 heads, MLP 2048, vocab 4096. Transcoders: per-layer JumpReLU, width
4096, b_enc = 0 and thresholds calibrated on 64 random 24-token sequences to about 45 active features
per token and layer (circuit-tracer's own benchmark recipe). Prompt: circuit-tracer's benchmark
prompt (25 words + BOS = 26 tokens), or that prompt continued to 64 or 128 tokens (`--tokens`).
batch_size 256, no feature budget unless `--budget N`.

Prints the time of each phase; for the feature-row phase the multiply-adds the exact answer needs
(counted from the real rows: each row's edge products with every source at or before its position
in lower layers, and the frozen transpose from its read point down, one position wide until its
first attention step, causal patterns), those we did, this machine's matmul rate (an [8192, 512] x
[512, 512] float32 product with the same threads) and so the exact-work floor; then the whole
`circuit-studio attribute` command (a fresh process: imports, loading, attribution, pruning, JSON)
and its peak memory. It says when other work was loading the machine (1-minute load average,
benchmark processes of others), since every figure is then a slower one.

    python benchmarks/attribution.py [--tokens 26|64|128] [--budget 7500] [--threads 2]
        [--device cpu|cuda] [--keep DIR] [--no-cli | --cli-only]
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
DESKTOP = Path(__file__).resolve().parents[1] / "desktop"
sys.path.insert(0, str(DESKTOP))

import torch  # noqa: E402

torch.set_flush_denormal(True)  # before any parallel work, as the command line does (frozen_backward.flush_subnormals)

from circuit_studio.core.attribution.attribute import attribute  # noqa: E402
from circuit_studio.core.attribution.frozen_backward import needed_macs  # noqa: E402
from circuit_studio.core.graph.attribution_graph import AttributionParams  # noqa: E402
from circuit_studio.core.model.loading import load_model  # noqa: E402
from circuit_studio.core.graph.pruning import Pruner  # noqa: E402
from circuit_studio.core.synthetic import (  # noqa: E402
    MEDIUM_DIMS, build_model, build_model_folder, calibrate_thresholds, mlp_read_inputs, random_transcoders)
from circuit_studio.core.transcoders.loading import load_transcoders  # noqa: E402
from circuit_studio.core.transcoders.writing import save_transcoders  # noqa: E402

PROMPT = ("the capital of Texas is Austin and the capital of France is Paris and the big red "
          "dog is on the ship at the sea")
# continues PROMPT for the longer runs (words of the synthetic vocabulary only)
MORE = ("and one plus two equals three and the opposite of hot is cold and Alice is in London with Bob "
        "and the small blue cat is on the river and Mary is in Dallas with John and the state of Texas "
        "is big and the green rabbit is up in the sky and the pirate ship is on the sea and four plus "
        "five equals nine and the opposite of up is down and it is a fact that the city of Paris is in "
        "France and he is in England and she is in Austin and they are at the capital")
WIDTH, ACTIVE_PER_TOKEN, SEED = 4096, 45, 11


def prompt_of(n_tokens: int) -> str:
    """A prompt of exactly n_tokens tokens with BOS (one token per word): PROMPT, then MORE."""
    words = (PROMPT + " " + MORE).split()
    if not 2 <= n_tokens <= len(words) + 1:
        raise SystemExit(f"--tokens must be between 2 and {len(words) + 1}")
    return " ".join(words[: n_tokens - 1])


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


def machine_load() -> str:
    """The 1-minute load average and other people's benchmark processes running now."""
    others = []
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args"], capture_output=True, text=True).stdout.splitlines()[1:]
        mine = {os.getpid(), os.getppid()}
        for line in out:
            pid, cpu, cmd = line.split(None, 2)
            if int(pid) not in mine and float(cpu) > 20 and "python" in cmd and "ps -eo" not in cmd:
                others.append(f"{cmd.split()[1] if len(cmd.split()) > 1 else cmd}:{cpu}%")
    except (OSError, ValueError):
        pass
    load = os.getloadavg()[0]
    return f"load {load:.2f} on {os.cpu_count()} cores" + (f"; busy: {', '.join(others[:4])}" if others else "")


def matmul_rate(threads: int, device: str = "cpu") -> float:
    """FLOP/s of an [8192, 512] x [512, 512] float32 product (best of 7)."""
    a = torch.randn(8192, 512, device=device)
    b = torch.randn(512, 512, device=device)
    c = torch.empty(8192, 512, device=device)
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b, out=c)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / 10)
    return 2 * 8192 * 512 * 512 / best


def run_cli(folder: Path, prompt: str, args, budget: int | None) -> dict:
    out = folder / "graph.json"
    cmd = [sys.executable, "-m", "circuit_studio.cli", "attribute", "--model", str(folder / "model"),
           "--transcoders", str(folder / "transcoders"), "--prompt", prompt, "--out", str(out),
           "--batch-size", str(args.batch_size), "--max-feature-nodes", str(budget or 0), "--device", args.device]
    env = {**os.environ, "PYTHONPATH": str(DESKTOP), "OMP_NUM_THREADS": str(args.threads)}
    timed = Path("/usr/bin/time").exists()
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-f", "%M %S %U", *cmd] if timed else cmd, env=env, capture_output=True,
                         text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        print(res.stderr[-3000:])
        raise SystemExit("the command failed")
    json.loads(out.read_text())  # the command wrote a readable graph
    rss = sys_s = user_s = None
    if timed:
        rss_kib, sys_s, user_s = res.stderr.strip().splitlines()[-1].split()
        rss, sys_s, user_s = int(rss_kib) / 2**20, float(sys_s), float(user_s)
    return {"wall_s": wall, "peak_rss_gib": rss, "system_s": sys_s, "user_s": user_s,
            "summary": res.stdout.strip().splitlines()[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=26, help="prompt length with BOS (26, 64, 128)")
    ap.add_argument("--budget", type=int, default=None, help="max_feature_nodes (default: none)")
    ap.add_argument("--keep", type=Path, help="build into this folder and keep it (reused if present)")
    ap.add_argument("--no-cli", action="store_true", help="skip timing the whole command in a fresh process")
    ap.add_argument("--cli-only", action="store_true", help="only time the whole command")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prompt = prompt_of(args.tokens)
    report: dict = {"tokens": args.tokens, "budget": args.budget, "threads": args.threads,
                    "batch_size": args.batch_size, "load_before": machine_load()}
    print(f"machine: {report['load_before']}")

    tmp = None
    folder = args.keep or Path(tmp := tempfile.mkdtemp(prefix="cs_bench_"))
    t0 = time.perf_counter()
    if not (folder / "transcoders" / "config.yaml").exists():
        build(folder)
    print(f"build model + transcoders     {time.perf_counter() - t0:7.2f} s   ({folder})")

    if not args.cli_only:
        t0 = time.perf_counter()
        bundle = load_model(folder / "model", device=args.device)
        print(f"load model                    {time.perf_counter() - t0:7.2f} s")
        t0 = time.perf_counter()
        tc = load_transcoders(folder / "transcoders", device=bundle.device)
        print(f"load transcoders              {time.perf_counter() - t0:7.2f} s")

        params = AttributionParams(batch_size=args.batch_size, max_feature_nodes=args.budget)
        c0, w0 = time.process_time(), time.perf_counter()
        graph = attribute(prompt, bundle, tc, params)
        cpu_share = (time.process_time() - c0) / ((time.perf_counter() - w0) * args.threads)
        s = graph.provenance["seconds"]
        n_active = graph.active_features.shape[0]
        per_token = n_active / (MEDIUM_DIMS.n_layers * (graph.n_pos - 1))
        print(f"prompt: {graph.n_pos} tokens; {n_active} active features ({per_token:.1f} per token per layer); "
              f"{graph.n_features} in the graph; {graph.n_logits} logits; N = {graph.n_nodes}; "
              f"adjacency {graph.adjacency.n_stored / graph.n_nodes ** 2:.1%} of N² stored "
              f"({graph.adjacency.nbytes / 2**30:.2f} GiB)")
        for phase in ("forward", "setup", "logit_rows", "feature_rows", "package", "total"):
            print(f"attribution: {phase:<17}{s[phase]:7.2f} s")
        print(f"attribution: CPU share {cpu_share:.0%} of {args.threads} threads (well below 100%: others were running)")
        # the work: the feature rows computed, against every active feature as a source
        af = graph.active_features
        counts = torch.bincount(torch.from_numpy(af[:, 0] * graph.n_pos + af[:, 1]),
                                minlength=graph.n_layers * graph.n_pos).view(graph.n_layers, graph.n_pos).numpy()
        rows = af[graph.selected_features]
        need = 2 * needed_macs(rows[:, 0], rows[:, 1], counts, bundle.arch, tc)
        done = 2 * graph.provenance["work"]["feature_row_macs"]
        rate = matmul_rate(args.threads, args.device)
        floor = need / rate
        print(f"feature rows: needed {need / 1e9:8.1f} GFLOP, done {done / 1e9:8.1f} GFLOP "
              f"({done / need - 1:+.1%}); matmul rate {rate / 1e9:.1f} GFLOP/s -> exact-work floor {floor:.2f} s; "
              f"ours {s['feature_rows']:.2f} s = {s['feature_rows'] / floor:.2f} x floor")
        t0 = time.perf_counter()
        pruner = Pruner(graph)
        pruned = pruner.prune(0.8, 0.98)
        t1 = time.perf_counter()
        pruner.graph_scores()
        t2 = time.perf_counter()
        print(f"pruning + scores              {t2 - t0:7.2f} s   (kept {pruned.n_nodes} nodes, {pruned.n_edges} edges)")
        print(f"peak memory (RSS)             {peak_rss_gib():7.2f} GiB")
        if args.device == "cuda":
            print(f"peak CUDA memory              {torch.cuda.max_memory_allocated() / 2**30:7.2f} GiB")
        report.update(seconds=s, cpu_share=cpu_share, needed_gflop=need / 1e9, done_gflop=done / 1e9, matmul_gflops=rate / 1e9,
                      floor_s=floor, prune_s=t1 - t0, scores_s=t2 - t1, peak_rss_gib=peak_rss_gib(),
                      n_nodes=graph.n_nodes, n_active=int(n_active), kept_nodes=pruned.n_nodes,
                      kept_edges=pruned.n_edges)
        del graph, pruner, pruned

    if not args.no_cli:
        cli = run_cli(folder, prompt, args, args.budget)
        print(f"whole `circuit-studio attribute` command: {cli['wall_s']:.2f} s wall, peak RSS "
              f"{cli['peak_rss_gib']:.2f} GiB, user {cli['user_s']:.1f} s + system {cli['system_s']:.1f} s CPU")
        print(f"  {cli['summary']}")
        report["cli"] = cli
    report["load_after"] = machine_load()
    print(f"machine: {report['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if tmp:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
