"""rtlab.testing: the figure checks the notebooks use."""

import json

import numpy as np
import pytest

from rtlab.testing import FigureCheckError, check, check_between, check_equal


def test_check_passes_within_tolerance_and_prints_only_stable_text(capsys):
    assert check("Paddick CI", 0.9461, 0.946, abs=0.02) is None   # nothing for a notebook cell to echo
    check("Paddick CI", 0.9339, 0.946, abs=0.02)                   # the other side, same text
    out = capsys.readouterr().out.splitlines()
    assert out == ["PASS  Paddick CI = 0.946 +- 0.02"] * 2          # the measured value is not printed


def test_check_relative_tolerance_and_unit(capsys):
    check("PTV D95", np.float32(50.3), 50.5, rel=0.01, unit="Gy")
    assert capsys.readouterr().out.strip() == "PASS  PTV D95 = 50.5 +- 0.505 Gy (1 %)"
    # the larger of abs and rel * |expected| applies
    check("x", 10.9, 10.0, rel=0.01, abs=1.0)
    with pytest.raises(FigureCheckError):
        check("x", 11.01, 10.0, rel=0.01, abs=1.0)


def test_check_failure_names_the_figure_value_and_tolerance():
    with pytest.raises(FigureCheckError) as e:
        check("Paddick CI", 0.7, 0.946, abs=0.02)
    assert str(e.value) == "FIGURE CHANGED: Paddick CI = 0.7 (expected 0.946 +- 0.02)"
    assert isinstance(e.value, AssertionError)          # nbval and pytest report it as a failure


def test_check_boundary_and_nan():
    check("edge", 1.02, 1.0, abs=0.02 + 1e-12)
    with pytest.raises(FigureCheckError):
        check("nan", float("nan"), 1.0, abs=1.0)
    with pytest.raises(FigureCheckError):
        check("inf", float("inf"), 1.0, rel=0.5)


@pytest.mark.parametrize("kw", [{}, {"abs": 0.0}, {"rel": -1.0}, {"abs": float("nan")}])
def test_check_refuses_an_exact_or_missing_tolerance(kw):
    with pytest.raises(ValueError, match="rel > 0 or abs > 0"):
        check("CI", 0.9, 0.9, **kw)


def test_check_refuses_non_numbers():
    with pytest.raises(TypeError, match="real number"):
        check("CI", "0.9", 0.9, abs=0.1)
    with pytest.raises(TypeError, match="real number"):
        check("CI", True, 1.0, abs=0.1)


def test_check_between(capsys):
    check_between("CenterTarget D10", 52.1, high=53, unit="Gy")
    check_between("CI", 0.7, low=0.6)
    check_between("coverage", 0.97, 0.95, 1.0)
    assert capsys.readouterr().out.splitlines() == [
        "PASS  CenterTarget D10 <= 53 Gy", "PASS  CI >= 0.6", "PASS  coverage in [0.95, 1]"]
    with pytest.raises(FigureCheckError, match=r"CenterTarget D10 = 55.3 Gy, expected <= 53 Gy"):
        check_between("CenterTarget D10", 55.3, high=53, unit="Gy")
    with pytest.raises(FigureCheckError):
        check_between("CI", float("nan"), low=0.6)
    with pytest.raises(ValueError):
        check_between("CI", 0.7)


def test_check_equal():
    check_equal("control points", np.int64(12), 12)
    check_equal("status", "max_iter", "max_iter")
    with pytest.raises(FigureCheckError, match=r"control points = 11 \(expected 12\)"):
        check_equal("control points", 11, 12)
    with pytest.raises(TypeError, match="computed float"):
        check_equal("CI", 0.9461, 0.9461)


def test_record_mode_logs_every_figure_and_never_raises(tmp_path, monkeypatch, capsys):
    log = tmp_path / "figs.jsonl"
    monkeypatch.setenv("RTLAB_FIGURES_LOG", str(log))
    monkeypatch.setenv("RTLAB_FIGURES_MODE", "record")
    monkeypatch.setenv("RTLAB_FIGURES_CONTEXT", "02_conformity|host-2t")
    check("CI", 0.7, 0.946, abs=0.02)
    check_between("D10", 55.3, high=53)
    check_equal("n", 3, 3)
    assert capsys.readouterr().out.splitlines()[0].startswith("FAIL  CI")
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["name"] for r in recs] == ["CI", "D10", "n"]
    assert recs[0] == {"context": "02_conformity|host-2t", "name": "CI", "passed": False, "value": 0.7,
                       "expected": 0.946, "tolerance": 0.02, "low": None, "high": None}
    assert recs[1]["high"] == 53.0 and recs[2]["passed"] is True


def test_log_without_record_mode_still_raises(tmp_path, monkeypatch):
    log = tmp_path / "figs.jsonl"
    monkeypatch.setenv("RTLAB_FIGURES_LOG", str(log))
    monkeypatch.delenv("RTLAB_FIGURES_MODE", raising=False)
    with pytest.raises(FigureCheckError):
        check("CI", 0.7, 0.946, abs=0.02)
    assert json.loads(log.read_text())["passed"] is False
