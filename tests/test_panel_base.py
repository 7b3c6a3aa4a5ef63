"""The panels' common base (rtlab.widgets.panel.Panel): one job runner, events and one meaning of wait()."""

import threading

import pytest

pytest.importorskip("ipywidgets")

from rtlab.widgets.panel import Panel  # noqa: E402


class Toy(Panel):
    EVENTS = ("ping",)

    def __init__(self):
        self._init_panel("ready")
        super().__init__([self.status, self.out])


class ToyTable(Toy):
    RESULT = "table"
    table = None


def test_wait_returns_what_the_job_produced():
    p = Toy()
    assert p.wait() is None and not p.running  # no job yet
    gate = threading.Event()
    seen = []
    th = p._start_job(lambda: gate.wait(30) and "done", "toy", done=lambda: seen.append(p.running))
    assert p.running and th.is_alive()
    with pytest.raises(TimeoutError, match="still running"):
        p.wait(timeout=0.05)
    gate.set()
    assert p.wait(timeout=30) == "done" and p.result == "done"
    assert seen == [False] and not p.running  # the done callback sees the panel idle
    # a job returning None keeps the previous result
    p._start_job(lambda: None, "toy")
    assert p.wait(timeout=30) == "done"


def test_failure_is_shown_and_raised_once():
    p = Toy()
    p.result = "old"

    def boom():
        raise ValueError("no dose to the target")

    p._start_job(boom, "dose computation")
    with pytest.raises(RuntimeError, match="the dose computation failed: ValueError: no dose") as info:
        p.wait(timeout=30)
    assert isinstance(info.value.__cause__, ValueError)
    assert p.wait(timeout=30) == "old"  # raised once
    assert "Failed" in p.status.value and "no dose to the target" in p.status.value
    assert any("dose computation failed" in o["text"] for o in p.out.outputs)
    p._start_job(boom, "dose computation")
    assert p.wait(timeout=30, raise_error=False) == "old"
    p.wait(timeout=30)  # the error was dropped with raise_error=False


def test_block_raises_at_once():
    p = Toy()
    with pytest.raises(RuntimeError, match="toy failed"):
        p._start_job(lambda: 1 / 0, "toy", block=True)


def test_second_request_is_refused_ignored_or_queued():
    p = Toy()
    gate = threading.Event()
    order = []
    first = p._start_job(lambda: gate.wait(30) and order.append(1), "toy")
    with pytest.raises(RuntimeError, match="in progress"):
        p._start_job(lambda: order.append("x"), "toy")
    assert p._start_job(lambda: order.append("y"), "toy", when_busy="ignore") is first
    assert "Busy" in p.status.value
    p._start_job(lambda: order.append(2), "toy", when_busy="queue")
    p._start_job(lambda: order.append(3), "toy", when_busy="queue")
    with pytest.raises(ValueError, match="when_busy"):
        p._start_job(lambda: None, "toy", when_busy="later")
    gate.set()
    p.wait(timeout=30)
    assert order == [1, 2, 3]


def test_result_attribute_can_be_named():
    p = ToyTable()
    p._start_job(lambda: {"dice": 0.9}, "evaluation")
    assert p.wait(timeout=30) == {"dice": 0.9} and p.table == {"dice": 0.9} and p.result is None


def test_events_and_broken_handlers():
    p = Toy()
    got = []
    fn = p.on("ping", got.append)
    p.on("ping", lambda payload: 1 / 0)
    p._emit("ping", 7)  # the broken handler is reported in out, the others still run
    assert got == [7] and any("ZeroDivisionError" in o["text"] for o in p.out.outputs)
    p.on("ping", fn, remove=True)
    p._emit("ping", 8)
    assert got == [7]
    with pytest.raises(ValueError, match="event must be one of"):
        p.on("pong", print)
    with pytest.raises(TypeError, match="callable"):
        p.on("ping", 3)


def test_every_panel_is_a_panel():
    import rtlab.widgets as w

    names = [n for names in w.PANELS.values() for n in names if n != "Panel"]
    assert len(names) == 13
    for n in names:
        cls = getattr(w, n)
        assert issubclass(cls, Panel), n
        assert "wait" not in vars(cls) or n == "PlanLab", f"{n} redefines wait()"
