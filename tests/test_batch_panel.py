"""BatchPanel without a browser: rows from master events, a real batch in the background thread."""

import logging

import pytest

pytest.importorskip("distributed")

from rtlab.batch import demo_stages, make_client  # noqa: E402
from rtlab.widgets.batch_panel import STANDARD_ROW, BatchPanel  # noqa: E402


def test_rows_follow_master_events(tmp_path):
    p = BatchPanel(["a", "b"], ["m1", "m2"], tmp_path, stages=demo_stages(), priorities={"b": 3})
    assert p.counts() == {"queued": 2} and p.table()["priority"].tolist() == [0, 3]
    p.on_event("start", dict(todo=["a", "b"], skipped=[], dashboard="http://x:1/status", priorities={"a": 0, "b": 3}))
    p.on_event("standard", dict(case="a", worker="tcp://w1"))
    p.on_event("assigned", dict(case="a", machines=["m2"], reason="idle", loads={}))
    p.on_event("converting", dict(case="a", machine="m2", attempt=0, priority=0))
    p.on_event("qa", dict(case="a", machine="m2", attempt=0, worker="tcp://w2", retry=True,
                          qa=dict(passed=False, pass_rates={"3%/3mm": 0.9}, reasons=["gamma low"])))
    r = p.rows[("a", "m2")]
    assert (r["state"], r["worker"], r["attempts"], r["gamma_3mm"], r["note"]) == ("retrying", "tcp://w2", 1, 0.9,
                                                                                 "gamma low")
    p.on_event("converting", dict(case="a", machine="m2", attempt=1, priority=0))
    p.on_event("qa", dict(case="a", machine="m2", attempt=1, worker="tcp://w1", retry=False,
                          qa=dict(passed=True, pass_rates={"3%/3mm": 0.99, "2%/2mm": 0.95}, reasons=[])))
    p.on_event("persisted", dict(case="a", machine="m2", passed=True, attempts=2))
    p.on_event("failed", dict(case="b", machine=None, stage="n_beams", error="RuntimeError: boom"))
    t = p.table().set_index(["case", "machine"])
    assert t.loc[("a", "m2"), "state"] == "done" and t.loc[("a", "m2"), "attempts"] == 2
    assert t.loc[("a", "m2"), "note"] == "passed on attempt 2" and t.loc[("a", STANDARD_ROW), "worker"] == "tcp://w1"
    assert t.loc[("b", STANDARD_ROW), "state"] == "error" and "boom" in t.loc[("b", STANDARD_ROW), "note"]
    assert "dask dashboard" in p.status.value and "99.0 %" in p.queue_html.value
    assert "FAILED b" in "".join(o["text"] for o in p.out.outputs)
    with pytest.raises(ValueError, match="poll_s"):
        BatchPanel(["a"], ["m"], tmp_path, poll_s=0)
    with pytest.raises(ValueError, match="fanout"):
        BatchPanel(["a"], ["m"], tmp_path, fanout=2)


def test_panel_runs_a_batch_in_the_background(tmp_path):
    c, cluster = make_client(n_workers=2, dashboard_address=None, silence_logs=logging.ERROR)
    try:
        p = BatchPanel(["p0", "p1", "p2"], {"m1": 0, "m2": 1}, tmp_path, client=c, poll_s=0.05,
                       stages=demo_stages(bad_attempts=1, sleep_s=0.3), priorities={"p2": 5})
        th = p.run()
        assert p.run() is th and p.run_button.disabled  # a second click while running does nothing
        s = p.wait(120)
        assert not p.running and not p.run_button.disabled
    finally:
        c.close()
        cluster.close()
    assert len(s["persisted"]) == 3 and not s["failed"]
    t = p.table()
    conv = t[t["machine"] != STANDARD_ROW]
    # every plan failed QA once (8 % hot) and passed on the regeneration (claim 7)
    assert len(conv) == 3 and (conv["state"] == "done").all() and (conv["attempts"] == 2).all()
    assert (conv["gamma_3mm"] == 1.0).all() and conv["worker"].str.startswith("tcp://").all()
    assert t.loc[t["case"] == "p2", "priority"].tolist() == [5, 5]
    qa = p.qa_table()
    assert len(qa) == 3 and qa["passed"].all() and (qa["attempts"] == 2).all()
    assert "p2" in p.qa_html.value and "done: 3" in p.status.value
    # the poller saw tasks being processed: some row was marked with a worker while running
    assert any(k == "converting" for k, _ in p.events)
