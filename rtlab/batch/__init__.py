"""Patent 001's master/worker planning on dask.distributed (see ``docs/batch.md``).

>>> from rtlab.batch import run_batch, rtlab_stages            # doctest: +SKIP
>>> run_batch(["tg119_prostate"], ["standard", "linac_10mm_hard"], "out/",
...           stages=rtlab_stages(spacing=6.0), fanout=2)    # doctest: +SKIP
"""

from .congestion import POLICIES, CongestionModel, MachineQueue, measure_queue_loads
from .demo import demo_stages
from .master import BatchPlanner, dashboard_link, make_client, run_batch, run_batch_cli
from .persist import completed_records, load_record, persist_record
from .report import dvh_table, format_qa_table, qa_table, write_summary
from .stages import CaseRef, Stages, default_stages, rtlab_stages

__all__ = [
    "BatchPlanner", "run_batch", "run_batch_cli", "make_client", "dashboard_link",
    "CongestionModel", "MachineQueue", "POLICIES", "measure_queue_loads",
    "Stages", "default_stages", "rtlab_stages", "demo_stages", "CaseRef",
    "persist_record", "load_record", "completed_records",
    "qa_table", "dvh_table", "format_qa_table", "write_summary",
]
