"""The base of rtlab's panels: event callbacks, one background-job runner, ``status``, ``out``, ``wait()``.

Every panel is a :class:`Panel` (an ``ipywidgets.VBox``) and behaves the same way:

* ``panel.on(event, fn)`` registers ``fn(payload)`` for one of the panel's ``EVENTS``; a handler
  that raises is reported in ``out`` and does not stop the panel's work;
* long work runs in a daemon thread (:meth:`Panel._start_job`), so the kernel stays responsive;
  ``panel.running`` is True while a job is queued or running; a panel decides what a second
  request does while one runs (ignore it, refuse it, or queue it);
* ``panel.status`` (``ipywidgets.HTML``) says what happened last, ``panel.out``
  (``ipywidgets.Output``) keeps a log;
* ``panel.wait(timeout=None, raise_error=True)`` has one meaning everywhere: join the panel's
  jobs and return what they produced -- the attribute named by :attr:`Panel.RESULT`, which is
  ``result`` on every panel except :class:`~rtlab.widgets.region_panel.RegionPanel` (its jobs
  produce ``table``; its ``result`` is the read-out of the shown case, which needs no job).
  It raises ``TimeoutError`` if a job still runs after ``timeout`` seconds, and a
  ``RuntimeError`` (``from`` the job's own exception) if a job failed since the last
  ``wait()``, unless ``raise_error=False``.

Everything a button does is a public method, so ``panel.method(); panel.wait()`` from Python is
what a click and a pause do in the browser.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Callable

from .._lazy import load

ipywidgets = load("ipywidgets", extra="lab", purpose="rtlab's panels")

__all__ = ["Panel", "esc"]


def esc(x) -> str:
    """``x`` as text safe to put in an ``ipywidgets.HTML`` value."""
    return html.escape(str(x))


class Panel(ipywidgets.VBox):
    """Base class of rtlab's panels (see the module docstring).

    A subclass lists its event names in ``EVENTS``, calls :meth:`_init_panel` at the start of its
    constructor (it makes ``status`` and ``out``), lays out its children with
    ``super().__init__(children)``, runs long work with :meth:`_start_job` and sets
    :attr:`result` when a job has produced something.
    """

    EVENTS: tuple[str, ...] = ()

    #: Name of the attribute that receives what a job returns (when not None) and that
    #: :meth:`wait` returns.
    RESULT: str = "result"

    #: What the panel's last finished job produced; see each panel.
    result = None

    def _init_panel(self, status: str = "", out_height: str | None = "160px") -> None:
        """Event registry, job state, ``status`` (HTML with ``status``) and ``out`` (a log of ``out_height``)."""
        self._callbacks: dict[str, list[Callable]] = {e: [] for e in self.EVENTS}
        self._job_lock = threading.Lock()
        self._jobs: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._pending = 0
        self.status = ipywidgets.HTML(status)
        layout = ipywidgets.Layout(max_height=out_height, overflow="auto") if out_height else ipywidgets.Layout()
        self.out = ipywidgets.Output(layout=layout)

    # -- events ---------------------------------------------------------------------------------
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
        for fn in list(self._callbacks[event]):
            try:
                fn(payload)
            except Exception as exc:  # a broken observer must not kill the panel's work
                self.out.append_stderr(f"{event} handler {getattr(fn, '__name__', fn)!r} raised {exc!r}\n")

    # -- status line ------------------------------------------------------------------------------
    def _set_status(self, text: str, error: bool = False) -> None:
        """One line in ``status`` (``error=True``: in red); ``text`` is HTML."""
        self.status.value = f'<span style="color:#b00">{text}</span>' if error else text

    # -- background jobs -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether a job is queued or running (False inside the last job's ``done`` callback)."""
        return self._pending > 0

    def _start_job(self, work: Callable[[], object], name: str, *, done: Callable[[], None] | None = None,
                   block: bool = False, when_busy: str = "raise") -> threading.Thread | None:
        """Run ``work()`` in a daemon thread named ``rtlab-<name>``; returns the thread.

        ``work``'s return value, when it is not None, is stored in the attribute named by
        :attr:`RESULT` (normally :attr:`result`). An exception it
        raises is kept for :meth:`wait`, shown in ``status`` and logged in ``out``; ``done()`` runs
        afterwards in any case (e.g. to re-enable buttons).

        Parameters
        ----------
        block : bool
            Run and join at once (``wait()`` is called, so an error is raised here).
        when_busy : {'raise', 'ignore', 'queue'}
            While a job runs: raise ``RuntimeError``, ignore the request (returns the running
            thread, ``status`` says so), or queue the job after the running ones.
        """
        if when_busy not in ("raise", "ignore", "queue"):
            raise ValueError(f"when_busy must be 'raise', 'ignore' or 'queue', got {when_busy!r}")
        with self._job_lock:
            self._jobs = [t for t in self._jobs if t.is_alive()]
            if self._pending and when_busy == "raise":
                raise RuntimeError(f"a {name} is in progress; wait() for it (or stop it) first")
            if self._pending and when_busy == "ignore":
                self._set_status(f"<b>Busy</b>: a {esc(name)} is already running.")
                return self._jobs[-1]
            previous = self._jobs[-1] if self._jobs else None

            def run():
                if previous is not None:
                    previous.join()
                try:
                    value = work()
                    if value is not None:
                        setattr(self, self.RESULT, value)
                except Exception as exc:  # shown to the user, re-raised by wait()
                    exc.rtlab_job = name
                    with self._job_lock:
                        self._errors.append(exc)
                    self._job_failed(name, exc)
                finally:
                    with self._job_lock:
                        self._pending -= 1
                    if done is not None:
                        done()

            thread = threading.Thread(target=run, daemon=True, name=f"rtlab-{name}")
            self._jobs.append(thread)
            self._pending += 1
        thread.start()
        if block:
            self.wait()
        return thread

    def _job_failed(self, name: str, exc: Exception) -> None:
        """Show a job's failure in ``status`` and ``out`` (called in the job's thread)."""
        self._set_status(f"<b>Failed</b> ({esc(name)}): {esc(type(exc).__name__)}: {esc(exc)}", error=True)
        self.out.append_stderr(f"{name} failed: {type(exc).__name__}: {exc}\n")

    def wait(self, timeout: float | None = None, raise_error: bool = True):
        """Join the panel's jobs and return what they produced (see the module docstring).

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most (for all queued jobs together).
        raise_error : bool
            Re-raise the first failure since the last ``wait()`` as ``RuntimeError`` from the
            job's exception (with False, failures are only in ``status`` and ``out``; either
            way they are reported once).

        Returns
        -------
        object
            The attribute named by :attr:`RESULT` (normally :attr:`result`; None before a
            job has produced something).

        Raises
        ------
        TimeoutError
            A job still runs after ``timeout`` seconds.
        RuntimeError
            A job failed since the last ``wait()`` (``raise_error=True``).
        """
        with self._job_lock:
            jobs = list(self._jobs)
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        for t in jobs:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise TimeoutError(f"{t.name} is still running after {timeout} s")
        with self._job_lock:
            errors, self._errors = self._errors, []
        if errors and raise_error:
            exc = errors[0]
            name = getattr(exc, "rtlab_job", "job")
            raise RuntimeError(f"the {name} failed: {type(exc).__name__}: {exc}") from exc
        return getattr(self, self.RESULT)
