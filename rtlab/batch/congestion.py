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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

__all__ = ["MachineQueue", "CongestionModel", "POLICIES"]

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
    """

    name: str
    load: float = 0.0
    available: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"machine name must be a non-empty string, got {self.name!r}")
        bad = set('/\\:*?"<>|') & set(self.name)
        if bad:
            raise ValueError(f"machine name {self.name!r} contains {sorted(bad)}; use letters, digits, '-' and '_'")
        self.load = float(self.load)
        if not self.load >= 0:
            raise ValueError(f"load of machine {self.name!r} must be >= 0 (work waiting on its queue), got {self.load!r}")


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
        """Current load of every machine."""
        return {n: q.load for n, q in self.queues.items()}

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
        by_load = sorted(avail, key=lambda q: q.load)  # stable: ties keep the given order
        if self.policy == "idle":
            idle = [q for q in avail if q.load == 0]
            if len(idle) >= k:
                return [q.name for q in idle[:k]], "idle"
            rest = [q for q in by_load if q not in idle][: k - len(idle)]
            return [q.name for q in idle + rest], f"{len(idle)} idle, rest by shortest queue"
        chosen = by_load[:k]
        return [q.name for q in chosen], "shortest queue (load " + ", ".join(f"{q.load:g}" for q in chosen) + ")"
