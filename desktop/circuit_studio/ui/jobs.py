"""Background jobs: one long-lived compute thread, one job at a time.

The model and the GPU are single resources, so jobs run one after another on one QThread (a
worker QObject moved there, talking through queued signals). A job is a core call taking
`(progress, cancel)`; its progress reports arrive on the GUI thread as `progress` signals and its
result, error or cancellation as `finished`, `failed` or `cancelled`.

At most one job waits behind the running one, and a newer submission replaces it: dragging a
slider queues no backlog, the latest state wins.
"""

from __future__ import annotations

import itertools
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from PySide6.QtCore import QObject, QThread, Signal, Slot

from ..core.errors import Cancelled, CircuitStudioError
from ..core.progress import CancelToken, Progress

JobFn = Callable[[Callable[[Progress], None], CancelToken], Any]


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    fn: JobFn
    on_done: Callable[[Any], None] | None
    cancel: CancelToken


@dataclass(frozen=True)
class JobError:
    """What the user is told: what went wrong, what to do, and the details for a bug report."""

    message: str
    hint: str
    details: str


class _Worker(QObject):
    progress = Signal(int, object)  # job id, Progress
    done = Signal(int, object)  # job id, result
    failed = Signal(int, object)  # job id, JobError
    cancelled = Signal(int)

    @Slot(object)
    def run(self, job: Job) -> None:
        try:
            result = job.fn(lambda p: self.progress.emit(job.id, p), job.cancel)
        except Cancelled:
            self.cancelled.emit(job.id)
        except CircuitStudioError as e:
            self.failed.emit(job.id, JobError(e.message, e.hint, traceback.format_exc()))
        except MemoryError:
            self.failed.emit(job.id, JobError("Out of memory.", "Try a shorter prompt, a smaller batch size or "
                                                               "a feature budget.", traceback.format_exc()))
        except Exception as e:  # a bug or an unforeseen input: report it, keep the window usable
            self.failed.emit(job.id, JobError(f"{type(e).__name__}: {e}", "This looks like a bug; the details "
                                              "can be copied for a report.", traceback.format_exc()))
        else:
            self.done.emit(job.id, result)


class JobRunner(QObject):
    """Runs jobs on the compute thread. Signals carry the job's name."""

    started = Signal(str)
    progress = Signal(str, object)  # name, Progress
    finished = Signal(str, object)  # name, result
    failed = Signal(str, object)  # name, JobError
    cancelled = Signal(str)
    busy_changed = Signal(bool)
    _run = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._ids = itertools.count(1)
        self._thread = QThread()
        self._thread.setObjectName("circuit-studio-compute")
        self._worker = _Worker()
        self._worker.moveToThread(self._thread)
        self._run.connect(self._worker.run)
        self._worker.progress.connect(self._on_progress)
        self._worker.done.connect(self._on_done)
        self._worker.failed.connect(self._on_failed)
        self._worker.cancelled.connect(self._on_cancelled)
        self._thread.start()
        self._current: Job | None = None
        self._pending: Job | None = None

    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def current_name(self) -> str | None:
        return self._current.name if self._current else None

    def submit(self, name: str, fn: JobFn, on_done: Callable[[Any], None] | None = None) -> int:
        """Run `fn(progress, cancel)` on the compute thread, now or after the running job."""
        job = Job(next(self._ids), name, fn, on_done, CancelToken())
        if self._current is None:
            self._start(job)
        else:
            self._pending = job  # replaces any older waiting job
        return job.id

    def cancel(self) -> None:
        """Cancel the running job and drop the waiting one."""
        self._pending = None
        if self._current is not None:
            self._current.cancel.cancel()

    def shutdown(self) -> None:
        self.cancel()
        self._thread.quit()
        self._thread.wait()

    def _start(self, job: Job) -> None:
        self._current = job
        self.busy_changed.emit(True)
        self.started.emit(job.name)
        self._run.emit(job)

    def _next(self) -> None:
        self._current, pending = None, self._pending
        self._pending = None
        if pending is not None:
            self._start(pending)
        else:
            self.busy_changed.emit(False)

    def _is_current(self, job_id: int) -> bool:
        return self._current is not None and self._current.id == job_id

    def _on_progress(self, job_id: int, p: Progress) -> None:
        if self._is_current(job_id):
            self.progress.emit(self._current.name, p)

    def _on_done(self, job_id: int, result: object) -> None:
        if not self._is_current(job_id):
            return
        job = self._current
        self._next()
        if job.on_done is not None:
            job.on_done(result)
        self.finished.emit(job.name, result)

    def _on_failed(self, job_id: int, error: JobError) -> None:
        if self._is_current(job_id):
            name = self._current.name
            self._next()
            self.failed.emit(name, error)

    def _on_cancelled(self, job_id: int) -> None:
        if self._is_current(job_id):
            name = self._current.name
            self._next()
            self.cancelled.emit(name)
