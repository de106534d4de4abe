"""What `attribute` and `intervene` share about the model: `--model` (a folder or a cached repo id),
`--dtype`, `--offload`, `--force`, and loading model and transcoders once the memory plan says
they fit.

The plan is checked after reading the file headers (and the tokenizer, for the prompt's length)
and before any weight is read, so a run that cannot fit stops in seconds with what to change.
"""

from __future__ import annotations

import argparse

from ..core.progress import CancelToken, ProgressFn

MODEL_HELP = ("local HuggingFace model folder, or a repo id ORG/NAME[@REVISION] in the local Hugging Face "
              "cache (a folder that exists wins)")
TRANSCODERS_HELP = ("transcoder folder (config.yaml + weights, or sparsify sub-folders), its config.yaml, or a "
                    "reference ORG/NAME[/FOLDER][@REVISION] in the local Hugging Face cache")


def add_placement_options(p: argparse.ArgumentParser) -> None:
    """--offload and --force (the commands define --model, --device and --dtype themselves)."""
    p.add_argument("--offload", choices=["cpu"], default=None,
                   help="keep the transcoders in CPU memory (memory-mapped) while the model runs on the GPU; "
                        "only the rows a step needs are moved (no effect on the CPU)")
    p.add_argument("--force", action="store_true",
                   help="go on even when the memory plan says the run will not fit")


def add_attribution_options(p: argparse.ArgumentParser) -> None:
    """The attribution and pruning settings of every command that traces graphs (circuit-tracer's defaults)."""
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--desired-logit-prob", type=float, default=0.95)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-feature-nodes", type=int, default=7500,
                   help="feature budget (default 7500, as circuit-tracer's CLI; 0 or less = no budget)")
    p.add_argument("--node-threshold", type=float, default=0.8)
    p.add_argument("--edge-threshold", type=float, default=0.98)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_planned(args: argparse.Namespace, progress: ProgressFn, cancel: CancelToken, *, run=None,
                 prompt: str | None = None):
    """Describe, plan, then load: -> (ModelBundle, TranscoderSet). `run` (a memory_plan.RunSize,
    its n_tokens filled in here from `prompt`) adds the attribution's working memory to the plan.
    Raises ModelLoadError with the plan's message when it does not fit and `--force` is not given."""
    import dataclasses

    import torch

    from ..core.errors import ModelLoadError
    from ..core.model.memory_plan import plan_memory
    from ..core.model.loading import default_device, describe_model, load_model, load_tokenizer
    from ..core.transcoders.loading import check_transcoders_fit, describe_transcoders, load_transcoders

    # subnormals flushed before the first parallel work, so the compute threads inherit it (frozen_backward)
    torch.set_flush_denormal(True)
    summary = describe_model(args.model)
    tc_summary = describe_transcoders(args.transcoders)
    device = torch.device(args.device) if args.device else default_device()
    dtype_name = getattr(args, "dtype", "float32")
    offload = getattr(args, "offload", None)
    tokenizer = None
    if run is not None and prompt is not None:
        tokenizer = load_tokenizer(summary)
        # + 1 for the BOS tokenize_prompt puts in front; an empty prompt is refused later, by it
        n_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 1
        run = dataclasses.replace(run, n_tokens=max(2, n_tokens))
    # the shapes are known from the headers: a mismatch stops here, before anything is loaded
    check_transcoders_fit(tc_summary, n_layers=summary.n_layers, d_model=summary.d_model, model_name=summary.name)
    plan = plan_memory(summary, tc_summary, device=device.type, dtype=dtype_name, offload=offload, run=run)
    if not plan.fits and not getattr(args, "force", False):
        raise ModelLoadError(plan.problem, f"{plan.hint} (Or add --force to try anyway.)")
    bundle = load_model(args.model, device=device, dtype=torch_dtype(dtype_name), progress=progress,
                        cancel=cancel, tokenizer=tokenizer)
    # Memory-mapped on the CPU in their stored dtype (offloaded, or when the model is on the CPU);
    # otherwise copied to the GPU. Either way every use casts what it touches to the model's dtype.
    tc_device = torch.device("cpu") if offload == "cpu" else bundle.device
    tc = load_transcoders(args.transcoders, device=tc_device, dtype=None, progress=progress, cancel=cancel)
    check_transcoders_fit(tc, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model, model_name=bundle.name)
    return bundle, tc
