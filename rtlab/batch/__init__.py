"""Seed 001's master/worker planning on dask.distributed (see ``docs/batch.md``).

>>> from rtlab.batch import run_batch, demo_stages            # doctest: +SKIP
>>> run_batch(["p1", "p2"], {"linac_a": 3, "linac_b": 0}, "out/", stages=demo_stages())  # doctest: +SKIP
"""

from .congestion import POLICIES, CongestionModel, MachineQueue
from .demo import demo_stages
from .master import BatchPlanner, dashboard_link, make_client, run_batch, run_batch_cli
from .persist import completed_records, load_record, persist_record
from .stages import Stages, default_stages

__all__ = [
    "BatchPlanner", "run_batch", "run_batch_cli", "make_client", "dashboard_link",
    "CongestionModel", "MachineQueue", "POLICIES",
    "Stages", "default_stages", "demo_stages",
    "persist_record", "load_record", "completed_records",
]
