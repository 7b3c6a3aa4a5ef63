"""Congestion model of the treatment machines (patent 001, claim 8).

Patent 001 converts each standard plan for a *specific* treatment machine (a linac with its own
beam model and MLC) and picks that machine by congestion: "preferentially ... a radiotherapy
equipment currently idle, or with few tasks to be performed, or as user-defined" (claim 8);
one standard plan may be converted for several machines (claim 13). A machine out of service
(the patent's motivating case) is simply marked unavailable.

The model
---------
Each machine is a :class:`MachineQueue` with a **load**: a non-negative number standing for
the work already waiting on that machine's *treatment* queue - by default the number of plans
(patients) queued for treatment, but any additive unit works (fractions, treatment minutes) as
long as ``initial load`` and ``plan_load`` use the same one. It is not the compute load of the
cluster: dask balances that by itself. Every plan the master assigns to a machine adds
``plan_load`` to its load at once (the plan joins that machine's queue), so later choices in the
same batch see the earlier ones.

Policies (:meth:`CongestionModel.choose`):

``'idle'``
    machines with load 0, in the order given; if fewer than needed are idle, the rest are
    filled by ``'shortest_queue'`` (the choice's ``reason`` says so).
``'shortest_queue'``
    the machines with the smallest load; ties go to the earlier machine in the list.
``'user'``
    the machine(s) the user named for the case; an unknown or unavailable name raises.

Measured loads (from the running dask cluster)
----------------------------------------------
Instead of typing the loads in, they can be **measured** from a running dask cluster where
each treatment machine has a *pool* of dask workers that run its queue (e.g. the machine's
delivery/QA jobs, or anything restricted to that pool): :func:`measure_queue_loads` asks the
scheduler, for each pool, how many of its tasks are **processing** (assigned to a worker:
executing or waiting in the worker's own queue, as ``Client.processing()`` lists them) and how many are
**waiting** for it (not yet on a worker, restricted to the pool's workers or its resource),
read on the scheduler (``Client.run_on_scheduler``), and :meth:`CongestionModel.set_measured` feeds those numbers
to the model. A pool is a list of worker names/addresses, or ``"resource:NAME"`` (the workers
started with the dask resource ``NAME``; the default pool of machine ``m`` is
``"resource:m"``). The load the policies see is then *typed-in load + plans assigned in this
batch + measured tasks*; without measurement it is the first two, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

__all__ = ["MachineQueue", "CongestionModel", "POLICIES", "measure_queue_loads", "pool_workers", "scheduler_pool_counts"]

POLICIES = ("idle", "shortest_queue", "user")


@dataclass
class MachineQueue:
    """One treatment machine's queue.

    Parameters
    ----------
    name : str
        Machine identifier (e.g. ``"linac_a"``); also used in file names.
    load : float
        Work waiting on the machine's treatment queue (default unit: plans).
    available : bool
        False for a machine out of service; it is never chosen.
    measured : float
        Tasks measured on the machine's dask worker pool (:func:`measure_queue_loads`); added
        to ``load`` by :attr:`CongestionModel.loads`.
    """

    name: str
    load: float = 0.0
    available: bool = True
    measured: float = 0.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"machine name must be a non-empty string, got {self.name!r}")
        bad = set('/\\:*?"<>|') & set(self.name)
        if bad:
            raise ValueError(f"machine name {self.name!r} contains {sorted(bad)}; use letters, digits, '-' and '_'")
        self.load = float(self.load)
        if not self.load >= 0:
            raise ValueError(f"load of machine {self.name!r} must be >= 0 (work waiting on its queue), got {self.load!r}")
        self.measured = float(self.measured)
        if not self.measured >= 0:
            raise ValueError(f"measured load of machine {self.name!r} must be >= 0, got {self.measured!r}")

    @property
    def total(self) -> float:
        """``load + measured``: what the policies compare."""
        return self.load + self.measured


class CongestionModel:
    """Choose treatment machines by congestion (patent 001, claims 8 and 13).

    Parameters
    ----------
    machines : list of str or MachineQueue, or dict name -> initial load
        The machines. Plain names start with load 0.
    policy : {'idle', 'shortest_queue', 'user'}
        See the module docstring.

    Examples
    --------
    >>> m = CongestionModel({"a": 2, "b": 0, "c": 1})
    >>> m.choose()[0]
    ['b']
    >>> m.assign("b"); m.assign("b"); m.choose()[0]
    ['c']
    """

    def __init__(self, machines, policy: str = "shortest_queue"):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        if isinstance(machines, Mapping):
            qs = [MachineQueue(str(k), v) for k, v in machines.items()]
        elif isinstance(machines, (str, bytes)) or not isinstance(machines, Iterable):
            raise TypeError(f"machines must be a list of names / MachineQueue or a dict name -> load, got {machines!r}")
        else:
            qs = [m if isinstance(m, MachineQueue) else MachineQueue(str(m)) for m in machines]
        if not qs:
            raise ValueError("machines is empty; give at least one treatment machine")
        names = [q.name for q in qs]
        if len(set(names)) != len(names):
            raise ValueError(f"machine names must be unique, got {names}")
        if not any(q.available for q in qs):
            raise ValueError("no machine is available; mark at least one available=True")
        self.queues: dict[str, MachineQueue] = {q.name: q for q in qs}

    @property
    def loads(self) -> dict[str, float]:
        """Current load of every machine (typed-in + assigned + measured)."""
        return {n: q.total for n, q in self.queues.items()}

    @property
    def measured(self) -> dict[str, float]:
        """The last measured part of every machine's load (0 when never measured)."""
        return {n: q.measured for n, q in self.queues.items()}

    def set_measured(self, loads: Mapping[str, float]) -> None:
        """Replace the measured part of the machines' loads (e.g. :func:`measure_queue_loads`).

        Machines not in ``loads`` keep their previous measurement; an unknown name, a negative
        or non-finite load raises ``ValueError``.
        """
        for n, v in dict(loads).items():
            if n not in self.queues:
                raise ValueError(f"set_measured: unknown machine {n!r}; known: {list(self.queues)}")
            v = float(v)
            if not (v >= 0 and v != float("inf")):
                raise ValueError(f"set_measured: load of {n!r} must be a finite number >= 0, got {v!r}")
            self.queues[n].measured = v

    @classmethod
    def from_cluster(cls, client, machines, policy: str = "shortest_queue", pools: Mapping | None = None
                     ) -> "CongestionModel":
        """A model whose loads are measured now from ``client``'s cluster (:func:`measure_queue_loads`).

        ``machines`` as for the constructor (typed-in loads, if any, are kept and added).
        """
        m = cls(machines, policy)
        m.set_measured(measure_queue_loads(client, list(m.queues), pools))
        return m

    def assign(self, name: str, amount: float = 1.0) -> None:
        """Add ``amount`` to machine ``name``'s load (a plan joined its treatment queue)."""
        if name not in self.queues:
            raise ValueError(f"unknown machine {name!r}; known: {list(self.queues)}")
        self.queues[name].load += float(amount)

    def choose(self, k: int = 1, user: str | Sequence[str] | None = None) -> tuple[list[str], str]:
        """Pick ``k`` machines under the policy; returns ``(names, reason)``. Does not assign.

        Parameters
        ----------
        k : int
            How many machines (one standard plan converted for several machines, claim 13).
        user : str or list of str, optional
            The user's choice; required (and only used) with policy ``'user'``.
        """
        avail = [q for q in self.queues.values() if q.available]
        if self.policy == "user":
            if user is None:
                raise ValueError("policy 'user' needs the user's machine choice for every case (user_choice=)")
            names = [user] if isinstance(user, str) else list(user)
            for n in names:
                if n not in self.queues:
                    raise ValueError(f"user chose unknown machine {n!r}; known: {list(self.queues)}")
                if not self.queues[n].available:
                    raise ValueError(f"user chose machine {n!r}, which is unavailable")
            return names, "user choice"
        k = int(k)
        if not 1 <= k <= len(avail):
            raise ValueError(f"cannot choose {k} machine(s): {len(avail)} available")
        by_load = sorted(avail, key=lambda q: q.total)  # stable: ties keep the given order
        if self.policy == "idle":
            idle = [q for q in avail if q.total == 0]
            if len(idle) >= k:
                return [q.name for q in idle[:k]], "idle"
            rest = [q for q in by_load if q not in idle][: k - len(idle)]
            return [q.name for q in idle + rest], f"{len(idle)} idle, rest by shortest queue"
        chosen = by_load[:k]
        return [q.name for q in chosen], "shortest queue (load " + ", ".join(f"{q.total:g}" for q in chosen) + ")"


# ---------------------------------------------------------------------------------------------
# loads measured from a running dask cluster
# ---------------------------------------------------------------------------------------------
def pool_workers(workers: Mapping[str, Mapping], pool) -> list[str]:
    """Addresses of the workers in ``pool``.

    Parameters
    ----------
    workers : dict address -> worker info
        ``client.scheduler_info()['workers']`` (each with ``name`` and ``resources``).
    pool : str or sequence of str
        ``"resource:NAME"`` (workers that have the dask resource ``NAME``), or worker names /
        addresses.
    """
    if isinstance(pool, str) and pool.startswith("resource:"):
        res = pool[len("resource:"):]
        return sorted(a for a, w in workers.items() if float(dict(w.get("resources") or {}).get(res, 0)) > 0)
    if isinstance(pool, str) or not isinstance(pool, Iterable):
        raise TypeError(f"a pool must be 'resource:NAME' or a list of worker names/addresses, got {pool!r}")
    want = {str(p) for p in pool}
    return sorted(a for a, w in workers.items() if a in want or str(w.get("name")) in want)


def scheduler_pool_counts(dask_scheduler=None, pools=None):
    """Scheduler-side (``client.run_on_scheduler``): per pool, ``[processing, waiting]`` task counts.

    ``pools``: name -> (list of worker addresses, resource name or None). For a resource pool a
    task counts when it needs that resource; for a pool of named workers, when it is processing
    on one of them or may only run on them. ``processing``: assigned to a worker (executing or
    in the worker's queue); ``waiting``: still on the scheduler (``queued``, ``no-worker``, or
    ``waiting`` for its dependencies).
    """
    out = {n: [0, 0] for n in pools}
    for ts in dask_scheduler.tasks.values():
        st = ts.state
        if st not in ("processing", "queued", "no-worker", "waiting"):
            continue
        rr = ts.resource_restrictions or {}
        wr = set(ts.worker_restrictions or ())
        on = ts.processing_on.address if ts.processing_on is not None else None
        for n, (addrs, res) in pools.items():
            if res is not None:
                hit = res in rr
            elif st == "processing":
                hit = on in addrs
            else:
                hit = bool(wr) and wr <= set(addrs)
            if hit:
                out[n][0 if st == "processing" else 1] += 1
    return out


def measure_queue_loads(client, machines: Sequence[str], pools: Mapping | None = None, waiting: bool = True,
                        detail: bool = False):
    """Queue loads of the treatment machines measured from a running dask cluster.

    For each machine, the tasks of its worker pool that are **processing** (assigned to a
    worker: executing or in the worker's own queue) plus, with ``waiting``, those still held by
    the scheduler (``queued`` / ``no-worker`` / ``waiting`` for dependencies). A task belongs to
    a resource pool when it needs the resource, to a pool of named workers when it is processing
    on one of them or may only run on them (:func:`scheduler_pool_counts`, read on the
    scheduler by ``client.run_on_scheduler``: a remote scheduler needs rtlab installed).
    Untagged compute tasks that happen to run on a pool's worker are not counted for a resource
    pool, but are for a pool of named workers (dedicate those workers to the machine).

    Parameters
    ----------
    client : distributed.Client
    machines : sequence of str
        Treatment machine names.
    pools : dict machine -> pool, optional
        A pool is ``"resource:NAME"`` or a list of worker names/addresses (:func:`pool_workers`).
        Default: ``"resource:<machine>"`` for every machine.
    waiting : bool
        Also count the tasks waiting on the scheduler for the pool.
    detail : bool
        Return ``{machine: {'load', 'processing', 'waiting', 'workers'}}`` instead of loads.

    Returns
    -------
    dict machine -> float (tasks), or the details.

    Raises
    ------
    ValueError
        A pool for an unknown machine, or a machine whose pool has no worker in the cluster.
    """
    names = [str(m) for m in machines]
    pools = {m: f"resource:{m}" for m in names} if pools is None else dict(pools)
    unknown = set(pools) - set(names)
    if unknown:
        raise ValueError(f"pools: unknown machine(s) {sorted(unknown)}; machines are {names}")
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    members = {}
    for m in names:
        if m not in pools:
            raise ValueError(f"pools: no worker pool given for machine {m!r}")
        members[m] = pool_workers(workers, pools[m])
        if not members[m]:
            raise ValueError(f"pools: machine {m!r} has no worker in the cluster (pool {pools[m]!r}; workers: "
                             f"{sorted(str(w.get('name')) for w in workers.values())}); start workers with that "
                             "resource/name or fix the pool")
    spec = {m: (members[m], pools[m][len("resource:"):] if isinstance(pools[m], str) else None) for m in names}
    counts = client.run_on_scheduler(scheduler_pool_counts, pools=spec)
    out = {}
    for m in names:
        p, w = counts[m]
        w = w if waiting else 0
        out[m] = dict(load=float(p + w), processing=int(p), waiting=int(w), workers=members[m])
    return out if detail else {m: d["load"] for m, d in out.items()}
