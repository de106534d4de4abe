"""The prompt bar above the canvas: the prompt (with the curated prompts), the chat-template preview,
Trace / Cancel and the running job's progress."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..core.errors import CircuitStudioError
from ..core.progress import Progress
from ..core.session.workspace_events import PromptChanged
from .controller import Controller
from .intervention_rows import ElidedLabel


class PromptBar(QWidget):
    """The prompt (editable, with the curated prompts in its list), Trace / Cancel and the job's progress."""

    def __init__(self, controller: Controller, parent=None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.prompt = QComboBox()
        self.prompt.setEditable(True)
        self.prompt.setInsertPolicy(QComboBox.NoInsert)
        self.prompt.lineEdit().setPlaceholderText("Type a prompt to trace, or pick one of the demo's")
        self.prompt.lineEdit().returnPressed.connect(self.trace)
        self.prompt.editTextChanged.connect(controller.workspace.set_prompt)  # the workspace keeps the text
        controller.workspace.events.connect(self._prompt_changed, PromptChanged)
        # instruct models: the tokenizer's own chat template, its tokens previewed before tracing
        self.chat_box = QCheckBox("Chat template")
        self.chat_box.setToolTip("Trace the prompt as a user turn under the tokenizer's chat template (instruct models)")
        self.chat_preview = ElidedLabel("")
        self.chat_preview.setContentsMargins(6, 0, 6, 2)
        self.chat_preview.hide()
        self.chat_box.toggled.connect(self.update_chat_preview)
        self.prompt.editTextChanged.connect(self.update_chat_preview)
        self.trace_button = QPushButton("Trace")
        self.trace_button.setDefault(True)
        self.trace_button.clicked.connect(self.trace)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(controller.cancel)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("Idle")
        self.progress.setValue(0)
        self.progress.setMaximumWidth(260)
        # wide enough for the longest phase ("Loading transcoders 26/26") on one line
        self.progress.setMinimumWidth(self.progress.fontMetrics().horizontalAdvance("Loading transcoders 26/26") + 24)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        row = QHBoxLayout()
        outer.addLayout(row)
        outer.addWidget(self.chat_preview)
        row.setContentsMargins(6, 6, 6, 2)
        row.addWidget(QLabel("Prompt"))
        row.addWidget(self.prompt, 1)
        row.addWidget(self.chat_box)
        row.addWidget(self.trace_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.progress)
        jobs = controller.jobs
        jobs.busy_changed.connect(self._busy)
        jobs.started.connect(lambda name: self._show(Progress(name, 0, 0)))
        jobs.progress.connect(lambda name, p: self._show(p))
        jobs.finished.connect(lambda name, _: self._idle(f"{name}: done"))
        jobs.failed.connect(lambda name, _: self._idle(f"{name}: failed"))
        jobs.cancelled.connect(lambda name: self._idle(f"{name}: cancelled"))
        controller.model_changed.connect(self.refresh_prompts)
        controller.model_changed.connect(self.update_chat_preview)

    def refresh_prompts(self) -> None:
        text = self.prompt.currentText()
        self.prompt.clear()
        for p in self.controller.curated:
            self.prompt.addItem(p.prompt, p)
            self.prompt.setItemData(self.prompt.count() - 1, f"{p.behaviour}: expected {p.answer!r}",
                                    Qt.ToolTipRole)
        self.prompt.setEditText(text or (self.controller.curated[0].prompt if self.controller.curated else ""))

    def _prompt_changed(self, event: PromptChanged) -> None:
        if self.prompt.currentText() != event.text:
            self.prompt.setEditText(event.text)

    def trace(self) -> None:
        self.controller.trace(self.prompt.currentText(), chat=self.chat_box.isChecked())

    def update_chat_preview(self, *_) -> None:
        """With "Chat template" on: the templated prompt's tokens (or the one line saying why there are none)."""
        from ..core.model.chat_template import chat_prompt_tokens
        from ..core.graph.display_text import token_label

        if not self.chat_box.isChecked():
            self.chat_preview.hide()
            return
        bundle = self.controller.workspace.resource(self.controller.workspace.active.model)
        if bundle is None:
            text = "Chat template: load a model to see the tokens it produces."
        else:
            try:
                tokens = chat_prompt_tokens(bundle.tokenizer, self.prompt.currentText() or " x")
                text = f"{len(tokens)} tokens: " + " · ".join(token_label(t) for t in tokens)
            except CircuitStudioError as e:
                text = str(e)
        self.chat_preview.set_full_text(text)
        self.chat_preview.setToolTip(text)
        self.chat_preview.show()

    def _busy(self, busy: bool) -> None:
        self.cancel_button.setEnabled(busy)
        # while the model or transcoders load (the demo at start), a prompt can be traced: it waits for them
        self.trace_button.setEnabled(not busy or self.controller.resources_loading())

    def _show(self, p: Progress) -> None:
        self.progress.setMaximum(max(p.total, 0))
        self.progress.setValue(p.done)
        self.progress.setFormat(f"{p.phase} {p.done}/{p.total}" if p.total else p.phase)

    def _idle(self, text: str) -> None:
        self.progress.setMaximum(1)
        self.progress.setValue(0)
        self.progress.setFormat(text)
