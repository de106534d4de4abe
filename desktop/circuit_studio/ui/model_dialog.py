"""Choosing a model and its transcoders, validated before anything is loaded.

Either can be a local folder or a repo id (`ORG/NAME[@REVISION]`) in the local Hugging Face cache.
As soon as one is typed or picked, its headers are read (no weights) and the dialog says what it
found — for the model its architecture, layers, d_model, parameters, dtype, size on disk; for the
transcoders their format, activation, width, layers, dtype, size on disk — and the memory each will
take (`memory_plan`), or exactly what is wrong, including a mismatch between the two. OK is
enabled only for a valid pair; a plan that does not fit is a warning, since it is an estimate.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QVBoxLayout, QWidget)

from ..core.errors import CircuitStudioError
from ..core.model.memory_plan import RAM, MemoryPlan, RunSize, format_bytes, plan_memory
from ..core.model.loading import ModelSummary, default_device, describe_model
from ..core.transcoders.loading import TranscoderSummary, describe_transcoders

# What the window loads and traces with (Controller: float32, batch 256, 7500 feature nodes); the
# prompt length is not known yet, so the plan is for a typical one.
WINDOW_DTYPE = "float32"
PLANNED_RUN = RunSize(n_tokens=64, batch_size=256, max_feature_nodes=7500)
_TRANSCODER_PARTS = ("transcoders", "transcoders on the GPU")
_ATTRIBUTION_PARTS = ("active features' rows", "forward pass", "backward batches", "graph")


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _needs(plan: MemoryPlan | None, names: tuple[str, ...]) -> str:
    parts = [p for p in plan.parts if p.name in names] if plan else []
    if not parts:
        return ""
    where = sorted({p.where for p in parts}, key=lambda w: w != RAM)
    return " · takes " + " + ".join(f"{format_bytes(sum(p.nbytes for p in parts if p.where == w))} of {w}"
                                     for w in where)


def model_text(s: ModelSummary, plan: MemoryPlan | None = None) -> str:
    stored = f" · stored as {s.dtype}" if s.dtype else ""
    return (f"{s.architecture} ({s.family}) · {s.n_layers} layers · d_model {s.d_model} · "
            f"{s.n_heads} heads · MLP {s.d_mlp} · vocab {s.vocab_size} · {_count(s.n_parameters)} parameters"
            f"{stored} · {format_bytes(s.size_bytes)} on disk{_needs(plan, ('model weights',))}")


def transcoder_text(t: TranscoderSummary, plan: MemoryPlan | None = None) -> str:
    kind = "cross-layer transcoder" if t.kind == "clt" else "per-layer transcoders"
    k = getattr(t, "k", None)
    activation = f"{t.activation} k={k}" if k else t.activation
    fmt = getattr(t, "format", None) or t.file_format
    skip = " · skip" if t.has_skip else ""
    return (f"{fmt} ({t.file_format}) · {activation} {kind} · width {t.n_features} · {t.n_layers} layers · "
            f"d_model {t.d_model}{skip} · {t.feature_input_hook} → {t.feature_output_hook} · {t.dtype} · "
            f"{format_bytes(t.size_bytes)} on disk{_needs(plan, _TRANSCODER_PARTS)}")


def memory_text(plan: MemoryPlan) -> str:
    on = "the GPU" if plan.device == "cuda" else "the CPU"
    totals = "; ".join(line.removeprefix("total ") for line in plan.lines() if line.startswith("total "))
    text = (f"Tracing a {PLANNED_RUN.n_tokens}-token prompt on {on} in {plan.dtype}: attribution"
            f"{_needs(plan, _ATTRIBUTION_PARTS).removeprefix(' · takes')}; in all {totals}.")
    if not plan.fits:
        text += f" {plan.problem} From the command line: {plan.hint}"
    return text


class _FolderField(QWidget):
    def __init__(self, caption: str, parent=None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(caption)
        browse = QPushButton("Browse…")
        browse.clicked.connect(lambda: self._browse(caption))
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(browse)

    def _browse(self, caption: str) -> None:
        folder = QFileDialog.getExistingDirectory(self, caption, self.edit.text() or str(Path.home()))
        if folder:
            self.edit.setText(folder)


class ModelDialog(QDialog):
    """`exec()`, then read `model_folder` and `transcoder_folder` (each a folder or a repo id)."""

    def __init__(self, parent=None, model: str = "", transcoders: str = "") -> None:
        super().__init__(parent)
        self.setWindowTitle("Open model and transcoders")
        self.setMinimumWidth(640)
        self.model_field = _FolderField("HuggingFace model folder, or ORG/NAME[@REVISION] in the local cache")
        self.tc_field = _FolderField("Transcoder folder (config.yaml + weights), or ORG/NAME in the local cache")
        self.model_info = QLabel()
        self.tc_info = QLabel()
        self.memory_info = QLabel()
        for label in (self.model_info, self.tc_info, self.memory_info):
            label.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Model", self.model_field)
        form.addRow("", self.model_info)
        form.addRow("Transcoders", self.tc_field)
        form.addRow("", self.tc_info)
        form.addRow("Memory", self.memory_info)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.buttons)
        self.plan: MemoryPlan | None = None
        self.model_field.edit.textChanged.connect(self.validate)
        self.tc_field.edit.textChanged.connect(self.validate)
        self.model_field.edit.setText(model)
        self.tc_field.edit.setText(transcoders)
        self.validate()

    @property
    def model_folder(self) -> str:
        return self.model_field.edit.text().strip()

    @property
    def transcoder_folder(self) -> str:
        return self.tc_field.edit.text().strip()

    def validate(self) -> bool:
        model = tcs = None
        ok = True
        if self.model_folder:
            try:
                model = describe_model(self.model_folder)
            except CircuitStudioError as e:
                self._show(self.model_info, str(e), good=False)
                ok = False
        else:
            self._show(self.model_info, "", good=True)
            ok = False
        if self.transcoder_folder:
            try:
                tcs = describe_transcoders(self.transcoder_folder)
            except CircuitStudioError as e:
                self._show(self.tc_info, str(e), good=False)
                ok = False
        else:
            self._show(self.tc_info, "Optional now; needed before tracing.", good=True)
        mismatch = model and tcs and (model.n_layers, model.d_model) != (tcs.n_layers, tcs.d_model)
        # the window loads float32 on its default device; a run is planned only for a usable pair
        self.plan = plan = plan_memory(model, tcs, device=default_device().type, dtype=WINDOW_DTYPE,
                                       run=PLANNED_RUN if model and tcs and not mismatch else None)
        if model:
            self._show(self.model_info, model_text(model, plan), good=True)
        if tcs:
            self._show(self.tc_info, transcoder_text(tcs, plan), good=True)
        if mismatch:
            self._show(self.tc_info, f"These transcoders have {tcs.n_layers} layers and d_model {tcs.d_model}, but "
                       f"{model.name} has {model.n_layers} layers and d_model {model.d_model}. Choose the "
                       "transcoders trained on this model.", good=False)
            ok = False
        if plan.n_nodes:
            self._show(self.memory_info, memory_text(plan), good=plan.fits)
        else:
            self._show(self.memory_info, "", good=True)
        self.buttons.button(QDialogButtonBox.Ok).setEnabled(ok)
        return ok

    @staticmethod
    def _show(label: QLabel, text: str, good: bool) -> None:
        label.setText(text)
        label.setStyleSheet("" if good else "color: #b00020;")
