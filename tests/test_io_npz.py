"""Tests for rtlab.io.npz: lossless case/dose storage and the command line's dose files."""

from __future__ import annotations

import numpy as np
import pytest

from rtlab.case import BeamSpec, Case, Goal
from rtlab.geometry import Grid, Structure, StructureSet
from rtlab.io import load_dose_npz, load_npz, save_npz


def _case():
    g = Grid((5, 6, 7), (2.5, 2.0, 3.0), (-4.0, 1.5, 12.0))
    Z, Y, X = g.mesh(sparse=False)
    body = (Y - 6.5) ** 2 / 36 + (X - 21) ** 2 / 81 < 1
    ptv = body & (X > 22)
    boost = ptv & (Z > 0)
    oar = body & (X < 18)
    rng = np.random.default_rng(0)
    ct = rng.normal(0, 50, g.shape).astype(np.float32)
    density = rng.uniform(0.5, 1.5, g.shape).astype(np.float32)  # not derived from ct: must survive as is
    ss = StructureSet(g, [
        Structure("BODY", body, g, "body"),
        Structure("PTV", ptv, g, "target", prescription=50.4, color=(1.0, 0.2, 0.1)),
        Structure("Boost", boost, g, "target", prescription=60.0),
        Structure("Cord", oar, g, "oar"),
        Structure("Empty", np.zeros(g.shape, bool), g, "oar", allow_empty=True),
    ])
    return Case(
        "npz_case", g, ct, ss, goals=[Goal("PTV", "D95", ">=", 47.9), Goal("Cord", "Dmax", "<", 45)],
        beams=[BeamSpec(0.0), BeamSpec(72.0, 10.0, (1.0, 2.0, 3.0))], density=density,
        description="a test case", meta={"source": "unit test", "numbers": [1, 2.5]},
    )


def test_case_round_trips_exactly(tmp_path):
    case = _case()
    p = save_npz(tmp_path / "c.npz", case=case)
    back = load_npz(p).case
    assert back.name == case.name and back.description == case.description
    assert back.grid == case.grid
    assert np.array_equal(back.ct, case.ct) and back.ct.dtype == np.float32
    assert np.array_equal(back.density, case.density)
    assert back.prescription == case.prescription == 60.0
    assert back.goals == case.goals and back.beams == case.beams
    assert back.meta == case.meta
    assert list(back.structures) == list(case.structures)
    for n, s in case.structures.items():
        b = back.structures[n]
        assert np.array_equal(b.mask, s.mask)
        assert (b.kind, b.prescription, b.color, b.allow_empty) == (s.kind, s.prescription, s.color, s.allow_empty)


def test_dose_grid_and_extra_arrays(tmp_path):
    case = _case()
    dose = np.random.default_rng(1).uniform(0, 60, case.grid.shape).astype(np.float32)
    fluence = np.arange(12.0).reshape(3, 4)
    p = save_npz(tmp_path / "d.npz", case=case, dose=dose, fluence=fluence, label=np.array("plan A"))
    res = load_npz(p)
    assert res.grid == case.grid
    assert np.array_equal(res.dose, dose) and res.dose.dtype == np.float32
    assert np.array_equal(res.arrays["fluence"], fluence)
    assert str(res.arrays["label"]) == "plan A"
    # the CLI reader sees the same dose
    assert np.array_equal(load_dose_npz(p, expected_shape=case.grid.shape), dose)
    # dose with its own grid and no case
    g = Grid((2, 3, 4), (1, 1, 1), (0, 0, 0))
    p2 = save_npz(tmp_path / "g.npz", dose=np.ones(g.shape), grid=g)
    res2 = load_npz(p2)
    assert res2.case is None and res2.grid == g and res2.dose.shape == g.shape


def test_plain_numpy_npz_is_readable(tmp_path):
    p = tmp_path / "plain.npz"
    np.savez(p, dose=np.full((2, 2, 2), 3.0), other=np.zeros(3))
    res = load_npz(p)
    assert res.case is None and res.grid is None
    assert np.array_equal(res.dose, np.full((2, 2, 2), 3.0))
    assert set(res.arrays) == {"other"}
    d = load_dose_npz(p)
    assert d.dtype == np.float64 and d.shape == (2, 2, 2)


def test_save_rejects_bad_input(tmp_path):
    case = _case()
    with pytest.raises(ValueError, match="dose has shape"):
        save_npz(tmp_path / "x.npz", case=case, dose=np.zeros((1, 2, 3)))
    bad = np.zeros(case.grid.shape)
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*\(1, 2, 3\)"):
        save_npz(tmp_path / "x.npz", case=case, dose=bad)
    with pytest.raises(ValueError, match="reserved"):
        save_npz(tmp_path / "x.npz", case_ct=np.zeros(3))
    with pytest.raises(TypeError, match="case must be"):
        save_npz(tmp_path / "x.npz", case="not a case")
    with pytest.raises(TypeError, match="object"):
        save_npz(tmp_path / "x.npz", stuff=np.array([{}, 1], dtype=object))
    assert not list(tmp_path.iterdir())


def test_write_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "keep.npz"
    save_npz(p, dose=np.ones((2, 2, 2)))
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError, match="disk full"):
        save_npz(p, dose=np.zeros((2, 2, 2)))
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["keep.npz"]


def test_load_dose_npz_errors(tmp_path):
    txt = tmp_path / "dose.npz"
    txt.write_text("not a zip")
    with pytest.raises(ValueError, match="not an .npz file"):
        load_dose_npz(txt)
    npy = tmp_path / "dose.npy"
    np.save(npy, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="not an .npz file"):
        load_dose_npz(npy)
    with pytest.raises(ValueError, match="does not exist"):
        load_dose_npz(tmp_path / "missing.npz")
    p = tmp_path / "nodose.npz"
    np.savez(p, fluence=np.zeros(3))
    with pytest.raises(ValueError, match=r"no array named 'dose'.*fluence"):
        load_dose_npz(p)
    p = tmp_path / "shape.npz"
    np.savez(p, dose=np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\) but the grid is \(2, 3, 5\)"):
        load_dose_npz(p, expected_shape=(2, 3, 5))
    np.savez(p, dose=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="3-D"):
        load_dose_npz(p)
    d = np.ones((2, 2, 2), np.float32)
    d[0, 1, 1] = np.nan
    np.savez(p, dose=d)
    with pytest.raises(ValueError, match=r"NaN.*\(0, 1, 1\)"):
        load_dose_npz(p)
    np.savez(p, dose=-np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="negative"):
        load_dose_npz(p)
    assert load_dose_npz(p, allow_negative=True).min() == -1
    np.savez(p, dose=np.array([["a"]]))
    with pytest.raises(ValueError, match="numeric"):
        load_dose_npz(p)
