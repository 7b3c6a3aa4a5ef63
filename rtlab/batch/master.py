"""The master of patent 001: decompose a batch into dask tasks, schedule, persist as results arrive.

Patent 001's master cloud server "decomposes a computation task and assigns it to a controlled
computer" (claim 1), queues tasks "according to available computing resources or priority of
computation tasks set by users" (claim 9), picks the target machine by congestion (claim 8),
converts one standard plan for one or more machines (claim 13) and re-generates a converted
plan that fails QA (claim 7). Here the controlled computers are dask.distributed workers:

* a :class:`distributed.LocalCluster` by default (worker processes, one thread each, nothing
  to set up), or any running scheduler (``scheduler="tcp://host:8786"``) to scale out;
* per case the task graph is ``load -> n_beams``, then (once the beam count is known) one
  ``influence`` task per beam, ``optimize`` (the standard plan), then - once the standard plan
  exists and the congestion model has chosen the machine(s) - ``convert`` and ``qa`` per
  machine. All tasks of a case carry the user's priority (dask ``priority=``, higher first);
* the master consumes results with :class:`distributed.as_completed`, adding tasks as earlier
  ones finish, and writes every finished plan at once (:mod:`rtlab.batch.persist`), so a crash
  of the master loses at most the plans in flight;
* failures: a task that raises is retried ``retries`` times (``submit(retries=)``); a task
  whose worker dies is re-run elsewhere by the scheduler (up to the scheduler's
  ``distributed.scheduler.allowed-failures``, 3 by default), and results lost with a dead
  worker are recomputed from the graph. Persistence is idempotent (keyed by case and machine),
  so a record is written exactly once however often its tasks ran, and a re-run with the same
  ``out`` skips what is already there - but only records whose fingerprint (content hash of
  the case input, the plan settings, the rtlab version; :mod:`rtlab.batch.fingerprint`)
  equals this run's; any other is planned again and the reason is reported (``replanned``).
* the local cluster's dashboard listens on 127.0.0.1 only unless ``dashboard_address`` says
  otherwise, and at most :func:`rtlab.core.validate.max_workers` local worker processes are
  started (4 per CPU core).

Size: just over 600 lines: the master is one ``as_completed`` event loop (decompose, delineate,
choose machines by measured or typed-in congestion, convert, QA retry, persist) plus its CLI
hook's argument checks; splitting the loop would scatter its shared state.
"""

from __future__ import annotations

import importlib.util
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from tqdm.auto import tqdm

from .._lazy import load
from .._util import check_output_path
from ..core.validate import MAX_WORKERS_PER_CORE, check_spacing, cpu_count, max_workers
from ..methods.conversion import list_machines
from ..phantoms import list_phantoms, phantom_grid_of
from .congestion import CongestionModel, measure_queue_loads
from .fingerprint import fingerprint, mismatch_reason
from .persist import check_id, completed_records, persist_record, read_sidecar
from .report import format_qa_table, qa_table, write_summary
from .stages import CaseRef, Stages, delineation_report, rtlab_stages

distributed = load("distributed", extra="dask", purpose="batch planning (patent 001)")

__all__ = ["BatchPlanner", "run_batch", "run_batch_cli", "make_client", "dashboard_link", "check_workers",
           "DEFAULT_DASHBOARD"]

log = logging.getLogger(__name__)


def _case_id(case_ref) -> str:
    if isinstance(case_ref, str):
        return check_id("case", case_ref)
    name = getattr(case_ref, "name", None)
    if isinstance(name, str):
        return check_id("case", name)
    raise TypeError(f"a case must be a case id (str) or an object with a .name, got {type(case_ref).__name__}")


#: Where the local cluster's dashboard listens by default: this machine only, a free port.
DEFAULT_DASHBOARD = "127.0.0.1:0"


def check_workers(n_workers) -> int:
    """``n_workers`` as an int in 1 .. :func:`rtlab.core.validate.max_workers`, else ``ValueError``."""
    try:
        n = int(n_workers)
    except (TypeError, ValueError):
        raise ValueError(f"--workers must be a whole number, got {n_workers!r}") from None
    if n < 1:
        raise ValueError(f"--workers must be >= 1 for a local cluster, got {n_workers!r}")
    if n > max_workers():
        raise ValueError(f"--workers {n} is more than {MAX_WORKERS_PER_CORE} worker processes per CPU core "
                         f"({cpu_count()} core(s) here, so at most {max_workers()}; see docs/security.md); use fewer "
                         "workers, or a dask scheduler (--scheduler) for a larger cluster")
    return n


def make_client(scheduler: str | None = None, n_workers: int = 2, dashboard_address: str | None = DEFAULT_DASHBOARD,
                silence_logs: int = logging.WARNING, **cluster_kwargs):
    """A dask client: connected to ``scheduler`` if given, else on a new :class:`LocalCluster`.

    The local cluster has ``n_workers`` worker processes with one thread each
    (``processes=True, threads_per_worker=1``: numba and numpy stay single-threaded per task,
    CPU-bound stages run in parallel without the GIL), at most :func:`check_workers` allows
    (4 per CPU core). The dashboard listens on ``dashboard_address``: by default
    ``127.0.0.1:0``, this machine only on a free port (it shows case ids and worker logs);
    ``':8787'`` or ``'0.0.0.0:8787'`` exposes it to the network; None disables it (it needs
    ``bokeh``). The scheduler and workers listen on 127.0.0.1 as well.

    Returns
    -------
    (Client, LocalCluster or None)
        Close both when done (the cluster is None for a remote scheduler).
    """
    if scheduler:
        return distributed.Client(scheduler), None
    n_workers = check_workers(n_workers)
    cluster_kwargs.setdefault("host", "127.0.0.1")
    if dashboard_address is None:
        # no dashboard; the scheduler's plain HTTP routes still bind a port: a free local one
        skw = dict(cluster_kwargs.pop("scheduler_kwargs", None) or {})
        skw.setdefault("dashboard_address", DEFAULT_DASHBOARD)
        cluster_kwargs["scheduler_kwargs"] = skw
    cluster = distributed.LocalCluster(n_workers=int(n_workers), threads_per_worker=1, processes=True,
                           dashboard_address=dashboard_address, silence_logs=silence_logs, **cluster_kwargs)
    client = distributed.Client(cluster)
    client._rtlab_dashboard = dashboard_address is not None
    return client, cluster


def dashboard_link(client) -> str | None:
    """The dask dashboard URL of ``client``'s scheduler, or None when it serves no dashboard.

    For a cluster made by :func:`make_client` the dashboard needs ``bokeh`` in this
    environment (``pip install bokeh``); without it, or with ``dashboard_address=None``, this
    returns None.
    """

    if getattr(client, "_rtlab_dashboard", True) is False:
        return None
    if hasattr(client, "_rtlab_dashboard") and importlib.util.find_spec("bokeh") is None:
        return None
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return client.dashboard_link
    except Exception:  # pragma: no cover - dashboard introspection is best effort
        return None


@dataclass
class _CaseState:
    ref: object
    cid: str
    priority: int
    load: object = None
    standard: object = None
    machines: list = field(default_factory=list)
    open: int = 0
    reason: str = ""
    delineation: object = None  # future of the delineate stage's report (None: no delineate stage)
    delineation_report: object = None


class BatchPlanner:
    """Plan a batch of cases for a set of treatment machines on dask (patent 001).

    Parameters
    ----------
    cases : list
        Case references handed to the ``load`` stage: ids (str) or objects with a ``.name``
        (e.g. :class:`rtlab.core.case.Case`). Ids name the output files.
    machines : list of str or MachineQueue, or dict name -> current load
        Treatment machines and the work already waiting on their queues (see
        :mod:`rtlab.batch.congestion`).
    stages : Stages or dict, optional
        Stage callables (see :mod:`rtlab.batch.stages`); a dict replaces some defaults.
    policy : {'idle', 'shortest_queue', 'user'}
        Machine choice by congestion (claim 8).
    priorities : dict case id -> int, optional
        User priorities, passed as dask ``priority=`` (higher runs first; default 0).
    user_choice : dict case id -> machine name (or list), optional
        Required for ``policy='user'``.
    fanout : int
        Machines per standard plan (claim 13); ignored for user choices.
    max_qa_attempts : int
        Conversions tried per (case, machine) until QA passes (claim 7); after the last the
        plan is persisted with its failing QA and listed under ``qa_failed``.
    plan_load : float or callable(case_id) -> float
        Load one assigned plan adds to its machine's queue.
    retries : int
        ``client.submit(retries=)`` for every task.
    measure_loads : bool or dict machine -> pool, optional
        Measure the machines' queue loads from the running dask cluster before every machine
        choice (:func:`rtlab.batch.congestion.measure_queue_loads`: tasks processing on / waiting
        for each machine's worker pool) and add them to the typed-in loads. True: the pool of
        machine ``m`` is the workers with dask resource ``m``; a dict names the pools. Default
        None: typed-in loads only.
    """

    def __init__(self, cases: Sequence, machines, stages=None, policy: str = "shortest_queue",
                 priorities: Mapping[str, int] | None = None, user_choice: Mapping | None = None,
                 fanout: int = 1, max_qa_attempts: int = 2, plan_load: float | Callable = 1.0,
                 retries: int = 2, measure_loads: bool | Mapping | None = None):
        if isinstance(cases, (str, bytes)) or not hasattr(cases, "__iter__"):
            raise TypeError(f"cases must be a list of case ids or cases, got {cases!r}")
        self.cases = list(cases)
        if not self.cases:
            raise ValueError("cases is empty; give at least one case")
        self.ids = [_case_id(c) for c in self.cases]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"case ids must be unique, got {self.ids}")
        self.stages = Stages.coerce(stages)
        self.congestion = CongestionModel(machines, policy)
        self.priorities = {str(k): int(v) for k, v in dict(priorities or {}).items()}
        self.user_choice = dict(user_choice or {})
        unknown = (set(self.priorities) | set(self.user_choice)) - set(self.ids)
        if unknown:
            raise ValueError(f"priorities / user_choice name unknown case(s) {sorted(unknown)}")
        if policy == "user":
            missing = [c for c in self.ids if c not in self.user_choice]
            if missing:
                raise ValueError(f"policy 'user' needs user_choice for every case; missing {missing}")
            for c in self.ids:  # validate names now, not mid-batch
                self.congestion.choose(user=self.user_choice[c])
        self.fanout = int(fanout)
        n_avail = sum(q.available for q in self.congestion.queues.values())
        if not 1 <= self.fanout <= n_avail:
            raise ValueError(f"fanout must be between 1 and the {n_avail} available machine(s), got {fanout!r}")
        if int(max_qa_attempts) < 1:
            raise ValueError(f"max_qa_attempts must be >= 1, got {max_qa_attempts!r}")
        self.max_qa_attempts = int(max_qa_attempts)
        self.plan_load = plan_load
        self.retries = int(retries)
        if measure_loads is None or measure_loads is False:
            self.measure_pools = None
        elif measure_loads is True:
            self.measure_pools = {m: f"resource:{m}" for m in self.congestion.queues}
        elif isinstance(measure_loads, Mapping):
            self.measure_pools = dict(measure_loads)
            unknown = set(self.measure_pools) - set(self.congestion.queues)
            missing = set(self.congestion.queues) - set(self.measure_pools)
            if unknown or missing:
                raise ValueError(f"measure_loads: give a pool for every machine and no other; unknown "
                                 f"{sorted(unknown)}, missing {sorted(missing)}")
        else:
            raise TypeError(f"measure_loads must be None, True or a dict machine -> pool, got {measure_loads!r}")

    # ---------------------------------------------------------------------------------------
    def _needed(self, cid: str) -> int:
        u = self.user_choice.get(cid)
        if u is not None:
            return 1 if isinstance(u, str) else len(u)
        return self.fanout

    def _planner_settings(self, cid: str) -> dict:
        """The planner options that change case ``cid``'s records (part of its fingerprint)."""
        u = self.user_choice.get(cid)
        return dict(policy=self.congestion.policy, fanout=self.fanout, max_qa_attempts=self.max_qa_attempts,
                    user_choice=u if u is None or isinstance(u, str) else list(u))

    def _load_of(self, cid: str) -> float:
        return float(self.plan_load(cid)) if callable(self.plan_load) else float(self.plan_load)

    def run(self, out, client=None, scheduler: str | None = None, n_workers: int = 2, progress: bool = True,
            on_event: Callable[[str, dict], None] | None = None, dashboard_address: str | None = DEFAULT_DASHBOARD,
            silence_logs: int = logging.WARNING, **cluster_kwargs) -> dict:
        """Run the batch; returns a summary dict (see :func:`run_batch`).

        Parameters
        ----------
        out : path-like
            Output directory; plans already persisted there with this run's fingerprint are
            skipped (resume); others are planned again (``summary['replanned']`` says why).
        client : distributed.Client, optional
            Use this client (not closed afterwards). Otherwise one is made by
            :func:`make_client` from ``scheduler`` / ``n_workers`` and closed at the end.
        progress : bool
            tqdm.auto progress bar over the (case, machine) plans.
        on_event : callable(kind, info), optional
            Called by the master for ``'start'``, ``'n_beams'``, ``'standard'``, ``'assigned'``,
            ``'converting'``, ``'qa'``, ``'persisted'``, ``'duplicate'``, ``'failed'`` events (e.g. for a
            widget). ``info`` holds ``case`` and, where they apply, ``machine``, ``attempt``,
            ``priority``, ``worker`` (address of the worker that computed the result) and ``qa``.
        """
        as_completed = distributed.as_completed
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        emit = on_event or (lambda kind, info: None)
        # resume: keep only records whose fingerprint matches this run's (computed here, before dask)
        fps = {cid: fingerprint(ref, self.stages, self._planner_settings(cid)) for ref, cid in zip(self.cases, self.ids)}
        on_disk = completed_records(out)
        done: dict[str, list[str]] = {}
        replanned: dict[str, str] = {}
        for cid in self.ids:
            for m in on_disk.get(cid, []):
                side = read_sidecar(out, cid, m)
                why = "the record is unreadable" if side is None else mismatch_reason(side.get("fingerprint"), fps[cid])
                if why is None:
                    done.setdefault(cid, []).append(m)
                else:
                    replanned.setdefault(cid, f"{m}: {why}")
        todo, skipped = [], []
        for ref, cid in zip(self.cases, self.ids):
            (skipped if len(done.get(cid, [])) >= self._needed(cid) else todo).append((ref, cid))
        for cid, why in replanned.items():
            if cid in {c for _, c in todo}:
                emit("replan", dict(case=cid, reason=why))
        own = client is None
        cluster = None
        if own:
            client, cluster = make_client(scheduler, n_workers, dashboard_address, silence_logs, **cluster_kwargs)
        summary = dict(out=str(out), persisted=[], skipped=[c for _, c in skipped],
                       replanned={c: w for c, w in replanned.items() if c in {x for _, x in todo}}, failed={}, qa_failed=[],
                       duplicates=0, assignments={}, records=[], dashboard=dashboard_link(client),
                       n_workers=len(client.scheduler_info().get("workers", {})))
        if self.stages.delineate is not None:
            summary["delineation"] = {}  # case -> the delineate stage's report (Dice per structure)
        if self.measure_pools is not None:
            summary["measured_loads"] = []  # per machine choice: the loads measured from the cluster
        token = uuid.uuid4().hex[:8]
        st = self.stages
        tags: dict[str, tuple] = {}
        states: dict[str, _CaseState] = {}
        conv_futs: dict[tuple, object] = {}

        def submit(fn, *args, key, prio, tag):
            f = client.submit(fn, *args, key=f"{key}-{token}", priority=prio, retries=self.retries, pure=False)
            if tag is not None:
                tags[f.key] = tag
            return f

        def where(fut):
            try:
                w = client.who_has([fut]).get(fut.key) or ()
                return sorted(w)[0] if w else None
            except Exception:  # pragma: no cover - informational only
                return None

        def start_conversion(s: _CaseState, machine: str, attempt: int):
            emit("converting", dict(case=s.cid, machine=machine, attempt=attempt, priority=s.priority))
            c = submit(st.convert, s.load, s.standard, machine, attempt,
                       key=f"convert-{s.cid}-{machine}-{attempt}", prio=s.priority, tag=None)
            q = submit(st.qa, s.load, s.standard, c, machine,
                       key=f"qa-{s.cid}-{machine}-{attempt}", prio=s.priority, tag=("qa", s.cid, machine, attempt))
            conv_futs[(s.cid, machine)] = c
            return q

        try:
            if self.measure_pools is not None:  # every pool must exist before any task is submitted
                measure_queue_loads(client, list(self.congestion.queues), self.measure_pools)
            if summary["dashboard"]:
                print(f"rtlab.batch: dask dashboard at {summary['dashboard']}")
            emit("start", dict(todo=[c for _, c in todo], skipped=summary["skipped"], dashboard=summary["dashboard"],
                               priorities={c: self.priorities.get(c, 0) for _, c in todo}))
            ac = as_completed()
            total = sum(self._needed(c) for _, c in todo)
            bar = tqdm(total=total, desc="plans", unit="plan", disable=not progress)
            for ref, cid in todo:
                s = _CaseState(ref, cid, self.priorities.get(cid, 0))
                s.load = submit(st.load, ref, key=f"load-{cid}", prio=s.priority, tag=None)
                if st.delineate is not None:  # patent 001 step 2 (opt-in): later stages plan on its contours
                    s.load = submit(st.delineate, s.load, key=f"delineate-{cid}", prio=s.priority, tag=None)
                    s.delineation = submit(delineation_report, s.load, key=f"delineation-{cid}", prio=s.priority,
                                           tag=None)
                ac.add(submit(st.n_beams, s.load, key=f"nbeams-{cid}", prio=s.priority, tag=("n_beams", cid)))
                states[cid] = s
            for fut in ac:
                kind, cid = tags[fut.key][:2]
                s = states[cid]
                if fut.status != "finished":
                    err = fut.exception()
                    tag = tags[fut.key]
                    machine = tag[2] if kind == "qa" else None
                    stage = kind
                    if kind == "n_beams" and s.delineation is not None and s.load.status == "error":
                        stage = "delineate"  # the delineation failed (its error reached n_beams)
                    summary["failed"][cid if machine is None else f"{cid}__{machine}"] = \
                        f"{stage}: {type(err).__name__}: {err}"
                    emit("failed", dict(case=cid, machine=machine, stage=stage, error=f"{type(err).__name__}: {err}",
                                        attempt=tag[3] if kind == "qa" else None, priority=s.priority))
                    if kind == "qa":
                        s.open -= 1
                        bar.update(1)
                    else:
                        bar.update(self._needed(cid) - s.open)
                    continue
                if kind == "n_beams":
                    n = int(fut.result())
                    if n < 1:
                        summary["failed"][cid] = f"n_beams: stage returned {n} beams"
                        bar.update(self._needed(cid))
                        continue
                    beams = [submit(st.influence, s.load, b, key=f"influence-{cid}-{b}", prio=s.priority, tag=None)
                             for b in range(n)]
                    s.standard = submit(st.optimize, s.load, beams, key=f"optimize-{cid}", prio=s.priority,
                                        tag=("standard", cid))
                    ac.add(s.standard)
                    emit("n_beams", dict(case=cid, n_beams=n))
                elif kind == "standard":
                    emit("standard", dict(case=cid, worker=where(fut), priority=s.priority))
                    if self.measure_pools is not None:  # claim 8 on the cluster's real queues
                        measured = measure_queue_loads(client, list(self.congestion.queues), self.measure_pools)
                        self.congestion.set_measured(measured)
                        summary["measured_loads"].append(dict(case=cid, loads=measured))
                    names, reason = self.congestion.choose(self.fanout, self.user_choice.get(cid))
                    have = set(done.get(cid, []))
                    for m in names:
                        self.congestion.assign(m, self._load_of(cid))
                    s.machines = list(names)
                    summary["assignments"][cid] = list(names)
                    emit("assigned", dict(case=cid, machines=names, reason=reason, loads=self.congestion.loads,
                                          measured=self.congestion.measured if self.measure_pools is not None else None))
                    for m in names:
                        if m in have:  # resumed: this machine's plan is already on disk
                            bar.update(1)
                            continue
                        s.open += 1
                        ac.add(start_conversion(s, m, 0))
                    s.reason = reason
                elif kind == "qa":
                    _, _, machine, attempt = tags[fut.key]
                    qa = fut.result()
                    if not isinstance(qa, Mapping) or "passed" not in qa:
                        raise TypeError(f"the qa stage must return a dict with a 'passed' entry, got {qa!r}")
                    emit("qa", dict(case=cid, machine=machine, attempt=attempt, qa=dict(qa), worker=where(fut),
                                    priority=s.priority, retry=not qa["passed"] and attempt + 1 < self.max_qa_attempts))
                    if not qa["passed"] and attempt + 1 < self.max_qa_attempts:
                        ac.add(start_conversion(s, machine, attempt + 1))  # claim 7: back to step 4
                        continue
                    plan = conv_futs[(cid, machine)].result()
                    if s.delineation is not None and s.delineation_report is None:
                        s.delineation_report = s.delineation.result()  # small dict, finished long ago
                        summary["delineation"][cid] = s.delineation_report
                        emit("delineated", dict(case=cid, report=s.delineation_report))
                    meta = dict(qa=dict(qa), attempt=attempt, attempts=attempt + 1, priority=s.priority,
                                policy=self.congestion.policy, choice_reason=s.reason,
                                machine_load_after=self.congestion.loads.get(machine), batch=token,
                                finished_unix=time.time())
                    if s.delineation_report is not None:
                        meta["delineation"] = s.delineation_report
                    if persist_record(out, cid, machine, plan, meta, fingerprint=fps[cid]):
                        summary["persisted"].append([cid, machine])
                        summary["records"].append(dict(case=cid, machine=machine, passed=bool(qa["passed"]),
                                                       attempts=attempt + 1, qa=dict(qa), priority=s.priority))
                        emit("persisted", dict(case=cid, machine=machine, passed=bool(qa["passed"]),
                                               attempts=attempt + 1))
                    else:
                        summary["duplicates"] += 1
                        emit("duplicate", dict(case=cid, machine=machine))
                    if not qa["passed"]:
                        summary["qa_failed"].append([cid, machine])
                    s.open -= 1
                    bar.update(1)
                    if s.open == 0:  # release this case's data on the workers
                        s.load = s.standard = s.delineation = None
                        for m in s.machines:
                            conv_futs.pop((cid, m), None)
            bar.close()
        finally:
            if own:
                client.close()
                if cluster is not None:
                    cluster.close()
        summary["loads"] = self.congestion.loads
        summary["elapsed_s"] = time.perf_counter() - t0
        n = len(summary["persisted"])
        summary["plans_per_minute"] = 60.0 * n / summary["elapsed_s"] if n else 0.0
        return summary


def run_batch(cases, machines, out, stages=None, client=None, scheduler: str | None = None, n_workers: int = 2,
              progress: bool = True, on_event=None, dashboard_address: str | None = DEFAULT_DASHBOARD,
              **planner_kwargs) -> dict:
    """Plan ``cases`` for ``machines`` on dask and persist every plan under ``out``.

    Parameters
    ----------
    cases, machines, stages
        See :class:`BatchPlanner`; further planner options (``policy``, ``priorities``,
        ``user_choice``, ``fanout``, ``max_qa_attempts``, ``plan_load``, ``retries``, ``measure_loads``) go in
        ``**planner_kwargs``.
    out : path-like
        Output directory (resumable).
    client, scheduler, n_workers, progress, on_event, dashboard_address
        See :meth:`BatchPlanner.run`.

    Returns
    -------
    dict
        ``out``, ``persisted`` ([case, machine] pairs written now), ``skipped`` (cases already
        complete in ``out`` with matching fingerprints), ``replanned`` (case -> why its record in
        ``out`` was not reused), ``failed`` (case, or ``case__machine`` for a failed conversion / QA task
        -> error), ``qa_failed`` ([case, machine] persisted with a failing QA), ``duplicates``,
        ``records`` (per persisted plan: case, machine, passed, attempts, qa dict, priority),
        ``assignments`` (case -> machines), ``loads`` (machine -> load after the batch),
        ``dashboard`` (URL or None), ``n_workers``, ``elapsed_s``, ``plans_per_minute``.
    """
    planner = BatchPlanner(cases, machines, stages=stages, **planner_kwargs)
    return planner.run(out, client=client, scheduler=scheduler, n_workers=n_workers, progress=progress,
                       on_event=on_event, dashboard_address=dashboard_address)


def _parse_machines(machines, check_registry: bool) -> dict:
    """``['a', 'b=3']`` -> ``{'a': 0.0, 'b': 3.0}`` (name = initial load on its treatment queue)."""
    out = {}
    for m in machines:
        name, _, load = str(m).partition("=")
        name = name.strip()
        if name in out:
            raise ValueError(f"--machines: machine {name!r} is listed twice; give each machine once")
        if not name:
            raise ValueError(f"--machines: empty machine name in {m!r}; use NAME or NAME=LOAD")
        try:
            out[name] = float(load) if load else 0.0
        except ValueError:
            raise ValueError(f"--machines: the load after '=' in {m!r} must be a number (plans waiting)") from None
    if check_registry:

        unknown = [n for n in out if n not in list_machines()]
        if unknown:
            raise ValueError(f"--machines: unknown machine(s) {unknown}; available: {list_machines()}")
    return out


def _printer(event_log: list | None = None):
    """An ``on_event`` that prints one line per master event that matters to a user."""

    def on_event(kind, info):
        w = f" on {info['worker']}" if info.get("worker") else ""
        line = None
        if kind == "standard":
            line = f"standard plan {info['case']} done{w}"
        elif kind == "assigned":
            line = f"{info['case']} -> {', '.join(info['machines'])} ({info['reason']})"
        elif kind == "qa":
            q = info["qa"]
            rates = ", ".join(f"{k} {100 * v:.1f} %" for k, v in dict(q.get("pass_rates") or {}).items())
            verdict = "passed" if q["passed"] else ("FAILED, regenerating" if info.get("retry") else "FAILED")
            line = f"QA {info['case']} on {info['machine']} (attempt {info['attempt'] + 1}): {verdict}; {rates}"
        elif kind == "replan":
            line = f"re-planning {info['case']}: the record in --out does not match ({info['reason']})"
        elif kind == "failed":
            m = f" on {info['machine']}" if info.get("machine") else ""
            line = f"FAILED {info['case']}{m} in stage {info['stage']}: {info['error']}"
        if line is not None:
            print("rtlab.batch: " + line, flush=True)
        if event_log is not None:
            event_log.append((kind, info))

    return on_event


def run_batch_cli(cases: list[str], machines: list[str], scheduler: str | None, workers: int, out,
                  stage_fns=None, spacing: float | None = None, stage_options: dict | None = None,
                  progress: bool = True, verbose: bool = True, **planner_kwargs) -> dict:
    """Hook for ``rtlab batch --cases ... --machines ... [--scheduler ADDR] [--workers N] [--out DIR]``.

    Parameters
    ----------
    cases : list of str
        Phantom names or case files (with the default stages: parsed by
        :meth:`rtlab.batch.stages.CaseRef.parse`, so an unknown name fails here, before any
        worker starts); with ``stage_fns`` plain case ids for those stages.
    machines : list of str
        Machine names, optionally ``NAME=LOAD`` (plans already waiting on its treatment queue,
        for the congestion model). With the default stages they must be in
        :func:`rtlab.methods.conversion.list_machines`.
    scheduler, workers, out
        Scheduler address (None: a LocalCluster with ``workers`` processes) and output directory.
    stage_fns : Stages or dict, optional
        Replaces rtlab's stages (:func:`rtlab.batch.stages.rtlab_stages`).
    spacing : float, optional
        Phantom voxel size (mm) for the default stages.
    stage_options : dict, optional
        Further :func:`rtlab.batch.stages.rtlab_stages` options (angles, max_iter, ...).
    progress, verbose : bool
        tqdm bar (stderr) / one line per master event (stdout).
    **planner_kwargs
        :class:`BatchPlanner` options; ``fanout`` defaults to every listed machine (claim 13).

    Returns
    -------
    dict
        The :func:`run_batch` summary plus ``files`` (the summary JSON and QA CSV) and
        ``all_passed``. Prints the dashboard link, progress, the QA table and a one-line summary.
    """

    if not cases:
        raise ValueError("--cases: give at least one case id (e.g. a phantom name)")
    if not machines:
        raise ValueError("--machines: give at least one treatment machine name")
    # every argument is checked here, before a worker starts
    if scheduler is None:
        workers = check_workers(workers)
    elif int(workers) < 0:
        raise ValueError(f"--workers must be >= 0, got {workers!r}")
    if spacing is not None:
        (spacing,) = check_spacing("--spacing", spacing, n=1)
    check_output_path(out, "--out", directory=True)
    default = stage_fns is None
    mach = _parse_machines(machines, check_registry=default)
    if default:
        refs = [CaseRef.parse(c, spacing) for c in cases]
        for r in refs:  # a phantom's grid at this spacing, sized before any worker allocates it
            if r.source in list_phantoms():
                try:
                    phantom_grid_of(r.source, r.spacing)
                except ValueError as e:
                    raise ValueError(f"--cases {r.source} --spacing {spacing}: {e}") from None
        stage_fns = rtlab_stages(spacing=spacing, **dict(stage_options or {}))
    else:
        refs = list(cases)
    planner_kwargs.setdefault("fanout", len(mach))
    # the planner's own checks (fanout, policy, QA attempts) also run before the cluster starts
    BatchPlanner(refs, mach, stages=stage_fns, **{k: v for k, v in planner_kwargs.items() if k != "dashboard_address"})
    summary = run_batch(refs, mach, Path(out), stages=stage_fns, scheduler=scheduler, n_workers=max(int(workers), 1),
                        progress=progress, on_event=_printer() if verbose else None, **planner_kwargs)
    ids = [getattr(r, "name", r) for r in refs]
    files = write_summary(out, summary, cases=ids)
    summary["files"] = {k: str(v) for k, v in files.items()}
    table = qa_table(out, ids)
    summary["all_passed"] = bool(len(table) and table["passed"].all() and not summary["failed"])
    if verbose:
        print(format_qa_table(table))
    print(f"rtlab.batch: {len(summary['persisted'])} plan(s) written to {summary['out']}, "
          f"{len(summary['skipped'])} case(s) already done, {len(summary['failed'])} failed, "
          f"{len(summary['qa_failed'])} failed QA ({summary['elapsed_s']:.1f} s)")
    for cid, err in summary["failed"].items():
        print(f"  failed {cid}: {err}")
    for cid, m in summary["qa_failed"]:
        print(f"  QA failed {cid} on {m} (persisted with its QA report; see {Path(out) / (cid + '__' + m + '.json')})")
    return summary
