"""Queue loads measured from a running dask cluster feed the congestion model (patent 001, claim 8).

A cluster with one worker pool per treatment machine (dask resources ``linac_a``/``linac_b``/
``linac_c``) and one compute worker; sleeping tasks are submitted to the pools and the measured
loads are compared with what was submitted (processing on the pool's worker, plus tasks
waiting on the scheduler for that pool).
"""

import logging
import time
from functools import partial

import pytest

distributed = pytest.importorskip("distributed")

from rtlab.batch import CongestionModel, demo_stages, measure_queue_loads, run_batch  # noqa: E402
from rtlab.batch.congestion import pool_workers  # noqa: E402

MACHINES = ["linac_a", "linac_b", "linac_c"]


@pytest.fixture(scope="module")
def client():
    from distributed import Scheduler, SpecCluster, Worker

    workers = {m: {"cls": Worker, "options": {"nthreads": 1, "resources": {m: 1}, "name": f"pool-{m}"}}
               for m in MACHINES}
    workers["compute"] = {"cls": Worker, "options": {"nthreads": 1, "name": "compute"}}
    cluster = SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
                          silence_logs=logging.ERROR)
    c = distributed.Client(cluster)
    c.wait_for_workers(4)
    yield c
    c.close()
    cluster.close()


def _sleep(s, *deps):
    time.sleep(s)
    return s


def _poll(client, want_total, timeout=15.0, **kw):
    """Measure until the loads sum to ``want_total`` (tasks reach the scheduler asynchronously)."""
    t0 = time.time()
    while True:
        d = measure_queue_loads(client, MACHINES, detail=True, **kw)
        if sum(v["load"] for v in d.values()) == want_total or time.time() - t0 > timeout:
            return d
        time.sleep(0.05)


def test_measured_loads_match_submitted_tasks(client):
    # 3 sleeping tasks on pool a (one runs, two wait in the worker's queue), 1 on pool b plus a
    # task for pool b that waits on the scheduler for its dependency, nothing on pool c
    a = [client.submit(_sleep, 2.0, resources={"linac_a": 1}, pure=False) for _ in range(3)]
    b = client.submit(_sleep, 2.0, resources={"linac_b": 1}, pure=False)
    b2 = client.submit(_sleep, 0.0, b, resources={"linac_b": 1}, pure=False)
    d = _poll(client, 5)
    assert {m: (v["processing"], v["waiting"]) for m, v in d.items()} == \
        {"linac_a": (3, 0), "linac_b": (1, 1), "linac_c": (0, 0)}
    assert {m: v["load"] for m, v in d.items()} == {"linac_a": 3.0, "linac_b": 2.0, "linac_c": 0.0}
    # independent check: the scheduler's own per-worker processing lists
    proc = client.processing()
    wa = pool_workers(client.scheduler_info(n_workers=-1)["workers"], "resource:linac_a")
    assert sum(len(proc[w]) for w in wa) == 3
    # the model fed with the measured loads
    m = CongestionModel(MACHINES, "shortest_queue")
    m.set_measured({k: v["load"] for k, v in d.items()})
    assert m.choose()[0] == ["linac_c"] and m.choose(k=2)[0] == ["linac_c", "linac_b"]
    idle = CongestionModel(MACHINES, "idle")
    idle.set_measured({k: v["load"] for k, v in d.items()})
    assert idle.choose()[0] == ["linac_c"]
    # typed-in numbers stay an option and add to the measured ones: c has 5 plans waiting
    mixed = CongestionModel({"linac_a": 0, "linac_b": 0, "linac_c": 5}, "shortest_queue")
    mixed.set_measured({k: v["load"] for k, v in d.items()})
    assert mixed.choose()[0] == ["linac_b"] and mixed.loads == {"linac_a": 3.0, "linac_b": 2.0, "linac_c": 5.0}
    # pools given by worker names measure the same thing
    by_name = measure_queue_loads(client, MACHINES, pools={m: [f"pool-{m}"] for m in MACHINES}, waiting=False)
    assert by_name["linac_a"] == 3.0 and by_name["linac_c"] == 0.0
    distributed.wait(a + [b, b2])
    assert _poll(client, 0) == {m: dict(load=0.0, processing=0, waiting=0, workers=d[m]["workers"]) for m in MACHINES}
    assert CongestionModel.from_cluster(client, MACHINES).loads == {m: 0.0 for m in MACHINES}


def test_measured_loads_errors(client):
    with pytest.raises(ValueError, match="linac_x.*no worker"):
        measure_queue_loads(client, ["linac_x"])
    with pytest.raises(ValueError, match="pools: unknown machine"):
        measure_queue_loads(client, ["linac_a"], pools={"linac_a": "resource:linac_a", "zz": ["compute"]})
    with pytest.raises(TypeError, match="pool must be"):
        measure_queue_loads(client, ["linac_a"], pools={"linac_a": 3})
    m = CongestionModel(MACHINES)
    with pytest.raises(ValueError, match="unknown machine"):
        m.set_measured({"nope": 1})
    with pytest.raises(ValueError, match=">= 0"):
        m.set_measured({"linac_a": -1})
    with pytest.raises(ValueError, match=">= 0"):
        m.set_measured({"linac_a": float("nan")})


def test_batch_chooses_by_measured_loads(client, tmp_path):
    # pools a and b are busy with their own queues while the batch runs; c is idle. With typed-in
    # loads only (all 0) the first plan would go to linac_a (list order); measured, it goes to c.
    busy = [client.submit(_sleep, 3.0, resources={m: 1}, pure=False) for m in ("linac_a", "linac_b") for _ in range(2)]
    _poll(client, 4)
    events = []
    s = run_batch(["p0"], MACHINES, tmp_path, stages=demo_stages(), client=client, progress=False,
                  policy="idle", measure_loads=True, on_event=lambda k, i: events.append((k, i)))
    assert s["assignments"] == {"p0": ["linac_c"]} and not s["failed"]
    (meas,) = s["measured_loads"]
    assert meas["loads"]["linac_a"] >= 1 and meas["loads"]["linac_b"] >= 1 and meas["loads"]["linac_c"] == 0
    assigned = [i for k, i in events if k == "assigned"][0]
    assert assigned["measured"] == meas["loads"]
    distributed.wait(busy)
    with pytest.raises(ValueError, match="measure_loads"):
        run_batch(["p0"], MACHINES, tmp_path, stages=demo_stages(), client=client, progress=False,
                  measure_loads={"linac_a": "resource:linac_a"})


def test_batch_with_a_missing_pool_fails_before_any_task(client, tmp_path):
    with pytest.raises(ValueError, match="'linac_x' has no worker"):
        run_batch(["p0"], ["linac_a", "linac_x"], tmp_path, stages=demo_stages(), client=client, progress=False,
                  measure_loads=True)
    assert not list(tmp_path.glob("*.json"))
