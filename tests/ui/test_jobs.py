"""The compute thread: results, errors and cancellation come back as signals and to the submitter's
handle, a newer submission replaces a waiting one of the same kind only, and the event loop keeps
answering while a real trace runs."""

from __future__ import annotations

import time

import pytest

from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.errors import PromptError
from circuit_studio.core.graph.attribution_graph import AttributionParams
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.synthetic import ModelDims, build_model_folder, default_hooks, random_transcoders
from circuit_studio.ui.jobs import JobRunner


@pytest.fixture
def runner(qtbot):
    r = JobRunner()
    yield r
    r.shutdown()


def test_result_arrives_on_the_gui_thread(qtbot, runner):
    got = []
    with qtbot.waitSignal(runner.finished, timeout=5000) as sig:
        runner.submit("add", lambda progress, cancel: 2 + 3, on_done=got.append)
    assert sig.args == ["add", 5] and got == [5]
    assert not runner.busy


def test_errors_carry_message_and_hint(qtbot, runner):
    def fail(progress, cancel):
        raise PromptError("The prompt is empty.", "Type some text to trace.")

    with qtbot.waitSignal(runner.failed, timeout=5000) as sig:
        runner.submit("trace", fail)
    name, err = sig.args
    assert name == "trace" and err.message == "The prompt is empty." and err.hint.startswith("Type")


def test_cancel_stops_a_running_job(qtbot, runner):
    def slow(progress, cancel):
        for _ in range(500):
            cancel.raise_if_set()
            time.sleep(0.01)
        return "finished"

    runner.submit("slow", slow)
    qtbot.wait(50)
    t0 = time.perf_counter()
    with qtbot.waitSignal(runner.cancelled, timeout=2000):
        runner.cancel()
    assert time.perf_counter() - t0 < 1.0


def test_latest_submission_wins_no_backlog(qtbot, runner):
    ran = []

    def job(tag, delay=0.0):
        def fn(progress, cancel):
            time.sleep(delay)
            ran.append(tag)
            return tag
        return fn

    runner.submit("first", job("first", 0.3))
    for i in range(5):
        runner.submit("slider", job(f"slider {i}"))
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert ran == ["first", "slider 4"]


def test_outcomes_reach_the_handle_that_asked(qtbot, runner):
    """Each job's result or error goes to the callbacks bound to its handle: no one matches names."""
    got = {}
    ok = runner.submit("same name", lambda p, c: "a", on_done=lambda r: got.setdefault("done", r))
    bad = runner.submit("same name", lambda p, c: 1 / 0, key="other",
                        on_error=lambda e: got.setdefault("error", e.message))
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert got == {"done": "a", "error": "ZeroDivisionError: division by zero"}
    assert (ok.status, ok.result) == ("done", "a") and (bad.status, bad.error.message) == ("failed", got["error"])


def test_a_new_job_never_drops_another_panes_waiting_job(qtbot, runner):
    """Behind a running trace: the feature pane's index build waits, the intervention pane's newer update
    replaces only its own older one (whose handle is told), and both run when the trace ends."""
    import threading

    gate = threading.Event()
    runner.submit("Tracing", lambda p, c: gate.wait(10))
    ran = []
    build = runner.submit("Building feature index", lambda p, c: "index", on_done=ran.append)
    older = runner.submit("Intervention", lambda p, c: "older", on_done=ran.append,
                          on_cancel=lambda: ran.append("older superseded"))
    newer = runner.submit("Intervention", lambda p, c: "newer", on_done=ran.append)
    assert (build.status, older.status, newer.status) == ("waiting", "superseded", "waiting")
    assert runner.waiting == (build, newer)
    gate.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert ran == ["older superseded", "index", "newer"]
    assert build.status == newer.status == "done"


def test_cancel_tells_every_waiting_handle(qtbot, runner):
    import threading

    gate = threading.Event()
    running = runner.submit("Tracing", lambda p, c: [cancel_wait(c, gate)])
    told = []
    waiting = runner.submit("Building feature index", lambda p, c: "index", on_cancel=lambda: told.append("build"))
    runner.cancel()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert told == ["build"] and waiting.status == "cancelled" and running.status == "cancelled"


def cancel_wait(cancel, gate):
    for _ in range(500):
        cancel.raise_if_set()
        time.sleep(0.01)


def test_event_loop_keeps_answering_during_a_trace(qtbot, runner, tmp_path):
    # a model big enough that the trace takes about a second on two cores
    dims = ModelDims(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_mlp=256)
    bundle = load_model(build_model_folder("llama", tmp_path / "m", dims=dims, seed=0), device="cpu")
    rh, wh = default_hooks("llama")
    tc = random_transcoders(n_layers=4, d_model=128, n_features=256, seed=0,
                            feature_input_hook=rh, feature_output_hook=wh)
    prompt = "the capital of the state of Dallas is Austin and the opposite of hot is cold and one plus two is"
    ticks = []
    timer = qtbot_timer(qtbot, ticks)
    with qtbot.waitSignal(runner.finished, timeout=60000):
        runner.submit("trace", lambda p, c: attribute(prompt, bundle, tc, AttributionParams(batch_size=16),
                                                      progress=p, cancel=c))
    timer.stop()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 20, "the trace was too short to measure"
    assert max(gaps) < 0.1, f"the GUI thread stalled for {max(gaps) * 1000:.0f} ms"


def qtbot_timer(qtbot, ticks):
    from PySide6.QtCore import QTimer

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    return timer
