"""Shared plumbing of rtlab's panels: ``panel.on(event, fn)`` callbacks and one background job."""

from __future__ import annotations

from typing import Callable

__all__ = ["PanelEvents", "PanelJob"]


class PanelEvents:
    """``panel.on(event, fn)`` callbacks shared by rtlab's panels (a mix-in).

    Subclasses list their event names in ``EVENTS`` and call :meth:`_init_events` in their
    constructor. A handler that raises does not stop the panel's work: the error is written to
    the panel's ``out`` (an ``ipywidgets.Output``) when it has one, and re-raised otherwise.
    """

    EVENTS: tuple[str, ...] = ()

    def _init_events(self) -> None:
        self._callbacks: dict[str, list[Callable]] = {e: [] for e in self.EVENTS}

    def on(self, event: str, fn: Callable, remove: bool = False) -> Callable:
        """Register ``fn(payload)`` for ``event`` (``remove=True`` unregisters it); returns ``fn``.

        Parameters
        ----------
        event : str
            One of the panel's ``EVENTS``.
        fn : callable
            Called with the event's payload.
        """
        if event not in self._callbacks:
            raise ValueError(f"event must be one of {list(self.EVENTS)}, got {event!r}")
        if not callable(fn):
            raise TypeError(f"fn must be callable (called with the {event!r} payload), got {type(fn).__name__}")
        if remove:
            self._callbacks[event].remove(fn)
        else:
            self._callbacks[event].append(fn)
        return fn

    def _emit(self, event: str, payload) -> None:
        out = getattr(self, "out", None)
        for fn in list(self._callbacks[event]):
            try:
                fn(payload)
            except Exception as exc:  # a broken observer must not kill the panel's work
                if out is None or not hasattr(out, "append_stderr"):
                    raise
                out.append_stderr(f"{event} handler {getattr(fn, '__name__', fn)!r} raised {exc!r}\n")


class PanelJob:
    """One background job at a time for a panel (a mix-in): ``running``, ``wait()``.

    :meth:`_start_job` runs ``work()`` in a daemon thread. An exception it raises is kept, shown
    in the panel's ``status`` (an ``ipywidgets.HTML``) and re-raised by :meth:`wait`; ``done()``
    runs afterwards in any case (e.g. to re-enable buttons). :meth:`wait` returns the panel's
    ``result``. Callers check :attr:`running` before they touch their widgets and start a job.
    """

    _thread = None
    _error: BaseException | None = None

    def _start_job(self, work: Callable[[], None], name: str, done: Callable[[], None] | None = None,
                   block: bool = False):
        import html
        import threading

        self._error = None

        def run():
            try:
                work()
            except Exception as exc:  # shown to the user, re-raised by wait()
                self._error = exc
                self.status.value = f"<span style='color:#b00'>error: {html.escape(str(exc))}</span>"
            finally:
                if done is not None:
                    done()

        self._thread = threading.Thread(target=run, daemon=True, name=f"rtlab-{name}")
        self._thread.start()
        return self.wait() if block else None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None):
        """Join the background job and return the panel's ``result`` (re-raise the job's error)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"{self._thread.name} still running after {timeout} s")
        if self._error is not None:
            raise self._error
        return self.result
