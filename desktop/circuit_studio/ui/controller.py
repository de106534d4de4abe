"""The window's controller: the Qt face of the `core.session.workspace.Workspace`, and the jobs that change it.

The workspace (Qt-free) is the one source of truth: what is loaded, the graphs and what each was
traced with, the current analysis and its steering. The controller turns the workspace's events into
Qt signals for the views, and runs long work (loading, tracing) on the `JobRunner`, handing each
result to the workspace. Views read `controller.analysis` (the current `core.session.analysis.Analysis`) and
`controller.bundle` / `transcoders` / `feature_index`: the current graph's own resources (None where
they are not loaded), or, without a graph, the ones a new trace would use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from ..core.session.analysis import Analysis
from ..core.graph.attribution_graph import AttributionParams
from ..core.interventions.steering import ResultChanged, RowsChanged, SteeringLoaded
from ..core.session.workspace import Workspace, index_ref, model_ref, transcoders_ref
from ..core.session.workspace_events import (AnalysisChanged, BindingChanged, CurrentGraphChanged, GraphWillChange,
                                             ResourcesChanged)
from .jobs import JobError, JobHandle, JobRunner

RESOURCES = Path(__file__).resolve().parents[3] / "resources"
DEMO = RESOURCES / "demo"


@dataclass(frozen=True)
class CuratedPrompt:
    behaviour: str
    prompt: str
    answer: str = ""


def demo_paths(root: Path = DEMO, kind: str = "plt") -> tuple[Path, Path, Path]:
    """(model folder, transcoder folder, feature index file) of the bundled demo, with its per-layer
    ("plt") or cross-layer ("clt") transcoders."""
    if kind == "clt":
        return root / "model", root / "clt", root / "clt_features.sqlite"
    return root / "model", root / "transcoders", root / "features.sqlite"


def read_curated_prompts(root: Path = DEMO) -> list[CuratedPrompt]:
    path = root / "prompts.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    items = data["prompts"] if isinstance(data, dict) else data
    return [CuratedPrompt(p.get("behaviour", ""), p["prompt"], p.get("answer", "")) for p in items]


class Controller(QObject):
    model_changed = Signal()  # what the views show with (the current graph's resources, or the active ones)
    analysis_will_change = Signal()  # the current analysis is about to be replaced
    analysis_changed = Signal()  # another graph (or none) is current
    aspect_changed = Signal(str)  # an Aspect of the current analysis changed
    error = Signal(str, object)  # title, JobError
    message = Signal(str)  # a short status-bar message
    # after an intervention: {feature node: relative activation change (after − before) / |before|}, or None
    intervention_changed = Signal(object)
    loading_changed = Signal()  # a background load of the current graph's resources started or ended

    def __init__(self, parent: QObject | None = None, workspace: Workspace | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace or Workspace()
        self.jobs = JobRunner(self)
        self.jobs.failed_unhandled.connect(lambda name, err: self.error.emit(f"{name} failed", err))
        self.jobs.cancelled.connect(lambda name: self.message.emit(f"{name} cancelled."))
        self.curated: list[CuratedPrompt] = []
        self.params = AttributionParams(batch_size=256, max_feature_nodes=7500)
        self.intervention_changes: dict[int, float] | None = None  # the last one sent (for views created later)
        self.loading: set[str] = set()  # identities being loaded for the current graph (banners say so)
        # a prompt traced while the model or transcoders were still loading: traced once they are
        self._pending_trace: tuple | None = None
        for signal in (self.jobs.finished, self.jobs.failed, self.jobs.cancelled):
            signal.connect(self._trace_pending)
        self._shown = self._view_key()
        self._switching = False
        self.workspace.events.connect(self._on_event)

    # ---- what the views read ----
    @property
    def analysis(self) -> Analysis | None:
        return self.workspace.analysis

    @property
    def bundle(self):
        return self.workspace.live().bundle

    @bundle.setter
    def bundle(self, bundle) -> None:  # scripts and tests: use this object now, for the graph on screen too
        self._use("model", bundle)

    @property
    def transcoders(self):
        return self.workspace.live().transcoders

    @transcoders.setter
    def transcoders(self, tc) -> None:
        self._use("transcoders", tc)

    @property
    def feature_index(self):
        return self.workspace.live().index

    def _use(self, kind: str, obj) -> None:
        ws = self.workspace
        ref = ws.register(kind, obj)
        parts = {kind: ref}
        if kind == "transcoders" and ws.index_ref_for(ref) is not None:
            parts["index"] = ws.index_ref_for(ref)
        ws.set_active(**parts)
        ws.rebind_current(**parts)
        self._emit_model_changed()

    # ---- workspace events -> signals ----
    def _view_key(self) -> tuple:
        live = self.workspace.live()
        return id(live.bundle), id(live.transcoders), id(live.index), self.workspace.current_id

    def _emit_model_changed(self) -> None:
        self._shown = self._view_key()
        self.model_changed.emit()

    def _on_event(self, event) -> None:
        if isinstance(event, GraphWillChange):
            self._switching = True  # until the next graph is in place, its steering's events wait
            self.analysis_will_change.emit()
        elif isinstance(event, CurrentGraphChanged):
            self._switching = False
            self.intervention_changes = None
            self.analysis_changed.emit()
            if self._view_key()[:3] != self._shown[:3]:
                self._emit_model_changed()
            self._shown = self._view_key()
            if self.workspace.steering.changes is not None:
                self.set_intervention_changes(self.workspace.steering.changes)
            self._ensure_loaded()
        elif self._switching:
            return
        elif isinstance(event, AnalysisChanged):
            self.aspect_changed.emit(event.aspect.value)
        elif isinstance(event, (ResourcesChanged, BindingChanged)):
            if self._view_key() != self._shown or isinstance(event, ResourcesChanged):
                self._emit_model_changed()
            if isinstance(event, BindingChanged):
                self._ensure_loaded()
        elif isinstance(event, (ResultChanged, RowsChanged, SteeringLoaded)):
            changes = self.workspace.steering.changes
            if changes != self.intervention_changes:
                self.set_intervention_changes(changes)

    def set_intervention_changes(self, changes: dict[int, float] | None) -> None:
        """Tell the views how each feature node's activation changed under the current intervention
        (None: no intervention, clear the marks). Follows the steering model."""
        self.intervention_changes = changes
        self.intervention_changed.emit(changes)

    # ---- loading ----
    def load_model(self, folder: str | Path, on_done=None, *, make_active: bool = True) -> JobHandle:
        """Load a model folder in the background (a model already loaded from the same files is reused). It
        becomes what new traces use; the graphs on screen keep theirs."""
        from ..core.model.loading import load_model
        from ..core.session.records import content_hash

        ws = self.workspace

        def job(progress, cancel):
            identity = content_hash(folder)
            known = ws.loaded(identity)
            if known is not None:
                return known, None
            bundle = load_model(folder, progress=progress, cancel=cancel)
            return model_ref(bundle.summary.folder, bundle.summary, identity), bundle

        def done(out):
            ref, bundle = out
            ref = ws.add_resource(ref, bundle) if bundle is not None else ref
            if make_active:
                same = ws.active.model is not None and ws.active.model.identity == ref.identity
                ws.set_active(model=ref, **({} if same else {"transcoders": None, "index": None}))
            self.message.emit(f"Loaded {ref.name}.")
            if on_done:
                on_done()

        return self.jobs.submit("Loading model", job, done, key=f"load model {folder}")

    def load_transcoders(self, folder: str | Path, on_done=None, *, index: str | Path | None = None,
                         make_active: bool = True) -> JobHandle | None:
        """Load a transcoder folder for the active model, in the background, with the feature index built for
        them (`index`, or one found next to them: `core.features.index.find_feature_index`)."""
        from ..core.features.index import find_feature_index
        from ..core.session.records import content_hash
        from ..core.transcoders.loading import check_transcoders_fit, describe_transcoders, load_transcoders

        ws = self.workspace
        bundle = ws.resource(ws.active.model)
        if bundle is None:
            self.error.emit("No model", JobError("Open a model folder first.", "File ▸ Open model folder…", ""))
            return None

        def job(progress, cancel):
            identity = content_hash(folder)
            ref, tc = ws.loaded(identity), None
            if ref is None:
                tc = load_transcoders(folder, device=bundle.device, progress=progress, cancel=cancel)
                check_transcoders_fit(tc, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model,
                                      model_name=bundle.name)
                ref = transcoders_ref(tc.source or folder, describe_transcoders(tc.source or folder), identity)
            found = None
            path = Path(index) if index is not None else find_feature_index(tc or ws.resource(ref), folder)
            if path is not None and path.is_file():
                iid = content_hash(path)
                found = (ws.loaded(iid), None) if ws.loaded(iid) is not None else (index_ref(path, iid), None)
            return ref, tc, found

        def done(out):
            ref, tc, found = out
            if tc is not None:
                ref = ws.add_resource(ref, tc)
            iref = None
            if found is not None:
                iref = found[0] if ws.resource(found[0]) is not None else self._open_index_ref(found[0])
            if iref is not None:
                ws.link_index(ref, iref)
            if make_active:
                ws.set_active(transcoders=ref, index=iref or ws.index_ref_for(ref))
            self.message.emit(f"Loaded transcoders {ref.name}.")
            if on_done:
                on_done()

        return self.jobs.submit("Loading transcoders", job, done, key=f"load transcoders {folder}")

    def _open_index_ref(self, ref):
        """Open the index file of `ref` and keep it loaded: its loaded ref, or None (with a message)."""
        from ..core.features.index import FeatureIndex

        try:
            index = FeatureIndex.open(ref.path)
        except Exception as e:  # noqa: BLE001 - any failure here leaves the graph usable without examples
            self.error.emit("Feature index", JobError(f"Cannot open {ref.path}: {e}", "Build a new index from a text "
                                                      "file in the feature pane.", ""))
            return None
        return self.workspace.add_resource(ref, index)

    def open_feature_index(self, path: str | Path) -> None:
        """Open a feature index for the transcoders on screen (the current graph's, or the active ones)."""
        ws = self.workspace
        try:
            ref = index_ref(path)
        except FileNotFoundError:
            self.error.emit("Feature index", JobError(f"Cannot open {path}: it does not exist.", "Build a new index "
                                                      "from a text file in the feature pane.", ""))
            return
        ref = ws.loaded(ref.identity) or self._open_index_ref(ref)
        if ref is None:
            return
        live = ws.live()
        tc_ref = live.binding.transcoders
        if tc_ref is not None:
            ws.link_index(tc_ref, ref)
        ws.rebind_current(index=ref)
        active_tc = ws.active.transcoders
        if active_tc is None or tc_ref is None or active_tc.identity == tc_ref.identity:
            ws.set_active(index=ref)
        self._emit_model_changed()

    def open_demo(self, root: Path = DEMO, on_done=None, kind: str = "plt") -> None:
        model, transcoders, index = demo_paths(root, kind)
        self.curated = read_curated_prompts(root)
        self.load_model(model, on_done=lambda: self.load_transcoders(
            transcoders, on_done=on_done, index=index if index.is_file() else None))

    def _ensure_loaded(self) -> None:
        """The current graph's transcoders (and index) in the background when its model is loaded but they are
        not, and their folder is still there; until then it is shown as saved (the banner says so)."""
        from ..core.session.records import content_hash

        ws = self.workspace
        if ws.current_id is None:
            return
        live = ws.live()
        ref = live.binding.transcoders
        if live.bundle is None or ref is None or live.transcoders is not None or ref.in_memory \
                or ref.identity in self.loading or not Path(ref.path).exists():
            return
        from ..core.transcoders.loading import check_transcoders_fit, load_transcoders

        bundle, gid = live.bundle, ws.current_id
        index_path = live.binding.index.path if live.binding.index is not None else None

        def job(progress, cancel):
            if content_hash(ref.path) != ref.identity:
                return None  # the folder changed since: not this graph's transcoders any more
            tc = load_transcoders(ref.path, device=bundle.device, progress=progress, cancel=cancel)
            check_transcoders_fit(tc, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model,
                                  model_name=bundle.name)
            return tc

        def finish():
            self.loading.discard(ref.identity)
            self.loading_changed.emit()

        def done(tc):
            finish()
            if tc is None:
                self.message.emit(f"{ref.path} changed since this graph was traced: showing saved results.")
                return
            ws.add_resource(ref, tc)
            if index_path and Path(index_path).is_file() and ws.resource(live.binding.index) is None:
                iref = self._open_index_ref(live.binding.index)
                if iref is not None:
                    ws.link_index(ref, iref)
            self.message.emit(f"Loaded this graph's transcoders {ref.name}.")

        self.loading.add(ref.identity)
        self.loading_changed.emit()
        self.jobs.submit(f"Loading transcoders of graph {gid}", job, done, on_error=lambda e: (
            finish(), self.error.emit("Loading this graph's transcoders failed", e)), on_cancel=finish,
            key=f"load transcoders {ref.identity}")

    # ---- tracing ----
    def trace(self, prompt: str, params: AttributionParams | None = None, on_done=None, *, targets=None,
              title: str = "", chat: bool = False) -> JobHandle | None:
        """Trace `prompt` with the active model and transcoders; the graph joins the session, bound to them.
        `targets`: the logit nodes (`core.attribution.targets`: token ids, token strings, `CustomTarget`, `LogitDiff`;
        None for the most probable logits), `title` the graph's title in the session; `chat`: as a user turn
        under the tokenizer's chat template (`core.model.chat_template`)."""
        ws = self.workspace
        binding = ws.active
        bundle, tc = ws.resource(binding.model), ws.resource(binding.transcoders)
        if (bundle is None or tc is None) and self.resources_loading():
            self._pending_trace = (prompt, params, on_done, targets, title, chat)  # the latest prompt wins
            self.message.emit("Tracing as soon as the model and transcoders have loaded.")
            return None
        if bundle is None or tc is None:
            self.error.emit("Nothing to trace with", JobError(
                "Load a model and its transcoders first.", "File ▸ Open demo, or open a model and transcoder folder.", ""))
            return None
        if chat:
            from ..core.model.chat_template import chat_prompt_ids
            from ..core.errors import CircuitStudioError

            try:
                prompt = chat_prompt_ids(bundle.tokenizer, prompt)
            except CircuitStudioError as e:
                self.error.emit("No chat template", JobError(e.message, e.hint, ""))
                return None
        params = params or self.params
        labels = ws.labels_for(binding)
        index = ws.resource(binding.index) or ws.resource(ws.index_ref_for(binding.transcoders))

        def job(progress, cancel):
            # imported here, on the compute thread: it imports torch, which must not block the window
            from ..core.attribution.attribute import attribute

            graph = attribute(prompt, bundle, tc, params, targets=targets, progress=progress, cancel=cancel)
            return Analysis(graph, labels=labels, auto_label=index.label if index else None)

        def done(analysis):
            ws.add_graph(analysis.graph, binding, analysis=analysis, title=title)
            if on_done:
                on_done()

        return self.jobs.submit("Tracing", job, done)

    def resources_loading(self) -> bool:
        """Whether a model or transcoder set is being loaded (or waits to be): a trace then waits for it."""
        jobs = ([self.jobs.current] if self.jobs.current is not None else []) + list(self.jobs.waiting)
        return any(j.key.startswith(("load model ", "load transcoders ")) for j in jobs)

    def _trace_pending(self, *_) -> None:
        if self._pending_trace is not None and not self.resources_loading():
            pending, self._pending_trace = self._pending_trace, None
            prompt, params, on_done, targets, title, chat = pending
            self.trace(prompt, params, on_done, targets=targets, title=title, chat=chat)

    def cancel(self) -> None:
        self._pending_trace = None
        self.jobs.cancel()

    def set_analysis(self, analysis: Analysis | None) -> None:
        """Show `analysis` (a new graph of the session, bound to the active resources), or no graph."""
        if analysis is None:
            self.workspace.set_current(None)
        else:
            self.workspace.add_graph(analysis.graph, analysis=analysis)

    def shutdown(self) -> None:
        self.jobs.shutdown()
