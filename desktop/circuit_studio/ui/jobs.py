"""Background jobs: one long-lived compute thread, one job at a time.

The model and the GPU are single resources, so jobs run one after another on one QThread (a
worker QObject moved there, talking through queued signals). A job is a core call taking
`(progress, cancel)`. `submit` returns a `JobHandle`: the job's result, error, cancellation and
progress reach the callbacks bound to that handle, on the GUI thread, and only those: whoever
submitted a job gets its outcome without matching names. The runner also emits `started`,
`progress`, `finished`, `failed` and `cancelled` with the job's name, for displays such as the
window's progress bar.

Waiting jobs: each has a `key` (its name by default). A newer submission with the same key
replaces the waiting one (dragging a slider queues no backlog, the latest state wins); jobs with
other keys wait their turn in order, so one pane's new job never drops another pane's waiting job.
A replaced job's handle says so (`status == "superseded"`) and its `on_cancel` is called.
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

WAITING, RUNNING, DONE, FAILED, CANCELLED, SUPERSEDED = "waiting", "running", "done", "failed", "cancelled", \
    "superseded"


@dataclass(frozen=True)
class JobError:
    """What the user is told: what went wrong, what to do, and the details for a bug report."""

    message: str
    hint: str
    details: str


class JobHandle:
    """A submitted job: what it is, where it stands, and the callbacks its outcome goes to.

    `status`: "waiting", "running", then one of "done" (`result`), "failed" (`error`, a JobError),
    "cancelled" or "superseded" (a newer job with the same key took its place before it ran)."""

    def __init__(self, runner: JobRunner, id: int, name: str, key: str, fn: JobFn,
                 on_done: Callable[[Any], None] | None, on_error: Callable[[JobError], None] | None,
                 on_cancel: Callable[[], None] | None, on_progress: Callable[[Progress], None] | None) -> None:
        self._runner = runner
        self.id, self.name, self.key, self.fn = id, name, key, fn
        self.on_done, self.on_error, self.on_cancel, self.on_progress = on_done, on_error, on_cancel, on_progress
        self.token = CancelToken()
        self.status = WAITING
        self.result: Any = None
        self.error: JobError | None = None

    @property
    def active(self) -> bool:
        """Waiting or running."""
        return self.status in (WAITING, RUNNING)

    def cancel(self) -> None:
        """Cancel this job: a waiting one is dropped, a running one is asked to stop."""
        self._runner.cancel_job(self)

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} {self.name!r} {self.status}>"


class _Worker(QObject):
    progress = Signal(int, object)  # job id, Progress
    done = Signal(int, object)  # job id, result
    failed = Signal(int, object)  # job id, JobError
    cancelled = Signal(int)

    @Slot(object)
    def run(self, job: JobHandle) -> None:
        try:
            result = job.fn(lambda p: self.progress.emit(job.id, p), job.token)
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
    """Runs jobs on the compute thread; see the module docstring."""

    started = Signal(str)
    progress = Signal(str, object)  # name, Progress
    finished = Signal(str, object)  # name, result
    failed = Signal(str, object)  # name, JobError
    failed_unhandled = Signal(str, object)  # name, JobError: a failure whose handle has no on_error
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
        self._current: JobHandle | None = None
        self._waiting: list[JobHandle] = []

    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> JobHandle | None:
        return self._current

    @property
    def current_name(self) -> str | None:
        return self._current.name if self._current else None

    @property
    def waiting(self) -> tuple[JobHandle, ...]:
        return tuple(self._waiting)

    def submit(self, name: str, fn: JobFn, on_done: Callable[[Any], None] | None = None, *,
               on_error: Callable[[JobError], None] | None = None, on_cancel: Callable[[], None] | None = None,
               on_progress: Callable[[Progress], None] | None = None, key: str | None = None) -> JobHandle:
        """Run `fn(progress, cancel)` on the compute thread, now or after the jobs before it."""
        job = JobHandle(self, next(self._ids), name, name if key is None else key, fn, on_done, on_error, on_cancel,
                        on_progress)
        if self._current is None:
            self._start(job)
            return job
        for old in [j for j in self._waiting if j.key == job.key]:
            self._waiting.remove(old)
            self._finish(old, SUPERSEDED)
        self._waiting.append(job)
        return job

    def cancel(self) -> None:
        """Cancel the running job and drop the waiting ones (each handle is told)."""
        waiting, self._waiting = self._waiting, []
        for job in waiting:
            self._finish(job, CANCELLED)
        if self._current is not None:
            self._current.token.cancel()

    def cancel_job(self, job: JobHandle) -> None:
        if job in self._waiting:
            self._waiting.remove(job)
            self._finish(job, CANCELLED)
        elif job is self._current:
            job.token.cancel()

    def shutdown(self) -> None:
        self.cancel()
        self._thread.quit()
        self._thread.wait()

    # ---- internals ----
    def _finish(self, job: JobHandle, status: str) -> None:
        """A job that never ran to the end: cancelled or superseded."""
        job.status = status
        if job.on_cancel is not None:
            job.on_cancel()

    def _start(self, job: JobHandle) -> None:
        self._current = job
        job.status = RUNNING
        self.busy_changed.emit(True)
        self.started.emit(job.name)
        self._run.emit(job)

    def _next(self) -> None:
        self._current = None
        if self._waiting:
            self._start(self._waiting.pop(0))
        else:
            self.busy_changed.emit(False)

    def _is_current(self, job_id: int) -> bool:
        return self._current is not None and self._current.id == job_id

    def _on_progress(self, job_id: int, p: Progress) -> None:
        if self._is_current(job_id):
            job = self._current
            if job.on_progress is not None:
                job.on_progress(p)
            self.progress.emit(job.name, p)

    def _on_done(self, job_id: int, result: object) -> None:
        if not self._is_current(job_id):
            return
        job = self._current
        job.status, job.result = DONE, result
        self._next()
        if job.on_done is not None:
            job.on_done(result)
        self.finished.emit(job.name, result)

    def _on_failed(self, job_id: int, error: JobError) -> None:
        if not self._is_current(job_id):
            return
        job = self._current
        job.status, job.error = FAILED, error
        self._next()
        if job.on_error is not None:
            job.on_error(error)
        else:
            self.failed_unhandled.emit(job.name, error)
        self.failed.emit(job.name, error)

    def _on_cancelled(self, job_id: int) -> None:
        if not self._is_current(job_id):
            return
        job = self._current
        self._next()
        self._finish(job, CANCELLED)
        self.cancelled.emit(job.name)
