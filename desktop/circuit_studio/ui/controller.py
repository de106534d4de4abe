"""The window's controller: what is loaded, the current analysis, and the jobs that change them.

Views get the controller in their constructor, read `controller.analysis` (a Qt-free
`core.analysis.Analysis`) and call its methods; they redraw on the controller's signals. Long
work (loading, tracing, indexing) goes to the `JobRunner` and comes back as a new immutable result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from ..core.analysis import Analysis, Aspect
from ..core.graph import AttributionParams
from .jobs import JobError, JobRunner

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
    model_changed = Signal()  # bundle / transcoders / index changed
    analysis_will_change = Signal()  # the current analysis is about to be replaced (save its state now)
    analysis_changed = Signal()  # a new graph (or none)
    aspect_changed = Signal(str)  # an Aspect of the current analysis changed
    error = Signal(str, object)  # title, JobError
    message = Signal(str)  # a short status-bar message
    # after an intervention: {feature node: relative activation change (after − before) / |before|}, or None
    intervention_changed = Signal(object)
    intervention_changes: dict[int, float] | None = None  # the last one sent (for views created later)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.jobs = JobRunner(self)
        self.jobs.failed.connect(lambda name, err: self.error.emit(f"{name} failed", err))
        self.jobs.cancelled.connect(lambda name: self.message.emit(f"{name} cancelled."))
        self.bundle = None  # core.model_loading.ModelBundle
        self.transcoders = None  # core.transcoders.TranscoderSet
        self.feature_index = None  # core.feature_index.FeatureIndex
        self.analysis: Analysis | None = None
        self.curated: list[CuratedPrompt] = []
        self.params = AttributionParams(batch_size=256, max_feature_nodes=7500)

    # ---- loading ----
    def load_model(self, folder: str | Path, on_done=None) -> None:
        from ..core.model_loading import load_model

        def job(progress, cancel):
            return load_model(folder, progress=progress, cancel=cancel)

        def done(bundle):
            self.bundle = bundle
            self.transcoders = None
            self.feature_index = None
            self.set_analysis(None)
            self.model_changed.emit()
            self.message.emit(f"Loaded {bundle.name}.")
            if on_done:
                on_done()

        self.jobs.submit("Loading model", job, done)

    def load_transcoders(self, folder: str | Path, on_done=None) -> None:
        from ..core.transcoder_loading import check_transcoders_fit, load_transcoders

        bundle = self.bundle
        if bundle is None:
            self.error.emit("No model", JobError("Open a model folder first.", "File ▸ Open model folder…", ""))
            return

        def job(progress, cancel):
            # stored dtype, memory-mapped on the CPU; copied whole only to a GPU
            tc = load_transcoders(folder, device=bundle.device, progress=progress, cancel=cancel)
            check_transcoders_fit(tc, n_layers=bundle.arch.n_layers, d_model=bundle.arch.d_model,
                                  model_name=bundle.name)
            return tc

        def done(tc):
            self.transcoders = tc
            self.feature_index = None
            self.model_changed.emit()
            self.message.emit(f"Loaded transcoders {tc.scan or Path(folder).name}.")
            if on_done:
                on_done()

        self.jobs.submit("Loading transcoders", job, done)

    def open_feature_index(self, path: str | Path) -> None:
        from ..core.feature_index import FeatureIndex

        try:
            self.feature_index = FeatureIndex.open(path)
        except Exception as e:  # noqa: BLE001 - any failure here leaves the graph usable without examples
            self.error.emit("Feature index", JobError(f"Cannot open {path}: {e}", "Build a new index from a text "
                                                      "file in the feature pane.", ""))
            return
        if self.analysis is not None:
            self.analysis.auto_label = self.feature_index.label
            self.aspect_changed.emit(Aspect.LABELS.value)
        self.model_changed.emit()

    def open_demo(self, root: Path = DEMO, on_done=None, kind: str = "plt") -> None:
        model, transcoders, index = demo_paths(root, kind)
        self.curated = read_curated_prompts(root)

        def after_transcoders():
            if index.is_file():
                self.open_feature_index(index)
            if on_done:
                on_done()

        self.load_model(model, on_done=lambda: self.load_transcoders(transcoders, on_done=after_transcoders))

    # ---- tracing ----
    def trace(self, prompt: str, params: AttributionParams | None = None, on_done=None) -> None:
        from ..core.attribution import attribute

        bundle, tc = self.bundle, self.transcoders
        if bundle is None or tc is None:
            self.error.emit("Nothing to trace with", JobError(
                "Load a model and its transcoders first.", "File ▸ Open demo, or open a model and transcoder folder.", ""))
            return
        params = params or self.params
        labels = dict(self.analysis.labels) if self.analysis else {}
        index = self.feature_index

        def job(progress, cancel):
            graph = attribute(prompt, bundle, tc, params, progress=progress, cancel=cancel)
            return Analysis(graph, labels=labels, auto_label=index.label if index else None)

        def done(analysis):
            self.set_analysis(analysis)
            if on_done:
                on_done()

        self.jobs.submit("Tracing", job, done)

    def cancel(self) -> None:
        self.jobs.cancel()

    def set_analysis(self, analysis: Analysis | None) -> None:
        self.analysis_will_change.emit()
        self.analysis = analysis
        if analysis is not None:
            analysis.subscribe(lambda aspect: self.aspect_changed.emit(aspect.value))
        self.analysis_changed.emit()

    def set_intervention_changes(self, changes: dict[int, float] | None) -> None:
        """Tell the views how each feature node's activation changed under the current intervention
        (None: no intervention, clear the marks). Sent by the intervention pane."""
        self.intervention_changes = changes
        self.intervention_changed.emit(changes)

    def shutdown(self) -> None:
        self.jobs.shutdown()
