"""Start points of the optimisation (rtlab.planning.warm_start; patent 000, para. 134-136)."""

from pathlib import Path

import numpy as np
import pytest

from rtlab.evaluate.metrics import paddick_ci
from rtlab.phantoms import get_phantom
from rtlab.planning import WARM_STARTS, plan_case, prepare_plan, warm_start

ANGLES = [0.0, 120.0, 240.0]

DATASETS = Path(__file__).resolve().parents[1] / "datasets"


@pytest.fixture(scope="module")
def problem():
    case = get_phantom("tg119_cshape_easy", spacing=6.0)
    return prepare_plan(case, ANGLES)


def _start_dose(problem, x):
    op = problem.operator
    d = np.zeros(problem.case.grid.size)
    d[op.ct_index] = op.matvec(x)[: op.n_ct]
    return d.reshape(problem.case.grid.shape)


def test_uniform_and_zero(problem):
    assert set(WARM_STARTS) == {"uniform", "zero", "target", "region"}
    u = warm_start(problem, "uniform")
    np.testing.assert_array_equal(u.x0, problem.x0)
    assert u.info["warm_start"]["kind"] == "uniform" and u.operator is problem.operator
    z = warm_start(problem, "zero")
    assert not np.any(z.x0) and z.x0.shape == problem.x0.shape


def test_target_start_is_shaped_like_the_target(problem):
    """The fit aims 1.05 D inside the target and 0 outside: its 50 Gy isodose hugs the target far
    better than the uniform start's (Paddick CI), and the target's mean dose is near 1.05 D."""
    t = warm_start(problem, "target")
    assert np.all(t.x0 >= 0) and t.info["warm_start"]["region_voxels"] > 0
    ptv = problem.case.structures["PTV"]
    d_t, d_u = _start_dose(problem, t.x0), _start_dose(problem, problem.x0)
    ci_t = float(paddick_ci(d_t, ptv, 50.0))
    ci_u = float(paddick_ci(d_u, ptv, 50.0))
    assert ci_t > ci_u + 0.08  # measured 0.372 vs 0.259 (3 beams, 6 mm, 50 fit iterations)
    print("CI", ci_t, ci_u, "mean", float(d_t[ptv.mask].mean()))
    assert float(d_t[ptv.mask].mean()) == pytest.approx(52.5, rel=0.1)


def test_region_start_with_the_shipped_models_on_a_tg119_case(problem):
    """A TG-119 case is not what the models were trained on (synthetic 32^3 cases at 4 mm): the
    100 % model's region is then close to the target (it predicts the target itself at 4 mm and on
    the phantom's own grid; at 6 mm the fit differs), the 80 % model's is larger and aimed at
    0.8 D. Both starts beat the uniform one in conformity at their own level."""
    from rtlab.methods.region_model import RegionModel, dice

    case = problem.case
    ptv = case.structures["PTV"]
    m100 = RegionModel.load(str(DATASETS / "region_model_200"))
    pred = np.asarray(m100.predict_case(case), bool)
    print("Dice(prediction, PTV) at 6 mm", dice(pred, ptv.mask))
    assert dice(pred, ptv.mask) > 0.8
    r = warm_start(problem, "region", region_model=m100)
    assert r.info["warm_start"]["level"] == 1.0 and np.all(r.x0 >= 0)
    ci_r = float(paddick_ci(_start_dose(problem, r.x0), ptv, 50.0))
    ci_u = float(paddick_ci(_start_dose(problem, problem.x0), ptv, 50.0))
    assert ci_r > ci_u
    r80 = warm_start(problem, "region", region_model=str(DATASETS / "region_model_200_l80"))
    t = warm_start(problem, "target")
    assert r80.info["warm_start"]["level"] == 0.8
    assert r80.info["warm_start"]["region_voxels"] > t.info["warm_start"]["region_voxels"]


def test_plan_case_takes_the_start_and_bad_input(problem):
    case = problem.case
    p = plan_case(case, ANGLES, warm_start="target", max_iter=3, recipe={"goal_rounds": 0})
    assert p.info["warm_start"]["kind"] == "target" and p.iterations <= 3
    with pytest.raises(ValueError, match="warm_start must be one of"):
        warm_start(problem, "best")
    with pytest.raises(ValueError, match="needs region_model"):
        warm_start(problem, "region")
    with pytest.raises(ValueError, match="one weight per beamlet"):
        warm_start(problem, x0=np.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        warm_start(problem, x0=-np.ones(problem.x0.size))
