"""Choosing a model folder and its transcoders, validated before anything is loaded.

As soon as a folder is typed or picked, its headers are read (no weights) and the dialog says
what it found — family, layers, d_model, parameters; transcoder kind, width, layers — or exactly
what is wrong, including a mismatch between the two. OK is enabled only for a valid pair.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QVBoxLayout, QWidget)

from ..core.errors import CircuitStudioError
from ..core.model_loading import ModelSummary, describe_model
from ..core.transcoder_loading import TranscoderSummary, describe_transcoders


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def model_text(s: ModelSummary) -> str:
    return (f"{s.architecture} ({s.family}) · {s.n_layers} layers · d_model {s.d_model} · "
            f"{s.n_heads} heads · MLP {s.d_mlp} · vocab {s.vocab_size} · {_count(s.n_parameters)} parameters")


def transcoder_text(t: TranscoderSummary) -> str:
    kind = "cross-layer transcoder" if t.kind == "clt" else "per-layer transcoders"
    skip = " · skip" if t.has_skip else ""
    return (f"{t.activation} {kind} · {t.n_layers} layers · width {t.n_features} · d_model {t.d_model}{skip} · "
            f"{t.feature_input_hook} → {t.feature_output_hook} · {t.size_bytes / 2**20:.1f} MiB")


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
    """`exec()`, then read `model_folder` and `transcoder_folder`."""

    def __init__(self, parent=None, model: str = "", transcoders: str = "") -> None:
        super().__init__(parent)
        self.setWindowTitle("Open model and transcoders")
        self.setMinimumWidth(640)
        self.model_field = _FolderField("HuggingFace model folder (config.json, weights, tokenizer)")
        self.tc_field = _FolderField("Transcoder folder (config.yaml + weights)")
        self.model_info = QLabel()
        self.tc_info = QLabel()
        for label in (self.model_info, self.tc_info):
            label.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Model", self.model_field)
        form.addRow("", self.model_info)
        form.addRow("Transcoders", self.tc_field)
        form.addRow("", self.tc_info)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.buttons)
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
                self._show(self.model_info, model_text(model), good=True)
            except CircuitStudioError as e:
                self._show(self.model_info, str(e), good=False)
                ok = False
        else:
            self._show(self.model_info, "", good=True)
            ok = False
        if self.transcoder_folder:
            try:
                tcs = describe_transcoders(self.transcoder_folder)
                self._show(self.tc_info, transcoder_text(tcs), good=True)
            except CircuitStudioError as e:
                self._show(self.tc_info, str(e), good=False)
                ok = False
        else:
            self._show(self.tc_info, "Optional now; needed before tracing.", good=True)
        if model and tcs and (model.n_layers, model.d_model) != (tcs.n_layers, tcs.d_model):
            self._show(self.tc_info, f"These transcoders have {tcs.n_layers} layers and d_model {tcs.d_model}, but "
                       f"{model.name} has {model.n_layers} layers and d_model {model.d_model}. Choose the "
                       "transcoders trained on this model.", good=False)
            ok = False
        self.buttons.button(QDialogButtonBox.Ok).setEnabled(ok)
        return ok

    @staticmethod
    def _show(label: QLabel, text: str, good: bool) -> None:
        label.setText(text)
        label.setStyleSheet("" if good else "color: #b00020;")
