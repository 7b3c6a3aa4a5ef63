"""Same machine, same numbers on 1 and 2 numba threads (issue 14, item 2).

Every parallel kernel in rtlab either gives each thread its own outputs (rows, voxels, points) or
sums per-chunk partial results over a chunk count that does not depend on the thread count, so a
result never depends on how the work was scheduled. This pins that on purpose, bit for bit: each
path runs in a fresh process with ``NUMBA_NUM_THREADS=1`` and ``=2`` and the SHA-256 of its
results must be equal. (Across *machines* the bits may differ; notebooks check figures with
tolerances, see docs/notebooks.md.)
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import hashlib, json
    import numpy as np

    def h(*arrays):
        m = hashlib.sha256()
        for a in arrays:
            m.update(np.ascontiguousarray(a).tobytes())
        return m.hexdigest()

    out = {}
    from rtlab.phantoms import get_phantom
    from rtlab.planning import plan_case
    case = get_phantom("tg119_cshape_easy", spacing=8.0)
    p = plan_case(case, [0, 120, 240], "conformity", max_iter=8, dose_grid_mm=8.0)
    out["influence"] = h(p.influence.matrix.data, p.influence.matrix.indices, p.influence.broad.P.data,
                         p.influence.broad.P.indices)
    out["plan"] = h(p.x, p.dose)

    import rtlab.dose.pointkernel as pk
    from rtlab.geometry import Grid
    rng = np.random.default_rng(1)
    grid = Grid((21, 23, 25), (1.5, 1.5, 1.5))
    shots = np.array([[0.5, -1.0, 2.0], [-3.0, 2.5, -1.5], [4.0, 0.0, 1.0]])
    times = rng.uniform(0.0, 1.0, (3, 8, 3))
    d = pk.dose(grid, shots, times)
    gp, gt = pk.dose_vjp(grid, rng.normal(size=d.shape), shots, times)
    out["pointkernel"] = h(d, gp, gt)

    from rtlab.qa import gamma
    ref = np.asarray(p.dose, np.float64)
    ev = ref * (1 + 0.02 * np.sin(np.arange(ref.size)).reshape(ref.shape))
    out["gamma"] = h(gamma(ref, ev, case.grid).gamma)

    from rtlab.dose import FluenceDose
    fd = FluenceDose(case, [0, 120, 240], dose_grid=8.0, fluence_mm=2.5)
    fd.set_bixel_weights(np.linspace(0.5, 1.5, sum(b.bixels.n for b in fd.beams)))
    fd.patch_update(1, 3, 4, rng.uniform(0, 1, (5, 5)))
    out["fluence"] = h(fd.dose_vector)
    print(json.dumps(out))
    """
)


def _run(threads: int) -> dict:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_one_and_two_threads_give_the_same_bits():
    one, two = _run(1), _run(2)
    assert set(one) == {"influence", "plan", "pointkernel", "gamma", "fluence"}
    differ = sorted(k for k in one if one[k] != two[k])
    assert not differ, f"results depend on the thread count: {differ}"
