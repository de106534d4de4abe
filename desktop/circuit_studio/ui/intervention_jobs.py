"""Scheduling the steering model's computations on the compute thread.

Updates run as jobs, in two parts: the next-token logits and the activation changes (one forward pass
with the cached clean run's attention: bars and rings follow a drag), then the continuations, only for
a state that is still current once its first part is shown. At most one of these jobs is in flight,
and none is ever queued behind another job: while the runner is busy the scheduler only remembers
that the state changed, and submits the latest state once the runner is idle (slider drags queue no
backlog, and a waiting trace or load is never displaced). Each job's outcome comes back through its
`JobHandle`; a result for a graph or resources that are no longer current is dropped. The clean run
and the default continuation are cached per graph and model (`core.interventions.SteeringRun`).
"""

from __future__ import annotations

import time

from PySide6.QtCore import QCoreApplication, QEventLoop, QObject, QTimer, Signal

from ..core.interventions.intervene import SteeringRun, compute_continuation, compute_update, sweep_probabilities
from ..core.interventions.steering import (ContextChanged, OptionsChanged, RowChanged, RowsChanged, Steering, SteeringError,
                             SteeringLoaded, SweepResult)

JOB_NAME = "Intervention"
CONTINUATION_JOB_NAME = "Continuation"
SWEEP_JOB_NAME = "Strength sweep"
COALESCE_MS = 15  # slider moves closer together than this become one update


class SteeringScheduler(QObject):
    """Runs what `steering`'s current state needs on `jobs` and hands the results back to it."""

    updated = Signal(object)  # an InterventionUpdate was put in the model (its first part, then with texts)
    sweep_finished = Signal(object)  # SweepResult
    message = Signal(str)  # what went wrong ('' clears)
    status = Signal(str)  # a note for the status line ("Updating…", "Update cancelled…")

    def __init__(self, steering: Steering, jobs, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.steering, self.jobs = steering, jobs
        self.updates_submitted = 0
        self.updates_computed = 0  # next-token updates run (a burst of slider moves should run one)
        self.continuations_computed = 0
        self._dirty = False
        self._continuing: int | None = None  # the version whose continuation is being computed
        self._continuation_failed: int | None = None
        self._epoch = 0  # bumped when the graph or its resources change: older results are dropped
        self._run: SteeringRun | None = None
        self._handles: list = []
        self._coalesce = QTimer(self, singleShot=True, interval=COALESCE_MS)
        self._coalesce.timeout.connect(self._submit_if_idle)
        steering.events.connect(self._on_steering, RowsChanged, RowChanged, OptionsChanged, ContextChanged,
                                SteeringLoaded)
        jobs.busy_changed.connect(self._on_busy_changed)

    # ---- state ----
    @property
    def dirty(self) -> bool:
        return self._dirty

    @property
    def pending(self) -> bool:
        """An update (or its continuation or a sweep) is waiting or running."""
        self._handles = [h for h in self._handles if h.active]
        return bool(self._dirty or self._coalesce.isActive() or self._continuing is not None
                    or self._wants_continuation() or self._handles)

    def _on_steering(self, event) -> None:
        if isinstance(event, (SteeringLoaded, ContextChanged)):
            self._epoch += 1
            self._run = None
            self._continuing = self._continuation_failed = None
            self._dirty = False
            self._coalesce.stop()
            if isinstance(event, ContextChanged) and self.steering.rows:
                self._dirty = True
                self._coalesce.start()
            return
        self._state_changed()

    def _state_changed(self) -> None:
        s = self.steering
        if not s.rows or (s.result is not None and s.result.version == s.version):
            self._dirty = False
            return
        self._dirty = True
        self._coalesce.start()

    def update_now(self) -> bool:
        """Submit the current state now (if the runner is idle); False, with a message, when it cannot run."""
        self._dirty = True
        return self._submit_if_idle()

    def _on_busy_changed(self, busy: bool) -> None:
        if not busy and (self._dirty or self._wants_continuation()):
            self._coalesce.start()

    def _wants_continuation(self) -> bool:
        """The shown result is the current state and still lacks its continuation."""
        r, s = self.steering.result, self.steering
        return (r is not None and r.continuation_pending and r.version == s.version and not self._dirty
                and self._continuing is None and self._continuation_failed != r.version)

    def _submit_if_idle(self) -> bool:
        """Submit what the current state still needs (its next token, then its continuation) if the runner is
        free; a busy runner calls back through `_on_busy_changed`. Never queues behind another job."""
        if not self._dirty:
            if self._wants_continuation() and not self.jobs.busy and not self.steering.context.unavailable:
                self._submit_continuation()
                return True
            return False
        why = self.steering.check()
        if why:
            self._dirty = False
            self.message.emit(why)
            return False
        if self.jobs.busy:
            return True
        self._dirty = False
        self._submit(tuple(self.steering.interventions()))
        return True

    def _run_for(self) -> SteeringRun:
        c = self.steering.context
        if self._run is None or not self._run.matches(c.bundle, c.transcoders, c.analysis.graph):
            self._run = SteeringRun(c.bundle, c.transcoders, c.analysis.graph)
        return self._run

    # ---- jobs ----
    def _submit(self, ivs) -> None:
        s = self.steering
        run, freeze, n_tokens, version, epoch = self._run_for(), s.freeze_attention, s.n_tokens, s.version, \
            self._epoch

        def job(progress, cancel):
            self.updates_computed += 1
            return compute_update(run, ivs, freeze, n_tokens, version)

        def done(result):
            if epoch != self._epoch:
                return
            self.steering.set_result(result)
            self.message.emit("")
            self.updated.emit(result)
            self._submit_if_idle()  # the continuation, or a newer state

        self.updates_submitted += 1
        self.status.emit("Updating…")
        self._handles.append(self.jobs.submit(
            JOB_NAME, job, done, key=JOB_NAME, on_cancel=self._cancelled,
            on_error=lambda e: self.message.emit(f"The intervention failed: {e.message}"
                                                 + (f" {e.hint}" if e.hint else ""))))

    def _submit_continuation(self) -> None:
        r, epoch = self.steering.result, self._epoch
        run, version = self._run_for(), r.version

        def job(progress, cancel):
            self.continuations_computed += 1
            return compute_continuation(run, r)

        def done(out):
            self._continuing = None
            now = self.steering.result
            if epoch != self._epoch or now is None or now.version != version:
                return  # a newer state is on its way
            self.steering.set_result(out)
            self.updated.emit(out)

        def failed(e):
            self._continuation_failed, self._continuing = self._continuing, None
            self.message.emit(f"The continuation failed: {e.message}")

        def cancelled():
            self._continuation_failed, self._continuing = self._continuing, None
            self._cancelled()

        self._continuing = version
        self._handles.append(self.jobs.submit(CONTINUATION_JOB_NAME, job, done, key=CONTINUATION_JOB_NAME,
                                              on_error=failed, on_cancel=cancelled))

    def _cancelled(self) -> None:
        if self.steering.rows:
            self.status.emit("Update cancelled; move a slider to run it again.")

    # ---- strength sweeps ----
    def sweep_now(self, row: int, values, token_id) -> SweepResult:
        """Synchronously (for tests and scripts; waits for a running job first). Raises SteeringError."""
        s = self.steering
        vals, token_id = s.check_sweep(row, values, token_id)
        self.wait_idle()
        t0 = time.perf_counter()
        probs = sweep_probabilities(self._run_for(), s.sweep_builder(row), vals, token_id, s.freeze_attention)
        return SweepResult(s.rows[row].key, s.rows[row].name, token_id, s.decode(token_id), tuple(vals), tuple(probs),
                           time.perf_counter() - t0, s.sweep_context(row))

    def sweep(self, row: int, values, token_id) -> None:
        """The same as a job: the result arrives as `sweep_finished`. Raises SteeringError on bad input."""
        s = self.steering
        vals, token_id = s.check_sweep(row, values, token_id)
        run, build, freeze, epoch = self._run_for(), s.sweep_builder(row), s.freeze_attention, self._epoch
        key, name, context, token = s.rows[row].key, s.rows[row].name, s.sweep_context(row), s.decode(token_id)

        def job(progress, cancel):
            t0 = time.perf_counter()
            probs = sweep_probabilities(run, build, vals, token_id, freeze, progress, cancel, SWEEP_JOB_NAME)
            return SweepResult(key, name, token_id, token, tuple(vals), tuple(probs), time.perf_counter() - t0, context)

        def done(result):
            if epoch == self._epoch:
                self.sweep_finished.emit(result)

        self._handles.append(self.jobs.submit(SWEEP_JOB_NAME, job, done, key=SWEEP_JOB_NAME,
                                              on_error=lambda e: self.message.emit(f"The sweep failed: {e.message}")))

    def wait_idle(self, timeout_s: float = 60.0) -> None:
        end = time.monotonic() + timeout_s
        while self.jobs.busy and time.monotonic() < end:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.002)

    def stop(self) -> None:
        self._coalesce.stop()


__all__ = ["SteeringScheduler", "SteeringError", "JOB_NAME", "CONTINUATION_JOB_NAME", "SWEEP_JOB_NAME"]
