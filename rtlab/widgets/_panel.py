"""Shared plumbing of rtlab's panels: ``panel.on(event, fn)`` callbacks."""

from __future__ import annotations

from typing import Callable

__all__ = ["PanelEvents"]


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
