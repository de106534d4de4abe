"""Circuit Studio side by side with circuit-tracer 0.5.0 on the medium benchmark model.

Builds (seeded, nothing downloaded; reused with --keep) the model and transcoders of
`benchmarks/attribution.py` on disk, then on the same prompt and batch size times

* circuit-tracer's `attribute` + `prune_graph` + `compute_graph_scores`, in a fresh process of the
  circuit-tracer environment (nnsight backend, which loads the HF folder as Circuit Studio does), and
  that process as a whole (imports, loading);
* Circuit Studio's whole `circuit-studio attribute` command (a fresh process: imports, loading,
  attribution, pruning, scores, the frontend JSON),

and prints both. circuit-tracer needs its own environment (it pins transformers <= 4.57.3); make it
as ../shared/parity/README.md says, outside the project's:

    python3 -m venv /work/ct-env
    /work/ct-env/bin/pip install torch==2.13.0
    /work/ct-env/bin/pip install circuit-tracer==0.5.0 nnsight==0.6.3

    python benchmarks/vs_circuit_tracer.py --ct-python /work/ct-env/bin/python [--tokens 26|64|128]
        [--budget 7500] [--batch-size 256] [--threads 2] [--keep DIR] [--skip-ct] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DESKTOP = HERE.parent / "desktop"

# runs in the circuit-tracer environment: argv = model dir, transcoder dir, prompt, batch size, budget, threads
CT_CHILD = textwrap.dedent('''
    import json, resource, sys, time
    t_start = time.time()
    from pathlib import Path
    import torch
    model_dir, tc_dir, prompt = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    batch_size, budget, threads = int(sys.argv[4]), int(sys.argv[5]) or None, int(sys.argv[6])
    torch.set_num_threads(threads)
    import yaml
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    t_imported = time.time()
    cfg = yaml.safe_load((tc_dir / "config.yaml").read_text())
    # circuit-tracer resolves these against the current directory; they are relative to the config's folder
    paths = {i: str((tc_dir / p).resolve()) for i, p in enumerate(cfg["transcoders"])}
    cpu = torch.device("cpu")
    tc = load_transcoder_set(paths, feature_input_hook=cfg["feature_input_hook"],
                             feature_output_hook=cfg["feature_output_hook"], scan=cfg.get("scan"), device=cpu,
                             dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)
    model = ReplacementModel.from_pretrained_and_transcoders(model_name=str(model_dir), transcoders=tc,
                                                             backend="nnsight", device=cpu, dtype=torch.float32)
    t_loaded = time.time()
    graph = attribute(prompt, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=batch_size,
                      max_feature_nodes=budget, update_interval=4)
    t_attributed = time.time()
    node_mask, edge_mask, _ = prune_graph(graph, 0.8, 0.98)
    compute_graph_scores(graph)
    t_pruned = time.time()
    print("CT " + json.dumps({
        "imports_s": t_imported - t_start, "load_s": t_loaded - t_imported, "attribute_s": t_attributed - t_loaded,
        "prune_and_scores_s": t_pruned - t_attributed, "n_pos": int(graph.n_pos),
        "n_active": int(graph.active_features.shape[0]), "n_nodes": int(graph.adjacency_matrix.shape[0]),
        "kept_nodes": int(node_mask.sum()), "kept_edges": int(edge_mask.sum()),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
''')


def _attribution_benchmark():
    spec = importlib.util.spec_from_file_location("bench_attribution", HERE / "attribution.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ct_model_folder(folder: Path) -> Path:
    """The model folder as transformers 4.57 (circuit-tracer's) reads it: the same weights and tokenizer
    (linked), the config and tokenizer config in that version's spelling (`rope_theta` at the top
    instead of `rope_parameters`, `PreTrainedTokenizerFast` instead of transformers 5's backend class)."""
    src, dst = folder / "model", folder / "ct_model"
    dst.mkdir(exist_ok=True)
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        if (src / name).exists() and not (dst / name).exists():
            (dst / name).symlink_to((src / name).resolve())
    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    cfg.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    cfg["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    tok = json.loads((src / "tokenizer_config.json").read_text())
    tok.pop("backend", None)
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    (dst / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    return dst


def run_ct(ct_python: str, folder: Path, prompt: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false")
    cmd = [ct_python, "-c", CT_CHILD, str(ct_model_folder(folder)), str(folder / "transcoders"), prompt,
           str(args.batch_size), str(args.budget or 0), str(args.threads)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        print(res.stderr[-4000:])
        raise SystemExit("circuit-tracer failed")
    out = json.loads([line for line in res.stdout.splitlines() if line.startswith("CT ")][-1][3:])
    out["process_wall_s"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct-python", default="/work/ct-env/bin/python", help="python of the circuit-tracer environment")
    ap.add_argument("--tokens", type=int, default=26)
    ap.add_argument("--budget", type=int, default=None, help="max_feature_nodes (default: none)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, help="build into this folder and keep it (reused if present)")
    ap.add_argument("--skip-ct", action="store_true", help="only time Circuit Studio")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()
    bench = _attribution_benchmark()
    prompt = bench.prompt_of(args.tokens)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="cs_vs_ct_"))
    if not (folder / "transcoders" / "config.yaml").exists():
        bench.build(folder)
    budget = f"budget {args.budget}" if args.budget else "no budget"
    print(f"medium model, {args.tokens} tokens, {budget}, batch size {args.batch_size}, {args.threads} threads")
    print(f"machine: {bench.machine_load()}")
    report: dict = {"tokens": args.tokens, "budget": args.budget, "batch_size": args.batch_size,
                    "threads": args.threads, "load_before": bench.machine_load()}
    ours = bench.run_cli(folder, prompt, args, args.budget)
    report["circuit_studio"] = ours
    print(f"Circuit Studio, whole `circuit-studio attribute` process: {ours['wall_s']:8.2f} s   "
          f"(peak RSS {ours['peak_rss_gib']:.2f} GiB)")
    print(f"  {ours['summary']}")
    if not args.skip_ct:
        ct = run_ct(args.ct_python, folder, prompt, args)
        report["circuit_tracer"] = ct
        print(f"circuit-tracer 0.5.0, attribute + prune + scores:        {ct['attribute_s'] + ct['prune_and_scores_s']:8.2f} s   "
              f"(attribute {ct['attribute_s']:.2f} s, prune + scores {ct['prune_and_scores_s']:.2f} s)")
        print(f"circuit-tracer 0.5.0, whole process:                     {ct['process_wall_s']:8.2f} s   "
              f"(imports {ct['imports_s']:.1f} s, loading {ct['load_s']:.1f} s; peak RSS {ct['peak_rss_gib']:.2f} GiB; "
              f"N = {ct['n_nodes']}, kept {ct['kept_nodes']} nodes / {ct['kept_edges']} edges)")
        print(f"speed-up: {(ct['attribute_s'] + ct['prune_and_scores_s']) / ours['wall_s']:.1f} x "
              f"(circuit-tracer's attribute + prune vs our whole command), "
              f"{ct['process_wall_s'] / ours['wall_s']:.1f} x process vs process")
    report["load_after"] = bench.machine_load()
    print(f"machine: {report['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
