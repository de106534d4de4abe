"""Loading and attribution at the scale of real releases, on seeded random weights (nothing downloaded).

Writes, once, random weights with the exact shapes and on-disk formats of

* gemma2: google/gemma-2-2b (Gemma2ForCausalLM, bfloat16 safetensors) + GemmaScope 16k transcoders
  (`layer_{i}/width_16k/average_l0_75/params.npz`, float32, W_enc stored [d, F]);
* llama: meta-llama/Llama-3.2-1B (LlamaForCausalLM, bfloat16) + a 131,072-wide per-layer set with
  W_skip in circuit-tracer's layout (`layer_{i}.safetensors`, all bfloat16, ~17 GB),

then loads them with Circuit Studio's own loaders and traces a 23-token prompt with
max_feature_nodes=7500, printing load times, peak RSS per phase, attribution phase times and the
graph's size. Encoders are random directions with b_enc = 0 and JumpReLU thresholds calibrated on
the model's own activations so that about ACTIVE features fire per token and layer.

    python benchmarks/real_scale.py [--config gemma2|llama|both] [--workdir DIR] [--keep]
        [--scale S] [--batch-size B] [--prompt TEXT]

`--scale 16` divides layers, widths, heads, vocab and the feature budget by 16 (a check in
seconds). Each config is generated and measured in its own subprocess, so peak RSS is per config
and excludes generation. Files are reused when complete (a marker is written last); without
--keep the files this run generated are deleted at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "desktop"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from circuit_studio.core.synthetic import (  # noqa: E402
    BOS_ID, EOS_ID, PAD_ID, SPECIALS, WORDS, build_tokenizer, default_hooks, mlp_read_inputs)

SEED = 0
ACTIVE = 75  # target active features per token and layer (real GemmaScope 16k: average_l0 ~ 20-150)
PROMPT = ("the capital of the state of Texas is Austin and the capital of France is Paris and "
          "the capital of England is")
CALIB_SEQS, CALIB_LEN = 16, 24  # calibration sample: 16 x 23 = 368 non-BOS rows per layer
GiB = 2**30


@dataclass(frozen=True)
class Release:
    family: str  # synthetic.FAMILIES name
    cls: str
    config: dict  # HF config at full scale (the real release's)
    width: int
    layout: str  # "gemmascope" (npz) | "circuit_tracer" (safetensors + W_skip)
    tc_dtype: torch.dtype


RELEASES = {
    "gemma2": Release("gemma2", "Gemma2ForCausalLM", dict(
        num_hidden_layers=26, hidden_size=2304, intermediate_size=9216, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, vocab_size=256000, query_pre_attn_scalar=256,
        sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, initializer_range=0.02),
        16384, "gemmascope", torch.float32),
    "llama": Release("llama", "LlamaForCausalLM", dict(
        num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu",
        tie_word_embeddings=True, initializer_range=0.02),
        131072, "circuit_tracer", torch.bfloat16),
}


def scaled(rel: Release, s: int) -> tuple[dict, int]:
    """(HF config kwargs, width) with layers, widths, heads and vocab divided by s. head_dim is
    kept (both families allow heads * head_dim != hidden), so attention keeps its real shape."""
    c = dict(rel.config)
    if s > 1:
        c["num_hidden_layers"] = max(2, c["num_hidden_layers"] // s)
        for k in ("hidden_size", "intermediate_size"):
            c[k] //= s
        c["num_attention_heads"] = h = max(1, c["num_attention_heads"] // s)
        kv = max(1, min(h, c["num_key_value_heads"] // s))
        while h % kv:
            kv -= 1
        c["num_key_value_heads"] = kv
        c["vocab_size"] = max(len(SPECIALS) + len(WORDS), c["vocab_size"] // s)
    c.update(pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)  # our tokenizer's ids
    return c, max(16, rel.width // s)


# ---- generation (child process) ----
def calibrate(w_enc: torch.Tensor, reads: torch.Tensor, k: float) -> torch.Tensor:
    """JumpReLU thresholds [F] so that ~k of F features fire per row of `reads` [N, d] (b_enc = 0):
    one per layer, the (1 - k/F) quantile of all N*F pre-activations of the sample.

    Not synthetic.calibrate_thresholds' per-feature quantiles: those need N >> F/k rows (~10^4
    tokens, a [N, F] matrix of GBs at F = 131072), and per-feature fits (quantiles or mean + z*sd)
    learn the sample's few dominant directions, so a prompt off them fired 2-4x the target. For
    random encoder rows and reads of fixed norm (both hooks read normalised vectors), w_f . x has
    the same distribution for every x, so one threshold gives ~k per token on any prompt."""
    pre = (reads @ w_enc.float().T).flatten()
    thr = pre.kthvalue(max(1, int(pre.numel() * (1 - k / w_enc.shape[0])))).values
    return thr.clamp(min=1e-3).expand(w_enc.shape[0]).clone()


def _atomic(path: Path, write) -> None:
    """Write via a temporary name so a killed run never leaves a file that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".partial.{path.name}")  # same suffix: numpy appends .npz otherwise
    write(tmp)
    os.replace(tmp, path)


def generate(rel: Release, root: Path, s: int) -> dict:
    config, F = scaled(rel, s)
    L, d = config["num_hidden_layers"], config["hidden_size"]
    times, reads_path = {}, root / "calib_reads.pt"
    if not (root / "model.done").exists():
        t0 = time.perf_counter()
        torch.manual_seed(SEED)  # HF's own init (normal, std 0.02) draws from the global RNG
        cfg = getattr(tf, rel.cls.replace("ForCausalLM", "Config"))(**config)
        model = getattr(tf, rel.cls)._from_config(cfg, dtype=torch.bfloat16).eval()
        times["build model"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.save_pretrained(root / "model")
        build_tokenizer(config["vocab_size"], family=rel.family).save_pretrained(root / "model")
        cfg_path = root / "model" / "config.json"  # the attention backend is the loader's choice
        j = json.loads(cfg_path.read_text())
        for k in ("_attn_implementation", "attn_implementation"):
            j.pop(k, None)
        cfg_path.write_text(json.dumps(j, indent=2, sort_keys=True) + "\n")
        times["save model"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # words drawn with text-like (Zipf) frequencies: WORDS starts with "the a an of to ..."
        g = torch.Generator().manual_seed(SEED + 1)
        zipf = 1.0 / torch.arange(1, len(WORDS) + 1, dtype=torch.float)
        calib = len(SPECIALS) + torch.multinomial(zipf, CALIB_SEQS * CALIB_LEN, replacement=True,
                                                  generator=g).view(CALIB_SEQS, CALIB_LEN)
        calib[:, 0] = BOS_ID
        with torch.no_grad():
            reads = mlp_read_inputs(model, rel.family, calib)  # what the transcoders' hook reads
        reads = torch.stack([r.view(CALIB_SEQS, CALIB_LEN, d)[:, 1:].reshape(-1, d) for r in reads])
        _atomic(reads_path, lambda p: torch.save(reads, p))
        (root / "model.done").touch()
        times["calibration forward"] = time.perf_counter() - t0
        del model
        gc.collect()
    reads = torch.load(reads_path)
    tc_dir, t0, entries = root / "transcoders", time.perf_counter(), []
    for l in range(L):
        npz = rel.layout == "gemmascope"
        rel_path = (f"layer_{l}/width_{F // 1024}k/average_l0_{ACTIVE}/params.npz" if npz
                    else f"layer_{l}.safetensors")
        entries.append(rel_path)
        if (tc_dir / rel_path).exists():  # written atomically, so complete
            continue
        # one generator per layer: resuming at any layer gives the same files
        g = torch.Generator().manual_seed(SEED + 1000 + l)
        w_enc = (torch.randn(F, d, generator=g) / d**0.5).to(rel.tc_dtype)
        t = dict(W_enc=w_enc, W_dec=(torch.randn(F, d, generator=g) / d**0.5).to(rel.tc_dtype),
                 b_enc=torch.zeros(F, dtype=rel.tc_dtype),
                 b_dec=(0.01 * torch.randn(d, generator=g)).to(rel.tc_dtype),
                 threshold=calibrate(w_enc, reads[l], min(ACTIVE, F / 8)).to(rel.tc_dtype))
        if npz:
            t["W_enc"] = w_enc.T  # GemmaScope stores the encoder as [d, F]
            arrays = {k: v.contiguous().numpy() for k, v in t.items()}
            _atomic(tc_dir / rel_path, lambda p, a=arrays: np.savez(p, **a))
            del arrays
        else:
            t["activation_function.threshold"] = t.pop("threshold")
            t["W_skip"] = (torch.randn(d, d, generator=g) * (0.3 / d**0.5)).to(rel.tc_dtype)
            _atomic(tc_dir / rel_path,
                    lambda p, t=t: save_file({k: v.contiguous() for k, v in t.items()}, str(p)))
        del t, w_enc  # before the next layer's draws: one layer in memory at a time
    read_hook, write_hook = default_hooks(rel.family)
    (tc_dir / "config.yaml").write_text(yaml.safe_dump(dict(
        model_kind="transcoder_set", feature_input_hook=read_hook, feature_output_hook=write_hook,
        scan=f"random-{rel.family}-{F}-seed{SEED}", transcoders=entries), sort_keys=False))
    times["write transcoders"] = time.perf_counter() - t0
    (root / "transcoders.done").touch()  # last: everything above is complete
    return {"times": times, "peak_rss_gib": _ru_maxrss()}


# ---- measuring (child process) ----
def _ru_maxrss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB  # Linux: kB


def _mem() -> dict[str, float]:
    """Current VmRSS and its anonymous part (GiB). The rest is file pages: memory-mapped weights,
    which count in RSS but are clean page cache the kernel can drop."""
    st = Path("/proc/self/status").read_text()
    kb = {k: int(re.search(rf"{k}:\s+(\d+)", st)[1]) for k in ("VmRSS", "RssAnon")}
    return {"rss": kb["VmRSS"] * 1024 / GiB, "anon": kb["RssAnon"] * 1024 / GiB}


class PeakSampler:
    """Samples RSS every 10 ms so each phase gets its own peak (ru_maxrss only has the
    process-wide one; resetting it via clear_refs would lose that)."""

    def __init__(self) -> None:
        self.peak, self._lock = _mem(), threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(0.01)
            now = _mem()
            with self._lock:
                self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}

    def phase(self) -> dict[str, float]:
        """Peaks since the previous call, then restart from the current RSS."""
        now = _mem()
        with self._lock:
            peak, self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}, now
        return peak


def measure(rel: Release, root: Path, s: int, args: argparse.Namespace) -> dict:
    from circuit_studio.core.attribution.attribute import attribute
    from circuit_studio.core.graph.attribution_graph import AttributionParams
    from circuit_studio.core.model.loading import load_model
    from circuit_studio.core.transcoders import loading as tl

    out, sampler = {"rss_start": _mem()}, PeakSampler()
    t0 = time.perf_counter()
    bundle = load_model(root / "model", device="cpu", dtype=torch.bfloat16)
    out |= {"t_model": time.perf_counter() - t0, "peak_model": sampler.phase(), "after_model": _mem()}

    # as the app loads them: memory-mapped on the CPU in their stored dtype
    t0 = time.perf_counter()
    tc = tl.load_transcoders(root / "transcoders", device="cpu")
    tensors = [t for f in ("w_enc", "w_dec", "w_skip") for t in (getattr(tc, f) or ())]
    tensors += [t for t in (tc.b_enc, tc.b_dec, tc.threshold) if t is not None]
    out |= {"t_tc": time.perf_counter() - t0, "peak_tc": sampler.phase(), "after_tc": _mem(),
            "tc_dtype": str(tc.dtype), "tc_nominal_gib": sum(t.nbytes for t in tensors) / GiB}

    budget = max(1, 7500 // s)
    graph = attribute(args.prompt, bundle, tc, AttributionParams(max_feature_nodes=budget,
                                                                  batch_size=args.batch_size))
    out |= {"peak_attr": sampler.phase(), "after_attr": _mem(), "ru_maxrss": _ru_maxrss(),
            "seconds": graph.provenance["seconds"], "budget": budget, "P": graph.n_pos,
            "L": graph.n_layers, "active": int(graph.active_features.shape[0]),
            "selected": int(graph.selected_features.shape[0]), "N": graph.n_nodes,
            "K": graph.n_logits, "adj_gib": graph.adjacency_matrix.nbytes / GiB}
    return out


# ---- driver ----
def _child(stage: str, name: str, args: argparse.Namespace, result: Path) -> dict | None:
    cmd = [sys.executable, __file__, "--config", name, "--workdir", str(args.workdir),
           "--scale", str(args.scale), "--batch-size", str(args.batch_size), "--prompt",
           args.prompt, "--stage", stage, "--result", str(result)]
    t0 = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        print(f"[{name}] {stage} failed (exit {rc})", flush=True)
        return None
    out = {**json.loads(result.read_text()), "wall": time.perf_counter() - t0}
    result.unlink()
    return out


def _du(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / GiB if path.exists() else 0


def _rss(m: dict, phase: str) -> str:
    p, a = m[f"peak_{phase}"], m[f"after_{phase}"]
    return f"{p['rss']:.2f} ({p['anon']:.2f}) / {a['rss']:.2f} ({a['anon']:.2f})"


def _table(results: dict[str, dict]) -> str:
    def f(x, fmt="{:.1f}"):
        return "—" if x is None else fmt.format(x)

    rows = []
    for label, get in [
        ("model (layers, d, vocab)", lambda r: r["shape"]),
        ("transcoders (width, stored dtype, format)", lambda r: r["tc"]),
        ("files on disk: model / transcoders (GiB)", lambda r: f"{r['du_model']:.2f} / {r['du_tc']:.2f}"),
        ("generate files (s)", lambda r: r["gen"]),
        ("load model (s)", lambda r: f(r["m"].get("t_model"))),
        ("  RSS peak / after, GiB (anon)", lambda r: _rss(r["m"], "model")),
        ("load transcoders (s)", lambda r: f(r["m"].get("t_tc"))),
        ("  held as (dtype, GiB mapped)", lambda r: f"{r['m']['tc_dtype']}, {r['m']['tc_nominal_gib']:.2f}"),
        ("  RSS peak / after, GiB (anon)", lambda r: _rss(r["m"], "tc")),
        ("attribution total (s)", lambda r: f(r["m"]["seconds"]["total"])),
        ("  forward / logit rows / feature rows (s)", lambda r: " / ".join(
            f(r["m"]["seconds"][k]) for k in ("forward", "logit_rows", "feature_rows"))),
        ("  RSS peak / after, GiB (anon)", lambda r: _rss(r["m"], "attr")),
        ("peak RSS, ru_maxrss (GiB)", lambda r: f(r["m"]["ru_maxrss"], "{:.2f}")),
        ("prompt tokens P", lambda r: r["m"]["P"]),
        ("active features (per token·layer)", lambda r: f"{r['m']['active']} ({r['m']['active'] / (r['m']['L'] * (r['m']['P'] - 1)):.0f})"),
        ("selected (budget)", lambda r: f"{r['m']['selected']} ({r['m']['budget']})"),
        ("N nodes / K logits", lambda r: f"{r['m']['N']} / {r['m']['K']}"),
        ("adjacency (GiB)", lambda r: f(r["m"]["adj_gib"], "{:.2f}")),
    ]:
        cells = []
        for r in results.values():
            try:
                cells.append(str(get(r)))
            except (KeyError, TypeError):
                cells.append("failed" if r.get("m") is None else "—")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    head = "| | " + " | ".join(results) + " |\n|---|" + "---|" * len(results)
    return head + "\n" + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["gemma2", "llama", "both"], default="both")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/circuit_studio_real_scale"))
    ap.add_argument("--keep", action="store_true", help="keep the files this run generates")
    ap.add_argument("--scale", type=int, default=1, help="divide layers/widths/vocab/budget by S")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--stage", choices=["generate", "measure"], help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scale < 1:
        ap.error("--scale must be >= 1")
    names = list(RELEASES) if args.config == "both" else [args.config]

    if args.stage:  # child: one stage of one config, result as JSON
        rel, root = RELEASES[args.config], args.workdir / f"{args.config}-s{args.scale}"
        root.mkdir(parents=True, exist_ok=True)
        fn = generate if args.stage == "generate" else lambda *a: measure(*a, args)
        args.result.write_text(json.dumps(fn(rel, root, args.scale)))
        return

    results = {}
    for name in names:
        rel, root = RELEASES[name], args.workdir / f"{name}-s{args.scale}"
        config, width = scaled(rel, args.scale)
        r = {"shape": f"{config['num_hidden_layers']}, {config['hidden_size']}, {config['vocab_size']}",
             "tc": f"{width}, {str(rel.tc_dtype).removeprefix('torch.')}, "
                   f"{'npz' if rel.layout == 'gemmascope' else 'safetensors'}"}
        generated = not (root / "transcoders.done").exists()
        r["gen"] = "reused"
        if generated:
            print(f"[{name}] generating into {root} ...", flush=True)
            g = _child("generate", name, args, root.parent / f"{name}-s{args.scale}.gen.json")
            if g is None:
                results[name] = {**r, "gen": "failed", "m": None}
                continue
            r["gen"] = f"{g['wall']:.0f} (peak RSS {g['peak_rss_gib']:.1f} GiB)"
            print(f"[{name}] generated in {g['wall']:.1f} s: " + ", ".join(
                f"{k} {v:.1f} s" for k, v in g["times"].items()), flush=True)
        r["du_model"], r["du_tc"] = _du(root / "model"), _du(root / "transcoders")
        print(f"[{name}] measuring ...", flush=True)
        r["m"] = _child("measure", name, args, root.parent / f"{name}-s{args.scale}.measure.json")
        results[name] = r
        if r["m"]:
            print(f"[{name}] " + json.dumps(r["m"]), flush=True)
        if generated and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("\n" + _table(results))


if __name__ == "__main__":
    main()
