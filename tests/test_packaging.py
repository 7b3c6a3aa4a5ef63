"""pyproject.toml and environment.yml declare the same dependencies."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    name = m.group(1).lower().replace("_", "-")
    return CONDA_TO_PYPI.get(name, name), m.group(2).replace(" ", "")


def _pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = {"core": meta["dependencies"], **meta["optional-dependencies"]}
    return reqs


def _environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out = {}
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            if item.startswith("-e") or item.strip() in ("pip",):
                continue
            name, spec = _split(item)
            if name == "python":
                continue
            out[name] = spec
    return out


def test_extras_are_the_documented_ones():
    assert set(_pyproject()) == {"core", "lab", "dicom", "dask", "gpu", "ml", "dev"}


def test_environment_matches_pyproject():
    py = _pyproject()
    want = {}
    for extra, reqs in py.items():
        if extra == "gpu":  # documented exception: needs a CUDA driver (see environment.yml header)
            continue
        for r in reqs:
            name, spec = _split(r)
            want[name] = spec
    have = _environment()
    assert have == want, (
        "environment.yml and pyproject.toml disagree:\n"
        f"only in pyproject: {sorted(set(want) - set(have))}\n"
        f"only in environment.yml: {sorted(set(have) - set(want))}\n"
        f"different specifiers: {sorted(k for k in set(want) & set(have) if want[k] != have[k])}"
    )


def test_gpu_extra_is_mentioned_in_environment_header():
    text = (ROOT / "environment.yml").read_text()
    for r in _pyproject()["gpu"]:
        assert _split(r)[0] in text


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/lab.sh" in readme
    cmds = [l for l in ci.splitlines() if l.strip() and not l.startswith("#")]
    assert cmds == ["exec bash scripts/test.sh"]


def _lock():
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert "==" in line and not line.startswith("-e"), f"lock line is not an exact pin: {line!r}"
        name, version = line.split("==", 1)
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_lock_pins_every_dependency_inside_its_range():
    """requirements/lock.txt (scripts/lock.sh) pins each pyproject dependency within its range."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = _lock()
    problems = []
    for extra, reqs in _pyproject().items():
        if extra == "gpu":  # not part of the test environment (needs a CUDA driver)
            continue
        for text in reqs:
            req = Requirement(text)
            name = req.name.lower().replace("_", "-")
            if name not in pins:
                problems.append(f"{name} ({extra}) is not in the lock")
            elif not req.specifier.contains(Version(pins[name]), prereleases=True):
                problems.append(f"{name}=={pins[name]} is outside {req.specifier} ({extra})")
    assert not problems, "run `bash scripts/lock.sh` to refresh requirements/lock.txt:\n" + "\n".join(problems)
    assert "torch" in pins and pins["torch"].endswith("+cpu"), "the lock must pin torch's CPU build"


def test_setup_installs_from_the_lock():
    text = (ROOT / "scripts" / "_setup.sh").read_text()
    assert "-r requirements/lock.txt" in text and "--no-deps -e ." in text
    assert "requirements/lock.txt" in text.split("WANT=", 1)[1].splitlines()[0]  # a lock change re-installs
