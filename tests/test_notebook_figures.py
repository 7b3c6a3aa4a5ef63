"""scripts/notebook_figures.py: the spread runner's configurations and the expected-value rewrite."""

import importlib.util
import json
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("notebook_figures", ROOT / "scripts" / "notebook_figures.py")
nf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nf)


def test_baseline_env_script_and_runner_agree():
    exported = {}
    for line in (ROOT / "scripts" / "baseline_env.sh").read_text().splitlines():
        if line.startswith("export "):
            k, v = line[len("export "):].split("#")[0].strip().split("=", 1)
            exported[k] = shlex.split(v)[0]
    assert {k: exported[k] for k in nf.BASELINE_ENV} == nf.BASELINE_ENV
    assert exported["NUMBA_NUM_THREADS"] == "1"
    # CI's second pass sources the same file
    assert "baseline_env.sh" in (ROOT / "scripts" / "test.sh").read_text()


def test_configurations_set_the_documented_variables():
    env = nf._env_for("x86-64-v2-2t")
    assert env["NUMBA_CPU_NAME"] == "x86-64-v2" and env["NUMBA_CPU_FEATURES"] == "" and env["NUMBA_NUM_THREADS"] == "2"
    env = nf._env_for("generic-1t")
    assert env["NUMBA_CPU_NAME"] == "generic" and "NUMBA_CPU_FEATURES" not in env
    env = nf._env_for("host-1t")
    assert "NUMBA_CPU_NAME" not in env and "OPENBLAS_CORETYPE" not in env
    env = nf._env_for("baseline-1t")
    assert all(env[k] == v for k, v in nf.BASELINE_ENV.items())


def test_expected_literal_keeps_digits_that_matter():
    assert nf._expected_literal(0.94612, 0.02) == "0.946"
    assert nf._expected_literal(50.1234, 0.3) == "50.1"
    assert nf._expected_literal(64.0, 1.0) == "64"


def test_update_rewrites_literal_checks_in_reading_order(tmp_path):
    src = ('check("CI ≥ 0", p.ci, 0.95, abs=0.02)\n'
           'check("D95 (Gy)", f(a, b), 50.0, abs=0.3); check("D95 (Gy)", g(1), -2.0, abs=0.5)\n'
           'check("same", x, 1.0, abs=0.5)\n')
    nb = {"cells": [{"cell_type": "code", "source": src.splitlines(keepends=True), "outputs": [],
                     "metadata": {}, "execution_count": None}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "nbs").mkdir()
    (tmp_path / "nbs" / "99_x.ipynb").write_text(json.dumps(nb))
    run = tmp_path / "run" / "host-2t"
    run.mkdir(parents=True)
    recs = [("CI ≥ 0", 0.9461, 0.02), ("D95 (Gy)", 50.42, 0.3), ("D95 (Gy)", -2.31, 0.5), ("same", 1.04, 0.5)]
    run.joinpath("99_x.jsonl").write_text("".join(
        json.dumps({"name": n, "value": v, "expected": 0.0, "tolerance": t, "passed": True}) + "\n" for n, v, t in recs))
    nf.main(["update", str(tmp_path / "run"), "--config", "host-2t", "--notebooks-dir", str(tmp_path / "nbs")])
    out = "".join(json.loads((tmp_path / "nbs" / "99_x.ipynb").read_text())["cells"][0]["source"])
    assert out == ('check("CI ≥ 0", p.ci, 0.946, abs=0.02)\n'
                   'check("D95 (Gy)", f(a, b), 50.4, abs=0.3); check("D95 (Gy)", g(1), -2.3, abs=0.5)\n'
                   'check("same", x, 1.0, abs=0.5)\n')   # 1.04 is 1.0 to a tenth of its tolerance: unchanged


def test_readable_above_rounds_up_to_a_readable_tolerance():
    assert nf._readable_above(0.00312) == 0.004
    assert nf._readable_above(1.29) == 1.5
    assert nf._readable_above(6.03) == 8.0
    assert nf._readable_above(0.15) == 0.15
    assert all(nf._readable_above(x) >= x for x in (0.0011, 7.9, 123.0, 9.99))


def _one_check_notebook(path, src):
    nb = {"cells": [{"cell_type": "code", "source": src.splitlines(keepends=True), "outputs": [],
                     "metadata": {"execution": {"iopub.status.busy": "2026-12-03T00:00:00Z"}}, "execution_count": 1}],
          "metadata": {"widgets": {"state": {}}, "kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb, indent=1))


def test_widen_with_config_measures_the_spread_around_the_updated_value(tmp_path):
    (tmp_path / "nbs").mkdir()
    _one_check_notebook(tmp_path / "nbs" / "99_x.ipynb", 'check("CI", p.ci, 0.50, abs=0.001)\n')
    # the run logged the OLD expected value (0.50); the new figure is 0.80 on one configuration, 0.802 on the other
    for config, value in (("host-2t", 0.800), ("baseline-1t", 0.802)):
        d = tmp_path / "run" / config
        d.mkdir(parents=True)
        d.joinpath("99_x.jsonl").write_text(json.dumps(
            {"name": "CI", "value": value, "expected": 0.50, "tolerance": 0.001, "passed": False}) + "\n")
    args = ["--notebooks-dir", str(tmp_path / "nbs")]
    nf.main(["update", str(tmp_path / "run"), "--config", "host-2t", *args])
    nf.main(["widen", str(tmp_path / "run"), "--config", "host-2t", *args])
    out = "".join(json.loads((tmp_path / "nbs" / "99_x.ipynb").read_text())["cells"][0]["source"])
    # 3 x the 0.002 spread, made readable: 0.006; not 3 x |0.80 - 0.50| (what the logged old value would give)
    assert out == 'check("CI", p.ci, 0.8, abs=0.006)\n'


def test_clean_drops_timings_and_widget_state_only(tmp_path):
    (tmp_path / "nbs").mkdir()
    p = tmp_path / "nbs" / "99_x.ipynb"
    _one_check_notebook(p, 'print(1)\n')
    nf.main(["clean", "--notebooks-dir", str(tmp_path / "nbs")])
    nb = json.loads(p.read_text())
    assert nb["metadata"] == {"kernelspec": {"name": "python3"}}
    assert nb["cells"][0]["metadata"] == {} and nb["cells"][0]["execution_count"] == 1
    assert p.read_text().endswith("}\n")
