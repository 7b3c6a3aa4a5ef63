"""BatchPanel: a live queue of a patent-001 batch (case x machine) and its QA table.

The panel runs :func:`rtlab.batch.run_batch` in a background thread and shows one row per
(case, machine) - before the congestion model has chosen the machines, one row per case for
its standard plan - with the state (``queued``, ``planning``, ``planned``, ``converting``,
``running``, ``retrying``, ``done``, ``QA failed``, ``error``), the dask worker computing or
holding it, the user priority, the conversion attempts (claim 7) and the gamma pass rates.
When the batch ends the QA table (:func:`rtlab.batch.qa_table`) of the output directory is
shown under it.

It holds no algorithm: the rows are fed by the master's ``on_event`` callback
(:meth:`BatchPanel.on_event`, public so that it can be driven without a cluster) and, while the
batch runs, by polling the scheduler for the tasks being processed (:meth:`BatchPanel.refresh`).
See ``docs/panels/batch_panel.md``.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Mapping

import pandas as pd

from ..batch import BatchPlanner, format_qa_table, make_client, qa_table
from .panel import Panel, ipywidgets

__all__ = ["BatchPanel", "STATES"]

#: Row states, in the order a row goes through them.
STATES = ("queued", "planning", "planned", "converting", "running", "retrying", "done", "QA failed", "error")

STANDARD_ROW = "(standard plan)"
_COLORS = {"done": "#1a7f37", "QA failed": "#b35900", "error": "#cf222e", "running": "#0969da",
           "retrying": "#8250df"}


class BatchPanel(Panel):
    """Live queue view and QA table of a batch planned on dask (patent 001).

    Parameters
    ----------
    cases, machines
        As in :func:`rtlab.batch.run_batch` (case ids / :class:`rtlab.batch.CaseRef` / cases;
        machine names or ``{name: load}``).
    out : path-like
        Output directory of the plans.
    stages : Stages or dict, optional
        Stage functions (default: rtlab's, :func:`rtlab.batch.rtlab_stages`).
    client : distributed.Client, optional
        Run on this client (kept open); otherwise the batch makes its own cluster from
        ``scheduler`` / ``n_workers`` in the background thread and closes it afterwards.
    scheduler : str, optional
    n_workers : int
    poll_s : float
        Seconds between scheduler polls while the batch runs (``running`` state and worker).
    **planner_kwargs
        :class:`rtlab.batch.BatchPlanner` options (``policy``, ``priorities``, ``fanout``,
        ``max_qa_attempts``, ...).

    Attributes
    ----------
    run_button : ipywidgets.Button
        Calls :meth:`run`.
    status : ipywidgets.HTML
        One line: counts per state, elapsed time, the dashboard link.
    queue_html, qa_html : ipywidgets.HTML
        The queue table and the final QA table.
    out : ipywidgets.Output
        Event log (one line per master event).
    rows : dict
        ``(case, machine) -> dict(state, worker, priority, attempts, gamma_3mm, gamma_2mm, note)``.
    summary : dict or None
        The :func:`run_batch` summary once the batch finished (also :attr:`result`, what
        :meth:`wait` returns).
    error : Exception or None
        What stopped the batch, if anything (:meth:`wait` raises it as the cause of a
        ``RuntimeError``).
    """

    def __init__(self, cases, machines, out, stages=None, client=None, scheduler: str | None = None,
                 n_workers: int = 2, poll_s: float = 0.5, **planner_kwargs):
        self._init_panel(out_height="160px")
        self.planner = BatchPlanner(cases, machines, stages=stages, **planner_kwargs)  # validates now
        self.out_dir = out
        self.client = client
        self.scheduler = scheduler
        self.n_workers = int(n_workers)
        if not float(poll_s) > 0:
            raise ValueError(f"poll_s must be a positive number of seconds, got {poll_s!r}")
        self.poll_s = float(poll_s)
        self.rows: dict = {}
        self.events: list = []
        self.summary = None
        self.error = None
        self.dashboard = None
        self._lock = threading.RLock()
        self._client_live = client
        self._t0 = None
        self._elapsed = 0.0
        for cid in self.planner.ids:
            self.rows[(cid, STANDARD_ROW)] = self._row(self.planner.priorities.get(cid, 0))
        self.run_button = ipywidgets.Button(description="Run batch", button_style="primary", icon="play")
        self.run_button.on_click(lambda _b: self.run())
        self.queue_html = ipywidgets.HTML()
        self.qa_html = ipywidgets.HTML()
        super().__init__([ipywidgets.HBox([self.run_button, self.status]), self.queue_html, self.qa_html, self.out])
        self._render()

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _row(priority=0, state="queued"):
        return dict(state=state, worker="", priority=int(priority), attempts=0, gamma_3mm=None, gamma_2mm=None,
                    note="")

    def _get(self, cid, machine):
        key = (cid, machine)
        if key not in self.rows:
            pr = self.rows.get((cid, STANDARD_ROW), {}).get("priority", 0)
            self.rows[key] = self._row(pr)
        return self.rows[key]

    def on_event(self, kind: str, info: Mapping) -> None:
        """Update the rows from one master event (``run_batch(on_event=...)``) and redraw."""
        with self._lock:
            self.events.append((kind, dict(info)))
            cid = info.get("case")
            line = None
            if kind == "start":
                self.dashboard = info.get("dashboard")
                for c in info.get("todo", []):
                    r = self._get(c, STANDARD_ROW)
                    r["state"] = "planning"
                    r["priority"] = int(dict(info.get("priorities") or {}).get(c, r["priority"]))
                for c in info.get("skipped", []):
                    self._get(c, STANDARD_ROW).update(state="done", note="already in out")
                line = f"batch started: {len(info.get('todo', []))} case(s)"
            elif kind == "n_beams":
                self._get(cid, STANDARD_ROW)["note"] = f"{info['n_beams']} beams"
            elif kind == "standard":
                r = self._get(cid, STANDARD_ROW)
                r.update(state="planned", worker=info.get("worker") or r["worker"])
                line = f"standard plan {cid} done"
            elif kind == "assigned":
                self._get(cid, STANDARD_ROW)["note"] = f"-> {', '.join(info['machines'])} ({info['reason']})"
                for m in info["machines"]:
                    self._get(cid, m)["state"] = "converting"
                line = f"{cid} -> {', '.join(info['machines'])} ({info['reason']})"
            elif kind == "converting":
                r = self._get(cid, info["machine"])
                r["state"] = "retrying" if info.get("attempt", 0) > 0 else "converting"
                r["attempts"] = int(info.get("attempt", 0)) + 1
            elif kind == "qa":
                r = self._get(cid, info["machine"])
                q = dict(info.get("qa") or {})
                rates = dict(q.get("pass_rates") or {})
                r.update(worker=info.get("worker") or r["worker"], attempts=int(info["attempt"]) + 1,
                         gamma_3mm=rates.get("3%/3mm"), gamma_2mm=rates.get("2%/2mm"))
                if not q.get("passed") and info.get("retry"):
                    r["state"], r["note"] = "retrying", "; ".join(q.get("reasons") or [])
                elif not q.get("passed"):
                    r["note"] = "; ".join(q.get("reasons") or [])
                elif int(info["attempt"]) > 0:
                    r["note"] = f"passed on attempt {int(info['attempt']) + 1}"
                line = (f"QA {cid} on {info['machine']} attempt {int(info['attempt']) + 1}: "
                        + ("passed" if q.get("passed") else "failed" + (", regenerating" if info.get("retry") else "")))
            elif kind in ("persisted", "duplicate"):
                r = self._get(cid, info["machine"])
                passed = info.get("passed", True)
                r["state"] = "done" if passed else "QA failed"
                if kind == "duplicate":
                    r["note"] = "already persisted"
                line = f"persisted {cid} on {info['machine']}"
            elif kind == "failed":
                m = info.get("machine") or STANDARD_ROW
                r = self._get(cid, m)
                r.update(state="error", note=f"{info.get('stage')}: {info.get('error')}")
                if m == STANDARD_ROW:
                    for (c, mm), rr in self.rows.items():
                        if c == cid and rr["state"] not in ("done", "QA failed"):
                            rr["state"] = "error"
                line = f"FAILED {cid} ({info.get('stage')}): {info.get('error')}"
            if line is not None:
                self.out.append_stdout(line + "\n")
            self._render()

    def refresh(self) -> None:
        """Poll the scheduler: rows whose task is being processed become ``running`` on that worker."""
        c = self._client_live
        if c is None:
            return
        try:
            proc = c.processing()
        except Exception:  # the cluster is shutting down
            return
        with self._lock:
            for worker, keys in proc.items():
                for k in keys:
                    k = str(k)
                    for (cid, m), r in self.rows.items():
                        if r["state"] in ("done", "QA failed", "error"):
                            continue
                        if m == STANDARD_ROW:
                            hit = any(k.startswith(f"{p}-{cid}-") for p in ("load", "nbeams", "influence", "optimize"))
                        else:
                            hit = k.startswith(f"convert-{cid}-{m}-") or k.startswith(f"qa-{cid}-{m}-")
                        if hit:  # standard plans stay 'planning'; conversions and QA become 'running'
                            if m != STANDARD_ROW:
                                r["state"] = "running"
                            r["worker"] = worker
            self._render()

    # ------------------------------------------------------------------------------------------
    def run(self):
        """Start the batch in a background thread (no-op while one runs); returns the thread."""
        if self.running:
            return self._jobs[-1]
        self.summary, self.error, self.result = None, None, None
        self.run_button.disabled = True
        self._t0 = time.perf_counter()
        return self._start_job(self._work, "batch", done=self._enable, when_busy="ignore")

    def _enable(self):
        self.run_button.disabled = False

    def _work(self):
        own = self.client is None
        cluster = None
        try:
            if own:
                self._client_live, cluster = make_client(self.scheduler, self.n_workers)
            stop = threading.Event()
            poller = threading.Thread(target=self._poll, args=(stop,), daemon=True)
            poller.start()
            try:
                self.summary = self.planner.run(self.out_dir, client=self._client_live, progress=False,
                                                on_event=self.on_event)
            finally:
                stop.set()
                poller.join(timeout=5)
            return self.summary
        except Exception as e:  # logged here; the job runner shows it and wait() re-raises it
            self.error = e
            self.out.append_stdout(f"batch stopped: {type(e).__name__}: {e}\n")
            raise
        finally:
            if own and self._client_live is not None:
                self._client_live.close()
                if cluster is not None:
                    cluster.close()
                self._client_live = None
            self._elapsed = time.perf_counter() - self._t0
            with self._lock:
                self._render(final=True)

    def _poll(self, stop: threading.Event):
        while not stop.wait(self.poll_s):
            self.refresh()

    # ------------------------------------------------------------------------------------------
    def table(self):
        """The queue as a pandas DataFrame (one row per case x machine, in insertion order)."""
        with self._lock:
            rows = [dict(case=c, machine=m, **r) for (c, m), r in self.rows.items()]
        return pd.DataFrame(rows, columns=["case", "machine", "state", "worker", "priority", "attempts",
                                           "gamma_3mm", "gamma_2mm", "note"])

    def qa_table(self):
        """:func:`rtlab.batch.qa_table` of the output directory, for this batch's cases."""
        return qa_table(self.out_dir, self.planner.ids)

    def counts(self) -> dict:
        """State -> number of rows."""
        out: dict = {}
        with self._lock:
            for r in self.rows.values():
                out[r["state"]] = out.get(r["state"], 0) + 1
        return out

    def _render(self, final: bool = False):
        def pct(v):
            return "" if v is None else f"{100 * float(v):.1f} %"

        head = "".join(f"<th style='padding:2px 8px;text-align:left'>{h}</th>" for h in
                       ("case", "machine", "state", "worker", "priority", "attempts", "3%/3mm", "2%/2mm", "note"))
        body = []
        for (c, m), r in self.rows.items():
            col = _COLORS.get(r["state"], "inherit")
            cells = [c, m, f"<b style='color:{col}'>{r['state']}</b>", r["worker"], r["priority"], r["attempts"] or "",
                     pct(r["gamma_3mm"]), pct(r["gamma_2mm"]), r["note"][:80]]
            body.append("<tr>" + "".join(
                f"<td style='padding:2px 8px'>{v if i == 2 else html.escape(str(v))}</td>" for i, v in enumerate(cells))
                + "</tr>")
        self.queue_html.value = f"<table style='font-size:12px'><tr>{head}</tr>{''.join(body)}</table>"
        n = self.counts()
        parts = [f"{k}: {n[k]}" for k in STATES if k in n]
        el = self._elapsed if final else (time.perf_counter() - self._t0 if self._t0 else 0.0)
        link = f" &middot; <a href='{html.escape(self.dashboard)}' target='_blank'>dask dashboard</a>" if self.dashboard else ""
        self.status.value = f"{', '.join(parts)} &middot; {el:.1f} s{link}"
        if final and self.error is None and self.summary is not None:
            self.qa_html.value = "<pre style='font-size:12px'>" + html.escape(format_qa_table(self.qa_table())) + "</pre>"
