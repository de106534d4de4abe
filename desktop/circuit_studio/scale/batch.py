"""`attribute-batch`: one attribution graph per prompt of a file, in this process or on Ray actors.

Prompts: a UTF-8 file with one prompt per line (blank lines skipped; the line is the prompt as is,
without its line ending), or JSON Lines when the first non-blank line starts with "{":
`{"prompt": "...", "slug": "optional-name", "targets": [...]}` per line. `targets` (optional) are
what the graph attributes from, as `core.attribution.attribute` takes them: token strings, token
ids, or custom directions `{"label": ..., "probability": ..., "vector": [d_model floats]}`.
Without a slug a prompt is named after its text and a hash of it (and of its targets), so the
name stays the same when the file is edited.

Output folder (what `circuit-tracer start-server --graph_file_dir` serves, plus ours):

    <slug>.json           the graph in circuit-tracer's frontend format (pruned at the thresholds)
    <slug>.npz            the full graph (`core.graph.save_graph`, with node/edge masks)
    graph-metadata.json   circuit-tracer's index: {"graphs": [<metadata of each graph>, ...]}
    batch-summary.json    the table to browse: per prompt its top logits, replacement and
                          completeness scores, sizes and time; and the settings of the run

Graph files are written by the worker that made them, each to a temporary name then renamed; the
two index files only by the driver. Resuming: a prompt whose row in batch-summary.json is done,
with the same prompt and targets, and whose two graph files exist, is skipped; everything else is
(re)computed, so a run killed at any point (or Ctrl-C) continues where it stopped. A folder made
with other settings (model, transcoders, attribution options) is refused rather than mixed.

With a session (`.cs-session`), the graphs also go into it as graph records (title: prompt, top
logit and scores), after the run; graphs the session got from an earlier run of the same batch
(same slugs) are replaced, other graphs kept.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.errors import Cancelled, CircuitStudioError
from ..core.progress import CancelToken, ProgressFn, check, report

SUMMARY_FILE = "batch-summary.json"
SUMMARY_FORMAT = "circuit-studio-batch"
SUMMARY_VERSION = 1
INDEX_FILE = "graph-metadata.json"  # as core.graph.export.INDEX_FILE (not imported: that pulls in the graph code)
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")
_RESERVED = {SUMMARY_FILE.rsplit(".", 1)[0], INDEX_FILE.rsplit(".", 1)[0]}
_FLUSH_S = 2.0  # the index files are rewritten at most this often (and at the end)


class BatchError(CircuitStudioError):
    """The prompt file or the output folder cannot be used."""


# ---- prompts ----
@dataclass(frozen=True)
class PromptJob:
    slug: str
    prompt: str
    line: int  # 1-based line in the prompt file
    targets: list | None = None

    def to_dict(self) -> dict:
        return {"slug": self.slug, "prompt": self.prompt, "targets": self.targets}


def targets_keyword() -> str | None:
    """The keyword by which `core.attribution.attribute` takes custom targets, None if it does not."""
    from ..core.attribution.attribute import attribute

    params = inspect.signature(attribute).parameters
    return next((k for k in ("targets", "attribution_targets") if k in params), None)


def default_slug(prompt: str, targets: list | None = None) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "-", prompt).strip("-").lower()[:48].strip("-") or "prompt"
    key = prompt if targets is None else prompt + "\0" + json.dumps(targets, sort_keys=True)
    return f"{words}-{hashlib.sha1(key.encode('utf-8')).hexdigest()[:8]}"


def read_prompts(path: str | Path) -> list[PromptJob]:
    """The prompts of `path` (see the module docstring); BatchError naming the line when one is bad."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BatchError(f"Prompt file {path} does not exist." if not path.exists() else f"{path} is a folder.",
                         "Give a text file with one prompt per line, or JSON Lines.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BatchError(f"Prompt file {path} is not UTF-8 text (bad byte at offset {e.start}).",
                         "Save it as UTF-8.") from e
    except OSError as e:
        raise BatchError(f"Cannot read prompt file {path} ({e.strerror or e}).") from e
    lines = [(i, line.rstrip("\r\n")) for i, line in enumerate(text.split("\n"), 1)]
    lines = [(i, line) for i, line in lines if line.strip()]
    if not lines:
        raise BatchError(f"Prompt file {path} holds no prompt.", "Put one prompt per line.")
    jsonl = lines[0][1].lstrip().startswith("{")
    keyword = targets_keyword() if jsonl else None
    jobs: list[PromptJob] = []
    for i, line in lines:
        where = f"{path}:{i}"
        if not jsonl:
            jobs.append(PromptJob(default_slug(line), line, i))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BatchError(f"{where}: not a JSON object ({e.msg}).",
                             'Write one {"prompt": "..."} per line, or a plain prompt per line (no "{" first).')
        if not isinstance(obj, dict):
            raise BatchError(f"{where}: a JSON line must be an object, not {type(obj).__name__}.")
        unknown = sorted(set(obj) - {"prompt", "slug", "targets"})
        if unknown:
            raise BatchError(f"{where}: unknown key {unknown[0]!r}.", 'The keys are "prompt", "slug", "targets".')
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BatchError(f'{where}: "prompt" must be a non-empty string.')
        targets = obj.get("targets")
        if targets is not None:
            if keyword is None:
                raise BatchError(f"{where}: custom targets are not supported yet by this version of Circuit "
                                 f"Studio.", 'Remove "targets" (the graph then explains the top logits).')
            if not isinstance(targets, list) or not targets:
                raise BatchError(f'{where}: "targets" must be a non-empty list of token strings, token ids or '
                                 '{"label", "probability", "vector"} objects.')
        slug = obj.get("slug")
        if slug is None:
            slug = default_slug(prompt, targets)
        elif not isinstance(slug, str) or not _SLUG.fullmatch(slug) or slug in _RESERVED:
            raise BatchError(f"{where}: slug {slug!r} cannot name a file.",
                             "Use letters, digits, '.', '_' and '-' (up to 120, starting with a letter or digit).")
        jobs.append(PromptJob(slug, prompt, i, targets))
    first: dict[str, int] = {}
    for job in jobs:
        if job.slug in first:
            raise BatchError(f"{path}:{job.line}: slug {job.slug!r} is used again (first on line {first[job.slug]}).",
                             "Give each prompt its own slug (an identical prompt twice has the same default slug).")
        first[job.slug] = job.line
    return jobs


def _targets(spec: list | None):
    """JSON targets -> what `attribute` takes (token strings or ids as given; objects -> CustomTarget)."""
    if spec is None:
        return None
    if all(isinstance(t, dict) for t in spec):
        import torch

        from ..core.attribution.targets import CustomTarget

        try:
            return [CustomTarget(str(t["label"]), float(t["probability"]), torch.tensor(t["vector"], dtype=torch.float32))
                    for t in spec]
        except (KeyError, TypeError, ValueError) as e:
            raise BatchError(f'A custom target needs "label", "probability" and "vector" (a list of numbers): {e}.')
    return list(spec)


# ---- options and one prompt ----
@dataclass(frozen=True)
class BatchOptions:
    """How every graph of the batch is computed and pruned (the `attribute` command's options)."""

    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    batch_size: int = 256
    max_feature_nodes: int | None = 7500
    node_threshold: float = 0.8
    edge_threshold: float = 0.98

    def to_json(self) -> dict:
        return asdict(self)


def trace_prompt(bundle, tc, job: dict, options: dict, out_dir: Path, cancel: CancelToken | None = None) -> dict:
    """Attribute one prompt, write `<slug>.npz` then `<slug>.json` into `out_dir` (each whole or
    not at all) and return {"row": summary row, "metadata": the graph's index entry}. A prompt the
    model or transcoders refuse (too long, a target that is not one token, ...) gives a row with
    status "error" and no files."""
    from ..core.attribution.attribute import attribute
    from ..core.graph.export import write_frontend_json
    from ..core.graph.attribution_graph import AttributionParams, save_graph
    from ..core.graph.pruning import Pruner

    opts = BatchOptions(**options)
    params = AttributionParams(max_n_logits=opts.max_n_logits, desired_logit_prob=opts.desired_logit_prob,
                               batch_size=opts.batch_size, max_feature_nodes=opts.max_feature_nodes)
    slug = job["slug"]
    base = {"slug": slug, "prompt": job["prompt"], "targets": job.get("targets")}
    try:  # what the prompt or its targets can make fail; write errors (a full disk) stop the batch
        kw = {}
        if job.get("targets") is not None:
            kw[targets_keyword() or "targets"] = _targets(job["targets"])
        t0 = time.perf_counter()
        graph = attribute(job["prompt"], bundle, tc, params, cancel=cancel, **kw)
        seconds = time.perf_counter() - t0
    except Cancelled:
        raise
    except (CircuitStudioError, ValueError) as e:
        return {"row": {**base, "status": "error", "error": str(e)}, "metadata": None}
    pruner = Pruner(graph)
    pruned = pruner.prune(opts.node_threshold, opts.edge_threshold)
    replacement, completeness = pruner.graph_scores()
    save_graph(graph, out_dir / f"{slug}.npz", extra={"node_mask": pruned.node_mask, "edge_mask": pruned.edge_mask})
    doc = write_frontend_json(out_dir / f"{slug}.json", graph, pruned, slug=slug,
                              tokenizer_decode=bundle.tokenizer.decode)
    row = {**base, "status": "done", "n_tokens": int(graph.n_pos),
           "top_logits": [{"token": t, "id": int(i), "probability": float(p)} for t, i, p in
                          zip(graph.logit_tokens, graph.logit_token_ids.tolist(), graph.logit_probabilities.tolist())],
           "replacement": float(replacement), "completeness": float(completeness),
           "n_active_features": int(graph.active_features.shape[0]), "n_graph_features": int(graph.n_features),
           "kept_nodes": int(pruned.node_mask.sum()), "kept_edges": int(pruned.edge_mask.sum()),
           "seconds": round(seconds, 4)}
    return {"row": row, "metadata": doc["metadata"]}


# ---- the run ----
@dataclass
class BatchReport:
    out_dir: Path
    jobs: list[PromptJob]
    rows: dict[str, dict] = field(default_factory=dict)  # slug -> row, every prompt that has one
    computed: list[str] = field(default_factory=list)  # slugs computed in this run
    skipped: list[str] = field(default_factory=list)  # slugs found finished
    session: Path | None = None
    workers: int = 1

    @property
    def failed(self) -> list[str]:
        return [j.slug for j in self.jobs if self.rows.get(j.slug, {}).get("status") == "error"]

    def table(self) -> list[dict]:
        return [self.rows[j.slug] for j in self.jobs if j.slug in self.rows]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BatchError(f"{path} exists but is not {what} ({e}).", "Move it away or choose another --out folder.")


def _settings(model: str, transcoders: str, dtype: str, options: BatchOptions) -> dict:
    return {"model": model, "transcoders": transcoders, "dtype": dtype, "options": options.to_json()}


class _Output:
    """The output folder's two index files, kept by the driver (see the module docstring)."""

    def __init__(self, out_dir: Path, jobs: list[PromptJob], settings: dict) -> None:
        from ..core.atomic_write import write_text_atomic

        self._write = write_text_atomic
        self.dir, self.jobs, self.settings = out_dir, jobs, settings
        self.rows: dict[str, dict] = {}
        self.metadata: dict[str, dict] = {}
        self.foreign: list[dict] = []  # index entries of graphs that are not in this batch
        self._dirty, self._flushed = False, 0.0
        summary_path, index_path = out_dir / SUMMARY_FILE, out_dir / INDEX_FILE
        if summary_path.exists():
            old = _read_json(summary_path, "a batch summary")
            if not isinstance(old, dict) or old.get("format") != SUMMARY_FORMAT:
                raise BatchError(f"{summary_path} exists but is not a Circuit Studio batch summary.",
                                 "Move it away or choose another --out folder.")
            if old.get("settings") != settings:
                changed = sorted(k for k in settings if (old.get("settings") or {}).get(k) != settings[k])
                raise BatchError(f"{out_dir} holds graphs made with other settings ({', '.join(changed)} differ).",
                                 "Use another --out folder, or the same settings as that run.")
            self.rows = {r["slug"]: r for r in old.get("graphs", []) if isinstance(r, dict) and "slug" in r}
        if index_path.exists():
            index = _read_json(index_path, "a graph index")
            entries = index.get("graphs", []) if isinstance(index, dict) else None
            if not isinstance(entries, list):
                raise BatchError(f"{index_path} exists but is not a graph index.", "Move it away or choose another folder.")
            ours = {j.slug for j in jobs}
            for e in entries:
                if isinstance(e, dict) and e.get("slug") in ours:
                    self.metadata[e["slug"]] = e
                elif isinstance(e, dict):
                    self.foreign.append(e)

    def finished(self, job: PromptJob) -> bool:
        row = self.rows.get(job.slug)
        return (row is not None and row.get("status") == "done" and row.get("prompt") == job.prompt
                and row.get("targets") == job.targets and (self.dir / f"{job.slug}.npz").is_file()
                and (self.dir / f"{job.slug}.json").is_file())

    def metadata_of(self, slug: str) -> dict:
        if slug not in self.metadata:  # finished in a run whose index write did not happen
            self.metadata[slug] = _read_json(self.dir / f"{slug}.json", "a graph file")["metadata"]
        return self.metadata[slug]

    def add(self, result: dict) -> None:
        row = result["row"]
        self.rows[row["slug"]] = row
        if result.get("metadata") is not None:
            self.metadata[row["slug"]] = result["metadata"]
        else:
            self.metadata.pop(row["slug"], None)
        self._dirty = True
        if time.monotonic() - self._flushed >= _FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if not self._dirty and (self.dir / SUMMARY_FILE).exists():
            return
        order = [j.slug for j in self.jobs]
        rows = [self.rows[s] for s in order if s in self.rows]
        rows += [r for s, r in self.rows.items() if s not in set(order)]  # earlier runs' other prompts
        done = [s for s in order if self.rows.get(s, {}).get("status") == "done"]
        summary = {"format": SUMMARY_FORMAT, "version": SUMMARY_VERSION, "settings": self.settings,
                   "graphs": rows}
        index = {"graphs": self.foreign + [self.metadata_of(s) for s in done]}
        self._write(self.dir / INDEX_FILE, json.dumps(index, indent=2, ensure_ascii=False))
        self._write(self.dir / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False))
        self._dirty, self._flushed = False, time.monotonic()


def run_batch(jobs: list[PromptJob], out_dir: str | Path, *, model: str | Path, transcoders: str | Path,
              options: BatchOptions = BatchOptions(), ray: bool = False, address: str | None = None,
              workers: int | None = None, device: str | None = None, dtype: str = "float32",
              session: str | Path | None = None, progress: ProgressFn | None = None,
              cancel: CancelToken | None = None, trace: dict | None = None,
              on_result: Callable[[dict], None] | None = None) -> BatchReport:
    """Compute the graphs of `jobs` that `out_dir` does not hold yet (see the module docstring):
    in this process, or with `ray` on a Ray cluster (`address` as `scale.cluster.Cluster`), one
    call per prompt on actors that hold the model; then, with `session`, put them into it.

    On Cancelled or KeyboardInterrupt the finished graphs are kept and indexed (a re-run goes on
    from there) and the exception is raised again."""
    from .cluster import _absolute

    out_dir = Path(out_dir).expanduser().resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BatchError(f"Cannot create the output folder {out_dir} ({e.strerror or e}).") from e
    if not out_dir.is_dir():
        raise BatchError(f"{out_dir} is a file, not a folder.", "Give a folder for the graph files.")
    model, transcoders = _absolute(model), _absolute(transcoders)
    out = _Output(out_dir, jobs, _settings(model, transcoders, dtype, options))
    report_ = BatchReport(out_dir, jobs)
    todo: list[PromptJob] = []
    for job in jobs:
        if out.finished(job):
            report_.skipped.append(job.slug)
        else:
            todo.append(job)
    opts = options.to_json()
    total, done = len(jobs), len(report_.skipped)
    report(progress, "Attributing", done, total, f"{done} found finished")

    def collect(result: dict) -> None:
        nonlocal done
        out.add(result)
        report_.computed.append(result["row"]["slug"])
        done += 1
        report(progress, "Attributing", done, total, result["row"]["slug"])
        if on_result is not None:
            on_result(result)

    try:
        if todo and ray:
            _run_on_ray(todo, out_dir, model, transcoders, opts, address, workers, device, dtype, progress, cancel,
                        trace, collect, report_)
        elif todo:
            _run_here(todo, out_dir, model, transcoders, opts, device, dtype, progress, cancel, collect)
    finally:
        out._dirty = True
        out.flush()
    report_.rows = dict(out.rows)
    report(progress, "Attributing", total, total)
    if session is not None:
        report_.session = write_session(session, report_, model, transcoders, options, progress=progress,
                                        cancel=cancel)
    return report_


def _run_here(todo, out_dir, model, transcoders, opts, device, dtype, progress, cancel, collect) -> None:
    import torch

    from ..core.model.loading import load_model
    from ..core.transcoders.loading import load_transcoders

    bundle = load_model(model, device=device, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype],
                        progress=progress, cancel=cancel)
    tc = load_transcoders(transcoders, device=bundle.device, progress=progress, cancel=cancel)
    for job in todo:
        check(cancel)
        collect(trace_prompt(bundle, tc, job.to_dict(), opts, out_dir, cancel=cancel))


def _run_on_ray(todo, out_dir, model, transcoders, opts, address, workers, device, dtype, progress, cancel, trace,
                collect, report_) -> None:
    from .cluster import Call, Cluster, worker_pool

    with Cluster(address) as cluster:
        pool = worker_pool(cluster, model, transcoders, workers=workers, device=device, dtype=dtype,
                           progress=progress, cancel=cancel)
        report_.workers = pool.n
        calls = [Call(job.slug, "attribute", (job.to_dict(), opts, str(out_dir), trace)) for job in todo]
        seen: set[str] = set()
        for slug, result in pool.run(calls, cancel):
            if slug not in seen:  # a prompt re-run after a worker died is counted once
                seen.add(slug)
                collect(result)


# ---- the session ----
def _title(row: dict) -> str:
    prompt = row["prompt"] if len(row["prompt"]) <= 48 else row["prompt"][:47] + "…"
    top = row["top_logits"][0] if row.get("top_logits") else None
    logit = f" → {top['token']!r} {top['probability']:.2f}" if top else ""
    return f"{prompt}{logit} · rep {row['replacement']:.2f} · comp {row['completeness']:.2f}"


def _notes(row: dict) -> str:
    tops = ", ".join(f"{t['token']!r} {t['probability']:.3f}" for t in row.get("top_logits", []))
    return (f"attribute-batch graph {row['slug']}\nprompt: {row['prompt']}\ntop logits: {tops}\n"
            f"replacement {row['replacement']:.4f}, completeness {row['completeness']:.4f}; "
            f"{row['n_active_features']} active features, {row['n_graph_features']} in the graph, "
            f"{row['kept_nodes']} nodes / {row['kept_edges']} edges kept")


def write_session(path: str | Path, result: BatchReport, model: str, transcoders: str, options: BatchOptions, *,
                  progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> Path:
    """Put every finished graph of the batch into the session `path` (created, or updated: see the
    module docstring); returns its path."""
    from dataclasses import replace

    from ..core.graph.attribution_graph import load_graph
    from ..core.model.loading import describe_model
    from ..core.session.records import GraphRecord, ModelRef, Session, TranscoderRef
    from ..core.session.store import load_session, save_session
    from ..core.transcoders.loading import describe_transcoders

    path = Path(path).expanduser().resolve()
    session = load_session(path) if path.exists() else Session()
    state = dict(session.settings.get("attribute_batch") or {})
    ids: dict[str, int] = {str(k): int(v) for k, v in (state.get("slugs") or {}).items()}
    known = {g.id for g in session.graphs}
    next_id = session.next_graph_id()
    rows = [r for r in result.table() if r.get("status") == "done"]
    for i, row in enumerate(rows):
        check(cancel)
        report(progress, "Writing session", i, len(rows))
        slug = row["slug"]
        gid = ids.get(slug)
        if gid is None or gid not in known:
            gid, next_id = next_id, next_id + 1
        ids[slug] = gid
        record = GraphRecord(id=gid, graph=load_graph(result.out_dir / f"{slug}.npz"),
                             node_threshold=options.node_threshold, edge_threshold=options.edge_threshold,
                             title=_title(row), notes=_notes(row))
        session = session.with_graph(record, make_current=False)
        known.add(gid)
    changes: dict[str, Any] = {}
    if session.model is None:
        summary = describe_model(model)
        changes["model"] = ModelRef.from_folder(summary.folder, summary)
    if session.transcoders is None and Path(transcoders).exists():
        changes["transcoders"] = TranscoderRef.from_folder(transcoders, describe_transcoders(transcoders))
    first = ids.get(rows[0]["slug"]) if rows else None
    settings = {**session.settings, "attribute_batch": {"folder": str(result.out_dir), "slugs": ids}}
    if rows and "prompt" not in settings:
        settings["prompt"] = rows[0]["prompt"]
    session = replace(session, settings=settings, current_graph=session.current_graph or first, **changes)
    save_session(session, path)
    report(progress, "Writing session", len(rows), len(rows))
    return path
