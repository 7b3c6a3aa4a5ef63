"""Tests of rtlab.batch: congestion model, idempotent persistence, the dask master (resume,
QA regeneration, priorities, failures) and a worker killed mid-batch."""

import json
import logging
import os
import signal
from functools import partial
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from rtlab.batch import (  # noqa: E402
    BatchPlanner, CongestionModel, MachineQueue, Stages, completed_records, demo_stages, load_record,
    make_client, persist_record, run_batch, run_batch_cli,
)
from rtlab.batch.stages import default_stages, rtlab_convert  # noqa: E402


# ---------------------------------------------------------------------------------------------
# congestion model (claim 8, 13)
# ---------------------------------------------------------------------------------------------
def test_congestion_policies():
    m = CongestionModel({"a": 2, "b": 0, "c": 1}, "shortest_queue")
    assert m.choose() == (["b"], "shortest queue (load 0)")
    m.assign("b", 2)  # b now 2: tie with a, a listed first
    assert m.choose()[0] == ["c"]
    m.assign("c", 5)
    assert m.choose()[0] == ["a"] and m.choose(k=2)[0] == ["a", "b"]
    idle = CongestionModel({"a": 1, "b": 0, "c": 0}, "idle")
    assert idle.choose()[0] == ["b"]
    idle.assign("b")
    idle.assign("c")
    names, reason = idle.choose()  # nobody idle any more: falls back to the shortest queue
    assert names == ["a"] and "0 idle" in reason
    down = CongestionModel([MachineQueue("a", 0, available=False), MachineQueue("b", 9)], "idle")
    assert down.choose()[0] == ["b"]  # an out-of-service machine is never chosen
    user = CongestionModel(["a", "b"], "user")
    assert user.choose(user="b") == (["b"], "user choice")
    with pytest.raises(ValueError, match="unknown machine"):
        user.choose(user="z")
    with pytest.raises(ValueError, match="user_choice"):
        user.choose()
    with pytest.raises(ValueError, match="policy"):
        CongestionModel(["a"], "random")
    with pytest.raises(ValueError, match="cannot choose 3"):
        CongestionModel(["a", "b"]).choose(k=3)
    with pytest.raises(ValueError, match="load"):
        MachineQueue("a", -1)
    with pytest.raises(ValueError, match="unique"):
        CongestionModel(["a", "a"])


# ---------------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------------
def test_persist_is_atomic_and_idempotent(tmp_path):
    plan = dict(dose=np.arange(8.0).reshape(2, 2, 2), weights=np.ones(3), note="x", mu=np.float64(2.5))
    assert persist_record(tmp_path, "c1", "linac_a", plan, dict(qa=dict(passed=True)))
    side = tmp_path / "c1__linac_a.json"
    before = side.stat().st_mtime_ns, side.read_text()
    assert not persist_record(tmp_path, "c1", "linac_a", dict(dose=np.zeros(1)))  # already there: no write
    assert (side.stat().st_mtime_ns, side.read_text()) == before
    arrays, doc = load_record(tmp_path, "c1", "linac_a")
    assert np.array_equal(arrays["dose"], plan["dose"]) and set(arrays) == {"dose", "weights"}
    assert doc["plan"] == {"note": "x", "mu": 2.5} and doc["qa"]["passed"] is True
    assert completed_records(tmp_path) == {"c1": ["linac_a"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1__linac_a.json", "c1__linac_a.npz"]  # no temp files
    with pytest.raises(ValueError, match="case id"):
        persist_record(tmp_path, "../evil", "a", plan)
    with pytest.raises(TypeError, match="dict"):
        persist_record(tmp_path, "c2", "a", [1, 2])


def test_planner_validation():
    with pytest.raises(ValueError, match="empty"):
        BatchPlanner([], ["a"])
    with pytest.raises(ValueError, match="unique"):
        BatchPlanner(["x", "x"], ["a"])
    with pytest.raises(ValueError, match="user_choice"):
        BatchPlanner(["x", "y"], ["a"], policy="user", user_choice={"x": "a"})
    with pytest.raises(ValueError, match="unknown machine"):
        BatchPlanner(["x"], ["a"], policy="user", user_choice={"x": "b"})
    with pytest.raises(ValueError, match="fanout"):
        BatchPlanner(["x"], ["a"], fanout=2)
    with pytest.raises(ValueError, match="unknown case"):
        BatchPlanner(["x"], ["a"], priorities={"y": 1})
    with pytest.raises(ValueError, match="stage name"):
        BatchPlanner(["x"], ["a"], stages={"optimise": print})
    with pytest.raises(TypeError, match="callable"):
        Stages(qa=3)
    assert Stages.coerce({"qa": print}).qa is print and Stages.coerce(None).convert is rtlab_convert
    # the default convert stage is wired to rtlab.methods.conversion (tested in test_batch_cli.py)
    assert default_stages().convert is rtlab_convert and default_stages() == Stages()


# ---------------------------------------------------------------------------------------------
# the master on a shared 2-worker LocalCluster
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    c, cluster = make_client(n_workers=2, dashboard_address=None, silence_logs=logging.ERROR)
    yield c
    c.close()
    cluster.close()


def _sidecars(out):
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"))]


def test_batch_qa_regeneration_congestion_and_resume(client, tmp_path):
    cases = [f"p{i}" for i in range(5)]
    events = []
    s = run_batch(cases, {"linac_a": 2, "linac_b": 0}, tmp_path, stages=demo_stages(bad_attempts=1),
                  client=client, progress=False, on_event=lambda k, i: events.append((k, i)))
    assert sorted(c for c, _ in s["persisted"]) == cases and not s["failed"] and not s["qa_failed"]
    docs = _sidecars(tmp_path)
    assert len(docs) == 5 and len(list(tmp_path.glob("*.npz"))) == 5
    # claim 7: the first conversion (8 % hot) fails QA, the second passes
    assert all(d["attempts"] == 2 and d["qa"]["passed"] for d in docs)
    assert sum(1 for k, i in events if k == "qa" and not i["qa"]["passed"]) == 5
    # shortest queue, 5 plans onto loads {a: 2, b: 0}: b takes plans while its load is lower; ties
    # go to a (listed first): b 0->1->2, tie -> a 3, b 3, tie -> a 4
    assert s["loads"] == {"linac_a": 4.0, "linac_b": 3.0}
    assert sorted(m for ms in s["assignments"].values() for m in ms) == ["linac_a"] * 2 + ["linac_b"] * 3
    # resume: same out dir and settings -> everything is skipped, nothing is written
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = run_batch(cases + ["p5"], {"linac_a": 0, "linac_b": 0}, tmp_path, stages=demo_stages(bad_attempts=1),
                      client=client, progress=False)
    assert sorted(again["skipped"]) == cases and again["persisted"] == [["p5", "linac_a"]]
    assert all(tmp_path.joinpath(n).stat().st_mtime_ns == t for n, t in mtimes.items())


def test_batch_priorities_fanout_and_failures(client, tmp_path):
    seen = {}

    def on_event(kind, info):
        if kind == "n_beams" and not seen:
            seen.update(client.run_on_scheduler(_load_priorities))

    s = run_batch(["lo", "hi", "bad"], ["a", "b", "c"], tmp_path, stages=demo_stages(fail_ids=("bad",)),
                  client=client, progress=False, priorities={"hi": 7, "lo": -1}, fanout=2, on_event=on_event)
    # user priority -> dask priority (dask stores -priority first in its priority tuple)
    assert seen["lo"] == 1 and seen["hi"] == -7
    assert set(s["failed"]) == {"bad"} and "RuntimeError" in s["failed"]["bad"]
    # fanout 2 (claim 13): each good case converted for two machines; the first standard plan goes
    # to {a, b} (all idle, list order), the second to {c, a} (c idle; a and b tied, a first)
    per_case = {}
    for c, m in s["persisted"]:
        per_case.setdefault(c, set()).add(m)
    assert set(per_case) == {"hi", "lo"} and all(len(v) == 2 for v in per_case.values())
    assert sorted(m for _, m in s["persisted"]) == ["a", "a", "b", "c"]
    assert s["loads"] == {"a": 2.0, "b": 1.0, "c": 1.0} and len(list(tmp_path.glob("*.json"))) == 4


def _load_priorities(dask_scheduler):
    out = {}
    for key, ts in dask_scheduler.tasks.items():
        k = str(key)
        if k.startswith("load-"):
            out[k.split("-")[1]] = ts.priority[0]
    return out


def test_cli_hook_with_scheduler_address(client, tmp_path, capsys):
    addr = client.scheduler.address
    s = run_batch_cli(["q1", "q2"], ["m1"], addr, 0, tmp_path, stage_fns=demo_stages(), progress=False)
    assert len(s["persisted"]) == 2 and s["n_workers"] == 2
    assert "2 plan(s) written" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--machines"):
        run_batch_cli(["q1"], [], None, 1, tmp_path)


# ---------------------------------------------------------------------------------------------
# fault tolerance: a worker process killed mid-batch loses no plan
# ---------------------------------------------------------------------------------------------
def test_worker_killed_mid_batch_loses_no_plan(tmp_path):
    c, cluster = make_client(n_workers=2, dashboard_address=None, silence_logs=logging.CRITICAL)
    killed = []

    def on_event(kind, info):
        if kind == "standard" and not killed:
            pids = c.run(os.getpid)  # worker address -> pid
            busy = [w for w, keys in c.processing().items() if keys]
            victim = busy[0] if busy else next(iter(pids))
            os.kill(pids[victim], signal.SIGKILL)
            killed.append((victim, bool(busy)))

    try:
        cases = [f"k{i}" for i in range(6)]
        s = run_batch(cases, ["a", "b"], tmp_path, stages=demo_stages(sleep_s=1.0), client=c, progress=False,
                      on_event=on_event, retries=2)
    finally:
        c.close()
        cluster.close()
    assert killed and killed[0][1], "no worker was killed while processing tasks"
    assert not s["failed"], s["failed"]
    docs = _sidecars(tmp_path)
    assert sorted(d["case"] for d in docs) == cases  # every case exactly once
    assert len(list(tmp_path.glob("*.npz"))) == 6 and not list(tmp_path.glob(".*"))  # no temp files
    assert s["duplicates"] == 0 and len(s["persisted"]) == 6


def test_resume_needs_matching_input_settings_and_version(client, tmp_path, monkeypatch):
    """Issue #15 item 2: a record is reused only when case content, settings and rtlab version match."""
    from rtlab.batch import fingerprint as fp
    from rtlab.batch.stages import CaseRef

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    np.savez(a / "patient.npz", ct=np.zeros(3))
    np.savez(b / "patient.npz", ct=np.ones(3))  # another patient, same file stem
    out = tmp_path / "out"
    first = run_batch([CaseRef("patient", str(a / "patient.npz"))], ["m"], out, stages=demo_stages(), client=client,
                      progress=False)
    assert first["persisted"] == [["patient", "m"]] and first["replanned"] == {}
    side = json.loads((out / "patient__m.json").read_text())
    assert set(side["fingerprint"]) == {"input", "settings", "rtlab_version"}
    assert side["fingerprint"]["rtlab_version"] == fp.rtlab_version()
    # same file again: resumed, nothing written
    same = run_batch([CaseRef("patient", str(a / "patient.npz"))], ["m"], out, stages=demo_stages(), client=client,
                     progress=False)
    assert same["skipped"] == ["patient"] and same["persisted"] == []
    # a different patient with the same stem: planned again, and the log says why
    events = []
    other = run_batch([CaseRef("patient", str(b / "patient.npz"))], ["m"], out, stages=demo_stages(), client=client,
                      progress=False, on_event=lambda k, i: events.append((k, i)))
    assert other["skipped"] == [] and other["persisted"] == [["patient", "m"]]
    assert other["replanned"] == {"patient": "m: the case input differs (content hash)"}
    assert ("replan", {"case": "patient", "reason": "m: the case input differs (content hash)"}) in events
    new_side = json.loads((out / "patient__m.json").read_text())
    assert new_side["fingerprint"]["input"] != side["fingerprint"]["input"]
    # other settings (grid size of the demo case): planned again
    s2 = run_batch([CaseRef("patient", str(b / "patient.npz"))], ["m"], out, stages=demo_stages(n=10), client=client,
                   progress=False)
    assert s2["replanned"] == {"patient": "m: the plan settings differ"} and s2["persisted"] == [["patient", "m"]]
    # another rtlab version: planned again
    monkeypatch.setattr(fp, "rtlab_version", lambda: "99.0")
    s3 = run_batch([CaseRef("patient", str(b / "patient.npz"))], ["m"], out, stages=demo_stages(n=10), client=client,
                   progress=False)
    assert "written by rtlab" in s3["replanned"]["patient"] and s3["persisted"] == [["patient", "m"]]
    # a record without a fingerprint (older rtlab) is not trusted either
    doc = json.loads((out / "patient__m.json").read_text())
    del doc["fingerprint"]
    (out / "patient__m.json").write_text(json.dumps(doc))
    s4 = run_batch([CaseRef("patient", str(b / "patient.npz"))], ["m"], out, stages=demo_stages(n=10), client=client,
                   progress=False)
    assert s4["replanned"] == {"patient": "m: the record holds no fingerprint (written by an older rtlab)"}


def test_fingerprint_of_phantoms_and_cases():
    from rtlab.batch.fingerprint import case_input_hash, fingerprint
    from rtlab.batch.stages import CaseRef, rtlab_stages
    from rtlab.phantoms import get_phantom

    assert case_input_hash(CaseRef("sphere", "sphere", 6.0)) != case_input_hash(CaseRef("sphere", "sphere", 5.0))
    c1 = get_phantom("sphere", spacing=8.0)
    c2 = get_phantom("sphere", spacing=8.0)
    assert case_input_hash(c1) == case_input_hash(c2)
    c2.ct[0, 0, 0] += 1.0
    assert case_input_hash(c1) != case_input_hash(c2)
    f1 = fingerprint("sphere", rtlab_stages(angles=[0, 90]))
    f2 = fingerprint("sphere", rtlab_stages(angles=[0, 120]))
    assert f1["input"] == f2["input"] and f1["settings"] != f2["settings"]
    assert fingerprint("sphere", rtlab_stages(angles=[0, 90])) == f1
