"""The box a feature shows when no feature index is open: it says so and offers to build one from a text
file, as a background job on the controller's `JobRunner` (its progress shows in the window's progress
bar and here), after which the index is opened with `controller.open_feature_index`; or to open one."""

from __future__ import annotations

import html
import os
from pathlib import Path

from PySide6.QtCore import QStandardPaths, Qt, Signal
from PySide6.QtWidgets import QFileDialog, QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout

from .style import muted

BUILD_JOB = "Building feature index"
INDEX_FILE = "feature_index.sqlite"
DEFAULT_CONTEXT = 64  # tokens per corpus window, BOS included (as `circuit-studio index-features`)


class IndexBuilder(QFrame):
    """`refresh()` says what can be done now; `build_index(corpus)` builds. `changed` is emitted when a
    build starts or ends (the pane shows what it can then). Widgets: `text`, `build_button`,
    `open_button`, `open_existing_button`, `build_progress`, `build_status`."""

    changed = Signal()

    def __init__(self, controller, parent=None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._build_out: Path | None = None
        self.setFrameShape(QFrame.StyledPanel)
        nl = QVBoxLayout(self)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.RichText)
        self.build_button = QPushButton("Build index from a text file…")
        self.build_button.setToolTip("Run the model and transcoders over a UTF-8 text file (one document per "
                                     "line) and record every feature's top activating contexts.")
        self.build_button.clicked.connect(self.choose_corpus_and_build)
        self.open_button = QPushButton("Open an index file…")
        self.open_button.clicked.connect(self.choose_index_file)
        self.open_existing_button = QPushButton()
        self.open_existing_button.clicked.connect(self._open_existing)
        buttons = QHBoxLayout()
        buttons.addWidget(self.build_button)
        buttons.addWidget(self.open_button)
        buttons.addStretch(1)
        self.build_progress = QProgressBar()
        self.build_progress.setTextVisible(True)
        self.build_progress.hide()
        self.build_status = QLabel()
        self.build_status.setWordWrap(True)
        self.build_status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        nl.addWidget(self.text)
        nl.addLayout(buttons)
        nl.addWidget(self.open_existing_button, 0, Qt.AlignLeft)
        nl.addWidget(self.build_progress)
        nl.addWidget(self.build_status)
        self._build_job = None  # the build's JobHandle: its progress and outcome come back through it

    def refresh(self) -> None:
        c = self.controller
        busy = self._build_job is not None and self._build_job.active
        if busy and self._build_out is not None:
            hint = f"Building an index into {self._build_out}; it opens here when it is ready."
        elif c.bundle is None or c.transcoders is None:
            hint = "Load the model and its transcoders to build one, or open an index file."
        else:
            hint = ("Build one from a text file (one document per line; a few thousand lines are enough): "
                    "the model and transcoders run over it in the background. The index is saved as "
                    f"{self.default_index_path()} and opened when it is ready.")
        self.text.setText("<b>No feature index for these transcoders.</b><br>"
                          "Without one there are no example contexts, histogram or logit effects "
                          f"for this feature.<br><span style='color: {muted(self)}'>"
                          f"{html.escape(hint)}</span>")
        self.build_button.setEnabled(c.bundle is not None and c.transcoders is not None and not busy)
        existing = None
        if c.transcoders is not None and getattr(c.transcoders, "source", None):
            candidate = Path(c.transcoders.source) / INDEX_FILE
            existing = candidate if candidate.is_file() else None
        self.open_existing_button.setVisible(existing is not None and not busy)
        if existing is not None:
            self.open_existing_button.setText(f"Open {existing.name} found next to the transcoders")
            self.open_existing_button.setToolTip(str(existing))
            self.open_existing_button.setProperty("path", str(existing))

    def default_index_path(self) -> Path:
        """`<transcoders folder>/feature_index.sqlite` when that folder is writable (a numbered name if
        the file exists), else a file in the user's data folder."""
        tc = self.controller.transcoders
        source = Path(tc.source) if tc is not None and getattr(tc, "source", None) else None
        if source is not None and source.is_file():
            source = source.parent
        if source is not None and source.is_dir() and os.access(source, os.W_OK):
            folder, stem = source, "feature_index"
        else:
            folder = Path(QStandardPaths.writableLocation(QStandardPaths.AppDataLocation) or
                          Path.home() / ".circuit-studio") / "feature_indexes"
            scan = (tc.scan if tc is not None else "") or (source.name if source else "transcoders")
            stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in scan) or "transcoders"
        path = folder / f"{stem}.sqlite"
        k = 2
        while path.exists():
            path = folder / f"{stem}-{k}.sqlite"
            k += 1
        return path

    def choose_corpus_and_build(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Text corpus for the feature index", "",
                                              "Text files (*.txt);;All files (*)")
        if path:
            self.build_index(path)

    def choose_index_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Feature index", "", "Feature index (*.sqlite *.db)")
        if path:
            self.controller.open_feature_index(path)

    def _open_existing(self) -> None:
        path = self.open_existing_button.property("path")
        if path:
            self.controller.open_feature_index(path)

    def build_index(self, corpus_path, out_path=None, *, context: int = DEFAULT_CONTEXT,
                    max_windows: int | None = None, batch_size: int = 8) -> Path | None:
        """Index the loaded transcoders on the text file `corpus_path` in the background, then open the
        index. Returns the output path, or None (with the reason shown) when no model and transcoders are
        loaded or another job is running."""
        from ...core.features.corpus_text import read_corpus, token_windows
        from ...core.features.index_build import build_feature_index

        c = self.controller
        bundle, tc = c.bundle, c.transcoders
        if bundle is None or tc is None:
            self.build_status.setText("Load the model and its transcoders first.")
            return None
        if c.jobs.busy:  # a waiting job can be replaced by a newer one: start only on an idle runner
            self.build_status.setText(f"Wait for “{c.jobs.current_name}” to finish (or cancel it), then build.")
            return None
        corpus = Path(corpus_path).expanduser()
        out = Path(out_path).expanduser() if out_path else self.default_index_path()
        limit = bundle.summary.max_positions
        ctx = min(context, limit) if limit else context

        def job(progress, cancel):
            out.parent.mkdir(parents=True, exist_ok=True)
            lines = read_corpus(corpus)
            windows = token_windows(bundle.tokenizer, lines, context=ctx)
            if max_windows is not None:
                windows = windows[:max_windows]
            index = build_feature_index(bundle, tc, windows, out, batch_size=batch_size, corpus_name=corpus.name,
                                        progress=progress, cancel=cancel)
            index.close()
            return out

        def done(path):
            if c.transcoders is tc:  # still the same transcoders
                c.open_feature_index(path)
                c.message.emit(f"Feature index written to {path}.")

        self._build_out = out
        self._build_job = c.jobs.submit(
            BUILD_JOB, job, lambda path: (done(path), self._on_job_end("")), on_progress=self._on_job_progress,
            on_error=lambda err: self._on_job_end(f"Building the index failed: {err.message}"),
            on_cancel=lambda: self._on_job_end("Building the index was cancelled."))
        self.build_button.setEnabled(False)
        self.open_existing_button.hide()
        self.build_progress.setRange(0, 0)
        self.build_progress.setFormat("Starting…")
        self.build_progress.show()
        self.build_status.setText(f"Indexing {corpus.name} (Cancel in the prompt bar stops it).")
        self.changed.emit()
        return out

    def _on_job_progress(self, p) -> None:
        self.build_progress.setRange(0, max(int(p.total), 0))
        self.build_progress.setValue(int(p.done))
        self.build_progress.setFormat(f"{p.phase} {p.done}/{p.total}" if p.total else p.phase)

    def _on_job_end(self, message: str) -> None:
        self._build_out = None
        self.build_progress.hide()
        self.build_status.setText(message)
        self.changed.emit()
