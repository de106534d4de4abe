"""`circuit-studio attribute-batch`: a file of prompts -> one attribution graph per prompt (resumable),
as circuit-tracer graph files (+ graph-metadata.json, batch-summary.json) and/or in a session;
in this process, or with `--ray [ADDRESS]` as Ray tasks on actors that hold the model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import CircuitStudioError
from ..core.progress import CancelToken, ProgressFn
from .model_options import MODEL_HELP, TRANSCODERS_HELP, add_attribution_options
from .options import check_option

SESSION_SUFFIX = ".cs-session"  # as core.session.SESSION_SUFFIX (not imported: keeps --help fast)


def add_parser(sub) -> None:
    p = sub.add_parser("attribute-batch", help="compute one attribution graph per prompt of a file (resumable, Ray)",
                       description="Compute the attribution graph of every prompt in a file (one per line, or JSON "
                                   'Lines {"prompt": ..., "slug": ..., "targets": [...]}) and write circuit-tracer '
                                   "graph files with graph-metadata.json and a batch-summary.json table, and/or put "
                                   "the graphs into a session. A re-run skips the prompts already done.")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--transcoders", required=True, help=TRANSCODERS_HELP)
    p.add_argument("--prompts", required=True, type=Path, help="prompt file: one per line, or JSON Lines")
    p.add_argument("--out", required=True, type=Path,
                   help=f"folder for the graph files, or a session file (*{SESSION_SUFFIX}: its graphs folder "
                        f"is then <name>.graphs beside it)")
    p.add_argument("--session", type=Path, default=None,
                   help=f"also put the graphs into this session (*{SESSION_SUFFIX}; created or updated)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray: alone, a local instance on this machine's cores; 'auto' or HOST:PORT joins a "
                        "running cluster (needs circuit-studio[scale])")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray actors, each holding the model (default: one per GPU, else one per CPU)")
    add_attribution_options(p)


def run(args: argparse.Namespace, progress: ProgressFn, cancel: CancelToken) -> int:
    from ..core.model.loading import describe_model
    from ..core.transcoders.loading import check_transcoders_fit, describe_transcoders
    from ..scale.batch import BatchOptions, read_prompts, run_batch

    check_option(args, "max_n_logits", low=1)
    check_option(args, "desired_logit_prob", above=0, high=1)
    check_option(args, "batch_size", low=1)
    check_option(args, "node_threshold", low=0, high=1)
    check_option(args, "edge_threshold", low=0, high=1)
    check_option(args, "workers", low=1)
    if args.workers is not None and args.ray is None:
        raise CircuitStudioError("--workers needs --ray.", "Add --ray (a local Ray instance) or drop --workers.")
    out, session = args.out, args.session
    if out.suffix == SESSION_SUFFIX:
        if session is not None and session.resolve() != out.resolve():
            raise CircuitStudioError(f"--out {out} is a session and --session {session} another one.",
                                     "Give a folder as --out, or drop --session.")
        session, out = out, out.with_suffix(".graphs")
    if session is not None and session.suffix != SESSION_SUFFIX:
        raise CircuitStudioError(f"--session {session} must end in {SESSION_SUFFIX}.")
    if session is not None and not session.expanduser().resolve().parent.is_dir():
        raise CircuitStudioError(f"Cannot write --session {session}: its folder does not exist.")
    if args.ray is not None:
        from ..scale import import_ray

        import_ray()  # one line saying how to install it, before anything slow
    jobs = read_prompts(args.prompts)  # fails fast, before anything is loaded
    summary, tc_summary = describe_model(args.model), describe_transcoders(args.transcoders)
    check_transcoders_fit(tc_summary, n_layers=summary.n_layers, d_model=summary.d_model, model_name=summary.name)
    budget = args.max_feature_nodes if args.max_feature_nodes and args.max_feature_nodes > 0 else None
    options = BatchOptions(max_n_logits=args.max_n_logits, desired_logit_prob=args.desired_logit_prob,
                           batch_size=args.batch_size, max_feature_nodes=budget,
                           node_threshold=args.node_threshold, edge_threshold=args.edge_threshold)
    finished = []
    try:
        result = run_batch(jobs, out, model=args.model, transcoders=args.transcoders, options=options,
                           ray=args.ray is not None, address=None if args.ray in (None, "local") else args.ray,
                           workers=args.workers, device=args.device, dtype=args.dtype, session=session,
                           progress=progress, cancel=cancel, on_result=finished.append)
    except KeyboardInterrupt:
        print(f"\ncircuit-studio: cancelled; {len(finished)} graphs finished in this run are kept in {out}. "
              "Run the same command again to go on.", file=sys.stderr)
        return 130
    _print_table(result)
    where = f"{result.out_dir}" + (f" and {result.session}" if result.session else "")
    print(f"{len(jobs)} prompts: {len(result.computed)} computed"
          f"{f' on {result.workers} Ray workers' if args.ray is not None and result.computed else ''}, "
          f"{len(result.skipped)} already done, {len(result.failed)} failed -> {where}")
    for slug in result.failed:
        print(f"  {slug}: {result.rows[slug]['error']}", file=sys.stderr)
    return 1 if result.failed else 0


def _print_table(result) -> None:
    rows = result.table()
    if not rows:
        return
    width = min(40, max(len(r["slug"]) for r in rows))
    print(f"{'slug':<{width}}  {'top logit':<18} {'p':>5}  {'repl':>5}  {'compl':>5}  {'features':>8}")
    for r in rows:
        slug = r["slug"] if len(r["slug"]) <= width else r["slug"][:width - 1] + "…"
        if r.get("status") != "done":
            print(f"{slug:<{width}}  error: {r.get('error', '')[:60]}")
            continue
        top = r["top_logits"][0] if r["top_logits"] else {"token": "", "probability": 0.0}
        print(f"{slug:<{width}}  {top['token']!r:<18} {top['probability']:5.2f}  {r['replacement']:5.2f}  "
              f"{r['completeness']:5.2f}  {r['n_graph_features']:>8}")
