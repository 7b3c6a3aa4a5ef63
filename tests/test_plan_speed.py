"""What issue #18 item 3 (end-to-end speed of `rtlab plan`) changed, checked against references."""

from __future__ import annotations

import numpy as np
import pytest

from rtlab.core.geometry import signed_distance
from rtlab.phantoms import get_phantom
from rtlab.planning import recipes


def _roi_whole_grid(case, roi_mm):
    """The region of interest as it was computed before: the distance on the whole CT grid."""
    tm = np.zeros(case.grid.shape, bool)
    for t in case.structures.targets:
        tm |= t.mask
    roi = signed_distance(tm, case.grid.spacing) <= roi_mm
    for name in recipes.goal_limits(case):
        roi |= case.structures[name].mask
    return roi & case.structures.body_mask().astype(bool)


@pytest.mark.parametrize("name", ["tg119_cshape_easy", "tg119_headneck", "sphere"])
@pytest.mark.parametrize("roi_mm", [3.0, 20.0, 45.0, 400.0])
def test_region_of_interest_in_the_target_box_equals_the_whole_grid(name, roi_mm):
    case = get_phantom(name, spacing=6.0)
    got = recipes.region_of_interest(case, roi_mm)
    want = _roi_whole_grid(case, roi_mm)
    assert got.shape == case.grid.shape and got.dtype == bool
    np.testing.assert_array_equal(got, want)
    assert got.sum() > 0


def _resample_map_coordinates(values, source, target, fill=0.0):
    """The former order-1 resample: scipy.ndimage.map_coordinates on the clamped coordinates."""
    from scipy import ndimage

    coords = []
    for ax_t, o, d, n in zip(target.axes(), source.origin, source.spacing, source.shape):
        c = (ax_t - o) / d
        c = np.where((c < 0) & (c >= -0.5), 0.0, c)
        c = np.where((c > n - 1) & (c <= n - 0.5), n - 1.0, c)
        coords.append(c)
    cz, cy, cx = np.meshgrid(*coords, indexing="ij")
    return ndimage.map_coordinates(np.asarray(values, float), [cz, cy, cx], order=1, mode="constant", cval=fill)


@pytest.mark.parametrize("seed", range(12))
def test_separable_trilinear_resample_equals_map_coordinates(seed):
    from rtlab.core.geometry import Grid, resample

    rng = np.random.default_rng(seed)
    src = Grid(tuple(int(v) for v in rng.integers(1, 9, 3)), tuple(rng.uniform(1, 6, 3)), tuple(rng.uniform(-5, 5, 3)))
    tgt = Grid(tuple(int(v) for v in rng.integers(1, 14, 3)), tuple(rng.uniform(0.5, 4, 3)),
               tuple(rng.uniform(-10, 5, 3)))
    v = rng.normal(size=src.shape)
    for fill in (0.0, 3.5):
        got = resample(v, src, tgt, order=1, fill=fill)
        want = _resample_map_coordinates(v, src, tgt, fill)
        assert got.shape == tgt.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


# -- the row-restricted operator (PlanOperator(dose_mask=)) against the whole one ---------------
@pytest.fixture(scope="module")
def coarse_problem():
    from rtlab.planning import prepare_plan

    case = get_phantom("tg119_cshape_easy", spacing=6.0)
    return prepare_plan(case, [0, 120, 240], bixel_mm=10.0, dose_grid_mm=12.0, roi_mm=12.0,
                        recipe={"guard_stride": 2})


def test_row_restricted_operator_equals_the_whole_one(coarse_problem):
    from rtlab.dose.operator import PlanOperator
    from rtlab.planning.recipes import region_of_interest

    im, case = coarse_problem.influence, coarse_problem.case
    roi = region_of_interest(case, 12.0)
    full = PlanOperator(im, roi=roi)
    mask = np.zeros(im.grid.shape, bool)
    mask[::2, ::2, ::2] = True
    sub = PlanOperator(im, roi=roi, dose_mask=mask)
    assert sub.n_ct == full.n_ct and sub.A.shape[0] < full.A.shape[0]
    kept = np.flatnonzero(mask.ravel()[im.voxel_index])
    assert sub.n_dose == kept.size
    rng = np.random.default_rng(1)
    x = rng.random(full.shape[1])
    ef, es = full.matvec(x), sub.matvec(x)
    # the CT rows and the kept dose-grid rows hold the same dose (same rows of the same kernels)
    np.testing.assert_array_equal(es[: sub.n_ct], ef[: full.n_ct])
    np.testing.assert_array_equal(es[sub.n_ct:], ef[full.n_ct:][kept])
    # the adjoint: E_sub^T g equals E_full^T of g spread onto the kept rows (zero elsewhere)
    g = rng.normal(size=sub.shape[0])
    gf = np.zeros(full.shape[0])
    gf[: full.n_ct] = g[: sub.n_ct]
    gf[full.n_ct + kept] = g[sub.n_ct:]
    np.testing.assert_allclose(sub.rmatvec(g), full.rmatvec(gf), rtol=2e-5, atol=1e-6 * np.abs(full.rmatvec(gf)).max())
    # inner-product test of the restricted operator itself
    lhs, rhs = float(es @ g), float(x @ sub.rmatvec(g))
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
    # rows of a dose-grid mask, and the plan's CT dose from every row
    far = np.zeros(im.grid.shape, bool)
    far[1::2] = True
    far[::2, ::2, ::2] = True
    rows = sub.dose_rows(far)
    assert np.array_equal(rows, sub.n_ct + np.flatnonzero(far.ravel()[im.voxel_index[kept]]))
    np.testing.assert_array_equal(sub.dose_ct(x), full.dose_ct(x))


def test_guard_mask_follows_the_recipe(coarse_problem):
    from rtlab.planning.recipes import guard_mask
    from rtlab.planning.settings import full_recipe

    grid = coarse_problem.influence.grid
    assert guard_mask(grid, full_recipe("quadratic")) is None
    assert guard_mask(grid, full_recipe("conformity")) is None  # the default: every voxel, all rows
    assert not guard_mask(grid, full_recipe("matrad")).any()
    m = guard_mask(grid, full_recipe("conformity", {"guard_stride": 2}))
    assert m.shape == grid.shape and m.sum() == np.prod([(n + 1) // 2 for n in grid.shape])
    assert m[0, 0, 0] and not m[1, 0, 0] and not m[0, 1, 0] and not m[0, 0, 1]
    assert guard_mask(grid, full_recipe("conformity", {"guard_stride": 1})) is None
    for bad in (0, 1.5, -2, float("nan")):
        with pytest.raises(ValueError, match="guard_stride"):
            full_recipe("conformity", {"guard_stride": bad})


def test_default_conformity_plan_keeps_every_dose_grid_row():
    from rtlab.planning import prepare_plan

    p = prepare_plan(get_phantom("tg119_cshape_easy", spacing=6.0), [0, 120, 240], bixel_mm=10.0, dose_grid_mm=12.0)
    assert p.operator.dose_index is None and p.operator.n_dose == p.influence.shape[0]


def test_conformity_plan_guard_on_the_subsample(coarse_problem):
    guard = coarse_problem.objective["guard"]
    op = coarse_problem.operator
    assert op.dose_index is not None  # the operator holds the needed rows only
    assert guard.rows.min() >= op.n_ct and guard.rows.max() < op.shape[0]


# -- rtlab plan --matrad: matRad's default dose grid and the timings ---------------------------
def _plan_cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "rtlab.cli", "plan", *args], capture_output=True, text=True,
                          timeout=600)


def test_plan_matrad_defaults_to_a_5mm_dose_grid_and_reports_timings(tmp_path):
    import json

    from tests.test_matrad_intent import INTENT, write_case

    f = tmp_path / "TG119.mat"
    write_case(f, 3, names={"PTV": "OuterTarget"}, intent={"PTV": INTENT["PTV"][:1], "Core": [INTENT["Core"][0]]},
               shape=(10, 16, 16), res=4.0)
    r = _plan_cli("--matrad", str(f), "--angles", "0,120,240", "--max-iter", "3", "--json", "--out",
                  str(tmp_path / "p.npz"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dose_grid_mm"] == 5.0
    assert out["recipe_overrides"] == {"guard_stride": 2}
    t = out["timings"]
    assert set(t) == {"import_s", "load_s", "build_s", "optimize_s", "score_s", "write_s", "total_s"}
    assert all(v is None or v >= 0 for v in t.values())
    if t["total_s"] is not None:  # /proc is there: the stages fit inside the process's life
        assert t["total_s"] >= t["import_s"] + t["load_s"] + t["build_s"] + t["optimize_s"] - 0.05
    assert out["max_iter"] == 3  # given
    r = _plan_cli("--matrad", str(f), "--angles", "0,120,240", "--json", "--grid", "ct")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dose_grid_mm"] is None
    from rtlab.cli import MATRAD_MAX_ITER

    assert out["max_iter"] == MATRAD_MAX_ITER == 50  # the matRad default (converged on TG119.mat)
    r = _plan_cli("--matrad", str(f), "--grid", "fine")
    assert r.returncode == 2 and "--grid" in r.stderr


def test_plan_of_a_phantom_keeps_the_ct_grid_default():
    import json

    r = _plan_cli("--phantom", "sphere", "--spacing", "10", "--angles", "0,180", "--max-iter", "2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dose_grid_mm"] is None and out["recipe_overrides"] == {}
    r = _plan_cli("--phantom", "sphere", "--spacing", "10", "--angles", "0,180", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["max_iter"] == 100  # built-in phantoms keep the usual limit


def test_process_age_is_the_time_since_the_process_started():
    import time

    from rtlab.cli import process_age_s

    a = process_age_s()
    if a is None:
        pytest.skip("no /proc here")
    time.sleep(0.05)
    b = process_age_s()
    assert 0 < a <= b and b - a < 5


# -- benchmarks/conformity.py --matrad skips cleanly ----------------------------------------------
def _bench(*args):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, str(root / "benchmarks" / "conformity.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=root)


def test_matrad_benchmark_skips_without_file_or_peer(tmp_path):
    import json
    import sys

    r = _bench("--matrad", str(tmp_path / "missing.mat"), "--peer-python", sys.executable)
    assert r.returncode == 0, r.stderr
    assert "not found" in json.loads(r.stdout.strip())["skipped"]
    f = tmp_path / "x.mat"
    f.write_bytes(b"x")
    r = _bench("--matrad", str(f), "--peer-python", str(tmp_path / "nopython"))
    assert "peer Python" in json.loads(r.stdout.strip())["skipped"]
    r = _bench("--matrad", str(f), "--peer-python", sys.executable)  # this Python has no pyRadPlan
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pyRadPlan" in json.loads(lines[0])["skipped"]


def test_import_rtlab_stays_light():
    """`import rtlab` imports no scipy, numba, pandas or matplotlib (issue #18: start-up under 0.3 s)."""
    import subprocess
    import sys

    code = ("import sys, rtlab; heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'scipy', 'numba', 'pandas', 'matplotlib', 'dask', 'torch'}); print(','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_plan_as_a_program_exits_fast_with_its_code_and_all_its_output(tmp_path):
    """`rtlab plan` run as a program ends with os._exit after flushing (rtlab.cli._fast_exit):
    the exit status, the whole JSON line, stderr's message and the written file must all be there."""
    import json

    import numpy as np

    from tests.test_matrad_intent import INTENT, write_case

    f = tmp_path / "TG119.mat"
    write_case(f, 3, names={"PTV": "OuterTarget"}, intent={"PTV": INTENT["PTV"][:1], "Core": [INTENT["Core"][0]]},
               shape=(10, 16, 16), res=4.0)
    out = tmp_path / "p.npz"
    r = _plan_cli("--matrad", str(f), "--angles", "0,120,240", "--max-iter", "2", "--json", "--out", str(out))
    assert r.returncode == 0, r.stderr
    js = json.loads(r.stdout)  # the whole line arrived
    assert js["out"] == str(out)
    with np.load(out) as z:
        assert z["dose"].shape == (10, 16, 16) and np.isfinite(z["dose"]).all()
    # a failure after parsing keeps its status and message
    r = _plan_cli("--matrad", str(tmp_path / "missing.mat"), "--json")
    assert r.returncode != 0 and "missing.mat" in r.stderr


def test_main_called_from_python_returns_instead_of_exiting(tmp_path):
    from rtlab.cli import main

    code = main(["plan", "--phantom", "sphere", "--spacing", "10", "--angles", "0,180", "--max-iter", "2",
                 "--json"])
    assert code == 0  # still here: no os._exit when main() is given its arguments
